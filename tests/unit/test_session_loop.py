"""Session.run end to end without root (issue 15, item 3).

The loaded program is a fake whose counters the test drives; the ring is
the real RingConsumer over a memfd laid out as the kernel lays out a BPF
ring buffer (kernel_like_ring.py); the renderer is the real JsonRenderer,
writing to a file that is read back.  What is checked is the loop's own
work: every committed record delivered once and in order, the stop
reasons (--count, --duration, a stop signal), the drain after detach
(records already in the ring, and one a program still running at detach
commits later), and the accounting of drops and discarded records.
"""
import json
import os
import signal
import struct
import threading
import time

import numpy as np
import pytest

from kernel_like_ring import KernelLikeRing
from rbtrace.errors import Exit
from rbtrace.render import JsonRenderer, Output
from rbtrace.ringbuf import DISCARD, EventType
from rbtrace.session import Session

A = EventType("a", np.dtype([("seq", "<u8"), ("x", "<u4"), ("pad", "<u4")]))     # 16 bytes
B = EventType("b", np.dtype([("seq", "<u8"), ("name", "S40")]))                  # 48 bytes


def payload(et, seq):
    if et is A:
        return struct.pack("<QII", seq, 7, 0)
    return struct.pack("<Q40s", seq, b"name-%d" % seq)


class Probe:
    """What Session asks of a probe: decode() copies out each record.  It
    counts the records read from a copy: those across the ring's end."""
    name = "fake"
    tally = ()
    options = {"filters_text": "fake=1"}

    def __init__(self):
        self.ring = None
        self.across_the_end = 0

    def decode(self, et, records, offsets, data):
        if data is not self.ring.data:
            self.across_the_end += len(records)
            assert struct.unpack_from("<Q", data, int(offsets[0]))[0] == records["seq"][0]
        return [{"type": et.name, "seq": int(s)} for s in records["seq"]]


class Program:
    """The loaded program (what Session uses of bpf.LoadedProbe), with the
    kernel's side played by the test: run() is one run of a BPF program
    that reserves, fills and submits a record, counting as submit_event()
    in probes/common.h does (the record committed, then counted)."""

    def __init__(self, ring):
        self.ring = ring
        self.submitted = self.ringbuf_full = self.map_full = self.not_followed = 0
        self.misses = 0
        self.seq = 0                 # the next record's seq (probes number them)
        self.attached = True
        self.closed = False
        self.on_detach = None
        self.lock = threading.Lock()

    def run(self, et=A, wait=False, flags=0):
        """One program run.  A full ring refuses the reservation (counted
        ringbuf_full), unless `wait`: then wait for room, as a test
        producer that must lose nothing.  Returns whether it submitted."""
        with self.lock:
            assert self.attached, "a detached program does not run"
            while not self.ring.room(et.size):
                if not wait:
                    self.ringbuf_full += 1
                    self.seq += 1
                    return False
                self.lock.release()
                time.sleep(0.0002)
                self.lock.acquire()
                if not self.attached:
                    return False
            seq, self.seq = self.seq, self.seq + 1
            self.ring.add(payload(et, seq), flags=flags)
            if not flags & DISCARD:
                self.submitted += 1
            return True

    def counters(self):
        return [self.submitted, self.ringbuf_full, self.map_full, self.not_followed]

    def prog_misses(self):
        return self.misses

    def detach(self):
        with self.lock:
            self.attached = False
        if self.on_detach is not None:
            self.on_detach()

    def close(self):
        self.closed = True

    def follow(self, pids):
        raise AssertionError("nothing is followed here")

    def followed_pids(self):
        raise AssertionError("nothing is followed here")


class Recording(JsonRenderer):
    """The JSON renderer, noting whether the program was still attached
    when each batch of events was written."""

    def __init__(self, out, probe, program, on_events=None):
        super().__init__(out, probe)
        self.program = program
        self.batches = []
        self.on_events = on_events

    def events(self, events):
        self.batches.append((self.program.attached, [e["seq"] for e in events]))
        super().events(events)
        if self.on_events is not None:
            self.on_events(self)


@pytest.fixture
def kring():
    r = KernelLikeRing(size=16 * 4096)
    yield r
    r.close()


@pytest.fixture
def out_file(tmp_path):
    fd = os.open(tmp_path / "out.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    yield fd, tmp_path / "out.json"
    os.close(fd)


def run_session(kring, out_file, program, types=(A, B), on_events=None, **kw):
    """Run a Session over the fake program and the real consumer; return
    (exit code, session, renderer, the JSON lines by type)."""
    fd, path = out_file
    ring = kring.consumer(list(types))
    probe = Probe()
    probe.ring = ring
    renderer = Recording(Output(fd, "out.json"), probe, program, on_events)
    session = Session(probe, renderer, program, ring, **kw)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    code = session.run()
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "handlers not restored"
    assert program.closed and not program.attached
    with pytest.raises(ValueError):          # released: Session.run closed the ring
        ring.data.nbytes
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_type = {}
    for obj in lines:
        by_type.setdefault(obj["type"], []).append(obj)
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "summary"
    assert lines[0]["ring_bytes"] == kring.size and lines[0]["probe"] == "fake"
    return code, session, renderer, by_type


def events_in_file_order(path):
    """The seq of every event line, in the order they were written."""
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    return [o["seq"] for o in objs if o["type"] in ("a", "b")]


# --- delivery and accounting -------------------------------------------------------

def test_every_record_is_delivered_once_in_order_and_accounted(kring, out_file):
    """A producer writes 5000 records of two sizes through a 64 KiB ring
    (it wraps about 50 times, some records across its end) while the loop
    drains it; none may be lost, doubled or reordered, and the summary's
    counts agree with what was written."""
    program = Program(kring)
    n = 5000

    def produce():
        for i in range(n):
            if not program.run(B if i % 7 in (3, 4) else A, wait=True):
                return

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        code, s, r, lines = run_session(kring, out_file, program, duration=2.0)
    finally:
        producer.join()
    got = events_in_file_order(out_file[1])
    assert got == list(range(program.submitted))
    assert program.submitted == n, "the producer was cut short by the 2 s duration"
    summary = lines["summary"][0]
    assert summary["submitted"] == summary["delivered"] == s.delivered == n
    assert summary["seen"] == n and summary["dropped"] == 0 and summary["discarded"] == 0
    assert "lost" not in lines
    assert summary["stopped_by"] == "duration" and code == Exit.OK
    # The loop drained while the producer ran, in many batches.
    assert len(r.batches) > 1 and any(attached for attached, _ in r.batches)
    assert s.probe.across_the_end > 0


def test_count_cuts_exactly_and_says_how_many_were_not_shown(kring, out_file):
    program = Program(kring)
    for i in range(100):
        program.run(A if i < 60 else B)
    code, s, _, lines = run_session(kring, out_file, program, count=70)
    assert events_in_file_order(out_file[1]) == list(range(70))
    summary = lines["summary"][0]
    assert summary["stopped_by"] == "count" and code == Exit.OK
    assert summary["delivered"] == 70 and summary["submitted"] == 100
    assert summary["not_delivered_count_reached"] == 30


def test_duration_stops_the_run_on_time(kring, out_file):
    """A slow producer that never ends: --duration ends the run, and what
    was submitted before the detach is all delivered."""
    program = Program(kring)
    stop = threading.Event()

    def produce():
        while not stop.is_set() and program.attached:
            program.run(A, wait=True)
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    started = time.monotonic()
    try:
        code, s, _, lines = run_session(kring, out_file, program, duration=0.3)
    finally:
        stop.set()
        producer.join()
    took = time.monotonic() - started
    summary = lines["summary"][0]
    assert summary["stopped_by"] == "duration" and code == Exit.OK
    assert 0.3 <= summary["duration_s"] and took < 2.0
    assert program.submitted > 5
    assert events_in_file_order(out_file[1]) == list(range(program.submitted))
    assert summary["delivered"] == summary["submitted"] == program.submitted


# --- a stop signal, and the drain after detach --------------------------------------

def test_a_stop_signal_delivers_what_the_ring_holds_after_detach(kring, out_file):
    """SIGTERM arrives while the first batch is written: the loop stops
    (exit 128 + 15), the program is detached, then the records still in
    the ring are delivered, in order, none lost."""
    program = Program(kring)
    for i in range(30):
        program.run(A if (i // 10) % 2 == 0 else B)     # three runs: three segments
    sent = []

    def on_events(renderer):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    code, s, r, lines = run_session(kring, out_file, program, on_events=on_events)
    assert code == 128 + signal.SIGTERM == Exit.TERMINATED
    summary = lines["summary"][0]
    assert summary["stopped_by"] == "SIGTERM"
    assert events_in_file_order(out_file[1]) == list(range(30))
    assert summary["delivered"] == summary["submitted"] == 30
    assert r.batches[0] == (True, list(range(10)))
    # Only the first segment before the stop; the rest once detached.
    assert [attached for attached, _ in r.batches[1:]] == [False, False]


def test_a_record_committed_after_detach_is_waited_for(kring, out_file):
    """A program still running on another CPU at detach has reserved its
    record and commits it a moment later: the bounded drain after detach
    waits for it rather than lose it."""
    program = Program(kring)
    for _ in range(10):
        program.run(A)
    late = []

    def in_flight():
        pos = kring.reserve(A.size)                      # BUSY until committed

        def commit():
            kring.commit(pos, payload(A, 10))
            program.submitted += 1                       # then counted
            late.append(time.monotonic())
        timer = threading.Timer(0.05, commit)
        timer.start()
        late.append(timer)

    program.on_detach = in_flight
    code, s, _, lines = run_session(kring, out_file, program, duration=0.1)
    late[0].join()
    assert events_in_file_order(out_file[1]) == list(range(11))
    summary = lines["summary"][0]
    assert summary["delivered"] == summary["submitted"] == 11
    assert summary["stopped_by"] == "duration"


# --- drops and discarded records ------------------------------------------------------

def test_drops_are_reported_in_lost_records_and_the_summary(kring, out_file):
    """A producer faster than the ring: refused reservations are counted
    (ringbuf_full) by the program, with map_full, not_followed and the
    kernel's skipped runs driven by the test; each lost record carries what
    changed since the last one, and their sum is the summary's."""
    program = Program(kring)
    capacity = kring.size // 24                    # 24 bytes per A record
    for _ in range(capacity + 500):                # 500 refused: the ring is full
        program.run(A)
    assert program.ringbuf_full == 500
    program.map_full, program.misses, program.not_followed = 3, 2, 4

    def later():
        time.sleep(0.25)
        program.map_full += 5
        program.misses += 1
        for _ in range(10):
            program.run(A, wait=True)

    more = threading.Thread(target=later)
    more.start()
    try:
        code, s, _, lines = run_session(kring, out_file, program, duration=0.6)
    finally:
        more.join()
    summary = lines["summary"][0]
    assert summary["ringbuf_full"] == 500 and summary["map_full"] == 8
    assert summary["dropped"] == 508 and summary["missed_by_kernel"] == 3
    assert summary["not_followed"] == 4
    assert summary["submitted"] == summary["delivered"] == capacity + 10
    assert summary["seen"] == capacity + 10 + 508
    # The first `capacity` seqs, then the 10 written after the gap of 500.
    want = list(range(capacity)) + list(range(capacity + 500, capacity + 510))
    assert events_in_file_order(out_file[1]) == want
    lost = lines["lost"]
    assert len(lost) >= 2, lost                    # the first drops, then the later ones
    for kind, total in (("ringbuf_full", 500), ("map_full", 8), ("missed_by_kernel", 3),
                        ("not_followed", 4)):
        assert sum(rec[kind] for rec in lost) == total, kind
    assert all(rec["dropped"] == rec["ringbuf_full"] + rec["map_full"] for rec in lost)
    assert lost[-1]["total_dropped"] == 508 and lost[-1]["total_missed_by_kernel"] == 3
    assert all(any(rec[k] for k in ("dropped", "missed_by_kernel", "not_followed"))
               for rec in lost), "a lost record with nothing lost"


def test_discarded_records_are_skipped_and_counted(kring, out_file):
    """A `rbtrace run` probe may discard a reserved record: not delivered,
    not counted as submitted, but counted in the summary."""
    program = Program(kring)
    discarded = {3, 4, 9, 15}
    for i in range(20):
        program.run(B if i % 2 else A, flags=DISCARD if i in discarded else 0)
    code, s, _, lines = run_session(kring, out_file, program, duration=0.1)
    assert events_in_file_order(out_file[1]) == [i for i in range(20) if i not in discarded]
    summary = lines["summary"][0]
    assert summary["discarded"] == 4
    assert summary["submitted"] == summary["delivered"] == 16
    assert summary["dropped"] == 0 and code == Exit.OK


def test_the_fake_ring_wakes_the_loop_as_the_kernel_does(kring):
    """The ring's fd (here an eventfd) is readable after a commit, and no
    longer once the consumer has looked."""
    import select
    c = kring.consumer([A])
    poller = select.epoll()
    poller.register(c.fd, select.EPOLLIN)
    assert poller.poll(0) == []
    kring.add(payload(A, 0))
    assert poller.poll(0) == [(c.fd, select.EPOLLIN)]
    assert [int(s) for _, recs, _, _ in c.segments() for s in recs["seq"]] == [0]
    assert poller.poll(0) == []
    poller.close()
    c.close()


def test_the_table_keeps_copies_of_the_records_it_is_handed(kring):
    """The live table is handed ring segments (TableRenderer.keep), which
    view the ring: what it keeps must be copies, good after the ring has
    been written over many times and unmapped at the end (a one-record
    segment included: numpy calls it contiguous and would not copy it)."""
    import io
    from rich.console import Console
    from rbtrace.render import TableRenderer
    from rbtrace.spec import Column

    program = Program(kring)
    n = 5000

    def produce():
        for i in range(n):
            if not program.run(B if i % 7 in (3, 4) else A, wait=True):
                return

    class TableProbe(Probe):
        table_tally = ()
        columns = (Column("SEQ", lambda e: str(e["seq"]), width=8, whole=True),)

    probe = TableProbe()
    ring = kring.consumer([A, B])
    probe.ring = ring
    console = Console(file=io.StringIO(), width=80, height=24, color_system=None,
                      force_terminal=False)
    table = TableRenderer(console, probe, "")
    producer = threading.Thread(target=produce)
    producer.start()
    try:
        Session(probe, table, program, ring, duration=2.0).run()
    finally:
        program.detach()                # a producer waiting for room gives up
        producer.join()
    assert program.submitted == n
    view = table.hist.view()
    assert len(view) == n <= table.history
    got = view.events(view.lo, view.hi)
    assert [e["seq"] for e in got] == list(range(n))
    assert [e["type"] for e in got] == ["b" if i % 7 in (3, 4) else "a" for i in range(n)]
    assert probe.across_the_end > 0


def test_an_input_at_its_end_is_polled_no_more(kring, out_file, monkeypatch):
    """A renderer's input that has reached its end (CMD's terminal once
    every process holding it has exited: readable for ever) answers "eof"
    and is taken out of the poll; left in, it would spin the loop."""
    r, w = os.pipe()
    os.write(w, b"some output")
    os.close(w)
    calls = []

    def input_fds(self):
        return [r]

    def on_input(self, fd):
        data = os.read(fd, 4096)
        calls.append(data)
        return None if data else "eof"

    monkeypatch.setattr(Recording, "input_fds", input_fds, raising=False)
    monkeypatch.setattr(Recording, "on_input", on_input, raising=False)
    try:
        code, s, _, lines = run_session(kring, out_file, Program(kring), duration=0.5)
    finally:
        os.close(r)
    assert calls == [b"some output", b""]
    assert code == Exit.OK and lines["summary"][0]["stopped_by"] == "duration"
