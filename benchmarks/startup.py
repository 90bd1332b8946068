#!/usr/bin/env python3
"""rbtrace's start-up against bpftrace's, side by side in one run.

For each variant, pairs of runs taken in turn (rbtrace, bpftrace, rbtrace,
bpftrace, ...), each while a background loop runs `/bin/true MARK` about
300 times a second, so that events come as soon as a tracer is attached:

  exec-warm  rbtrace exec --json, compile cache already filled
             against bpftrace -e 'tracepoint:syscalls:sys_enter_execve
             { printf("%s\\n", str(args->argv[1])); }'
  exec-cold  rbtrace exec --json, empty cache dir (BTF offsets, headers and
             the compiled probe all made again); same bpftrace one-liner
  open-warm  rbtrace open --json, warm; against the same one-liner on
             sys_enter_openat printing args->filename

Each run: the time from launch to the first event line on stdout
(bpftrace's "Attaching N probes..." skipped), then, 0.3 s later, its
resident memory (VmRSS, and the peak VmHWM) from /proc/PID/status; then
SIGINT, and wait for it to exit.  rbtrace runs with its default ring, and
with RBTRACE_CACHE_DIR in a private 0700 temporary directory.

The headline is the ratio rbtrace / bpftrace within each pair, and the
median of those ratios; absolute figures come second.

  .venv/bin/python benchmarks/startup.py [--repeat K] [--only exec-warm,exec-cold,open-warm]

Prints markdown tables; writes <results>/startup-<stamp>.json and
startup-latest.json.  `make bench` runs it after benchmarks/timing.py.
Without bpftrace it says so on stderr and reports rbtrace alone.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import (RESULTS, Failure, Reader, _cpu_model, code_state, cpu_ns, finish,  # noqa: E402
                 kill_all, log, quiet_machine, rbtrace_cmd, save, spawn)
from timing import read_line, rss_kib  # noqa: E402

SETTLE_S = 0.3            # first event to the memory sample
READY_TIMEOUT = 120.0     # launch to first event, at most (a cold compile on a busy VM)
STOP_TIMEOUT = 60.0
OWN_TIMEOUT = 10.0        # then, at most, for the loop's own event (only to check it)
LOOP_PAUSE_S = 0.002      # between two /bin/true of the background loop
LOOP_SETTLE_S = 0.3       # the loop's start to the first tracer's launch

BPFTRACE_EXEC = 'tracepoint:syscalls:sys_enter_execve { printf("%s\\n", str(args->argv[1])); }'
BPFTRACE_OPEN = 'tracepoint:syscalls:sys_enter_openat { printf("%s\\n", str(args->filename)); }'

# name: (rbtrace probe, cache, bpftrace program, what the bpftrace one-liner traces)
VARIANTS = {
    "exec-warm": ("exec", "warm", BPFTRACE_EXEC, "sys_enter_execve"),
    "exec-cold": ("exec", "cold", BPFTRACE_EXEC, "sys_enter_execve"),
    "open-warm": ("open", "warm", BPFTRACE_OPEN, "sys_enter_openat"),
}

# The background loop: its own process (not a thread of this one, whose GIL
# would delay reading the tracer's first line), exec'ing only /bin/true.
LOOP = """import subprocess, sys, time
while True:
    subprocess.run(["/bin/true", sys.argv[1]])
    time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def exec_loop(marker):
    """The background loop, running steadily before a tracer starts (its
    own Python start-up would otherwise compete with the first tracer's)."""
    loop = spawn([sys.executable, "-c", LOOP, marker, str(LOOP_PAUSE_S)],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(LOOP_SETTLE_S)
        yield
    finally:
        loop.terminate()
        loop.wait()


def say(msg):
    log(f"[startup] {msg}")


class Runner:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.rbtrace = rbtrace_cmd()
        self.warm_dir = self.private_dir("warm")
        self.cold_runs = 0

    def private_dir(self, name):
        path = os.path.join(self.tmp, name)
        os.mkdir(path, 0o700)
        return path

    def rbtrace_run(self, probe, cache_dir, marker):
        env = dict(os.environ, RBTRACE_CACHE_DIR=cache_dir)
        return measure(self.rbtrace + [probe, "--json"], env, marker,
                       skip=lambda ln: ln.startswith(b'{"type":"start"'))

    def bpftrace_run(self, prog, marker):
        return measure([self.args.bpftrace, "-e", prog], dict(os.environ), marker,
                       skip=lambda ln: ln.startswith(b"Attaching "))

    def pair(self, variant, with_bpftrace):
        """rbtrace then bpftrace, under one background loop."""
        probe, cache, prog, _ = VARIANTS[variant]
        marker = "rbstartup-" + uuid.uuid4().hex[:10]
        cold_dir = None
        try:
            if cache == "cold":
                self.cold_runs += 1
                cold_dir = self.private_dir(f"cold-{self.cold_runs}")
            with exec_loop(marker):
                rb = self.rbtrace_run(probe, cold_dir or self.warm_dir, marker)
                bt = self.bpftrace_run(prog, marker) if with_bpftrace else None
        finally:
            if cold_dir:
                shutil.rmtree(cold_dir, ignore_errors=True)
        row = {"variant": variant, "marker": marker, "rbtrace": rb, "bpftrace": bt}
        if bt:
            row["ratio"] = {"first_event": round(rb["first_event_s"] / bt["first_event_s"], 3),
                            "rss": round(rb["rss_kib"] / bt["rss_kib"], 3)}
        return row

    def fill_cache(self, probes):
        """One unmeasured run per probe into the warm dir; it must leave
        compiled probes there."""
        for probe in probes:
            say(f"filling the warm cache: rbtrace {probe} ...")
            with exec_loop("rbstartup-warmup"):
                self.rbtrace_run(probe, self.warm_dir, None)
        compiled = os.path.join(self.warm_dir, "compiled")
        if not (os.path.isdir(compiled) and os.listdir(compiled)):
            raise Failure(f"the warm-up left no compiled probe in {compiled}")


def measure(argv, env, marker, skip):
    """Launch argv; the time to its first event line (lines for which
    skip(line) is true don't count), memory SETTLE_S after that, and the
    first line that carries `marker` (our loop's own exec); SIGINT, wait."""
    t0 = time.monotonic()
    p = spawn(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    err = Reader(p.stderr.fileno(), "stderr", keep=True)
    err.start()
    out = None
    try:
        try:
            skipped = []
            line = read_line(p, READY_TIMEOUT)
            while skip(line):
                skipped.append(line)
                line = read_line(p, READY_TIMEOUT)
            first_s = time.monotonic() - t0
            first = line
        except RuntimeError as e:
            err.join(5)
            said = err.text().strip().splitlines()
            raise Failure(f"{os.path.basename(argv[0])}: {said[-1] if said else e}") from None
        # Keep reading (a tracer blocked on a full pipe would never see
        # SIGINT), and keep the lines that carry the marker.
        out = Reader(p.stdout.fileno(), "stdout", marker=marker.encode() if marker else None)
        out.start()
        time.sleep(max(0.0, t0 + first_s + SETTLE_S - time.monotonic()))
        rss, hwm = rss_kib(p.pid), rss_kib(p.pid, "VmHWM")
        cpu = cpu_ns(p.pid)
        own_first = marker is not None and marker.encode() in first
        deadline = time.monotonic() + OWN_TIMEOUT
        while marker and not own_first and not out.marked and not out.error \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGINT)
        finish(p, STOP_TIMEOUT)
    finally:
        if p.returncode is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for r in (out, err):
            if r is not None:
                r.join(10)
        p.stdout.close()
        p.stderr.close()
    if out.error:
        raise Failure(f"reading {os.path.basename(argv[0])}'s output: {out.error}")
    own = (first.decode(errors="replace").rstrip("\n") if own_first
           else out.marked[0].decode(errors="replace") if out.marked else None)
    run = {"first_event_s": round(first_s, 4), "rss_kib": rss, "hwm_kib": hwm,
           "cpu_s": round(cpu / 1e9, 3), "exit": p.returncode,
           "first_event": first.decode(errors="replace").rstrip("\n"),
           "own_event": own}
    for line in skipped:
        if line.startswith(b'{"type":"start"'):
            run["ring_bytes"] = json.loads(line).get("ring_bytes")
    return run


def spread(values, fmt, unit):
    """median (min–max), the unit once."""
    if not values:
        return "—"
    return f"{fmt(statistics.median(values))}{unit} ({fmt(min(values))}–{fmt(max(values))})"


def summarize(pairs):
    out = {}
    for variant in dict.fromkeys(p["variant"] for p in pairs if "error" not in p):
        ok = [p for p in pairs if p["variant"] == variant and "error" not in p]
        s = {"pairs": len(ok)}
        for who in ("rbtrace", "bpftrace"):
            runs = [p[who] for p in ok if p.get(who)]
            if runs:
                s[who] = {k: {"median": statistics.median(r[k] for r in runs),
                              "min": min(r[k] for r in runs), "max": max(r[k] for r in runs)}
                          for k in ("first_event_s", "rss_kib", "hwm_kib", "cpu_s")}
        for k in ("first_event", "rss"):
            ratios = [p["ratio"][k] for p in ok if p.get("ratio")]
            if ratios:
                s.setdefault("ratio", {})[k] = {"median": statistics.median(ratios),
                                                "min": min(ratios), "max": max(ratios),
                                                "all": ratios}
        out[variant] = s
    return out


def tables(result):
    pairs, summary = result["pairs"], result["summary"]
    x = "{:.2f}".format
    sec = "{:.3f}".format
    mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
    h = result["host"]
    text = [f"rbtrace start-up against bpftrace {result['date']}, {h['cpus']} CPUs, kernel "
            f"{h['kernel']}, load {h['load'][0]:.1f}",
            f"command: {result['command']}"]
    c = result["code"]
    text.append(f"code: HEAD {c['head']}{' + uncommitted changes' if c['dirty'] else ''} "
                f"(rbtrace/ + probes/ sha256 {c['rbtrace_probes_sha256']})")
    text.append("")
    if result["bpftrace"]:
        text += ["| rbtrace command | against bpftrace on | first event: rbtrace / bpftrace, "
                 "median of pairs (min–max) | RSS: rbtrace / bpftrace, median of pairs (min–max) "
                 "| pairs |", "|---|---|---:|---:|---:|"]
        for variant, s in summary.items():
            probe, cache, _, tp = VARIANTS[variant]
            r = s.get("ratio", {})
            text.append(f"| `rbtrace {probe} --json`, {cache} cache | {tp} "
                        f"| {spread(r.get('first_event', {}).get('all'), x, 'x')} "
                        f"| {spread(r.get('rss', {}).get('all'), x, 'x')} | {s['pairs']} |")
        text.append("")
    text += ["| command | first event, median (min–max) | RSS 0.3 s later, median (min–max) "
             "| peak RSS (VmHWM), median | CPU used by then, median | runs |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant, s in summary.items():
        probe, cache, _, tp = VARIANTS[variant]
        for who, name in (("rbtrace", f"`rbtrace {probe} --json`, {cache} cache"),
                          ("bpftrace", f"`bpftrace -e` one-liner on {tp} ({variant} pairs)")):
            runs = [p[who] for p in pairs if p["variant"] == variant and p.get(who)]
            if not runs:
                continue
            text.append(f"| {name} | {spread([r['first_event_s'] for r in runs], sec, ' s')} "
                        f"| {spread([r['rss_kib'] for r in runs], mib, ' MiB')} "
                        f"| {mib(statistics.median(r['hwm_kib'] for r in runs))} MiB "
                        f"| {statistics.median(r['cpu_s'] for r in runs):.2f} s | {len(runs)} |")
    failed = [f"{p['variant']} (pair {p['round']}): {p['error']}" for p in pairs if "error" in p]
    if failed:
        text += ["", "FAILED pairs: " + "; ".join(failed)]
    if not result["bpftrace"]:
        text += ["", f"bpftrace ({result['options']['bpftrace']}) not found: rbtrace alone, "
                     "no ratios"]
    return "\n".join(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description="rbtrace start-up against bpftrace, pair by pair")
    ap.add_argument("--repeat", type=int, default=5, help="pairs per variant (default 5)")
    ap.add_argument("--only", default=",".join(VARIANTS),
                    help="comma-separated variants: " + ",".join(VARIANTS))
    ap.add_argument("--bpftrace", default="bpftrace", help="the bpftrace to compare with")
    ap.add_argument("--quiet-pct", type=float, default=10,
                    help="before each pair, wait until the machine is at most this %% busy")
    ap.add_argument("--quiet-wait", type=float, default=30,
                    help="... for at most this many seconds, then run anyway")
    ap.add_argument("--results", metavar="DIR", default=RESULTS,
                    help="where to write startup-<stamp>.json and startup-latest.json")
    args = ap.parse_args(argv)
    only = [v.strip() for v in args.only.split(",") if v.strip()]
    bad = [v for v in only if v not in VARIANTS]
    if bad or not only:
        sys.exit(f"startup.py: unknown variant(s) {', '.join(bad) or '(none given)'}; "
                 f"known: {', '.join(VARIANTS)}")
    if args.repeat < 1:
        sys.exit("startup.py: --repeat must be at least 1")
    if os.geteuid() != 0:
        sys.exit("startup.py: needs root (BPF)")
    with_bpftrace = shutil.which(args.bpftrace) is not None
    if not with_bpftrace:
        say(f"bpftrace ({args.bpftrace}) is not installed: measuring rbtrace alone, no ratios "
            f"(make setup-test installs it)")

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)

    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    result = {"date": started.isoformat(timespec="seconds"),
              "command": " ".join([os.path.relpath(sys.executable, ROOT)
                                   if sys.executable.startswith(ROOT) else sys.executable,
                                   "benchmarks/startup.py"] + sys.argv[1:]),
              "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                       "cpu_model": _cpu_model(), "load": os.getloadavg()},
              "options": vars(args), "bpftrace": with_bpftrace, "code": code_state(),
              "pairs": []}
    tmp = tempfile.mkdtemp(prefix="rbtrace-startup-")       # mode 0700
    try:
        runner = Runner(args, tmp)
        runner.fill_cache(dict.fromkeys(VARIANTS[v][0] for v in only if VARIANTS[v][1] == "warm"))
        for k in range(args.repeat):
            for variant in only:
                quiet_machine(args)
                say(f"pair {k + 1}/{args.repeat}: {variant} ...")
                try:
                    row = runner.pair(variant, with_bpftrace)
                except (Failure, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    kill_all()
                    say(f"  FAILED: {e}")
                    row = {"variant": variant, "error": f"{type(e).__name__}: {e}"}
                row["round"] = k + 1
                result["pairs"].append(row)
                if "error" not in row:
                    rb, bt = row["rbtrace"], row["bpftrace"]
                    say(f"  rbtrace {rb['first_event_s']:.3f} s {rb['rss_kib'] / 1024:.0f} MiB"
                        + (f", bpftrace {bt['first_event_s']:.3f} s {bt['rss_kib'] / 1024:.0f} MiB"
                           if bt else ""))
    except BaseException as e:
        kill_all()
        shutil.rmtree(tmp, ignore_errors=True)
        result["error"] = f"{type(e).__name__}: {e}"
        save(result, stamp, prefix="startup-")
        if isinstance(e, KeyboardInterrupt):
            sys.exit("startup.py: interrupted; partial results saved")
        if isinstance(e, (Failure, RuntimeError, OSError)):
            sys.exit(f"startup.py: {e}")
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    result["summary"] = summarize(result["pairs"])
    result["tables_markdown"] = tables(result)
    print(result["tables_markdown"])
    save(result, stamp, prefix="startup-")
    failed = [p for p in result["pairs"] if "error" in p]
    if failed:
        sys.exit(f"startup.py: {len(failed)} pair(s) failed")


if __name__ == "__main__":
    main()
