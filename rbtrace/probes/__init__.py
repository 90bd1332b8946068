"""Probe registry: one module per probe, named like its C file and command.

A probe module defines a `Probe` subclass that says which C source and
event structs it uses, turns CLI options into -D flags, decodes ring
segments into events, and names the columns the table shows.
"""
import base64
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Callable

from rbtrace import fields


@dataclass
class Column:
    """One column of the table and the plain lines.

    On a narrow terminal (see render.layout) columns are dropped whole,
    highest `priority` number first; a `whole` column (a number, an error
    name, a time) is never cut, and grows when a value is longer than
    `width`; other text is cut to `min_width` at the least, with "…".
    """
    header: str
    value: Callable[[dict], str]    # event dict -> display text (already escaped)
    width: int = 0                  # 0: flexible, takes what is left
    min_width: int = 4
    justify: str = "left"
    keep: str = "start"             # which end survives truncation: "start" or "end"
    priority: int = 5               # 1 is dropped last
    whole: bool = False             # never cut: shown whole or not at all


def time_column(priority=5):
    """TIME: local time of day to the millisecond (UTC with --utc).  Its
    value is bound to the probe's Clock when the probe is made."""
    return Column("TIME", None, width=12, priority=priority, whole=True)


def pid_column(header="PID", key="pid", priority=1):
    return Column(header, lambda e: str(e[key]), width=7, justify="right",
                  priority=priority, whole=True)


class Probe:
    name = ""
    source = ""             # file under probes/
    event_structs = ()      # C struct names declared with RBTRACE_EVENT
    columns = ()
    # (summary name, record column) counted over every event: see session.Tally
    tally = (("commands", "comm"), ("errors", "ret"))

    def __init__(self, options):
        self.options = options
        self.clock = fields.Clock(utc=bool(options.get("utc")))
        self.columns = self._bind_time(self.columns)

    def _bind_time(self, columns):
        """The columns, with a TIME column (value None) showing this probe's clock."""
        def time_cell(e):
            return self.clock.hms(e["ts_ns"])
        return tuple(replace(c, value=time_cell) if c.value is None else c for c in columns)

    def source_path(self):
        """The C file to compile.  Probes that generate or take their source
        from the user override this; rbtrace's own live under probes/."""
        from rbtrace.paths import probes_dir
        return probes_dir() / self.source

    def cflags(self) -> dict:
        o = self.options
        flags = {}
        if o.get("follow"):
            flags["FOLLOW"] = 1         # the command / --children tree, in the kernel
        if o.get("failed"):
            flags["FILTER_FAILED"] = 1
        return flags

    def run_config(self) -> dict:
        """The process filters, checked in the kernel but written into the
        probe's rbtrace_config map at load (common.h), not compiled in:
        the compile cache then serves every -p, --tid, -u and -n."""
        o = self.options
        comm = os.fsencode(o["comm"]) if o.get("comm") else b""
        return {"pid": 0 if o.get("follow") else (o.get("pid") or 0),
                "tid": o.get("tid") or 0,
                "uid": o.get("uid"),
                "comm": comm}

    def decode(self, event_type, records, offsets, data) -> list:
        raise NotImplementedError

    def header_fields(self, records):
        """Common header columns as Python lists, read straight off the ring."""
        return (records["seq"].tolist(), records["ts_ns"].tolist(), records["pid"].tolist(),
                records["tid"].tolist(), records["ppid"].tolist(), records["uid"].tolist(),
                records["comm"].tolist())


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


class _Registry(Mapping):
    """Probe classes by command name, each module imported when asked for:
    a run imports only its own probe (the others' imports cost a warm
    start tens of milliseconds)."""

    _where = {"exec": ("exec", "ExecCodec"), "open": ("open", "OpenCodec"),
              "tp": ("tp", "TpCodec"), "run": ("run", "RunCodec"),
              "exit": ("exit", "ExitCodec"), "tcp": ("tcp", "TcpCodec")}

    def __getitem__(self, name):
        module, cls = self._where[name]
        mod = importlib.import_module(f"rbtrace.probes.{module}")
        spec = getattr(mod, "SPEC", None)
        if spec is not None:
            # A kind declared by a spec: its codec, made with the options.
            return getattr(mod, cls)
        return getattr(mod, cls)

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


def registry() -> Mapping:
    return _Registry()
