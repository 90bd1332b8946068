#!/usr/bin/env python3
"""rbtrace against other ways of tracing the same open() storm, side by side.

One run measures every variant on the same workload (benchmarks/storm.c,
compiled here with gcc -O2, pinned to the last CPU; tracers unpinned):

  untraced        the storm alone: the reference ns/open
  rbtrace-json    rbtrace open --json --comm COMM, stdout to /dev/null
  rbtrace-table   rbtrace open --comm COMM, the live table on a pty
  rbtrace-nomatch rbtrace open --json --comm nomatch: traced, rejected in the kernel
  rbtrace-trace   rbtrace trace exec,open --json --comm COMM: the opens in one
                  ring with the exec probe's records; target (d): it delivers
                  everything at no more consumer CPU per event than
                  rbtrace-json, both rows of the same rounds
  bcc-ringbuf     the same probe, BCC's open_ring_buffer + per-event ctypes
                  callback + json.dumps (benchmarks/bcc_baseline.py)
  bcc-perf        the same probe made to use a perf buffer, perf_buffer_poll,
                  same callback (benchmarks/bcc_baseline.py --transport perf)
  bpftrace        bpftrace -f json, enter/exit openat one-liner, read through a pipe
  strace          strace -f -qq -e trace=open,openat -o /dev/null

and with --against REV (`make bench BENCH_BASE=REV`), right after each of
rbtrace-json and rbtrace-table, the same row run by rbtrace as it was at
git revision REV (a detached worktree of it, same venv): the report gives
the consumer CPU per event of each against its REV twin, pair by pair.

then a latency pass (paced storm, every tracer's output through a pipe or
pty) and the extras for the man pages: start-up time, the sustained rate
of `open --json -o /dev/null`.  Prints markdown tables; writes
benchmarks/results/<timestamp>.json and latest.json.  Then, unless
--no-extras, benchmarks/timing.py (reaction times, a long storm) and
benchmarks/startup.py (start-up and memory against bpftrace, pair by pair).

  .venv/bin/python benchmarks/run.py [--opens N] [--rate R] [--only a,b]
                                     [--repeat K] [--no-latency] [--no-extras]
"""
import argparse
import datetime
import errno
import fcntl
import json
import os
import platform
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STORM_PATH = "/nonexistent-rbtrace-bench/file"
CANARY_PATH = "/nonexistent-rbtrace-bench/canary"
# The storm's name, hence every tracer's --comm.  Not "rbstorm": the kernel
# tests build storm.c under that name, and a test running at the same time
# on the machine would be traced too.
COMM = "rbstorm-bench"
QUIET_FLAG_PCT = 10
READY_TIMEOUT = 120.0
IDLE_S = 1.0
STOP_TIMEOUT = 120.0

# --smoke: every row, each in a few seconds (tests/kernel/test_bench_smoke.py
# runs it so that a broken baseline is caught; the numbers mean nothing).
SMOKE = {"opens": 20_000, "strace_opens": 2_000, "latency_opens": 2_000,
         "latency_rate": 20_000, "startup_repeat": 1, "sustain_rates": "20000",
         "sustain_seconds": 0.5, "quiet_wait": 0}

VARIANTS = ("untraced", "rbtrace-json", "rbtrace-table", "rbtrace-nomatch", "rbtrace-trace",
            "bcc-ringbuf", "bcc-perf", "bpftrace", "strace")

BPFTRACE_PROG = r'''
tracepoint:syscalls:sys_enter_openat /comm == "COMM"/ {
  @fname[tid] = args->filename; @flags[tid] = args->flags;
}
tracepoint:syscalls:sys_exit_openat /@fname[tid]/ {
  printf("%llu %d %d %s %d %d %s\n", nsecs, pid, tid, comm, @flags[tid], args->ret,
         str(@fname[tid]));
  delete(@fname[tid]); delete(@flags[tid]);
}
END { clear(@fname); clear(@flags); }
'''

# --- processes: every one we start is killed if anything goes wrong -------

_LIVE = []


def spawn(argv, **kw):
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    _LIVE.append(p)
    return p


def kill_all():
    for p in _LIVE:
        if p.returncode is None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)      # its own session: only its tree
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    _LIVE.clear()


def cpu_ns(pid) -> int:
    """utime + stime of the process (all its threads), in ns; readable from
    a zombie too.  Children's times (cutime) are not included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK


def exited(p) -> bool:
    """True once p has exited, without reaping it (its /proc stays)."""
    try:
        return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    except ChildProcessError:
        return True


def wait_exit(p, timeout):
    deadline = time.monotonic() + timeout
    while not exited(p):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def finish(p, timeout=STOP_TIMEOUT):
    """Wait for p to exit; its CPU time (read from the zombie), then reap."""
    if not wait_exit(p, timeout):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise RuntimeError(f"{p.args[0]} did not exit within {timeout:.0f}s; killed")
    try:
        ns = cpu_ns(p.pid)
    except OSError:
        ns = None
    p.wait()
    return ns


class Failure(Exception):
    pass


def _proc_times():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            out[int(d)] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
        except (OSError, IndexError, ValueError):
            pass
    return out


def background_load(interval=0.5):
    """Busy fraction of all CPUs over `interval`, and the processes that
    used more than 5% of a CPU meanwhile (run between variants: nothing of
    ours is running then)."""
    def stat():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]          # total, idle + iowait
    t0, i0 = stat()
    p0 = _proc_times()
    time.sleep(interval)
    t1, i1 = stat()
    p1 = _proc_times()
    busy = 1 - (i1 - i0) / max(1, t1 - t0)
    me = os.getpid()
    hogs = []
    for pid, (name, ticks) in p1.items():
        if pid != me and pid in p0:
            pct = 100 * (ticks - p0[pid][1]) / CLK_TCK / interval
            if pct > 5:
                hogs.append(f"{name}[{pid}] {pct:.0f}%")
    return round(100 * busy, 1), hogs


class PlacementSampler(threading.Thread):
    """Which CPU the tracer last ran on, sampled every 20 ms: the share of
    samples on the storm's CPU.  Cross-CPU wake-ups are what cost most on
    this VM, so this explains much of the noise."""

    def __init__(self, pid, cpu):
        super().__init__(daemon=True)
        self.pid, self.cpu = pid, cpu
        self.samples = self.on_cpu = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.02):
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                return
            self.samples += 1
            self.on_cpu += int(fields[36]) == self.cpu

    def share(self):
        self.stop.set()
        return round(100 * self.on_cpu / self.samples) if self.samples else None


# --- reading tracer output: counts, ready patterns, latency samples -------

class Reader(threading.Thread):
    """Drains one fd (pipe or pty master) until EOF.

    count:  bytes counted in complete lines (e.g. b'"type": "printf"')
    ready:  bytes whose appearance sets `self.ready`
    ts:     function(line: bytes) -> (ns, clock) or None; the last complete
            line of each chunk is sampled against that clock now
    marker: lines containing it are kept whole (bpftrace's lost_events)
    keep:   keep everything (small streams: stderr)
    progress: regex whose last match's group 1 is kept in `self.progress`
            (the table's "events N", which says when it caught up)
    `watch` may be set at any time: `watch_hit` is set when it shows up.
    """

    def __init__(self, fd, name, count=None, ready=None, ts=None, marker=None, keep=False,
                 progress=None):
        super().__init__(name=f"reader-{name}", daemon=True)
        self.fd, self.count_pat, self.ready_pat, self.ts = fd, count, ready, ts
        self.marker, self.keep, self.progress_re = marker, keep, progress
        self.progress = None
        self.watch = None
        self.watch_hit = threading.Event()
        self.ready = threading.Event()
        self.count = 0
        self.bytes = 0
        self.latencies = []
        self.marked = []
        self.kept = []
        self.head = b""
        self.error = None

    def run(self):
        partial = b""
        last_ts = None
        try:
            while True:
                try:
                    chunk = os.read(self.fd, 1 << 20)
                except OSError as e:
                    if e.errno == errno.EIO:          # pty: the other side is closed
                        break
                    raise
                if not chunk:
                    break
                mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                real = time.time_ns()
                self.bytes += len(chunk)
                if self.keep:
                    self.kept.append(chunk)
                if not self.ready.is_set() and self.ready_pat is not None:
                    self.head = (self.head + chunk)[-65536:]
                    if self.ready_pat in self.head:
                        self.ready.set()
                data = partial + chunk
                if self.watch is not None and self.watch in data:
                    self.watch_hit.set()
                if self.progress_re is not None:
                    for m in self.progress_re.finditer(chunk):
                        self.progress = m.group(1)
                cut = data.rfind(b"\n")
                if cut < 0:
                    partial = data
                    continue
                complete, partial = data[:cut], data[cut + 1:]
                if self.count_pat is not None:
                    self.count += complete.count(self.count_pat)
                if self.marker is not None and self.marker in complete:
                    self.marked += [ln for ln in complete.split(b"\n") if self.marker in ln]
                if self.ts is not None:
                    sample = self.ts(complete[complete.rfind(b"\n") + 1:], complete)
                    # Only a newer event than the last sample counts: the
                    # table redraws the same rows when idle, and a chunk may
                    # hold part of a frame.
                    if sample is not None and (last_ts is None or sample[0] > last_ts):
                        ns, clock = sample
                        last_ts = ns
                        self.latencies.append((mono if clock == "mono" else real) - ns)
        except Exception as e:      # reported by the caller
            self.error = e

    def text(self):
        return b"".join(self.kept).decode(errors="replace")


_TS_RBTRACE = re.compile(rb'"ts_ns":\s*(\d+)')
_TS_BPFTRACE = re.compile(rb'"data": "(\d+) ')
_TS_STRACE = re.compile(rb'^(?:\[pid +\d+\] )?(\d+)\.(\d{6}) ')
_TS_TABLE = re.compile(rb'(\d\d):(\d\d):(\d\d)\.(\d{3})')


def ts_json(line, chunk):
    m = _TS_RBTRACE.search(line)
    return (int(m.group(1)), "mono") if m else None


def ts_bpftrace(line, chunk):
    m = _TS_BPFTRACE.search(line)
    return (int(m.group(1)), "mono") if m else None


def ts_strace(line, chunk):
    m = _TS_STRACE.search(line)
    return (int(m.group(1)) * 1_000_000_000 + int(m.group(2)) * 1000, "real") if m else None


def ts_table(line, chunk):
    """The newest row's TIME (UTC HH:MM:SS.mmm) anywhere in the chunk; the
    day comes from now (a sample across midnight is dropped)."""
    times = _TS_TABLE.findall(chunk)
    if not times:
        return None
    h, m, s, ms = (int(x) for x in max(times))
    now = time.time_ns()
    day = now - now % 86_400_000_000_000
    ns = day + ((h * 60 + m) * 60 + s) * 1_000_000_000 + ms * 1_000_000
    if ns > now + 1_000_000_000:
        return None
    return ns, "real"


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def rbtrace_cmd():
    """How to start rbtrace: the venv's console script, as a user would, else
    python -m rbtrace."""
    rb = os.path.join(os.path.dirname(sys.executable), "rbtrace")
    return [rb] if os.path.exists(rb) else [sys.executable, "-m", "rbtrace"]


# --- the workload ----------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="rbtrace-bench-")
        self.storm = os.path.join(self.tmp, COMM)
        subprocess.run(["gcc", "-O2", "-o", self.storm, os.path.join(HERE, "storm.c")], check=True)
        self.cpu = max(os.sched_getaffinity(0))
        self.rbtrace = rbtrace_cmd()
        self.against = None
        if args.against:
            # rbtrace as it was at REV, run from a worktree of its own by
            # this venv's python: the same dependencies, only the code differs.
            self.against = os.path.join(self.tmp, "against")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach",
                            self.against, args.against], check=True)
            subprocess.run([sys.executable, "-m", "compileall", "-q",
                            os.path.join(self.against, "rbtrace")], check=True)
            self.rbtrace_against = ["env", f"PYTHONPATH={self.against}", sys.executable,
                                    "-m", "rbtrace"]
        self.baseline = [sys.executable, os.path.join(HERE, "bcc_baseline.py")]
        self.loader_opens = self._loader_opens()

    def close(self):
        if self.against is not None:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", self.against],
                           check=False)
            self.against = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _pin(self):
        os.sched_setaffinity(0, {self.cpu})

    def storm_argv(self, n, rate):
        return [self.storm, str(n), STORM_PATH, str(rate or 0)]

    def run_storm(self, n, rate):
        p = spawn(self.storm_argv(n, rate), stdout=subprocess.PIPE, preexec_fn=self._pin)
        out, _ = p.communicate()
        return parse_storm(out, p.returncode)

    def _loader_opens(self):
        """Opens the dynamic loader makes in rbstorm before main() (a traced
        storm of N shows N + this many)."""
        if not shutil.which("strace"):
            return 2
        r = subprocess.run(["strace", "-qq", "-e", "trace=open,openat,openat2,creat", "-o",
                            "/dev/stdout", self.storm, "0"], capture_output=True, text=True)
        return sum(1 for ln in r.stdout.splitlines() if re.match(r"(open|openat|openat2|creat)\(", ln))


def parse_storm(out, code):
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("{") and '"ns_per_open"' in line:
            return json.loads(line.replace("inf", "null"))
    raise Failure(f"the storm printed no result line (exit {code}): {out[-300:]!r}")


# --- one traced run --------------------------------------------------------

def wait_ready(bench, p, how, readers, timeout=READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited(p):
            return False
        if how == "maps":
            # rbtrace maps its ring only after LoadedProbe has attached
            # every tracepoint: the mapping means "attached".
            try:
                with open(f"/proc/{p.pid}/maps") as f:
                    if "anon_inode:bpf-map" in f.read():
                        return True
            except OSError:
                return False
            time.sleep(0.01)
        elif how is None:
            return True
        elif how == "canary":
            # bpftrace prints "attached_probes" before it attaches them:
            # after that line, run a canary open until its line comes out
            # (both probes attached), then let its output settle.
            out = readers["stdout"]
            if not out.ready.wait(0.05):
                continue
            out.watch = CANARY_PATH.encode()
            while not out.watch_hit.is_set():
                if exited(p) or time.monotonic() > deadline:
                    return False
                subprocess.run([bench.storm, "1", CANARY_PATH], stdout=subprocess.DEVNULL)
                out.watch_hit.wait(0.1)
            last = -1
            while out.count != last:
                last = out.count
                time.sleep(0.15)
            return True
        else:
            if readers[how].ready.wait(0.05):
                return True
    return False


def wait_quiescent(p, readers, interval=0.2, timeout=120.0):
    """Until the tracer has caught up: its CPU time and its output stop
    growing (a tracer blocked on a full pipe uses no CPU, hence both)."""
    deadline = time.monotonic() + timeout
    if any(r.progress_re is not None for r in readers.values()):
        # The table redraws (and uses CPU) ten times a second even when
        # idle: caught up when its event counter stops moving.
        interval = max(interval, 0.5)
        last = [r.progress for r in readers.values()]
        while time.monotonic() < deadline:
            time.sleep(interval)
            if exited(p):
                return
            now = [r.progress for r in readers.values()]
            if now == last:
                return
            last = now
        return
    last = (cpu_ns(p.pid), [r.bytes for r in readers.values()])
    while time.monotonic() < deadline:
        time.sleep(interval)
        if exited(p):
            return
        now = (cpu_ns(p.pid), [r.bytes for r in readers.values()])
        if now[0] - last[0] <= 1_000_000_000 // CLK_TCK and now[1] == last[1]:
            return
        last = now


def traced_run(bench, argv, n, rate, *, stdout="devnull", ready="maps", ts=None,
               ts_stream="stdout", count=None, marker=None, ready_pat=None, progress=None):
    """Start the tracer, wait until it is attached, run the storm, wait until
    the tracer caught up, SIGINT it, collect.  Returns a dict of raw facts."""
    readers, fds_to_close, master = {}, [], None
    env = dict(os.environ)
    kw = {"stdin": subprocess.DEVNULL}
    if stdout == "devnull":
        kw["stdout"] = subprocess.DEVNULL
    elif stdout == "pipe":
        kw["stdout"] = subprocess.PIPE
    elif stdout == "pty":
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        kw["stdout"] = kw["stdin"] = slave
        fds_to_close.append(slave)
        env["TERM"] = "xterm-256color"
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
    kw["stderr"] = subprocess.PIPE
    launched = time.monotonic()
    p = spawn(argv, env=env, **kw)
    for fd in fds_to_close:
        os.close(fd)
    out_fd = p.stdout.fileno() if stdout == "pipe" else master
    streams = {"stderr": p.stderr.fileno()}
    if out_fd is not None:
        streams["stdout"] = out_fd
    for name, fd in streams.items():
        r = Reader(fd, name,
                   count=count if name == "stdout" else None,
                   ready=ready_pat if (ready == "canary" and name == "stdout") or ready == name
                   else None,
                   ts=ts if ts_stream == name else None,
                   marker=marker if name == "stdout" else None,
                   progress=progress if name == "stdout" else None,
                   keep=(name == "stderr"))
        r.start()
        readers[name] = r
    facts = {"argv": argv}
    cpu1 = None
    try:
        if not wait_ready(bench, p, ready, readers):
            err = readers["stderr"].text().strip().splitlines()
            raise Failure(f"{argv[0]} never became ready"
                          + (f": {err[-1]}" if err else f" (exit {p.poll()})"))
        facts["ready_s"] = round(time.monotonic() - launched, 3)
        # One idle second first: what the tracer costs with nothing to
        # trace (the table redraws ten times a second), reported apart.
        idle0, t_idle = cpu_ns(p.pid), time.monotonic()
        time.sleep(IDLE_S)
        cpu0 = cpu_ns(p.pid)
        facts["idle_core_pct"] = round(100 * (cpu0 - idle0) / 1e9 / (time.monotonic() - t_idle), 1)
        if "stdout" in readers:
            facts["count_before_storm"] = readers["stdout"].count
        sampler = PlacementSampler(p.pid, bench.cpu)
        sampler.start()
        facts["storm"] = bench.run_storm(n, rate)
        facts["tracer_on_storm_cpu_pct"] = sampler.share()
        t = time.monotonic()
        wait_quiescent(p, {k: v for k, v in readers.items() if k == "stdout"})
        facts["catch_up_s"] = round(time.monotonic() - t, 3)
        os.kill(p.pid, signal.SIGINT)
        cpu1 = finish(p)
        for r in readers.values():
            r.join(timeout=30)
            if r.error:
                raise Failure(f"reading {r.name}: {r.error}")
    finally:
        if p.returncode is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        if master is not None:
            os.close(master)
    facts["exit"] = p.returncode
    facts["cpu_ns"] = None if cpu1 is None else cpu1 - cpu0
    facts["stderr"] = readers["stderr"].text()
    if "stdout" in readers:
        r = readers["stdout"]
        facts["stdout_count"] = r.count - facts.get("count_before_storm", 0)
        facts["stdout_bytes"] = r.bytes
        facts["marked"] = [ln.decode(errors="replace") for ln in r.marked]
        if r.keep:
            facts["stdout_text"] = r.text()
    lat = [r.latencies for r in readers.values() if r.latencies]
    facts["latencies"] = lat[0] if lat else []
    return facts


_RB_SUMMARY = re.compile(r"rbtrace (?:open|trace): (\d+) events delivered, (\d+) dropped")


def rbtrace_counts(facts):
    m = _RB_SUMMARY.search(facts["stderr"])
    if not m:
        raise Failure(f"no summary line from rbtrace: {facts['stderr'][-300:]!r}")
    delivered, dropped = int(m.group(1)), int(m.group(2))
    return {"seen": delivered + dropped, "delivered": delivered, "dropped": dropped,
            "counted_by": "kernel counters (rbtrace's summary line)"}


def baseline_counts(facts):
    for line in facts["stderr"].splitlines():
        if line.startswith("{") and '"summary"' in line:
            s = json.loads(line)
            how = ("kernel counters + perf lost callback" if s["transport"] == "perf"
                   else "kernel counters")
            return {"seen": s["seen"], "delivered": s["delivered"], "dropped": s["dropped"],
                    "counted_by": how, "detail": s}
    raise Failure(f"no summary from bcc_baseline.py: {facts['stderr'][-300:]!r}")


# --- the variants ----------------------------------------------------------

AGAINST = "@base"          # suffix of a row run by rbtrace at --against REV


def variant_spec(bench, name, latency):
    """(argv, traced_run keyword arguments, counting function)."""
    rb = bench.rbtrace
    if name.endswith(AGAINST):
        rb, name = bench.rbtrace_against, name[:-len(AGAINST)]
    if name == "rbtrace-json":
        if latency:
            return (rb + ["open", "--json", "--comm", COMM],
                    dict(stdout="pipe", ready="stdout", ready_pat=b'"type":"start"', ts=ts_json),
                    rbtrace_counts)
        return (rb + ["open", "--json", "--comm", COMM], dict(stdout="devnull", ready="maps"),
                rbtrace_counts)
    if name == "rbtrace-trace":
        # The storm's opens among the exec probe's records, in one ring
        # (rbtrace trace exec,open, the measure): its cost per event
        # next to rbtrace-json's (target (d)).
        return (rb + ["trace", "exec,open", "--json", "--comm", COMM],
                dict(stdout="devnull", ready="maps"), rbtrace_counts)
    if name == "rbtrace-nomatch":
        return (rb + ["open", "--json", "--comm", "nomatch"], dict(stdout="devnull", ready="maps"),
                rbtrace_counts)
    if name == "rbtrace-table":
        return (rb + ["open", "--comm", COMM],
                dict(stdout="pty", ready="stdout", ready_pat=b"q quit", ts=ts_table,
                     progress=re.compile(rb"events (\d+)")),
                rbtrace_counts)
    if name in ("bcc-ringbuf", "bcc-perf"):
        transport = name.split("-")[1]
        argv = bench.baseline + ["--transport", transport, "--comm", COMM,
                                 "--out", "-" if latency else os.devnull]
        kw = dict(stdout="pipe" if latency else "devnull", ready="stderr", ready_pat=b"ready\n")
        if latency:
            kw["ts"] = ts_json
        return argv, kw, baseline_counts
    if name == "bpftrace":
        return (["bpftrace", "-f", "json", "-e", BPFTRACE_PROG.replace("COMM", COMM)],
                dict(stdout="pipe", ready="canary", ready_pat=b'"attached_probes"',
                     count=b'"type": "printf"', marker=b'"lost_events"', ts=ts_bpftrace),
                None)
    if name == "strace":
        argv = ["strace", "-f", "-qq", "-e", "trace=open,openat"]
        argv += ["-ttt"] if latency else ["-o", "/dev/null"]
        argv += ["taskset", "-c", str(bench.cpu)]
        return argv, dict(stdout="pipe", ready=None, storm_in_tracer=True,
                          ts=ts_strace if latency else None, ts_stream="stderr"), None
    raise ValueError(name)


def run_variant(bench, name, n, rate, latency=False):
    """One variant: a result row (dict), with how much CPU processes not
    ours used while it ran."""
    busy, hogs = quiet_machine(bench.args)
    window = OthersWindow()
    row = _run_variant(bench, name, n, rate, latency)
    row["background_cpu_pct"], row["background_hogs"] = busy, hogs
    row.update(window.close())
    return row


class OthersWindow:
    """CPU the rest of the machine used meanwhile: all busy time (from
    /proc/stat) minus ours (this process and every child it has reaped,
    which by the end of a run is all of them), in % of one CPU; and the
    hypervisor's steal time."""

    def __init__(self):
        import resource
        self._res = resource
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = self._stat()
        self.ours0 = self._ours()

    @staticmethod
    def _stat():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = sum(v[:8]) - v[3] - v[4]            # all but idle and iowait
        return busy * 1_000_000_000 // CLK_TCK, v[7] * 1_000_000_000 // CLK_TCK

    def _ours(self):
        r = self._res
        s, c = r.getrusage(r.RUSAGE_SELF), r.getrusage(r.RUSAGE_CHILDREN)
        return int((s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime) * 1e9)

    def close(self):
        wall = time.monotonic() - self.t0
        busy1, steal1 = self._stat()
        others = (busy1 - self.busy0) - (self._ours() - self.ours0)
        return {"others_cpu_pct": round(max(0.0, 100 * others / 1e9 / wall), 1),
                "others_cpu_ms": max(0, others // 1_000_000),
                "steal_pct": round(100 * (steal1 - self.steal0) / 1e9 / wall, 1)}


def _run_variant(bench, name, n, rate, latency=False):
    row = {"variant": name, "opens": n, "rate": rate or 0, "latency_run": latency}
    row["code_sha256"] = code_state()["rbtrace_probes_sha256"]
    if name == "untraced":
        row["storm"] = bench.run_storm(n, rate)
        row["ns_per_open"] = row["storm"]["ns_per_open"]
        return row
    argv, kw, counts = variant_spec(bench, name, latency)
    if kw.get("storm_in_tracer"):
        argv = argv + bench.storm_argv(n, rate)
    facts = run_traced_collect(bench, argv, n, rate, kw)
    storm = facts["storm"]
    row.update({"storm": storm, "ns_per_open": storm["ns_per_open"], "ready_s": facts["ready_s"],
                "tracer_on_storm_cpu_pct": facts.get("tracer_on_storm_cpu_pct"),
                "idle_core_pct": facts.get("idle_core_pct"),
                "catch_up_s": facts.get("catch_up_s"), "consumer_cpu_ns": facts["cpu_ns"],
                "exit": facts["exit"]})
    expected = storm["n"] + bench.loader_opens
    if counts is not None:
        row.update(counts(facts))
    elif name == "bpftrace":
        lost = 0
        for ln in facts["marked"]:
            try:
                lost += int(json.loads(ln)["data"]["events"])
            except (ValueError, KeyError, TypeError):
                m = re.search(r"(\d+)", ln)
                lost += int(m.group(1)) if m else 0
        row.update({"seen": expected, "delivered": facts["stdout_count"],
                    "dropped": expected - facts["stdout_count"], "bpftrace_lost_events": lost,
                    "counted_by": "storm's count; delivered = printf lines read; "
                                  "bpftrace lost_events " + str(lost)})
    elif name == "strace":
        row.update({"seen": expected, "delivered": expected, "dropped": 0,
                    "counted_by": "storm's count (ptrace stops the tracee: nothing is lost)"})
    d = row.get("delivered")
    row["cpu_ns_per_event"] = (round(facts["cpu_ns"] / d, 1)
                               if d and facts["cpu_ns"] is not None else None)
    lat = facts["latencies"]
    if lat:
        row["latency"] = {"samples": len(lat), "p50_us": round(percentile(lat, 0.5) / 1000, 1),
                          "p99_us": round(percentile(lat, 0.99) / 1000, 1),
                          "max_us": round(max(lat) / 1000, 1)}
    return row


def quiet_machine(args):
    """Wait (up to --quiet-wait s) until the machine is idle between runs:
    other people's tests on the same VM would skew every number."""
    deadline = time.monotonic() + (args.quiet_wait if args else 0)
    while True:
        busy, hogs = background_load()
        if busy <= args.quiet_pct if args else True:
            return busy, hogs
        if time.monotonic() > deadline:
            log(f"  warning: the machine is {busy:.0f}% busy before this run: {', '.join(hogs)}")
            return busy, hogs
        log(f"  waiting: the machine is {busy:.0f}% busy ({', '.join(hogs) or '?'})")
        time.sleep(2)


def run_traced_collect(bench, argv, n, rate, kw):
    if kw.get("storm_in_tracer"):
        # strace: the storm's result line is on strace's stdout.
        return _strace_run(bench, argv, kw)
    return traced_run(bench, argv, n, rate, **kw)


def _strace_run(bench, argv, kw):
    p = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Reader(p.stdout.fileno(), "stdout", keep=True)
    err = Reader(p.stderr.fileno(), "stderr", ts=kw.get("ts"), keep=kw.get("ts") is None)
    out.start()
    err.start()
    sampler = PlacementSampler(p.pid, bench.cpu)
    sampler.start()
    try:
        cpu = finish(p, STOP_TIMEOUT * 10)
    finally:
        if p.returncode is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    out.join(30)
    err.join(30)
    return {"storm": parse_storm(b"".join(out.kept), p.returncode), "ready_s": 0.0,
            "tracer_on_storm_cpu_pct": sampler.share(),
            "cpu_ns": cpu, "exit": p.returncode, "stderr": err.text(),
            "latencies": err.latencies}


# --- extras for the man pages ---------------------------------------------

def startup_time(bench, probe, repeat):
    """Launch to the `start` line (compile + attach), seconds."""
    times = []
    for _ in range(repeat):
        quiet_machine(bench.args)
        t0 = time.monotonic()
        p = spawn(bench.rbtrace + [probe, "--json"], stdin=subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = p.stdout.readline()
            t = time.monotonic() - t0
            if b'"type":"start"' not in line:
                raise Failure(f"rbtrace {probe}: no start line: {line[:200]!r} "
                              f"{p.stderr.read()[-300:]!r}")
            times.append(t)
            # No filter: it traces the whole host, so keep reading (a full
            # pipe would block it in write() and it would never see SIGINT).
            drain_out = Reader(p.stdout.fileno(), "stdout")
            drain_err = Reader(p.stderr.fileno(), "stderr")
            drain_out.start()
            drain_err.start()
            os.kill(p.pid, signal.SIGINT)
            finish(p, 30)
            drain_out.join(10)
            drain_err.join(10)
        finally:
            if p.returncode is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        p.stdout.close()
        p.stderr.close()
    times.sort()
    return {"probe": probe, "runs": len(times), "median_s": round(times[len(times) // 2], 2),
            "min_s": round(times[0], 2), "max_s": round(times[-1], 2)}


def sustain(bench, rate, seconds):
    n = int(rate * seconds)
    busy, hogs = quiet_machine(bench.args)
    window = OthersWindow()
    argv = bench.rbtrace + ["open", "--json", "-o", "/dev/null", "--comm", COMM]
    facts = traced_run(bench, argv, n, rate, stdout="devnull", ready="maps")
    others = window.close()
    c = rbtrace_counts(facts)
    storm = facts["storm"]
    achieved = 1e9 / storm["ns_per_open"] if storm["ns_per_open"] else None
    storm_s = (storm["end_ns"] - storm["start_ns"]) / 1e9
    return {"target_rate": rate, "opens": n, "achieved_rate": round(achieved) if achieved else None,
            "ns_per_open": storm["ns_per_open"], **c,
            "consumer_cpu_ns": facts["cpu_ns"],
            # CPU from attached to exit over the storm's duration: the part
            # of a core the consumer needed (start-up excluded, drain included)
            "consumer_core_pct": round(100 * facts["cpu_ns"] / 1e9 / storm_s) if storm_s else None,
            "cpu_ns_per_event": round(facts["cpu_ns"] / c["delivered"], 1) if c["delivered"] else None,
            "tracer_on_storm_cpu_pct": facts.get("tracer_on_storm_cpu_pct"),
            "background_cpu_pct": busy, "background_hogs": hogs, **others,
            "code_sha256": code_state()["rbtrace_probes_sha256"]}


# --- output ----------------------------------------------------------------

def fmt_int(v):
    return "—" if v is None else f"{v:,}"


def fmt_num(v, nd=0):
    if v is None:
        return "—"
    return f"{v:,.{nd}f}"


HOW_SHORT = {
    "rbtrace-json": "kernel counters", "rbtrace-table": "kernel counters",
    "rbtrace-nomatch": "kernel counters", "rbtrace-trace": "kernel counters",
    "bcc-ringbuf": "kernel counters",
    "bcc-perf": "kernel + perf lost cb", "bpftrace": "storm count, lines read",
    "strace": "storm count", "untraced": "—",
}


def main_table(rows, latency_rows):
    ref = next((r["ns_per_open"] for r in rows
                if r["variant"] == "untraced" and not r.get("error")), None)
    lat = {r["variant"]: r.get("latency") for r in latency_rows if not r.get("error")}
    out = ["| variant | seen | delivered | dropped | counted by | consumer CPU ms "
           "| consumer CPU ns/event | workload ns/open | slowdown | latency p50 / p99 (paced) "
           "| latency p50 / p99 (this run) | tracer on storm's CPU |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            out.append(f"| {r['variant']} (FAILED: {' '.join(r['error'].split())[:100]}) |" + " — |" * 11)
            continue
        slow = f"{r['ns_per_open'] / ref:.1f}x" if ref and r["variant"] != "untraced" else ""
        pl = lat.get(r["variant"])
        own = r.get("latency")
        dropped = r.get("dropped")
        drop_txt = fmt_int(dropped)
        if dropped and r.get("seen"):
            drop_txt += f" ({100 * dropped / r['seen']:.0f}%)"
        name = r["variant"]
        if (r.get("background_cpu_pct") or 0) > QUIET_FLAG_PCT:
            name += f" (machine {r['background_cpu_pct']:.0f}% busy before)"
        if disturbed(r):
            name += f" (others used {r['others_cpu_pct']:.0f}% of a CPU meanwhile)"
        out.append(
            f"| {name} | {fmt_int(r.get('seen'))} | {fmt_int(r.get('delivered'))} "
            f"| {drop_txt} | {HOW_SHORT.get(r['variant'].removesuffix(AGAINST), '')} "
            f"| {fmt_num(r['consumer_cpu_ns'] / 1e6 if r.get('consumer_cpu_ns') is not None else None)} "
            f"| {fmt_num(r.get('cpu_ns_per_event'))} | {fmt_num(r['ns_per_open'])} | {slow} "
            f"| {_lat(pl)} | {_lat(own)} "
            f"| {fmt_num(r.get('tracer_on_storm_cpu_pct'))}{'%' if r.get('tracer_on_storm_cpu_pct') is not None else ''} |")
    return "\n".join(out)


def disturbed(r):
    """Other processes used more than QUIET_FLAG_PCT of a CPU during the run
    (and at least 50 ms: /proc/stat counts in 10 ms ticks, so a short run's
    percentage means little)."""
    return ((r.get("others_cpu_pct") or 0) > QUIET_FLAG_PCT
            and (r.get("others_cpu_ms") or 0) >= 50)


def _lat(l):
    if not l:
        return "—"
    return f"{_us(l['p50_us'])} / {_us(l['p99_us'])}"


def _us(v):
    if v >= 10_000:
        return f"{v / 1000:.0f} ms"
    if v >= 1000:
        return f"{v / 1000:.1f} ms"
    return f"{v:.0f} us"


def extras_tables(extras):
    out = []
    if extras.get("startup"):
        out += ["| command | start-up (launch to start line), median | min | max | runs |",
                "|---|---:|---:|---:|---:|"]
        for s in extras["startup"]:
            if s.get("error"):
                out.append(f"| rbtrace {s['probe']} --json | FAILED: {' '.join(s['error'].split())[:100]} | | | |")
                continue
            out.append(f"| rbtrace {s['probe']} --json | {s['median_s']:.2f} s | {s['min_s']:.2f} s "
                       f"| {s['max_s']:.2f} s | {s['runs']} |")
        out.append("")
    if extras.get("sustain"):
        out += ["| `open --json -o /dev/null`, 16M ring: target rate | achieved | ns/open "
                "| seen | delivered | dropped | consumer CPU ns/event | consumer, % of a core |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in extras["sustain"]:
            if s.get("error"):
                out.append(f"| {fmt_int(int(s['target_rate']))}/s | FAILED: {' '.join(s['error'].split())[:100]} "
                           "| | | | | | |")
                continue
            note = (f" (others used {s['others_cpu_pct']:.0f}% of a CPU meanwhile)"
                    if disturbed(s) else "")
            out.append(f"| {fmt_int(int(s['target_rate']))}/s{note} | {fmt_int(s['achieved_rate'])}/s "
                       f"| {fmt_num(s['ns_per_open'])} | {fmt_int(s['seen'])} "
                       f"| {fmt_int(s['delivered'])} | {fmt_int(s['dropped'])} "
                       f"| {fmt_num(s['cpu_ns_per_event'])} | {fmt_num(s.get('consumer_core_pct'))}% |")
    return "\n".join(out)


def median_rows(rounds):
    """Per variant, the round with the median workload ns/open (a real run,
    not a mix of numbers from different runs)."""
    out = []
    for name in rounds[0]:
        runs = sorted((rd[name] for rd in rounds if name in rd),
                      key=lambda r: r.get("ns_per_open", float("inf")))
        out.append(runs[len(runs) // 2])
    return out


def against_lines(rounds, rev):
    """Each rbtrace row against its twin at REV: consumer CPU per event,
    pair by pair (the two ran one after the other), and the median ratio."""
    lines = []
    for v in ("rbtrace-json", "rbtrace-table"):
        pairs = [(rd[v].get("cpu_ns_per_event"), rd[v + AGAINST].get("cpu_ns_per_event"))
                 for rd in rounds if v in rd and v + AGAINST in rd]
        pairs = [(a, b) for a, b in pairs if a and b]
        if not pairs:
            continue
        ratios = sorted(a / b for a, b in pairs)
        each = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in pairs)
        lines.append(f"{v} against {rev}: consumer CPU ns/event this/REV {each}; "
                     f"median ratio {ratios[len(ratios) // 2]:.2f} over {len(pairs)} pair(s)")
    return lines


def trace_target(rounds, loader_opens):
    """(d): rbtrace trace exec,open against rbtrace open, in each round
    where both ran: everything delivered (the storm's opens, its loader's
    and its own exec), and consumer CPU per event trace/open, the median
    of the rounds' ratios, at most 1."""
    pairs = [(rd["rbtrace-trace"], rd["rbtrace-json"]) for rd in rounds
             if not rd.get("rbtrace-trace", {"error": 1}).get("error")
             and not rd.get("rbtrace-json", {"error": 1}).get("error")]
    if not pairs:
        return []
    whole = [t["delivered"] == t["seen"] == t["storm"]["n"] + loader_opens + 1
             and t["dropped"] == 0 for t, _ in pairs]
    ratios = [t["cpu_ns_per_event"] / j["cpu_ns_per_event"] for t, j in pairs
              if t.get("cpu_ns_per_event") and j.get("cpu_ns_per_event")]
    if not ratios:
        return ["(d) rbtrace-trace: no CPU per event to compare -> NOT met"]
    median = sorted(ratios)[len(ratios) // 2]
    each = ", ".join(f"{t['cpu_ns_per_event']:.0f}/{j['cpu_ns_per_event']:.0f}" for t, j in pairs)
    got = ", ".join(f"{t['delivered']:,} of {t['storm']['n'] + loader_opens + 1:,}"
                    for t, _ in pairs)
    return [f"(d) rbtrace-trace (trace exec,open) vs rbtrace-json (open): delivered {got} "
            f"(storm + loader + exec); consumer CPU ns/event trace/open {each}, median ratio "
            f"{median:.2f} over {len(ratios)} round(s) (target <= 1) -> "
            f"{'met' if all(whole) and median <= 1 else 'NOT met'}"]


def targets(rows):
    by = {r["variant"]: r for r in rows if not r.get("error")}
    lines = []

    def get(v, k):
        return by.get(v, {}).get(k)

    for v in ("rbtrace-json", "rbtrace-table"):
        if v in by:
            d = get(v, "dropped")
            lines.append(f"(a) {v}: {d} dropped of {get(v, 'seen')} -> "
                         f"{'met' if d == 0 else 'NOT met'}")
    base = get("bcc-ringbuf", "cpu_ns_per_event")
    for v, frac in (("rbtrace-json", 3), ("rbtrace-table", 10)):
        c = get(v, "cpu_ns_per_event")
        if c is not None and base:
            lines.append(f"(b) {v}: {c:.0f} ns/event vs BCC callback {base:.0f} "
                         f"(ratio 1/{base / c:.2f}, target 1/{frac}) -> "
                         f"{'met' if c * frac <= base else 'NOT met'}")
    bt = get("bpftrace", "ns_per_open")
    for v in ("rbtrace-json", "rbtrace-table"):
        w = get(v, "ns_per_open")
        if w is not None and bt:
            lines.append(f"(c) {v}: workload {w:.0f} ns/open vs bpftrace {bt:.0f} -> "
                         f"{'met' if w <= bt else 'NOT met'}")
    return lines


def main():
    ap = argparse.ArgumentParser(description="rbtrace vs BCC, bpftrace and strace on one open() storm")
    ap.add_argument("--opens", type=int, default=2_000_000, help="opens per storm (default 2,000,000)")
    ap.add_argument("--rate", type=float, default=0, help="pace the main storms (opens/s; 0 = flat out)")
    ap.add_argument("--only", help="comma-separated variants: " + ",".join(VARIANTS))
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the main comparison")
    ap.add_argument("--strace-opens", type=int, default=300_000,
                    help="opens for the strace variant (ptrace costs 10-100 us per call here; "
                         "it loses nothing, so a shorter storm gives the same per-event numbers)")
    ap.add_argument("--latency-opens", type=int, default=100_000)
    ap.add_argument("--latency-rate", type=float, default=50_000)
    ap.add_argument("--no-latency", action="store_true", help="skip the paced latency pass")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip start-up times, sustained-rate runs, timing.py and startup.py")
    ap.add_argument("--startup-repeat", type=int, default=3)
    ap.add_argument("--quiet-pct", type=float, default=10,
                    help="before each run, wait until the machine is at most this %% busy")
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="... for at most this many seconds, then run anyway and flag it")
    ap.add_argument("--sustain-rates", default="10000,100000,300000,500000,700000,900000")
    ap.add_argument("--sustain-seconds", type=float, default=4.0)
    ap.add_argument("--against", metavar="REV",
                    help="also run rbtrace-json and rbtrace-table with rbtrace as it was at "
                         "git revision REV, each right after its row, and compare them")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds per row, to check that every row runs (not a "
                         "measurement): tiny storms, one start-up, one sustained rate, "
                         "no waiting for a quiet machine; the explicit options still win")
    ap.add_argument("--results", metavar="DIR", default=RESULTS,
                    help="where to write <timestamp>.json and latest.json "
                         "(default benchmarks/results)")
    args = ap.parse_args()
    if args.smoke:
        given = {a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("--")}
        for name, value in SMOKE.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
        # A storm name of this run's own: a smoke run (a test) may overlap
        # another run on the machine, whose storm every tracer here would
        # otherwise count too.
        global COMM
        COMM = f"rbsmoke-{os.getpid() % 10**7}"

    if os.geteuid() != 0:
        sys.exit("run.py: needs root (BPF)")
    only = VARIANTS if not args.only else tuple(v.strip() for v in args.only.split(","))
    bad = [v for v in only if v not in VARIANTS]
    if args.against:
        only = tuple(x for v in only
                     for x in ((v, v + AGAINST) if v in ("rbtrace-json", "rbtrace-table") else (v,)))
    if bad:
        sys.exit(f"run.py: unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
    missing = [t for t, v in (("bpftrace", "bpftrace"), ("strace", "strace")) if v in only and not shutil.which(t)]
    if missing:
        sys.exit(f"run.py: {', '.join(missing)} not installed (make setup-test)")

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)

    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    bench = Bench(args)
    result = {"date": started.isoformat(timespec="seconds"),
              "command": " ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT)
                                   else sys.executable, "benchmarks/run.py"] + sys.argv[1:]),
              "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "storm_cpu": bench.cpu,
                       "cpu_model": _cpu_model()},
              "options": vars(args), "loader_opens": bench.loader_opens, "code": code_state(),
              "rounds": [], "latency": [], "extras": {}}
    failed = []

    def attempt(what, fn, *a, **kw):
        """One row.  A row that fails (a tracer that never starts or never
        exits) is recorded with its error, its processes killed, and the
        run goes on: the other rows are still measured, and run.py exits
        non-zero at the end."""
        try:
            return fn(*a, **kw)
        except (Failure, RuntimeError, OSError, subprocess.SubprocessError) as e:
            kill_all()
            failed.append(what)
            log(f"  FAILED: {type(e).__name__}: {e}")
            return {"error": f"{type(e).__name__}: {e}"}

    try:
        for k in range(args.repeat):
            rnd = {}
            for name in only:
                n = min(args.opens, args.strace_opens) if name == "strace" else args.opens
                log(f"round {k + 1}/{args.repeat}: {name} ({n:,} opens) ...")
                rnd[name] = {"variant": name, "opens": n,
                             **attempt(name, run_variant, bench, name, n, args.rate)}
                if "error" not in rnd[name]:
                    log("  " + short(rnd[name]))
            result["rounds"].append(rnd)
        if not args.no_latency:
            for name in only:
                if name in ("untraced", "rbtrace-nomatch", "rbtrace-trace") \
                        or name.endswith(AGAINST):
                    continue
                log(f"latency: {name} at {args.latency_rate:.0f}/s ...")
                row = {"variant": name, "opens": args.latency_opens,
                       **attempt(f"latency {name}", run_variant, bench, name, args.latency_opens,
                                 args.latency_rate, latency=True)}
                result["latency"].append(row)
                if "error" not in row:
                    log("  " + short(row))
        if not args.no_extras:
            result["extras"]["startup"] = []
            for probe in ("exec", "open"):
                log(f"start-up: rbtrace {probe} ...")
                s = attempt(f"start-up {probe}", startup_time, bench, probe, args.startup_repeat)
                result["extras"]["startup"].append({"probe": probe, **s})
            result["extras"]["sustain"] = []
            for rate in (float(x) for x in args.sustain_rates.split(",") if x.strip()):
                log(f"sustain: {rate:.0f}/s for {args.sustain_seconds}s ...")
                s = attempt(f"sustain {rate:.0f}/s", sustain, bench, rate, args.sustain_seconds)
                result["extras"]["sustain"].append({"target_rate": rate, **s})
                if "error" not in s:
                    log(f"  achieved {s['achieved_rate']}/s dropped {s['dropped']} of {s['seen']}")
    except BaseException as e:
        kill_all()
        bench.close()
        result["error"] = f"{type(e).__name__}: {e}"
        save(result, stamp)
        if isinstance(e, KeyboardInterrupt):
            sys.exit("run.py: interrupted; every tracer killed; partial results saved")
        raise
    kill_all()
    bench.close()

    rows = median_rows(result["rounds"]) if result["rounds"] else []
    text = []
    text.append(f"rbtrace benchmark {result['date']}, {result['host']['cpus']} CPUs, "
                f"kernel {result['host']['kernel']}, storm on CPU {bench.cpu}, "
                f"{args.opens:,} opens{' at %.0f/s' % args.rate if args.rate else ' flat out'}"
                + (f" (strace: {min(args.opens, args.strace_opens):,})" if "strace" in only else ""))
    text.append(f"command: {result['command']}")
    c = result["code"]
    text.append(f"code: HEAD {c['head']}{' + uncommitted changes' if c['dirty'] else ''} "
                f"(rbtrace/ + probes/ sha256 {c['rbtrace_probes_sha256']})")
    text.append("")
    if len(result["rounds"]) > 1:
        for i, rnd in enumerate(result["rounds"]):
            text += [f"round {i + 1}:", "", main_table(list(rnd.values()), result["latency"]), ""]
        text += ["median round per variant (by workload ns/open):", ""]
    text += [main_table(rows, result["latency"]), ""]
    if result["latency"]:
        text.append(f"latency (paced): {args.latency_opens:,} opens at {args.latency_rate:,.0f}/s, "
                    f"every tracer's output through a pipe (the table: its pty, TIME column, ms "
                    f"resolution); 'this run': the main run where its output was a pipe or pty")
        text.append("")
    ex = extras_tables(result["extras"])
    if ex:
        text += [ex, ""]
    text += targets(rows)
    text += trace_target(result["rounds"], bench.loader_opens)
    if args.against:
        text += against_lines(result["rounds"], args.against)
    shas = {r.get("code_sha256") for rd in result["rounds"] for r in rd.values()}
    shas |= {r.get("code_sha256") for r in result["latency"]}
    shas |= {r.get("code_sha256") for r in result["extras"].get("sustain", [])}
    shas.discard(None)
    if len(shas) > 1:
        text.append(f"WARNING: rbtrace/ or probes/ changed during this run (digests {sorted(shas)}); "
                    f"see code_sha256 in each row of the JSON")
    if failed:
        result["failed_rows"] = failed
        text.append(f"FAILED rows (see 'error' in the JSON): {', '.join(failed)}")
    result["tables_markdown"] = "\n".join(text)
    print("\n".join(text))
    save(result, stamp)
    if not args.no_extras:
        # Reaction times and the long storm, moved out of the functional tests.
        timing = [sys.executable, os.path.join(HERE, "timing.py")]
        if args.smoke:
            timing += ["--repeat", "1", "--burst", "2000", "--soak-seconds", "2"]
        if subprocess.run(timing).returncode != 0:
            failed.append("timing.py")
        # Start-up and memory against bpftrace, pair by pair.
        startup = [sys.executable, os.path.join(HERE, "startup.py"), "--results", args.results]
        if args.smoke:
            startup += ["--repeat", "1", "--quiet-wait", "0"]
        if subprocess.run(startup).returncode != 0:
            failed.append("startup.py")
    if failed:
        sys.exit(f"run.py: {len(failed)} row(s) failed: {', '.join(failed)}")


def save(result, stamp, prefix=""):
    """<results>/<prefix><stamp>.json and <prefix>latest.json."""
    where = result.get("options", {}).get("results") or RESULTS
    os.makedirs(where, exist_ok=True)
    for name in (f"{prefix}{stamp}.json", f"{prefix}latest.json"):
        with open(os.path.join(where, name), "w") as f:
            json.dump(result, f, indent=1)
    log(f"wrote {os.path.relpath(where, ROOT)}/{prefix}{stamp}.json and {prefix}latest.json"
        + (" (partial: " + result["error"] + ")" if result.get("error") else ""))


def short(row):
    parts = [f"{row['ns_per_open']:.0f} ns/open"]
    if "seen" in row:
        parts.append(f"seen {row['seen']} delivered {row['delivered']} dropped {row['dropped']}")
    if row.get("cpu_ns_per_event") is not None:
        parts.append(f"{row['cpu_ns_per_event']:.0f} cpu ns/event")
    if row.get("latency"):
        parts.append(f"latency p50 {row['latency']['p50_us']}us p99 {row['latency']['p99_us']}us")
    return ", ".join(parts)


def code_state():
    """Which rbtrace was measured: HEAD, whether the tree was dirty, and a
    digest of the files that make up the consumer and the probes."""
    import hashlib
    def git(*a):
        r = subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    h = hashlib.sha256()
    for sub in ("rbtrace", "probes"):
        for dirpath, dirs, files in sorted(os.walk(os.path.join(ROOT, sub))):
            dirs.sort()
            for f in sorted(files):
                if f.endswith((".py", ".c", ".h")):
                    path = os.path.join(dirpath, f)
                    h.update(os.path.relpath(path, ROOT).encode() + b"\0")
                    with open(path, "rb") as fh:
                        h.update(fh.read())
    dirty = git("status", "--porcelain", "--", "rbtrace", "probes")
    return {"head": git("rev-parse", "--short", "HEAD"), "dirty": bool(dirty),
            "rbtrace_probes_sha256": h.hexdigest()[:16]}


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
