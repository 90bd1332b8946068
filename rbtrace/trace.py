"""rbtrace trace KIND[,KIND...]: several kinds in one run, one ring.

Each kind's probe is compiled on its own (and kept in the compile cache
as its one-kind command keeps it), then all are loaded into one run that
shares the ring, the seq counter, the loss counters, the filters' values
and the followed processes (bpf.LoadedRun).  Every record's header says
which kind wrote it (rb_kind), so the stream comes out in ring order and
each segment goes to its kind's codec: JSON lines are exactly what the
kind's own command writes.

The plain lines (and for now the live table, which uses the same
columns) show TIME PID COMM TYPE and the kind's own columns in one DETAILS
text.
"""
from __future__ import annotations

from types import MappingProxyType

from rbtrace import fields
from rbtrace.spec import Column, Spec, kind_tag, pid_column


# Columns of a kind that the plain line shows once, before TYPE.
_SHOWN_BEFORE = {"TIME", "PID", "COMM"}


def kind_specs() -> dict:
    """The kinds `rbtrace trace` takes, {name: spec}: every kind with a
    probe of rbtrace's own and no arguments, and a kind whose argument
    takes CATEGORY:EVENT words (spec.Argument.colon_words).  run's file is
    not taken yet."""
    from rbtrace import spec
    out = {}
    for name in spec.KINDS:
        s = spec.load(name)
        if (s.source and not s.arguments) or colon_argument(s) is not None:
            out[name] = s
    return out


def colon_argument(s):
    """The argument of kind `s` that takes the CATEGORY:EVENT words, or None."""
    return next((a for a in s.arguments if a.colon_words), None)


def parse_kinds(text: str, specs=None) -> tuple:
    """(the kinds of "exec,open,sched:sched_switch" in the order given, {kind:
    its CATEGORY:EVENT words}).  A ValueError (one line) for an unknown,
    empty or repeated one."""
    specs = kind_specs() if specs is None else specs
    kinds, words = [], {}
    colon = [k for k, s in specs.items() if colon_argument(s) is not None]
    for word in text.split(","):
        word = word.strip()
        if not word:
            raise ValueError(f"'{fields.for_message(text)}': an empty kind (give "
                             f"KIND[,KIND...], e.g. exec,open,exit)")
        if ":" in word and colon:
            kind = colon[0]
            if word in words.get(kind, ()):
                raise ValueError(f"tracepoint '{fields.for_message(word)}' is given twice")
            words.setdefault(kind, []).append(word)
            if kind not in kinds:
                kinds.append(kind)
            continue
        if word not in specs:
            raise ValueError(f"unknown kind '{fields.for_message(word)}': the kinds are "
                             f"{', '.join(k for k in specs if k not in colon)}"
                             + (", or a tracepoint CATEGORY:EVENT" if colon else ""))
        if colon_argument(specs[word]) is not None and word not in words:
            raise ValueError(f"'{word}' takes its tracepoints as CATEGORY:EVENT words of "
                             f"KINDS (e.g. sched:sched_switch)")
        if word in kinds:
            raise ValueError(f"kind '{word}' is given twice")
        kinds.append(word)
    return kinds, words


def kind_options(specs, kind, options, words) -> dict:
    """The options of one kind's codec: the run's, with its CATEGORY:EVENT
    words as its argument."""
    if kind not in words:
        return dict(options)
    return {**options, colon_argument(specs[kind]).name: tuple(words[kind])}


def options_by_owner(specs: dict) -> tuple:
    """(the options of every kind, each once, in kind order; {option name:
    the kinds that have it}).  Two kinds may share an option only if it is
    the same one."""
    options, owners, seen = [], {}, {}
    for kind, s in specs.items():
        for o in s.options:
            if o.name in seen:
                if seen[o.name] != o:
                    raise ValueError(f"kinds {owners[o.name][0]} and {kind} both have an "
                                     f"option {o.name}, not the same")
            else:
                seen[o.name] = o
                options.append(o)
            owners.setdefault(o.name, []).append(kind)
    return tuple(options), owners


def details_text(columns, event) -> str:
    """A kind's own columns of one event, as one text: "header=value"."""
    out = []
    for c in columns:
        value = c.value(event)
        if value != "":
            out.append(f"{c.header.lower()}={value}")
    return " ".join(out)


def trace_spec(specs: dict) -> Spec:
    options, _ = options_by_owner(specs)
    named = [k for k, s in specs.items() if colon_argument(s) is None]
    colon = [k for k, s in specs.items() if colon_argument(s) is not None]
    kinds = ", ".join(named) + "".join(f", and tracepoints CATEGORY:EVENT ({k})" for k in colon)
    return Spec(
        name="trace",
        summary="trace several kinds of event at once, in one stream",
        help=f"""Several kinds of event in one stream, in the order they happened.

    KINDS is a comma-separated list of: {kinds}.  Every kind's programs
    write to one ring with one seq numbering, so the stream is in ring
    order; the filters (-p, -u, -n, -x, -- CMD, --pid --children) apply to
    every kind, and a kind's own options (--path for open) need that kind
    among KINDS.  JSON lines are each kind's own.""",
        codec=TraceCodec,
        options=options,
        ring="8M",
        failed=("Only failed events, as each kind's -x keeps them: failed calls, "
                "connects that failed, exits with a non-zero code or by a signal."),
        tally=tuple(dict.fromkeys(t for s in specs.values() for t in s.tally)),
        table_tally=tuple(dict.fromkeys(t for s in specs.values() for t in s.table_tally)),
    )


class TraceCodec:
    """The codecs of the kinds of one run, behind the interface Session and
    the renderers use: each ring segment goes to the codec whose kind
    wrote it (its event type's tag)."""

    name = "trace"

    def __init__(self, codecs, options, spec: Spec):
        self.spec = spec
        self.codecs = list(codecs)
        self.options = MappingProxyType(dict(options))
        self.by_tag = {kind_tag(c.spec.name): c for c in self.codecs}
        self.by_name = {c.name: c for c in self.codecs}
        self.tally = spec.tally
        self.table_tally = spec.table_tally
        self.clock = fields.Clock(utc=bool(self.options.get("utc")))
        self._details = {c.name: tuple(col for col in c.columns
                                       if col.header not in _SHOWN_BEFORE)
                         for c in self.codecs}
        self.columns = (
            Column("TIME", lambda e: self.clock.hms(e["ts_ns"]), width=12, priority=5,
                   whole=True, doc="local time of day, to the millisecond (UTC with --utc)"),
            pid_column(priority=1),
            Column("COMM", lambda e: _comm(e), width=15, min_width=6, priority=3,
                   doc="the command name"),
            Column("TYPE", lambda e: e["type"], width=5, priority=2, whole=True,
                   doc="the kind of event"),
            Column("DETAILS", self.details, priority=4,
                   doc="the kind's own columns, as name=value"),
        )

    def details(self, event) -> str:
        return details_text(self._details[event["type"]], event)

    def codec_for(self, event_type):
        return self.by_tag[event_type.tag]

    def decode(self, event_type, records, offsets, data) -> list:
        return self.by_tag[event_type.tag].decode(event_type, records, offsets, data)

    def json_lines(self, event_type, records, offsets, data) -> bytes:
        return self.by_tag[event_type.tag].json_lines(event_type, records, offsets, data)

    def probe_args(self) -> list:
        """LoadedProbe's arguments for each kind's probe, in kind order."""
        return [dict(source=c.source_path(), cflags=dict(c.cflags()),
                     event_structs=c.event_structs, tracepoints=c.tracepoints,
                     cost_hint=c.cost_hint, kernel_types=c.kernel_types,
                     config=c.run_config())
                for c in self.codecs]


def _comm(e) -> str:
    from rbtrace.codec import shown
    return shown(e, "comm")


def make(kinds, options, words=None) -> TraceCodec:
    """The run's codec for `kinds` (names), every kind's codec made with
    the same options (and its CATEGORY:EVENT words, `words`)."""
    from rbtrace import codec
    specs = kind_specs()
    words = words or {}
    return TraceCodec([codec.make(specs[k], kind_options(specs, k, options, words))
                       for k in kinds], options, trace_spec(specs))
