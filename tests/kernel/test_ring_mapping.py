"""The ring's data area is mapped once (ringbuf.py): its pages count in
rbtrace's memory once, not twice, and a record that crosses the end of
the ring is copied whole.  Real rings, real workloads."""
import os
import signal
import subprocess
import sys

from conftest import REPO, RBTRACE_ARGV, parse_json_lines, run_cli

# Opens of nonexistent paths of many lengths, paced so that a 64 KiB ring
# never fills: the ring wraps dozens of times, and records land across its
# end at ever-changing offsets.
OPENS = """
import os, sys, time
top = sys.argv[1]
for i in range(int(sys.argv[2])):
    try:
        os.open(f"{top}/{'d' * (i % 200)}/{i}", os.O_RDONLY)
    except OSError:
        pass
    if i % 5 == 0:
        time.sleep(0.001)
"""


def test_records_across_the_end_of_a_small_ring_come_out_whole(kernel_ok, tmp_path):
    n = 3000
    top = f"/nonexistent-rbring-{os.getpid()}"
    p = run_cli("open", "--json", "--ring-size", "64K", "--path", top + "/", "--",
                sys.executable, "-c", OPENS, top, str(n))
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    # Paced, nothing is dropped on an idle machine; a busy one may drop
    # some, counted.  Every event delivered must be whole and in order.
    assert r.summary["seen"] == n and r.summary["delivered"] + r.summary["dropped"] == n
    expected = {f"{top}/{'d' * (i % 200)}/{i}": i for i in range(n)}
    order = [expected[e["path"]] for e in r.events]        # KeyError: a torn path
    assert order == sorted(order) and len(set(order)) == len(order)
    assert all(e["errno"] == "ENOENT" for e in r.events)
    # Far more than the ring holds went through it (each record is over
    # 300 bytes): it wrapped many times.
    assert len(r.events) * 300 > 4 * 64 * 1024, r.summary


def test_the_data_area_is_mapped_once(kernel_ok):
    ring = 8 << 20
    proc = subprocess.Popen([*RBTRACE_ARGV, "open", "--json", "--ring-size", "8M"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        assert b'"type":"start"' in proc.stdout.readline()
        maps, current = [], None
        with open(f"/proc/{proc.pid}/smaps") as f:
            for line in f:
                head = line.split()
                if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    current = [hi - lo, 0] if line.rstrip().endswith("bpf-map") else None
                    if current is not None:
                        maps.append(current)
                elif current is not None and head[0] == "Rss:":
                    current[1] = int(head[1]) * 1024
        biggest = max(maps)
        # The producer page and the data area, once: not page + 2 x ring.
        assert biggest[0] == ring + os.sysconf("SC_PAGE_SIZE"), maps
        assert sum(rss for _, rss in maps) < ring + (1 << 20), maps
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
