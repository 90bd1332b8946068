#!/usr/bin/env python3
"""What compiling from BTF alone costs: the first run of each command with
an empty cache, against a headers tree and from BTF alone, side by side.

For each repeat and command, two fresh caches: one run with the headers
tree rbtrace finds (Debian's, merged), one with RBTRACE_KERNEL_HEADERS=btf
(the tree is written from /sys/kernel/btf/vmlinux, then the probe is
compiled against it).  A first run ends at once (-d 0.01): its time is the
start-up, the compile included.  Also the time to write the BTF tree alone
and its size.  Medians; the machine is shared, so compare within one run.

  .venv/bin/python benchmarks/btf_first_run.py [--repeat K] [--only exec,tcp]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {"exec": ["exec"], "open": ["open"], "exit": ["exit"], "tcp": ["tcp"],
            "tp": ["tp", "sched:sched_process_exec"],
            "run": ["run", os.path.join(os.path.dirname(__file__), "..", "examples", "kill.bpf.c")]}


def fresh_cache():
    d = tempfile.mkdtemp(prefix="rbtrace-bench-")
    os.chmod(d, 0o700)
    return d


def first_run(args, headers):
    cache = fresh_cache()
    env = {**os.environ, "RBTRACE_CACHE_DIR": cache, "RBTRACE_KERNEL_HEADERS": headers}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "rbtrace", *args, "--json", "-d", "0.01"],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    shutil.rmtree(cache)
    if p.returncode != 0:
        sys.exit(f"rbtrace {' '.join(args)} failed: {p.stderr.decode().strip()}")
    return took


def tree_alone():
    """(seconds to write the BTF tree, its bytes, its files)."""
    cache = fresh_cache()
    code = ("import time; t = time.perf_counter(); from rbtrace.btftree import btf_tree; "
            "btf_tree(); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "RBTRACE_CACHE_DIR": cache},
                         check=True, capture_output=True, text=True).stdout
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(cache, "btf")) for f in fs]
    size = sum(os.path.getsize(f) for f in files)
    shutil.rmtree(cache)
    return float(out), size, len(files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default=",".join(COMMANDS))
    a = ap.parse_args()
    names = a.only.split(",")
    times = {(n, m): [] for n in names for m in ("tree", "btf")}
    trees = []
    for _ in range(a.repeat):
        trees.append(tree_alone())
        for n in names:
            times[n, "tree"].append(first_run(COMMANDS[n], ""))
            times[n, "btf"].append(first_run(COMMANDS[n], "btf"))
    secs, size, files = statistics.median(t[0] for t in trees), trees[0][1], trees[0][2]
    print(f"BTF tree: written in {secs:.2f} s (median of {a.repeat}), "
          f"{size / 1e6:.1f} MB in {files} files\n")
    print("| command | first run, headers tree | first run, BTF alone | difference |")
    print("|---|---|---|---|")
    for n in names:
        t, b = statistics.median(times[n, "tree"]), statistics.median(times[n, "btf"])
        print(f"| {n} | {t:.2f} s | {b:.2f} s | {b - t:+.2f} s |")
    if "run" in names:
        print("\nrun compiles a user's probe from BTF alone in both columns (the tree is "
              "written in both).")


if __name__ == "__main__":
    main()
