"""Decoding of event records whose layout is known only at run time.

`rbtrace tp` (rbtrace/kinds/tp.py) generates one C event struct per
tracepoint; `rbtrace run` compiles a struct a user wrote.  Neither has a
hand-written decoder: GenericCodec decodes any record whose C struct starts
with `struct rb_header h;` (probes/common.h) from the numpy dtype BCC gave
for it (bpf.dtype_from_ctypes: nested structs flattened to leaf names, char
and u8 arrays as 'S<n>' columns, other arrays as sub-arrays), column by
column.

API (kept stable: `rbtrace run` builds on it)
----------------------------------------------
GenericCodec(options, spec=None, events=None)
    A Codec (rbtrace/codec.py).  `events` maps a C struct name (as
    declared with RBTRACE_EVENT) to an EventSpec; `event_structs` is its
    keys in order.  A record of a struct without an EventSpec (events=None,
    or a name missing from it) is decoded with EventSpec(label=<struct
    name>) and every field "auto".  `spec` is the kind's Spec (tp's, run's:
    its name is the JSON lines' "type" and the command's name); by default
    the SPEC of the subclass's module, else GENERIC (for inspection).  The
    kind's spec takes its event members and columns from here: FIELDS and
    COLUMNS.  How a struct is decoded is worked out at its first record and
    kept: change `events` before decoding starts.

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

bodies(event_type, records, offsets, data) -> [dict]
    What the codec adds after the header (Codec.heads()): one
        {"event": label, "args": {...}}
    per record, with the fields in "args", in the struct's order, so that
    a tracepoint's own pid or comm never collides with the header's.
    decode() and json_lines() are the Codec's: an event line is
        {"type": name, "seq", "time", "ts_ns", "pid", "tid", "ppid", "uid",
         "user", "comm" (+ "comm_b64"), "event": label, "args": {...}}
    made from a cache of events keyed by the record's bytes from `pid` to
    its end (`cached`; the JSON lines from serialized templates, runs of
    equal records at once).  Bytes the C code leaves unset (padding, a
    buffer after its string's NUL) only cost cache misses; zero them to
    make storms cheap.

columns
    TIME, PID, COMM, EVENT, then ARGS: "name=value" pairs, texts quoted
    and escaped for the terminal, a cut text ending with "…"; fields whose
    label starts with "__" (a tracepoint's __syscall_nr) are left to JSON.
"""
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from rbtrace import fields as fmt
from rbtrace.codec import Codec, cstr, put_text, shown
from rbtrace.spec import Column, Field, Spec, pid_column, time_column

KINDS = ("auto", "int", "hex", "text", "array", "bytes", "hidden")
HEADER_FIELDS = ("ts_ns", "seq", "pid", "tid", "ppid", "uid", "comm", "proc_start_ns",
                 "rb_kind", "rb_pad", "cgroup_id")

# The members of an event line after the header; what is under "args"
# depends on the event (see the module docstring).
FIELDS = (
    Field("event", "name", 'what the event is: the tracepoint ("sched:sched_process_fork") '
          "for tp, the event struct's name for run"),
    Field("args", "object", "the event's own fields by name, in the struct's order: "
          'integers as numbers, pointers as "0x..." strings, texts as text (<name>_b64 '
          "beside one that is not UTF-8, <name>_truncated: true beside one cut short), "
          "other arrays as lists"),
)


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


def _args_unbound(e):
    raise AssertionError("the ARGS column is bound to its codec (GenericCodec)")


# priority: which columns a narrow terminal drops first (highest)
COLUMNS = (
    time_column(priority=5),
    pid_column(priority=1),
    Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4,
           doc="the command name"),
    Column("EVENT", lambda e: fmt.escape_str(e["event"]), width=28, min_width=12,
           keep="end", priority=3, doc="the event (the tracepoint, or the struct's name)"),
    Column("ARGS", _args_unbound, min_width=16, priority=2,
           doc='the event\'s fields, name=value, texts quoted ("…" after a cut one)'),
)

class GenericCodec(Codec):
    # The whole record after pid keys the cache of events: equal bytes,
    # equal event.
    cached = True
    variable = None

    def __init__(self, options, spec=None, events=None):
        spec = spec or getattr(sys.modules[type(self).__module__], "SPEC", None) or GENERIC
        super().__init__(options, spec)
        self.events = dict(events or {})
        self.event_structs = tuple(self.events)
        self._plans = {}
        self._kinds = {}            # event label -> {arg label: kind}
        self.columns = tuple(replace(c, value=self.args_cell) if c.value is _args_unbound
                             else c for c in self.columns)

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

    def bodies(self, event_type, records, offsets, data):
        n = len(records)
        plan = self._plan(event_type)
        cols = []
        for label, kind, name, fs, ftype in plan.steps:
            vals, trunc = self._column_values(records, kind, name, fs, ftype)
            cols.append((label, kind == "text", vals, trunc, label + "_truncated"))
        event_label = plan.label
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
            append({"event": event_label, "args": args})
        return out

    # --- the table -----------------------------------------------------------

    def args_cell(self, e) -> str:
        """ARGS: name=value pairs in the struct's order; texts quoted and
        escaped, a cut one ending with "…"."""
        args = e["args"]
        kinds = self._kinds.get(e["event"])
        if kinds is None:           # an event this probe did not decode (rbtrace show)
            kinds = _kinds_of(args)
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


_HEX = re.compile(r"0x[0-9a-f]+")


def _kinds_of(args) -> dict:
    """{label: kind} of an event's args, told from their JSON values: for
    an event decoded elsewhere (a recording replayed).  A text's
    <label>_b64 and <label>_truncated go with it."""
    out = {}
    for k, v in args.items():
        base = k.rsplit("_", 1)[0]
        if k.endswith(("_b64", "_truncated")) and isinstance(args.get(base), str):
            continue
        if isinstance(v, str):
            out[k] = "hex" if _HEX.fullmatch(v) else "text"
        else:
            out[k] = "array" if isinstance(v, list) else "int"
    return out


# The spec of a GenericCodec made on its own (for inspection and tests).
GENERIC = Spec(name="generic", summary="records decoded from their C struct", help="",
               codec=GenericCodec, fields=FIELDS, columns=COLUMNS,
               tally=(("commands", "comm"),))
