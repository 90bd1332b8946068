"""RingConsumer over a ring laid out as the kernel lays one out (no root):
see kernel_like_ring.py."""
import struct

import numpy as np
import pytest

from kernel_like_ring import DATA, PAGE, SIZE, KernelLikeRing, double_mapped
from rbtrace.ringbuf import DISCARD, EventType

A = EventType("a", np.dtype([("seq", "<u8"), ("x", "<u4"), ("pad", "<u4")]))     # 16 bytes
B = EventType("b", np.dtype([("seq", "<u8"), ("name", "S40")]))                  # 48 bytes


def rec_a(seq, x=1):
    return struct.pack("<QII", seq, x, 0)


def rec_b(seq, name=b"n"):
    return struct.pack("<Q40s", seq, name)


def drain(c):
    return [(et.name, int(s)) for et, recs, _, _ in c.segments() for s in recs["seq"]]


@pytest.fixture
def ring():
    r = KernelLikeRing()
    yield r
    r.close()


def test_the_fake_maps_the_data_twice_like_the_kernel(ring):
    area = double_mapped(ring.fd, SIZE)
    ring.map[DATA + 5] = 0xAB
    assert area[PAGE + 5] == area[PAGE + SIZE + 5] == 0xAB
    area.close()


def test_a_record_written_once_across_the_end_is_read_whole(ring):
    c = ring.consumer([A, B])
    ring.start_at(SIZE - 16)                  # B's 56 bytes: 16 before the end, 40 after
    ring.add(rec_b(7, b"across-the-end"))
    ring.add(rec_a(8, x=99))
    got = []
    for et, recs, offs, data in c.segments():
        for r, off in zip(recs, offs):
            got.append((et.name, int(r["seq"]), bytes(r["name"]) if et.name == "b" else int(r["x"])))
            assert struct.unpack_from("<Q", data, int(off))[0] == r["seq"]
    assert got == [("b", 7, b"across-the-end"), ("a", 8, 99)]
    assert ring.consumer_pos == SIZE - 16 + 56 + 24
    c.close()


def test_two_event_types_of_one_size_are_refused(ring):
    """Records are told apart by size only: two types of one size would be
    decoded as each other, so the consumer refuses them outright (rbtrace
    run refuses such a probe earlier, with the struct names)."""
    twin = EventType("twin", np.dtype([("seq", "<u8"), ("y", "<i8")]))    # 16, as A
    with pytest.raises(ValueError, match="event types twin and a have the same size 16"):
        ring.consumer([A, twin])


def test_pending_and_fill_follow_reserve_commit_and_consume(ring):
    c = ring.consumer([A, B])
    assert (c.pending(), c.fill()) == (0, 0.0)
    ring.add(rec_a(0))                                  # 8 + 16 = 24 bytes
    busy = ring.reserve(B.size)                         # 8 + 48 = 56, still BUSY
    assert c.pending() == 24 + 56
    assert c.fill() == (24 + 56) / SIZE
    assert drain(c) == [("a", 0)]
    assert c.pending() == 56                            # the busy one waits
    ring.commit(busy, rec_b(1))
    assert drain(c) == [("b", 1)]
    assert (c.pending(), c.fill()) == (0, 0.0)
    c.close()


def test_fill_is_one_when_the_ring_is_full(ring):
    c = ring.consumer([A])
    n = SIZE // 24 + 1
    for i in range(n):
        ring.add(rec_a(i))
    # 24-byte records don't divide the ring: it is full a record short of
    # `n`, which a producer would have been refused; the fill stays <= 1.
    assert c.pending() == 24 * n > SIZE
    assert c.fill() == 1.0
    c.close()


def test_discarded_records_are_skipped_counted_and_consumed(ring):
    c = ring.consumer([A, B])
    ring.add(rec_a(0))
    ring.add(rec_b(1), flags=DISCARD)
    ring.add(rec_a(2), flags=DISCARD)
    ring.add(rec_a(3))
    assert drain(c) == [("a", 0), ("a", 3)]
    assert c.discarded == 2
    assert ring.consumer_pos == ring.prod
    c.close()


def test_a_discarded_record_behind_a_busy_one_waits(ring):
    c = ring.consumer([A])
    busy = ring.reserve(A.size)
    ring.add(rec_a(1), flags=DISCARD)
    assert drain(c) == [] and c.discarded == 0
    ring.commit(busy, rec_a(0))
    assert drain(c) == [("a", 0)] and c.discarded == 1
    c.close()


def test_segments_are_cut_to_max_records_and_each_record_comes_once(ring):
    """A run of one type longer than max_records comes in several segments
    (the session checks its clock between them), in order, none twice."""
    c = ring.consumer([A, B])
    for seq in range(10):
        ring.add(rec_a(seq))
    ring.add(rec_b(10))
    sizes = [(et.name, [int(s) for s in recs["seq"]]) for et, recs, _, _ in c.segments(max_records=4)]
    assert sizes == [("a", [0, 1, 2, 3]), ("a", [4, 5, 6, 7]), ("a", [8, 9]), ("b", [10])]
    assert ring.consumer_pos == 10 * 24 + 56
    assert list(c.segments()) == []
    c.close()
