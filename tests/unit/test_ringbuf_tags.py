"""Records of several kinds in one ring (rbtrace trace): RingConsumer
tells them apart by (rb_kind, size), over a ring laid out as the kernel
lays one out (no root).  The tag is read from the record, never assumed."""
import struct

import numpy as np
import pytest

from kernel_like_ring import SIZE, KernelLikeRing
from rbtrace.ringbuf import EventType


def dtype(*extra):
    return np.dtype([("seq", "<u8"), ("rb_kind", "<u4"), ("rb_pad", "<u4"), *extra])


# Two kinds with a struct of one size (24 bytes), and one of another.
EXEC = EventType("exec_event", dtype(("ret", "<i8")), tag=1)
OPEN = EventType("open_event", dtype(("fd", "<i8")), tag=2)
OPEN_LONG = EventType("open_long", dtype(("fd", "<i8"), ("path", "S32")), tag=2)


def rec(seq, tag, value, path=None):
    out = struct.pack("<QIIq", seq, tag, 0, value)
    return out + path.ljust(32, b"\0") if path is not None else out


@pytest.fixture
def ring():
    r = KernelLikeRing()
    yield r
    r.close()


def segments(c):
    return [(et.name, [int(s) for s in recs["seq"]]) for et, recs, _, _ in c.segments()]


def test_records_of_one_size_go_to_their_kind_in_ring_order(ring):
    c = ring.consumer([EXEC, OPEN, OPEN_LONG])
    for seq, tag in [(0, 1), (1, 2), (2, 2), (3, 1), (4, 1), (5, 2)]:
        ring.add(rec(seq, tag, seq * 10))
    ring.add(rec(6, 2, 3, b"/etc/passwd"))
    ring.add(rec(7, 2, 4))
    assert segments(c) == [("exec_event", [0]), ("open_event", [1, 2]),
                           ("exec_event", [3, 4]), ("open_event", [5]),
                           ("open_long", [6]), ("open_event", [7])]
    c.close()


def test_values_are_read_from_each_kinds_own_struct(ring):
    c = ring.consumer([EXEC, OPEN])
    ring.add(rec(0, 2, -2))
    ring.add(rec(1, 1, 0))
    got = [(et.name, int(r["seq"]), int(r["fd" if et is OPEN else "ret"]))
           for et, recs, _, _ in c.segments() for r in recs]
    assert got == [("open_event", 0, -2), ("exec_event", 1, 0)]
    c.close()


def test_a_record_across_the_end_keeps_its_kind(ring):
    c = ring.consumer([EXEC, OPEN])
    ring.start_at(SIZE - 16)                    # 8 + 24 = 32 bytes: half past the end
    ring.add(rec(0, 2, 7))
    ring.add(rec(1, 1, 8))
    assert segments(c) == [("open_event", [0]), ("exec_event", [1])]
    c.close()


def test_an_unknown_tag_is_an_error_not_a_guess(ring):
    c = ring.consumer([EXEC, OPEN])
    ring.add(rec(0, 3, 0))
    with pytest.raises(RuntimeError, match="unknown size 24 and kind tag 3"):
        segments(c)
    c.close()


def test_one_kind_may_not_have_two_structs_of_one_size(ring):
    twin = EventType("twin", dtype(("y", "<i8")), tag=1)
    with pytest.raises(ValueError, match="twin and exec_event have the same size 24 and kind tag 1"):
        ring.consumer([EXEC, OPEN, twin])


def test_tagged_and_untagged_types_do_not_mix(ring):
    plain = EventType("plain", np.dtype([("seq", "<u8"), ("z", "S40")]))
    with pytest.raises(ValueError, match="with and without a kind tag"):
        ring.consumer([EXEC, plain])


def test_one_kind_in_the_ring_is_told_apart_by_size_alone(ring):
    """A one-kind run does not read the tag: a record of a user's probe
    (rbtrace run) reserved without rbtrace's header filled in still
    decodes, as before there were tags."""
    c = ring.consumer([OPEN, OPEN_LONG])
    ring.add(rec(0, 0xDEAD, 3))                  # rb_kind never written
    ring.add(rec(1, 2, 4, b"/etc"))
    assert segments(c) == [("open_event", [0]), ("open_long", [1])]
    c.close()
