"""Rotation and SIGUSR1's reopen under a real storm (issue 18, item 4).

benchmarks/storm.c, under a name of its own, tries to open one path of its
own N times, paced so that the run lasts a few seconds; rbtrace traces it
(--comm and --path: only the storm's own opens) into -o FILE rotated every
64 KiB.  In the middle of the storm the file is renamed, as logrotate does,
and rbtrace is sent SIGUSR1.  The ground truth is the storm's own count and
the seq numbers: the union of every file must hold each seq 0..N-1 exactly
once, in order when the files are read in the order of their `part`, and
every file must begin with a start line and hold only whole lines.
"""
import json
import os
import signal
import subprocess
import time
import uuid

from conftest import REPO, RBTRACE_ARGV

SIZE = 64 << 10
KEEP = 10


def _storm(tmp_path):
    src = os.path.join(REPO, "benchmarks", "storm.c")
    exe = tmp_path / ("rbrot" + uuid.uuid4().hex[:10])
    subprocess.run(["gcc", "-O2", "-o", str(exe), src], check=True)
    return exe


def _wait(cond, proc, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"rbtrace ended (rc={proc.returncode}) before {what}: "
                                 f"{proc.communicate()[1].decode(errors='replace')}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _read(path):
    data = path.read_bytes()
    assert data.endswith(b"\n"), (path.name, data[-100:])
    return [json.loads(ln) for ln in data.split(b"\n")[:-1]]       # each line whole JSON


def test_a_storm_across_rotations_and_a_sigusr1_reopen_loses_and_repeats_nothing(
        kernel_ok, tmp_path):
    storm = _storm(tmp_path)
    target = f"/nonexistent-{storm.name}/file"
    out = tmp_path / "out"
    out.mkdir()
    f = out / "events.json"
    moved = out / "events.json.logrotated"
    p = subprocess.Popen([*RBTRACE_ARGV, "open", "--json", "--comm", storm.name, "--path", target,
                          "-o", str(f), "--rotate-size", "64K", "--rotate-keep", str(KEEP)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The start line is written once the probes are attached.
        _wait(lambda: f.exists() and f.read_bytes().endswith(b"\n"), p, "the start line")
        # About 440 bytes an event: 1200 events take FILE through 8-9
        # rotations of 64 KiB, few enough for KEEP=10 old files plus the
        # renamed one to hold them all.  Paced, 2 s.
        n = 1200
        s = subprocess.Popen([str(storm), str(n), target, "600"], stdout=subprocess.PIPE)
        # In the middle: after some rotations, with events flowing.
        _wait(lambda: (out / "events.json.3").exists(), p, "three rotations")
        assert s.poll() is None, "the storm ended before the reopen: pace it slower"
        os.rename(f, moved)
        p.send_signal(signal.SIGUSR1)
        storm_out, _ = s.communicate(timeout=60)
        ground = json.loads(storm_out)
        assert ground["n"] == ground["failed"] == n
        # Every event written before stopping: rbtrace's own count of them
        # is in the summary; wait for the last seq to reach a file.
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    err = err.decode(errors="replace")
    assert p.returncode == 130, err
    assert "Traceback" not in err and "SIGUSR1" not in err, err

    names = sorted(x.name for x in out.iterdir())
    rotated = [f"events.json.{i}" for i in range(1, KEEP + 1)]
    assert set(names) <= {"events.json", "events.json.logrotated", *rotated}, names
    assert "events.json.logrotated" in names and "events.json" in names
    files = {name: _read(out / name) for name in names}
    starts = {}
    for name, lines in files.items():
        first = lines[0]
        assert first["type"] == "start", (name, first)
        assert [ln["type"] for ln in lines].count("start") == 1, name
        starts[name] = first["part"]
        assert {k: v for k, v in first.items() if k != "part"} == \
            {k: v for k, v in files["events.json"][0].items() if k != "part"}
        if name != "events.json":
            # rotated when the next line did not fit; the renamed one at any size
            assert (out / name).stat().st_size <= SIZE, name
    order = sorted(files, key=starts.get)
    assert [starts[n] for n in order] == list(range(1, len(order) + 1)), starts
    assert len(order) >= 7, f"5 rotations and a reopen at least: {names}"
    # The reopen made a new FILE, which later rotations moved on: the renamed
    # file is followed by one whose start came with the reopen, and precedes
    # everything rotated out after it.
    events = [e for name in order for e in files[name] if e["type"] == "open"]
    assert all(e["comm"] == storm.name and e["path"] == target for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(n)), (len(seqs), len(set(seqs)), seqs[:5], seqs[-5:])
    assert len({e["pid"] for e in events}) == 1
    # the summary is the last line of FILE, and agrees
    summary = files["events.json"][-1]
    assert summary["type"] == "summary" and order[-1] == "events.json"
    assert summary["delivered"] == summary["seen"] == n and summary["dropped"] == 0, summary
    lost = [ln for lines in files.values() for ln in lines if ln["type"] == "lost"]
    assert lost == []
    # the renamed file holds part of the storm, and so does the file after it
    moved_seqs = [e["seq"] for e in files["events.json.logrotated"] if e["type"] == "open"]
    after = order[order.index("events.json.logrotated") + 1]
    after_seqs = [e["seq"] for e in files[after] if e["type"] == "open"]
    assert moved_seqs and after_seqs and after_seqs[0] == moved_seqs[-1] + 1


def test_plain_lines_rotate_with_the_header_at_the_top_of_every_file(kernel_ok, tmp_path):
    """Without --json, -o writes plain lines: every file begins with the
    header line, and the storm's opens are each on one line of one file."""
    storm = _storm(tmp_path)
    target = f"/nonexistent-{storm.name}/file"
    out = tmp_path / "out"
    out.mkdir()
    f = out / "events.txt"
    p = subprocess.Popen([*RBTRACE_ARGV, "open", "--comm", storm.name, "--path", target,
                          "-o", str(f), "--rotate-size", "4K", "--rotate-keep", "100"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: f.exists() and f.read_bytes().endswith(b"\n"), p, "the header line")
        n = 300
        s = subprocess.run([str(storm), str(n), target], capture_output=True, timeout=60)
        assert json.loads(s.stdout)["failed"] == n
        _wait(lambda: sum(x.read_bytes().count(target.encode()) for x in out.iterdir()) >= n,
              p, "every open written", timeout=30)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err
    assert f"{n} events delivered, 0 dropped" in err.decode(), err
    names = [f"events.txt.{i}" for i in range(100, 0, -1)] + ["events.txt"]
    texts = [(out / x).read_text() for x in names if (out / x).exists()]
    assert len(texts) == len(list(out.iterdir())) >= 5
    header = texts[0].splitlines()[0]
    from rbtrace.spec import load
    assert header.split() == [c.header for c in load("open").columns], header
    rows = 0
    for t in texts:
        lines = t.splitlines()
        assert t.endswith("\n") and len(t.encode()) <= 4096 and lines[0] == header
        assert all(ln.endswith(target) and storm.name in ln for ln in lines[1:]), lines[1:3]
        rows += len(lines) - 1
    assert rows == n
