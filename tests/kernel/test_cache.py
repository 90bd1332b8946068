"""The compile cache against the ground truth of real workloads.

For each probe kind, the same workload is traced three times with a
private cache directory: compiled and not stored (--no-cache), compiled
and stored (a miss), and loaded from the cache (a hit).  The three give
the same events, and the workload itself reads, from /proc, that the
rbtrace that follows it on a hit has no LLVM mapped (bcc never imported)
and a ring of the size asked for.  Then: a change in the source or in the
options misses; a tampered entry (mode, owner, one flipped byte) or an
untrustworthy directory is refused with one line and compiled again.
"""
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import REPO, parse_json_lines

RBTRACE = [sys.executable, "-m", "rbtrace"]
HIT = "loaded from the compile cache"

# What a run's events are compared on: not times, pids or sequence numbers.
VOLATILE = {"seq", "time", "ts_ns", "pid", "tid", "ppid", "duration_ns", "start_ns",
            "exe_inode", "sport", "cookie", "process"}

# The workload reads its tracer's memory map and ring size (its parent is
# the rbtrace that follows it) before doing its traced work.
PROBE_SELF = ("grep -c -i llvm /proc/$PPID/maps > {dir}/llvm; "
              "grep -h max_entries /proc/$PPID/fdinfo/* 2>/dev/null > {dir}/fdinfo; ")

CASES = {
    "exec": (["exec"], "/bin/true rbcache-a; /bin/echo rbcache-b > /dev/null; "
                       "/nonexistent/rbcache-c 2>/dev/null; true"),
    "open": (["open"], "cat /etc/hostname > /dev/null; cat /nonexistent-rbcache 2>/dev/null; true"),
    "tp": (["tp", "syscalls:sys_enter_kill"], "kill -0 1; kill -0 999999 2>/dev/null; true"),
    "run": (["run", os.path.join(REPO, "examples", "kill.bpf.c")],
            "kill -0 1; kill -0 999999 2>/dev/null; kill -0 1; true"),
    "exit": (["exit"], "(exit 3); (exit 4); sh -c 'kill -9 $$'; true"),
}


def _env(cache_dir, **extra):
    return {**os.environ, "RBTRACE_CACHE_DIR": str(cache_dir), **extra}


def _trace(args, workload, cache_dir, tmp, *flags):
    """(events, stderr, what the workload read of its tracer)."""
    script = PROBE_SELF.format(dir=tmp) + workload
    p = subprocess.run([*RBTRACE, *args, "--json", "--debug", *flags, "--", "sh", "-c", script],
                       cwd=REPO, capture_output=True, timeout=180, env=_env(cache_dir))
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    assert r.lost == [] and r.summary["dropped"] == 0
    # The workload's look at its tracer (grep) is not compared: what it
    # reads differs between a compiled and a cached run.
    events = [{k: v for k, v in e.items() if k not in VOLATILE} for e in r.events
              if e.get("comm") != "grep" and "grep" not in str(e.get("argv", ""))
              and "/proc/" not in str(e.get("path", ""))]
    start = next(e for e in r.lines if e["type"] == "start")
    seen = {"llvm": int((tmp / "llvm").read_text() or 0),
            "fdinfo": (tmp / "fdinfo").read_text(), "start": start}
    return events, p.stderr.decode(), seen


def _entries(cache_dir):
    d = cache_dir / "compiled"
    return sorted(d.glob("*.probe.json")) if d.exists() else []


@pytest.mark.parametrize("kind", sorted(CASES))
def test_cached_and_uncached_loads_give_the_same_events(kind, kernel_ok, tmp_path):
    args, workload = CASES[kind]
    cache_dir = tmp_path / "cache"
    uncached, err0, seen0 = _trace(args, workload, cache_dir, tmp_path, "--no-cache")
    assert HIT not in err0 and _entries(cache_dir) == []       # --no-cache stores nothing
    assert seen0["llvm"] > 0                                   # BCC compiled: LLVM is mapped
    stored, err1, _ = _trace(args, workload, cache_dir, tmp_path)
    assert HIT not in err1 and len(_entries(cache_dir)) == 1
    cached, err2, seen2 = _trace(args, workload, cache_dir, tmp_path)
    assert HIT in err2, err2
    assert seen2["llvm"] == 0, "a cache hit must not map LLVM (bcc imported)"
    assert uncached, f"{kind}: the workload gave no events"
    assert uncached == stored == cached
    entry = _entries(cache_dir)[0]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE((cache_dir / "compiled").stat().st_mode) == 0o700


def test_exec_events_from_the_cache_match_the_workload(kernel_ok, tmp_path):
    """What a cached exec probe reports is what the workload ran."""
    cache_dir = tmp_path / "cache"
    args, workload = CASES["exec"]
    _trace(args, workload, cache_dir, tmp_path)
    events, err, _ = _trace(args, workload, cache_dir, tmp_path)
    assert HIT in err
    runs = [(e["filename"], e["argv"], e["errno"]) for e in events if e["comm"] != "grep"
            and e["filename"] != "/usr/bin/grep"]
    assert ("/bin/true", ["/bin/true", "rbcache-a"], None) in runs
    assert ("/bin/echo", ["/bin/echo", "rbcache-b"], None) in runs
    assert ("/nonexistent/rbcache-c", ["/nonexistent/rbcache-c"], "ENOENT") in runs


def test_ring_size_is_set_at_load_and_not_part_of_the_key(kernel_ok, tmp_path):
    cache_dir = tmp_path / "cache"
    args, workload = CASES["exec"]
    _trace(args, workload, cache_dir, tmp_path)
    _, err, seen = _trace(args, workload, cache_dir, tmp_path, "--ring-size", "256K")
    assert HIT in err and len(_entries(cache_dir)) == 1
    assert seen["start"]["ring_bytes"] == 256 << 10
    # The ring is the map of type 27 (BPF_MAP_TYPE_RINGBUF) in rbtrace's fds.
    sizes = [int(ln.split()[1]) for ln in seen["fdinfo"].splitlines()]
    assert 256 << 10 in sizes, seen["fdinfo"]
    assert 16 << 20 not in sizes


def test_options_and_source_changes_miss(kernel_ok, tmp_path):
    cache_dir = tmp_path / "cache"
    args, workload = CASES["exec"]
    _trace(args, workload, cache_dir, tmp_path)
    _trace(args + ["--max-args", "5"], workload, cache_dir, tmp_path)
    assert len(_entries(cache_dir)) == 2
    _, err, _ = _trace(args + ["--max-args", "5"], workload, cache_dir, tmp_path)
    assert HIT in err and len(_entries(cache_dir)) == 2
    probes = tmp_path / "probes"
    shutil.copytree(os.path.join(REPO, "probes"), probes)
    env_probes = {"RBTRACE_PROBES_DIR": str(probes)}
    p = subprocess.run([*RBTRACE, "exec", "--json", "--debug", "--", "true"], cwd=REPO,
                       capture_output=True, timeout=180, env=_env(cache_dir, **env_probes))
    assert p.returncode == 0 and HIT in p.stderr.decode()     # the same source: a hit
    with open(probes / "common.h", "a") as f:
        f.write("\n/* changed */\n")
    p = subprocess.run([*RBTRACE, "exec", "--json", "--debug", "--", "true"], cwd=REPO,
                       capture_output=True, timeout=180, env=_env(cache_dir, **env_probes))
    assert p.returncode == 0 and HIT not in p.stderr.decode()
    assert len(_entries(cache_dir)) == 3


def _flip_one_instruction_byte(path):
    doc = json.loads(path.read_text())
    insns = doc["payload"]["programs"][0]["insns"]
    i = len(insns) // 2
    flipped = "A" if insns[i] != "A" else "B"
    doc["payload"]["programs"][0]["insns"] = insns[:i] + flipped + insns[i + 1:]
    path.write_text(json.dumps(doc, sort_keys=True))


@pytest.mark.parametrize("tamper,why", [
    (lambda p: os.chmod(p, 0o644), "mode 0644"),
    (lambda p: os.chown(p, 65534, -1), "belongs to uid 65534"),
    (_flip_one_instruction_byte, "does not match its digest"),
    (lambda p: p.write_bytes(p.read_bytes()[:-40]), "corrupt"),
])
def test_a_tampered_entry_is_refused_and_compiled_again(tamper, why, kernel_ok, tmp_path):
    cache_dir = tmp_path / "cache"
    args, workload = CASES["exec"]
    good, _, _ = _trace(args, workload, cache_dir, tmp_path)
    [entry] = _entries(cache_dir)
    tamper(entry)
    events, err, _ = _trace(args, workload, cache_dir, tmp_path)
    refused = [ln for ln in err.splitlines() if "refused" in ln]
    assert len(refused) == 1 and why in refused[0], err
    assert HIT not in err
    assert events == good
    # Compiled again and stored afresh, as it should be.
    st = entry.stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    _, err, _ = _trace(args, workload, cache_dir, tmp_path)
    assert HIT in err


@pytest.mark.parametrize("setup,why", [
    (lambda d: os.chmod(d, 0o755), "mode 0755, not 0700"),
    (lambda d: os.chown(d, 65534, -1), "belongs to uid 65534"),
])
def test_an_untrusted_directory_is_not_used(setup, why, kernel_ok, tmp_path):
    cache_dir = tmp_path / "cache"
    args, workload = CASES["exec"]
    _trace(args, workload, cache_dir, tmp_path)
    setup(cache_dir / "compiled")
    events, err, _ = _trace(args, workload, cache_dir, tmp_path)
    lines = [ln for ln in err.splitlines() if "compile cache" in ln]
    assert len(lines) == 1 and "not using" in lines[0] and why in lines[0], err
    assert HIT not in err and events


def test_a_symlinked_directory_is_not_used(kernel_ok, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (cache_dir / "compiled").symlink_to(elsewhere)
    _, err, _ = _trace(*CASES["exec"], cache_dir, tmp_path)
    assert "is a symbolic link" in err and list(elsewhere.iterdir()) == []


def test_cache_list_and_clear(kernel_ok, tmp_path):
    cache_dir = tmp_path / "cache"
    _trace(*CASES["exec"], cache_dir, tmp_path)
    _trace(*CASES["open"], cache_dir, tmp_path)
    entries = _entries(cache_dir)
    os.chmod(entries[0], 0o640)
    p = subprocess.run([*RBTRACE, "cache", "list"], cwd=REPO, capture_output=True,
                       env=_env(cache_dir), timeout=60)
    assert p.returncode == 0
    rows = p.stdout.decode().splitlines()
    assert rows[0].split() == ["KEY", "PROBE", "BYTES", "CREATED", "STATE"]
    assert len(rows) == 3
    states = sorted(r.split(None, 5)[-1] if "refused" not in r else "refused" for r in rows[1:])
    assert states == ["ok", "refused"]
    assert {r.split()[1] for r in rows[1:] if "refused" not in r} <= {"exec.bpf.c", "open.bpf.c"}
    assert "2 compiled probes" in p.stderr.decode()
    p = subprocess.run([*RBTRACE, "doctor"], cwd=REPO, capture_output=True, env=_env(cache_dir),
                       timeout=120)
    line = next(ln for ln in p.stdout.decode().splitlines() if "compile cache" in ln)
    assert "2 compiled probes, 1 refused" in line
    p = subprocess.run([*RBTRACE, "cache", "clear"], cwd=REPO, capture_output=True,
                       env=_env(cache_dir), timeout=60)
    assert p.returncode == 0 and "removed 2 compiled probes" in p.stderr.decode()
    assert _entries(cache_dir) == []


def test_kernel_type_trees_are_listed_cleared_and_only_the_running_kernels_kept(
        kernel_ok, tmp_path, monkeypatch):
    """The BTF kernel tree (issue #20) lives in the cache too: a tree of
    another kernel goes when this kernel's is written, `cache list` counts
    the trees, and `cache clear` removes them with the compiled probes."""
    cache_dir = tmp_path / "cache"
    stale = cache_dir / "btf" / "0123456789abcdef01234567"
    (stale / "include").mkdir(parents=True)
    (stale / "include" / "vmlinux.h").write_text("/* another kernel's types */\n")
    for d in (cache_dir, cache_dir / "btf", stale, stale / "include"):
        os.chmod(d, 0o700)
    monkeypatch.setenv("RBTRACE_KERNEL_HEADERS", "btf")      # as on a host without headers
    events, err, _ = _trace(["exec"], "/bin/true rbtree-a", cache_dir, tmp_path)
    assert any(e.get("argv") == ["/bin/true", "rbtree-a"] for e in events), err
    trees = sorted(p.name for p in (cache_dir / "btf").iterdir())
    assert len(trees) == 1 and trees[0] != stale.name, trees
    assert (cache_dir / "btf" / trees[0] / "include" / "vmlinux.h").stat().st_size > 100_000
    p = subprocess.run([*RBTRACE, "cache", "list"], cwd=REPO, capture_output=True,
                       env=_env(cache_dir), timeout=60)
    assert p.returncode == 0
    assert f"1 kernel type tree from BTF in {cache_dir / 'btf'}" in p.stderr.decode()
    p = subprocess.run([*RBTRACE, "cache", "clear"], cwd=REPO, capture_output=True,
                       env=_env(cache_dir), timeout=60)
    assert p.returncode == 0
    assert "and 1 kernel type tree from" in p.stderr.decode(), p.stderr.decode()
    assert list((cache_dir / "btf").iterdir()) == [] and _entries(cache_dir) == []
