"""follow.py without the kernel (issue 19, item 14): SignalFd's blocking,
reading and re-delivery on close; pidfd_open failing; a held CMD that is
abandoned or forwarded a signal.  Real signals and real children, no root."""
import errno
import os
import signal
import time

import pytest

from rbtrace import follow
from rbtrace.errors import EnvironmentProblem, UsageError

SIG = signal.SIGUSR2          # one pytest and rbtrace leave alone


@pytest.fixture
def counted():
    """A Python handler for SIG that records every delivery."""
    got = []
    old = signal.signal(SIG, lambda s, f: got.append(s))
    yield got
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {SIG})     # anything left comes here
    signal.signal(SIG, old)


def test_signalfd_blocks_reads_and_says_who_sent(counted):
    sfd = follow.SignalFd((SIG,))
    try:
        assert SIG in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        os.kill(os.getpid(), SIG)
        assert counted == [], "the handler ran while the signal fd was open"
        assert sfd.read() == [(SIG, False)]           # kill(2): SI_USER, not the kernel
        assert sfd.read() == []
    finally:
        sfd.close()
    assert counted == [], "a signal already read was delivered again"
    assert SIG not in signal.pthread_sigmask(signal.SIG_BLOCK, ())


def test_signalfd_close_delivers_what_is_still_waiting_once(counted):
    sfd = follow.SignalFd((SIG,))
    os.kill(os.getpid(), SIG)
    os.kill(os.getpid(), SIG)     # a standard signal is pending once, however often sent
    assert counted == []
    sfd.close()
    assert counted == [SIG], "close() must hand the waiting signal to the handler, once"
    os.kill(os.getpid(), SIG)     # unblocked: delivered as usual again
    assert counted == [SIG, SIG]


def test_signalfd_of_several_signals_reads_each(counted):
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        sfd = follow.SignalFd((SIG, signal.SIGUSR1))
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), SIG)
            assert sorted(sfd.read()) == sorted([(SIG, False), (signal.SIGUSR1, False)])
        finally:
            sfd.close()
    finally:
        signal.signal(signal.SIGUSR1, old)


def _marker_cmd(tmp_path):
    marker = tmp_path / "ran"
    return follow.Command(["/bin/sh", "-c", f"touch {marker}"]), marker


def _reaped(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_pidfd_open_failing_kills_the_held_cmd_and_says_why(tmp_path, monkeypatch):
    cmd, marker = _marker_cmd(tmp_path)

    def fail(pid, flags=0):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    monkeypatch.setattr(os, "pidfd_open", fail)
    with pytest.raises(EnvironmentProblem) as e:
        cmd.start()
    assert str(e.value) == "pidfd_open: Too many open files"
    assert cmd.pid is not None and _reaped(cmd.pid), "the held child was left behind"
    assert os.WIFSIGNALED(cmd.wait_status) and os.WTERMSIG(cmd.wait_status) == signal.SIGKILL
    time.sleep(0.2)
    assert not marker.exists(), "CMD ran"


def test_pidfd_open_missing_names_the_kernel_needed(tmp_path, monkeypatch):
    cmd, _ = _marker_cmd(tmp_path)

    def nosys(pid, flags=0):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    monkeypatch.setattr(os, "pidfd_open", nosys)
    with pytest.raises(EnvironmentProblem) as e:
        cmd.start()
    assert "Linux 5.3" in str(e.value)
    assert _reaped(cmd.pid)


@pytest.mark.parametrize("err, kind", [(errno.ESRCH, UsageError), (errno.EMFILE, EnvironmentProblem),
                                       (errno.ENOSYS, EnvironmentProblem)])
def test_running_process_pidfd_open_failing(monkeypatch, err, kind):
    def fail(pid, flags=0):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(os, "pidfd_open", fail)
    with pytest.raises(kind) as e:
        follow.RunningProcess(os.getpid())
    assert str(e.value).startswith(f"--pid {os.getpid()}: no such process" if err == errno.ESRCH
                                   else f"pidfd_open: {os.strerror(err)}")


def test_abandon_kills_the_held_cmd_which_never_runs(tmp_path):
    cmd, marker = _marker_cmd(tmp_path)
    cmd.start()
    try:
        cmd.abandon()
        assert _reaped(cmd.pid)
        assert os.WTERMSIG(cmd.wait_status) == signal.SIGKILL
        cmd.abandon()                    # twice is harmless
    finally:
        cmd.close()
    time.sleep(0.2)
    assert not marker.exists()


def test_release_runs_cmd_and_forward_sends_once_unless_the_kernel_did(tmp_path):
    ready = tmp_path / "ready"
    cmd = follow.Command(["/bin/sh", "-c", f"trap 'exit 7' USR2; echo >{ready}; "
                                           f"while :; do sleep 0.05; done"])
    cmd.start()
    try:
        cmd.release()
        while not ready.exists():
            time.sleep(0.02)
        time.sleep(0.1)
        assert cmd.forward(SIG, from_kernel=True) is True     # the group got it: not again
        assert not cmd.exited()
        time.sleep(0.3)
        assert os.waitpid(cmd.pid, os.WNOHANG) == (0, 0), "a kernel-sent signal was sent again"
        assert cmd.forward(SIG, from_kernel=False) is True
        assert os.waitstatus_to_exitcode(cmd.wait()) == 7
        assert cmd.forward(SIG, from_kernel=False) is False   # exited: the signal is rbtrace's
    finally:
        cmd.close()
