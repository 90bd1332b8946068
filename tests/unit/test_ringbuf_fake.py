"""RingConsumer over a ring laid out as the kernel lays one out (no root).

A memfd holds the consumer page, the producer page and the data area once.
The consumer maps the consumer page itself; the producer page and the data
area *twice in a row* are mapped here with MAP_FIXED (what the kernel's
ring buffer mmap does), so a record written once near the end of the data
is seen whole across the end, as from a real ring.  The test writes
records through a plain read-write mapping of the memfd, as the kernel
writes them.
"""
import ctypes
import mmap
import os
import struct

import numpy as np
import pytest

from rbtrace.ringbuf import BUSY, DISCARD, EventType, RingConsumer

PAGE = mmap.PAGESIZE
SIZE = 4 * PAGE
DATA = 2 * PAGE                    # the data area's offset in the memfd

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FIXED = 0x10
PROT_NONE = 0
MAP_FAILED = ctypes.c_void_p(-1).value


def _map(addr, length, prot, flags, fd, offset):
    got = _libc.mmap(addr, length, prot, flags, fd, offset)
    if got == MAP_FAILED:
        raise OSError(ctypes.get_errno(), "mmap")
    return got


def double_mapped(fd, size):
    """The producer page, then the data area twice: PAGE + 2*size bytes,
    read-only, as a ctypes buffer with close()."""
    total = PAGE + 2 * size
    base = _map(None, total, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    _map(base, PAGE, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd, PAGE)
    _map(base + PAGE, size, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd, DATA)
    _map(base + PAGE + size, size, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd, DATA)

    class Area(ctypes.c_ubyte * total):
        def close(self):
            _libc.munmap(base, total)

    return Area.from_address(base)


class KernelLikeRing:
    """The producer side: writes each record once, as the kernel does."""

    def __init__(self, size=SIZE):
        self.size = size
        self.fd = os.memfd_create("fake-ring")
        os.ftruncate(self.fd, DATA + size)
        self.map = mmap.mmap(self.fd, DATA + size)
        self.prod = 0

    def consumer(self, types):
        return RingConsumer(self.fd, self.size, types, data_map=double_mapped(self.fd, self.size))

    def _put(self, pos, data):
        at = pos & (self.size - 1)
        first = min(len(data), self.size - at)
        self.map[DATA + at:DATA + at + first] = data[:first]
        self.map[DATA:DATA + len(data) - first] = data[first:]

    def reserve(self, length, flags=BUSY):
        """Reserve room for a payload (BUSY until committed): producer_pos moves."""
        pos = self.prod
        self._put(pos, struct.pack("<II", length | flags, 0))
        self.prod += (length + 8 + 7) & ~7
        struct.pack_into("<Q", self.map, PAGE, self.prod)
        return pos

    def commit(self, pos, payload, flags=0):
        self._put(pos + 8, payload)
        self._put(pos, struct.pack("<I", len(payload) | flags))

    def add(self, payload, flags=0):
        pos = self.reserve(len(payload))
        self.commit(pos, payload, flags)
        return pos

    def start_at(self, pos):
        self.prod = pos
        struct.pack_into("<Q", self.map, 0, pos)
        struct.pack_into("<Q", self.map, PAGE, pos)

    @property
    def consumer_pos(self):
        return struct.unpack_from("<Q", self.map, 0)[0]

    def close(self):
        self.map.close()
        os.close(self.fd)


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
