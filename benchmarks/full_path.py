#!/usr/bin/env python3
"""What `rbtrace open --full-path` costs per open, side by side with
`rbtrace open` in one run (issue #14, item 4).

The storm (storm.c) opens a RELATIVE path that does not exist, from a
working directory DEPTH levels below /tmp, so that every traced open makes
the probe walk the directory (about DEPTH + 2 dentries and a mount or two).
Variants, in turns within each round (--repeat rounds; the table gives the
median and the range of the storm's own ns/open):

  untraced        the storm alone
  open            rbtrace open --json --comm COMM
  open-full       rbtrace open --json --comm COMM --full-path
  open-full-abs   the same, the storm opening an absolute path: the cost of
                  --full-path when there is nothing to walk

Each traced run has a 256 MiB ring, which holds 700,000 short records, so
that a busy consumer drops nothing.  The storm's own ns/open is what a traced program feels, but on a busy
2-core VM it varies by tens of percent between runs.  So the probe's own
time is measured too: the kernel's BPF run-time statistics (BPF_ENABLE_STATS,
on only while this script holds its fd), summed over the programs the run
loaded (the prog ids that appeared when it started), taken just before and
just after the storm, divided by the storm's opens.  Other processes' opens
in that window add their (rejected, short) runs to it.

rbtrace's output goes through a pipe to a thread that keeps only the first
line (start: the probes are attached) and the last (the summary), which
must say that every open was delivered and none dropped.  Also measured:
start-up (launch to the start line) of both commands, --startup-repeat
times.

  .venv/bin/python benchmarks/full_path.py [--opens N] [--repeat K] [--depth D]
"""
import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COMM = "rbstorm-fullp"
REL = "nonexistent-rbtrace-bench/file"
RBTRACE = [sys.executable, "-m", "rbtrace"]
RING = "256M"


# bpf(2) commands and struct bpf_prog_info offsets (uapi, stable).
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_ENABLE_STATS = 11, 13, 15, 32
INFO_SIZE, RUN_TIME_OFF, RUN_CNT_OFF = 232, 192, 200


def bpf(cmd, attr):
    from rbtrace.doctor import SYS_BPF
    from rbtrace.kernel import libc
    return libc().syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))


def prog_ids():
    ids, attr = set(), (ctypes.c_uint32 * 4)()
    while bpf(BPF_PROG_GET_NEXT_ID, attr) == 0:
        ids.add(attr[1])
        attr[0] = attr[1]
    return ids


def run_time_ns(ids):
    """Sum of run_time_ns over these programs (0 for one that is gone)."""
    total = 0
    for i in ids:
        attr = (ctypes.c_uint32 * 4)(i)
        fd = bpf(BPF_PROG_GET_FD_BY_ID, attr)
        if fd < 0:
            continue
        info = ctypes.create_string_buffer(INFO_SIZE)
        a = (ctypes.c_uint64 * 2)(fd | (INFO_SIZE << 32), ctypes.addressof(info))
        if bpf(BPF_OBJ_GET_INFO_BY_FD, a) == 0:
            total += int.from_bytes(info.raw[RUN_TIME_OFF:RUN_TIME_OFF + 8], "little")
        os.close(fd)
    return total


def enable_stats():
    fd = bpf(BPF_ENABLE_STATS, (ctypes.c_uint32 * 2)(0))     # BPF_STATS_RUN_TIME
    if fd < 0:
        raise SystemExit("BPF_ENABLE_STATS failed")
    return fd


class Reader(threading.Thread):
    """Drains a pipe; keeps the first and the last line."""

    def __init__(self, f):
        super().__init__(daemon=True)
        self.f, self.first, self.tail = f, None, b""
        self.started = threading.Event()

    def run(self):
        buf = b""
        while True:
            chunk = self.f.read1(1 << 20)
            if not chunk:
                break
            if self.first is None:
                buf += chunk
                if b"\n" in buf:
                    self.first = buf.split(b"\n", 1)[0]
                    self.started.set()
            self.tail = (self.tail + chunk)[-8192:]
        self.started.set()

    def last(self):
        return json.loads(self.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])


def storm(exe, n, path, cwd):
    out = subprocess.run(["taskset", "-c", str(os.cpu_count() - 1), exe, str(n), path],
                         cwd=cwd, capture_output=True, check=True).stdout
    return json.loads(out)["ns_per_open"]


def traced(exe, n, path, cwd, extra):
    """(storm ns/open, probe ns/open)."""
    before = prog_ids()
    # A ring that holds the whole storm: an event dropped would skip the
    # copy and make a variant look cheaper.
    p = subprocess.Popen([*RBTRACE, "open", "--json", "--comm", COMM, "--ring-size", RING, *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r = Reader(p.stdout)
    r.start()
    r.started.wait(120)
    if r.first is None:
        p.kill()
        raise SystemExit(f"rbtrace did not start: {p.stderr.read().decode(errors='replace')}")
    ours = prog_ids() - before
    t0 = run_time_ns(ours)
    ns = storm(exe, n, path, cwd)
    probe_ns = (run_time_ns(ours) - t0) / n
    time.sleep(0.5)                       # let it drain
    p.send_signal(signal.SIGINT)
    p.wait(120)
    r.join(60)
    s = r.last()
    assert s["type"] == "summary", s
    # storm's n opens, plus the loader's (ld.so.cache, libc)
    if s["dropped"] or s["delivered"] < n:
        raise SystemExit(f"{extra}: delivered {s['delivered']}, dropped {s['dropped']}")
    return ns, probe_ns


def startup(extra, repeat):
    times = []
    for _ in range(repeat):
        t = time.monotonic()
        p = subprocess.Popen([*RBTRACE, "open", "--json", "--comm", COMM, *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdout.readline()
        times.append(time.monotonic() - t)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--opens", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--depth", type=int, default=8, help="levels of the storm's cwd under /tmp")
    ap.add_argument("--startup-repeat", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    tmp = tempfile.mkdtemp(prefix="rbtrace-fullpath-bench.")
    try:
        exe = os.path.join(tmp, COMM)
        subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(HERE, "storm.c")], check=True)
        cwd = os.path.join(tmp, *[f"level{i}" for i in range(a.depth)])
        os.makedirs(cwd)
        variants = {
            "untraced": lambda: (storm(exe, a.opens, REL, cwd), None),
            "open": lambda: traced(exe, a.opens, REL, cwd, []),
            "open-full": lambda: traced(exe, a.opens, REL, cwd, ["--full-path"]),
            "open-full-abs": lambda: traced(exe, a.opens, "/" + REL, cwd, ["--full-path"]),
        }
        got = {k: [] for k in variants}
        probe = {k: [] for k in variants}
        stats_fd = enable_stats()
        try:
            for rnd in range(a.repeat):
                for k, run in variants.items():
                    ns, pns = run()
                    got[k].append(ns)
                    probe[k].append(pns)
                    print(f"round {rnd + 1} {k}: {ns:.0f} ns/open"
                          + (f", probe {pns:.0f} ns/open" if pns is not None else ""),
                          file=sys.stderr)
        finally:
            os.close(stats_fd)
        start = {k: startup(x, a.startup_repeat)
                 for k, x in (("open", []), ("open-full", ["--full-path"]))}
    finally:
        shutil.rmtree(tmp)
    med = {k: statistics.median(v) for k, v in got.items()}
    print(f"\n{a.opens:,} failing opens per run, cwd {a.depth + 2} levels deep "
          f"(/tmp/{os.path.basename(tmp)}/level0/...), {a.repeat} rounds, "
          f"kernel {os.uname().release}\n")
    pmed = {k: statistics.median(v) for k, v in probe.items() if k != "untraced"}
    print("| variant | storm ns/open, median (min-max) | vs untraced | vs open "
          "| probe ns/open (BPF stats), median (min-max) | vs open |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in got.items():
        if k == "untraced":
            tail = " | | |"
        else:
            p = probe[k]
            tail = (f" {med[k] / med['open']:.2f}x | {pmed[k]:.0f} ({min(p):.0f}-{max(p):.0f}) | "
                    f"{pmed[k] / pmed['open']:.2f}x |")
        print(f"| {k} | {med[k]:.0f} ({min(v):.0f}-{max(v):.0f}) | "
              f"{med[k] / med['untraced']:.2f}x |" + tail)
    print("\n| start-up, launch to start line | median (min-max) |")
    print("|---|---:|")
    for k, v in start.items():
        print(f"| {k} | {statistics.median(v):.2f} s ({min(v):.2f}-{max(v):.2f}) |")


if __name__ == "__main__":
    main()
