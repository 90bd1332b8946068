"""The decoding without numpy (Codec.rows_json_lines over
RingConsumer.payloads) against the numpy one (json_lines over
segments), on the same records in the same kind of ring: byte for byte
the same JSON lines, for every kind whose codec has it (Codec.rows).

A run writes its first events this way while numpy is imported
(session.Session._drain_payloads), then switches; the lines of a run
must not depend on where the switch fell.
"""
import json
import os
import signal
import threading

import numpy as np
import pytest

import test_exec_decode as xd
import test_open_decode as od
from kernel_like_ring import KernelLikeRing
from rbtrace import fields, spec
from rbtrace.codec import Codec
from rbtrace.kinds import exec as ex
from rbtrace.kinds import open as op
from rbtrace.render import JsonRenderer, Output
from rbtrace.ringbuf import EventType, Layout, dtype_to_data
from rbtrace.session import Session

RING = 64 * 4096             # room for every record below, the longest 8 KiB


def as_cached(et):
    """The event type as a run from the compile cache has it: a layout,
    no numpy dtype until one is asked for."""
    return EventType(et.name, layout=dtype_to_data(et.dtype))


def exec_payloads(et, recs, first=0):
    arr = np.zeros(len(recs), dtype=et.dtype)
    for i, r in enumerate(recs, first):
        row = arr[i - first]
        for k, v in r.items():
            row[k] = v
        row["seq"] = i
        row["ts_ns"] = 10**12 + 7919 * i
        row["proc_start_ns"] = 5 * 10**11 + i % 3
    return [arr[i:i + 1].tobytes() for i in range(len(recs))]


# Every branch of exec's body: argv plain, empty, cut, capped, read back
# from the new program, NULL, faulted; not UTF-8 (argv_b64, comm_b64);
# failures; execveat with exe, deleted exe, failed; a filename from bprm;
# "kernel" execs; an unknown syscall number.
EXEC_RECORDS = [
    xd.record(args=[b"/bin/true", b"x"]),
    xd.record(args=[b"", b"x", b"", b""]),
    xd.record(args=[]),
    xd.record(raw_args=b"abc\0de", argc=2, flags=ex.ARGS_TRUNCATED),
    xd.record(args=[b"a", b"b"], argc=70000, flags=ex.ARGC_CAPPED),
    xd.record(args=[b"a%d" % i for i in range(80)], flags=ex.ARGV_FROM_EXEC),
    xd.record(args=[], flags=ex.ARGV_NULL),
    xd.record(args=[b"", b"y"], flags=ex.ARGV_FAULT),
    xd.record(args=[b"\xff\xfe", b"ok\x1b[31m"], comm=b"\xffbad"),
    xd.record(args=[b"nope"], filename=b"/nonexistent", ret=-2),
    xd.record(args=[b"x"], ret=-4096 - 5),
    xd.record(args=[b"t"], syscall=1, dirfd=3, at_flags=0x1000, filename=b"",
              exe=b"/usr/bin/true"),
    xd.record(args=[b"t"], syscall=1, dirfd=-100, filename=b"rel", exe=b"/tmp/gone",
              flags=ex.EXE_DELETED),
    xd.record(args=[b"t"], syscall=1, dirfd=5, filename=b"x", ret=-13),
    xd.record(args=[b"t"], syscall=1, dirfd=4, filename=b"/dev/fd/4/prog",
              flags=ex.FILENAME_FROM_EXEC, exe=b"/opt/prog"),
    xd.record(args=[], syscall=2, flags=ex.NO_ARGV, filename=b"/sbin/modprobe"),
    xd.record(args=[b"q"], syscall=9, uid=65534),
    xd.record(args=[b"big" * 60], argc=1),
]

OPEN_ROWS = [
    {"ret": 3, "flags": 0o2000000},
    {"ret": -2},
    {"ret": -13, "flags": 0o101, "mode": 0o640},
    {"ret": 4, "flags": 0o1101, "mode": 0o600, "syscall": 3},
    {"ret": 5, "flags": 0o20200002, "mode": 0o600},
    {"ret": 6, "flags": 0, "mode": 0o777, "syscall": 2, "resolve": 8},
    {"ret": 7, "syscall": 0, "mode": 0o644},
    {"path": b"/tmp/\xff\xfe\x1b[31m"},
    {"path": b""},
    {"status": op.PATH_FAULT},
    {"syscall": 2, "status": op.HOW_FAULT, "flags": 0o101, "mode": 0o600},
    {"status": op.PATH_AT_EXIT, "path": b"/late"},
    {"path": b"100%s %d %%", "comm": b"pc%t"},
    {"path": b"rel/name", "dir": [b"sub", b"home"], "status": op.DIR},
    {"path": b"rel", "dir": [b"deep"], "status": op.DIR_TRUNCATED},
    {"path": b"gone", "dir": [b"x"], "status": op.DIR | op.DIR_DELETED, "dirfd": 9},
    {"ret": 3, "flags": 0o2000000},              # a repeat: one run, one template
    {"ret": 3, "flags": 0o2000000},
]


def open_payloads(et, rows):
    recs, offsets, data = od.records(et, rows)
    return [bytes(data[o:o + et.size]) for o in offsets.tolist()]


def ring_with(payloads, types, start=0):
    """A kernel-like ring holding `payloads` (event type, bytes), written
    from position `start` (near the end: some records cross it)."""
    ring = KernelLikeRing(size=RING)
    ring.start_at(start)
    for _, p in payloads:
        ring.add(p)
    return ring, ring.consumer(list(types))


def both_ways(make_codec, payloads, types, start=0):
    """(numpy lines, lines without numpy, numpy events, events without
    numpy) of the same records, each read from its own ring."""
    ring_a, cons_a = ring_with(payloads, types, start)
    ring_b, cons_b = ring_with(payloads, types, start)
    a, b = make_codec(), make_codec()
    try:
        lines_np, lines_rows, ev_np, ev_rows = b"", b"", [], []
        for et, records, offsets, data in cons_a.segments():
            lines_np += a.json_lines(et, records, offsets, data)
            ev_np += make_codec().decode(et, records, offsets, data)
        for et, got in cons_b.payloads():
            lines_rows += b.rows_json_lines(et, got)
            ev_rows += make_codec().rows_decode(et, got)
        assert cons_a.pending() == cons_b.pending() == 0
    finally:
        for cons, ring in ((cons_a, ring_a), (cons_b, ring_b)):
            cons.close()
            ring.close()
    return lines_np, lines_rows, ev_np, ev_rows


def exec_codec(**options):
    def make():
        c = ex.ExecCodec(options)
        c.clock = fields.Clock(offset_ns=1_700_000_000 * 10**9)
        return c
    return make


def open_codec(**options):
    def make():
        c = op.OpenCodec(options)
        c.clock = fields.Clock(offset_ns=1_700_000_000 * 10**9)
        return c
    return make


@pytest.mark.parametrize("cached", [False, True], ids=["dtype", "layout"])
@pytest.mark.parametrize("start", [0, RING - 3000], ids=["from-0", "across-the-end"])
def test_exec_lines_are_the_same_without_numpy(cached, start):
    small, big = xd.event_type(256), xd.event_type(1024)
    if cached:
        small, big = as_cached(small), as_cached(big)
    payloads = []
    for i, r in enumerate(EXEC_RECORDS):
        et = big if len(r["data"]) > 256 or i % 4 == 3 else small   # runs of both sizes
        payloads.append((et, exec_payloads(et, [r], i)[0]))
    lines_np, lines_rows, ev_np, ev_rows = both_ways(exec_codec(max_args=64), payloads,
                                                     (small, big), start)
    assert ev_rows == ev_np and len(ev_np) == len(EXEC_RECORDS)
    assert lines_rows == lines_np
    assert [json.loads(x) for x in lines_np.splitlines()] == ev_np
    # Every branch above was taken: the rare flags, b64, execveat, kernel.
    seen = set().union(*(e.keys() for e in ev_np))
    assert {"argv_b64", "comm_b64", "exe", "dirfd", "last_arg_cut", "argv_unknown"} <= seen
    assert {e["syscall"] for e in ev_np} == {"execve", "execveat", "kernel", "9"}


@pytest.mark.parametrize("options,et", [({}, od.SHORT), ({}, od.LONG),
                                        ({"full_path": True}, od.LONG_FULL)],
                         ids=["short", "long", "full-path"])
@pytest.mark.parametrize("start", [0, RING - 5000], ids=["from-0", "across-the-end"])
def test_open_lines_are_the_same_without_numpy(options, et, start):
    et = as_cached(et)
    payloads = [(et, p) for p in open_payloads(et, OPEN_ROWS)]
    lines_np, lines_rows, ev_np, ev_rows = both_ways(open_codec(**options), payloads, (et,),
                                                     start)
    assert ev_rows == ev_np and len(ev_np) == len(OPEN_ROWS)
    assert lines_rows == lines_np
    assert [json.loads(x) for x in lines_np.splitlines()] == ev_np
    assert any("path_b64" in e for e in ev_np) and any(e["path"] is None for e in ev_np)
    if options:
        assert any(e["full_path_truncated"] for e in ev_np)
        assert any(e["full_path_deleted"] for e in ev_np)


def test_every_kind_that_says_so_decodes_without_numpy():
    """The kinds whose codec claims `rows` implement row_bodies(); the
    others keep the default (and the session never asks them)."""
    for name in spec.KINDS:
        codec = spec.load(name).codec
        overrides = codec.row_bodies is not Codec.row_bodies
        assert bool(codec.rows) == overrides, name
    assert ex.ExecCodec.rows and op.OpenCodec.rows


def test_layout_reads_what_numpy_reads():
    """Layout over every member of exec's and open's records, and a
    record whose strings fill their room (no NUL) or hold NULs inside."""
    for et in (xd.event_type(256), od.LONG_FULL):
        payload = bytes(range(256)) * (et.size // 256) + bytes(range(et.size % 256))
        arr = np.frombuffer(payload, dtype=et.dtype)
        (row,) = Layout(as_cached(et)).rows([payload])
        for name in et.dtype.names:
            if name in row:
                assert row[name] == arr[0][name].tolist(), name
        assert {"seq", "ts_ns", "comm", "pid", "ret"} <= set(row)


class Program:
    """The loaded program as Session uses it: everything already in the ring."""

    def __init__(self, n):
        self.n = n

    def counters(self):
        return [self.n, 0, 0, 0]

    def prog_misses(self):
        return 0

    def detach(self):
        pass

    def close(self):
        pass


def run_json(tmp_path, payloads, types, rows_first, name):
    """A whole Session over a ring holding `payloads`; with `rows_first`,
    numpy is "imported" only once the first batch is written, so that the
    first records go the way without numpy.  Returns (lines, summary)."""
    ring, cons = ring_with(payloads, types, start=RING - 3000)
    codec = exec_codec(max_args=64)()
    path = tmp_path / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    ready = threading.Event()
    without_numpy = []

    class Renderer(JsonRenderer):
        def write_lines(self, data):
            super().write_lines(data)
            without_numpy.append(s._rows)
            ready.set()                 # numpy "arrives" after the first batch

    try:
        s = Session(codec, Renderer(Output(fd, name), codec), Program(len(payloads)), cons,
                    duration=0.3)
        if rows_first:
            s._rows = True

            def import_numpy():
                s._numpy_ready = ready
                s._numpy_thread = threading.Thread(target=ready.wait)
                s._numpy_thread.start()
            s._import_numpy = import_numpy
        old = signal.getsignal(signal.SIGINT)
        s.run()
        assert signal.getsignal(signal.SIGINT) == old
    finally:
        os.close(fd)
        ring.close()
    lines = path.read_bytes().splitlines()
    assert any(without_numpy) == rows_first and not all(without_numpy)
    return lines[1:-1], json.loads(lines[-1]), s


def test_a_run_that_starts_without_numpy_writes_and_counts_the_same(tmp_path):
    """The session's switch: the first batch without numpy, the rest with
    it; the same lines and the same summary (per process, per kind, top
    errors: counted from the early records once numpy is there) as a run
    with numpy throughout."""
    small, big = as_cached(xd.event_type(256)), as_cached(xd.event_type(1024))
    payloads = []
    for i, r in enumerate(EXEC_RECORDS * 3):
        et = big if len(r["data"]) > 256 or i % 4 == 3 else small
        r = dict(r, pid=100 + i % 5)
        payloads.append((et, exec_payloads(et, [r], i)[0]))
    lines_np, sum_np, _ = run_json(tmp_path, payloads, (small, big), False, "np.json")
    lines_rows, sum_rows, s = run_json(tmp_path, payloads, (small, big), True, "rows.json")
    assert len(lines_np) == len(payloads)
    assert lines_rows == lines_np
    for k in ("duration_s",):
        sum_np.pop(k), sum_rows.pop(k)
    assert sum_rows == sum_np
    assert sum_np["top_errors"] and sum_np["processes"]
    assert s._early == [] and not s._rows
