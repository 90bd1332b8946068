#!/usr/bin/env python3
"""How fast rbtrace reacts, and how it holds up over a long storm: the
speed and memory figures that used to be limits inside functional tests.
Reported, not asserted: they depend on the machine and its load.

  first-event     exec of a uniquely named program to its JSON line on a pipe
                  (rbtrace exec --json --comm NAME), seconds
  exit-on-close   the reader of stdout goes away (`| head -1`) to rbtrace's
                  exit, with no event coming, seconds
  burst           N failing opens flat out into a 64 MiB ring
                  (rbtrace open --json --path PREFIX -o file): the storm's
                  rate while traced, and what was dropped
  soak            a flat-out open storm into a 64 KiB ring for S seconds:
                  resident memory after 10 s and at the end, the time from
                  SIGINT to exit, and the exact accounting

  .venv/bin/python benchmarks/timing.py [--repeat K] [--burst N] [--soak-seconds S]

Prints a markdown table; writes benchmarks/results/timing-<stamp>.json and
timing-latest.json.  `make bench` runs it after benchmarks/run.py.
"""
import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
RBTRACE = [sys.executable, "-m", "rbtrace"]
COMM = "rbstorm-timing"      # not the tests' "rbstorm" nor run.py's "rbstorm-bench"
HANG_GUARD = 120.0


def log(msg):
    sys.stderr.write(f"[timing] {msg}\n")
    sys.stderr.flush()


def read_line(p, timeout=HANG_GUARD):
    """One line of p's stdout, or an error after `timeout` seconds."""
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"no line from {p.args} within {timeout:.0f}s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError(f"{p.args} ended: {buf!r}")
        buf += chunk
    return buf


def rss_kib(pid, field="VmRSS"):
    """A memory field of /proc/PID/status (VmRSS, VmHWM...), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class Counter(threading.Thread):
    """Reads rbtrace's --json stdout: counts event lines, keeps the tail
    (the summary is the last line) without holding millions of lines."""

    def __init__(self, stream, event_type):
        super().__init__(daemon=True)
        self.stream, self.needle = stream, b'\n{"type":"' + event_type.encode() + b'"'
        self.events, self.tail = 0, b""

    def run(self):
        rest = b"\n"
        while True:
            chunk = self.stream.read1(1 << 20)
            if not chunk:
                break
            buf = rest + chunk
            cut = buf.rfind(b"\n")
            self.events += buf[:cut + 1].count(self.needle)
            rest = buf[cut:]
            self.tail = (self.tail + chunk)[-65536:]

    def summary(self):
        last = self.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return json.loads(last)


def build_storm(tmp):
    exe = os.path.join(tmp, COMM)
    subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(HERE, "storm.c")], check=True)
    return exe


def first_event(tmp, repeat):
    out = []
    for _ in range(repeat):
        name = "rbfirst" + uuid.uuid4().hex[:8]
        prog = os.path.join(tmp, name)
        shutil.copy("/bin/true", prog)
        p = subprocess.Popen([*RBTRACE, "exec", "--json", "--comm", name], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            read_line(p)                                   # start: attached
            t0 = time.monotonic()
            subprocess.run([prog])
            line = read_line(p)
            out.append(time.monotonic() - t0)
            assert name.encode() in line, line
        finally:
            p.send_signal(signal.SIGINT)
            p.communicate(timeout=HANG_GUARD)
    return out


def exit_on_close(repeat):
    out = []
    for _ in range(repeat):
        p = subprocess.Popen([*RBTRACE, "exec", "--json", "--comm", "nomatch-timing"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        read_line(p)
        p.stdout.close()
        t0 = time.monotonic()
        p.wait(timeout=HANG_GUARD)
        out.append(time.monotonic() - t0)
    return out


def burst(tmp, storm, n):
    prefix = os.path.join(tmp, uuid.uuid4().hex)
    events = os.path.join(tmp, "burst.json")
    p = subprocess.Popen([*RBTRACE, "open", "--json", "--ring-size", "64M", "--path", prefix,
                          "-o", events], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + HANG_GUARD
    while not (os.path.exists(events) and os.path.getsize(events)):
        if time.monotonic() > deadline or p.poll() is not None:
            raise RuntimeError("rbtrace open did not start")
        time.sleep(0.05)
    w = subprocess.run([storm, str(n), prefix + "/missing"], capture_output=True, check=True)
    result = json.loads(w.stdout)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=HANG_GUARD)
    with open(events, "rb") as f:
        s = json.loads(f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1])
    os.unlink(events)
    return {"opens": n, "ns_per_open": result["ns_per_open"],
            "rate_per_s": round(1e9 / result["ns_per_open"]),
            "seen": s["seen"], "delivered": s["delivered"], "dropped": s["dropped"]}


def soak(storm, seconds):
    p = subprocess.Popen([*RBTRACE, "open", "--json", "--comm", COMM, "--ring-size", "64K"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    read_line(p)                                       # start: attached
    counter = Counter(p.stdout, "open")
    counter.start()
    s = subprocess.Popen([storm, "1000000000"], stdout=subprocess.DEVNULL)
    try:
        early_at = min(10.0, seconds / 2)
        time.sleep(early_at)
        rss_early = rss_kib(p.pid)
        time.sleep(seconds - early_at)
        rss_late = rss_kib(p.pid)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        p.wait(timeout=HANG_GUARD)
        stop_s = time.monotonic() - t0
    finally:
        s.kill()
        s.wait()
    counter.join(HANG_GUARD)
    summary = counter.summary()
    return {"seconds": seconds, "rss_early_kib": rss_early, "rss_late_kib": rss_late,
            "rss_growth_kib": rss_late - rss_early, "stop_s": round(stop_s, 3),
            "exit": p.returncode, "seen": summary["seen"], "delivered": summary["delivered"],
            "lines_counted": counter.events, "dropped": summary["dropped"],
            "exact": summary["seen"] == summary["delivered"] + summary["dropped"]
            and summary["delivered"] == counter.events}


def stats(values):
    return {"median": round(statistics.median(values), 4), "max": round(max(values), 4),
            "all": [round(v, 4) for v in values]}


def main(argv=None):
    ap = argparse.ArgumentParser(description="rbtrace reaction times and a long storm, reported")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--burst", type=int, default=100_000, help="opens in the burst")
    ap.add_argument("--soak-seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("timing.py: needs root (BPF)")
    started = datetime.datetime.now(datetime.timezone.utc)
    result = {"date": started.isoformat(timespec="seconds"), "options": vars(args),
              "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                       "load": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="rbtrace-timing-") as tmp:
        storm = build_storm(tmp)
        log(f"first event, {args.repeat} times ...")
        result["first_event_s"] = stats(first_event(tmp, args.repeat))
        log(f"exit after the reader goes, {args.repeat} times ...")
        result["exit_on_close_s"] = stats(exit_on_close(args.repeat))
        log(f"burst of {args.burst:,} opens ...")
        result["burst"] = burst(tmp, storm, args.burst)
        log(f"soak for {args.soak_seconds:.0f}s into a 64 KiB ring ...")
        result["soak"] = soak(storm, args.soak_seconds)
    f, c, b, s = (result["first_event_s"], result["exit_on_close_s"], result["burst"],
                  result["soak"])
    rows = [
        ("first event on a pipe", f"median {f['median']:.3f} s, max {f['max']:.3f} s",
         "was < 1.0 s in a test"),
        ("exit after the reader goes", f"median {c['median']:.3f} s, max {c['max']:.3f} s",
         "was < 2.0 s in a test"),
        (f"burst of {b['opens']:,} opens, 64 MiB ring",
         f"{b['rate_per_s']:,}/s traced, {b['dropped']:,} dropped of {b['seen']:,}",
         "was 0 dropped in a test"),
        (f"soak {s['seconds']:.0f} s, 64 KiB ring",
         f"RSS {s['rss_early_kib']:,} -> {s['rss_late_kib']:,} KiB "
         f"(+{s['rss_growth_kib']:,}), SIGINT to exit {s['stop_s']:.2f} s, "
         f"{s['delivered']:,} delivered + {s['dropped']:,} dropped = {s['seen']:,} seen"
         f"{'' if s['exact'] else ' (NOT EXACT)'}",
         "was < 20 MiB growth and < 2 s stop in a test"),
    ]
    text = [f"rbtrace timing {result['date']}, {result['host']['cpus']} CPUs, kernel "
            f"{result['host']['kernel']}, load {result['host']['load'][0]:.1f}", "",
            "| what | measured | before |", "|---|---|---|"]
    text += [f"| {a} | {m} | {w} |" for a, m, w in rows]
    result["tables_markdown"] = "\n".join(text)
    print("\n".join(text))
    os.makedirs(RESULTS, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    for name in (f"timing-{stamp}.json", "timing-latest.json"):
        with open(os.path.join(RESULTS, name), "w") as out:
            json.dump(result, out, indent=1)
    log(f"wrote benchmarks/results/timing-{stamp}.json and timing-latest.json")


if __name__ == "__main__":
    main()
