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
that a busy consumer drops nothing.  rbtrace's output goes through a pipe to a thread that keeps only the first
line (start: the probes are attached) and the last (the summary), which
must say that every open was delivered and none dropped.  Also measured:
start-up (launch to the start line) of both commands, --startup-repeat
times.

  .venv/bin/python benchmarks/full_path.py [--opens N] [--repeat K] [--depth D]
"""
import argparse
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
    ns = storm(exe, n, path, cwd)
    time.sleep(0.5)                       # let it drain
    p.send_signal(signal.SIGINT)
    p.wait(120)
    r.join(60)
    s = r.last()
    assert s["type"] == "summary", s
    # storm's n opens, plus the loader's (ld.so.cache, libc)
    if s["dropped"] or s["delivered"] < n:
        raise SystemExit(f"{extra}: delivered {s['delivered']}, dropped {s['dropped']}")
    return ns


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
            "untraced": lambda: storm(exe, a.opens, REL, cwd),
            "open": lambda: traced(exe, a.opens, REL, cwd, []),
            "open-full": lambda: traced(exe, a.opens, REL, cwd, ["--full-path"]),
            "open-full-abs": lambda: traced(exe, a.opens, "/" + REL, cwd, ["--full-path"]),
        }
        got = {k: [] for k in variants}
        for rnd in range(a.repeat):
            for k, run in variants.items():
                got[k].append(run())
                print(f"round {rnd + 1} {k}: {got[k][-1]:.0f} ns/open", file=sys.stderr)
        start = {k: startup(x, a.startup_repeat)
                 for k, x in (("open", []), ("open-full", ["--full-path"]))}
    finally:
        shutil.rmtree(tmp)
    med = {k: statistics.median(v) for k, v in got.items()}
    print(f"\n{a.opens:,} failing opens per run, cwd {a.depth + 2} levels deep "
          f"(/tmp/{os.path.basename(tmp)}/level0/...), {a.repeat} rounds, "
          f"kernel {os.uname().release}\n")
    print("| variant | ns/open, median (min-max) | vs untraced | vs open |")
    print("|---|---:|---:|---:|")
    for k, v in got.items():
        vs_open = "" if k == "untraced" else f"{med[k] / med['open']:.2f}x"
        print(f"| {k} | {med[k]:.0f} ({min(v):.0f}-{max(v):.0f}) | "
              f"{med[k] / med['untraced']:.2f}x | {vs_open} |")
    print("\n| start-up, launch to start line | median (min-max) |")
    print("|---|---:|")
    for k, v in start.items():
        print(f"| {k} | {statistics.median(v):.2f} s ({min(v):.2f}-{max(v):.2f}) |")


if __name__ == "__main__":
    main()
