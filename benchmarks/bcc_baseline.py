"""The "BCC per-event callback" baselines for benchmarks/run.py.

rbtrace's own probe (probes/open.bpf.c, same -D flags as `rbtrace open
--comm COMM`) compiled, loaded and attached by BCC itself, and consumed the way
BCC tools do it: one ctypes callback per event, the record cast to the
struct BCC describes (what `table.event()` does), the fields put in a dict
and written as one stdlib `json.dumps` line.

  --transport ringbuf   BCC's open_ring_buffer + ring_buffer_poll
  --transport perf      a variant of open.bpf.c made by text substitution
                        (BPF_PERF_OUTPUT, a per-CPU scratch slot instead of
                        ringbuf_reserve, perf_submit instead of
                        ringbuf_submit), open_perf_buffer + perf_buffer_poll,
                        perf's lost-event callback counted

Protocol with run.py: "ready" on stderr once attached and polling; on
SIGINT/SIGTERM detach, drain what is left, print one JSON summary line on
stderr and exit 0.

  bcc_baseline.py [--transport ringbuf|perf] [--comm rbstorm] [--out FILE|-]
                  [--ring-size BYTES] [--perf-pages N] [--emit-source DIR]
"""
import argparse
import ctypes as ct
import json
import mmap
import os
import re
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rbtrace.bpf import STAT_FLAGS, captured_fds, compile_flags, config_bytes, prepare  # noqa: E402
from rbtrace.csource import inline_local_includes  # noqa: E402
from rbtrace.loader import recursion_misses  # noqa: E402
from rbtrace.paths import probes_dir  # noqa: E402
from rbtrace.kinds.open import SPEC, SYSCALLS, OpenCodec  # noqa: E402


class BccProbe:
    """The probe loaded the way a BCC tool loads it: BPF(text=...) compiles,
    loads and attaches; its maps are read through BCC's tables."""

    def __init__(self, src, cflags, config):
        bcc, _ = prepare()
        text = inline_local_includes(src, [probes_dir()])
        with captured_fds():
            self.bpf = bcc.BPF(text=text.encode(errors="surrogateescape"),
                               cflags=compile_flags(cflags))
        # The process filters, as rbtrace writes them.  BCC has attached by
        # now; until this lands the programs trace nothing (common.h).
        table = self.bpf["rbtrace_config"]
        table[table.Key(0)] = table.Leaf.from_buffer_copy(
            config_bytes(config).ljust(ct.sizeof(table.Leaf), b"\0"))

    def counters(self):
        stats = self.bpf["stats"]
        return [sum(int(v) for v in stats[stats.Key(i)]) for i in range(4)]

    def prog_misses(self):
        return sum(recursion_misses(f.fd) for f in self.bpf.funcs.values())

    def detach(self):
        for tp in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(tp)

    def close(self):
        self.bpf.cleanup()


def probe_flags(comm):
    probe = OpenCodec({"comm": comm} if comm else {}, SPEC)
    # The counters' indexes, as rbtrace's loader adds them to every probe.
    return probe, {**probe.cflags(), **STAT_FLAGS}


# --- the perf-buffer variant of a ring-buffer probe, by text substitution --

# common.h's two ring helpers (reserve_event: reserve, count a full ring,
# fill the header; submit_event: submit, count), whole definitions.
_HELPER = r"static __always_inline void \*?\s*{name}\([^)]*\)[^{{]*\{{.*?\n\}}\n"
_SUBMIT_CALL = re.compile(r"(?<![\w.])submit_event\(\s*(\w+)\s*\)")

# open.bpf.c's emit path has no ctx in scope: emit() is called by
# exit_common() and emit_deferred(), which the sys_exit_* tracepoints call
# with args->ret only.  bpf_perf_event_output needs the program's ctx, so
# the variant threads `void *ctx` (the tracepoint's `args`) through them.
# Each substitution must match exactly as many times as listed, or the
# variant is refused (open.bpf.c changed: update this table).
CTX_PLUMBING = [
    (r"static __always_inline void emit\(struct open_info \*i,",
     "static __always_inline void emit(void *ctx, struct open_info *i,", 1),
    (r"(?<![\w.])emit\(&", "emit(ctx, &", 3),
    (r"static __always_inline void emit_deferred\(struct open_state_short \*p,",
     "static __always_inline void emit_deferred(void *ctx, struct open_state_short *p,", 1),
    (r"(?<![\w.])emit_deferred\(p,", "emit_deferred(ctx, p,", 1),
    (r"static __always_inline int exit_common\(long ret\)",
     "static __always_inline int exit_common(void *ctx, long ret)", 1),
    (r"return exit_common\(args->ret\);", "return exit_common(args, args->ret);", 4),
]


def perf_variant_source(src_path) -> str:
    text = inline_local_includes(src_path, [probes_dir()])
    n = text.count("BPF_RINGBUF_OUTPUT(events, RING_PAGES);")
    if n != 1:
        raise SystemExit(f"perf variant: expected one BPF_RINGBUF_OUTPUT(events, ...), found {n}")
    text = text.replace("BPF_RINGBUF_OUTPUT(events, RING_PAGES);", "BPF_PERF_OUTPUT(events);")
    # The ring helpers go; their perf versions come after the event structs
    # (after the last RBTRACE_EVENT line): "reserving" hands out a per-CPU
    # scratch slot big enough for any event, submitting copies it to the
    # perf buffer, which needs the program's ctx and the record's size.
    for name in ("reserve_event", "submit_event"):
        text, got = re.subn(_HELPER.format(name=name), "", text, flags=re.S)
        if got != 1:
            raise SystemExit(f"perf variant: expected one definition of {name}() in common.h, "
                             f"found {got}; update {__file__}")
    structs = re.findall(r"^RBTRACE_EVENT\((\w+)\);[ \t]*$", text, re.M)
    if not structs:
        raise SystemExit("perf variant: no RBTRACE_EVENT(...) line to put the scratch slot after")
    members = "".join(f" struct {s_} m{i};" for i, s_ in enumerate(structs))
    helpers = (f"union perf_slot {{{members} }};\n"
               "BPF_PERCPU_ARRAY(perf_slot, union perf_slot, 1);\n"
               "static __always_inline void *reserve_event(u32 size, u64 seq)\n"
               "{\n    int zero = 0;\n    struct rb_header *h = perf_slot.lookup(&zero);\n"
               "    if (!h) {\n        count(STAT_RINGBUF_FULL);\n        return 0;\n    }\n"
               "    fill_header(h, seq);\n    return h;\n}\n"
               "static __always_inline void submit_event(void *ctx, void *record, u32 size)\n"
               "{\n    events.perf_submit(ctx, record, size);\n    count(STAT_SUBMITTED);\n}\n")
    at = list(re.finditer(r"^RBTRACE_EVENT\(\w+\);[ \t]*$", text, re.M))[-1].end()
    text = text[:at] + "\n" + helpers + text[at:]
    text, n = _SUBMIT_CALL.subn(lambda m: f"submit_event(ctx, {m.group(1)}, sizeof(*{m.group(1)}))",
                                text)
    if n != 2:
        raise SystemExit(f"perf variant: submit_event(e) matched {n} times, expected 2; "
                         f"open.bpf.c changed, update {__file__}")
    for pattern, repl, want in CTX_PLUMBING:
        text, got = re.subn(pattern, repl, text)
        if got != want:
            raise SystemExit(f"perf variant: {pattern!r} matched {got} times, expected {want}; "
                             f"open.bpf.c changed, update CTX_PLUMBING in {__file__}")
    left = sorted(set(re.findall(r"\w+\.ringbuf_\w+\s*\(", text)))
    if left:
        raise SystemExit(f"perf variant: ring buffer calls left: {left}")
    return text


# --- decoding, as table.event() does it, then json.dumps -------------------

def make_decoder(leaves):
    """leaves: ctypes structs by size, largest first.  Returns decode(data,
    size) -> dict, choosing the struct by the callback's size argument."""
    pointers = [(ct.sizeof(L), ct.POINTER(L)) for L in sorted(leaves, key=ct.sizeof, reverse=True)]

    def decode(data, size):
        for lsize, ptr in pointers:
            if size >= lsize:
                break
        e = ct.cast(data, ptr).contents
        h, i = e.h, e.i
        sc = i.syscall
        return {"type": "open", "seq": h.seq, "ts_ns": h.ts_ns, "pid": h.pid, "tid": h.tid,
                "ppid": h.ppid, "uid": h.uid, "comm": h.comm.decode(errors="replace"),
                "syscall": SYSCALLS[sc] if sc < len(SYSCALLS) else str(sc),
                "path": e.path.decode(errors="replace"), "dirfd": i.dirfd, "flags": i.flags,
                "mode": i.mode, "status": i.status, "ret": e.ret}
    return decode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transport", choices=("ringbuf", "perf"), default="ringbuf")
    ap.add_argument("--comm", default="rbstorm")
    ap.add_argument("--out", default=os.devnull, help="file for the JSON lines; - for stdout")
    ap.add_argument("--ring-size", type=int, default=16 << 20)
    ap.add_argument("--perf-pages", type=int, default=4096,
                    help="perf buffer pages per CPU (power of two; 4096 = 16 MiB each)")
    ap.add_argument("--emit-source", metavar="DIR",
                    help="write the perf variant's source to DIR/open_perf.bpf.c and exit")
    args = ap.parse_args()

    probe, cflags = probe_flags(args.comm)
    src = probe.source_path()
    if args.transport == "perf" or args.emit_source:
        import tempfile
        variant = perf_variant_source(src)
        tmpdir = args.emit_source or tempfile.mkdtemp(prefix="rbtrace-perf-")
        src = os.path.join(tmpdir, "open_perf.bpf.c")
        with open(src, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(variant)
        if args.emit_source:
            print(src)
            return 0
    else:
        cflags["RING_PAGES"] = args.ring_size // mmap.PAGESIZE

    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))

    loaded = BccProbe(src, cflags, probe.run_config())
    bpf = loaded.bpf
    leaves = [bpf[f"layout_{name}"].Leaf for name in probe.event_structs]
    decode = make_decoder(leaves)
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    write, dumps = out.write, json.dumps
    delivered = [0]
    perf_lost = [0]

    if args.transport == "ringbuf":
        def on_event(ctx, data, size):
            write(dumps(decode(data, size)) + "\n")
            delivered[0] += 1
            return 0
        bpf["events"].open_ring_buffer(on_event)
        poll, consume = bpf.ring_buffer_poll, bpf.ring_buffer_consume
    else:
        def on_event(cpu, data, size):
            write(dumps(decode(data, size)) + "\n")
            delivered[0] += 1

        def on_lost(n):
            perf_lost[0] += n
        bpf["events"].open_perf_buffer(on_event, page_cnt=args.perf_pages, lost_cb=on_lost)
        poll, consume = bpf.perf_buffer_poll, bpf.perf_buffer_consume

    sys.stderr.write("ready\n")
    sys.stderr.flush()
    started = time.monotonic()
    try:
        while not stop:
            poll(100)
            out.flush()
        loaded.detach()
        # Everything submitted before the detach: drain it (bounded wait for
        # a program still running on the other CPU).
        for _ in range(200):
            consume()
            submitted = loaded.counters()[0]
            if delivered[0] + perf_lost[0] >= submitted:
                break
            time.sleep(0.005)
        out.flush()
    except BrokenPipeError:
        pass
    # counters() is (submitted, ringbuf_full, map_full, not_followed, ...):
    # take the drop counters by position, so a counter added at the end
    # does not break the baseline.
    counters = loaded.counters()
    submitted, ringbuf_full, map_full = counters[:3]
    summary = {"transport": args.transport, "seen": submitted + ringbuf_full + map_full,
               "submitted": submitted, "delivered": delivered[0],
               "dropped": ringbuf_full + map_full + perf_lost[0],
               "ringbuf_full": ringbuf_full, "map_full": map_full, "perf_lost": perf_lost[0],
               "missed_by_kernel": loaded.prog_misses(),
               "duration_s": round(time.monotonic() - started, 3)}
    loaded.close()
    sys.stderr.write(json.dumps({"type": "summary", **summary}) + "\n")
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
