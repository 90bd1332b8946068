#!/usr/bin/env python3
"""CPU per event of *showing* an open() storm live: rbtrace's own table
(render.TableRenderer) against Textual widgets doing the same job, side by
side in one run (issue #16, item 3: "consider Textual, and measure its CPU per
event at a storm before you adopt it").

No kernel and no root: every variant is fed the same synthetic ring records
(open's short record, 4096 per batch, as ringbuf.segments() hands them out),
decoded as session.py decodes them for the table (the last `tail` = 200 of each
batch), at a paced storm rate (500,000 events/s by default), with a tick at
10/s (session.STATS_INTERVAL).  Each variant runs in a child process of its own
so that its CPU (user+sys of the whole process, every thread included: rusage
around the feed loop only, imports and the first frame excluded) and its
memory (VmRSS growth over the loop, VmHWM) are its own.

Variants (--only):
  feed              the feed alone (decode of the tail, no view): the floor
  rbtrace-mem       TableRenderer into an in-memory rich Console (ANSI, discarded)
  rbtrace-pty       TableRenderer on a pseudo-terminal, as `rbtrace open` runs
  textual-log       Textual DataTable as a Textual user writes a live log:
                    the new rows added at each tick, the oldest removed past
                    the history (10,000 rows, as TableRenderer.history)
  textual-grow      the same without removing any row: what add_rows alone
                    costs (the table grows by 24,000 rows a second)
  textual-window    Textual DataTable refilled at each tick with the rows that
                    fit on screen only (the history in a deque, as rbtrace
                    keeps it): the cheapest way to use a DataTable at a storm
  textual-richlog   Textual RichLog(max_lines=10,000) fed one line per row
  textual-tree      Textual Tree of processes (issue #16's tree view): one node
                    per process, its label the counts of opens and errors
                    (counted with numpy over every record), its children its
                    last 5 events; rbtrace has no tree yet, so its ratio is
                    against rbtrace's table
Each Textual variant runs headless (App.run(headless=True, size=...): Textual
composes every frame but writes nothing) and on a pseudo-terminal (its real
Linux driver), at each --sizes.

Textual is NOT a dependency of rbtrace.  Install it apart, e.g.
    .venv/bin/python -m pip install --target /tmp/textual-lib textual
and run
    .venv/bin/python benchmarks/textual_view.py [--textual-lib /tmp/textual-lib]
Without Textual the script says so in one line and exits 0 (nothing measured).
"""
import argparse
import asyncio
import ctypes
import fcntl
import io
import json
import os
import platform
import resource
import select
import struct
import subprocess
import sys
import termios
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # rbtrace from this checkout

DEFAULT_LIB = "/tmp/textual-lib"
VARIANTS = ["feed", "rbtrace-mem", "rbtrace-pty", "textual-log", "textual-grow", "textual-window",
            "textual-richlog", "textual-tree"]
TEXTUAL = [v for v in VARIANTS if v.startswith("textual")]


# --- the synthetic storm --------------------------------------------------------
# open's short record as probes/open.bpf.c lays it out (the same layout as
# tests/unit/test_open_decode.py builds by hand).

class RbHeader(ctypes.Structure):
    _fields_ = [("ts_ns", ctypes.c_uint64), ("seq", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("ppid", ctypes.c_uint32), ("uid", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16), ("proc_start_ns", ctypes.c_uint64),
                ("rb_kind", ctypes.c_uint32), ("rb_pad", ctypes.c_uint32)]


class OpenInfo(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64), ("dirfd", ctypes.c_int32),
                ("path_len", ctypes.c_uint32), ("syscall", ctypes.c_uint16),
                ("status", ctypes.c_uint16), ("dir_len", ctypes.c_uint32)]


class OpenShort(ctypes.Structure):
    _fields_ = [("h", RbHeader), ("ret", ctypes.c_int64), ("i", OpenInfo),
                ("path", ctypes.c_char * 256)]


class Feed:
    """Batches of `batch` open records in a ring-like buffer (8-byte record
    header, payload, padded to 8), a few pools of them reused with new seq
    and ts_ns; `next()` decodes the tail of the next batch as session.py
    does for the table."""

    POOLS = 8

    def __init__(self, batch, tail, distinct_paths=1000, processes=4):
        import numpy as np
        from rbtrace import fields
        from rbtrace.bpf import dtype_from_ctypes
        from rbtrace.kinds import open as op
        from rbtrace.ringbuf import EventType
        self.np = np
        self.et = EventType("open_event_short", dtype_from_ctypes(OpenShort))
        self.codec = op.OpenCodec({})
        self.codec.clock = fields.Clock(offset_ns=1_700_000_000 * 10**9)
        self.batch, self.tail = batch, tail
        stride = (self.et.size + 8 + 7) & ~7
        rec_dtype = np.dtype({"names": ["_len", "_pgoff", "_payload"],
                              "formats": ["<u4", "<u4", self.et.dtype], "offsets": [0, 4, 8],
                              "itemsize": stride})
        rng = np.random.default_rng(16)
        self.pools = []
        path_off = self.et.dtype.fields["path"][1]
        for p in range(self.POOLS):
            buf = np.zeros(stride * batch, dtype=np.uint8)
            view = np.ndarray((batch,), dtype=rec_dtype, buffer=buf)
            pay = view["_payload"]
            view["_len"] = self.et.size
            pids = 30000 + rng.integers(0, processes, batch)
            pay["pid"] = pids
            pay["tid"] = pids
            pay["ppid"] = 29999
            pay["uid"] = 0
            pay["comm"] = b"rbstorm"
            pay["proc_start_ns"] = 10**12 + pids
            ok = rng.random(batch) < 0.1             # a storm of mostly failing opens
            pay["ret"] = np.where(ok, 3, -2)
            pay["flags"] = np.where(ok, 0o2000000, 0)
            pay["dirfd"] = op.AT_FDCWD
            pay["syscall"] = 1                      # openat
            names = rng.integers(0, distinct_paths, batch)
            paths = [b"/nonexistent-rbtrace-bench/dir-%03d/file-%d" % (k % 97, k) for k in names]
            pay["path_len"] = [len(x) for x in paths]
            for k, path in enumerate(paths):
                start = k * stride + 8 + path_off
                buf[start:start + len(path)] = np.frombuffer(path, dtype=np.uint8)
            offsets = 8 + stride * np.arange(batch)
            self.pools.append((pay, offsets, memoryview(buf)))
        self.seq = 0
        self.ts = 10**12
        self.records = None

    def next(self):
        """(n, decoded events of the batch's tail)."""
        pay, offsets, data = self.pools[(self.seq // self.batch) % self.POOLS]
        self.records = pay
        tail = pay[-self.tail:]
        tail["seq"] = self.np.arange(self.seq + self.batch - self.tail, self.seq + self.batch)
        tail["ts_ns"] = self.ts + self.np.arange(self.tail) * 2000
        self.seq += self.batch
        self.ts += self.batch * 2000
        return self.batch, self.codec.decode(self.et, tail, offsets[-self.tail:], data)


class Pace:
    """When each batch is due, when to tick, when to give up."""

    def __init__(self, args):
        self.args = args
        self.every = args.batch / args.rate
        self.batches = max(1, round(args.rate * args.seconds / args.batch))
        self.t0 = time.monotonic()
        self.limit = self.t0 + max(3 * args.seconds, args.seconds + 10)
        self.next_tick = self.t0

    def due(self, j):
        return self.t0 + j * self.every

    def stats(self, delivered):
        now = time.monotonic()
        return {"delivered": delivered, "dropped": 0, "missed_by_kernel": 0,
                "rate": delivered / max(now - self.t0, 1e-9), "ring_fill": 0.0}


def mem_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Meter:
    """CPU (user+sys, every thread) and memory over the feed loop."""

    def start(self):
        self.rss0 = mem_kb("VmRSS")
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.w0 = time.monotonic()

    def stop(self, events, frames, behind):
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.monotonic() - self.w0
        user, sys_ = r1.ru_utime - self.r0.ru_utime, r1.ru_stime - self.r0.ru_stime
        return {"events": events, "wall_s": round(wall, 3), "user_s": round(user, 3),
                "sys_s": round(sys_, 3), "cpu_s": round(user + sys_, 3),
                "cpu_pct": round(100 * (user + sys_) / wall, 1) if wall else 0,
                "ns_per_event": round((user + sys_) / max(events, 1) * 1e9, 1),
                "events_per_s": round(events / wall) if wall else 0,
                "frames": frames, "behind_s": round(behind, 3),
                "startup_cpu_s": round(self.r0.ru_utime + self.r0.ru_stime, 3),
                "rss_start_mb": round(self.rss0 / 1024, 1),
                "rss_growth_mb": round((mem_kb("VmRSS") - self.rss0) / 1024, 1),
                "hwm_mb": round(mem_kb("VmHWM") / 1024, 1)}


# --- rbtrace's own table (and the bare feed) ------------------------------------

class Sink(io.TextIOBase):
    """A terminal that swallows what it is sent (counts it)."""

    def __init__(self):
        self.bytes = 0

    def write(self, s):
        self.bytes += len(s)
        return len(s)

    def isatty(self):
        return True


class NullView:
    frames = 0

    def start(self, info):
        pass

    def count(self, n, tail_events):
        pass

    def tick(self, stats):
        pass

    def close(self, summary):
        pass


def run_sync(args, variant, width, height):
    feed = Feed(args.batch, args.tail)
    if variant == "feed":
        view = NullView()
    else:
        from rich.console import Console
        from rbtrace.render import TableRenderer
        if variant == "rbtrace-mem":
            console = Console(file=Sink(), width=width, height=height, force_terminal=True,
                              color_system="truecolor", legacy_windows=False)
        else:
            console = Console()               # as cli.py makes it: the terminal is stdout
        view = TableRenderer(console, feed.codec, "")
        frames = [0]
        draw = view.live.update

        def counted(*a, **kw):
            frames[0] += 1
            return draw(*a, **kw)
        view.live.update = counted
    view.start({})
    meter = Meter()
    meter.start()
    pace = Pace(args)
    delivered, behind = 0, 0.0
    for j in range(pace.batches):
        now = time.monotonic()
        if now > pace.limit:
            break
        wait = pace.due(j) - now
        if wait > 0:
            time.sleep(wait)
        else:
            behind = -wait
        n, events = feed.next()
        view.count(n, events)
        delivered += n
        if time.monotonic() >= pace.next_tick:
            view.tick(pace.stats(delivered))
            pace.next_tick = time.monotonic() + 0.1
    view.tick(pace.stats(delivered))
    result = meter.stop(delivered, frames[0] if variant != "feed" else 0, behind)
    view.close({})
    if variant == "rbtrace-mem":
        result["bytes_out"] = console.file.bytes
    return result


# --- Textual ---------------------------------------------------------------------

def run_textual(args, variant, width, height, headless):
    from rich.text import Text
    from textual.app import App
    from textual.widgets import DataTable, RichLog, Static, Tree
    import numpy as np
    from rbtrace import render

    feed = Feed(args.batch, args.tail)
    columns = feed.codec.columns
    history = render.TableRenderer.history
    out = {}

    class StormApp(App):
        CSS = "#table { height: 1fr; } #footer { height: 2; }"

        def compose(self):
            if variant == "textual-richlog":
                yield RichLog(id="table", max_lines=history, wrap=False, auto_scroll=True)
            elif variant == "textual-tree":
                yield Tree("processes", id="table")
            else:
                yield DataTable(id="table", show_cursor=False)
            yield Static(id="footer")

        def on_mount(self):
            self.widget = self.query_one("#table")
            self.footer = self.query_one("#footer", Static)
            self.pending = []                     # rows counted since the last tick
            self.rows = None
            self.keys = None
            self.frames = 0
            if variant in ("textual-richlog", "textual-tree"):
                # Lines laid out once for the width, as rbtrace's table does.
                # (A tree's leaves are indented: 8 cells less.)
                self.widths = render.layout(columns, width - (9 if variant == "textual-tree" else 1))
                if variant == "textual-richlog":
                    self.widget.write(Text(self.line([c.header for c in columns]),
                                           style="bold"))
                else:
                    import collections
                    self.procs = {}       # pid -> [node, opens, errors, last rows]
                    self.widget.root.expand()
            else:
                self.widget.add_columns(*[c.header for c in columns])
                if variant == "textual-window":
                    import collections
                    self.rows = collections.deque(maxlen=history)
                else:
                    import collections
                    self.keys = collections.deque()
            self.run_worker(self.storm(), exclusive=True)

        def line(self, texts):
            return (" " * render.GAP).join(
                render._pad(render._cut(texts[i], w, c.keep), w, c.justify)
                for i, (c, w) in enumerate(zip(columns, self.widths)) if w is not None).rstrip()

        def count(self, n, tail_events):
            # The same rows as TableRenderer.count makes.
            rows = [[c.value(e) for c in columns] for e in tail_events]
            if variant == "textual-tree":
                import collections
                rec = feed.records
                pids, opens = np.unique(rec["pid"], return_counts=True)
                failed = np.unique(rec["pid"][rec["ret"] < 0], return_counts=True)
                errs = dict(zip(failed[0].tolist(), failed[1].tolist()))
                for pid, k in zip(pids.tolist(), opens.tolist()):
                    p = self.procs.get(pid)
                    if p is None:
                        p = self.procs[pid] = [None, 0, 0, collections.deque(maxlen=5)]
                    p[1] += k
                    p[2] += errs.get(pid, 0)
                for e, row in zip(tail_events, rows):
                    self.procs[e["pid"]][3].append(row)
            elif self.rows is not None:
                self.rows.extend(rows)
            else:
                self.pending.extend(rows)

        def tick(self, stats):
            self.frames += 1
            w = self.widget
            if variant in ("textual-log", "textual-grow"):
                new = self.pending[-history:]
                self.pending = []
                self.keys.extend(w.add_rows(new))
                while variant == "textual-log" and len(self.keys) > history:
                    w.remove_row(self.keys.popleft())
                w.scroll_end(animate=False)
            elif variant == "textual-window":
                visible = max(1, height - 3)        # the header, the two footer lines
                w.clear()
                w.add_rows(list(self.rows)[-visible:])
            elif variant == "textual-tree":
                for pid, p in self.procs.items():
                    label = f"{pid} rbstorm  opens {p[1]}  errors {p[2]}"
                    if p[0] is None:
                        p[0] = w.root.add(label, expand=True)
                    else:
                        p[0].set_label(label)
                    p[0].remove_children()
                    for row in p[3]:
                        p[0].add_leaf(self.line(row))
            else:
                new = self.pending[-history:]
                self.pending = []
                for row in new:
                    w.write(Text(self.line(row)))
            self.footer.update(Text(
                f"open | events {stats['delivered']} | dropped 0 | {stats['rate']:.0f}/s\n"
                + render.TableRenderer.KEYS, no_wrap=True))

        async def storm(self):
            await asyncio.sleep(0.2)                 # the first frame is drawn
            meter = Meter()
            meter.start()
            out["screen_updates"] = 0        # counted from here on
            pace = Pace(args)
            delivered, behind = 0, 0.0
            for j in range(pace.batches):
                now = time.monotonic()
                if now > pace.limit:
                    break
                wait = pace.due(j) - now
                if wait < 0:
                    behind = -wait
                await asyncio.sleep(max(0.0, wait))   # the app draws meanwhile
                n, events = feed.next()
                self.count(n, events)
                delivered += n
                if time.monotonic() >= pace.next_tick:
                    self.tick(pace.stats(delivered))
                    pace.next_tick = time.monotonic() + 0.1
            self.tick(pace.stats(delivered))
            await asyncio.sleep(0.05)                # the last frame
            result = meter.stop(delivered, self.frames, behind)
            out.update(result, screen_updates=out.get("screen_updates", 0))
            self.exit()

    app = StormApp()
    shown = app._display            # every screen update Textual makes (headless too)

    def display(screen, renderable):
        if renderable is not None:
            out["screen_updates"] = out.get("screen_updates", 0) + 1
        return shown(screen, renderable)
    app._display = display
    if headless:
        app.run(headless=True, size=(width, height))
    else:
        app.run()
    return out


def child(args):
    variant, width, height, headless = args.child
    width, height, headless = int(width), int(height), headless == "headless"
    if args.textual_lib:
        sys.path.append(args.textual_lib)
    if variant.startswith("textual"):
        result = run_textual(args, variant, width, height, headless)
    else:
        result = run_sync(args, variant, width, height)
    os.write(int(os.environ["TEXTUAL_VIEW_RESULT_FD"]), (json.dumps(result) + "\n").encode())


# --- the driver ------------------------------------------------------------------

def spawn(args, variant, width, height, where):
    """Run one variant in a child; on a pty of width x height unless
    `where` is "mem"/"headless".  Returns its result dict (or an error)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, str(width), str(height),
           where, "--rate", str(args.rate), "--batch", str(args.batch), "--tail", str(args.tail),
           "--seconds", str(args.seconds)]
    if args.textual_lib:
        cmd += ["--textual-lib", args.textual_lib]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", COLORTERM="truecolor")
    rfd, wfd = os.pipe()
    env["TEXTUAL_VIEW_RESULT_FD"] = str(wfd)
    drained = [0]
    if where == "pty":
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                                pass_fds=(wfd,), start_new_session=True)
        os.close(slave)

        def drain():       # the terminal: read everything, draw nothing
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                drained[0] += len(data)
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
    else:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, pass_fds=(wfd,))
    os.close(wfd)
    data = b""
    deadline = time.monotonic() + 4 * args.seconds + 60
    while True:
        r, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            proc.kill()
            break
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(rfd)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if where == "pty":
        reader.join(timeout=5)
        os.close(master)
    if not data:
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        return {"error": (err.splitlines() or [f"exit {proc.returncode}"])[-1]}
    result = json.loads(data)
    if where == "pty":
        result["bytes_out"] = drained[0]
    return result


def textual_available(lib):
    if lib:
        sys.path.append(lib)
    try:
        import textual
        from textual.app import App  # noqa: F401
        return textual.__version__ if hasattr(textual, "__version__") else "?"
    except ImportError:
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=500_000, help="events offered per second")
    p.add_argument("--batch", type=int, default=4096, help="events per batch (a ring segment)")
    p.add_argument("--tail", type=int, default=200, help="events decoded per batch (TableRenderer.tail)")
    p.add_argument("--seconds", type=float, default=5.0, help="storm length per variant")
    p.add_argument("--sizes", default="80x24,120x40", help="terminal sizes, WxH,...")
    p.add_argument("--only", default=",".join(VARIANTS), help="variants, comma-separated")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the median ns/event is shown")
    p.add_argument("--textual-lib", default=None,
                   help=f"a directory holding Textual (pip install --target DIR textual); "
                        f"default: {DEFAULT_LIB} if it exists")
    p.add_argument("--json", default=None, help="write every raw result here")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    def bad(msg):
        print(f"textual_view: {msg}", file=sys.stderr)
        sys.exit(2)

    if args.rate <= 0 or args.batch <= 0 or args.seconds <= 0 or args.repeat < 1:
        bad("--rate, --batch, --seconds and --repeat must be positive")
    if not 0 < args.tail <= args.batch:
        bad("--tail must be between 1 and --batch")
    try:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
        assert all(len(s) == 2 and s[0] >= 20 and s[1] >= 5 for s in sizes)
    except (ValueError, AssertionError):
        bad(f"--sizes wants WxH[,WxH...] of at least 20x5, not {args.sizes!r}")
    only = [v for v in args.only.split(",") if v]
    unknown = [v for v in only if v not in VARIANTS]
    if unknown:
        bad(f"unknown variant {unknown[0]!r} (one of {', '.join(VARIANTS)})")
    if args.textual_lib and not os.path.isdir(args.textual_lib):
        bad(f"--textual-lib {args.textual_lib!r} is not a directory")
    if args.textual_lib is None and os.path.isdir(DEFAULT_LIB):
        args.textual_lib = DEFAULT_LIB
    version = textual_available(args.textual_lib)
    if version is None and any(v in TEXTUAL for v in only):
        print("textual_view: Textual is not installed (python -m pip install --target "
              f"{DEFAULT_LIB} textual); nothing measured", file=sys.stderr)
        return 0

    runs = []
    for variant in only:
        if variant == "feed":
            runs.append((variant, 0, 0, "mem"))
            continue
        for w, h in sizes:
            if variant == "rbtrace-mem":
                runs.append((variant, w, h, "mem"))
            elif variant == "rbtrace-pty":
                runs.append((variant, w, h, "pty"))
            else:
                runs.append((variant, w, h, "headless"))
                runs.append((variant, w, h, "pty"))
    print(f"# Showing a storm live: CPU per event ({args.rate:,.0f} events/s offered in "
          f"batches of {args.batch}, the last {args.tail} of each decoded, tick 10/s, "
          f"{args.seconds:g} s per run; Textual {version}; python {platform.python_version()}; "
          f"load {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs)\n", flush=True)
    results = {run: [] for run in runs}
    for _ in range(args.repeat):
        for run in runs:            # rounds interleave the variants: same noise for all
            results[run].append(spawn(args, *run))
    feed_ns = None
    rows = []
    for run in runs:
        ok = [r for r in results[run] if "error" not in r]
        if not ok:
            rows.append((run, results[run][0]))
            continue
        med = dict(sorted(ok, key=lambda r: r["ns_per_event"])[len(ok) // 2])
        med["ns_all_rounds"] = [r.get("ns_per_event", r.get("error")) for r in results[run]]
        med["rounds_ok"] = f"{len(ok)}/{len(results[run])}"
        if run[0] == "feed":
            feed_ns = med["ns_per_event"]
        rows.append((run, med))
    # Ratios against rbtrace's table at the same size and the same kind of
    # output: a terminal (pty) or none (in-memory console, Textual headless).
    base = {}
    for (variant, w, h, where), r in rows:
        if variant.startswith("rbtrace") and "error" not in r:
            base[(w, h, where == "pty")] = r["ns_per_event"]
    print("| variant | size | output | events | wall s | CPU s (user+sys) | CPU % | ns/event "
          "| view ns/event (- feed) | × rbtrace | frames | view ms/frame | KB out | RSS +MB "
          "| peak RSS MB | start CPU s | rounds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (variant, w, h, where), r in rows:
        size = f"{w}x{h}" if w else "-"
        if "error" in r:
            print(f"| {variant} | {size} | {where} | failed: {r['error']} |")
            continue
        view = r["ns_per_event"] - feed_ns if feed_ns is not None else None
        frames = r.get("screen_updates", r["frames"])
        per_frame = (f"{view * r['events'] / 1e6 / frames:.1f}"
                     if view is not None and frames and variant != "feed" else "")
        key = (w, h, where == "pty")
        ratio = f"{r['ns_per_event'] / base[key]:.1f}" if key in base else ""
        print(f"| {variant} | {size} | {where} | {r['events']:,} | {r['wall_s']:.1f} "
              f"| {r['cpu_s']:.2f} ({r['user_s']:.2f}+{r['sys_s']:.2f}) | {r['cpu_pct']:.0f} "
              f"| {r['ns_per_event']:.0f} | {'' if view is None else f'{view:.0f}'} | {ratio} "
              f"| {frames} | {per_frame} | {r.get('bytes_out', 0) / 1e3:.0f} | {r['rss_growth_mb']:+.1f} "
              f"| {r['hwm_mb']:.0f} | {r['startup_cpu_s']:.2f} | {r['rounds_ok']} |")
    print("\nA round that did not end within 4 x --seconds + 60 s was killed: it counts "
          "as not finished (rounds).")
    if args.repeat > 1:
        print("\nns/event of every round:")
        for (variant, w, h, where), r in rows:
            if "ns_all_rounds" in r:
                print(f"  {variant} {w}x{h} {where}: {r['ns_all_rounds']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "textual": version,
                       "results": [{"variant": v, "size": [w, h], "output": where, **r}
                                   for (v, w, h, where), r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
