#!/usr/bin/env python3
"""What `rbtrace tcp` costs per loopback connection, side by side in one run.

A C storm (compiled here with cc) makes N loopback connections in one
process: socket, connect to its own listener on 127.0.0.1, accept, close
both.  Each connection passes the connect and accept tracepoints once and
sock:inet_sock_set_state about 8 times (both ends, handshake and close).
Variants, in turns within each round (--repeat rounds; the table gives the
median and the range of the storm's ns per connection):

  untraced   the storm alone
  rejected   rbtrace tcp --comm nomatch: every hook runs and rejects
             (a task filter at the calls, a map lookup at each state change)
  traced     rbtrace tcp --comm tcpstorm: 4 events per connection written
             (connect, accept, two closes) and decoded to JSON

The probe's own time comes from the kernel's BPF run-time statistics
(see full_path.py), summed over the programs the run loaded, divided by
the connections: it does not depend on how busy the machine is, as the
storm's wall time does.  The storm runs on the last CPU (taskset).

rbtrace's JSON output goes through a pipe to a thread that counts the
lines; its summary (stderr) must show every event delivered and none
dropped.

  .venv/bin/python benchmarks/tcp.py [--connections N] [--repeat K]
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from full_path import enable_stats, prog_ids, run_time_ns  # noqa: E402  (bpf(2) helpers)
import time

STORM_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(l, (void *)&a, sizeof(a)) || listen(l, 128) || getsockname(l, (void *)&a, &len))
        return perror("listen"), 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (void *)&a, sizeof(a)))
            return perror("connect"), 1;
        int s = accept(l, 0, 0);
        if (s < 0)
            return perror("accept"), 1;
        close(c);
        close(s);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.0f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
"""


def storm(binary, n):
    return float(subprocess.run(["taskset", "-c", str(os.cpu_count() - 1), binary, str(n)],
                                capture_output=True, text=True, check=True).stdout)


def traced(binary, n, comm, expect):
    """(storm ns/connection, the probe's own BPF ns/connection)."""
    before = prog_ids()
    p = subprocess.Popen([sys.executable, "-m", "rbtrace", "tcp", "--json", "--comm", comm],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert b'"type":"start"' in p.stdout.readline()     # the probes are attached
    counted = []
    reader = threading.Thread(target=lambda: counted.append(sum(1 for _ in p.stdout)))
    reader.start()
    ours = prog_ids() - before
    t0 = run_time_ns(ours)
    ns = storm(binary, n)
    probe_ns = (run_time_ns(ours) - t0) / n
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    reader.join()
    m = re.search(r"(\d+) events delivered, (\d+) dropped", err)
    assert m and int(m.group(2)) == 0 and int(m.group(1)) == expect, err
    return ns, probe_ns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    o = ap.parse_args()
    tmp = tempfile.mkdtemp()
    src, binary = os.path.join(tmp, "tcpstorm.c"), os.path.join(tmp, "tcpstorm")
    with open(src, "w") as f:
        f.write(STORM_C)
    subprocess.run(["cc", "-O2", "-o", binary, src], check=True)
    stats_fd = enable_stats()             # BPF run-time statistics while we hold it
    results = {"untraced": [], "rejected": [], "traced": []}
    probe = {"rejected": [], "traced": []}
    for _ in range(o.repeat):
        results["untraced"].append(storm(binary, o.connections))
        for name, comm, expect in (("rejected", "nomatch", 0),
                                   ("traced", "tcpstorm", 4 * o.connections)):
            ns, bpf_ns = traced(binary, o.connections, comm, expect)
            results[name].append(ns)
            probe[name].append(bpf_ns)
    os.close(stats_fd)
    for name, xs in results.items():
        line = (f"{name:10} {statistics.median(xs):8.0f} ns/connection "
                f"(range {min(xs):.0f}-{max(xs):.0f}, {len(xs)} rounds)")
        if name in probe:
            ys = probe[name]
            line += (f"; the probe's own BPF time {statistics.median(ys):.0f} ns/connection "
                     f"(range {min(ys):.0f}-{max(ys):.0f})")
        print(line)


if __name__ == "__main__":
    main()
