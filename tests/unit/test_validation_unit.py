"""Values that could never match or never end are usage errors (exit 2,
one line), found before anything loads; and the verifier's refusals say
which of its limits was hit.  No root needed: a zombie and a kernel
thread are real processes any user can point at."""
import os
import re
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


# --- the verifier's limits (rbtrace/bpf.py _too_large) -------------------------

# What BCC 0.26 prints for any E2BIG from BPF_PROG_LOAD, whatever the cause.
BCC_E2BIG = "bpf: Argument list too long. Program  too large ({n} insns), at most 4096 insns\n\n"
# The verifier's log at BPF_LOG_STATS for the same load (6.18), as
# rbtrace/bpf.py _verifier_log gets it.
PROCESSED_LOG = ("BPF program is too large. Processed 1000001 insn\n"
                 "verification time 851681 usec\nstack depth 0\n"
                 "processed 1000001 insns (limit 1000000) max_states_per_insn 4 "
                 "total_states 8665 peak_states 8665 mark_read 0\n")
JUMPS_LOG = ("The sequence of 8193 jumps is too complex.\nverification time 77808 usec\n"
             "stack depth 64\nprocessed 156616 insns (limit 1000000) max_states_per_insn 8 "
             "total_states 1754 peak_states 1712 mark_read 12\n")
FAILURE = Exception("Failed to load BPF program b'tracepoint__syscalls__sys_enter_getppid': "
                    "Argument list too long")


def test_complexity_limit_from_the_verifier_log_is_named_with_its_numbers():
    e = bpf._load_failure(FAILURE, BCC_E2BIG.format(n=132) + PROCESSED_LOG, "p.bpf.c",
                          "lower --max-args or --max-arg-bytes")
    assert e.message == ("p.bpf.c: the kernel's verifier gave up: it checked 1,000,001 "
                         "instructions along the program's paths, past its complexity limit "
                         "of 1,000,000 (the program itself is 132 instructions: its size is "
                         "not the problem)")
    assert e.hint == "lower --max-args or --max-arg-bytes"
    assert "4096" not in str(e)


def test_jump_sequence_limit_is_named():
    e = bpf._load_failure(FAILURE, BCC_E2BIG.format(n=2000) + JUMPS_LOG, "p.bpf.c")
    assert "had 8,193 branches pending, past its complexity limit of 8,192" in e.message
    assert "the program itself is 2,000 instructions" in e.message
    assert "4096" not in str(e)


def test_without_the_log_a_small_program_hit_a_complexity_limit_not_the_size_limit():
    e = bpf._load_failure(FAILURE, BCC_E2BIG.format(n=104), "exec.bpf.c",
                          "lower --max-args or --max-arg-bytes")
    assert "reached a complexity limit (1,000,000 instructions checked along all paths, " \
           "or 8,192 branches pending)" in e.message
    assert "the program itself is 104 instructions" in e.message
    assert "4096" not in str(e) and e.hint == "lower --max-args or --max-arg-bytes"


def test_a_program_over_the_size_limit_is_said_to_be_too_large():
    e = bpf._load_failure(FAILURE, BCC_E2BIG.format(n=1_200_000), "p.bpf.c")
    assert e.message == ("p.bpf.c: the program is 1,200,000 instructions, more than the "
                         "kernel's size limit of 1,000,000")


def test_other_refusals_are_not_taken_for_limits():
    log = ("0: (b7) r1 = 0\n; x = *(u64 *)0; @ p.bpf.c:9\n1: (79) r2 = *(u64 *)(r1 +0)\n"
           "R1 invalid mem access 'scalar'\nprocessed 2 insns (limit 1000000) "
           "max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n")
    e = bpf._load_failure(Exception("Failed to load BPF program b'f': Permission denied"),
                          log, "p.bpf.c")
    assert "invalid mem access" in e.message and "complexity" not in e.message


def test_the_cost_hints_name_real_options():
    from rbtrace.cli import cli
    from rbtrace.kinds.exec import ExecCodec
    options = {o for p in cli.commands["exec"].params for o in p.opts}
    named = set(re.findall(r"--[a-z-]+", ExecCodec.cost_hint))
    assert named == {"--max-args", "--max-arg-bytes"} and named <= options


def test_a_ring_the_kernel_cannot_allocate_is_not_blamed_on_the_compiler():
    text = ("could not open bpf map: events, error: Cannot allocate memory\n"
            "Failed to compile BPF module <text>\n")
    e = bpf._load_failure(Exception("Failed to compile BPF module <text>"), text, "exec.bpf.c")
    assert e.message == "the kernel could not create the ring buffer: Cannot allocate memory"
    assert e.hint == "try a smaller --ring-size"
    assert "compiler" not in str(e)


# --- privileges and tracefs (rbtrace/kernel.py) --------------------------------

def bits(*ns):
    return sum(1 << n for n in ns)


def test_missing_capabilities_are_named():
    assert kernel.missing_caps(0) == ["CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"]
    assert kernel.missing_caps(bits(kernel.CAP_BPF, kernel.CAP_PERFMON,
                                    kernel.CAP_DAC_READ_SEARCH)) == []
    # CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not for reading tracefs.
    assert kernel.missing_caps(bits(kernel.CAP_SYS_ADMIN)) == ["CAP_DAC_READ_SEARCH"]
    assert kernel.missing_caps(bits(kernel.CAP_BPF, kernel.CAP_DAC_OVERRIDE)) == ["CAP_PERFMON"]


def test_tracefs_state_never_raises(tmp_path):
    (tmp_path / "mounted" / "events" / "sched").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    assert kernel.tracefs_state(tmp_path / "mounted") == (tmp_path / "mounted", "ok")
    assert kernel.tracefs_state(tmp_path / "empty") == (tmp_path / "empty", "unmounted")
    assert kernel.tracefs_state(tmp_path / "nowhere")[1] == "unmounted"


def test_bcc_tracefs_is_chosen_as_bcc_chooses_it(monkeypatch):
    """libbcc takes /sys/kernel/debug/tracing when access(2) finds it."""
    seen = []
    monkeypatch.setattr(os, "access", lambda path, mode: seen.append((str(path), mode)) or False)
    assert kernel.tracefs_dir() == kernel.TRACEFS
    assert seen == [("/sys/kernel/debug/tracing", os.F_OK)]
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    assert kernel.tracefs_dir() == kernel.TRACEFS_UNDER_DEBUGFS
