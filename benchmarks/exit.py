#!/usr/bin/env python3
"""What `rbtrace exit` costs per process, side by side in one run.

A small C program (written and compiled here with cc) forks N children
that exit at once (code i % 2), reaping each before the next: the cost of
a process's whole life, fork to reap.  Variants, in turns within each
round (--repeat rounds; the median and the range are printed):

  untraced   the storm alone
  rejected   rbtrace exit --json --comm nomatch: every exit runs the
             probe, which rejects it at the name filter
  written    rbtrace exit --json --comm COMM: every exit is written

The probe's own time is read from the kernel's BPF run-time statistics
(BPF_ENABLE_STATS, on only while this script holds its fd), summed over
the programs the run loaded, taken just before and after the storm and
divided by the storm's processes; other processes' exits in that window
add their runs to it.  The summary of the written runs must say that
every child was delivered and none dropped.

  .venv/bin/python benchmarks/exit.py [--procs N] [--repeat K]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from full_path import Reader, enable_stats, prog_ids, run_time_ns  # noqa: E402

COMM = "rbstorm-exit"
RBTRACE = [sys.executable, "-m", "rbtrace"]

STORM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    struct timespec a, b;
    prctl(PR_SET_NAME, "rbstorm-exit", 0, 0, 0);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(i % 2);
        int status;
        waitpid(pid, &status, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("{\"ns_per_proc\": %.1f}\n", ns / n);
    return 0;
}
"""


def build(tmp):
    src = os.path.join(tmp, "forkstorm.c")
    exe = os.path.join(tmp, "forkstorm")
    with open(src, "w") as f:
        f.write(STORM_C)
    subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
    return exe


def storm(exe, n):
    out = subprocess.run([exe, str(n)], capture_output=True, check=True).stdout
    return json.loads(out)["ns_per_proc"]


def traced(exe, n, comm):
    """(storm ns/process, probe ns/process, summary)."""
    before = prog_ids()
    p = subprocess.Popen([*RBTRACE, "exit", "--json", "--comm", comm],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r = Reader(p.stdout)
    r.start()
    r.started.wait(120)
    if r.first is None:
        p.kill()
        raise SystemExit(f"rbtrace did not start: {p.stderr.read().decode(errors='replace')}")
    ours = prog_ids() - before
    t0 = run_time_ns(ours)
    ns = storm(exe, n)
    probe_ns = (run_time_ns(ours) - t0) / n
    p.send_signal(signal.SIGINT)
    p.wait(120)
    r.join(60)
    s = r.last()
    assert s["type"] == "summary", s
    # the children, and the storm itself (it names itself COMM too)
    if comm == COMM and (s["dropped"] or s["delivered"] != n + 1):
        raise SystemExit(f"delivered {s['delivered']} of {n + 1}, dropped {s['dropped']}")
    return ns, probe_ns


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    stats_fd = enable_stats()
    results = {"untraced": [], "rejected": [], "written": []}
    probe = {"rejected": [], "written": []}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        for _ in range(a.repeat):
            results["untraced"].append(storm(exe, a.procs))
            for name, comm in (("rejected", "nomatch"), ("written", COMM)):
                ns, pns = traced(exe, a.procs, comm)
                results[name].append(ns)
                probe[name].append(pns)
    os.close(stats_fd)
    print(f"{a.procs} processes per run, {a.repeat} rounds: median (min-max) ns per process")
    for name, values in results.items():
        line = (f"  {name:9} fork..reap {statistics.median(values):9.0f} "
                f"({min(values):.0f}-{max(values):.0f})")
        if name in probe:
            pv = probe[name]
            line += (f"   probe {statistics.median(pv):6.0f} "
                     f"({min(pv):.0f}-{max(pv):.0f})")
        print(line)


if __name__ == "__main__":
    main()
