"""Cost per event of the live table's tally, with and without the top files
(open's SPEC.table_tally), on a synthetic batch: a storm of one path, and
1000 paths.  Run: .venv/bin/python benchmarks/tally_files.py"""
import numpy as np, time
from rbtrace.session import Tally
n = 200_000
dt = np.dtype([("seq", "u8"), ("comm", "S16"), ("ret", "i8"), ("path_len", "u4"), ("path", "S256")])
def make(distinct):
    rec = np.zeros(n, dt)
    rec["comm"] = b"storm"; rec["ret"] = -2
    paths = [b"/tmp/storm/file-%d" % (i % distinct) for i in range(n)]
    rec["path"] = paths; rec["path_len"] = [len(p) for p in paths]
    return rec
for distinct in (1, 1000):
    rec = make(distinct)
    for spec in ((("commands", "comm"), ("errors", "ret")), (("commands", "comm"), ("errors", "ret"), ("files", "path"))):
        t = Tally(spec); best = 1e9
        for _ in range(3):
            s = time.perf_counter()
            for k in range(0, n, 4096): t.add(rec[k:k + 4096])
            best = min(best, time.perf_counter() - s)
        print(f"distinct paths {distinct:5d}  tally {','.join(x for x, _ in spec):24s} {best / n * 1e9:6.0f} ns/event")
