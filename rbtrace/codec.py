"""From ring records to events: one codec for every kind.

A codec is made from a kind's spec (rbtrace/spec.py) and the options of
one run.  It decodes the record header (struct rb_header) here and only
here; a kind says how the rest of its record becomes the members after the
header, in `bodies()`, and nothing else.

Two ways to decode a segment of records:

* every record on its own (the default): the header columns, then the
  kind's bodies, merged;
* from a cache of finished events (`cached = True`), for kinds whose
  storms repeat one event: everything after seq and ts_ns is a function
  of the record's bytes from `pid` up to the end of its fixed members,
  plus the used bytes of one variable area (`variable`, `used()`), so
  those bytes key a cache of events ("templates") and most events cost a
  slice, a lookup and a dict copy.  The JSON lines of such a kind are
  made without a dict per event: runs of equal records (one numpy compare
  for the segment) are formatted with one `%` over a line template.

json_lines() is byte for byte what render.JsonRenderer writes for
decode()'s dicts (tests/unit/test_open_decode.py and test_tp_format.py
hold the two equal, on open's and tp's storms).

A third way, without numpy, for a run's first records: rows_json_lines()
takes the records' payloads as bytes (RingConsumer.payloads()), reads
their members with struct (ringbuf.Layout) and makes the same events
through the same per-record code, for kinds whose codec has row_bodies()
(`rows = True`).  Importing numpy takes longer than loading a cached
probe; the session writes the first events this way while it imports.
tests/unit/test_rows_decode.py holds the lines equal to json_lines()'s.
"""
import base64
import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType


from rbtrace import fields


def cstr(raw: bytes) -> bytes:
    """Bytes up to the first NUL (numpy 'S' columns strip only trailing NULs)."""
    return raw.partition(b"\0")[0]


def put_text(event: dict, name: str, raw: bytes):
    """Store a traced string: exact text, plus `<name>_b64` when not UTF-8."""
    try:
        event[name] = raw.decode()
    except UnicodeDecodeError:
        event[name], event[name + "_b64"] = fields.json_text(raw)


def put_text_list(event: dict, name: str, raws: list):
    try:
        event[name] = [r.decode() for r in raws]
    except UnicodeDecodeError:
        pairs = [fields.json_text(r) for r in raws]
        event[name] = [t for t, _ in pairs]
        event[name + "_b64"] = [base64.b64encode(r).decode() for r in raws]


def shown(event: dict, name: str) -> str:
    """A traced string made safe for a terminal (see fields.escape_text)."""
    b64 = event.get(name + "_b64")
    if b64 is not None:
        return fields.escape_text(base64.b64decode(b64))
    return fields.escape_str(event[name])


def shown_list(event: dict, name: str) -> list:
    b64 = event.get(name + "_b64")
    if b64 is not None:
        return [fields.escape_text(base64.b64decode(x)) for x in b64]
    return [fields.escape_str(x) for x in event[name]]


class Codec:
    """Decodes one kind's records for one run.

    Made with the run's options (the command's values, plus `follow` and
    `filters_text`, kept as a read-only mapping) and the kind's spec, by
    default its module's SPEC.  What the
    session and the loader ask of it: name, columns, tally, table_tally,
    source_path(), cflags(), run_config(), event_structs, tracepoints,
    cost_hint, kernel_types, decode(), json_lines()."""

    event_structs = ()      # the C structs declared with RBTRACE_EVENT
    tracepoints = ()        # (program, "category:event") attached by name (tp)
    cost_hint = None        # what to lower when the verifier gives up
    kernel_types = False    # compile against the kernel's BTF, never headers
    cached = False          # events from a cache keyed by record bytes
    rows = False            # row_bodies(): decodes without numpy (rows_json_lines)
    variable = None         # the member holding variable-length bytes
    template_max = None     # keys longer than this are not cached

    def __init__(self, options: Mapping, spec=None):
        # A kind's codec lives in its spec's module (rbtrace/kinds/<kind>.py).
        self.spec = spec = spec or sys.modules[type(self).__module__].SPEC
        self.name = spec.name
        self.options = MappingProxyType(dict(options))
        self.tally = spec.tally
        self.table_tally = spec.table_tally
        self.clock = fields.Clock(utc=bool(self.options.get("utc")))
        self.columns = self._bind_time(spec.columns)
        self._templates = {}
        self._json_templates = {}
        self._layouts = {}

    @functools.cached_property
    def containers(self):
        """cgroup_id -> (container_id, pod_uid): rbtrace/cgroups.py's
        resolver, shared by every codec of the process (a test sets its own)."""
        from rbtrace import cgroups
        return cgroups.resolver()

    def _bind_time(self, columns):
        """The columns, with a TIME column (value None) showing this run's clock."""
        def time_cell(e):
            return self.clock.hms(e["ts_ns"])
        return tuple(replace(c, value=time_cell) if c.value is None else c for c in columns)

    # --- what the probe is compiled and run with ---------------------------

    def source_path(self):
        """The C file to compile.  Kinds that generate their source or take
        it from the user override this; rbtrace's own live under probes/."""
        from rbtrace.paths import probes_dir
        return probes_dir() / self.spec.source

    def cflags(self) -> dict:
        """The -D flags: the common ones, then each option's (spec.Option.cflags)."""
        o = self.options
        from rbtrace.spec import kind_tag
        flags = {"RB_KIND": kind_tag(self.spec.name)}
        if o.get("follow"):
            flags["FOLLOW"] = 1         # the command / --children tree, in the kernel
        if o.get("failed"):
            flags["FILTER_FAILED"] = 1
        for opt in self.spec.options:
            flags.update(opt.flags_for(o.get(opt.name)))
        if self.spec.offsets and self.wants_offsets():
            from rbtrace.kernel import btf_offsets
            flags.update(btf_offsets(self.spec.offsets))
        return flags

    def wants_offsets(self) -> bool:
        """Whether this run reads the kernel structs of spec.offsets."""
        return True

    def run_config(self) -> dict:
        """The process filters, checked in the kernel but written into the
        probe's rbtrace_config map at load (common.h), not compiled in:
        the compile cache then serves every -p, --tid, -u and -n."""
        o = self.options
        comm = os.fsencode(o["comm"]) if o.get("comm") else b""
        return {"pid": 0 if o.get("follow") else (o.get("pid") or 0),
                "tid": o.get("tid") or 0,
                "uid": o.get("uid"),
                "comm": comm,
                "cgroup": o.get("cgroup_dir")}

    # --- decoding ------------------------------------------------------------

    def bodies(self, event_type, records, offsets, data) -> list:
        """The members after the header, one dict per record, in order."""
        raise NotImplementedError

    def used(self, event_type, records):
        """Bytes used of each record's `variable` member (int64), never
        past its end."""
        raise NotImplementedError

    HEADER_COLUMNS = ("seq", "ts_ns", "pid", "tid", "ppid", "uid", "comm", "proc_start_ns",
                      "cgroup_id")

    def header_fields(self, records):
        """The header's columns as Python lists, read straight off the ring."""
        return tuple(records[name].tolist() for name in self.HEADER_COLUMNS)

    def heads(self, records, timed=True) -> list:
        """One dict per record with the header's members: type, seq, time,
        ts_ns, pid, tid, ppid, uid, user, comm (+ comm_b64), process,
        cgroup_id, container_id, pod_uid.
        Untimed: seq, time and ts_ns None, for a template."""
        return self._heads(self.header_fields(records), timed)

    def _heads(self, columns, timed=True) -> list:
        """heads() from the header's columns as lists (header_fields())."""
        seq, ts, pid, tid, ppid, uid, comm, start, cgroup = columns
        iso = self.clock.iso
        user_name = fields.user_name
        name = self.name
        boot = fields.boot_id()
        container = self.containers
        out = []
        for i in range(len(seq)):
            e = {"type": name, "seq": seq[i], "time": iso(ts[i]), "ts_ns": ts[i]} if timed else \
                {"type": name, "seq": None, "time": None, "ts_ns": None}
            e["pid"] = pid[i]
            e["tid"] = tid[i]
            e["ppid"] = ppid[i]
            e["uid"] = uid[i]
            e["user"] = user_name(uid[i])
            put_text(e, "comm", cstr(comm[i]))
            e["process"] = f"{boot}-{start[i]}-{pid[i]}"
            e["cgroup_id"] = cgroup[i]
            e["container_id"], e["pod_uid"] = container(cgroup[i])
            out.append(e)
        return out

    def decode(self, event_type, records, offsets, data) -> list:
        """The events of one ring segment, as dicts in JSON order."""
        if not len(records):
            return []
        if self.cached:
            return self._decode_cached(event_type, records, offsets, data)
        events = self.heads(records)
        for e, body in zip(events, self.bodies(event_type, records, offsets, data)):
            e.update(body)
        return events

    # --- without numpy: a run's first records -------------------------------

    def row_bodies(self, event_type, rows, payloads) -> list:
        """bodies() for records read without numpy: `rows` from
        ringbuf.Layout.rows(payloads), `payloads` the records' bytes."""
        raise NotImplementedError

    def rows_decode(self, event_type, payloads) -> list:
        """decode() of records given as bytes, without numpy."""
        if not payloads:
            return []
        layout = self._layouts.get(event_type)
        if layout is None:
            from rbtrace.ringbuf import Layout
            layout = self._layouts[event_type] = Layout(event_type)
        rows = layout.rows(payloads)
        events = self._heads(tuple([r[name] for r in rows] for name in self.HEADER_COLUMNS))
        for e, body in zip(events, self.row_bodies(event_type, rows, payloads)):
            e.update(body)
        return events

    def rows_json_lines(self, event_type, payloads) -> bytes:
        """json_lines() of records given as bytes, without numpy."""
        import orjson
        dumps = orjson.dumps
        return b"".join([dumps(e) + b"\n" for e in self.rows_decode(event_type, payloads)])

    def _spans(self, event_type, records, offsets):
        """(first, end) of each record's key bytes in the ring's data, and the
        used bytes of the variable area (or None)."""
        layout = event_type.dtype.fields
        key_off = layout["pid"][1]
        if self.variable is None:
            return (offsets + key_off), (offsets + event_type.size), None
        var_off = layout[self.variable][1]
        used = self.used(event_type, records)
        return (offsets + key_off), (offsets + var_off + used), used

    def _templates_for(self, event_type, records, offsets, data, lo, hi, picks):
        """Decode the records at `picks` (indexes) in one batch, untimed;
        return {key: template event}."""
        import numpy as np
        idx = np.asarray(picks, dtype=np.int64)
        heads = self.heads(records[idx], timed=False)
        bodies = self.bodies(event_type, records[idx], offsets[idx], data)
        found = {}
        for i, head, body in zip(picks, heads, bodies):
            head.update(body)
            found[bytes(data[lo[i]:hi[i]])] = head
        return found

    def _decode_cached(self, event_type, records, offsets, data):
        lo_arr, hi_arr, _ = self._spans(event_type, records, offsets)
        lo, hi = lo_arr.tolist(), hi_arr.tolist()
        seqs = records["seq"].tolist()
        stamps = records["ts_ns"].tolist()
        clock = self.clock
        wall = records["ts_ns"].astype("i8") + clock.offset_ns
        secs = (wall // 1_000_000_000).tolist()
        nsecs = (wall % 1_000_000_000).tolist()
        templates = self._templates
        if len(templates) > 4096:
            templates.clear()
        keys = [bytes(data[a:b]) for a, b in zip(lo, hi)]
        # Which keys have no template yet: one set operation in C, and a walk
        # over the keys only when a segment brings new ones.
        missing = {}
        absent = set(keys).difference(templates)
        if absent:
            for i, k in enumerate(keys):
                if k in absent and k not in missing:
                    missing[k] = i
        new = {}
        if missing:
            new = self._templates_for(event_type, records, offsets, data, lo, hi,
                                      list(missing.values()))
            limit = self.template_max
            for k, tpl in new.items():
                if limit is None or len(k) <= limit:
                    templates[k] = tpl
        last_sec = prefix = None
        out = []
        append = out.append
        for key, seq, ts, sec, ns in zip(keys, seqs, stamps, secs, nsecs):
            tpl = templates.get(key) or new[key]
            if sec != last_sec:
                # "2026-11-24T07:01:02." from Clock, which caches the second
                prefix = clock.iso(sec * 1_000_000_000 - clock.offset_ns)[:-10]
                last_sec = sec
            e = tpl.copy()
            e["seq"] = seq
            e["time"] = f"{prefix}{ns:09d}Z"
            e["ts_ns"] = ts
            append(e)
        return out

    def json_lines(self, event_type, records, offsets, data) -> bytes:
        """The JSON lines of a segment: exactly what JsonRenderer writes for
        decode()'s events."""
        import orjson
        if not len(records):
            return b""
        if not self.cached:
            dumps = orjson.dumps
            return b"".join([dumps(e) + b"\n"
                             for e in self.decode(event_type, records, offsets, data)])
        return self._json_cached(event_type, records, offsets, data)

    def _json_cached(self, event_type, records, offsets, data):
        import numpy as np
        import orjson
        lo_arr, hi_arr, used = self._spans(event_type, records, offsets)
        lo, hi = lo_arr.tolist(), hi_arr.tolist()
        clock = self.clock
        wall = records["ts_ns"].astype("i8") + clock.offset_ns
        sec_arr = wall // 1_000_000_000
        secs = sec_arr.tolist()
        cache = self._json_templates
        if len(cache) > 4096:
            cache.clear()
        n = len(lo)
        # A storm repeats one event.  Records whose bytes after ts/seq equal
        # their predecessor's (one numpy compare for the segment) within the
        # same second form a run, and a run is formatted with one `%` over a
        # repeated line template: no per-event Python work but the numbers.
        newrun = np.ones(n, dtype=bool)
        stride = int(offsets[1] - offsets[0]) if n > 1 else 0
        if n > 1 and stride > 0 and bool((np.diff(offsets) == stride).all()):
            layout = event_type.dtype.fields
            key_off = layout["pid"][1]
            var_off = layout[self.variable][1] if self.variable else event_type.size
            base = int(offsets[0])
            # The fixed members (the variable area's length among them)
            # compared as one value...
            fixed = np.ndarray((n,), dtype=np.dtype((np.void, var_off - key_off)), buffer=data,
                               offset=base + key_off, strides=(stride,))
            same = fixed[1:] == fixed[:-1]
            # ...then the used bytes of the variable area: the rest is
            # whatever an earlier record left there.
            if used is not None:
                width = min(int(used.max()), event_type.size - var_off)
                if width > 0:
                    area = np.ndarray((n, width), dtype=np.uint8, buffer=data,
                                      offset=base + var_off, strides=(stride, 1))
                    valid = np.arange(width)[None, :] < used[1:, None]
                    same &= ~((area[1:] != area[:-1]) & valid).any(axis=1)
            newrun[1:] = ~same
        newrun[1:] |= sec_arr[1:] != sec_arr[:-1]
        starts = np.flatnonzero(newrun).tolist()
        ends = starts[1:] + [n]
        keys = [bytes(data[lo[i]:hi[i]]) for i in starts]
        missing = {}
        for i, k in zip(starts, keys):
            if k not in cache and k not in missing:
                missing[k] = i
        new = {}
        if missing:
            head_len = len(self._json_head)
            limit = self.template_max
            found = self._templates_for(event_type, records, offsets, data, lo, hi,
                                        list(missing.values()))
            for k, tpl in found.items():
                # '%' in a path must survive the formatting below
                rest = orjson.dumps(tpl)[head_len:].replace(b"%", b"%%") + b"\n"
                new[k] = rest
                if limit is None or len(k) <= limit:
                    cache[k] = rest
        # All int64: with a uint64 column numpy would promote to float64,
        # exact only below 2**53 (ts_ns passes that after 104 days up).
        numbers = np.column_stack((records["seq"].astype(np.int64),
                                   (wall % 1_000_000_000).astype(np.int64),
                                   records["ts_ns"].astype(np.int64))).ravel().tolist()
        start = self._json_start
        out = []
        last_sec = prefix = None
        for s0, e0, key in zip(starts, ends, keys):
            rest = cache.get(key) or new[key]
            sec = secs[s0]
            if sec != last_sec:
                prefix = clock.iso(sec * 1_000_000_000 - clock.offset_ns)[:-10].encode()
                last_sec = sec
            unit = start + b'%d,"time":"' + prefix + b'%09dZ","ts_ns":%d,' + rest
            out.append(unit * (e0 - s0) % tuple(numbers[3 * s0:3 * e0]))
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


def make(spec, options: Mapping) -> Codec:
    """The codec of a kind for one run."""
    return spec.codec(options, spec)
