"""rbtrace show FILE: a recorded stream replayed (issue #16, item 5).

A stream of JSON lines written by `rbtrace KIND --json` or `rbtrace trace
KINDS --json`, on this host or another, goes to the renderers a live run
uses (rbtrace/render.py): the live table on a terminal, plain lines, or
JSON lines again, after the filters; and it gets the end summary a live
run gets, counted by the same ProcessSummary (rbtrace/procsum.py) and
Tally (rbtrace/session.py) from numpy columns made of the events, one
segment per run of events of one kind, as the ring gives them.

The recorded run's losses are part of the picture: its `lost` lines are
replayed (plain: on stderr; JSON: written again), and the replay's
summary takes the run's counters (seen, submitted, dropped...) from its
`summary` line, or, when the recording has none (it was cut short), sums
its `lost` lines.

A line that is not one rbtrace writes (not JSON, not an object, of an
unknown type, a member missing or of the wrong type) is skipped and
counted: one line on stderr for each of the first few, and a total at
the end.  A start line of a newer JSON format version than this rbtrace
writes stops the replay at once (UsageError: one line, exit 2).
"""
from __future__ import annotations

import base64
import calendar
import collections
import os
import re
import select
import stat
import time

import numpy as np

from rbtrace import fields, notice
from rbtrace.errors import Exit, OutputError, RbtraceError, UsageError

WHO = "rbtrace show"
WARN_FIRST = 5              # bad lines shown one by one; the rest are counted
READ_BYTES = 1 << 20        # read at a time: a pipe gives what it has
MAX_LINE = 64 << 20         # longer is no line of rbtrace's (an exec's argv is < 2 MiB)
INT_RANGE = (-2**63, 2**63)  # what the numpy columns hold

# What a member of each field kind (spec.FIELD_KINDS) is in JSON.
_TYPES = {"const": str, "int": int, "hex": str, "errno": str, "user": str, "enum": (str, int),
          "flags": str, "name": str, "ip": str, "port": int, "duration": int, "time": str,
          "text": str, "texts": list, "bool": bool, "object": dict, "number": (int, float),
          "counts": dict, "command": dict, "kinds": dict, "processes": list, "other": dict,
          "process": str, "container": str, "uuid": str}

_ABSENT = object()
_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\.([0-9]{9})Z")


class TooNew(UsageError):
    """A recording of a newer JSON format version: its members may mean
    what this rbtrace can't know."""


class Bad(Exception):
    """A line skipped: `category` (what the total at the end counts by),
    and a detail for the line's own warning."""

    def __init__(self, category, detail=""):
        super().__init__(category + (f": {detail}" if detail else ""))
        self.category = category


SUMMARY = "replay a recorded JSON stream: the table, plain lines or JSON, and the summary"
HELP = """Replay FILE, JSON lines recorded with --json (FILE - reads standard input).

    The events go to the table (on a terminal), plain lines or, with
    --json, JSON lines again, after the filters; the end summary is the
    one the live run printed: per process and per kind, with the recorded
    run's drops.  A line that is not one rbtrace writes is skipped and
    counted; a recording of a newer JSON format version is refused."""


def options() -> tuple:
    """The options of `rbtrace show` (spec.Option): the live commands'
    own where they apply offline (rbtrace/cli.py), worded for a replay."""
    from dataclasses import replace
    from types import SimpleNamespace

    from rbtrace.cli import KindsType, common_options
    from rbtrace.spec import Option
    common = {o.name: o for o in common_options(SimpleNamespace(failed="", ring="8M"))}
    return (
        replace(common["json_out"], help="JSON lines again instead of the table.",
                man="Write the recording's lines again, one JSON object per line: its "
                    "**start** line (the replay's filters added to its **filters**), the "
                    "events that pass the filters, byte for byte, and its **lost** lines, "
                    "in their order, then a **summary** line counted by the replay (see "
                    "**DESCRIPTION**)."),
        replace(common["count"], help="Stop after N events.",
                man="Stop after *N* events shown (at least 1)."),
        replace(common["pid"], help="Only events of this process (thread group id).",
                man="Only the events whose **pid** is *PID* (1 to 4194304)."),
        replace(common["uid"], help="Only events of this user (name or number).",
                man="Only the events whose **uid** is *USER*, a number or a name, which is "
                    "looked up on this host (for a recording from another host, give the "
                    "number)."),
        replace(common["comm"], help="Only events whose command name is COMM.",
                man="Only the events whose **comm** is exactly *COMM* (1 to 15 bytes)."),
        replace(common["failed"], hidden=False,
                help="Only failed events: failed calls and connects, failed processes.",
                man="Only the events a live **-x** keeps: calls whose **ret** is negative "
                    "(**exec**, **open**), connects that failed (**tcp**: an error other "
                    "than **EINPROGRESS**, **EINTR** and **ERESTARTSYS**), exits with a "
                    "non-zero code or by a signal (**exit**). Events of **tp** and **run** "
                    "never fail."),
        Option(("--kinds",), "kinds", type=KindsType(), metavar="KIND[,KIND...]",
               help="Only events of these kinds (exec,open...).", rank=5,
               filter=lambda kinds: "kinds=" + ",".join(kinds),
               man="Only the events of these kinds, a comma-separated list (**exec,exit**)."),
        replace(common["utc"], help="TIME in UTC instead of local time.",
                man="Show TIME in UTC instead of this host's local time. The time of an "
                    "event is the one recorded (its **time** member), wherever it was "
                    "recorded."),
        replace(common["output"], help="Write to FILE instead of stdout.",
                man="Write to *FILE* instead of standard output: JSON with **--json**, plain "
                    "lines otherwise."),
        replace(common["debug"], help="Show tracebacks.",
                man="Show the Python traceback if **rbtrace show** itself fails "
                    "unexpectedly."),
    )


# --- checking a line against what its type declares ---------------------------------

# What the replay itself reads of each line: a line without one of these
# is bad.  Other members are checked when they are there, not required:
# new members appear within a format version (rbtrace(8), JSON OUTPUT), so
# a recording made by an older rbtrace lacks them; a column of the table
# or of the plain lines whose member is missing shows "?".
NEEDS = {
    "event": ("type", "seq", "time", "ts_ns", "pid", "tid", "ppid", "uid", "comm", "process"),
    "start": ("type", "version", "probe"),
    "lost": ("type", "dropped", "ringbuf_full", "map_full", "missed_by_kernel"),
    "summary": ("type",),
}


class Checker:
    """The members of one line type (spec.Field tuples): the JSON type and
    range of each, and which are required.  check(obj) raises Bad.

    A replay checks every line, so the check is one function made for the
    line type (Python source, compiled once): straight-line tests of
    exact types (orjson makes no subclasses), no loop over the members."""

    def __init__(self, fields_, required):
        self.required = frozenset(required)
        env = {"REQUIRED": self.required, "ABSENT": _ABSENT, "missing": _missing, "wrong": _wrong,
               "out_of_range": _out_of_range, "b64ok": _b64ok, "command_ok": _command_ok}
        src = ["def check(o):",
               "    if not REQUIRED.issubset(o):",
               "        missing(REQUIRED.difference(o))",
               "    g = o.get"]
        for i, f in enumerate(fields_):
            src += self._member(f, i, env)
            if f.kind in ("text", "texts"):
                src += self._b64(f.name + "_b64", f.kind == "texts")
        exec("\n".join(src), env)
        self.check = env["check"]

    @staticmethod
    def _member(f, i, env) -> list:
        name = repr(f.name)
        types = _TYPES.get(f.kind)
        if types is None:                   # a kind of member newer than this code: any value
            return []
        if isinstance(types, tuple):
            env[f"T{i}"] = types
            wrong_type = f"type(v) not in T{i}"
        else:
            wrong_type = f"type(v) is not {types.__name__}"
        out = [f"    v = g({name}, ABSENT)",
               "    if v is ABSENT:",
               "        pass",
               "    elif v is None:",
               "        pass" if f.null else f"        wrong({name}, 'null')",
               f"    elif {wrong_type}:",
               f"        wrong({name})"]
        lo, hi = INT_RANGE
        lo = lo if f.minimum is None else f.minimum
        hi = hi if f.maximum is None else f.maximum + 1
        if f.kind in ("int", "port", "duration"):
            out += [f"    elif not {lo} <= v < {hi}:", f"        out_of_range({name})"]
        elif f.kind == "enum":
            env[f"V{i}"] = frozenset(f.values)
            out += [f"    elif v not in V{i}:", f"        out_of_range({name})"]
        elif f.kind == "texts":
            out += ["    elif not all(type(x) is str for x in v):", f"        wrong({name})"]
        elif f.kind == "command":
            out += ["    elif not command_ok(v):", f"        wrong({name})"]
        return out

    @staticmethod
    def _b64(name, many) -> list:
        return [f"    v = g({name!r})",
                f"    if v is not None and not b64ok(v, {many}):",
                f"        wrong({name!r})"]


def _missing(names):
    names = sorted(names)
    raise Bad("a member missing", ", ".join(names[:3]) + (
        f" and {len(names) - 3} more" if len(names) > 3 else ""))


def _wrong(name, why=""):
    raise Bad("a member of the wrong type", f"{name} is null" if why else name)


def _out_of_range(name):
    raise Bad("a member out of range", name)


def _b64ok(v, many) -> bool:
    try:
        for x in (v if many else [v]):
            base64.b64decode(x, validate=True)
    except (TypeError, ValueError):
        return False
    return not many or isinstance(v, list)


def _command_ok(c: dict) -> bool:
    """A summary's command as the end line reads it: argv, status, signal."""
    argv = c.get("argv")
    return (isinstance(argv, list) and bool(argv) and all(isinstance(a, str) for a in argv)
            and (c.get("status") is None or type(c.get("status")) is int)
            and (c.get("signal") is None or isinstance(c.get("signal"), str))
            and (c.get("pid") is None or type(c.get("pid")) is int))


def raw_text(e: dict, name: str) -> bytes:
    """The exact bytes of a text member (its _b64 when there is one)."""
    b64 = e.get(name + "_b64")
    if b64 is not None:
        return base64.b64decode(b64)
    return e[name].encode("utf-8", "replace")


# --- the lines of a recording ---------------------------------------------------------

class Parser:
    """Sorts the lines of a recording: events (with their process's start,
    from the key), lost lines, the start line, the summary line; a bad
    line raises Bad, a start line of a newer format TooNew."""

    def __init__(self, name: str):
        from rbtrace import spec
        self.name = name
        self.spec = spec
        self.kinds = set(spec.KINDS)
        self.only = None            # the one kind a recording of one kind holds
        self.start = None           # the recorded start line
        self.summary = None         # the recorded summary line
        self.seen_events = False
        self.boot = None            # the boot id of the first event's key
        self.boots = set()
        self._checkers = {name: Checker(f, NEEDS[name]) for name, f in spec.LINES.items()}

    def checker(self, kind):
        c = self._checkers.get(kind)
        if c is None:
            s = self.spec.load(kind)
            # The summary also reads a process end's status.
            needs = NEEDS["event"] + ((s.process_end,) if s.process_end else ())
            c = self._checkers[kind] = Checker(self.spec.HEADER + s.fields, needs)
        return c

    def parse(self, raw: bytes):
        """('event', event, proc_start_ns) | ('lost', line) | ('start', line)
        | ('summary', line)."""
        import orjson
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Bad("not JSON") from None
        if not isinstance(obj, dict):
            raise Bad("not a JSON object")
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise Bad("no type")
        if kind in self.kinds:
            if self.only is not None and kind != self.only:
                raise Bad("an event of another kind",
                          f"{fields.for_message(kind)} in a recording of {self.only}")
            self.checker(kind).check(obj)
            boot, start, pid = _key(obj["process"])
            if pid != obj["pid"]:
                raise Bad("a member out of range", "process (its pid is not pid)")
            if boot != self.boot:
                if self.boot is None:
                    self.boot = boot
                self.boots.add(boot)
            self.seen_events = True
            return "event", obj, start
        if kind == "start":
            return "start", self._start(obj)
        if kind in ("lost", "summary"):
            self._checkers[kind].check(obj)
            if kind == "summary":
                if self.summary is not None:
                    raise Bad("a second summary line")
                self.summary = obj
            return kind, obj
        raise Bad("an unknown type", fields.for_message(kind)[:40])

    def _start(self, obj):
        from rbtrace.render import JSON_FORMAT_VERSION
        version = obj.get("version")
        if type(version) is int and version > JSON_FORMAT_VERSION:
            raise TooNew(f"{fields.for_message(self.name)} is in JSON format version {version}, "
                         f"newer than this rbtrace reads ({JSON_FORMAT_VERSION})",
                         hint="replay it with the rbtrace that recorded it, or a newer one")
        self._checkers["start"].check(obj)
        if self.start is not None and _same_run(obj, self.start):
            return obj          # the next file of a rotated recording, concatenated
        if self.start is not None or self.seen_events:
            raise Bad("a start line after the first",
                      "one recording per file: the lines after it are replayed as "
                      "the first recording's")
        probe = obj["probe"]
        if probe != "trace" and probe not in self.kinds:
            raise Bad("a start line of an unknown kind", fields.for_message(probe)[:40])
        self.start = obj
        if probe != "trace":
            self.only = probe
        return obj


def _same_run(a: dict, b: dict) -> bool:
    """Two start lines of one run: equal but for their file's number (the
    "part" of a recording written in several files)."""
    return ({k: v for k, v in a.items() if k != "part"}
            == {k: v for k, v in b.items() if k != "part"})


def _key(process: str):
    """(boot id, start ns, pid) of a process key "<boot>-<start>-<pid>"."""
    parts = process.rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        raise Bad("a member out of range", "process (not <boot id>-<start>-<pid>)")
    start, pid = int(parts[1]), int(parts[2])
    if start >= 2**64:
        raise Bad("a member out of range", "process")
    return parts[0], start, pid


def wall_ns(text: str):
    """Nanoseconds since the epoch of an event's `time`, or None."""
    m = _TIME.fullmatch(text)
    if m is None:
        return None
    try:
        t = time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return calendar.timegm(t) * 1_000_000_000 + int(m.group(2))


# --- the filters ------------------------------------------------------------------------

def failed(e: dict, spec) -> bool:
    """Whether an event is one the live -x keeps: the kind's own word
    (spec.failed_event), else a call that failed (a negative ret) or a
    process that ended with a non-zero status."""
    if spec.failed_event is not None:
        return spec.failed_event(e)
    if spec.process_end is not None:
        return e.get(spec.process_end, 0) != 0
    ret = e.get("ret")
    return isinstance(ret, int) and ret < 0


def make_filter(opts, specs):
    """A predicate over events for -p, -u, -n, -x and --kinds, or None."""
    tests = []
    if opts.get("kinds"):
        wanted = set(opts["kinds"])
        tests.append(lambda e: e["type"] in wanted)
    if opts.get("pid"):
        pid = opts["pid"]
        tests.append(lambda e: e["pid"] == pid)
    if opts.get("uid") is not None:
        uid = opts["uid"]
        tests.append(lambda e: e["uid"] == uid)
    if opts.get("comm"):
        comm = os.fsencode(opts["comm"])
        tests.append(lambda e: raw_text(e, "comm") == comm)
    if opts.get("failed"):
        tests.append(lambda e: failed(e, specs[e["type"]]))
    if not tests:
        return None
    return lambda e: all(t(e) for t in tests)


def filters_text(opts) -> str:
    """The replay's own filters, worded as a live run's start line words
    its filters (spec.filters_text)."""
    from rbtrace.spec import filters_text as worded
    return worded(options(), opts)


# --- columns for the summary -------------------------------------------------------------

_HEAD = [("seq", "u8"), ("ts_ns", "u8"), ("pid", "i8"), ("tid", "i8"), ("ppid", "i8"),
         ("uid", "u8"), ("comm", "S16"), ("proc_start_ns", "u8")]


def records(spec, events: list, starts: list, text_columns=()) -> np.ndarray:
    """The numpy columns ProcessSummary and Tally read off ring records,
    made from events of one kind: the header's (the process's start from
    its key), `ret` (0 where null), the column of a process end (exit's
    status), and each of `text_columns` the kind has (open's path) with
    its <name>_len, as the ring has them."""
    names = {f.name for f in spec.fields}
    dtype = list(_HEAD)
    ints = []
    if "ret" in names:
        ints.append("ret")
    if spec.process_end is not None and spec.process_end in names:
        ints.append(spec.process_end)
    dtype += [(n, "i8") for n in ints]
    texts = {}
    for name in text_columns:
        if name in names:
            raws = [raw_text(e, name) if name in e else b"" for e in events]
            texts[name] = raws
            dtype += [(name, f"S{max(1, max(map(len, raws)))}"), (name + "_len", "i8")]
    out = np.zeros(len(events), dtype=dtype)
    for name in ("seq", "ts_ns", "pid", "tid", "ppid", "uid"):
        out[name] = [e[name] for e in events]
    out["comm"] = [raw_text(e, "comm") for e in events]
    out["proc_start_ns"] = starts
    for name in ints:
        out[name] = [e.get(name) or 0 for e in events]
    for name, raws in texts.items():
        out[name] = raws
        out[name + "_len"] = [len(r) for r in raws]
    return out


def _forgiving(c):
    """A codec whose columns show "?" for an event without a member they
    read (a recording of another rbtrace version), instead of failing."""
    from dataclasses import replace

    def safe(value):
        def cell(e):
            try:
                return value(e)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                return "?"
        return cell
    c.columns = tuple(replace(col, value=safe(col.value)) for col in c.columns)
    return c


# --- the replay ------------------------------------------------------------------------

def open_input(path: str):
    """(fd, name for messages) of the recording; `-` is standard input.
    A file that can't be read: one line, exit 2."""
    if path == "-":
        return 0, "standard input"
    shown = fields.for_message(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot read {shown}: {e.strerror}") from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise UsageError(f"cannot read {shown}: Is a directory")
    except BaseException:
        os.close(fd)
        raise
    return fd, shown


def read_lines(fd: int, name: str, wait=None):
    """Lists of whole lines (bytes, no newline), as they come; a last line
    without its newline too; None for a line longer than MAX_LINE.
    `wait(fd)`: called before each read, False to stop reading.  A read
    error: RbtraceError (exit 1)."""
    buf = b""
    skipping = False
    while True:
        if wait is not None and not wait(fd):
            return
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            select.select([fd], [], [])
            continue
        except OSError as e:
            raise RbtraceError(f"cannot read {name}: {e.strerror}") from None
        if not data:
            break
        lines = []
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                continue
            lines.append(None)
            data = data[nl + 1:]
            skipping = False
        buf += data
        more = buf.split(b"\n")
        buf = more.pop()
        lines += more
        if len(buf) > MAX_LINE:
            buf, skipping = b"", True
        if lines:
            yield lines
    if skipping:
        yield [None]
    elif buf:
        yield [buf]


class Replay:
    """One replay: lines read, sorted, filtered, rendered and counted.
    opts: the command's options (json_out, output, count, pid, uid, comm,
    failed, kinds, utc)."""

    def __init__(self, opts, path):
        self.opts = opts
        self.fd, self.name = open_input(path)
        self._regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.parser = Parser(self.name)
        self.bad = collections.Counter()
        self.lineno = 0
        self.delivered = 0
        self.read_events = 0
        self.stop_reason = None
        self.output_error = None
        self.renderer = None
        self.lost_totals = collections.Counter()
        self.first_ts = self.last_ts = None
        self.clock = None
        self.deferred = []          # warnings held back while the table is shown

    # --- lines in ---------------------------------------------------------------

    def _items(self, lines):
        """The parsed lines of a batch; bad ones counted and skipped."""
        out = []
        parse = self.parser.parse
        for raw in lines:
            self.lineno += 1
            try:
                if raw is None:
                    raise Bad("a line too long", f"over {MAX_LINE >> 20} MiB")
                item = parse(raw)
            except Bad as e:
                if raw is not None and not raw.strip():
                    continue                  # a blank line: nothing at all
                self._bad(e)
                continue
            if item[0] == "event":
                out.append(("event", item[1], item[2], raw))
            else:
                out.append(item)
        return out

    def _bad(self, e: Bad):
        self.bad[e.category] += 1
        if sum(self.bad.values()) <= WARN_FIRST:
            line = f"{self.name} line {self.lineno}: skipped, {e}"
            if self.on_terminal():
                self.deferred.append(line)    # not across the table: after it
            else:
                notice.say(line, who=WHO)

    def on_terminal(self) -> bool:
        """Whether the table is (or will be) on the terminal."""
        return (not self.opts.get("json_out") and self.opts.get("output") is None
                and os.isatty(1))

    def bad_lines_text(self):
        """The total of bad lines, for the end, or None."""
        n = sum(self.bad.values())
        if not n:
            return None
        parts = ", ".join(f"{c} {k}" for k, c in self.bad.most_common())
        return (f"{n} line{'s' if n != 1 else ''} of {self.name} skipped ({parts})"
                + (f"; the first {WARN_FIRST} are above" if n > WARN_FIRST else ""))

    # --- the renderer --------------------------------------------------------------

    def _probe(self):
        """The codec whose columns the renderers show: the recorded kind's,
        or `rbtrace trace`'s (TYPE and DETAILS) for a recording of several
        kinds or of no start line."""
        from rbtrace import codec, spec, trace
        start = self.parser.start
        name = start["probe"] if start is not None else "trace"
        opts = {"utc": bool(self.opts.get("utc"))}
        specs = {k: spec.load(k) for k in spec.KINDS}
        if name != "trace":
            probe = _forgiving(codec.make(specs[name], opts))
            codecs = [probe]
        else:
            codecs = [_forgiving(codec.make(s, opts)) for s in specs.values()]
            probe = _forgiving(trace.TraceCodec(codecs, opts,
                                                trace.trace_spec(trace.kind_specs())))
        # The recording's clock: the offset from its events' time and ts_ns
        # (set at the first event), so TIME is the recorded wall time.
        self.clock = fields.Clock(offset_ns=0, utc=bool(self.opts.get("utc")))
        for c in [probe, *codecs]:
            c.clock = self.clock
        self._clock_set = False
        self.specs = specs
        return probe

    def _filters_text(self):
        recorded = (self.parser.start or {}).get("filters") or ""
        return " ".join(t for t in (recorded, filters_text(self.opts)) if t)

    def _renderer(self, probe, out, keys_fd):
        from rbtrace.render import JsonRenderer, PlainRenderer, TableRenderer
        if self.opts.get("json_out"):
            return JsonRenderer(out, probe)
        if self.on_terminal():
            from rich.console import Console
            return TableRenderer(Console(), probe, self._filters_text(), keys_fd=keys_fd)
        return PlainRenderer(out, probe)

    # --- the run ----------------------------------------------------------------------

    def run(self, out) -> int:
        """Replay into `out` (a render.Output); the exit status."""
        import signal

        from rbtrace.procsum import ProcessSummary
        from rbtrace.session import Tally, stop_signals
        self.keys_fd = None
        self.at_end = False
        # A stop signal ends the replay as it ends a live run: what was
        # replayed is summarised, and the status is 128 + the signal.
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in stop_signals()}
        try:
            batches = read_lines(self.fd, self.name, self._wait)
            # The first lines say what the recording is (its start line),
            # before anything is shown.
            first = []
            for lines in batches:
                first += self._items(lines)
                if first:
                    break
            probe = self._probe()
            self.keys_fd = self._keys_fd()
            self.renderer = renderer = self._renderer(probe, out, self.keys_fd)
            self.table = hasattr(renderer, "on_input")
            self.filter = make_filter(self.opts, self.specs)
            self.tally = Tally(probe.tally + (probe.table_tally
                                              if getattr(renderer, "shows_tally", False) else ()))
            self.text_columns = tuple(c for _, c in self.tally.spec if c not in ("comm", "ret"))
            self.procs = ProcessSummary(ends_traced=any(
                s.process_end for s in self._recorded_specs()))
            try:
                self._start(renderer)
                self._batch(first)
                for lines in batches:
                    self._batch(self._items(lines))
                    if self.stop_reason is not None:
                        break
                else:
                    self.at_end = self.stop_reason is None
                if self.table and self.keys_fd is not None:
                    self._tick()
                    while self._wait(None):     # the end stays on screen until q
                        pass
            except KeyboardInterrupt:
                self.stop_reason = "SIGINT"
            except BaseException:
                if self.table:                  # the terminal as it was
                    renderer.close(self._partial_summary())
                raise
            summary = self.summary()
            try:
                renderer.close(summary)
            except OutputError as e:
                self._output_failed(e)
            except BrokenPipeError:
                self._output_gone()
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.fd != 0:
                os.close(self.fd)
            if self.keys_fd not in (None, 0):
                os.close(self.keys_fd)
        self.result = summary
        if self.output_error is not None:
            return Exit.OUTPUT
        if self.stop_reason == "SIGINT":
            return Exit.INTERRUPTED
        if isinstance(self.stop_reason, int):
            return 128 + self.stop_reason
        return Exit.OK

    def _on_signal(self, signum, frame):
        self.stop_reason = signum

    def _partial_summary(self):
        try:
            return self.summary()
        except Exception:
            return {}

    def _recorded_specs(self):
        start = self.parser.start
        if start is not None and start["probe"] != "trace":
            return [self.specs[start["probe"]]]
        return []

    def _keys_fd(self):
        """Where the table reads its keys: the terminal on stdin, or, when
        the recording comes on standard input, /dev/tty."""
        if self.opts.get("json_out") or self.opts.get("output") or not os.isatty(1):
            return None
        if os.isatty(0):
            # (the recording typed on the terminal: no keys)
            return 0 if self.fd != 0 else None
        try:
            return os.open("/dev/tty", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def _wait(self, fd):
        """Before a read of the recording (fd), or at its end (None): the
        table takes its keys meanwhile.  False: stop (q, or --count
        reached and then q)."""
        keys = self.keys_fd if self.renderer is not None and self.table else None
        if keys is None:
            # A pipe may be quiet for long (a live run's output): wait in
            # slices, for a stop signal to be seen.
            while fd is not None and self.stop_reason is None and not self._regular:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    break
            return fd is not None and self.stop_reason is None
        while self.stop_reason in (None, "count"):
            if fd is not None and self.stop_reason == "count":
                return False
            ready, _, _ = select.select([keys] + ([fd] if fd is not None else []), [], [], 0.5)
            if keys in ready and self.renderer.on_input(keys) == "quit":
                self.stop_reason = "quit"
                break
            if fd is not None and fd in ready:
                return True
            self._tick()
        return False

    def _start(self, renderer):
        start = self.parser.start
        # The recorded start line's members (where and how it was recorded),
        # the replay's filters added to its own.
        info = {k: v for k, v in (start or {"probe": "trace"}).items()
                if k not in ("type", "version", "part")}
        info["filters"] = self._filters_text()
        from rbtrace.render import JsonRenderer
        if isinstance(renderer, JsonRenderer) and start is None:
            return              # nothing recorded to say it: no start line made up
        try:
            renderer.start(info)
        except OutputError as e:
            self._output_failed(e)
        except BrokenPipeError:
            self._output_gone()

    def _batch(self, items):
        """Render and count one batch, in order: runs of events, lost lines."""
        events, starts, raws = [], [], []
        keep = self.filter
        for item in items:
            if self.stop_reason is not None:
                break
            what = item[0]
            if what == "event":
                e = item[1]
                self.read_events += 1
                if not self._clock_set:
                    self._set_clock(e)
                if keep is not None and not keep(e):
                    continue
                events.append(e)
                starts.append(item[2])
                raws.append(item[3])
                if self.opts.get("count") and \
                        self.delivered + len(events) >= self.opts["count"]:
                    self._deliver(events, starts, raws)
                    events, starts, raws = [], [], []
                    self.stop_reason = self.stop_reason or "count"
            elif what == "lost":
                self._deliver(events, starts, raws)
                events, starts, raws = [], [], []
                self._lost(item[1])
        self._deliver(events, starts, raws)
        if self.table:
            self._tick()

    def _set_clock(self, e):
        wall = wall_ns(e["time"])
        if wall is not None:
            self.clock.offset_ns = wall - e["ts_ns"]
            self._clock_set = True

    def _lost(self, line):
        record = {k: v for k, v in line.items() if k != "type"}
        for k in ("dropped", "ringbuf_full", "map_full", "missed_by_kernel", "not_followed"):
            self.lost_totals[k] += record.get(k, 0)
        if self.output_error is not None or self.stop_reason == "output closed":
            return
        try:
            self.renderer.lost(record)
        except OutputError as e:
            self._output_failed(e)
        except BrokenPipeError:
            self._output_gone()

    def _deliver(self, events, starts, raws):
        if not events or self.output_error is not None or self.stop_reason == "output closed":
            return
        r = self.renderer
        n = len(events)
        try:
            if getattr(r, "wants_bytes", False):
                r.write_lines(b"\n".join(raws) + b"\n")
            elif r.wants_all:
                r.events(events)
            else:
                # The table: every event may be scrolled back to, searched
                # and shown in a process's events, up to what it keeps.
                r.count(n, events[-max(r.tail, getattr(r, "history", 0)):])
        except OutputError as e:
            n = e.lines_kept
            self._count(events[:n], starts[:n])
            self._output_failed(e)
            return
        except BrokenPipeError:
            self._output_gone()
            return
        self._count(events, starts)

    def _count(self, events, starts):
        """Count delivered events: per kind and process, and the tallies;
        one segment per run of one kind."""
        if not events:
            return
        self.delivered += len(events)
        ts0, ts1 = events[0]["ts_ns"], events[-1]["ts_ns"]
        self.first_ts = ts0 if self.first_ts is None else min(self.first_ts, ts0)
        self.last_ts = ts1 if self.last_ts is None else max(self.last_ts, ts1)
        i = 0
        n = len(events)
        while i < n:
            kind = events[i]["type"]
            j = i + 1
            while j < n and events[j]["type"] == kind:
                j += 1
            spec = self.specs[kind]
            seg = events[i:j]
            recs = records(spec, seg, starts[i:j], self.text_columns)
            if spec.process_end is not None:
                self.procs.ends_traced = True

            def decode(mask, seg=seg):
                return [seg[k] for k in np.flatnonzero(mask).tolist()]

            self.procs.add(spec, recs, decode)
            self.tally.add(recs)
            i = j

    def _tick(self):
        t = self.lost_totals
        recorded = self.parser.summary or {}
        self.renderer.tick({"delivered": self.delivered,
                            "dropped": recorded.get("dropped", t["dropped"]),
                            "missed_by_kernel": recorded.get("missed_by_kernel",
                                                             t["missed_by_kernel"]),
                            "rate": 0, "ring_fill": 0, "tally": self.tally,
                            # the process view's counts (issue #16 item 3), as a
                            # live run's session hands them over
                            "procs": self.procs})

    def _output_failed(self, e):
        self.output_error = self.output_error or e
        self.stop_reason = "output error"
        self.renderer.output_failed()

    def _output_gone(self):
        self.stop_reason = "output closed"
        self.renderer.output_gone()

    # --- the summary --------------------------------------------------------------------

    def summary(self) -> dict:
        """The summary line of the replay: the recorded run's counters (from
        its summary line, else its lost lines summed), the events replayed,
        and the top errors, kinds and processes counted over them."""
        from rbtrace.spec import SUMMARY
        recorded = self.parser.summary
        start = self.parser.start
        t = self.lost_totals
        submitted = self.read_events
        dropped = t["ringbuf_full"] + t["map_full"]
        span = (self.last_ts - self.first_ts) / 1e9 if self.first_ts is not None else 0
        rec = {"probe": start["probe"] if start else "trace",
               "seen": submitted + dropped, "submitted": submitted,
               "not_delivered_count_reached": 0, "not_delivered_output_closed": 0,
               "dropped": dropped, "ringbuf_full": t["ringbuf_full"],
               "map_full": t["map_full"], "missed_by_kernel": t["missed_by_kernel"],
               "not_followed": t["not_followed"], "discarded": 0,
               "duration_s": round(span, 3), "stopped_by": "end"}
        if recorded is not None:
            rec.update(recorded)
            # Whether a kind that ends processes was traced is the recorded
            # run's to say (no exit event at all may have been delivered):
            # its processes are "running" or "exited" then, else "unknown".
            states = {p.get("state") for p in recorded.get("processes") or ()
                      if isinstance(p, dict)}
            if states & {"running", "exited"}:
                self.procs.ends_traced = True
            elif "unknown" in states:
                self.procs.ends_traced = False
        made = {"delivered": self.delivered,
                "top_errors": (dict(self.tally.top("errors"))
                               if "errors" in self.tally.counts else {})}
        made.update(self.procs.result(boot=self.parser.boot or fields.boot_id()))
        out = {}
        for f in SUMMARY[1:]:
            if f.name in made:
                out[f.name] = made[f.name]
            elif f.name in rec:
                out[f.name] = rec[f.name]
        return out

    def notes(self) -> list:
        """Lines for stderr at the end, before the summary's."""
        out = list(self.deferred)
        if self.parser.summary is None and self.read_events and self.at_end:
            out.append(f"{self.name} has no summary line (the recording was cut short?): "
                       f"its losses are summed from its lost lines")
        if len(self.parser.boots) > 1:
            out.append(f"{self.name} holds events of {len(self.parser.boots)} boots: their "
                       f"processes are told apart by pid and start time alone")
        bad = self.bad_lines_text()
        if bad:
            out.append(bad)
        return out
