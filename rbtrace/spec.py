"""What a kind of event is, declared once: its spec.

Words used across rbtrace, one idea each:

kind     a kind of event and its command: exec, open, exit, tcp, tp, run.
         Declared by a spec (this module's `Spec`), in the module
         rbtrace/kinds/<kind>.py as `SPEC`.
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
import os
from dataclasses import dataclass, field
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
    "number": "a number, perhaps with a fraction",
    "counts": "an object from names to counts",
    "command": "the command run after --: argv, pid, status, signal",
    "kinds": "an object from kind names to {events, errors}",
    "processes": "a list of processes, each an object (see the summary's processes member)",
    "other": "an object with processes and events: those counted together",
    "container": "a container's id, in hexadecimal, or null",
    "uuid": 'a UUID, "2f1c7a4e-0b3d-4c55-9e2a-6d1f0c8b7a90", or null',
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
    "time": {"type": "string", "format": "date-time",
             "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{9}Z$"},
    "text": {"type": "string"},
    "texts": {"type": "array", "items": {"type": "string"}},
    "bool": {"type": "boolean"},
    "object": {"type": "object"},
    "number": {"type": "number"},
    "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
    "command": {"type": "object", "additionalProperties": False,
                "required": ["argv", "pid", "status", "signal"],
                "properties": {
                    "argv": {"type": "array", "items": {"type": "string"}},
                    "pid": {"type": ["integer", "null"]},
                    "status": {"type": ["integer", "null"], "minimum": 0, "maximum": 255},
                    "signal": {"type": ["string", "null"]}}},
    "process": {"type": "string", "pattern": "^[0-9a-f-]+-[0-9]+-[0-9]+$"},
    "container": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "uuid": {"type": "string",
             "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
    "kinds": {"type": "object", "additionalProperties": {
        "type": "object", "additionalProperties": False, "required": ["events", "errors"],
        "properties": {
            "events": {"type": "integer", "minimum": 0},
            "errors": {"type": "object",
                       "additionalProperties": {"type": "integer", "minimum": 0}}}}},
    "processes": {"type": "array", "items": {
        "type": "object", "additionalProperties": False,
        "required": ["process", "pid", "ppid", "parent", "comm", "argv", "events", "kinds",
                     "errors", "state", "exit_code", "signal", "duration_ns"],
        "properties": {
            "process": {"type": "string", "pattern": "^[0-9a-f-]+-[0-9]+-[0-9]+$"},
            "pid": {"type": "integer", "minimum": 0},
            "ppid": {"type": "integer", "minimum": 0},
            "parent": {"anyOf": [{"type": "string", "pattern": "^[0-9a-f-]+-[0-9]+-[0-9]+$"},
                                 {"type": "null"}]},
            "comm": {"type": "string"},
            "argv": {"anyOf": [{"type": "array", "items": {"type": "string"}},
                               {"type": "null"}]},
            "events": {"type": "integer", "minimum": 0},
            "kinds": {"type": "object",
                      "additionalProperties": {"type": "integer", "minimum": 0}},
            "errors": {"type": "object",
                       "additionalProperties": {"type": "integer", "minimum": 0}},
            "state": {"enum": ["exited", "running", "unknown"]},
            "exit_code": {"type": ["integer", "null"], "minimum": 0, "maximum": 255},
            "signal": {"type": ["string", "null"]},
            "duration_ns": {"type": ["integer", "null"], "minimum": 0}}}},
    "other": {"type": "object", "additionalProperties": False,
              "required": ["processes", "events"],
              "properties": {"processes": {"type": "integer", "minimum": 0},
                             "events": {"type": "integer", "minimum": 0}}},
}


@dataclass(frozen=True)
class Field:
    """One member of a kind's event lines.

    null     the value may be null (said in `doc` when).
    when     "" when every line has the member; else when it is there
             ("execveat", "--full-path"): the schema leaves it optional.
    values   an enum's values.
    minimum, maximum   an integer's range, when narrower than its type.
    man      the man page's text for it (rbtrace/mandoc.py's markup:
             **bold**, *italic*), when longer than `doc`.
    """
    name: str
    kind: str
    doc: str
    null: bool = False
    when: str = ""
    values: tuple = ()
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    man: str = ""

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
# as every event line begins.  `man` is the text of every kind's page; a
# kind words one for itself with Spec.man["event.<name>"].
HEADER = (
    Field("type", "const", "the kind of event"),
    Field("seq", "int", "the event's number in this run, across CPUs: a gap is an event "
                        "dropped", minimum=0,
          man="The event's sequence number: from 0 for each run, one per event the probe "
              "tried to write, shared by all CPUs. A gap in the numbers is an event dropped "
              "because the ring was full (see **rbtrace**(8), LOSS ACCOUNTING)."),
    Field("time", "time", "when it happened (UTC)",
          man="Wall-clock time of the event, decoded from **ts_ns**: ISO 8601 in UTC with "
              "nanoseconds, as in “**2026-11-24T07:23:04.247907736Z**”. The offset between "
              "the monotonic clock and the wall clock is measured once at start, so a clock "
              "step during the run does not make times jump."),
    Field("ts_ns", "int", "when it happened: CLOCK_MONOTONIC nanoseconds", minimum=0,
          man="Raw time of the event: the kernel's **CLOCK_MONOTONIC** in nanoseconds (time "
              "since boot, not counting suspend), as **clock_gettime**(2) gives it."),
    Field("pid", "int", "the process (thread group id)", minimum=0,
          man="The process (thread group id)."),
    Field("tid", "int", "the thread", minimum=0, man="The thread."),
    Field("ppid", "int", "the parent process", minimum=0,
          man="The parent process (its thread group id)."),
    Field("uid", "int", "the real user id", minimum=0,
          man="Raw real user id (in the initial user namespace)."),
    Field("user", "user", "the user's name",
          man="**uid**, decoded: the login name from the password database when the event "
              "is decoded, or the number as a string."),
    Field("comm", "text", "the command name (at most 15 bytes)",
          man="The command name (at most 15 bytes)."),
    Field("process", "process", "the process's key: the boot's id "
          "(/proc/sys/kernel/random/boot_id), the process's start (CLOCK_MONOTONIC "
          "nanoseconds, kept through exec) and its pid, joined by \"-\"; unlike pid, never "
          "reused: it joins a process's exec, its other events and its exit",
          man="The process's key, unique across pid reuse: *boot_id*-*start*-*pid*, the "
              "boot's id (*/proc/sys/kernel/random/boot_id*), the process's start time (its "
              "leader's, CLOCK_MONOTONIC nanoseconds, kept through **execve**(2)) and its "
              "pid. Every event of one process has the same key, from its fork to its exit, "
              "so an exit or an open joins its exec by it without guessing."),
    Field("cgroup_id", "int", "the thread's cgroup v2 id (bpf_get_current_cgroup_id()): the "
          "inode number of its directory in the cgroup v2 mount; 1 for the root cgroup",
          minimum=0,
          man="The thread's cgroup v2 id, as **bpf_get_current_cgroup_id**() gives it: the "
              "inode number of the cgroup's directory in the cgroup v2 mount (**stat -c %i** "
              "*DIR*), 1 for the root cgroup. On a hybrid host the v2 mount may be "
              "*/sys/fs/cgroup/unified*; **rbtrace** finds it in */proc/self/mountinfo*."),
    Field("container_id", "container", "the container the thread is in (64 hex digits), from "
          "its cgroup v2 path; null outside a container", null=True,
          man="The container the thread is in, 64 hexadecimal digits, read off its cgroup "
              "v2 path: the last component that names a container, *docker-ID.scope*, "
              "*cri-containerd-ID.scope*, *crio-ID.scope* or *libpod-ID.scope* (systemd's "
              "names), or an *ID* alone (the cgroupfs driver's, as in */docker/ID* and "
              "*/kubepods/burstable/podUID/ID*). **null** outside a container, and when the "
              "cgroup was gone before **rbtrace** looked up its path. The same in every "
              "event of one **cgroup_id**."),
    Field("pod_uid", "uuid", "the Kubernetes pod the thread is in (its uid), from its cgroup "
          "v2 path; null outside a pod", null=True,
          man="The Kubernetes pod the thread is in: its uid as Kubernetes shows it "
              "(*metadata.uid*), read off the cgroup v2 path (*kubepods-burstable-podUID.slice* "
              "with the systemd driver, its dashes as underscores; *podUID* with cgroupfs). "
              "**null** outside a pod.")
)

# The man text of <name>_b64 beside a text member.
B64_MAN = ("Only when the bytes of **{name}** are not valid UTF-8: the exact bytes in base64 "
           "(RFC 4648, with padding). The string member then holds the bytes decoded with "
           "U+FFFD for each invalid sequence, so the output stays valid UTF-8.")
# Said once per page, at the header's comm_b64: how every *_b64 member reads.
B64_RULE = (" The original bytes of a member *name* are always the base64 decoding of "
            "*name***_b64** when it is present, and *name* encoded as UTF-8 otherwise; each "
            "*name***_b64** comes right after *name*.")
B64_LIST_MAN = ("Only when one of **{name}** is not valid UTF-8: the exact bytes of every "
                "one, as a list of base64 strings (RFC 4648, with padding). The strings of "
                "**{name}** then hold the bytes decoded with U+FFFD for each invalid "
                "sequence, so the output stays valid UTF-8.")


# --- the run's own lines: start, lost, summary ---------------------------------
# Written by rbtrace.session for every kind, in this order.  A kind words
# one for itself with Spec.man["start.<name>"], ["lost.<name>"]...

# What ended a run (summary's stopped_by).
STOPPED_BY = ("count", "duration", "quit", "output closed", "output error", "command exited",
              "process exited", "end", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM")

START = (
    Field("type", "const", "a start line"),
    Field("version", "int", "the JSON format (schema) version", minimum=1,
          man="The JSON format version, currently {version}: the version of the schema "
              "(**rbtrace schema**). It changes when a member "
              "changes meaning or disappears; new members and new line types may appear "
              "without a change, and should be ignored."),
    Field("probe", "const", "the kind traced"),
    Field("rbtrace_version", "name", "the version of rbtrace that wrote the lines",
          man="The version of **rbtrace** that wrote the lines, as **rbtrace --version** "
              "says it (**version** above is the version of the format)."),
    Field("hostname", "name", "the host's name (/proc/sys/kernel/hostname)",
          man="The host's name, as */proc/sys/kernel/hostname* holds it (in **rbtrace**'s "
              "UTS namespace)."),
    Field("boot_id", "name", "the boot's id (/proc/sys/kernel/random/boot_id), as in every "
          "event's process key",
          man="The boot's id, */proc/sys/kernel/random/boot_id*: with **hostname**, where and "
              "in which boot the events happened; the first part of every event's "
              "**process**."),
    Field("kernel", "name", "the kernel's release (uname -r)",
          man="The running kernel's release, as **uname -r** says it."),
    Field("ring_bytes", "int", "the ring buffer's size in bytes", minimum=1,
          man="The ring buffer's size in bytes."),
    Field("filters", "name", "the filters in effect, as text, or an empty string",
          man="The filters in effect, as text (**{filters}**), or an empty string."),
    Field("part", "int", "with -o: the file's number in this run, 1 for the first; every "
          "file begun after it (--rotate-size, SIGUSR1) starts with a start line numbered "
          "one more", when="-o FILE", minimum=1,
          man="Only in a file written with **-o**: the file's number in this run, 1 for the "
              "first. Every file begun after it (by **--rotate-size**, or by **SIGUSR1** "
              "finding *FILE* empty) begins with the same start line numbered one more, so "
              "each file can be read on its own."),
)

LOST = (
    Field("type", "const", "a lost line"),
    Field("dropped", "int", "events dropped since the previous lost line", minimum=0,
          man="Events dropped since the previous **lost** line: **ringbuf_full** + "
              "**map_full**."),
    Field("ringbuf_full", "int", "of those, events that found the ring buffer full", minimum=0,
          man="Of those, events that found the ring buffer full."),
    Field("map_full", "int", "of those, events lost because a map of the probe was full",
          minimum=0,
          man="Of those, calls whose entry could not be stored in the probe's map of calls "
              "in flight (more than the map holds at once)."),
    Field("missed_by_kernel", "int", "probe runs the kernel skipped since the previous "
          "lost line", minimum=0,
          man="Probe runs the kernel skipped since the previous **lost** line: the kernel "
              "does not run a tracing program on a CPU where a BPF program (of any tool) is "
              "already running, and only counts it (**recursion_misses** in **bpftool "
              "prog**). Each skipped run may be a lost event."),
    Field("not_followed", "int", "child processes not followed since the previous lost line",
          minimum=0,
          man="Child processes not followed since the previous **lost** line because the map "
              "of followed processes was full (with **-- CMD** or **--pid --children**)."),
    Field("total_dropped", "int", "all events dropped since the start", minimum=0,
          man="All events dropped since the start."),
    Field("total_missed_by_kernel", "int", "all probe runs the kernel skipped since the start",
          minimum=0, man="All probe runs the kernel skipped since the start."),
    Field("otlp_dropped", "int", "with --otlp: events not exported since the previous lost line",
          when="--otlp", minimum=0,
          man="With **--otlp**: events that will not reach the collector, since the previous "
              "**lost** line: their batch found the export queue full, the collector refused "
              "it, or (in the last **lost** line) it was not acknowledged within "
              "**--otlp-timeout** at the end. Still written to the output."),
    Field("total_otlp_dropped", "int", "with --otlp: all events not exported since the start",
          when="--otlp", minimum=0,
          man="With **--otlp**: all events not exported since the start."),
)

SUMMARY = (
    Field("type", "const", "a summary line"),
    Field("probe", "const", "the kind traced"),
    Field("seen", "int", "events the probe saw and tried to write", minimum=0,
          man="Events the probe saw and tried to write: **submitted** + **dropped**."),
    Field("submitted", "int", "events written to the ring", minimum=0,
          man="Events written to the ring."),
    Field("delivered", "int", "events written to the output", minimum=0,
          man="Events written to the output."),
    Field("not_delivered_count_reached", "int", "events not shown because --count was reached",
          minimum=0,
          man="Events written to the ring but not shown because **--count** was reached."),
    Field("not_delivered_output_closed", "int", "events not shown because the output went away",
          minimum=0, man="Events not shown because the reader of the output went away."),
    Field("dropped", "int", "all events dropped", minimum=0,
          man="All events dropped: **ringbuf_full** + **map_full**."),
    Field("ringbuf_full", "int", "events dropped because the ring buffer was full", minimum=0,
          man="Events dropped because the ring buffer was full."),
    Field("map_full", "int", "events dropped because a map of the probe was full", minimum=0,
          man="Events dropped because the map of calls in flight was full."),
    Field("missed_by_kernel", "int", "probe runs the kernel skipped", minimum=0,
          man="Probe runs the kernel skipped (see the **lost** lines)."),
    Field("not_followed", "int", "child processes not followed: their events are lost",
          minimum=0,
          man="Child processes of followed processes that were not followed because the map "
              "of followed processes was full: their events are lost. 0 unless following a "
              "command or **--pid --children**."),
    Field("discarded", "int", "records the probe reserved and then discarded", minimum=0,
          man="Records the probe reserved and then discarded instead of sending: always 0 "
              "here, as this probe never discards one (see **rbtrace-run**(8))."),
    Field("duration_s", "number", "seconds from the start line to the end", minimum=0,
          man="Seconds from the start line to the end, to the millisecond."),
    Field("stopped_by", "enum", "what ended the run", values=STOPPED_BY,
          man="What ended the run: **\"count\"**, **\"duration\"**, **\"quit\"** (the **q** "
              "key), **\"output closed\"**, **\"command exited\"** (with **-- CMD**), "
              "**\"process exited\"** (with **--pid --children**), **\"SIGINT\"**, "
              "**\"SIGTERM\"**, **\"SIGHUP\"**, **\"SIGQUIT\"** or **\"SIGALRM\"**."),
    Field("top_errors", "counts", "the five most frequent errors among the events delivered",
          man="The five most frequent errors among the events delivered, as an object from "
              "error name to count, {**\"ENOENT\": 940**, **\"EACCES\": 3**}."),
    Field("command", "command", "with -- CMD: the command run", when="-- CMD",
          man="With **-- CMD**: an object with **argv** (the command as given), **pid** (its "
              "process id), **status** (its exit status as a shell reports it: the exit "
              "code, or 128 + the signal number; also **rbtrace**'s exit status) and "
              "**signal** (the name of the signal that killed it, such as **\"SIGTERM\"**, "
              "or null)."),
    Field("followed_root", "int", "with --pid --children: the process followed",
          when="--pid --children", minimum=1,
          man="With **--pid --children**: the process followed."),
    Field("followed_running", "int", "followed processes still running at the end",
          when="-- CMD or --pid --children", minimum=0,
          man="With **-- CMD** or **--pid --children**: followed processes still running "
              "when **rbtrace** ended (daemons, orphans still busy), which are no longer "
              "traced. Those that exited after the tracing stopped early (**--count**, "
              "**--duration**) are not counted."),
    Field("otlp_sent", "int", "with --otlp: events the collector acknowledged",
          when="--otlp", minimum=0,
          man="With **--otlp**: events the OTLP endpoint acknowledged (HTTP 200, less the "
              "records a partial success rejected)."),
    Field("otlp_dropped", "int", "with --otlp: events not exported", when="--otlp", minimum=0,
          man="With **--otlp**: events given to the exporter but not acknowledged: a full "
              "export queue, a batch the collector refused, or what was still unsent when "
              "**--otlp-timeout** ran out at the end. **otlp_sent** + **otlp_dropped** = "
              "**delivered**, unless writing the output failed."),
    Field("kinds", "kinds", "per kind traced: events delivered, and errors by name",
          man="Per kind traced, an object from the kind's name to {**events**, **errors**}: "
              "the events delivered, and their errors counted by name: the errno of a "
              "negative **ret** (**\"ENOENT\"**), and for **exit** a non-zero status, "
              "as **\"exit 3\"** or the signal's name (**\"SIGKILL\"**)."),
    Field("processes", "processes", "per process with events delivered: counts, parent, "
          "argv, how it ended",
          man="Per process with events delivered (at most 10000, in the order they were "
              "first seen), an object: **process** (its key, as in its events), **pid**, "
              "**ppid** (the parent in its first event), **parent** (the parent's key, "
              "when the parent has events too, else **null**), **comm**, **argv** (of its "
              "last successful exec, or **null** when none was traced), **events**, "
              "**kinds** (events per kind), **errors** (as in **kinds**), **state** "
              "(**\"exited\"** when its exit event was delivered; else **\"running\"** "
              "when **exit** was traced, **\"unknown\"** when not), **exit_code**, "
              "**signal** and **duration_ns** (its lifetime), from its exit event, or "
              "**null**."),
    Field("processes_other", "other", "processes beyond the first 10000, counted together",
          man="Processes beyond the first 10000 with events, counted together: an object "
              "with **processes** (how many, exact up to 10000 of them) and **events**."),
)

LINES = {"start": START, "lost": LOST, "summary": SUMMARY}


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
        # (`value in (None, "", False)` would take a uid 0 for no filter.)
        if self.filter is None or value is None or value is False or value == "":
            return None
        if callable(self.filter):
            return self.filter(value)
        return self.name if self.is_flag else f"{self.name}={value}"


def filters_text(options, values: dict, more=()) -> str:
    """The filters in effect, as the start line and the footer word them:
    each option's filter_text() in rank order, then `more` (words such as
    the followed command's name).  As UTF-8: argv bytes that are not (a
    --comm, a --path, CMD's name) can't go into JSON as they are."""
    shown = [t for t in (o.filter_text(values.get(o.name))
                         for o in sorted(options, key=lambda o: o.rank)) if t is not None]
    return os.fsencode(" ".join([*shown, *more])).decode("utf-8", "replace")


@dataclass(frozen=True)
class Argument:
    """A positional argument of a kind's command (tp's tracepoints, run's file).
    man: its entry in the man page's OPTIONS, if it has one.
    colon_words: in `rbtrace trace`, the words of KINDS with a colon
    (CATEGORY:EVENT) are this argument's values, and name its kind."""
    name: str
    metavar: str
    nargs: int = 1
    path: bool = False
    man: str = ""
    colon_words: bool = False


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
    man: str = ""                   # the man page's text, when longer than doc


def time_column(priority=5):
    """TIME: local time of day to the millisecond (UTC with --utc).  Its
    value is bound to the run's clock by the codec."""
    return Column("TIME", None, width=12, priority=priority, whole=True,
                  doc="local time of day, to the millisecond (UTC with --utc)",
                  man="Time of day of the event, local (UTC with **--utc**), to the "
                      "millisecond: *HH*:*MM*:*SS*.*mmm*.")


def pid_column(header="PID", key="pid", priority=1):
    return Column(header, lambda e: str(e[key]), width=7, justify="right",
                  priority=priority, whole=True,
                  doc="the parent process" if key == "ppid" else "the process",
                  man=("The parent process." if key == "ppid"
                       else "The process (thread group id)."))


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
    codec      the kind's Codec class (rbtrace/codec.py), defined beside
               its spec: the kind's decoding.
    offsets    kernel struct members the probe reads: {-D name: (struct,
               member)}, from the running kernel's BTF.
    man        this kind's own man text for something every kind has, in
               place of the common one (or for one of its own, in place of
               its Field/Option/Column.man): an option by name ("uid"),
               a column by header ("column.TIME"), a header member
               ("event.tid") or a member of the run's lines
               ("lost.map_full", "summary.top_errors").  The markup is
               rbtrace/mandoc.py's.
    notes      text added after a common option's man text for this kind
               ("failed": "Checked in the kernel.").
    before     None, or a function of the command's options called before
               anything else (tp --list): an exit status ends the command
               there, None goes on to trace.
    process_argv   its successful events (ret 0), decoded, give their
               process a new argv and comm in the run summary (rbtrace/
               procsum.py): an exec.
    process_end    None, or the record column holding a wait status: an
               event of this kind is its process's end, and the run
               summary takes the exit code, signal and lifetime from it.
    failed_event   None, or a function of an event (its JSON line, as a
               dict) saying whether -x keeps it, for `rbtrace show -x`
               (the probe decides live).  None: a negative "ret", or for
               a process end a non-zero status; a kind without either
               never fails.
    tree_count     None, or the header of a column of the live table's
               process view (rbtrace/treeview.py) counting this kind's
               events per process ("OPEN").
    otlp       --otlp (rbtrace/otlp.py): the OpenTelemetry attributes of
               this kind's own members that a semantic convention names,
               {member: attribute}, or {member: (attribute, "format {}")}
               for a value to rewrite; and under "*" ((attribute, value),
               ...) that every record of the kind carries.  The others
               are rbtrace.<member>.
    """
    name: str
    summary: str
    help: str
    codec: type
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
    man: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    before: Optional[Callable] = None
    process_argv: bool = False
    process_end: Optional[str] = None
    failed_event: Optional[Callable[[dict], bool]] = None
    tree_count: Optional[str] = None
    otlp: dict = field(default_factory=dict)

    @property
    def json_fields(self) -> tuple:
        """Every member an event line can have, in order."""
        return tuple(n for f in HEADER + self.fields for n in f.names)



SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _object_schema(fields, title, consts) -> dict:
    """The schema of a line made of `fields`; `consts` pins members
    ("type", "probe") to a value or to one of a list."""
    props, required = {}, []
    for f in fields:
        if f.name in consts:
            value = consts[f.name]
            props[f.name] = ({"enum": list(value)} if isinstance(value, (list, tuple))
                             else {"const": value})
            props[f.name]["description"] = f.doc
        else:
            props[f.name] = f.schema()
        if not f.when:
            required.append(f.name)
        if f.kind in ("text", "texts"):
            b64 = ({"type": "string", "contentEncoding": "base64"} if f.kind == "text" else
                   {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}})
            b64["description"] = (f"the exact bytes of {f.name}, present only when they are "
                                  "not UTF-8")
            props[f.name + "_b64"] = b64
    return {"title": title, "type": "object", "properties": props, "required": required,
            "additionalProperties": False}


def json_schema(spec: Spec) -> dict:
    """The JSON schema (draft 2020-12) of one kind's event lines."""
    return {"$schema": SCHEMA_DIALECT,
            **_object_schema(HEADER + spec.fields, f"rbtrace {spec.name} event",
                             {"type": spec.name})}


def line_schema(line: str, kinds=None) -> dict:
    """The schema of a start, lost or summary line (rbtrace.session), of
    a run of one of `kinds` (names, or one name; None: any kind)."""
    consts = {"type": line}
    if isinstance(kinds, str):
        consts["probe"] = kinds
    elif kinds is not None:
        consts["probe"] = tuple(kinds)
    return {"$schema": SCHEMA_DIALECT,
            **_object_schema(LINES[line], f"rbtrace {line} line", consts)}


def schema_document(specs, single=False) -> dict:
    """One schema for every line `rbtrace KIND --json` writes, for each
    kind of `specs`: the start, lost and summary lines and each kind's
    events, under $defs, and a oneOf over them (the line's "type" tells
    which one applies).  `single`: of one kind's run alone."""
    from rbtrace import __version__
    from rbtrace.render import JSON_FORMAT_VERSION
    names = [s.name for s in specs]
    defs = {}
    for line in LINES:
        d = line_schema(line, names[0] if single else names)
        del d["$schema"]
        defs[line] = d
    defs["start"]["properties"]["version"] = {
        "const": JSON_FORMAT_VERSION, "description": "the JSON format version"}
    for s in specs:
        d = json_schema(s)
        del d["$schema"]
        d["description"] = s.summary
        defs[s.name] = d
    which = f"rbtrace {names[0]}" if single else "every kind"
    return {"$schema": SCHEMA_DIALECT,
            "title": f"rbtrace {__version__}: the JSON lines of {which}",
            "description": "Each line rbtrace writes with --json is one JSON object: one of "
                           "these, told apart by its \"type\".",
            "oneOf": [{"$ref": f"#/$defs/{n}"} for n in defs],
            "$defs": defs}


def schema_json(specs, single=False) -> str:
    """schema_document as `rbtrace schema` prints it and make man ships it."""
    import json
    return json.dumps(schema_document(specs, single), indent=2, ensure_ascii=False) + "\n"


# --- the kinds -----------------------------------------------------------------

def _kinds() -> tuple:
    """Every module of rbtrace/kinds/ is a kind: adding one is adding its
    module (and its probe, page and tests), with nothing to register."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kinds")
    return tuple(sorted(n[:-3] for n in os.listdir(here)
                        if n.endswith(".py") and not n.startswith("_")))


# Kinds by name, found without importing them: each spec module is
# imported only when its kind is used (`rbtrace exec` needs exec's alone).
KINDS = _kinds()


def kind_tag(name: str) -> int:
    """The number a kind's programs put in every record's header (RB_KIND,
    rb_header.rb_kind in probes/common.h): records of several kinds share
    one ring (`rbtrace trace`) and are told apart by it and their size."""
    return KINDS.index(name) + 1


def load(name: str) -> Spec:
    if name not in KINDS:
        raise KeyError(name)
    return importlib.import_module(f"rbtrace.kinds.{name}").SPEC


def declared() -> list:
    """The spec of every kind, in KINDS order."""
    return [load(name) for name in KINDS]
