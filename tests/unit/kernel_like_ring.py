"""A ring laid out as the kernel lays out a BPF ring buffer, without root.

A memfd holds the consumer page, the producer page and the data area once.
The consumer maps the consumer page itself; the producer page and the data
area *twice in a row* are mapped here with MAP_FIXED (what the kernel's
ring buffer mmap does), so a record written once near the end of the data
is seen whole across the end, as from a real ring.  The producer writes
records through a plain read-write mapping of the memfd, as the kernel
writes them.  Used by test_ringbuf_fake.py (the consumer) and
test_session_loop.py (the session's loop over it).
"""
import ctypes
import mmap
import os
import struct

from rbtrace.ringbuf import BUSY, SEGMENT_RECORDS, RingConsumer

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
        # A memfd can't be polled: the kernel's wake-up is this eventfd,
        # signalled at each commit and readable until the consumer looks.
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def consumer(self, types):
        return PollableConsumer(self, types)

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
        os.eventfd_write(self.wake, 1)

    def room(self, length):
        """Whether the kernel would grant a reservation of `length` now."""
        return self.prod - self.consumer_pos + ((length + 8 + 7) & ~7) <= self.size

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
        os.close(self.wake)


class PollableConsumer(RingConsumer):
    """The real consumer over the fake ring; its `fd` is the ring's
    eventfd, readable when a commit came since the consumer last looked,
    as the kernel's ring fd is readable while the ring holds data."""

    def __init__(self, ring, types):
        super().__init__(ring.fd, ring.size, types, data_map=double_mapped(ring.fd, ring.size))
        self.fd = ring.wake

    def segments(self, max_records=SEGMENT_RECORDS):
        try:
            os.eventfd_read(self.fd)    # before looking: a later commit wakes again
        except BlockingIOError:
            pass
        yield from super().segments(max_records)


