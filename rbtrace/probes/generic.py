"""Decoding of event records whose layout is known only at run time.

`rbtrace tp` (rbtrace/probes/tp.py) generates one C event struct per
tracepoint; `rbtrace run` compiles a struct a user wrote.  Neither has a
hand-written decoder: GenericProbe decodes any record whose C struct starts
with `struct rb_header h;` (probes/common.h) from the numpy dtype BCC gave
for it (bpf.dtype_from_ctypes: nested structs flattened to leaf names, char
and u8 arrays as 'S<n>' columns, other arrays as sub-arrays), column by
column.

API (kept stable: `rbtrace run` builds on it)
----------------------------------------------
GenericProbe(options, events=None)
    A Probe.  `events` maps a C struct name (as declared with
    RBTRACE_EVENT) to an EventSpec; `event_structs` is its keys in order.
    A record of a struct without an EventSpec (events=None, or a name
    missing from it) is decoded with EventSpec(label=<struct name>) and
    every field "auto".  Subclasses set `name`, which is the JSON lines'
    "type" and the command's name, and usually `source_path()`.  How a
    struct is decoded is worked out at its first record and kept: change
    `events` before decoding starts.

EventSpec(label, fields={})
    label   what the EVENT column and the JSON "event" member show, e.g.
            "sched:sched_process_fork".
    fields  {dtype column name: FieldSpec} for the columns that need more
            than "auto".  The header's columns (HEADER_FIELDS) are never
            fields of the event.

FieldSpec(kind="auto", label=None, cast=None, full_length=None)
    kind    one of KINDS:
            "auto"    from the dtype: an integer -> "int", an 'S' column
                      (char or u8 array) -> "text", an integer sub-array ->
                      "array", anything else -> "bytes";
            "int"     a JSON number;
            "hex"     a pointer or address: "0x7ffd12a0" (lower case, no
                      leading zeros; negative values as their unsigned bits);
            "text"    bytes up to the first NUL, as put_text() stores them:
                      exact text, plus "<label>_b64" when not UTF-8;
            "array"   a list of numbers (a u8 'S' column gives its bytes);
            "bytes"   the raw bytes as one hex string, "00ff10";
            "hidden"  not shown (padding, raw lengths).
    label   the name under "args", so that C members can carry a prefix
            (`f_pid` shown as "pid").  Default: the member's C path from
            the dtype's metadata["c_paths"] when dtype_from_ctypes made it
            ("i.flags"; "pid" for a member whose column was renamed
            because the header has a pid), else the column name.
    cast    (size, signed): the value is the low `size` bytes of the
            column, with that signedness.  For a value stored wider than its
            C type, as syscall tracepoints store an `int` in 8 bytes.
    full_length
            for "text", "array", "bytes": the name of another column that
            holds the real size of the data in bytes (a string's NUL
            included).  A "text" longer than its column gets
            "<label>_truncated": true beside it; an "array" or "bytes" is
            cut to the bytes that are valid.  The length column itself is
            not shown.

decode(event_type, records, offsets, data) -> [event dict]
    The events of one ring segment (see Probe.decode).  An event is
        {"type": name, "seq", "time", "ts_ns", "pid", "tid", "ppid", "uid",
         "user", "comm" (+ "comm_b64"), "event": label, "args": {...}}
    with the fields in "args", in the struct's order, so that a
    tracepoint's own pid or comm never collides with the header's.

json_lines(event_type, records, offsets, data) -> bytes
    The same events as JSON lines, exactly what JsonRenderer writes for
    decode()'s dicts, from a cache of serialized events keyed by the
    record's bytes after seq and ts_ns (the session uses it for --json).
    Bytes the C code leaves unset (padding, a buffer after its string's
    NUL) only cost cache misses; zero them to make storms cheap.

columns
    TIME, PID, COMM, EVENT, then ARGS: "name=value" pairs, texts quoted
    and escaped for the terminal, a cut text ending with "…"; fields whose
    label starts with "__" (a tracepoint's __syscall_nr) are left to JSON.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from rbtrace import fields as fmt
from rbtrace.probes import Column, Probe, cstr, pid_column, put_text, shown, time_column

KINDS = ("auto", "int", "hex", "text", "array", "bytes", "hidden")
HEADER_FIELDS = ("ts_ns", "seq", "pid", "tid", "ppid", "uid", "comm")

# Every member an event line can have; what is under "args" depends on
# the event (see the module docstring).
JSON_FIELDS = ("type", "seq", "time", "ts_ns", "pid", "tid", "ppid", "uid", "user",
               "comm", "comm_b64", "event", "args")


@dataclass(frozen=True)
class FieldSpec:
    kind: str = "auto"
    label: Optional[str] = None
    cast: Optional[tuple] = None
    full_length: Optional[str] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"field kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.cast is not None:
            size, _signed = self.cast
            if size not in (1, 2, 4, 8):
                raise ValueError(f"cast to {size} bytes: 1, 2, 4 or 8 only")


@dataclass
class EventSpec:
    label: str
    fields: dict = field(default_factory=dict)


@dataclass
class _Plan:
    """How one event type is decoded: (label, kind, column, spec, size)."""
    label: str
    steps: list
    kinds: dict          # label -> kind, for the ARGS cell


def _auto_kind(dt: np.dtype) -> str:
    base = dt.base
    if dt.shape:
        return "array" if base.kind in "iub" else "bytes"
    if base.kind == "S":
        return "text"
    if base.kind in "iub":
        return "int"
    return "bytes"


def _cast(col: np.ndarray, size: int, signed: bool) -> np.ndarray:
    """The low `size` bytes of an integer column, with that signedness
    (numpy's integer conversions between widths wrap, as C's do)."""
    unsigned = col.astype(f"<u{col.dtype.itemsize}").astype(f"<u{size}")
    return unsigned.view(f"<i{size}") if signed else unsigned


def _raw_bytes(col: np.ndarray) -> list:
    """Each record's bytes of a column, full width (numpy's 'S' strips
    trailing NULs; other types are viewed as bytes)."""
    width = col.dtype.itemsize
    if col.dtype.kind == "S" and not col.dtype.shape:
        return [b.ljust(width, b"\0") for b in col.tolist()]
    flat = np.ascontiguousarray(col).view(np.uint8).reshape(len(col), width)
    return [bytes(row) for row in flat]


def _hex(values) -> list:
    return [f"0x{v:x}" for v in values]


class GenericProbe(Probe):
    name = "generic"
    tally = (("commands", "comm"),)

    def __init__(self, options, events=None):
        super().__init__(options)
        self.events = dict(events or {})
        self.event_structs = tuple(self.events)
        self._plans = {}
        self._kinds = {}            # event label -> {arg label: kind}
        self._json_cache = {}       # record bytes from pid on -> serialized tail
        # priority: which columns a narrow terminal drops first (highest)
        self.columns = self._bind_time((
            time_column(priority=5),
            pid_column(priority=1),
            Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4),
            Column("EVENT", lambda e: fmt.escape_str(e["event"]), width=28, min_width=12,
                   keep="end", priority=3),
            Column("ARGS", self.args_cell, min_width=16, priority=2),
        ))

    def event_spec(self, struct_name) -> EventSpec:
        return self.events.get(struct_name) or EventSpec(label=struct_name)

    # --- decoding ------------------------------------------------------------

    def _plan(self, event_type) -> _Plan:
        key = (event_type.name, event_type.dtype)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        spec = self.event_spec(event_type.name)
        dt = event_type.dtype
        lengths = {s.full_length for s in spec.fields.values() if s.full_length}
        # A member's C path ("i.flags", "pid" for a top-level member whose
        # flat column had to be renamed "pid#7"), when the dtype has them.
        paths = (dt.metadata or {}).get("c_paths", {})
        steps, kinds = [], {}
        for name in dt.names:
            if name in HEADER_FIELDS or name in lengths:
                continue
            fs = spec.fields.get(name) or FieldSpec()
            kind = fs.kind if fs.kind != "auto" else _auto_kind(dt.fields[name][0])
            if kind == "hidden":
                continue
            if fs.full_length and fs.full_length not in dt.names:
                raise ValueError(f"{event_type.name}.{name}: no length column {fs.full_length!r}")
            label = fs.label or paths.get(name, name)
            steps.append((label, kind, name, fs, dt.fields[name][0]))
            kinds[label] = kind
        plan = self._plans[key] = _Plan(spec.label, steps, kinds)
        self._kinds[spec.label] = kinds
        return plan

    def _column_values(self, records, kind, name, fs, ftype):
        """(values, truncated flags or None) of one column, for all records."""
        col = records[name]
        lens = records[fs.full_length].tolist() if fs.full_length else None
        if kind in ("int", "hex"):
            if ftype.shape or ftype.base.kind not in "iub":
                # An integer kind asked of an array or odd type: its bytes,
                # read as one little-endian number.
                vals = [int.from_bytes(b, "little") for b in _raw_bytes(col)]
                return (_hex(vals) if kind == "hex" else vals), None
            if fs.cast is not None:
                size, signed = fs.cast
                col = _cast(col, size, signed and kind == "int")
            elif kind == "hex" and col.dtype.kind == "i":
                col = _cast(col, col.dtype.itemsize, False)
            vals = col.tolist()
            return (_hex(vals) if kind == "hex" else vals), None
        width = ftype.itemsize
        if kind == "text":
            if ftype.base.kind == "S" and not ftype.shape:
                raws = [cstr(b) for b in col.tolist()]
            else:
                raws = [cstr(b) for b in _raw_bytes(col)]
            trunc = [n > width for n in lens] if lens is not None else None
            return raws, trunc
        if kind == "array":
            if ftype.base.kind in "iub" and ftype.shape:
                vals = col.tolist()
                if lens is not None:
                    each = ftype.base.itemsize
                    vals = [v[:max(0, min(n, width)) // each] for v, n in zip(vals, lens)]
                return vals, None
            raws = _raw_bytes(col)
            if lens is not None:
                raws = [r[:max(0, min(n, width))] for r, n in zip(raws, lens)]
            return [list(r) for r in raws], None
        # bytes
        raws = _raw_bytes(col)
        if lens is not None:
            raws = [r[:max(0, min(n, width))] for r, n in zip(raws, lens)]
        return [r.hex() for r in raws], None

    def decode(self, event_type, records, offsets, data):
        n = len(records)
        if not n:
            return []
        plan = self._plan(event_type)
        seq, ts, pid, tid, ppid, uid, comm = self.header_fields(records)
        cols = []
        for label, kind, name, fs, ftype in plan.steps:
            vals, trunc = self._column_values(records, kind, name, fs, ftype)
            cols.append((label, kind == "text", vals, trunc, label + "_truncated"))
        clock = self.clock
        user_name = fmt.user_name
        type_name, event_label = self.name, plan.label
        out = []
        append = out.append
        for i in range(n):
            args = {}
            for label, is_text, vals, trunc, trunc_key in cols:
                if is_text:
                    put_text(args, label, vals[i])
                    if trunc is not None and trunc[i]:
                        args[trunc_key] = True
                else:
                    args[label] = vals[i]
            e = {"type": type_name, "seq": seq[i], "time": clock.iso(ts[i]), "ts_ns": ts[i],
                 "pid": pid[i], "tid": tid[i], "ppid": ppid[i], "uid": uid[i],
                 "user": user_name(uid[i])}
            put_text(e, "comm", cstr(comm[i]))
            e["event"] = event_label
            e["args"] = args
            append(e)
        return out

    def json_lines(self, event_type, records, offsets, data) -> bytes:
        """The JSON lines of a segment, as JsonRenderer would write decode()'s
        events (a unit test holds the two equal), built faster.

        Everything after ts_ns is a function of the record's bytes from
        `pid` to its end, so those bytes key a cache of serialized tails.
        A storm repeats one event: records equal to their predecessor (one
        numpy compare for the segment) within one second form a run, and a
        run is one `%` over its repeated line template.  Records missing
        from the cache are decoded together, column by column, once."""
        import orjson
        n = len(records)
        if not n:
            return b""
        key_off = event_type.dtype.fields["pid"][1]
        size = event_type.size
        clock = self.clock
        stamps = records["ts_ns"].astype(np.int64)
        wall = stamps + clock.offset_ns
        sec_arr = wall // 1_000_000_000
        newrun = np.ones(n, dtype=bool)
        if n > 1:
            stride = int(offsets[1] - offsets[0])
            if stride > 0 and bool((np.diff(offsets) == stride).all()):
                fixed = np.ndarray((n,), dtype=np.dtype((np.void, size - key_off)), buffer=data,
                                   offset=int(offsets[0]) + key_off, strides=(stride,))
                newrun[1:] = fixed[1:] != fixed[:-1]
            newrun[1:] |= sec_arr[1:] != sec_arr[:-1]
        starts = np.flatnonzero(newrun).tolist()
        ends = starts[1:] + [n]
        offs = offsets.tolist()
        keys = [bytes(data[offs[i] + key_off:offs[i] + size]) for i in starts]
        cache = self._json_cache
        if len(cache) > 4096:
            cache.clear()
        missing = {}
        for i, k in zip(starts, keys):
            if k not in cache and k not in missing:
                missing[k] = i
        if missing:
            idx = np.fromiter(missing.values(), dtype=np.int64, count=len(missing))
            events = self.decode(event_type, records[idx], offsets[idx], data)
            head_len = len(self._json_head)
            for k, e in zip(missing, events):
                e["seq"] = e["time"] = e["ts_ns"] = None
                cache[k] = orjson.dumps(e)[head_len:] + b"\n"
        # All int64: mixing in uint64 would make numpy promote to float64.
        numbers = np.column_stack((records["seq"].astype(np.int64), wall % 1_000_000_000,
                                   stamps)).ravel().tolist()
        secs = sec_arr.tolist()
        start = self._json_start
        out = []
        last_sec = unit = None
        for s0, e0, key in zip(starts, ends, keys):
            sec = secs[s0]
            if sec != last_sec:
                prefix = clock.iso(sec * 1_000_000_000 - clock.offset_ns)[:-10].encode()
                # NUL marks where the serialized tail goes: JSON text has none.
                unit = start + b'%d,"time":"' + prefix + b'%09dZ","ts_ns":%d,\0'
                last_sec = sec
            # `%` over the short heads only, then the tail copied in by replace().
            heads = unit * (e0 - s0) % tuple(numbers[3 * s0:3 * e0])
            out.append(heads.replace(b"\0", cache[key]))
        return b"".join(out)

    @property
    def _json_head(self):
        """The serialized start of an event whose seq, time and ts_ns are None."""
        import orjson
        return orjson.dumps({"type": self.name, "seq": None, "time": None,
                             "ts_ns": None})[:-1] + b","

    @property
    def _json_start(self):
        import orjson
        return b'{"type":' + orjson.dumps(self.name) + b',"seq":'

    # --- the table -----------------------------------------------------------

    def args_cell(self, e) -> str:
        """ARGS: name=value pairs in the struct's order; texts quoted and
        escaped, a cut one ending with "…"."""
        args = e["args"]
        kinds = self._kinds.get(e["event"])
        if kinds is None:           # an event this probe did not decode
            kinds = {k: "int" for k in args}
        parts = []
        for label, kind in kinds.items():
            if label not in args or label.startswith("__"):
                continue
            value = args[label]
            if kind == "text":
                text = '"' + shown(args, label) + '"'
                if args.get(label + "_truncated"):
                    text += "…"
            elif kind == "array":
                text = "[" + ",".join(map(str, value)) + "]"
            elif isinstance(value, bool):
                text = "true" if value else "false"      # as in the JSON
            else:
                text = str(value)
            parts.append(f"{fmt.escape_str(label)}={text}")
        return " ".join(parts)
