#!/usr/bin/env python3
"""What loading `rbtrace exec` costs the kernel's verifier, per program,
with the probe's loops as bpf_loop callbacks and as bounded loops
(RBTRACE_NO_BPF_LOOP=1), side by side in one run.

Each variant is compiled once into a private compile cache (a temporary
directory) and then loaded from it as a run does; every program is loaded
again --repeat times, one at a time, and timed around bpf(BPF_PROG_LOAD).
Shown per program: the instructions the verifier checked (bpf_prog_info
verified_insns) and the median load time.  Then the start-up of `rbtrace
exec --json` from that cache (launch to the start line: probes attached),
--startup-repeat times, median.

    .venv/bin/python benchmarks/verifier.py [--repeat 5] [--startup-repeat 5]
        [--max-args N] [--max-arg-bytes N]

Needs root.  On a busy 2-core VM the times vary by tens of percent between
runs; the instruction counts do not.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rbtrace import kernel, loader  # noqa: E402
from rbtrace.bpf import LoadedProbe  # noqa: E402
from rbtrace.kinds.exec import ExecCodec  # noqa: E402


def load_times(options, repeat):
    """{program: (verified insns, median load seconds)} from the cache."""
    probe = ExecCodec(options)
    for attempt in ("compile", "from cache"):
        loaded = LoadedProbe(probe.source_path(), dict(probe.cflags()), probe.event_structs,
                             attach=False)
        if attempt == "from cache":
            break
        loaded.close()
    assert loaded.from_cache
    compiled = loaded.loaded.compiled
    fds = {name: m.fd for name, m in loaded.loaded.maps.items()}
    with_subprogs = [p for p in compiled.programs if p.subprogs]
    btf = loader.FuncBTF(with_subprogs) if with_subprogs else None
    out = {}
    try:
        for p in compiled.programs:
            image = loader.patched(p.insns, p.map_refs, fds)
            times, verified = [], 0
            for _ in range(repeat):
                t = time.perf_counter()
                fd = loader.load_program(p, image, compiled.license, btf=btf)
                times.append(time.perf_counter() - t)
                verified = loader.verified_insns(fd)
                os.close(fd)
            out[p.name] = (verified, statistics.median(times))
    finally:
        if btf is not None:
            btf.close()
        loaded.close()
    return out


def startup(options, repeat):
    args = [sys.executable, "-m", "rbtrace", "exec", "--json"]
    if options.get("max_args"):
        args += ["--max-args", str(options["max_args"])]
    if options.get("max_arg_bytes"):
        args += ["--max-arg-bytes", str(options["max_arg_bytes"])]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = p.stdout.readline()
        times.append(time.perf_counter() - t)
        p.send_signal(2)
        p.communicate(timeout=60)
        if b'"start"' not in line:
            raise SystemExit(f"rbtrace exec did not start: {line!r}")
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--startup-repeat", type=int, default=5)
    ap.add_argument("--max-args", type=int)
    ap.add_argument("--max-arg-bytes", type=int)
    a = ap.parse_args()
    options = {k: v for k, v in (("max_args", a.max_args),
                                 ("max_arg_bytes", a.max_arg_bytes)) if v}
    rows = {}
    for variant, forced in (("bpf_loop", "0"), ("bounded", "1")):
        with tempfile.TemporaryDirectory(prefix="rbtrace-verifier-") as cache:
            os.chmod(cache, 0o700)
            os.environ["RBTRACE_CACHE_DIR"] = cache
            os.environ[kernel.NO_BPF_LOOP_ENV] = forced
            if forced == "0" and not kernel.bpf_loop_usable():
                print("bpf_loop does not load on this kernel: only the bounded loops")
                continue
            rows[variant] = (load_times(options, a.repeat), startup(options, a.startup_repeat))
    names = sorted({n for loads, _ in rows.values() for n in loads})
    print(f"exec probe {options or '(defaults)'}, kernel {os.uname().release}\n")
    print("| program | " + " | ".join(f"{v} insns | {v} ms" for v in rows) + " |")
    print("|---|" + "---:|---:|" * len(rows))
    for n in names:
        cells = []
        for loads, _ in rows.values():
            verified, seconds = loads.get(n, (0, 0))
            cells += [f"{verified:,}", f"{seconds * 1000:.2f}"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    total = []
    for loads, _ in rows.values():
        total += [f"{sum(v for v, _ in loads.values()):,}",
                  f"{sum(s for _, s in loads.values()) * 1000:.2f}"]
    print("| all, one after the other | " + " | ".join(total) + " |")
    print()
    for variant, (_, up) in rows.items():
        print(f"start-up of rbtrace exec --json ({variant}): median {up * 1000:.0f} ms")


if __name__ == "__main__":
    main()
