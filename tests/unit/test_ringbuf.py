"""RingConsumer against a ring laid out by hand in a memfd (no root).

The kernel maps the data area twice in a row; here the test writes every
record into both copies, which is what the consumer sees from a real ring.
"""
import mmap
import os
import struct

import numpy as np
import pytest

from rbtrace.ringbuf import BUSY, DISCARD, EventType, RingConsumer

PAGE = mmap.PAGESIZE
SIZE = 4 * PAGE

SMALL = EventType("small", np.dtype([("seq", "<u8"), ("pid", "<u4"), ("comm", "S4")]))  # 16
BIG = EventType("big", np.dtype([("seq", "<u8"), ("blob", "S40")]))                     # 48


class FakeRing:
    def __init__(self):
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * SIZE)
        self.map = mmap.mmap(self.fd, 2 * PAGE + 2 * SIZE)
        self.prod = 0

    def _put(self, pos, data):
        # Byte k of the ring lives at k and k + SIZE (the same page twice).
        for k, byte in enumerate(data):
            at = (pos + k) & (SIZE - 1)
            self.map[2 * PAGE + at] = byte
            self.map[2 * PAGE + SIZE + at] = byte

    def add(self, payload: bytes, flags=0):
        pos = self.prod
        self._put(pos, struct.pack("<II", len(payload) | flags, 0) + payload)
        self.prod += (len(payload) + 8 + 7) & ~7
        struct.pack_into("<Q", self.map, PAGE, self.prod)
        return pos

    def set_flags(self, pos, length, flags):
        self._put(pos, struct.pack("<I", length | flags))

    def start_at(self, pos):
        self.prod = pos
        struct.pack_into("<Q", self.map, 0, pos)
        struct.pack_into("<Q", self.map, PAGE, pos)

    @property
    def consumer_pos(self):
        return struct.unpack_from("<Q", self.map, 0)[0]


def small(seq, pid=7, comm=b"sh"):
    return struct.pack("<QI4s", seq, pid, comm)


def big(seq, blob=b"x"):
    return struct.pack("<Q40s", seq, blob)


def drain(consumer):
    out = []
    for et, recs, offs, data in consumer.segments():
        out.extend((et.name, int(s)) for s in recs["seq"])
    return out


@pytest.fixture
def ring():
    r = FakeRing()
    yield r
    r.map.close()
    os.close(r.fd)


def test_mixed_types_come_in_order_and_consumer_pos_advances(ring):
    c = RingConsumer(ring.fd, SIZE, [SMALL, BIG])
    ring.add(small(0)); ring.add(small(1)); ring.add(big(2)); ring.add(small(3))
    assert drain(c) == [("small", 0), ("small", 1), ("big", 2), ("small", 3)]
    assert ring.consumer_pos == ring.prod
    assert drain(c) == []
    c.close()


def test_busy_record_stops_the_batch_until_committed(ring):
    c = RingConsumer(ring.fd, SIZE, [SMALL, BIG])
    ring.add(small(0))
    busy_at = ring.add(small(1), flags=BUSY)
    ring.add(small(2))
    assert drain(c) == [("small", 0)]
    assert ring.consumer_pos == busy_at
    ring.set_flags(busy_at, SMALL.size, 0)
    assert drain(c) == [("small", 1), ("small", 2)]
    c.close()


def test_discarded_records_are_skipped_and_counted(ring):
    c = RingConsumer(ring.fd, SIZE, [SMALL, BIG])
    ring.add(small(0)); ring.add(big(1), flags=DISCARD); ring.add(small(2))
    assert drain(c) == [("small", 0), ("small", 2)]
    assert c.discarded == 1
    c.close()


def test_records_wrapping_the_end_are_read_whole(ring):
    c = RingConsumer(ring.fd, SIZE, [SMALL, BIG])
    ring.start_at(SIZE - 24)                      # a 56-byte BIG record wraps
    ring.add(big(5, b"wrapped-blob"))
    ring.add(small(6, comm=b"ab"))
    got = []
    for et, recs, offs, data in c.segments():
        for rec, off in zip(recs, offs):
            text = rec["blob"] if et.name == "big" else rec["comm"]
            got.append((et.name, int(rec["seq"]), bytes(text)))
            # data offsets address the payload in `data`: the ring, or for
            # the record that crosses the end, a copy of that record alone
            assert struct.unpack_from("<Q", data, int(off))[0] == rec["seq"]
            assert (len(data) == 56) == (et.name == "big")
    assert got == [("big", 5, b"wrapped-blob"), ("small", 6, b"ab")]
    c.close()


def test_long_batch_is_one_segment(ring):
    c = RingConsumer(ring.fd, SIZE, [SMALL])
    for i in range(500):
        ring.add(small(i, pid=i))
    segs = list((et.name, len(recs), recs["pid"].tolist()) for et, recs, _, _ in c.segments())
    assert len(segs) == 1 and segs[0][1] == 500
    assert segs[0][2] == list(range(500))
    c.close()


def test_unknown_record_size_is_an_error(ring):
    c = RingConsumer(ring.fd, SIZE, [SMALL])
    ring.add(b"\0" * 24)
    with pytest.raises(RuntimeError, match="unknown size 24"):
        drain(c)
    c.close()


def test_ring_size_must_be_a_power_of_two_of_pages(ring):
    with pytest.raises(ValueError):
        RingConsumer(ring.fd, 3 * PAGE, [SMALL])
