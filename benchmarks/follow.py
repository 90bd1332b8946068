#!/usr/bin/env python3
"""What following a build costs: `rbtrace exec|open -- make -j2` against
the bare build and strace -f (issue #7).

A C project is generated (--files sources, 40 by default, -O2, each a
few functions over the usual headers, a generated header, a link step)
and built from clean with make -j2, --repeat times per variant, the
variants taking turns within each round:

  bare          make -j2
  rbtrace-exec  rbtrace exec --json -o FILE -- make -j2
  rbtrace-open  rbtrace open --json -o FILE -- make -j2
  strace-exec   strace -f -e trace=execve,execveat -o /dev/null make -j2
  strace-open   strace -f -e trace=open,openat,openat2,creat -o /dev/null make -j2
  strace-file   strace -f -e trace=%file -o /dev/null make -j2
  strace-all    strace -f -o /dev/null make -j2
  strace-exec-seccomp, strace-open-seccomp
                the two with --seccomp-bpf: only the traced calls stop the
                process (without it strace -f stops every process at every
                system call, whatever -e trace= says)

rbtrace's fixed cost (Python start, compile, attach, detach) is measured
apart with `rbtrace exec|open --json -o FILE -- /bin/true`, and taken off
the traced build's time to give the per-build cost.  For every run: the
wall time, the CPU time of the whole tree (getrusage of the reaped
children), the tracer's own CPU time (its /proc stat, read from the
zombie; its children not included), the build's CPU (the difference),
and for rbtrace its summary (events delivered, dropped).  Before each run
it waits (--quiet-wait) for the machine to be idle and for other
people's BPF tracing programs to be gone; rows with runs that didn't get
that are flagged.

Prints markdown tables; writes benchmarks/results/follow-<timestamp>.json
and follow-latest.json.

  .venv/bin/python benchmarks/follow.py [--files N] [--repeat K] [--jobs J]
                                        [--only a,b] [--startup-repeat K]
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import _cpu_model, code_state, cpu_ns, log, quiet_machine, save  # noqa: E402

# The build's environment, the same for every variant: nothing of the
# caller's (a MAKEFLAGS from `make bench` would change make -j).
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C", "HOME": "/root"}

OPEN_CALLS = "open,openat,openat2,creat"
VARIANTS = ("bare", "rbtrace-exec", "rbtrace-open", "strace-exec", "strace-open",
            "strace-file", "strace-all", "strace-exec-seccomp", "strace-open-seccomp")


# --- the project -------------------------------------------------------------

# One block of code; a source file holds --blocks of them (about 20 ms of
# gcc -O2 each here).
BLOCK = """
static uint64_t {n}_hash{b}(const char *s)
{{
    uint64_t h = {seed}ULL;
    while (*s)
        h = (h ^ (unsigned char)tolower(*s++)) * 1099511628211ULL;
    return h;
}}

static double {n}_norm{b}(const double *v, size_t n)
{{
    double s = 0;
    for (size_t k = 0; k < n; k++)
        s += v[k] * v[k];
    return sqrt(s);
}}

static int {n}_cmp{b}(const void *a, const void *b)
{{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}}

static int {n}_{b}(const char *arg)
{{
    double v[32];
    char buf[128];
    for (int k = 0; k < 32; k++)
        v[k] = sin(k * {i}.5 + {b}) * (double)({n}_hash{b}(arg) % 97);
    qsort(v, 32, sizeof(v[0]), {n}_cmp{b});
    snprintf(buf, sizeof(buf), "%s-%d-%.3f", arg, VERSION, {n}_norm{b}(v, 32));
    return (int)strlen(buf);
}}
"""


def make_project(d, nfiles, blocks):
    os.makedirs(d)
    with open(os.path.join(d, "common.h"), "w") as f:
        f.write("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
                "#include <math.h>\n#include <stdint.h>\n#include <ctype.h>\n")
    names = [f"m{i:02d}" for i in range(nfiles)]
    for i, n in enumerate(names):
        with open(os.path.join(d, f"{n}.c"), "w") as f:
            f.write('#include "common.h"\n#include "version.h"\n')
            for b in range(blocks):
                f.write(BLOCK.format(n=n, b=b, i=i, seed=1469598103934665603 + i * 31 + b))
            f.write(f"int {n}(const char *arg)\n{{\n    int t = 0;\n")
            f.write("".join(f"    t += {n}_{b}(arg);\n" for b in range(blocks)))
            f.write("    return t;\n}\n")
    with open(os.path.join(d, "main.c"), "w") as f:
        f.write('#include "common.h"\n')
        f.write("".join(f"int {n}(const char *);\n" for n in names))
        f.write("int main(int argc, char **argv)\n{\n    int t = 0;\n")
        f.write("".join(f'    t += {n}(argc > 1 ? argv[1] : "x");\n' for n in names))
        f.write('    printf("%d\\n", t);\n    return 0;\n}\n')
    srcs = " ".join(f"{n}.c" for n in names) + " main.c"
    with open(os.path.join(d, "Makefile"), "w") as f:
        f.write("SHELL = /bin/sh\nCC = gcc\nCFLAGS = -O2 -Wall -pipe\n"
                f"SRCS = {srcs}\nOBJS = $(SRCS:.c=.o)\n\n"
                "prog: $(OBJS)\n\t$(CC) $(CFLAGS) -o $@ $(OBJS) -lm\n\n"
                "%.o: %.c common.h version.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n"
                "version.h:\n\techo '#define VERSION 3' > $@\n\n"
                "clean:\n\trm -f prog $(OBJS) version.h\n")


def clean(d):
    subprocess.run(["make", "-s", "clean"], cwd=d, env=ENV, check=True)


# --- one run -------------------------------------------------------------------

TRACING_PROG_TYPES = {"tracepoint", "raw_tracepoint", "kprobe", "perf_event", "tracing"}


def other_tracers():
    """BPF tracing programs loaded now (between our runs: someone else's),
    by name; None when bpftool is missing."""
    if not shutil.which("bpftool"):
        return None
    r = subprocess.run(["bpftool", "prog", "list", "--json"], capture_output=True, text=True)
    try:
        progs = json.loads(r.stdout or "[]")
    except ValueError:
        return None
    return sorted(p.get("name", "?") for p in progs if p.get("type") in TRACING_PROG_TYPES)


def quiet(args):
    """quiet_machine (CPU), then wait as long again for other people's
    tracers to go: a system-wide probe slows every syscall of the build."""
    busy, hogs = quiet_machine(args)
    deadline = time.monotonic() + args.quiet_wait
    while True:
        progs = other_tracers()
        if not progs or time.monotonic() > deadline:
            break
        log(f"  waiting: {len(progs)} BPF tracing programs of others are loaded")
        time.sleep(2)
    return busy, hogs, progs


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv, cwd):
    """Run argv to completion: wall seconds, CPU seconds of everything it
    and its descendants used, its own CPU seconds, exit code, stderr."""
    cpu0 = children_cpu()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped
    wall = time.monotonic() - t0
    own = cpu_ns(p.pid) / 1e9
    p.wait()
    return {"wall_s": round(wall, 4), "cpu_s": round(children_cpu() - cpu0, 3),
            "tracer_cpu_s": round(own, 3), "exit": p.returncode,
            "stderr": err.decode(errors="replace")[-2000:]}


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="rbtrace-follow-bench-")
        self.proj = os.path.join(self.tmp, "proj")
        make_project(self.proj, args.files, args.blocks)
        rb = os.path.join(os.path.dirname(sys.executable), "rbtrace")
        self.rbtrace = [rb] if os.path.exists(rb) else [sys.executable, "-m", "rbtrace"]
        self.events = os.path.join(self.tmp, "events.json")
        self.make = ["make", f"-j{args.jobs}"]

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def argv(self, variant, cmd=None):
        cmd = cmd or self.make
        if variant == "bare":
            return cmd
        if variant.startswith("rbtrace-"):
            probe = variant.split("-", 1)[1]
            return [*self.rbtrace, probe, "--json", "-o", self.events, "--", *cmd]
        trace = {"strace-exec": ["-e", "trace=execve,execveat"],
                 "strace-open": ["-e", f"trace={OPEN_CALLS}"],
                 "strace-file": ["-e", "trace=%file"],
                 "strace-all": [],
                 "strace-exec-seccomp": ["--seccomp-bpf", "-e", "trace=execve,execveat"],
                 "strace-open-seccomp": ["--seccomp-bpf", "-e", f"trace={OPEN_CALLS}"]}[variant]
        return ["strace", "-f", "-qq", *trace, "-o", "/dev/null", *cmd]

    def run(self, variant, cmd=None, cwd=None, build=True):
        if build:
            clean(self.proj)
        if os.path.exists(self.events):
            os.unlink(self.events)
        busy, hogs, progs = quiet(self.args)
        argv = self.argv(variant, cmd)
        row = {"variant": variant, "argv": argv, "busy_before_pct": busy, "hogs": hogs,
               "other_bpf_progs": progs,
               **timed(argv, cwd or self.proj)}
        if row["exit"] != 0:
            raise RuntimeError(f"{variant}: exit {row['exit']}: {row['stderr'][-500:]}")
        if build and not os.path.exists(os.path.join(self.proj, "prog")):
            raise RuntimeError(f"{variant}: the build made no program")
        if variant.startswith("rbtrace-"):
            with open(self.events) as f:
                lines = [json.loads(ln) for ln in f if ln.strip()]
            s = lines[-1]
            assert s["type"] == "summary", s
            row.update({k: s.get(k) for k in ("seen", "delivered", "dropped", "followed_running")})
            row["command_status"] = s["command"]["status"]
        return row


# --- the report ------------------------------------------------------------------

def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(runs, startup):
    bare = med(runs["bare"], "wall_s")
    out = []
    for v, rows in runs.items():
        s = {"variant": v, "runs": len(rows), "wall_median_s": med(rows, "wall_s"),
             "wall_min_s": min(r["wall_s"] for r in rows), "wall_max_s": max(r["wall_s"] for r in rows),
             "cpu_median_s": med(rows, "cpu_s"), "tracer_cpu_median_s": med(rows, "tracer_cpu_s"),
             "build_cpu_median_s": statistics.median(
                 r["cpu_s"] - (r["tracer_cpu_s"] if v != "bare" else 0) for r in rows),
             "delivered": med(rows, "delivered"), "dropped": sum(r.get("dropped") or 0 for r in rows),
             "flagged": sum(1 for r in rows if r["busy_before_pct"] > 10 or r["other_bpf_progs"])}
        s["overhead_pct"] = round(100 * (s["wall_median_s"] / bare - 1), 1)
        if v.startswith("rbtrace-") and startup.get(v):
            fixed = startup[v]["wall_median_s"]
            s["startup_s"] = fixed
            s["per_build_s"] = round(s["wall_median_s"] - fixed, 3)
            s["per_build_overhead_pct"] = round(100 * (s["per_build_s"] / bare - 1), 1)
        out.append(s)
    return out


def table(summary, startup, args):
    lines = ["| variant | wall, median (min–max) | vs bare | minus rbtrace's start-up | "
             "CPU: tree / tracer / build | events (dropped) |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in summary:
        vs = "" if s["variant"] == "bare" else f"{s['overhead_pct']:+.1f} %"
        per = (f"{s['per_build_s']:.2f} s ({s['per_build_overhead_pct']:+.1f} %)"
               if "per_build_s" in s else "")
        own = "—" if s["variant"] == "bare" else f"{s['tracer_cpu_median_s']:.2f}"
        ev = (f"{s['delivered']:,.0f} ({s['dropped']})" if s["delivered"] is not None else "")
        flag = f" ({s['flagged']} runs on a busy or traced machine)" if s["flagged"] else ""
        lines.append(f"| {s['variant']}{flag} | {s['wall_median_s']:.2f} s ({s['wall_min_s']:.2f}–"
                     f"{s['wall_max_s']:.2f}) | {vs} | {per} | {s['cpu_median_s']:.2f} / {own} / "
                     f"{s['build_cpu_median_s']:.2f} s | {ev} |")
    lines += ["", "| start-up: command | wall, median (min–max) | tracer's own CPU | runs |",
              "|---|---:|---:|---:|"]
    for v, s in startup.items():
        lines.append(f"| `rbtrace {v.split('-', 1)[1]} --json -o FILE -- /bin/true` | "
                     f"{s['wall_median_s']:.2f} s ({s['wall_min_s']:.2f}–{s['wall_max_s']:.2f}) | "
                     f"{s['tracer_cpu_median_s']:.2f} s | {s['runs']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="rbtrace -- make -j2 against the bare build and strace -f")
    ap.add_argument("--files", type=int, default=40, help="C sources in the project (default 40)")
    ap.add_argument("--blocks", type=int, default=8,
                    help="blocks of code per source (default 8: about 0.15 s of gcc -O2 each)")
    ap.add_argument("--jobs", type=int, default=2, help="make -jN (default 2)")
    ap.add_argument("--repeat", type=int, default=5, help="builds per variant (default 5)")
    ap.add_argument("--startup-repeat", type=int, default=5)
    ap.add_argument("--only", help="comma-separated variants: " + ",".join(VARIANTS))
    ap.add_argument("--quiet-pct", type=float, default=10,
                    help="before each run, wait until the machine is at most this %% busy")
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="... for at most this many seconds, then run anyway and flag it")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("follow.py: needs root (BPF)")
    only = VARIANTS if not args.only else tuple(v.strip() for v in args.only.split(","))
    bad = [v for v in only if v not in VARIANTS]
    if bad:
        sys.exit(f"follow.py: unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
    if "bare" not in only:
        only = ("bare",) + only
    for tool in ("make", "gcc") + (("strace",) if any(v.startswith("strace") for v in only) else ()):
        if not shutil.which(tool):
            sys.exit(f"follow.py: {tool} is not installed (make setup-test)")

    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    bench = Bench(args)
    result = {"date": started.isoformat(timespec="seconds"),
              "command": " ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT)
                                   else sys.executable, "benchmarks/follow.py"] + sys.argv[1:]),
              "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": _cpu_model()},
              "options": vars(args), "code": code_state(), "runs": {v: [] for v in only},
              "startup_runs": {}}
    try:
        log(f"project: {args.files} sources in {bench.proj}; warm-up build ...")
        bench.run("bare")
        rb = [v for v in only if v.startswith("rbtrace-")]
        for v in rb:
            result["startup_runs"][v] = []
            for k in range(args.startup_repeat):
                row = bench.run(v, cmd=["/bin/true"], cwd=bench.tmp, build=False)
                result["startup_runs"][v].append(row)
            log(f"start-up {v}: " + ", ".join(f"{r['wall_s']:.2f}" for r in result["startup_runs"][v]))
        for k in range(args.repeat):
            order = list(only[k % len(only):] + only[:k % len(only)])     # take turns
            for v in order:
                row = bench.run(v)
                result["runs"][v].append(row)
                log(f"round {k + 1}/{args.repeat} {v}: {row['wall_s']:.2f} s wall, "
                    f"{row['cpu_s']:.2f} s CPU" + (f", {row['delivered']} events, {row['dropped']} dropped"
                                                   if "delivered" in row else ""))
    except BaseException as e:
        result["error"] = f"{type(e).__name__}: {e}"
        save(result, stamp, prefix="follow-")
        bench.close()
        raise
    bench.close()

    startup = {}
    for v, rows in result["startup_runs"].items():
        startup[v] = {"runs": len(rows), "wall_median_s": med(rows, "wall_s"),
                      "wall_min_s": min(r["wall_s"] for r in rows),
                      "wall_max_s": max(r["wall_s"] for r in rows),
                      "tracer_cpu_median_s": med(rows, "tracer_cpu_s")}
    summary = summarize(result["runs"], startup)
    result["startup"], result["summary"] = startup, summary
    c = result["code"]
    text = [f"rbtrace follow benchmark {result['date']}, {result['host']['cpus']} CPUs, kernel "
            f"{result['host']['kernel']}: make -j{args.jobs} of {args.files} C files (-O2) from clean, "
            f"{args.repeat} builds per variant",
            f"command: {result['command']}",
            f"code: HEAD {c['head']}{' + uncommitted changes' if c['dirty'] else ''} "
            f"(rbtrace/ + probes/ sha256 {c['rbtrace_probes_sha256']})", "",
            table(summary, startup, args)]
    result["tables_markdown"] = "\n".join(text)
    print("\n".join(text))
    save(result, stamp, prefix="follow-")


if __name__ == "__main__":
    main()
