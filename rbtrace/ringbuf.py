"""Batch consumer of a BPF ring buffer, read through mmap.

BCC's own consumer calls one Python callback per record (through ctypes),
which caps it near 300k events/s here.  This one maps the ring and hands
out *segments*: runs of consecutive committed records of one event type,
viewed as numpy structured arrays straight over the mapped pages, so a
batch of thousands is decoded column by column.

Layout (kernel/bpf/ringbuf.c, as seen from user space):
  page 0 of the map, RW:   consumer_pos (u64), the only thing we write
  page 1, RO:              producer_pos (u64)
  pages 2.., RO:           the data area.  The kernel lets it be mapped
                           twice in a row, so that a record that wraps is
                           contiguous in memory; rbtrace maps it once (its
                           pages count in the process's RSS once per
                           mapping, 16 MiB of 8 MiB ring otherwise) and
                           copies the rare record that crosses the end.
  record:  u32 len (bit 31 BUSY: reserved, not yet committed; bit 30
           DISCARD), u32 page offset, then the payload, padded to 8 bytes.
producer_pos moves at reserve time, so everything between consumer_pos and
producer_pos is reserved but may still be BUSY: reading stops at the first
BUSY record.  x86-64 keeps loads in order, so once a record's len shows it
committed, its payload is complete.
"""
import mmap
from dataclasses import dataclass

import numpy as np

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8


def _stride(payload: int) -> int:
    return (payload + HDR + 7) & ~7


# Records per segment: big enough that numpy's fixed cost per call is
# small, small enough that the session looks at the clock and its signals
# between segments (an 8 MiB ring can hold 80,000 records, whose decoding
# takes seconds when the machine is overloaded).
SEGMENT_RECORDS = 4096


# The header member that says which kind's program wrote a record
# (rb_header.rb_kind, probes/common.h).
TAG_FIELD = "rb_kind"


@dataclass
class EventType:
    """One C event struct: its name, numpy dtype (payload only) and size,
    and `tag`: the rb_kind its programs write (None: records are told
    apart by size alone, as in tests of the ring without a header)."""
    name: str
    dtype: np.dtype
    tag: int = None

    @property
    def size(self):
        return self.dtype.itemsize


class RingConsumer:
    """`data_map` is for tests: the producer page and the data area (at
    least once), as a buffer with close(), when map_fd is not a BPF ring."""

    def __init__(self, map_fd: int, data_size: int, event_types, data_map=None):
        page = mmap.PAGESIZE
        if data_size <= 0 or data_size & (data_size - 1) or data_size % page:
            raise ValueError(f"ring size {data_size} is not a power of two multiple of {page}")
        self.size = data_size
        self.mask = data_size - 1
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        if data_map is None:
            data_map = mmap.mmap(map_fd, page + data_size, mmap.MAP_SHARED,
                                 mmap.PROT_READ, offset=page)
        self._data_map = data_map
        # numpy scalar views: loads and the store of consumer_pos are single
        # 8-byte accesses (struct.pack_into '<Q' may write byte by byte).
        self._cons = np.frombuffer(self._cons_map, dtype=np.uint64, count=1)
        self._prod = np.frombuffer(self._data_map, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._data_map, dtype=np.uint8, offset=page, count=data_size)
        self._u32 = self._data.view(np.uint32)
        self.data = memoryview(self._data_map)[page:page + data_size]   # raw bytes, for strings
        # Records are told apart by (tag, size): the kind that wrote one
        # (several kinds share the ring in `rbtrace trace`) and which of its
        # structs it is.  One kind's structs differ in size.
        self._types = {}
        tagged = {et.tag is not None for et in event_types}
        if len(tagged) > 1:
            raise ValueError("event types with and without a kind tag in one ring")
        self._tag_off = None
        # One kind in the ring (every one-kind command): its tag is known
        # without reading it, and a record a user's probe reserved without
        # rbtrace's header filled in (rbtrace-run(8)) still decodes.
        tags = {et.tag for et in event_types}
        self._only_tag = next(iter(tags)) if len(tags) == 1 else None
        for et in event_types:
            if et.tag is not None and self._only_tag is None:
                if TAG_FIELD not in et.dtype.names:
                    raise ValueError(f"event type {et.name} has no {TAG_FIELD} member")
                off = et.dtype.fields[TAG_FIELD][1]
                if self._tag_off not in (None, off):
                    raise ValueError(f"event type {et.name} has {TAG_FIELD} at {off}, "
                                     f"others at {self._tag_off}")
                self._tag_off = off
            key = (et.tag, et.size)
            if key in self._types:
                raise ValueError(f"event types {et.name} and {self._types[key][0].name} "
                                 f"have the same size {et.size}"
                                 + (f" and kind tag {et.tag}" if et.tag is not None else ""))
            rec = np.dtype({"names": ["_len", "_pgoff", "_payload"],
                            "formats": ["<u4", "<u4", et.dtype],
                            "offsets": [0, 4, HDR],
                            "itemsize": _stride(et.size)})
            self._types[key] = (et, rec)
        self.fd = map_fd      # pollable: readable when the kernel signals data
        # Records the probe reserved, then discarded (bpf_ringbuf_discard):
        # rbtrace's own probes never do, a `rbtrace run` probe may.  Not
        # lost, but they leave gaps in seq, so the summary says how many.
        self.discarded = 0

    def close(self):
        del self._cons, self._prod, self._data, self._u32
        self.data.release()
        self._cons_map.close()
        self._data_map.close()

    def pending(self) -> int:
        """Bytes reserved but not yet consumed (records still BUSY included,
        headers and padding included)."""
        return int(self._prod[0]) - int(self._cons[0])

    def fill(self) -> float:
        """How full the ring is, 0.0 to 1.0."""
        return min(1.0, self.pending() / self.size)

    def segments(self, max_records=SEGMENT_RECORDS):
        """Yield (EventType, records, data_offsets, data) for committed
        records, at most `max_records` at a time.

        `records` is a structured array viewing the ring (fields under
        `_payload`); it is valid only until the generator resumes, because
        consumer_pos advances past each segment when the caller asks for the
        next.  `data_offsets` gives each record's payload offset in `data`,
        for reading variable-length strings: `self.data`, or for a record
        that crosses the end of the ring, a copy of that one record.
        """
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        u32 = self._u32
        while cons < prod:
            off = cons & self.mask
            length = int(u32[off >> 2])
            if length & BUSY:
                break
            if length & DISCARD:
                self.discarded += 1
                cons += _stride(length & ~DISCARD)
                self._cons[0] = cons
                continue
            tag = self._only_tag
            if self._tag_off is not None:
                tag = int(u32[((off + HDR + self._tag_off) & self.mask) >> 2])
            entry = self._types.get((tag, length))
            if entry is None:
                raise RuntimeError(f"ring record of unknown size {length}"
                                   + (f" and kind tag {tag}" if tag is not None else "")
                                   + f" at {cons}")
            et, rec = entry
            stride = rec.itemsize
            n = min((prod - cons) // stride, (self.size - off) // stride, max_records)
            if n == 0:
                # The record crosses the end of the ring (its 8-byte header
                # never does): its two parts, copied together.
                head = self.size - off
                copy = bytearray(stride)
                copy[:head] = self.data[off:]
                copy[head:] = self.data[:stride - head]
                view = np.ndarray((1,), dtype=rec, buffer=copy)
                yield et, view["_payload"], np.array([HDR]), memoryview(copy)
                cons += stride
                self._cons[0] = cons
                continue
            view = np.ndarray((n,), dtype=rec, buffer=self._data_map,
                              offset=mmap.PAGESIZE + off)
            other = view["_len"] != length
            if self._tag_off is not None:
                # A run ends where another kind's record of the same size starts.
                other |= view["_payload"][TAG_FIELD] != tag
            bad = np.flatnonzero(other)
            if len(bad):
                n = int(bad[0])
                view = view[:n]
            yield et, view["_payload"], (off + HDR) + stride * np.arange(n), self.data
            cons += n * stride
            self._cons[0] = cons
