"""Values that could never match or never end are usage errors (exit 2,
one line), found before anything loads; and the verifier's refusals say
which of its limits was hit.  No root needed: a zombie and a kernel
thread are real processes any user can point at."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rbtrace import bpf, follow, kernel
from rbtrace.errors import UsageError


def run(*args):
    """rbtrace to completion.  Tests that check a filter give -d 1 too, so
    that a value wrongly accepted ends the run (exit 0) instead of tracing
    until the timeout."""
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True, timeout=60)


def assert_usage_error(p, *needles):
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert p.stdout == b""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rbtrace: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "inf", "1e400", "-inf", "0", "-1", "abc", ""])
def test_durations_that_never_end_or_never_start(value):
    assert_usage_error(run("exec", "-d", value), "--duration", repr(value))


@pytest.mark.parametrize("value", ["4G", "8G", "1T", "4096M"])
def test_ring_sizes_past_the_kernel_limit_name_it(value):
    assert_usage_error(run("open", "-d", "1", "--ring-size", value), "--ring-size",
                       "largest ring buffer the kernel accepts, 2G")


def test_the_largest_ring_size_is_accepted_by_the_option():
    from rbtrace.cli import SizeType
    assert kernel.RINGBUF_MAX_BYTES == 2 << 30
    assert SizeType().convert("2G", None, None) == kernel.RINGBUF_MAX_BYTES


@pytest.fixture
def zombie():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + 30
    while not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield pid
    os.waitpid(pid, 0)


def kernel_thread():
    """kthreadd (2), or any other kernel thread."""
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if name.isdigit():
            with open(f"/proc/{name}/status") as f:
                if "Kthread:\t1" in f.read():
                    return int(name)
    raise AssertionError("no kernel thread found")


def test_a_zombie_is_refused(zombie):
    for args in (["exec", "--pid", str(zombie)], ["exec", "--pid", str(zombie), "--children"],
                 ["open", "--tid", str(zombie)]):
        assert_usage_error(run(args[0], "-d", "1", *args[1:]),
                           f" {zombie} has exited (a zombie")


def test_a_kernel_thread_is_refused():
    kt = kernel_thread()
    assert_usage_error(run("exec", "-d", "1", "--pid", str(kt)), f"--pid {kt} is a kernel thread")
    assert_usage_error(run("open", "-d", "1", "--tid", str(kt)), f"--tid {kt} is a kernel thread")


def test_a_thread_that_does_not_exist_is_refused():
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1            # no thread can have this id
    if beyond <= 2 ** 22:
        assert_usage_error(run("open", "-d", "1", "--tid", str(beyond)),
                           f"--tid {beyond}: no such thread")
    assert_usage_error(run("open", "-d", "1", "--tid", "999999"), "--tid 999999")


def test_a_live_thread_is_accepted_by_tid_but_not_by_pid():
    import threading
    ready, done = threading.Event(), threading.Event()
    tid = []
    t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), ready.set(),
                                         done.wait()))
    t.start()
    ready.wait()
    try:
        follow.check_process(tid[0], "--tid", thread=True)          # no error
        with pytest.raises(UsageError, match="is a thread of process"):
            follow.check_process(tid[0])
        follow.check_process(os.getpid())
    finally:
        done.set()
        t.join()


def test_a_process_whose_leader_thread_exited_is_still_running(tmp_path):
    """Its leader shows Z while its other threads run: --pid is fine,
    --tid of the dead leader is not."""
    script = tmp_path / "leader_exits.py"
    script.write_text(textwrap.dedent("""
        import ctypes, threading, time, sys
        threading.Thread(target=lambda: time.sleep(60)).start()
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        ctypes.CDLL(None).pthread_exit(None)
    """))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 30
        while open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        follow.check_process(p.pid)                                 # the process runs
        with pytest.raises(UsageError, match="a zombie"):
            follow.check_process(p.pid, "--tid", thread=True)       # its leader does not
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
