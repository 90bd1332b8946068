"""Faults, signals and pipes: rbtrace keeps working, loses nothing
silently, explains, and leaves nothing loaded behind."""
import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import REPO, bpf_ids_held, bpf_ids_loaded, parse_json_lines, still_loaded

RBTRACE = [sys.executable, "-m", "rbtrace"]


def _start(*args):
    # Unbuffered: communicate() reads the pipe's fd itself, so lines that a
    # buffered readline() had taken in past the first would be lost (and a
    # line cut in two), whenever events come right after the start line.
    p = subprocess.Popen([*RBTRACE, *args], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, bufsize=0)
    first = p.stdout.readline()
    assert json.loads(first)["type"] == "start", first
    return p


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_drains_summarizes_and_unloads_everything(kernel_ok, sig, code):
    mark = uuid.uuid4().hex
    p = _start("open", "--json")
    during = bpf_ids_held(p.pid)
    assert during[0] and during[0] <= bpf_ids_loaded()[0], "the probe's programs are loaded"
    subprocess.run(["cat", f"/nonexistent/{mark}"], capture_output=True)
    time.sleep(0.2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    assert p.returncode == code
    r = parse_json_lines(out.decode())
    assert any(e.get("path") == f"/nonexistent/{mark}" for e in r.events)
    assert r.summary["stopped_by"] == signal.Signals(sig).name
    assert r.summary["submitted"] == r.summary["delivered"]
    assert "Traceback" not in err.decode() and "events delivered" in err.decode()
    assert still_loaded(during) == [set(), set()], "left loaded"


def test_sigkill_then_start_again_at_once(kernel_ok):
    p = _start("exec", "--json")
    during = bpf_ids_held(p.pid)
    assert during[0] and during[1]
    p.kill()
    p.wait()
    mark = uuid.uuid4().hex
    q = _start("exec", "--json")
    subprocess.run(["/bin/echo", mark], capture_output=True)
    time.sleep(0.3)
    q.send_signal(signal.SIGINT)
    out, _ = q.communicate(timeout=30)
    assert any(mark in e["argv"] for e in parse_json_lines(out.decode()).events)
    deadline = time.monotonic() + 10          # the killed one's fds close with it
    while still_loaded(during) != [set(), set()] \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert still_loaded(during) == [set(), set()]


def test_head_1_exits_by_itself_without_noise(kernel_ok):
    """`| head -1` takes the start line and exits; no event ever comes to
    fail a write, yet rbtrace must notice the closed pipe and stop.  (How
    fast: benchmarks/timing.py; the timeouts here only guard against a hang.)"""
    p = subprocess.run(["sh", "-c", f"{sys.executable} -m rbtrace exec --json --comm nomatch-xyz "
                                    f"2>{os.devnull}.stderr-unused | head -1; echo rc=$?"],
                       cwd=REPO, capture_output=True, timeout=120)
    lines = p.stdout.decode().splitlines()
    assert json.loads(lines[0])["type"] == "start" and lines[1:] == ["rc=0"], lines
    q = subprocess.Popen([*RBTRACE, "exec", "--json", "--comm", "nomatch-xyz"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    q.stdout.readline()
    q.stdout.close()                           # the reader goes away
    err = q.stderr.read().decode()
    q.wait(timeout=120)
    assert q.returncode == 0
    assert "Traceback" not in err and "Exception ignored" not in err, err


def _read_line(p, timeout):
    """A line of p's stdout, or None once `timeout` seconds passed."""
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buf += chunk
    return buf


def test_first_event_reaches_a_pipe_while_rbtrace_runs(kernel_ok, tmp_path):
    """The only event of the session reaches the pipe on its own: no later
    event, no exit and no flush at SIGINT pushes it out.  (How fast:
    benchmarks/timing.py; the timeout only guards against a hang.)"""
    name = "rbfirst" + uuid.uuid4().hex[:8]
    prog = tmp_path / name
    shutil.copy("/bin/true", prog)
    p = subprocess.Popen([*RBTRACE, "exec", "--json", "--comm", name], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(_read_line(p, 120))["type"] == "start"
        assert subprocess.run([str(prog)]).returncode == 0
        line = _read_line(p, 60)
        assert p.poll() is None, "rbtrace ended"
        assert line is not None, "the event did not come while rbtrace ran"
        event = json.loads(line)
        assert event["type"] == "exec" and event["comm"] == name
        assert event["argv"] == [str(prog)]
    finally:
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    assert p.returncode == 130
    r = parse_json_lines(out.decode())
    assert r.events == [] and r.summary["delivered"] == 1 and r.summary["dropped"] == 0


def test_exception_in_event_handling_stops_with_an_error(kernel_ok):
    code = ("import sys\n"
            "from rbtrace.kinds import exec as e\n"
            "def boom(*a, **k):\n"
            "    raise ValueError('decoder exploded')\n"
            "e.ExecCodec.decode = boom\n"
            "from rbtrace.cli import main\n"
            "main(['exec', '--json', '-d', '20'])\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()                        # attached
    during = bpf_ids_held(p.pid)
    assert during[0] and during[1]
    subprocess.run(["/bin/true"])
    out, err = p.communicate(timeout=30)
    err = err.decode()
    assert p.returncode == 1
    assert "decoder exploded" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert still_loaded(during) == [set(), set()]


def _storm(tmp_path):
    """benchmarks/storm.c under a name of its own, so that only this test's
    storm passes --comm (another run of the suite may storm at once)."""
    src = os.path.join(REPO, "benchmarks", "storm.c")
    exe = tmp_path / ("rbst" + uuid.uuid4().hex[:10])
    subprocess.run(["gcc", "-O2", "-o", str(exe), src], check=True)
    return exe


class _EventCounter(threading.Thread):
    """Reads rbtrace's --json stdout as it comes: counts the event lines and
    keeps the tail (the summary is the last line), not millions of lines."""

    def __init__(self, stream, event_type):
        super().__init__(daemon=True)
        self.stream, self.needle = stream, b'\n{"type":"' + event_type.encode() + b'"'
        self.events, self.tail = 0, b""

    def run(self):
        rest = b"\n"
        while chunk := self.stream.read1(1 << 20):
            buf = rest + chunk
            cut = buf.rfind(b"\n")
            self.events += buf[:cut + 1].count(self.needle)
            rest = buf[cut:]
            self.tail = (self.tail + chunk)[-65536:]

    def summary(self):
        return json.loads(self.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])


def _storm_into_small_ring(storm, opens):
    """rbtrace open into a 64 KiB ring, attached (its start line read), a
    storm of `opens` failing opens (or endless with None), the reader
    counting; returns (rbtrace, storm, counter)."""
    # Only the storm's own opens: not its dynamic loader's (--path).
    path = f"/nonexistent-{storm.name}/file"
    p = subprocess.Popen([*RBTRACE, "open", "--json", "--comm", storm.name, "--path", path,
                          "--ring-size", "64K"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = json.loads(p.stdout.readline())
    assert start["type"] == "start" and start["ring_bytes"] == 65536, start
    counter = _EventCounter(p.stdout, "open")
    counter.start()
    s = subprocess.Popen([str(storm), str(opens or 10 ** 12), path], stdout=subprocess.PIPE)
    return p, s, counter


def test_storm_into_a_small_ring_counts_every_drop_exactly(kernel_ok, tmp_path):
    """A million failing opens flat out into a 64 KiB ring: most are dropped,
    and every one is accounted for against the storm's own count.  (Memory
    over a long storm and the time SIGINT takes: benchmarks/timing.py.)"""
    storm = _storm(tmp_path)
    n = 1_000_000
    p, s, counter = _storm_into_small_ring(storm, n)
    try:
        own = json.loads(s.communicate(timeout=600)[0])
        assert own["n"] == own["failed"] == n          # the workload's own count
        p.send_signal(signal.SIGINT)
        err = p.stderr.read().decode()
        p.wait(timeout=120)
        counter.join(120)
    finally:
        for proc in (s, p):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert p.returncode == 130, err
    sm = counter.summary()
    assert sm["type"] == "summary" and sm["stopped_by"] == "SIGINT"
    assert sm["seen"] == n, sm                         # every open, not one more
    assert sm["seen"] == sm["delivered"] + sm["dropped"], sm
    assert sm["submitted"] == sm["delivered"] == counter.events, (sm, counter.events)
    assert sm["dropped"] == sm["ringbuf_full"] and sm["map_full"] == 0
    # The point of the test: the ring overflowed (at ~1.5M opens/s, 64 KiB
    # holds a fraction of a millisecond of records).
    assert sm["dropped"] > 0, sm
    assert (f"{sm['delivered']} events delivered, {sm['dropped']} dropped (ring full "
            f"{sm['dropped']}") in err, err


def test_sigint_in_the_middle_of_a_storm_ends_with_an_exact_summary(kernel_ok, tmp_path):
    """SIGINT while the storm goes on: rbtrace stops by itself (the timeout
    only guards against a hang) and its books balance."""
    storm = _storm(tmp_path)
    p, s, counter = _storm_into_small_ring(storm, None)
    try:
        deadline = time.monotonic() + 120
        while counter.events < 10_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counter.events >= 10_000, "the storm's events did not come"
        p.send_signal(signal.SIGINT)
        err = p.stderr.read().decode()
        p.wait(timeout=120)
        counter.join(120)
    finally:
        for proc in (s, p):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert p.returncode == 130, err
    sm = counter.summary()
    assert sm["stopped_by"] == "SIGINT"
    assert sm["seen"] == sm["delivered"] + sm["dropped"] and sm["dropped"] > 0, sm
    assert sm["submitted"] == sm["delivered"] == counter.events, (sm, counter.events)


def _probe_copy(tmp_path, edit):
    import shutil
    d = tmp_path / "probes"
    shutil.copytree(os.path.join(REPO, "probes"), d)
    src = d / "exec.bpf.c"
    src.write_text(edit(src.read_text()))
    return {**os.environ, "RBTRACE_PROBES_DIR": str(d)}


def test_compiler_diagnostics_never_reach_json_stdout(kernel_ok, tmp_path):
    """clang and BCC write warnings to the process's own fds 1 and 2."""
    env = _probe_copy(tmp_path, lambda s: '#warning "a diagnostic from clang"\n' + s)
    p = subprocess.run([*RBTRACE, "exec", "--json", "-d", "1"], cwd=REPO, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    for line in p.stdout.decode().splitlines():
        assert json.loads(line)["type"]                     # JSON and nothing else
    assert b"diagnostic from clang" not in p.stdout
    # --no-cache: the first run stored the compiled probe, and a cache hit
    # compiles nothing, so has no diagnostic to show.
    d = subprocess.run([*RBTRACE, "exec", "--json", "-d", "1", "--debug", "--no-cache"], cwd=REPO,
                       env=env, capture_output=True, timeout=60)
    assert b"diagnostic from clang" in d.stderr and b"diagnostic" not in d.stdout


def test_missing_tracepoint_is_named(kernel_ok, tmp_path):
    env = _probe_copy(tmp_path, lambda s: s.replace("TRACEPOINT_PROBE(syscalls, sys_enter_execveat)",
                                                    "TRACEPOINT_PROBE(syscalls, sys_enter_nosuchcall)"))
    p = subprocess.run([*RBTRACE, "exec", "--json"], cwd=REPO, env=env, capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b""
    assert len(err.strip().splitlines()) == 1
    assert "tracepoint syscalls:sys_enter_nosuchcall does not exist" in err


def test_hook_kind_that_cannot_load_is_named(kernel_ok, tmp_path):
    """A built-in probe using a hook kind that can't load (forced, so the
    refusal is tested whatever this kernel has) ends with one line."""
    env = _probe_copy(tmp_path, lambda s: s + "\nint kprobe__do_sys_openat2(void *ctx) { return 0; }\n")
    env["RBTRACE_FORCE_UNLOADABLE"] = "kprobe"
    p = subprocess.run([*RBTRACE, "exec", "--json", "-d", "1"], cwd=REPO, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 1 and p.stdout == b"", p.stderr
    src = os.path.join(env["RBTRACE_PROBES_DIR"], "exec.bpf.c")
    assert p.stderr.decode() == (
        f"rbtrace: {src}: uses kprobe hooks, which this kernel can't load: refused by "
        f"RBTRACE_FORCE_UNLOADABLE (a testing aid) (hint: rbtrace doctor lists the hook kinds "
        f"that load here; use tracepoints)\n")


def test_kprobe_refusal_names_the_missing_kernel_option(kernel_ok, tmp_path):
    """Unforced: the reason says why kprobes can't load, from sysfs rather
    than from a failed load's text.  (A kernel with kprobes loads it.)"""
    env = _probe_copy(tmp_path, lambda s: s + "\nint kprobe__do_sys_openat2(void *ctx) { return 0; }\n")
    p = subprocess.run([*RBTRACE, "exec", "--json", "-d", "1"], cwd=REPO, env=env,
                       capture_output=True, timeout=60)
    err = p.stderr.decode()
    if os.path.exists("/sys/bus/event_source/devices/kprobe"):
        assert p.returncode == 0 and parse_json_lines(p.stdout.decode()).summary, err
        return
    assert p.returncode == 1 and p.stdout == b"" and len(err.splitlines()) == 1, err
    assert ("uses kprobe hooks, which this kernel can't load: the kernel has no kprobe support "
            "(CONFIG_KPROBES is off)") in err


@pytest.mark.parametrize("length, truncated", [(4095, False), (4096, True)])
def test_path_at_path_max_is_whole_or_marked(rbtrace, length, truncated):
    """PATH_MAX is 4096 with the NUL: 4095 bytes come through whole, one
    more is marked truncated (the kernel refuses it with ENAMETOOLONG)."""
    head = "/nonexistent-" + uuid.uuid4().hex
    path = head + "/" + "/".join(["d" * 200] * 30)
    path = path[:length - 1] + "f"
    assert len(path) == length
    t = rbtrace("open", "--json", "--path", head)
    with pytest.raises(OSError) as raised:
        os.open(path, os.O_RDONLY)
    r = t.stop()
    (e,) = r.events
    assert e["path_truncated"] is truncated
    if truncated:
        assert e["errno"] == "ENAMETOOLONG" and raised.value.errno == errno.ENAMETOOLONG
        assert path.startswith(e["path"]) and len(e["path"]) == 4095
    else:
        assert e["path"] == path and e["errno"] == "ENOENT"
