"""rbtrace exit: every process exit, once per process (probes/exit.bpf.c).

A record holds the wait(2) status the parent gets and the process's start
time; SPEC below declares the event's members, options and columns.
"""
from rbtrace import fields
from rbtrace.codec import Codec, shown
# How a wait status reads, and a lifetime: also the run summary's (procsum).
from rbtrace.fields import age_text, core_dumped, exit_code, signal_name  # noqa: F401
from rbtrace.spec import Column, Field, Spec, pid_column, time_column


# Kernel struct members the probe reads, by -D name, besides common.h's
# (kernel.TASK_OFFSETS: task->signal and signal->live among them): the
# exiting task's leader, the wait status and the start time.
STRUCT_OFFSETS = {
    "TASK_GROUP_LEADER_OFF": ("task_struct", "group_leader"),
    "TASK_EXIT_CODE_OFF": ("task_struct", "exit_code"),
    "TASK_START_TIME_OFF": ("task_struct", "start_time"),
    "TASK_COMM_OFF": ("task_struct", "comm"),
    "SIGNAL_FLAGS_OFF": ("signal_struct", "flags"),
    "SIGNAL_GROUP_EXIT_CODE_OFF": ("signal_struct", "group_exit_code"),
}


def how_text(e) -> str:
    """CODE/SIGNAL: the exit code, or the signal (with "core" after a dump)."""
    if e["signal"] is None:
        return str(e["exit_code"])
    return e["signal"] + (" core" if e["core_dumped"] else "")


class ExitCodec(Codec):
    event_structs = ("exit_event",)

    def cflags(self):
        from rbtrace import kernel
        flags = super().cflags()
        # Which exit is the process's end (see the C file); bpf.py sets the
        # same for following a command.
        flags["EXIT_HAS_GROUP_DEAD"] = int(kernel.exit_has_group_dead())
        return flags

    def bodies(self, event_type, records, offsets, data):
        status = records["status"].tolist()
        start = records["start_ns"].tolist()
        ts = records["ts_ns"].tolist()
        return [{"exit_code": exit_code(s), "signal": signal_name(s),
                 "core_dumped": core_dumped(s), "duration_ns": t - b, "status": s}
                for s, b, t in zip(status, start, ts)]


SPEC = Spec(
    name="exit",
    summary="trace every process exit on the host, and how it ended",
    help="""Every process exit on the host, once per process, with how it ended.

    One event when the last thread of a process exits (not at each
    thread's exit, nor when the parent reaps it): its exit code, or the
    signal that killed it, and its lifetime.  -x: only exits with a
    non-zero code or by a signal, in the kernel.""",
    codec=ExitCodec,
    source="exit.bpf.c",
    ring="1M",
    failed="Only processes that failed: a non-zero exit code, or killed by a signal.",
    tally=(("commands", "comm"),),
    offsets=STRUCT_OFFSETS,
    process_end="status",
    otlp={"exit_code": "process.exit.code"},
    # The man page's words for what every kind has (rbtrace/mandoc.py).
    man={
        # rbtrace(8), COMMANDS
        "command": ("Every process exit on the host, once per process: its exit code or the signal "
                    "that ended it, a core dump, and how long it lived."),
        "uid": "Only this user, a name or a number: the real user id of the thread that ended "
               "the process. Checked in the kernel.",
        "comm": "Only processes whose command name is exactly *COMM* (1 to 15 bytes): the "
                "name of the process (its leader thread), not that of whichever thread exited "
                "last. Checked in the kernel.",
        "column.TIME": "Time of day of the exit, local (UTC with **--utc**), to the "
                       "millisecond: *HH*:*MM*:*SS*.*mmm*.",
        "column.PPID": "Its parent, at the exit.",
        "event.time": "Wall-clock time of the exit, decoded from **ts_ns**: ISO 8601 in UTC "
                      "with nanoseconds, as in “**2026-11-24T07:23:04.247907736Z**”. The "
                      "offset between the monotonic clock and the wall clock is measured once "
                      "at start, so a clock step during the run does not make times jump.",
        "event.ts_ns": "Raw time of the exit: the kernel's **CLOCK_MONOTONIC** in nanoseconds "
                       "(time since boot, not counting suspend), as **clock_gettime**(2) "
                       "gives it.",
        "event.tid": "The thread that ended the process: the last one to exit. Any thread of a "
                     "multi-threaded process, the leader or not.",
        "event.ppid": "The process's parent (its thread group id), at the exit.",
        "event.uid": "Raw real user id of the thread that ended the process (in the initial "
                     "user namespace).",
        "event.comm": "The process's command name (at most 15 bytes): its leader thread's, as "
                      "**ps**(1) shows it, even when another thread, with a name of its own, "
                      "exited last. After an **execve**(2), the new program's.",
        "lost.map_full": "Of those, calls whose entry could not be stored in the probe's map "
                         "of calls in flight: always 0 here, as this probe keeps no such map.",
        "summary.map_full": "Events dropped because the map of calls in flight was full: "
                            "always 0 here.",
    },
    notes={"failed": "Checked in the kernel."},
    fields=(
        Field("exit_code", "int", "the exit code, 0 to 255; null when a signal ended the process",
              null=True, minimum=0, maximum=255,
              man="The exit code, 0 to 255, as **WEXITSTATUS** gives it, or **null** when a "
                  "signal killed the process."),
        Field("signal", "name", 'the name of the signal that ended the process ("SIGKILL"); '
              "null when it exited", null=True,
              man="The name of the signal that killed the process (**\"SIGKILL\"**, "
                  "**\"SIGSEGV\"**; **\"SIG\"** and the number for a real-time signal), or "
                  "**null** when it exited."),
        Field("core_dumped", "bool", "whether the process dumped core",
              man="**true** when the process dumped core (**WCOREDUMP**), false otherwise."),
        Field("duration_ns", "duration", "the process's lifetime: from its start to its end",
              man="How long the process lived: from its start (**fork**(2) or **clone**(2)) "
                  "to the exit, in nanoseconds. An **execve**(2) does not restart it. With "
                  "**-- CMD**, the lifetime of *CMD* itself includes the time **rbtrace** held "
                  "it, forked, until the probes were attached."),
        Field("status", "int", "the wait status its parent gets (waitpid(2))", minimum=0,
              man="Raw wait status, as **waitpid**(2) gives it to the parent: the exit code "
                  "times 256, or the signal number plus 128 when it dumped core."),
    ),
    columns=(
        # priority: which columns a narrow terminal drops first (highest)
        time_column(priority=5),
        pid_column(priority=1),
        pid_column("PPID", "ppid", priority=6),
        Column("USER", lambda e: fields.escape_str(e["user"]), width=8, min_width=4, priority=7,
               doc="the user's name",
               man="The user name (or number) of the thread that ended the process."),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=2,
               doc="the command name", man="The process's command name."),
        Column("AGE", lambda e: age_text(e["duration_ns"]), width=7, justify="right",
               priority=4, whole=True, doc="the lifetime, short: 850us, 12.3ms, 4.07s, 5m02s",
               man="How long the process lived, short: **850us**, **12.3ms**, **4.07s**, "
                   "**5m02s**, **3h05m**, **2d04h**."),
        Column("CODE/SIGNAL", how_text, width=11, justify="right", priority=3, whole=True,
               doc='the exit code, or the signal ("SIGSEGV core" after a core dump)',
               man="The exit code (0 to 255), or the name of the signal that killed the "
                   "process, followed by **core** when it dumped core (**SIGSEGV core**)."),
    ),
)
