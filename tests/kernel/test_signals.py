"""Every signal whose default action would end rbtrace (issue 14, item 5).

SIGHUP, SIGQUIT and SIGALRM stop rbtrace as SIGINT and SIGTERM do: the
ring is drained, the summary written, and the exit status is 128 + the
signal.  With `-- CMD`, a signal sent to rbtrace is passed on to CMD once
and rbtrace traces on until CMD exits.  SIGUSR1 reopens the -o file
(tests/kernel/test_rotate.py); without one it is ignored, with one line on
stderr.

The ground truth is the workload's own record: the paths it tried to open
(rbtrace's --path keeps only those, in the kernel), how many copies of the
signal it got, and its pid, which must be gone when rbtrace has exited.
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, bpf_ids_held, parse_json_lines, still_loaded
from test_follow import _run_in_terminal, _tmux, tmux_shell  # noqa: F401 (a fixture)

RBTRACE = [sys.executable, "-m", "rbtrace"]
PYTHON = "/usr/bin/python3"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}

NEW_STOP_SIGNALS = [signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM]

# opens DIR MARK N: tries to open N paths under /nonexistent/MARK and
# appends each path it tried to DIR/record.
OPENS = r"""
import sys
d, mark, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tried = []
for i in range(n):
    path = f"/nonexistent/{mark}/{i}"
    try:
        open(path).close()
    except FileNotFoundError:
        tried.append(path)
with open(f"{d}/record", "a") as f:
    f.write("".join(p + "\n" for p in tried))
"""

# CMD SIG DIR MARK: opens 50 marked paths, writes its pid to DIR/ready, waits
# (at most 20 s) for SIG, counts every copy that comes within 1 s more,
# opens 50 more marked paths (rbtrace must still be tracing), writes the
# count to DIR/count and SIGUSR1s it got to DIR/usr1, exits 40 + count.
CMD = r"""
import os, signal, sys
sig, d, mark = signal.Signals[sys.argv[1]], sys.argv[2], sys.argv[3]
signal.pthread_sigmask(signal.SIG_BLOCK, {sig, signal.SIGUSR1})

def opens(first, n):
    tried = []
    for i in range(first, first + n):
        path = f"/nonexistent/{mark}/{i}"
        try:
            open(path).close()
        except FileNotFoundError:
            tried.append(path)
    with open(f"{d}/record", "a") as f:
        f.write("".join(p + "\n" for p in tried))

opens(0, 50)
with open(f"{d}/ready", "w") as f:
    f.write(f"{os.getpid()}\n")
n = 0
if signal.sigtimedwait([sig], 20):
    n = 1
    while signal.sigtimedwait([sig], 1):
        n += 1
opens(50, 50)
with open(f"{d}/usr1", "w") as f:
    f.write(f"{int(signal.SIGUSR1 in signal.sigpending())}\n")
with open(f"{d}/count", "w") as f:
    f.write(f"{n}\n")
sys.exit(40 + n)
"""


def _start(args, **kw):
    """rbtrace in a session of its own (no terminal: a signal can only come
    from kill(2)); returns once its `start` line is out."""
    # Unbuffered: readline() then takes the start line alone.  A buffered
    # one could also take the next line (CMD's first exec comes right
    # after), which communicate(), reading the fd, would then never see.
    p = subprocess.Popen([*RBTRACE, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, bufsize=0, **kw)
    first = p.stdout.readline()
    if not first:
        p.kill()
        raise AssertionError(f"rbtrace did not start: {p.communicate()[1].decode()}")
    assert json.loads(first)["type"] == "start", first
    return p, first


def _finish(p, first, timeout=90):
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    r = parse_json_lines((first + out).decode())
    r.stderr, r.returncode = err.decode(errors="replace"), p.returncode
    return r


def _wait_file(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{path} never written (rbtrace rc={proc.poll()})")


def _gone(pid):
    """The process has exited and been reaped (rbtrace's job for CMD)."""
    return not os.path.exists(f"/proc/{pid}")


def _record(tmp_path):
    return (tmp_path / "record").read_text().splitlines()


def _paths(r):
    assert all(e["errno"] == "ENOENT" for e in r.events), r.events[:3]
    return [e["path"] for e in r.events]


def _complete(r):
    s = r.summary
    assert s is not None, f"no summary line; rc={r.returncode} stderr={r.stderr!r}"
    assert not r.lost and s["dropped"] == 0 and s["missed_by_kernel"] == 0, s
    assert s["seen"] == s["submitted"] == s["delivered"] == len(r.events), s
    assert "Traceback" not in r.stderr and "events delivered" in r.stderr, r.stderr


@pytest.mark.parametrize("sig", NEW_STOP_SIGNALS, ids=lambda s: s.name)
def test_stop_signal_drains_summarises_and_exits_128_plus_signal(kernel_ok, tmp_path, sig):
    mark = uuid.uuid4().hex
    p, first = _start(["open", "--json", "--path", f"/nonexistent/{mark}/"])
    ours = bpf_ids_held(p.pid)
    assert ours[0] and ours[1], ours
    subprocess.run([PYTHON, "-c", OPENS, str(tmp_path), mark, "300"], check=True, env=ENV)
    p.send_signal(sig)                  # at once: what is still in the ring must be drained
    r = _finish(p, first)
    assert r.returncode == 128 + sig, r.stderr
    _complete(r)
    assert r.summary["stopped_by"] == sig.name
    assert _paths(r) == _record(tmp_path)
    assert len(r.events) == 300
    assert still_loaded(ours) == [set(), set()], "programs or maps left loaded"


@pytest.mark.parametrize("sig", NEW_STOP_SIGNALS, ids=lambda s: s.name)
def test_stop_signal_is_passed_on_to_cmd_once_and_tracing_goes_on_until_it_exits(
        kernel_ok, tmp_path, sig):
    mark = uuid.uuid4().hex
    p, first = _start(["open", "--json", "--path", f"/nonexistent/{mark}/", "--",
                       PYTHON, "-c", CMD, sig.name, str(tmp_path), mark])
    cmd_pid = int(_wait_file(tmp_path / "ready", p))
    ours = bpf_ids_held(p.pid)
    assert bpf_ids_held(cmd_pid) == (set(), set()), "CMD holds rbtrace's BPF objects"
    p.send_signal(sig)
    r = _finish(p, first)
    assert still_loaded(ours) == [set(), set()], "programs or maps left loaded"
    left = not _gone(cmd_pid)
    if left:
        os.kill(cmd_pid, signal.SIGKILL)
    assert not left, f"CMD left running, untraced; rbtrace rc={r.returncode}"
    assert (tmp_path / "count").read_text() == "1\n", "CMD got the signal more or less than once"
    assert r.returncode == 41, r.stderr                  # CMD's own status
    _complete(r)
    assert r.summary["command"] == {"argv": [PYTHON, "-c", CMD, sig.name, str(tmp_path), mark],
                                    "pid": cmd_pid, "status": 41, "signal": None}
    assert r.summary["stopped_by"] == "command exited"
    # The opens CMD made after the signal were traced too.
    assert _paths(r) == _record(tmp_path)
    assert len(r.events) == 100
    assert r.summary["followed_running"] == 0


@pytest.mark.parametrize("sig", NEW_STOP_SIGNALS, ids=lambda s: s.name)
def test_stop_signal_ends_a_cmd_that_does_not_catch_it_like_a_shell(kernel_ok, tmp_path, sig):
    """CMD dies of the signal: rbtrace reports it and exits 128 + signal."""
    ready = tmp_path / "ready"
    p, first = _start(["exec", "--json", "--", "/bin/sh", "-c",
                       f"echo $$ >{ready}; exec /bin/sleep 30"])
    cmd_pid = int(_wait_file(ready, p))
    while open(f"/proc/{cmd_pid}/comm").read() != "sleep\n":     # sh has exec'd sleep
        time.sleep(0.02)
    p.send_signal(sig)
    r = _finish(p, first)
    assert r.returncode == 128 + sig, r.stderr
    _complete(r)
    assert r.summary["command"]["status"] == 128 + sig
    assert r.summary["command"]["signal"] == sig.name
    assert [e["argv"] for e in r.events] == [
        ["/bin/sh", "-c", f"echo $$ >{ready}; exec /bin/sleep 30"], ["/bin/sleep", "30"]]
    assert _gone(cmd_pid)


def _cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigusr1_is_ignored_with_one_line(kernel_ok, tmp_path):
    """Without -o there is no file to reopen.  The signal's byte in the
    wake-up pipe must be read, or every poll returns at once: rbtrace then
    spins a CPU until it ends."""
    mark = uuid.uuid4().hex
    p, first = _start(["open", "--json", "--path", f"/nonexistent/{mark}/"])
    p.send_signal(signal.SIGUSR1)
    subprocess.run([PYTHON, "-c", OPENS, str(tmp_path), mark, "100"], check=True, env=ENV)
    p.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    cpu = _cpu_seconds(p.pid)
    time.sleep(1.0)
    assert _cpu_seconds(p.pid) - cpu < 0.3, "rbtrace spins after SIGUSR1"
    assert p.poll() is None, "SIGUSR1 ended rbtrace"
    p.send_signal(signal.SIGINT)
    r = _finish(p, first)
    assert r.returncode == 130, r.stderr
    _complete(r)
    assert r.summary["stopped_by"] == "SIGINT"
    assert _paths(r) == _record(tmp_path)
    lines = r.stderr.splitlines()
    assert lines[:2] == ["rbtrace: SIGUSR1 ignored: it reopens the file of -o FILE, "
                         "and there is none"] * 2, lines
    assert len(lines) == 3 and "events delivered" in lines[2], lines


def test_sigusr1_is_not_passed_on_to_cmd(kernel_ok, tmp_path):
    mark = uuid.uuid4().hex
    p, first = _start(["open", "--json", "--path", f"/nonexistent/{mark}/", "--",
                       PYTHON, "-c", CMD, "SIGTERM", str(tmp_path), mark])
    cmd_pid = int(_wait_file(tmp_path / "ready", p))
    p.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert p.poll() is None, "SIGUSR1 ended rbtrace"
    p.send_signal(signal.SIGTERM)
    r = _finish(p, first)
    assert (tmp_path / "usr1").read_text() == "0\n", "CMD got rbtrace's SIGUSR1"
    assert (tmp_path / "count").read_text() == "1\n"
    assert r.returncode == 41, r.stderr
    _complete(r)
    assert _paths(r) == _record(tmp_path) and len(r.events) == 100
    assert "SIGUSR1 ignored" in r.stderr
    assert _gone(cmd_pid)


def test_sighup_ignored_at_start_stays_ignored(kernel_ok, tmp_path):
    """As under nohup(1): a hang-up neither stops rbtrace nor is passed on."""
    def ignore_hup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    mark = uuid.uuid4().hex
    p, first = _start(["open", "--json", "--path", f"/nonexistent/{mark}/"],
                      preexec_fn=ignore_hup)
    p.send_signal(signal.SIGHUP)
    subprocess.run([PYTHON, "-c", OPENS, str(tmp_path), mark, "100"], check=True, env=ENV)
    time.sleep(0.5)
    assert p.poll() is None, "SIGHUP ended rbtrace under nohup"
    p.send_signal(signal.SIGINT)
    r = _finish(p, first)
    assert r.returncode == 130, r.stderr
    _complete(r)
    assert _paths(r) == _record(tmp_path)


def test_ctrl_backslash_on_a_terminal_reaches_cmd_once(tmux_shell, tmp_path):
    """Ctrl-\\ sends SIGQUIT to the terminal's foreground process group,
    rbtrace and CMD alike, from the kernel: rbtrace must not send CMD a
    second copy, nor die of it; it traces on until CMD exits."""
    mark = uuid.uuid4().hex
    (tmp_path / "cmd.py").write_text(CMD)
    status, out = tmp_path / "status", tmp_path / "out.json"
    _run_in_terminal(tmux_shell, f"{' '.join(RBTRACE)} open --json -o {out} "
                                 f"--path /nonexistent/{mark}/ -- {PYTHON} {tmp_path}/cmd.py "
                                 f"SIGQUIT {tmp_path} {mark} 2>{tmp_path}/err; echo $? >{status}")
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline, (tmp_path / "err").read_text()
        time.sleep(0.05)
    _tmux("send-keys", "-t", tmux_shell, "C-\\")
    while not (status.exists() and status.read_text().endswith("\n")):
        assert time.monotonic() < deadline + 60, "rbtrace never ended"
        time.sleep(0.05)
    assert (tmp_path / "count").read_text() == "1\n", "CMD got Ctrl-\\'s SIGQUIT more or less than once"
    assert status.read_text() == "41\n", (tmp_path / "err").read_text()
    r = parse_json_lines(out.read_text())
    r.stderr, r.returncode = (tmp_path / "err").read_text(), 41
    _complete(r)
    assert r.summary["command"]["status"] == 41
    assert _paths(r) == _record(tmp_path) and len(r.events) == 100
