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
import struct

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


class EventType:
    """One C event struct: its name, numpy dtype (payload only) and size,
    and `tag`: the rb_kind its programs write (None: records are told
    apart by size alone, as in tests of the ring without a header).

    Made from a numpy dtype, or from `layout` (the dtype as data, as the
    compile cache keeps it: names, formats, offsets, itemsize, c_paths),
    in which case numpy is imported only when the dtype is first asked
    for: a run's first records are read without it (Layout)."""

    def __init__(self, name: str, dtype=None, tag: int = None, layout: dict = None):
        if dtype is None and layout is None:
            raise ValueError(f"event type {name}: neither a dtype nor a layout")
        self.name = name
        self.tag = tag
        self._dtype = dtype
        self._layout = layout

    def __repr__(self):
        return f"EventType({self.name!r}, size={self.size}, tag={self.tag!r})"

    @property
    def dtype(self):
        if self._dtype is None:
            self._dtype = dtype_from_data(self._layout)
        return self._dtype

    @property
    def layout(self) -> dict:
        """The record layout as data (names, formats, offsets, itemsize, c_paths)."""
        if self._layout is None:
            self._layout = dtype_to_data(self._dtype)
        return self._layout

    @property
    def size(self):
        return self._dtype.itemsize if self._dtype is not None else self._layout["itemsize"]

    def member(self, name) -> tuple:
        """(offset, size in bytes) of a member, numpy or not."""
        if self._dtype is not None:
            sub, off = self._dtype.fields[name][:2]
            return off, sub.itemsize
        lay = self._layout
        i = lay["names"].index(name)
        return lay["offsets"][i], _format_size(lay["formats"][i])


def dtype_to_data(dtype) -> dict:
    """A record layout as JSON-able data (for the compile cache)."""
    def fmt(d):
        return [d.subdtype[0].str, list(d.subdtype[1])] if d.subdtype else d.str
    return {"names": list(dtype.names),
            "formats": [fmt(dtype.fields[n][0]) for n in dtype.names],
            "offsets": [dtype.fields[n][1] for n in dtype.names],
            "itemsize": dtype.itemsize,
            "c_paths": dict((dtype.metadata or {}).get("c_paths", {}))}


def dtype_from_data(data: dict):
    import numpy as np
    formats = [f if isinstance(f, str) else (f[0], tuple(f[1])) for f in data["formats"]]
    return np.dtype({"names": data["names"], "formats": formats, "offsets": data["offsets"],
                     "itemsize": data["itemsize"]}, metadata={"c_paths": data["c_paths"]})


# numpy's scalar formats ('<u4', '|S16'...) as struct's: what Layout reads.
_STRUCT_CODES = {"u1": "B", "u2": "H", "u4": "I", "u8": "Q",
                 "i1": "b", "i2": "h", "i4": "i", "i8": "q",
                 "f4": "f", "f8": "d", "b1": "?"}


def _format_size(fmt) -> int:
    if not isinstance(fmt, str):                # [scalar, shape]: a sub-array
        n = 1
        for k in fmt[1]:
            n *= k
        return _format_size(fmt[0]) * n
    return int(fmt[2:])


class Layout:
    """Reads the scalar and byte-string members of records with struct,
    without numpy, as numpy's .tolist() gives them: ints (floats, bools)
    for numbers, bytes without their trailing NULs for 'S' members.
    Sub-arrays and members of other formats are left out (so are members
    that overlap an earlier one).  For a run's first records (Codec.rows_json_lines)."""

    def __init__(self, event_type: EventType):
        lay = event_type.layout
        members = sorted(zip(lay["offsets"], lay["names"], lay["formats"]))
        fmt, names, self.strings, at = "<", [], [], 0
        for off, name, f in members:
            if not isinstance(f, str) or off < at:
                continue
            byte_order, code = f[0], f[1:]
            if code[0] == "S":
                piece = f"{int(code[1:])}s"
                self.strings.append(len(names))
            elif code in _STRUCT_CODES and (byte_order in "<|" or code[1:] == "1"):
                piece = _STRUCT_CODES[code]
            else:
                continue
            fmt += ("x" * (off - at) if off > at else "") + piece
            names.append(name)
            at = off + struct.calcsize("<" + piece)
        self.names = tuple(names)
        self.struct = struct.Struct(fmt)

    def rows(self, payloads) -> list:
        """One dict per record payload (bytes), member name -> value."""
        unpack, names, strings = self.struct.unpack_from, self.names, self.strings
        out = []
        for p in payloads:
            values = list(unpack(p))
            for i in strings:
                values[i] = values[i].rstrip(b"\0")
            out.append(dict(zip(names, values)))
        return out


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
        # Typed memoryviews, not numpy (a run's first records are read
        # before numpy is imported): an item of a 'Q' view is loaded and
        # stored as one 8-byte access (struct.pack_into '<Q' may write byte
        # by byte).  cast("B") first: a ctypes buffer (tests) is "<B".
        self._cons = memoryview(self._cons_map).cast("B")[:8].cast("Q")
        self._prod = memoryview(self._data_map).cast("B")[:8].cast("Q")
        self._u32 = memoryview(self._data_map).cast("B")[page:page + data_size].cast("I")
        self.data = memoryview(self._data_map)[page:page + data_size]   # raw bytes, for strings
        if self.data.format != "B":
            self.data = self.data.cast("B")
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
                if TAG_FIELD not in et.layout["names"]:
                    raise ValueError(f"event type {et.name} has no {TAG_FIELD} member")
                off = et.member(TAG_FIELD)[0]
                if self._tag_off not in (None, off):
                    raise ValueError(f"event type {et.name} has {TAG_FIELD} at {off}, "
                                     f"others at {self._tag_off}")
                self._tag_off = off
            key = (et.tag, et.size)
            if key in self._types:
                raise ValueError(f"event types {et.name} and {self._types[key].name} "
                                 f"have the same size {et.size}"
                                 + (f" and kind tag {et.tag}" if et.tag is not None else ""))
            self._types[key] = et
        self._records = {}    # EventType -> numpy dtype of a record (header + payload)
        self.fd = map_fd      # pollable: readable when the kernel signals data
        # Records the probe reserved, then discarded (bpf_ringbuf_discard):
        # rbtrace's own probes never do, a `rbtrace run` probe may.  Not
        # lost, but they leave gaps in seq, so the summary says how many.
        self.discarded = 0

    def close(self):
        for view in (self._cons, self._prod, self._u32, self.data):
            view.release()
        self._cons_map.close()
        self._data_map.close()

    def pending(self) -> int:
        """Bytes reserved but not yet consumed (records still BUSY included,
        headers and padding included)."""
        return int(self._prod[0]) - int(self._cons[0])

    def fill(self) -> float:
        """How full the ring is, 0.0 to 1.0."""
        return min(1.0, self.pending() / self.size)

    def _record_type(self, cons, off, length) -> EventType:
        tag = self._only_tag
        if self._tag_off is not None:
            tag = int(self._u32[((off + HDR + self._tag_off) & self.mask) >> 2])
        et = self._types.get((tag, length))
        if et is None:
            raise RuntimeError(f"ring record of unknown size {length}"
                               + (f" and kind tag {tag}" if tag is not None else "")
                               + f" at {cons}")
        return et

    def _record_dtype(self, et):
        """The numpy dtype of a whole ring record of `et`: its 8-byte ring
        header, then the payload under `_payload`."""
        rec = self._records.get(et)
        if rec is None:
            import numpy as np
            rec = self._records[et] = np.dtype({"names": ["_len", "_pgoff", "_payload"],
                                                "formats": ["<u4", "<u4", et.dtype],
                                                "offsets": [0, 4, HDR],
                                                "itemsize": _stride(et.size)})
        return rec

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
        import numpy as np
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
            et = self._record_type(cons, off, length)
            rec = self._record_dtype(et)
            tag = et.tag if self._tag_off is not None else None
            stride = rec.itemsize
            n = min((prod - cons) // stride, (self.size - off) // stride, max_records)
            if n == 0:
                # The record crosses the end of the ring (its 8-byte header
                # never does): its two parts, copied together.
                copy = self._wrapped(off, stride)
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

    def _wrapped(self, off, stride) -> bytearray:
        """A record that crosses the end of the ring, its two parts copied
        together (ring header included)."""
        head = self.size - off
        copy = bytearray(stride)
        copy[:head] = self.data[off:]
        copy[head:] = self.data[:stride - head]
        return copy

    def payloads(self, max_records=SEGMENT_RECORDS):
        """Yield (EventType, [payload bytes, ...]) for committed records, as
        segments() does (runs of one event type), but copied out with plain
        slices: no numpy, for a run's first records while numpy is still
        being imported.  Being copies, a run is consumed as it is handed
        out: a caller that may stop early checks before asking for the next."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        u32, data, mask = self._u32, self.data, self.mask
        while cons < prod:
            et, run, at = None, [], cons
            while at < prod and len(run) < max_records:
                off = at & mask
                length = int(u32[off >> 2])
                if length & BUSY:
                    break
                if length & DISCARD:
                    if run:
                        break               # counted when it comes first
                    self.discarded += 1
                    at = cons = at + _stride(length & ~DISCARD)
                    self._cons[0] = cons
                    continue
                kind = self._record_type(at, off, length)
                if et is not None and kind is not et:
                    break
                et = kind
                stride = _stride(length)
                if off + stride <= self.size:
                    run.append(bytes(data[off + HDR:off + HDR + length]))
                else:
                    run.append(bytes(self._wrapped(off, stride)[HDR:HDR + length]))
                at += stride
            if not run:
                break
            cons = at
            self._cons[0] = cons
            yield et, run
