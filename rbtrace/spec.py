"""What a kind of event is, declared once: its spec.

Words used across rbtrace, one idea each:

kind     a kind of event and its command: exec, open, exit, tcp, tp, run.
         Declared by a spec (this module's `Spec`), in the module
         rbtrace/probes/<kind>.py as `SPEC`.
probe    the BPF program in C that a kind compiles (probes/<kind>.bpf.c)
         and, once in the kernel, bpf.LoadedProbe.
codec    what turns a kind's ring records into events, for one run with
         its options (rbtrace.codec.Codec); made from the spec.
session  the loop of one run: the ring drained, events rendered, losses
         counted (rbtrace.session.Session).

Everything else is derived from the spec, never written twice: the click
command and its options (rbtrace/cli.py), the -D flags the probe is
compiled with (Codec.cflags), the JSON fields and their JSON schema
(json_schema(), shipped as `rbtrace schema`), the table's columns, and the
man page's FIELDS and OPTIONS regions (rbtrace/mandoc.py).

This module imports nothing heavy: every command's options are built from
it at start-up.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

# --- fields: the members of an event line ------------------------------------

# How a member's value is made and shown; each has one JSON schema.
FIELD_KINDS = {
    "const": "the kind's name",
    "int": "an integer",
    "hex": 'an address or pointer, "0x7ffd12a0"',
    "errno": 'the error name of a negative result ("ENOENT"), or null',
    "user": "the user's login name, or the uid as text when it has none",
    "enum": "one of a fixed set of names (or numbers)",
    "flags": 'flag names joined by "|"',
    "name": 'a symbolic name, "SIGKILL"',
    "ip": 'an IPv4 or IPv6 address as text, "127.0.0.1", "::1"',
    "port": "a TCP or UDP port, 0 to 65535",
    "duration": "nanoseconds",
    "time": "ISO 8601 UTC with nanoseconds",
    "text": "exact text; <name>_b64 beside it holds the exact bytes when they are not UTF-8",
    "texts": "a list of texts; <name>_b64 beside it when one is not UTF-8",
    "bool": "true or false",
    "object": "an object of named values",
    "process": 'a process\'s key, "<boot id>-<start ns>-<pid>": the same in every event of '
               'one process, from its fork (or exec) to its exit, and in no other process\'s',
}

_SCHEMA = {
    "const": {"type": "string"},
    "int": {"type": "integer"},
    "hex": {"type": "string", "pattern": "^0x[0-9a-f]+$"},
    "errno": {"type": "string", "pattern": "^E[A-Z0-9_]+$"},
    "user": {"type": "string"},
    "enum": {},
    "flags": {"type": "string"},
    "name": {"type": "string"},
    "ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    "port": {"type": "integer", "minimum": 0, "maximum": 65535},
    "duration": {"type": "integer", "minimum": 0},
    "time": {"type": "string", "format": "date-time"},
    "text": {"type": "string"},
    "texts": {"type": "array", "items": {"type": "string"}},
    "bool": {"type": "boolean"},
    "object": {"type": "object"},
    "process": {"type": "string", "pattern": "^[0-9a-f-]+-[0-9]+-[0-9]+$"},
}


@dataclass(frozen=True)
class Field:
    """One member of a kind's event lines.

    null     the value may be null (said in `doc` when).
    when     "" when every line has the member; else when it is there
             ("execveat", "--full-path"): the schema leaves it optional.
    values   an enum's values.
    minimum, maximum   an integer's range, when narrower than its type.
    """
    name: str
    kind: str
    doc: str
    null: bool = False
    when: str = ""
    values: tuple = ()
    minimum: Optional[int] = None
    maximum: Optional[int] = None

    def __post_init__(self):
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field {self.name}: kind {self.kind!r} is not one of "
                             f"{', '.join(FIELD_KINDS)}")
        if self.kind == "enum" and not self.values:
            raise ValueError(f"field {self.name}: an enum needs its values")

    @property
    def names(self) -> tuple:
        """The JSON members it makes: a text adds <name>_b64 when not UTF-8."""
        if self.kind in ("text", "texts"):
            return (self.name, self.name + "_b64")
        return (self.name,)

    def schema(self) -> dict:
        s = dict(_SCHEMA[self.kind])
        if self.kind == "enum":
            s["enum"] = list(self.values)
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        if self.null:
            s = {"anyOf": [s, {"type": "null"}]}
        s["description"] = self.doc
        return s


# The header every record starts with (struct rb_header, probes/common.h),
# as every event line begins.
HEADER = (
    Field("type", "const", "the kind of event"),
    Field("seq", "int", "the event's number in this run, across CPUs: a gap is an event "
                        "dropped", minimum=0),
    Field("time", "time", "when it happened (UTC)"),
    Field("ts_ns", "int", "when it happened: CLOCK_MONOTONIC nanoseconds", minimum=0),
    Field("pid", "int", "the process (thread group id)", minimum=0),
    Field("tid", "int", "the thread", minimum=0),
    Field("ppid", "int", "the parent process", minimum=0),
    Field("uid", "int", "the real user id", minimum=0),
    Field("user", "user", "the user's name"),
    Field("comm", "text", "the command name (at most 15 bytes)"),
    Field("process", "process", "the process's key: the boot's id "
          "(/proc/sys/kernel/random/boot_id), the process's start (CLOCK_MONOTONIC "
          "nanoseconds, kept through exec) and its pid, joined by \"-\"; unlike pid, never "
          "reused: it joins a process's exec, its other events and its exit"),
)


# --- options -----------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One command-line option of a kind.

    flags    its names, ("-t", "--tid"); `name` is the Python name.
    type     a click type (or a factory of one: called with no argument).
    cflags   the -D flags a given value becomes: a name (NAME=value), or
             a function value -> {NAME: value}.  None: not compiled in.
    filter   how the value shows in the run's `filters` text (start
             record, footer): True for "name=value", a function of the
             value, or None when it is not a filter.
    rank     where it shows in `filters`: pid, tid, uid, comm, the kind's
             own, failed, children.
    man      the man page's text for it, when longer than `help`.
    """
    flags: tuple
    name: str
    help: str
    type: Any = None
    default: Any = None
    metavar: Optional[str] = None
    is_flag: bool = False
    show_default: bool = False
    callback: Optional[Callable] = None
    hidden: bool = False
    cflags: Any = None
    filter: Any = None
    rank: int = 5
    man: str = ""

    def flags_for(self, value) -> dict:
        if self.cflags is None or value in (None, False, ""):
            return {}
        if callable(self.cflags):
            return dict(self.cflags(value))
        return {self.cflags: int(value) if isinstance(value, bool) else value}

    def filter_text(self, value) -> Optional[str]:
        if self.filter is None or value in (None, "", False):
            return None
        if callable(self.filter):
            return self.filter(value)
        return self.name if self.is_flag else f"{self.name}={value}"


@dataclass(frozen=True)
class Argument:
    """A positional argument of a kind's command (tp's tracepoints, run's file)."""
    name: str
    metavar: str
    nargs: int = 1
    path: bool = False


# --- the table ----------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One column of the table and the plain lines.

    On a narrow terminal (see render.layout) columns are dropped whole,
    highest `priority` number first; a `whole` column (a number, an error
    name, a time) is never cut, and grows when a value is longer than
    `width`; other text is cut to `min_width` at the least, with "…".
    """
    header: str
    value: Optional[Callable[[dict], str]]   # event -> display text (escaped); None: TIME
    width: int = 0                  # 0: flexible, takes what is left
    min_width: int = 4
    justify: str = "left"
    keep: str = "start"             # which end survives truncation: "start" or "end"
    priority: int = 5               # 1 is dropped last
    whole: bool = False             # never cut: shown whole or not at all
    doc: str = ""


def time_column(priority=5):
    """TIME: local time of day to the millisecond (UTC with --utc).  Its
    value is bound to the run's clock by the codec."""
    return Column("TIME", None, width=12, priority=priority, whole=True,
                  doc="local time of day, to the millisecond (UTC with --utc)")


def pid_column(header="PID", key="pid", priority=1):
    return Column(header, lambda e: str(e[key]), width=7, justify="right",
                  priority=priority, whole=True,
                  doc="the parent process" if key == "ppid" else "the process")


# --- the spec ------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """A kind, declared once.

    name       the command, and the JSON lines' "type".
    summary    one line: what it traces (the command's short help, the man
               page's NAME).
    help       the command's --help text.
    source     the C file under probes/ (None: generated or the user's).
    fields     the members of an event line after the header (HEADER), in
               order.
    options    the kind's own options; the common ones (COMMON_OPTIONS,
               rbtrace/cli.py) come first.
    arguments  positional arguments.
    columns    the table's columns.
    tally      (summary name, record column) counted over every event
               (session.Tally); table_tally only for the live table.
    ring       the default --ring-size, from the rates measured here: the
               ring's pages count in full in rbtrace's memory, so a ring
               no larger than a kind needs.  An open() storm of a million
               failing calls (benchmarks/storm.c) dropped none into 8M and
               0.3% into 4M; exec, exit and tcp events come thousands of
               times slower.
    failed     -x/--failed's help for this kind; None: it has no failed
               events (the option is hidden and refused).
    codec      "module:Class" of the codec, relative to rbtrace: the
               kind's decoding (rbtrace/codec.py).
    offsets    kernel struct members the probe reads: {-D name: (struct,
               member)}, from the running kernel's BTF.
    before     None, or a function of the command's options called before
               anything else (tp --list): an exit status ends the command
               there, None goes on to trace.
    """
    name: str
    summary: str
    help: str
    codec: str
    fields: tuple = ()
    options: tuple = ()
    arguments: tuple = ()
    columns: tuple = ()
    tally: tuple = (("commands", "comm"), ("errors", "ret"))
    table_tally: tuple = ()
    ring: str = "8M"
    failed: Optional[str] = "Only failed calls."
    source: Optional[str] = None
    offsets: dict = field(default_factory=dict)
    fields_doc: str = ""
    before: Optional[Callable] = None

    @property
    def json_fields(self) -> tuple:
        """Every member an event line can have, in order."""
        return tuple(n for f in HEADER + self.fields for n in f.names)

    def option(self, name) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def with_options(self, *options) -> "Spec":
        return replace(self, options=self.options + tuple(options))


def json_schema(spec: Spec) -> dict:
    """The JSON schema (draft 2020-12) of one kind's event lines."""
    props, required = {}, []
    for f in HEADER + spec.fields:
        props[f.name] = f.schema()
        if f.name == "type":
            props[f.name] = {"const": spec.name, "description": f.doc}
        if not f.when:
            required.append(f.name)
        if f.kind in ("text", "texts"):
            b64 = ({"type": "string", "contentEncoding": "base64"} if f.kind == "text" else
                   {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}})
            b64["description"] = f"the exact bytes of {f.name}, present only when they are not UTF-8"
            props[f.name + "_b64"] = b64
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"rbtrace {spec.name} event",
            "type": "object", "properties": props, "required": required,
            "additionalProperties": False}


# --- the kinds -----------------------------------------------------------------

# Kinds by name: each spec module is imported only when its kind is used
# (`rbtrace exec` needs exec's alone).
KINDS = ("exec", "open", "exit", "tcp", "tp", "run")


def kind_tag(name: str) -> int:
    """The number a kind's programs put in every record's header (RB_KIND,
    rb_header.rb_kind in probes/common.h): records of several kinds share
    one ring (`rbtrace trace`) and are told apart by it and their size."""
    return KINDS.index(name) + 1


def load(name: str) -> Spec:
    if name not in KINDS:
        raise KeyError(name)
    return importlib.import_module(f"rbtrace.probes.{name}").SPEC


def codec_class(spec: Spec):
    module, cls = spec.codec.split(":")
    return getattr(importlib.import_module(f"rbtrace.{module}"), cls)
