"""session.py without the kernel (issue 19, item 11): the loaded probe,
the ring and the followed command are fakes, so each path is driven
exactly: --count's cut and its text, Tally's two paths, missed_by_kernel
reporting, the bounded drain after detach, and signal forwarding while
waiting for CMD."""
import collections
import os
import select
import signal

import numpy as np
import pytest

from rbtrace import cli, session
from rbtrace.errors import Exit
from rbtrace.render import PlainRenderer
from rbtrace.session import Session, Tally

DTYPE = np.dtype([("ret", "<i8"), ("comm", "S16")])


def records(rets, comms=None):
    comms = comms or [b"prog"] * len(rets)
    return np.array(list(zip(rets, comms)), dtype=DTYPE)


class FakeProbe:
    name = "fake"
    tally = (("commands", "comm"), ("errors", "ret"))
    options = {}

    def decode(self, et, recs, offsets, data):
        return [{"ret": int(r)} for r in recs["ret"]]

    def run_config(self):
        return {}


class FakeRenderer:
    wants_bytes = False
    wants_all = True
    tail = 10

    def __init__(self):
        self.events_seen, self.lost_records, self.ticks = [], [], []

    def events(self, events):
        self.events_seen.extend(events)

    def lost(self, record):
        self.lost_records.append(record)

    def tick(self, stats):
        self.ticks.append(stats)


class FakeRing:
    """Hands out queued batches, one per segments() call."""

    data = None
    discarded = 0

    def __init__(self, batches=()):
        self.batches = collections.deque(batches)

    def segments(self):
        if self.batches:
            recs = self.batches.popleft()
            yield "et", recs, np.zeros(len(recs), dtype=np.int64), None

    def pending(self):
        return 0

    def fill(self):
        return 0.0


class FakeLoaded:
    def __init__(self, submitted=0, ringbuf_full=0, map_full=0, not_followed=0, misses=0):
        self.submitted, self.ringbuf_full, self.map_full = submitted, ringbuf_full, map_full
        self.not_followed, self.misses = not_followed, misses
        self.counter_reads = 0

    def counters(self):
        self.counter_reads += 1
        return [self.submitted, self.ringbuf_full, self.map_full, self.not_followed]

    def prog_misses(self):
        return self.misses


def make_session(renderer=None, loaded=None, ring=None, **kw):
    s = Session(FakeProbe(), renderer or FakeRenderer(), loaded or FakeLoaded(),
                ring or FakeRing(), **kw)
    s.started = 0.0
    return s


# --- --count ------------------------------------------------------------------------

def test_count_cuts_the_batch_and_the_summary_says_how_many_more():
    s = make_session(count=5)
    ring = FakeRing([records([-2, 3, -2, 4, 5, 6, -13, 8])])
    s._drain(ring)
    assert s.stop_reason == "count"
    assert [e["ret"] for e in s.renderer.events_seen] == [-2, 3, -2, 4, 5]
    s._drain_after_detach(FakeLoaded(submitted=8), ring)     # not waited for: cut on purpose
    summary = s._summary(FakeLoaded(submitted=8))
    assert summary["delivered"] == 5
    assert summary["not_delivered_count_reached"] == 3
    assert summary["top_errors"] == {"ENOENT": 2}            # the cut EACCES is not counted
    assert summary["stopped_by"] == "count"


def test_count_text_in_the_summary_line(capsys):
    s = make_session(count=2)
    s._drain(FakeRing([records([1, 2, 3, 4])]))
    cli._print_summary(s._summary(FakeLoaded(submitted=4)))
    line = capsys.readouterr().err
    assert line.startswith("rbtrace fake: 2 events delivered, 0 dropped, 2 more not shown "
                           "after --count, "), line


def test_no_count_text_when_nothing_was_cut(capsys):
    s = make_session(count=4)
    s._drain(FakeRing([records([1, 2, 3, 4])]))
    summary = s._summary(FakeLoaded(submitted=4))
    assert summary["not_delivered_count_reached"] == 0
    cli._print_summary(summary)
    assert "--count" not in capsys.readouterr().err


# --- Tally ----------------------------------------------------------------------------

def _reference(batches):
    commands, errors = collections.Counter(), collections.Counter()
    from rbtrace import fields
    for b in batches:
        for r in b:
            commands[r["comm"]] += 1
            if r["ret"] < 0:
                errors[fields.errno_name(int(r["ret"]))] += 1
    return commands, errors


@pytest.mark.parametrize("batches", [
    [records([-2] * 1000)],                                         # fast path only
    [records([-2, -13, 5, -2, 0], [b"a", b"b", b"a", b"c", b"a"])],  # np.unique only
    [records([-2] * 7, [b"sh"] * 7), records([-13, -2, -2, 0]), records([1, 2, 3])],
    [records([], [])],
])
def test_tally_fast_path_and_unique_path_count_alike(monkeypatch, batches):
    calls = []
    real_unique = np.unique

    def unique(col, **kw):
        calls.append(len(col))
        return real_unique(col, **kw)
    monkeypatch.setattr(np, "unique", unique)       # numpy itself: rbtrace imports it lazily
    t = Tally(FakeProbe.tally)
    for b in batches:
        t.add(b)
    commands, errors = _reference(batches)
    assert t.counts["commands"] == commands
    assert t.counts["errors"] == errors
    # The fast path is taken exactly for all-equal columns.
    mixed = sum(len(set(b["comm"].tolist())) > 1 for b in batches) + \
        sum(len(set(b["ret"][b["ret"] < 0].tolist())) > 1 for b in batches)
    assert len(calls) == mixed


def test_tally_fast_path_matches_unique_path_on_the_same_values():
    """The same events counted in all-equal batches (fast path) and in one
    mixed batch (np.unique) give the same counts."""
    fast = Tally(FakeProbe.tally)
    fast.add(records([-2] * 50, [b"cat"] * 50))
    fast.add(records([-13], [b"ls"]))
    slow = Tally(FakeProbe.tally)
    slow.add(records([-2] * 50 + [-13], [b"cat"] * 50 + [b"ls"]))
    assert fast.counts == slow.counts == {"commands": {b"cat": 50, b"ls": 1},
                                          "errors": {"ENOENT": 50, "EACCES": 1}}


# --- missed_by_kernel ------------------------------------------------------------------

def test_missed_by_kernel_is_reported_as_it_grows_and_in_the_summary():
    """The reporting path, step by step, with a fake loaded probe: a lost
    record for each growth, none when nothing changed, the totals in the
    summary.  tests/kernel/test_missed_by_kernel.py provokes real
    recursion_misses."""
    s = make_session()
    loaded = FakeLoaded(submitted=0, misses=0)
    s._report(loaded, FakeRing(), 1.0)
    assert s.renderer.lost_records == []
    loaded.misses = 3
    s._report(loaded, FakeRing(), 2.0)
    loaded.misses = 5
    loaded.ringbuf_full = 2
    s._report(loaded, FakeRing(), 3.0)
    s._report(loaded, FakeRing(), 4.0)              # nothing new: no record
    assert s.renderer.lost_records == [
        {"dropped": 0, "ringbuf_full": 0, "map_full": 0, "missed_by_kernel": 3, "not_followed": 0,
         "total_dropped": 0, "total_missed_by_kernel": 3},
        {"dropped": 2, "ringbuf_full": 2, "map_full": 0, "missed_by_kernel": 2, "not_followed": 0,
         "total_dropped": 2, "total_missed_by_kernel": 5},
    ]
    assert s.renderer.ticks[-1]["missed_by_kernel"] == 5
    summary = s._summary(loaded)
    assert summary["missed_by_kernel"] == 5 and summary["dropped"] == 2
    assert len(s.renderer.lost_records) == 2        # the summary adds no duplicate


def test_missed_by_kernel_in_plain_output(capsys):
    import io
    probe = FakeProbe()
    probe.columns = []
    s = make_session(renderer=PlainRenderer(io.BytesIO(), probe))
    s._report_lost({"ringbuf_full": 0, "map_full": 0, "missed_by_kernel": 4, "not_followed": 0})
    assert capsys.readouterr().err == ("rbtrace: 0 events dropped (ring full 0, map full 0), "
                                       "4 probe runs skipped by the kernel\n")


# --- the drain after detach ---------------------------------------------------------------

def test_drain_after_detach_waits_for_late_records():
    s = make_session()
    ring = FakeRing([records([1, 2]), records([]), records([3])])
    s._drain_after_detach(FakeLoaded(submitted=3), ring)
    assert s.delivered == 3


def test_drain_after_detach_gives_up_after_its_bound(monkeypatch):
    """A record counted as submitted that never arrives: the drain stops
    after 200 tries of 1 ms, and the summary shows it undelivered."""
    sleeps = []
    monkeypatch.setattr(session.time, "sleep", sleeps.append)
    s = make_session()
    loaded = FakeLoaded(submitted=3)
    s._drain_after_detach(loaded, FakeRing([records([1, 2])]))
    assert s.delivered == 2
    assert sleeps == [0.001] * 200
    assert loaded.counter_reads == 200
    summary = s._summary(loaded)
    assert summary["submitted"] - summary["delivered"] == 1


# --- signals while waiting for CMD ----------------------------------------------------------

class FakeCommand:
    waits_for_end = True

    def __init__(self):
        self.forwarded, self._exited = [], False

    def forward(self, signum, from_kernel):
        if self._exited:
            return False
        self.forwarded.append((signum, from_kernel))
        return True

    def exited(self):
        return self._exited

    def reap(self):
        self._exited = True


class FakeSigFd:
    fd = 101

    def __init__(self, batches):
        self.batches = collections.deque(batches)

    def read(self):
        return self.batches.popleft() if self.batches else []


class FakePoller:
    def __init__(self, script):
        self.script = collections.deque(script)

    def poll(self, timeout):
        return self.script.popleft() if self.script else []


def test_wait_for_command_forwards_each_signal_then_ends_when_cmd_exits():
    s = make_session(follow=FakeCommand())
    s._sigfd = FakeSigFd([[(signal.SIGHUP, False)], [(signal.SIGINT, True), (signal.SIGTERM, False)]])
    s._pidfd = 102
    s._wait_for_command(FakePoller([[(101, select.EPOLLIN)], [], [(101, select.EPOLLIN)],
                                    [(102, select.EPOLLIN)]]))
    assert s.follow.forwarded == [(signal.SIGHUP, False), (signal.SIGINT, True),
                                  (signal.SIGTERM, False)]
    assert s.follow.exited()
    assert s.stop_reason is None        # CMD's to decide: they did not stop rbtrace


def test_a_signal_after_cmd_exited_is_rbtraces():
    s = make_session(follow=FakeCommand())
    s.follow.reap()
    s._sigfd = FakeSigFd([[(signal.SIGQUIT, False)]])
    s._on_command_signals()
    assert s.stop_reason == signal.SIGQUIT


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, Exit.INTERRUPTED),
                                       (signal.SIGTERM, Exit.TERMINATED),
                                       (signal.SIGHUP, Exit.HANGUP), (signal.SIGQUIT, Exit.QUIT),
                                       (signal.SIGALRM, Exit.ALARM)])
def test_every_stop_signal_has_its_exit_code(sig, code):
    assert sig in session.STOP_SIGNALS
    assert code == 128 + sig


def test_sighup_ignored_at_start_is_left_out(monkeypatch):
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert signal.SIGHUP not in session.stop_signals()
    finally:
        signal.signal(signal.SIGHUP, old)
    assert signal.SIGHUP in session.stop_signals()


# --- a stop signal before CMD is released ---------------------------------------------------

class RunRenderer(FakeRenderer):
    def start(self, info):
        pass

    def input_fds(self):
        return []

    def output_fd(self):
        return None

    def close(self, summary):
        self.summary = summary


def test_a_stop_signal_before_cmd_is_released_goes_to_cmd_which_stays_traced(tmp_path):
    """SIGHUP arrives while the session is being set up (here: while the
    followed pid is put in the map), before CMD is released.  It must not
    end the run with CMD then let go untraced: CMD gets it, and the probes
    stay attached until CMD has exited."""
    from rbtrace import follow
    log = []
    ring_r, ring_w = os.pipe()

    class Loaded:
        def follow(self, pids):
            os.kill(os.getpid(), signal.SIGHUP)           # the signal, mid set-up
            log.append("seeded")

        def counters(self):
            return [0, 0, 0, 0]

        def prog_misses(self):
            return 0

        def followed_count(self):
            return 0

        def followed_pids(self):
            return set()

        def detach(self):
            log.append(("detach", "cmd exited" if cmd.exited() else "cmd running"))

        def close(self):
            pass

    class Ring(FakeRing):
        fd = ring_r
        size = 1 << 20

        def close(self):
            pass

    got = tmp_path / "got"
    cmd = follow.Command(["/bin/sh", "-c", f"trap 'echo HUP >{got}; exit 5' HUP; "
                                           f"i=0; while [ $i -lt 100 ]; do sleep 0.05; "
                                           f"i=$((i+1)); done; exit 9"])
    old = signal.getsignal(signal.SIGHUP)
    try:
        cmd.start()
        s = Session(FakeProbe(), RunRenderer(), Loaded(), Ring(), follow=cmd)
        code = s.run()
    finally:
        cmd.abandon()
        cmd.close()
        os.close(ring_r)
        os.close(ring_w)
        signal.signal(signal.SIGHUP, old)
    assert log == ["seeded", ("detach", "cmd exited")], "CMD ran with the probes detached"
    # CMD got the SIGHUP: in its trap (5), or before sh had set the trap (129).
    assert code in (5, 129) and s.summary["command"]["status"] == code
    assert got.exists() == (code == 5)
    assert s.summary["stopped_by"] == "command exited"


# --- a long drain still stops on time ------------------------------------------------

class ConsumingRing(FakeRing):
    """Like the real ring: a segment is consumed only once the caller asks
    for the next one, so breaking out leaves it in the ring."""

    def segments(self):
        while self.batches:
            recs = self.batches[0]
            yield "et", recs, np.zeros(len(recs), dtype=np.int64), None
            self.batches.popleft()


class StoppingRenderer(FakeRenderer):
    """A stop signal lands while the first batch is written."""

    def __init__(self, session_ref):
        super().__init__()
        self.session_ref = session_ref

    def events(self, events):
        super().events(events)
        self.session_ref[0].stop_reason = signal.SIGINT


def test_a_stop_signal_ends_a_long_drain_and_the_rest_is_delivered_after_detach():
    """Under overload one drain could hold 80,000 records and take minutes:
    a signal (or --duration) must not wait for all of it.  What is left is
    delivered by the final drain, in order."""
    ref = [None]
    s = ref[0] = make_session(renderer=StoppingRenderer(ref))
    ring = ConsumingRing([records([1, 2]), records([3]), records([4, 5])])
    s._drain(ring, deadline=float("inf"))
    assert [e["ret"] for e in s.renderer.events_seen] == [1, 2]
    assert len(ring.batches) == 2                     # left in the ring, not lost
    s._drain_after_detach(FakeLoaded(submitted=5), ring)
    assert [e["ret"] for e in s.renderer.events_seen] == [1, 2, 3, 4, 5]
    assert s.delivered == 5 and not ring.batches


def test_a_duration_that_passes_during_a_drain_ends_it(monkeypatch):
    clock = iter([5.0, 11.0, 12.0])
    monkeypatch.setattr(session.time, "monotonic", lambda: next(clock))
    s = make_session()
    ring = ConsumingRing([records([1]), records([2]), records([3])])
    s._drain(ring, deadline=10.0)
    assert [e["ret"] for e in s.renderer.events_seen] == [1]
    assert s.delivered == 1 and len(ring.batches) == 2
