"""rbtrace exit: every process exit, once per process (probes/exit.bpf.c).

A record holds the wait(2) status the parent gets and the process's start
time; every member of an event is declared in FIELDS below, with its kind
and the record columns it is made from.
"""
import signal as signals

from rbtrace import fields
from rbtrace.kernel import btf_offsets
from rbtrace.probes import Column, Probe, cstr, pid_column, put_text, shown, time_column


# --- kinds: how a member is made from raw record values -----------------------

def exit_code(status):
    """WEXITSTATUS, or None when a signal ended the process."""
    return (status >> 8) & 0xFF if status & 0x7F == 0 else None


def signal_name(status):
    """The name of the signal that ended the process (WTERMSIG), or None."""
    number = status & 0x7F
    if number == 0:
        return None
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"SIG{number}"        # a real-time signal: SIGRTMIN+n has no stdlib name


def core_dumped(status):
    """WCOREDUMP."""
    return bool(status & 0x80)


def duration(start_ns, end_ns):
    """Nanoseconds between two CLOCK_MONOTONIC times."""
    return end_ns - start_ns


def integer(value):
    return value


# The members an exit event adds to the common header (type, seq, time,
# ts_ns, pid, tid, ppid, uid, user, comm), in order: (name, kind, record
# columns passed to the kind).
FIELDS = (
    ("exit_code", exit_code, ("status",)),
    ("signal", signal_name, ("status",)),
    ("core_dumped", core_dumped, ("status",)),
    ("duration_ns", duration, ("start_ns", "ts_ns")),
    ("status", integer, ("status",)),
)

HEADER_FIELDS = ("type", "seq", "time", "ts_ns", "pid", "tid", "ppid", "uid", "user",
                 "comm", "comm_b64")
JSON_FIELDS = HEADER_FIELDS + tuple(name for name, _, _ in FIELDS)

# Kernel struct members the probe reads, by -D name: the exiting task's
# signal_struct and leader, the wait status and the start time.
STRUCT_OFFSETS = {
    "TASK_SIGNAL_OFF": ("task_struct", "signal"),
    "TASK_GROUP_LEADER_OFF": ("task_struct", "group_leader"),
    "TASK_EXIT_CODE_OFF": ("task_struct", "exit_code"),
    "TASK_START_TIME_OFF": ("task_struct", "start_time"),
    "TASK_COMM_OFF": ("task_struct", "comm"),
    "SIGNAL_FLAGS_OFF": ("signal_struct", "flags"),
    "SIGNAL_GROUP_EXIT_CODE_OFF": ("signal_struct", "group_exit_code"),
    "SIGNAL_LIVE_OFF": ("signal_struct", "live"),
}


def age_text(ns) -> str:
    """A lifetime, short: 850us, 12.3ms, 4.07s, 5m02s, 3h05m, 2d04h."""
    if ns < 1_000_000:
        return f"{ns // 1000}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.3g}ms"
    s = ns // 1_000_000_000
    if s < 60:
        return f"{ns / 1e9:.3g}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def how_text(e) -> str:
    """CODE/SIGNAL: the exit code, or the signal (with "core" after a dump)."""
    if e["signal"] is None:
        return str(e["exit_code"])
    return e["signal"] + (" core" if e["core_dumped"] else "")


class ExitProbe(Probe):
    name = "exit"
    source = "exit.bpf.c"
    event_structs = ("exit_event",)
    tally = (("commands", "comm"),)
    columns = (
        # priority: which columns a narrow terminal drops first (highest)
        time_column(priority=5),
        pid_column(priority=1),
        pid_column("PPID", "ppid", priority=6),
        Column("USER", lambda e: fields.escape_str(e["user"]), width=8, min_width=4, priority=7),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=2),
        Column("AGE", lambda e: age_text(e["duration_ns"]), width=7, justify="right",
               priority=4, whole=True),
        Column("CODE/SIGNAL", how_text, width=11, justify="right", priority=3, whole=True),
    )

    def cflags(self):
        from rbtrace import kernel
        flags = super().cflags()
        # Which exit is the process's end (see the C file); bpf.py sets the
        # same for following a command.
        flags["EXIT_HAS_GROUP_DEAD"] = int(kernel.exit_has_group_dead())
        flags.update(btf_offsets(STRUCT_OFFSETS))
        return flags

    def decode(self, event_type, records, offsets, data):
        seq, ts, pid, tid, ppid, uid, comm = self.header_fields(records)
        columns = {name: records[name].tolist() for name in ("status", "start_ns")}
        columns["ts_ns"] = ts
        clock = self.clock
        user_name = fields.user_name
        out = []
        for i in range(len(seq)):
            e = {"type": "exit", "seq": seq[i], "time": clock.iso(ts[i]), "ts_ns": ts[i],
                 "pid": pid[i], "tid": tid[i], "ppid": ppid[i], "uid": uid[i],
                 "user": user_name(uid[i])}
            put_text(e, "comm", cstr(comm[i]))
            for name, kind, sources in FIELDS:
                e[name] = kind(*(columns[s][i] for s in sources))
            out.append(e)
        return out
