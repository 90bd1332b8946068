"""A write to the output that fails (issue 14 item 1), followed_running
(item 7), and the summary texts on standard error (issue 19 item 14).

A failed write is one line naming the file and the error, exit 74
(Exit.OUTPUT), the summary still on stderr, only whole lines in the file,
and a followed CMD hung up (SIGHUP), never left running untraced.  The
outputs that fail are real: a small tmpfs that fills up (ENOSPC, as -o
and as a redirected stdout), /dev/full, /proc/version (EIO) and a closed
stdout (EBADF).  A reader that goes away (EPIPE) is not a failure.

The workloads hold their last step behind a fifo that the test opens
only after rbtrace has ended: a CMD left running can't finish before
then, and one still waiting there is seen (the fifo has a reader).
"""
import collections
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, parse_json_lines

RBTRACE = [sys.executable, "-m", "rbtrace"]
ENV = {**os.environ, "LANG": "C", "LC_ALL": "C"}
ENV.pop("RBTRACE_DEBUG", None)
OPENS = 2000        # failed opens by the workload: far more than SMALL_FS holds
SMALL_FS = "64k"
# Not a speed limit: a rbtrace that does not hang CMD up waits for it, and
# CMD waits for the test; this ends that deadlock with a failure.
HELD_TIMEOUT = 180


def run(args, timeout=300, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([*RBTRACE, *args], cwd=REPO, env=kw.pop("env", ENV),
                          stderr=subprocess.PIPE, timeout=timeout, **kw)


@pytest.fixture
def small_fs(kernel_ok, tmp_path):
    """A tmpfs of SMALL_FS bytes, unmounted again after the test."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS}", "rbtrace-test", str(d)],
                   check=True)
    yield d
    subprocess.run(["umount", str(d)], check=True)


class HeldWorkload:
    """`sh -c`: OPENS failed opens of DIR/missing-N, then a read from a
    fifo (blocks until the test writes it), then a marker file."""

    def __init__(self, tmp_path, opens=OPENS):
        self.fifo = tmp_path / "hold"
        os.mkfifo(self.fifo)
        self.marker = tmp_path / "after.txt"
        self.missing = str(tmp_path / "missing-")
        self.script = (f"exec >/dev/null 2>&1; i=0; while [ $i -lt {opens} ]; do "
                       f"true < {self.missing}$i; i=$((i+1)); done; "
                       f"read x < {self.fifo}; echo done > {self.marker}")
        self.argv = ["sh", "-c", self.script]

    def reader_left(self) -> bool:
        """Is anything still reading the fifo (the workload, not hung up)?
        If so it is let go, so that it ends: its marker then shows it ran on."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            assert e.errno == errno.ENXIO, e
            return False
        try:
            os.write(fd, b"go\n")
        except BrokenPipeError:
            pass                          # it ended meanwhile
        finally:
            os.close(fd)
        return True


@pytest.fixture
def held(kernel_ok, tmp_path):
    """A HeldWorkload, let go at the end whatever happened (a rbtrace
    killed by a timeout leaves its CMD waiting on the fifo)."""
    made = []

    def make(**kw):
        made.append(HeldWorkload(tmp_path, **kw))
        return made[-1]

    yield make
    for w in made:
        while w.reader_left():
            pass


def error_lines(stderr: str, name: str):
    return [ln for ln in stderr.splitlines() if name in ln and "cannot write" in ln]


def check_one_error_line(p, name, strerror):
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 74, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert error_lines(err, name) == [f"rbtrace: cannot write {name}: {strerror}"], err
    summary = [ln for ln in err.splitlines() if re.match(r"rbtrace (open|exec): \d+ events delivered", ln)]
    assert len(summary) == 1, err          # the summary still reaches stderr
    return err, summary[0]


def whole_json_lines(data: bytes):
    """The lines of `data`, each a whole JSON object, the last one ended."""
    assert data.endswith(b"\n"), data[-200:]
    return [json.loads(ln) for ln in data.split(b"\n")[:-1]]


def missing_opens_are_a_prefix(paths, prefix):
    """The workload's failed opens, in order: missing-0, missing-1, ..."""
    ours = [p for p in paths if p.startswith(prefix)]
    assert ours, paths[:10]
    assert ours == [f"{prefix}{i}" for i in range(len(ours))]
    return len(ours)


def delivered_in(summary_line: str) -> int:
    return int(re.match(r"rbtrace \w+: (\d+) events delivered", summary_line).group(1))


@pytest.mark.parametrize("mode", ["--json", "plain"])
def test_full_file_system_under_o(small_fs, held, mode):
    """-o on a tmpfs that fills up while CMD runs: ENOSPC."""
    w = held()
    out = small_fs / "o.json"
    extra = ["--json"] if mode == "--json" else []
    p = run(["open", *extra, "-o", str(out), "--", *w.argv], timeout=HELD_TIMEOUT)
    err, summary = check_one_error_line(p, str(out), "No space left on device")
    # CMD was hung up, not left to run on untraced.
    assert not w.reader_left(), "CMD still ran after rbtrace ended"
    assert not w.marker.exists()
    assert summary.endswith("; sh killed by SIGHUP (129)"), summary
    assert "still running" not in summary
    data = out.read_bytes()
    assert len(data) > 40000                     # the file system did fill up
    if mode == "--json":
        lines = whole_json_lines(data)
        assert lines[0]["type"] == "start"
        events = lines[1:]
        assert {e["type"] for e in events} == {"open"}   # no summary: it could not be written
        n = missing_opens_are_a_prefix([e["path"] for e in events], w.missing)
        assert all(e["errno"] == "ENOENT" for e in events[-n:])
        # Top errors count what is in the file, not the batch that failed.
        errors = collections.Counter(e["errno"] for e in events if e["errno"])
        tops = summary.split("; top errors: ")[1].split(";")[0]
        assert tops == ", ".join(f"{k} {v}" for k, v in errors.most_common(5))
    else:
        assert data.endswith(b"\n")
        header, *events = data.decode().split("\n")[:-1]
        assert header.split() == ["TIME", "PID", "COMM", "FD/ERR", "FLAGS", "PATH"]
        assert all(len(e.split()) == 6 for e in events), events
        missing_opens_are_a_prefix([e.split()[-1] for e in events], w.missing)
    # Every event line in the file is counted as delivered, and only those.
    assert delivered_in(summary) == len(events)


def test_full_file_system_as_stdout(small_fs, held):
    """The same with stdout redirected to the file (a broken stdout)."""
    w = held()
    out = small_fs / "o.json"
    with open(out, "wb") as f:
        p = run(["open", "--json", "--", *w.argv], stdout=f, timeout=HELD_TIMEOUT)
    err, summary = check_one_error_line(p, "standard output", "No space left on device")
    assert not w.reader_left(), "CMD still ran after rbtrace ended"
    assert not w.marker.exists()
    assert summary.endswith("; sh killed by SIGHUP (129)"), summary
    lines = whole_json_lines(out.read_bytes())
    n = missing_opens_are_a_prefix([e["path"] for e in lines[1:]], w.missing)
    assert n > 0 and delivered_in(summary) == len(lines) - 1


def test_full_file_system_without_a_command(small_fs):
    """No CMD: the host's opens fill the file; rbtrace stops with 74."""
    out = small_fs / "o.json"
    fill = subprocess.Popen(["sh", "-c", "while :; do true < /nonexistent-rbtrace-fill; done"],
                            stderr=subprocess.DEVNULL)
    try:
        p = run(["open", "--json", "--path", "/nonexistent-rbtrace-fill", "-o", str(out)])
    finally:
        fill.kill()
        fill.wait()
    err, summary = check_one_error_line(p, str(out), "No space left on device")
    lines = whole_json_lines(out.read_bytes())
    assert lines[0]["type"] == "start"
    assert {e["path"] for e in lines[1:]} == {"/nonexistent-rbtrace-fill"}
    assert delivered_in(summary) == len(lines) - 1


@pytest.mark.parametrize("path, strerror", [("/dev/full", "No space left on device"),
                                            ("/proc/version", "Input/output error")])
def test_output_that_takes_no_writes(kernel_ok, tmp_path, path, strerror):
    """The first line already fails: CMD is never started."""
    marker = tmp_path / "ran"
    p = run(["exec", "--json", "-o", path, "--", "sh", "-c", f"echo ran > {marker}"])
    err, summary = check_one_error_line(p, path, strerror)
    assert summary.endswith("; sh was not started"), summary
    assert not marker.exists()
    # Without a command too (plain lines this time).
    p = run(["exec", "-o", path, "-c", "1"])
    check_one_error_line(p, path, strerror)


def test_closed_stdout(kernel_ok, tmp_path):
    marker = tmp_path / "ran"
    p = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *RBTRACE, "exec", "--json", "--",
                        "sh", "-c", f"echo ran > {marker}"],
                       cwd=REPO, env=ENV, capture_output=True, timeout=300)
    err, summary = check_one_error_line(p, "standard output", "Bad file descriptor")
    assert summary.endswith("; sh was not started"), summary
    assert not marker.exists()


def test_closed_stdout_with_o_stays_closed_for_cmd(kernel_ok, tmp_path):
    """With -o the closed stdout is CMD's business: CMD finds fd 1 closed
    (not one of rbtrace's files), and the run succeeds."""
    report = tmp_path / "fd1"
    out = tmp_path / "o.json"
    check = (f"import os\ntry:\n    os.fstat(1)\n    r = os.readlink('/proc/self/fd/1')\n"
             f"except OSError as e:\n    r = e.strerror\n"
             f"open({str(report)!r}, 'w').write(r)\n")
    p = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *RBTRACE, "exec", "--json", "-o",
                        str(out), "--", sys.executable, "-c", check],
                       cwd=REPO, env=ENV, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert report.read_text() == "Bad file descriptor"
    r = parse_json_lines(out.read_text())
    assert r.summary["command"]["status"] == 0
    assert r.events[0]["argv"][0] == sys.executable


def test_reader_gone_is_not_an_error(held):
    """EPIPE (`| head -1`) stops the tracing quietly: no error line, CMD's
    status, and CMD is not hung up but waited for."""
    w = held(opens=200)
    q = subprocess.Popen([*RBTRACE, "open", "--json", "--", *w.argv], cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(q.stdout.readline())["type"] == "start"
        q.stdout.readline()                    # an event: CMD runs
        q.stdout.close()                       # the reader goes away
        while not w.reader_left():             # CMD gets to the fifo, untouched
            assert q.poll() is None, q.stderr.read()
            time.sleep(0.05)
        err = q.stderr.read().decode()
        assert q.wait(timeout=300) == 0, err
    finally:
        if q.poll() is None:
            q.kill()
            q.wait()
    assert w.marker.exists()                   # CMD ran to its end
    assert "cannot write" not in err and "Traceback" not in err and "Exception" not in err, err
    assert err.splitlines()[-1].endswith("; sh exited with status 0"), err


def test_debug_env_shows_the_traceback(kernel_ok):
    p = run(["exec", "--json", "-o", "/dev/full"], env={**ENV, "RBTRACE_DEBUG": "1"})
    err = p.stderr.decode()
    assert p.returncode == 74, err
    assert "Traceback (most recent call last)" in err
    assert "OutputError" in err
    assert err.splitlines()[-1] == "rbtrace: cannot write /dev/full: No space left on device"


# --- followed_running, and the summary's words for CMD ------------------------------

def test_followed_running_after_an_early_stop_counts_only_the_living(kernel_ok):
    """-c 1 stops at sh's own exec, while sh runs on: everything has
    exited by the time rbtrace ends, which waited for sh."""
    p = run(["exec", "--json", "-c", "1", "--", "sh", "-c",
             "/bin/true; /bin/true; sleep 1; /bin/true"])
    err = p.stderr.decode()
    assert p.returncode == 0, err
    r = parse_json_lines(p.stdout.decode())
    assert r.summary["stopped_by"] == "count"
    assert r.summary["command"]["status"] == 0
    assert r.summary["followed_running"] == 0
    assert "still running" not in err


def test_followed_running_counts_one_left_behind_after_an_early_stop(kernel_ok, tmp_path):
    """-c 2 stops at the exec of a background sh, which is then still
    waiting on a fifo when CMD has exited and rbtrace ends: 1, and /proc
    agrees."""
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    pidfile = tmp_path / "pid"
    inner = f"echo $$ > {pidfile}; read x < {fifo}"
    # CMD waits for the inner sh to have exec'd (it writes its pid after):
    # else, on a loaded machine, CMD could exit and end the run before the
    # second exec happens.  A builtin loop: a sleep would be an exec.
    p = run(["exec", "--json", "-c", "2", "--", "sh", "-c",
             f"sh -c '{inner}' >/dev/null 2>&1 & "
             f"while [ ! -s {pidfile} ]; do :; done; exit 0"])
    try:
        err = p.stderr.decode()
        assert p.returncode == 0, err
        # The inner sh's exec was traced, but it may still be on its way
        # to writing its pid when rbtrace is done.
        for _ in range(500):
            if pidfile.exists() and pidfile.read_text().endswith("\n"):
                break
            time.sleep(0.01)
        pid = int(pidfile.read_text())
        with open(f"/proc/{pid}/stat") as f:         # alive, not a zombie
            assert f.read().rsplit(")", 1)[1].split()[0] in "RSD"
        r = parse_json_lines(p.stdout.decode())
        assert [e["pid"] for e in r.events][1] == pid
        assert r.summary["followed_running"] == 1
        assert err.splitlines()[-1].endswith(
            "; sh exited with status 0; 1 followed processes still running, no longer traced"), err
    finally:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"go\n")
        os.close(fd)


@pytest.mark.parametrize("script, status, words", [
    ("exit 3", 3, "sh exited with status 3"),
    ("kill -TERM $$", 128 + signal.SIGTERM, "sh killed by SIGTERM (143)"),
    ("kill -KILL $$", 128 + signal.SIGKILL, "sh killed by SIGKILL (137)"),
])
def test_summary_says_how_cmd_ended(kernel_ok, script, status, words):
    truth = subprocess.run(["sh", "-c", script])          # the same, untraced
    shell_status = truth.returncode if truth.returncode >= 0 else 128 - truth.returncode
    assert shell_status == status
    p = run(["exec", "--json", "--", "sh", "-c", script])
    err = p.stderr.decode()
    assert p.returncode == status, err
    assert err.splitlines()[-1].endswith("; " + words), err
    r = parse_json_lines(p.stdout.decode())
    sig = signal.Signals(status - 128).name if status > 128 else None
    assert r.summary["command"]["status"] == status and r.summary["command"]["signal"] == sig
