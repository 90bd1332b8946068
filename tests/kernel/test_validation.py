"""Limits and filters checked against the real kernel and real processes.

The usage errors themselves (zombie, kernel thread, --tid, -d, a ring
over the limit) are in tests/unit/test_validation_unit.py, with real
processes too; here: the ring size rbtrace names as the largest is one
the kernel creates, and a process rbtrace must not refuse (its leader
thread exited, the others run) is traced for real."""
import os
import subprocess
import sys
import textwrap
import time

from rbtrace import doctor, kernel


def test_the_largest_ring_size_named_is_created_by_the_kernel(kernel_ok):
    ok, detail = doctor._try_ringbuf(kernel.RINGBUF_MAX_BYTES)
    assert ok, detail
    # Twice as much is 2**32, which max_entries (a __u32) can't hold.
    assert kernel.RINGBUF_MAX_BYTES * 2 == 1 << 32


LEADER_EXITS = textwrap.dedent("""
    import ctypes, os, sys, threading, time
    def opener():
        sys.stdout.write(f"{threading.get_native_id()}\\n"); sys.stdout.flush()
        while True:
            try:
                os.open("/nonexistent-rbtrace-leader-exited", os.O_RDONLY)
            except OSError:
                pass
            time.sleep(0.05)
    threading.Thread(target=opener).start()
    time.sleep(0.2)
    ctypes.CDLL(None).pthread_exit(None)
""")


def test_a_process_whose_leader_exited_is_traced_by_pid(kernel_ok, tmp_path):
    script = tmp_path / "leader.py"
    script.write_text(LEADER_EXITS)
    w = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        tid = int(w.stdout.readline())
        while open(f"/proc/{w.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)                      # until the leader has exited
        p = subprocess.run([sys.executable, "-m", "rbtrace", "open", "--json", "--pid", str(w.pid),
                            "-c", "2", "--path", "/nonexistent-rbtrace-leader"],
                           capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        from conftest import parse_json_lines
        r = parse_json_lines(p.stdout.decode())
        assert [(e["pid"], e["tid"], e["path"], e["errno"]) for e in r.events] == \
            [(w.pid, tid, "/nonexistent-rbtrace-leader-exited", "ENOENT")] * 2
    finally:
        w.kill()
        w.wait()


HEAVY = textwrap.dedent("""
    #include "rbtrace.h"

    struct heavy_event {
        struct rb_header h;
        u64 sum;
    };
    RBTRACE_EVENT(heavy_event);

    /* 4 million iterations, each a branch on a value the verifier can't
       know: it walks them all and gives up at 1,000,000 instructions,
       though the program is about 130 instructions long. */
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
    {
        u64 sum = 0;
        u64 seed = bpf_ktime_get_ns();
        for (int i = 0; i < 2000; i++) {
            for (int j = 0; j < 2000; j++) {
                if ((seed >> (j & 31)) & 1)
                    sum += i ^ j;
            }
        }
        struct heavy_event *e = rbtrace_reserve(heavy_event);
        if (!e)
            return 0;
        e->sum = sum;
        rbtrace_submit(e);
        return 0;
    }
""")


def test_the_verifier_complexity_limit_is_named(kernel_ok, tmp_path):
    probe = tmp_path / "heavy.bpf.c"
    probe.write_text(HEAVY)
    p = subprocess.run([sys.executable, "-m", "rbtrace", "run", "--json", "-d", "1", str(probe)],
                       capture_output=True, timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"rbtrace: {probe}: the kernel's verifier gave up: it checked "
                          f"1,000,001 instructions along the program's paths, past its "
                          f"complexity limit of 1,000,000 (the program itself is "), err
    assert "at most 4096" not in err
    assert "(hint: make the probe's loops shorter" in err
    n = int(err.split("the program itself is ")[1].split()[0].replace(",", ""))
    assert n < 4096                                 # far below any size limit


def _memory_cgroup(name, limit):
    """A memory cgroup limited to `limit` bytes: (its procs file, remover).
    The machines here are hybrid (memory under cgroup v1); a v2-only
    machine has memory.max instead."""
    v1 = "/sys/fs/cgroup/memory"
    if os.path.isdir(v1):
        path = os.path.join(v1, name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
    else:
        root = "/sys/fs/cgroup"
        with open(os.path.join(root, "cgroup.controllers")) as f:
            assert "memory" in f.read().split(), "no memory cgroup controller"
        path = os.path.join(root, name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "memory.max"), "w") as f:
            f.write(str(limit))
    return os.path.join(path, "cgroup.procs"), lambda: os.rmdir(path)


def test_a_ring_the_kernel_cannot_allocate_is_named(kernel_ok):
    """BPF memory is charged to the memory cgroup: a 1G ring in a cgroup
    limited to 400M can't be created, and the message says so instead of
    showing BCC's map error as a compiler error."""
    procs, remove = _memory_cgroup(f"rbtrace-test-ring-{os.getpid()}", 400 << 20)
    try:
        p = subprocess.run(["sh", "-c", f'echo $$ > {procs} && exec "$0" -m rbtrace exec --json '
                            f"--ring-size 1G -c 1 -- /bin/true", sys.executable],
                           capture_output=True, timeout=300)
    finally:
        remove()
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode() == ("rbtrace: the kernel could not create the ring buffer: Cannot "
                                 "allocate memory (hint: try a smaller --ring-size)\n")
