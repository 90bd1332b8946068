"""The output without the kernel: render.Output's failed and short writes,
an -o that can't be opened, RBTRACE_DEBUG, and the summary line on stderr
(cli._print_summary) for constructed summaries."""
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from rbtrace import cli
from rbtrace.errors import Exit, OutputError
from rbtrace.follow import start_times
from rbtrace.render import JsonRenderer, Output


def run(*args, env=None):
    full = {k: v for k, v in os.environ.items() if k != "RBTRACE_DEBUG"}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True,
                          timeout=60, env=full)


# --- render.Output ------------------------------------------------------------------

SHORT_WRITE = textwrap.dedent("""
    import json, os, resource, sys
    from rbtrace.errors import OutputError
    from rbtrace.render import Output
    path, limit = sys.argv[1], int(sys.argv[2])
    # Past RLIMIT_FSIZE a write is cut short, then fails with EFBIG
    # (Python ignores SIGXFSZ): a real short write, as on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    out = Output(fd, path)
    line = lambda i: b'{"n":%d,"pad":"%s"}\\n' % (i, b"x" * 50)
    out.write_all(b"".join(line(i) for i in range(3)))
    try:
        out.write_all(b"".join(line(i) for i in range(3, 23)))
    except OutputError as e:
        print(json.dumps({"message": str(e), "errno": e.errno, "kept": e.lines_kept,
                          "offset": os.lseek(fd, 0, os.SEEK_CUR)}))
""")


def test_a_short_write_to_a_file_is_cut_back_to_the_last_whole_line(tmp_path):
    path = tmp_path / "out.json"
    line_len = len(b'{"n":10,"pad":"' + b"x" * 50 + b'"}\n')
    limit = 3 * (line_len - 1) + 11 * line_len + 20       # mid-line in the second batch
    p = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(path), str(limit)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["message"] == f"cannot write {path}: File too large"
    assert report["errno"] == errno.EFBIG
    data = path.read_bytes()
    assert len(data) < limit and data.endswith(b"\n")
    lines = [json.loads(ln) for ln in data.splitlines()]
    assert [ln["n"] for ln in lines] == list(range(len(lines)))
    assert report["kept"] == len(lines) - 3              # whole lines of the failed write
    assert report["offset"] == len(data)                 # and nothing to write past the end


def test_a_device_that_takes_no_writes_is_an_output_error():
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OutputError) as e:
            Output(fd, "/dev/full").write_all(b"{}\n")
    finally:
        os.close(fd)
    assert str(e.value) == "cannot write /dev/full: No space left on device"
    assert e.value.errno == errno.ENOSPC and e.value.lines_kept == 0
    assert e.value.exit_code == Exit.OUTPUT == 74


def test_a_reader_gone_is_a_broken_pipe_not_an_output_error():
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(BrokenPipeError):
            Output(w, "standard output").write_all(b"{}\n")
    finally:
        os.close(w)


def test_a_nonblocking_pipe_gets_every_byte():
    """An O_NONBLOCK stdout (inherited so) fills up: wait, don't fail."""
    r, w = os.pipe2(os.O_NONBLOCK)
    data = b"".join(b"%08d\n" % i for i in range(200_000))     # far more than a pipe holds
    got = []

    def read_all():
        os.set_blocking(r, True)
        while chunk := os.read(r, 1 << 16):
            got.append(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        Output(w, "pipe").write_all(data)
    finally:
        os.close(w)
        reader.join()
    os.close(r)
    assert b"".join(got) == data


def test_a_failed_renderer_writes_nothing_more(tmp_path):
    class Probe:
        name = "x"

    path = tmp_path / "o"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        renderer = JsonRenderer(Output(fd, str(path)), Probe())
        renderer.start({"probe": "x"})
        renderer.output_failed()
        renderer.events([{"type": "x"}])
        renderer.lost({"dropped": 1})
        renderer.close({"delivered": 0})
    finally:
        os.close(fd)
    assert [json.loads(ln)["type"] for ln in path.read_bytes().splitlines()] == ["start"]


def test_start_times_are_of_the_living_only():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    # A zombie until reaped: not running.
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        pass
    try:
        times = start_times([os.getpid(), pid, 2**22 + 1])
    finally:
        os.waitpid(pid, 0)
    assert list(times) == [os.getpid()]
    with open(f"/proc/{os.getpid()}/stat") as f:
        assert times[os.getpid()] == int(f.read().rsplit(")", 1)[1].split()[19])


# --- -o that can't be opened, RBTRACE_DEBUG -----------------------------------------

@pytest.mark.parametrize("path, needle", [
    ("/nonexistent-rbtrace-dir/o.json", "cannot open /nonexistent-rbtrace-dir/o.json: "
                                        "No such file or directory"),
    ("/etc/hostname/o.json", "cannot open /etc/hostname/o.json: Not a directory"),
    ("/", "'/' is a directory"),
    ("/proc/self", "is a directory"),
])
def test_an_output_that_cant_be_opened_is_a_usage_error(path, needle):
    p = run("exec", "--json", "-o", path)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rbtrace: ") and needle in err, err
    assert "Traceback" not in err and p.stdout == b""


@pytest.mark.parametrize("value, traceback", [("1", True), ("0", False), ("", False)])
def test_rbtrace_debug_shows_the_traceback(value, traceback):
    p = run("exec", "--json", "-o", "/nonexistent-rbtrace-dir/o", env={"RBTRACE_DEBUG": value})
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert ("Traceback (most recent call last)" in err) == traceback, err
    assert ("rbtrace.errors.UsageError" in err) == traceback, err
    assert err.splitlines()[-1] == ("rbtrace: cannot open /nonexistent-rbtrace-dir/o: "
                                    "No such file or directory")


# --- the summary line ---------------------------------------------------------------

BASE = {"probe": "exec", "delivered": 10, "dropped": 0, "ringbuf_full": 0, "map_full": 0,
        "not_delivered_count_reached": 0, "not_delivered_output_closed": 0, "not_followed": 0,
        "duration_s": 1.25, "stopped_by": "end", "top_errors": {}}


def command(status, sig=None, argv=("/usr/bin/make", "-j2")):
    return {"command": {"argv": list(argv), "pid": 42, "status": status, "signal": sig}}


@pytest.mark.parametrize("extra, tail", [
    ({}, "rbtrace exec: 10 events delivered, 0 dropped, 1.2s"),
    (command(0), "1.2s; make exited with status 0"),
    (command(2), "1.2s; make exited with status 2"),
    (command(143, "SIGTERM"), "1.2s; make killed by SIGTERM (143)"),
    (command(129, "SIGHUP"), "1.2s; make killed by SIGHUP (129)"),
    (command(None), "1.2s; make was not started"),
    (command(0, argv=("./\x1b]0;x\x07",)), "1.2s; \\x1b]0;x\\x07 exited with status 0"),
    ({**command(0), "followed_running": 3},
     "1.2s; make exited with status 0; 3 followed processes still running, no longer traced"),
    ({**command(0), "followed_running": 0}, "1.2s; make exited with status 0"),
    ({"followed_root": 7, "followed_running": 1},
     "1.2s; 1 followed processes still running, no longer traced"),
    ({"not_followed": 5},
     "0 dropped, 5 child processes not followed (their events are lost), 1.2s"),
    ({"dropped": 3, "ringbuf_full": 2, "map_full": 1},
     "3 dropped (ring full 2, state map full 1; try a larger --ring-size), 1.2s"),
    ({"stopped_by": "count", "not_delivered_count_reached": 4},
     "0 dropped, 4 more not shown after --count, 1.2s"),
    ({"stopped_by": "output error", "not_delivered_output_closed": 6},
     "0 dropped, 6 not written after the output failed, 1.2s"),
    ({"stopped_by": "output closed", "not_delivered_output_closed": 6},
     "0 dropped, 1.2s"),
    ({"top_errors": {"ENOENT": 7, "EACCES": 1}}, "1.2s; top errors: ENOENT 7, EACCES 1"),
])
def test_summary_line(capsys, extra, tail):
    cli._print_summary({**BASE, **extra})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rbtrace exec: 10 events delivered, ")
    assert err.endswith(tail + "\n"), err
