"""rbtrace run: a probe of the user's own, FILE.bpf.c, decoded from its C.

The file follows rbtrace's own probes' conventions through probes/rbtrace.h
(the user-facing header, documented in man/rbtrace-run.8): it declares
event structs that begin with `struct rb_header h`, names each with
RBTRACE_EVENT(), and writes records with rbtrace_reserve() and
rbtrace_submit(), which apply the filters and keep the loss counters.
Everything else is the engine's: compile and load (bpf.LoadedProbe, with
the user's includes pasted in and #line markers, so the compiler's and the
verifier's messages name the user's file and lines), the ring, the
accounting, the renderers.  Records are decoded by GenericCodec, with
each member shown under "args" by its C path.

Before anything is compiled, the source is read for what the compiler
can't say (read_probe): the RBTRACE_EVENT names, the hooks (only those
BCC attaches by itself load; uprobes and the like would sit unattached),
and writes to the ring that bypass the counters.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rbtrace import notice
from rbtrace.bpf import USER_PROBE_COST_HINT
from rbtrace.csource import code_only
from rbtrace.errors import ProbeError, UsageError
from rbtrace.fields import for_message
from rbtrace.generic import (COLUMNS, FIELDS, HEADER_FIELDS, EventSpec, FieldSpec,
                                    GenericCodec)
from rbtrace.spec import Argument, Spec

__all__ = ["SPEC", "RunCodec", "UserProbe", "read_probe", "ring_warnings", "counts_errors",
           "examples_dir"]

HEADER = "rbtrace.h"
# The headers that declare the ring `events` and the counters.
RING_HEADERS = (HEADER, "common.h")

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', re.M)
_EVENT = re.compile(r"\bRBTRACE_EVENT\s*\(\s*(\w+)\s*\)")
_MARK = re.compile(r"\bRBTRACE_(HEX|BYTES)\s*\(\s*(\w+)\s*,\s*([^)]*?)\s*\)")
_MARK_KINDS = {"HEX": "hex", "BYTES": "bytes"}

# Hooks as BCC spells them: (kind, pattern giving the hook's name).  BCC
# attaches functions by their name's prefix (BPF._trace_autoload in BCC
# 0.26: kprobe__, kretprobe__, tracepoint__, raw_tracepoint__, kfunc__,
# kretfunc__, lsm__); the macros of its helpers.h expand to those names.
_HOOKS = (
    ("tracepoint", re.compile(r"\bTRACEPOINT_PROBE\s*\(\s*(\w+\s*,\s*\w+)\s*\)")),
    ("tracepoint", re.compile(r"\btracepoint__(\w+?__\w+)\s*\(")),
    ("raw_tracepoint", re.compile(r"\bRAW_TRACEPOINT_PROBE\s*\(\s*(\w+)\s*\)")),
    ("raw_tracepoint", re.compile(r"\braw_tracepoint__(\w+)\s*\(")),
    ("kprobe", re.compile(r"\bk(?:ret)?probe__(\w+)\s*\(")),
    ("fentry", re.compile(r"\bK(?:RET)?FUNC_PROBE\s*\(\s*(\w+)")),
    ("fentry", re.compile(r"\bk(?:ret)?func__(\w+)\s*\(")),
)
# Program kinds rbtrace run refuses: what it is, and why.
_REFUSED = (
    (re.compile(r"\bLSM_PROBE\s*\(\s*(\w+)|\blsm__(\w+)\s*\("),
     "an LSM program, which can refuse the operations it hooks: rbtrace run loads only "
     "programs that observe"),
    (re.compile(r"\bKMOD_RET\s*\(\s*(\w+)|\bkmod_ret__(\w+)\s*\("),
     "a KMOD_RET program, which changes what the function returns: rbtrace run loads only "
     "programs that observe"),
    (re.compile(r"\bBPF_ITER\s*\(\s*(\w+)"),
     "an iterator, which rbtrace run would never run"),
)
# A program for a uprobe, USDT probe or kprobe attached by name from user
# space: a non-static function taking struct pt_regs *, which BCC leaves
# unloaded unless told to attach it.
_UNATTACHED = re.compile(r"^[ \t]*int[ \t]+(\w+)[ \t]*\([ \t]*struct[ \t]+pt_regs[ \t]*\*", re.M)
_ATTACHED_PREFIXES = ("kprobe__", "kretprobe__", "tracepoint__", "raw_tracepoint__",
                      "kfunc__", "kretfunc__", "lsm__")
# Hooks common.h declares itself when following a command (FOLLOW=1).
_FOLLOW_HOOKS = ("sched_process_fork", "sched_process_exit")

_RING_CALL = re.compile(r"\b(\w+)\s*\.\s*(ringbuf_reserve|ringbuf_output|ringbuf_submit|"
                        r"ringbuf_discard|perf_submit)\s*\(")


def examples_dir() -> Path:
    """The example probes: examples/ beside probes/ in a checkout, and
    <prefix>/share/rbtrace/examples installed (setup.cfg's data_files)."""
    from rbtrace.paths import probes_dir
    return probes_dir().parent / "examples"


@dataclass
class Found:
    """Something found in the source, and where."""
    what: str
    path: str          # as the user named it (the main file) or as included
    line: int

    def where(self):
        return f"{for_message(self.path)}:{self.line}"


@dataclass
class UserProbe:
    path: Path                             # absolute, for the compiler
    shown: str                             # as the user gave it, for messages
    events: list = field(default_factory=list)       # Found(struct name)
    marks: dict = field(default_factory=dict)        # (struct, C path) -> FieldSpec kind
    hooks: list = field(default_factory=list)        # Found("kind name")
    refused: list = field(default_factory=list)      # Found(reason)
    unattached: list = field(default_factory=list)   # Found(function name)
    ring_calls: list = field(default_factory=list)   # Found("map.call")
    mentions: set = field(default_factory=set)       # identifiers used in the code
    code: list = field(default_factory=list)         # each file's code, without comments
    includes_ring: bool = False

    @property
    def event_names(self):
        return tuple(f.what for f in self.events)


def _read_text(path: str, shown: str) -> str:
    """The file's text; a file that can't be read is a usage error."""
    if os.path.isdir(path):
        raise UsageError(f"{for_message(shown)} is a directory, not a probe file")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except FileNotFoundError:
        hint = None
        example = examples_dir() / os.path.basename(path)
        if os.sep not in shown and example.is_file():
            hint = f"rbtrace's example is {example}"
        raise UsageError(f"{for_message(shown)}: no such file", hint=hint) from None
    except OSError as e:
        raise UsageError(f"cannot read {for_message(shown)}: {e.strerror}") from None


def _line(text, pos):
    return text.count("\n", 0, pos) + 1


def _user_files(path: str, shown: str):
    """(path to show, text) of the user's file and the local headers it
    includes, as csource.inline_local_includes resolves them; rbtrace's own
    headers are left out (but noted by name)."""
    from rbtrace.paths import probes_dir
    ours = probes_dir().resolve()
    seen, todo, out, ring = set(), [(os.path.abspath(path), shown)], [], False
    while todo:
        p, name = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        text = _read_text(p, name)
        out.append((name, text))
        for inc in _INCLUDE.findall(code_only(text)):
            for d in (os.path.dirname(p), str(ours)):
                candidate = os.path.abspath(os.path.join(d, inc))
                if os.path.isfile(candidate):
                    break
            else:
                continue                  # <...> or not found: the compiler's to say
            if os.path.basename(inc) in RING_HEADERS:
                ring = True
            if Path(candidate).resolve().parent == ours:
                continue                  # rbtrace's own header
            todo.append((candidate, inc))
    return out, ring


def read_probe(path, follow=False) -> UserProbe:
    """What rbtrace needs to know of a probe file before compiling it.

    Raises UsageError when the file can't be read, ProbeError when it
    can't work as an rbtrace probe (nothing would be attached, no event
    struct, no ring)."""
    shown = os.fspath(path)
    probe = UserProbe(Path(os.path.abspath(shown)), for_message(shown))
    files, probe.includes_ring = _user_files(shown, shown)
    for name, text in files:
        code = code_only(text)
        # A #define line (RBTRACE_EVENT's own, or a wrapper) declares nothing.
        plain = re.sub(r"^[ \t]*#(?:\\\n|\\.|[^\\\n])*", lambda m: "\n" * m.group(0).count("\n"),
                       code, flags=re.M)
        probe.code.append(plain)
        probe.mentions.update(re.findall(r"\b[A-Za-z_]\w*\b", plain))
        for m in _EVENT.finditer(plain):
            probe.events.append(Found(m.group(1), name, _line(plain, m.start())))
        for m in _MARK.finditer(plain):
            member = re.sub(r"\s+", "", m.group(3))
            probe.marks[(m.group(2), member)] = _MARK_KINDS[m.group(1)]
        for kind, pattern in _HOOKS:
            for m in pattern.finditer(plain):
                hook = m.group(1)
                if kind == "tracepoint":               # "syscalls:sys_enter_kill"
                    hook = re.sub(r"\s*,\s*|__", ":", hook)
                probe.hooks.append(Found(f"{kind} {hook}", name, _line(plain, m.start())))
        for pattern, why in _REFUSED:
            for m in pattern.finditer(plain):
                what = re.sub(r"\s+", "", m.group(0)) + ")"      # "BPF_ITER(task)", "lsm__f()"
                probe.refused.append(Found(f"{what} is {why}", name, _line(plain, m.start())))
        for m in _UNATTACHED.finditer(plain):
            if not m.group(1).startswith(_ATTACHED_PREFIXES):
                probe.unattached.append(Found(m.group(1), name, _line(plain, m.start())))
        for m in _RING_CALL.finditer(plain):
            probe.ring_calls.append(Found(f"{m.group(1)}.{m.group(2)}", name,
                                          _line(plain, m.start())))
    _check(probe, follow)
    return probe


def _check(probe: UserProbe, follow: bool):
    see = "see rbtrace-run(8)"
    if probe.refused:
        f = probe.refused[0]
        raise ProbeError(f"{f.where()}: {f.what}", hint=see)
    if probe.unattached:
        f = probe.unattached[0]
        raise ProbeError(f"{f.where()}: {f.what}(struct pt_regs *) would never be attached: "
                         f"rbtrace run attaches tracepoints and raw tracepoints, not uprobes "
                         f"or USDT probes", hint=see)
    if not probe.hooks:
        raise ProbeError(f"{probe.shown} hooks nothing: rbtrace run attaches the functions "
                         f"declared with TRACEPOINT_PROBE(category, event) and "
                         f"RAW_TRACEPOINT_PROBE(event)", hint=see)
    if not probe.includes_ring:
        raise ProbeError(f'{probe.shown} does not #include "{HEADER}", which declares the '
                         f"ring buffer rbtrace reads", hint=see)
    if not probe.events:
        raise ProbeError(f"{probe.shown} declares no event struct: name each struct it "
                         f"writes to the ring with RBTRACE_EVENT(name) after it", hint=see)
    seen = {}
    for f in probe.events:
        if f.what in seen:
            raise ProbeError(f"{f.where()}: RBTRACE_EVENT({f.what}) again (first at "
                             f"{seen[f.what].where()})")
        seen[f.what] = f
    if follow:
        for f in probe.hooks:
            kind, _, name = f.what.partition(" ")
            if kind == "raw_tracepoint" and name in _FOLLOW_HOOKS:
                raise UsageError(f"{f.where()}: RAW_TRACEPOINT_PROBE({name}) is also what "
                                 f"rbtrace uses to follow processes (-- CMD, --children)",
                                 hint=f"hook TRACEPOINT_PROBE(sched, {name}) instead")


def ring_warnings(probe: UserProbe) -> list:
    """One-line warnings about records rbtrace can't account for: written
    to the ring without the counters rbtrace_reserve() and rbtrace_submit()
    keep (unless the file keeps them itself), or written elsewhere."""
    out = []
    direct = [f for f in probe.ring_calls if f.what.startswith("events.")]
    uncounted = []
    if "STAT_RINGBUF_FULL" not in probe.mentions:
        uncounted += [(f, "dropped") for f in direct if f.what.endswith(("_reserve", "_output"))]
    if "STAT_SUBMITTED" not in probe.mentions:
        uncounted += [(f, "sent") for f in direct if f.what.endswith(("_submit", "_output"))]
    if uncounted:
        calls = sorted({f.what + "()" for f, _ in uncounted})
        kinds = sorted({k for _, k in uncounted})
        out.append(f"{uncounted[0][0].where()}: {' and '.join(calls)} called directly: records "
                   f"{' and '.join(kinds)} are not counted, so loss accounting is off "
                   f"(rbtrace_reserve() and rbtrace_submit() count them)")
    other = [f for f in probe.ring_calls if not f.what.startswith("events.")]
    if other:
        f = other[0]
        out.append(f"{f.where()}: {f.what}() writes where rbtrace does not read: rbtrace "
                   f"reads the ring buffer `events` only")
    return out


# A member `ret` declared with one of these is a system call's result, and
# its negative values are counted as errors (session.Tally compares the
# column with 0, which a text column can't be).
_SIGNED = {"s8", "s16", "s32", "s64", "__s8", "__s16", "__s32", "__s64", "int8_t", "int16_t",
           "int32_t", "int64_t", "short", "int", "long", "ssize_t"}
_RET_MEMBER = re.compile(r"\b(\w+)\s+ret\s*(\[|;)")


def counts_errors(probe: UserProbe) -> bool:
    """Whether every member called `ret` is a signed integer (not an array)."""
    found = [m for text in probe.code for m in _RET_MEMBER.finditer(text)
             if m.group(1) not in ("return", "goto", "case")]         # `return ret;`
    return bool(found) and all(m.group(1) in _SIGNED and m.group(2) == ";" for m in found)


class RunCodec(GenericCodec):
    cost_hint = USER_PROBE_COST_HINT        # when the verifier gives up
    # A user's probe may read kernel structs by their C types: it compiles
    # against the running kernel's BTF, never another kernel's headers.
    kernel_types = True

    def __init__(self, options, spec=None):
        super().__init__(options, spec)
        self.user = None
        self._described = set()
        if options.get("file") is None:
            return                      # described, not run (docs and tests)
        self.user = read_probe(options["file"], follow=bool(options.get("follow")))
        if options.get("failed") and not ({"rbtrace_ret_wanted", "FILTER_FAILED"}
                                          & self.user.mentions):
            raise UsageError(f"-x/--failed: {self.user.shown} does not say which calls "
                             f"failed (it never calls rbtrace_ret_wanted())")
        if counts_errors(self.user):
            self.tally = (("commands", "comm"), ("errors", "ret"))
        self.events = {name: EventSpec(label=name) for name in self.user.event_names}
        self.event_structs = self.user.event_names
        for line in ring_warnings(self.user):
            notice.say(f"warning: {line}", who="rbtrace run")

    def source_path(self):
        return self.user.path

    def _describe(self, event_type):
        """The struct's members under "args" by their C paths ("in.a",
        "ins[1].b"), shown as RBTRACE_HEX / RBTRACE_BYTES asked."""
        paths = (event_type.dtype.metadata or {}).get("c_paths", {})
        marks = self.user.marks if self.user else {}
        fields = {}
        for column in event_type.dtype.names:
            if column in HEADER_FIELDS:
                continue
            path = paths.get(column, column)
            kind = "auto"
            for (struct, member), k in marks.items():
                if struct == event_type.name and (
                        path == member or path.startswith((member + ".", member + "["))):
                    kind = k
            fields[column] = FieldSpec(kind=kind, label=path)
        self.events[event_type.name] = EventSpec(label=event_type.name, fields=fields)
        self._described.add(event_type.name)

    def _plan(self, event_type):
        if event_type.name not in self._described:
            self._describe(event_type)
        return super()._plan(event_type)


SPEC = Spec(
    name="run",
    # The man page's words (rbtrace/mandoc.py): this kind's own, in place
    # of the common ones.
    man={
        # rbtrace(8), COMMANDS
        "command": ("A probe of your own: a BCC C file that includes *rbtrace.h*, its records decoded "
                    "from its C structs, with the filters, outputs and loss accounting of every "
                    "command."),
        "argument.file": "The probe to compile, load and read (see **DESCRIPTION**).",
        "pid": "Only this process (thread group id, 1 to 4194304), all its threads. Checked in"
               " the kernel by **rbtrace_reserve()** and **rbtrace_task_wanted()**.",
        "uid": "Only this user, a name or a number: the real user id of the current thread. "
               "Checked in the kernel, as **-p**.",
        "comm": "Only threads whose command name is exactly *COMM* (1 to 15 bytes). Checked in"
                " the kernel, as **-p**.",
        "failed": "Only failed calls: where the probe calls **rbtrace_ret_wanted()**, only "
                  "negative return values. Refused for a probe that does not call it.",
        "debug": "Show tracebacks, and the compiler's and the verifier's whole output, or, for"
                 " a probe taken from the compile cache, a line saying so.",
        "column.TIME": "Time of day of the event (when the record was reserved), local (UTC "
                       "with --utc), to the millisecond: *HH*:*MM*:*SS*.*mmm*.",
        "column.PID": "The process the probe ran in (thread group id).",
        "column.COMM": "The command name of the thread the probe ran in.",
        "column.EVENT": "The event struct's name.",
        "column.ARGS": "The struct's members, *name***=***value* in the order they are "
                       "declared; texts in double quotes.",
        "event.seq": "The event's sequence number: from 0 for each run, one per "
                     "**rbtrace_reserve()** that passed the filters, shared by all CPUs. A gap"
                     " in the numbers is an event dropped because the ring was full (see "
                     "**rbtrace**(8), LOSS ACCOUNTING).",
        "event.time": "Wall-clock time of the event, decoded from **ts_ns**: ISO 8601 in UTC "
                      "with nanoseconds, as in “**2026-11-24T07:23:04.247907736Z**”.",
        "event.ts_ns": "Raw time of the event, when the record was reserved: the kernel's "
                       "**CLOCK_MONOTONIC** in nanoseconds, as **clock_gettime**(2) gives it.",
        "event.pid": "The process the probe ran in (thread group id).",
        "event.tid": "The thread the probe ran in.",
        "event.ppid": "That process's parent (its thread group id).",
        "event.uid": "Raw real user id of the thread (in the initial user namespace).",
        "event.user": "**uid**, decoded: the login name from the password database, or the "
                      "number as a string.",
        "event.comm": "The thread's command name (at most 15 bytes).",
        "event.event": "The name of the event struct, as given to **RBTRACE_EVENT**, such as "
                       "**\"kill_event\"**.",
        "event.args": "An object: the struct's members after the header, by their C path, "
                      "shown as **Event structs** in DESCRIPTION says. A text member that is "
                      "not UTF-8 has its exact bytes in base64 beside it, as *name***_b64** .",
        "start.filters": "The filters in effect, as text (**pid=1234 failed**), or an empty "
                         "string.",
        "lost.map_full": "Of those, events the probe counted with **rbtrace_count_map_full()**"
                         " (state it could not store).",
        "summary.submitted": "Events written to the ring (counted by **rbtrace_submit()**).",
        "summary.map_full": "Events counted with **rbtrace_count_map_full()**.",
        "summary.discarded": "Records the probe reserved and then discarded with "
                             "**events.ringbuf_discard()** instead of sending them. They are "
                             "not lost events and are not in **seen**, but a record reserved "
                             "with **rbtrace_reserve()** had taken a sequence number, so each "
                             "leaves a gap in **seq**.",
        "summary.top_errors": "For a probe whose event structs have a member **ret** declared "
                              "as a signed integer (a system call's return value), the five "
                              "most frequent errors (negative values) among the events "
                              "delivered, as an object from error name to count, {**\"ESRCH\": "
                              "2**}; otherwise empty.",
    },
    summary="trace with a BPF probe of your own, decoded from its C source",
    help="""A probe of your own: a BCC C file that includes "rbtrace.h".

    Its event structs (each beginning with struct rb_header h, named with
    RBTRACE_EVENT) are decoded from the C source; events are written with
    rbtrace_reserve() and rbtrace_submit(), which apply -p, -u, -n and
    -- CMD and count drops.  TRACEPOINT_PROBE and RAW_TRACEPOINT_PROBE
    hooks are attached.  See rbtrace-run(8) for the API and examples.
    """,
    codec=RunCodec,
    source=None,                # the user's (RunCodec.source_path)
    ring="8M",
    # errors are counted when the file's `ret` members are signed (RunCodec)
    tally=(("commands", "comm"),),
    arguments=(Argument("file", "FILE.bpf.c", path=True),),
    fields=FIELDS,
    columns=COLUMNS,
)
