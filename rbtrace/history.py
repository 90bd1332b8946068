"""The live table's history: the newest events kept, as ring records.

The table shows at most a screenful of rows, but searching, scrolling
back and a process's events in the tree view need many more.  Decoding
every event to keep it would cost a Python call per event in a storm, so
what is kept is the records themselves, copied out of the ring one
segment at a time (one numpy copy, a few hundred bytes an event), and an
event is decoded only when it is shown or searched.

Events are numbered in the order they were kept, from 0; the history
holds the newest `cap` of them, and no more than `max_bytes` of records.
A View is a frozen list of chunks (what a paused screen shows): chunks
are never changed once made, so a View stays valid while new events
come and old ones go.
"""
from __future__ import annotations

import collections

import numpy as np

CAP = 20_000                # events kept
MAX_BYTES = 48 << 20        # of records kept: 11,900 of open's longest (4208 bytes)


def process_key(e) -> tuple:
    """(pid, proc_start_ns) of a decoded event: from its `process` key
    "<boot>-<start>-<pid>", else its pid and start 0."""
    key = e.get("process")
    if key:
        _, start, pid = key.rsplit("-", 2)
        return int(pid), int(start)
    return int(e.get("pid", 0)), int(e.get("proc_start_ns", 0))


class RawChunk:
    """Records of one event type, copied out of the ring; decoded on demand
    by `decode(event_type, records, offsets, data)` (the probe's)."""

    __slots__ = ("start", "et", "base", "first", "decode")

    def __init__(self, start, et, base, decode, first=0):
        self.start = start          # number of its first event kept
        self.et = et
        self.base = base            # contiguous records; base[first:] are kept
        self.first = first
        self.decode = decode

    def __len__(self):
        return len(self.base) - self.first

    @property
    def nbytes(self):
        return len(self) * self.base.dtype.itemsize

    def trimmed(self, k):
        """The same chunk less its first k events (a new chunk)."""
        return RawChunk(self.start + k, self.et, self.base, self.decode, self.first + k)

    def events(self, lo, hi) -> list:
        a, b = self.first + lo, self.first + hi
        data = memoryview(self.base.view(np.uint8))
        offsets = np.arange(a, b, dtype=np.int64) * self.base.dtype.itemsize
        return self.decode(self.et, self.base[a:b], offsets, data)

    def keys(self):
        """(pids, start times) of its events, as numpy columns."""
        recs = self.base[self.first:]
        names = recs.dtype.names or ()
        n = len(recs)
        pid = recs["pid"].astype(np.int64) if "pid" in names else np.zeros(n, np.int64)
        start = (recs["proc_start_ns"].astype(np.uint64) if "proc_start_ns" in names
                 else np.zeros(n, np.uint64))
        return pid, start


class EventChunk:
    """Events already decoded (a renderer handed dicts: tests, replay)."""

    __slots__ = ("start", "items", "first")

    def __init__(self, start, items, first=0):
        self.start, self.items, self.first = start, items, first

    def __len__(self):
        return len(self.items) - self.first

    @property
    def nbytes(self):
        return 512 * len(self)      # a rough size of a small dict

    def trimmed(self, k):
        return EventChunk(self.start + k, self.items, self.first + k)

    def events(self, lo, hi) -> list:
        return self.items[self.first + lo:self.first + hi]

    def keys(self):
        keys = [process_key(e) for e in self.items[self.first:]]
        return (np.array([k[0] for k in keys], dtype=np.int64),
                np.array([k[1] for k in keys], dtype=np.uint64))


class View:
    """A frozen list of chunks: the events numbered lo..hi-1, and the
    process key (pid, start) of each, as two numpy columns."""

    def __init__(self, chunks, pids=None, starts=None):
        self.chunks = tuple(chunks)
        self.lo = self.chunks[0].start if self.chunks else 0
        self.hi = self.chunks[-1].start + len(self.chunks[-1]) if self.chunks else 0
        self._starts = [c.start for c in self.chunks]
        if pids is None:
            keys = [c.keys() for c in self.chunks]
            pids = np.concatenate([k[0] for k in keys]) if keys else np.zeros(0, np.int64)
            starts = np.concatenate([k[1] for k in keys]) if keys else np.zeros(0, np.uint64)
        self.pids, self.starts = pids, starts

    def __len__(self):
        return self.hi - self.lo

    def events(self, lo, hi) -> list:
        """The decoded events numbered lo..hi-1 (those still in the view)."""
        import bisect
        lo, hi = max(lo, self.lo), min(hi, self.hi)
        out = []
        i = max(0, bisect.bisect_right(self._starts, lo) - 1)
        while i < len(self.chunks) and self.chunks[i].start < hi:
            c = self.chunks[i]
            a, b = max(lo, c.start), min(hi, c.start + len(c))
            if a < b:
                out.extend(c.events(a - c.start, b - c.start))
            i += 1
        return out

    def event(self, number):
        got = self.events(number, number + 1)
        return got[0] if got else None

    def of_process(self, key) -> np.ndarray:
        """The numbers of the events of process `key` (pid, start), oldest first."""
        pid, start = key
        if start < 0:
            return np.zeros(0, np.int64)
        hit = np.flatnonzero((self.pids == pid) & (self.starts == np.uint64(start)))
        return hit + self.lo

    def search(self, match, lo=None, step=4096):
        """Yield (number, event) of each event from `lo` on for which
        match(event) is true; decoded `step` at a time."""
        n = self.lo if lo is None else max(lo, self.lo)
        while n < self.hi:
            batch = self.events(n, min(self.hi, n + step))
            for i, e in enumerate(batch):
                if match(e):
                    yield n + i, e
            n += max(1, len(batch))


class History:
    """The newest `cap` events kept (at most `max_bytes` of records)."""

    def __init__(self, cap=CAP, max_bytes=MAX_BYTES):
        self.cap = cap
        self.max_bytes = max_bytes
        self.chunks = collections.deque()
        self.kept = 0           # events in the chunks
        self.total = 0          # events ever kept: the next one's number
        self.nbytes = 0
        # The process key of event number n, at n % cap.
        self._pids = np.zeros(cap, np.int64)
        self._starts = np.zeros(cap, np.uint64)

    def __len__(self):
        return self.kept

    def add_records(self, event_type, records, decode):
        """Keep (a copy of) a segment of ring records; at most the newest cap."""
        if not len(records):
            return
        if len(records) > self.cap:
            records = records[-self.cap:]
        # A copy, always: a segment views the ring, which the kernel writes
        # again once it is consumed (and np.ascontiguousarray would hand
        # back a one-record view as it is).
        self._push(RawChunk(self.total, event_type, np.array(records, copy=True), decode))

    def add_events(self, events):
        if not events:
            return
        events = list(events[-self.cap:])
        self._push(EventChunk(self.total, events))

    def _push(self, chunk):
        pids, starts = chunk.keys()
        at = chunk.start % self.cap
        head = min(len(chunk), self.cap - at)
        self._pids[at:at + head], self._starts[at:at + head] = pids[:head], starts[:head]
        self._pids[:len(chunk) - head], self._starts[:len(chunk) - head] = pids[head:], starts[head:]
        self.chunks.append(chunk)
        self.kept += len(chunk)
        self.total += len(chunk)
        self.nbytes += chunk.nbytes
        chunks = self.chunks
        while len(chunks) > 1 and (self.kept - len(chunks[0]) >= self.cap
                                   or self.nbytes > self.max_bytes):
            old = chunks.popleft()
            self.kept -= len(old)
            self.nbytes -= old.nbytes
        if self.kept > self.cap:
            k = self.kept - self.cap
            old = chunks[0]
            chunks[0] = old.trimmed(k)
            self.kept -= k
            self.nbytes -= old.nbytes - chunks[0].nbytes

    def view(self) -> View:
        """The events kept now, frozen."""
        if not self.chunks:
            return View(())
        lo = self.total - self.kept
        at = lo % self.cap
        order = np.concatenate([np.arange(at, min(self.cap, at + self.kept)),
                                np.arange(0, max(0, at + self.kept - self.cap))])
        return View(self.chunks, self._pids[order], self._starts[order])
