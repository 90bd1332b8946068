"""`-- CMD` without the kernel: finding CMD as a shell would, the statuses
a shell reports, the /proc walk for --pid --children, the command line."""
import os
import signal
import subprocess

import pytest

from rbtrace import follow
from rbtrace.cli import main
from rbtrace.errors import CommandError, Exit


def _exe(path, text="#!/bin/sh\nexit 0\n", mode=0o755):
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_resolve_takes_the_first_executable_in_path_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _exe(a / "tool", mode=0o644)          # not executable: skipped, as by execvp
    want = _exe(b / "tool")
    _exe(tmp_path / "tool")
    assert follow.resolve("tool", f"{a}:{b}:{tmp_path}") == want


@pytest.mark.parametrize("make, name, code, message", [
    (lambda d: None, "missing-tool", Exit.NOT_FOUND, "command not found"),
    (lambda d: _exe(d / "plain", mode=0o644), "plain", Exit.CANNOT_EXECUTE, "Permission denied"),
    (lambda d: (d / "adir").mkdir(), "{d}/adir", Exit.CANNOT_EXECUTE, "Is a directory"),
    (lambda d: None, "{d}/nowhere", Exit.NOT_FOUND, "No such file or directory"),
    (lambda d: None, "", Exit.NOT_FOUND, "command not found"),
])
def test_resolve_fails_as_a_shell_does(tmp_path, make, name, code, message):
    make(tmp_path)
    with pytest.raises(CommandError) as e:
        follow.resolve(name.format(d=tmp_path), str(tmp_path))
    assert e.value.exit_code == code
    assert message in str(e.value)


def test_statuses_are_what_a_shell_reports():
    """shell_status of a real wait status against sh's own $?."""
    for script in ("exit 7", "exit 0", "kill -TERM $$", "kill -KILL $$"):
        child = os.fork()
        if child == 0:
            os.execv("/bin/sh", ["sh", "-c", script])
        _, status = os.waitpid(child, 0)
        said = subprocess.run(["sh", "-c", f"sh -c '{script}'; echo $?"],
                              capture_output=True, text=True).stdout
        assert follow.shell_status(status) == int(said), script


def test_descendants_walks_the_parent_chain(tmp_path):
    """A fake /proc: 10 <- 11 <- 12, 10 <- 13; 20 unrelated; comm with ') '."""
    tree = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    for pid, ppid in tree.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (odd) name) S {ppid} 1 1 0\n")
    (tmp_path / "self").mkdir()
    assert follow.descendants([10], proc=str(tmp_path)) == {11, 12, 13}
    assert follow.descendants([11, 20], proc=str(tmp_path)) == {12, 21}


def _comms(pids):
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                out.append(f.read().strip())
        except OSError:
            out.append(None)
    return out


def test_descendants_of_a_real_tree():
    child = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    found = set()
    try:
        # A child is found as soon as it is forked, still "sh" until it has
        # exec'd sleep: wait for both to be sleep.
        for _ in range(500):
            found = follow.descendants([child.pid])
            if len(found) == 2 and _comms(found) == ["sleep", "sleep"]:
                break
            signal.sigtimedwait([], 0.01)
        assert len(found) == 2
        assert _comms(found) == ["sleep", "sleep"]
    finally:
        child.kill()
        child.wait()
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("argv, code, text", [
    (["exec", "--json", "--"], Exit.USAGE, "nothing after --"),
    (["exec", "-p", "1", "--", "true"], Exit.USAGE, "--pid can't be combined"),
    (["open", "--children"], Exit.USAGE, "--children needs --pid"),
    (["exec", "--", "rbtrace-no-such-command"], Exit.NOT_FOUND, "command not found"),
    (["open", "--", "/"], Exit.CANNOT_EXECUTE, "Is a directory"),
])
def test_command_line_errors_are_one_line(argv, code, text, capsys):
    """Refused before anything is forked or loaded (no root needed)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err, err


def test_usage_shows_the_command():
    from click.testing import CliRunner
    from rbtrace.cli import cli
    out = CliRunner().invoke(cli, ["exec", "--help"]).output
    assert "[-- CMD [ARGS]...]" in out.splitlines()[0]


def test_pid_must_be_a_running_process_not_a_thread():
    """--pid on a thread id or a pid that doesn't exist would trace nothing,
    silently: it is refused instead (exit 2), with or without --children."""
    import threading
    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    try:
        tid = t.native_id
        for argv in (["exec", "--pid", str(tid)], ["open", "--pid", str(tid), "--children"]):
            with pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == Exit.USAGE
        with pytest.raises(Exception) as e:
            follow.check_process(tid)
        assert f"is a thread of process {os.getpid()}" in str(e.value)
    finally:
        done.set()
        t.join()
    follow.check_process(os.getpid())
    free = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 1
    while os.path.exists(f"/proc/{free}"):
        free += 1
    with pytest.raises(Exception, match="no such process"):
        follow.check_process(free)
