"""rbtrace exec: every program execution (probes/exec.bpf.c).

A record carries its strings packed in `data`: the argv strings (each
NUL-terminated; the last one may be cut), then the filename (NUL
included, unless cut), then, for a successful execveat, the executable's
path as NUL-terminated components from the file up to the root.  The
probe reserves the smallest of several record sizes that holds them, each
its own event struct; the decoder handles them all alike.
"""
import functools

import click

from rbtrace import fields
from rbtrace.codec import Codec, cstr, put_text, put_text_list, shown, shown_list
from rbtrace.kernel import PATH_WALK_OFFSETS
from rbtrace.spec import Column, Field, Option, Spec, pid_column, time_column

# Everything below that the C file uses reaches it as -D flags
# (ExecCodec.cflags): it has no copy of its own.

# The syscall member: SYSCALL_EXECVE=0, SYSCALL_EXECVEAT=1, SYSCALL_KERNEL=2.
SYSCALLS = ("execve", "execveat", "kernel")
SYSCALL_EXECVEAT = SYSCALLS.index("execveat")

# The bits of the flags member, FLAG_<name> in the C file (see its comment
# for when each is set).
FLAGS = {
    "ARGS_TRUNCATED": 1,
    "FILENAME_TRUNCATED": 2,
    "FILENAME_FAULT": 4,
    "ARGV_FAULT": 8,
    "ARGC_CAPPED": 16,
    "NO_ARGV": 32,
    "ARGV_NULL": 64,
    "EXE": 128,
    "EXE_TRUNCATED": 256,
    "EXE_DELETED": 512,
    "ARGC_FAULT": 1024,
    "ARGV_FROM_EXEC": 2048,
    "FILENAME_FROM_EXEC": 4096,
}
ARGS_TRUNCATED = FLAGS["ARGS_TRUNCATED"]
FILENAME_TRUNCATED = FLAGS["FILENAME_TRUNCATED"]
FILENAME_FAULT = FLAGS["FILENAME_FAULT"]
ARGV_FAULT = FLAGS["ARGV_FAULT"]
ARGC_CAPPED = FLAGS["ARGC_CAPPED"]
NO_ARGV = FLAGS["NO_ARGV"]
ARGV_NULL = FLAGS["ARGV_NULL"]
EXE = FLAGS["EXE"]
EXE_DELETED = FLAGS["EXE_DELETED"]
ARGV_FROM_EXEC = FLAGS["ARGV_FROM_EXEC"]
FILENAME_FROM_EXEC = FLAGS["FILENAME_FROM_EXEC"]
_RARE = FILENAME_TRUNCATED | FILENAME_FAULT | ARGV_FAULT | ARGC_CAPPED | NO_ARGV | ARGV_NULL

FILENAME_BYTES = 4096           # PATH_MAX, NUL included
EXE_BYTES = 4096                # the executable's path components
# Record size classes by data bytes: those below the maximum (FILENAME +
# ARGS + EXE bytes) are compiled in (EXEC_CLASSES), then the maximum.
CLASSES = (256, 1024, 4096, 16384, 65536, 262144, 1048576)

# Defaults and limits of the capture: the exec command's options below.
# Measured on 6.18: with its bounded loops (no
# bpf_loop: before Linux 5.17, or RBTRACE_NO_BPF_LOOP=1) the entry program
# verifies in ~47 instructions per captured argument plus ~4100 per page of
# argv pointers counted (~730k of the verifier's 1M with 4096 arguments and
# 129 pages; 8100 arguments was the most that loaded).  With bpf_loop it
# is ~4300 whatever the limits (the loop bodies are checked once).  Argument bytes
# cost no verifier work; up to 3M loads (the pending map's values hit
# KMALLOC_MAX_SIZE at 4M), 1M is the limit kept, well above what the
# kernel passes (MAX_ARG_STRLEN is 128K per string, and argv + envp are
# at most a quarter of the stack limit).
DEFAULT_MAX_ARGS = 64
DEFAULT_ARG_BYTES = 4096
LIMIT_MAX_ARGS = 4096
LIMIT_ARG_BYTES = 1 << 20
MIN_ARG_BYTES = 64
# Pages of argv pointers (512 each) scanned to count argc: 129 pages hold
# at least 65537 pointers whatever the array's alignment, so argc is exact
# up to 65536; beyond, it is a minimum (argc_capped).
ARGV_PAGES = 129
ARGC_EXACT_MAX = 65536

AT_FDCWD = -100
_AT_FLAGS = (("AT_SYMLINK_NOFOLLOW", 0x100), ("AT_EMPTY_PATH", 0x1000))


def classes(arg_bytes: int) -> tuple:
    """The size classes below the maximum of a probe built with
    ARGS_BYTES=arg_bytes."""
    total = FILENAME_BYTES + arg_bytes + EXE_BYTES
    return tuple(n for n in CLASSES if n < total)


def event_structs(arg_bytes: int) -> tuple:
    """The C event structs a probe built with ARGS_BYTES=arg_bytes defines."""
    return tuple(f"exec_event_{n}" for n in classes(arg_bytes)) + ("exec_event_max",)


def possible_cpus(path="/sys/devices/system/cpu/possible") -> int:
    """Number of CPU ids the kernel may use: 1 + the highest in `path` ("0-3,8")."""
    with open(path) as f:
        text = f.read().strip()
    return 1 + max(int(part.split("-")[-1]) for part in text.split(","))


# Kernel struct members the probe reads, by -D name (besides common.h's):
# current->mm->exe_file and its path, for the exe of an execveat (see
# exe_path() in the C file), and the new program's argv (see rebuild()).
STRUCT_OFFSETS = {
    "TASK_MM_OFF": ("task_struct", "mm"),
    "MM_EXE_FILE_OFF": ("mm_struct", "exe_file"),
    **PATH_WALK_OFFSETS,
    "MM_ARG_START_OFF": ("mm_struct", "arg_start"),
    "MM_ARG_END_OFF": ("mm_struct", "arg_end"),
    "MM_START_STACK_OFF": ("mm_struct", "start_stack"),
}


def split_args(raw: bytes) -> tuple:
    """(argv, last_cut) from the captured argv bytes.

    Every complete argument ends with its NUL; a final piece without one
    was cut by the byte limit (last_cut).  An empty argument is a lone NUL.
    """
    if not raw:
        return [], False
    argv = raw.split(b"\0")
    if argv[-1] == b"":
        argv.pop()
        return argv, False
    return argv, True


def exe_path(raw: bytes) -> bytes:
    """The path from its NUL-terminated components, leaf first: b"true\\0bin\\0usr\\0"."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return b"/" + b"/".join(reversed(parts))


def filename_as_passed(name: bytes, dirfd: int) -> bytes:
    """Undo what the kernel did to an execveat filename relative to a
    directory fd (fs/exec.c alloc_bprm): "/dev/fd/N" for "" with
    AT_EMPTY_PATH, "/dev/fd/N/name" for "name".  Used only when the string
    could not be read at entry and came from bprm->filename instead."""
    if dirfd == AT_FDCWD:
        return name
    prefix = b"/dev/fd/%d" % dirfd
    if name == prefix:
        return b""
    if name.startswith(prefix + b"/"):
        return name[len(prefix) + 1:]
    return name


@functools.lru_cache(maxsize=64)
def at_flags_text(flags: int) -> str:
    names = [name for name, bit in _AT_FLAGS if flags & bit]
    rest = flags & ~sum(bit for _, bit in _AT_FLAGS)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def _file_text(e):
    """FILENAME column: the name as passed; for execveat its directory fd
    and the executable it resolved to."""
    if e["syscall"] != "execveat":
        return shown(e, "filename")
    name = shown(e, "filename")
    if e["dirfd"] != AT_FDCWD and not e["filename"].startswith("/"):
        name = f"fd {e['dirfd']}" + (f"/{name}" if name else "")
    if e.get("exe") is not None:
        name += " → " + shown(e, "exe")
    return name


def _args_text(e):
    """ARGV: the arguments as a shell would take them back (shell_word);
    a cut last argument is followed by an unquoted "…"."""
    argv = [fields.shell_word(a) for a in shown_list(e, "argv")]
    if e.get("last_arg_cut") and argv:
        argv[-1] += "…"
    text = " ".join(argv)
    if e["args_truncated"]:
        text += f" …[{'≥' if e.get('argc_capped') else ''}{e['argc']} args]"
    return text


def parse_arg_bytes(ctx, param, value):
    """--max-arg-bytes: a byte count, K/M suffixes allowed, within limits."""
    if value is None or isinstance(value, int):
        return value
    try:
        n = fields.parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param)
    lo, hi = MIN_ARG_BYTES, LIMIT_ARG_BYTES
    if not lo <= n <= hi:
        raise click.BadParameter(f"'{fields.for_message(value)}' is not between {lo} and {hi} "
                                 f"({hi >> 20}M) bytes", ctx, param)
    return n


class ExecCodec(Codec):
    # The argv loops are what the verifier walks (rbtrace/bpf.py _too_large).
    cost_hint = "lower --max-args or --max-arg-bytes"

    def __init__(self, options, spec=None):
        options = dict(options)
        options["max_args"] = options.get("max_args") or DEFAULT_MAX_ARGS
        options["max_arg_bytes"] = options.get("max_arg_bytes") or DEFAULT_ARG_BYTES
        super().__init__(options, spec)
        self.max_args = options["max_args"]
        self.arg_bytes = options["max_arg_bytes"]
        self.event_structs = event_structs(self.arg_bytes)

    def cflags(self):
        flags = super().cflags()       # MAX_ARGS, ARGS_BYTES and the offsets among them
        flags["ARGV_PAGES"] = ARGV_PAGES
        flags["SCRATCH_SLOTS"] = possible_cpus()
        flags["FILENAME_BYTES"] = FILENAME_BYTES
        flags["EXE_BYTES"] = EXE_BYTES
        # An X macro: the C file declares and reserves each class with it.
        flags["EXEC_CLASSES(X)"] = " ".join(f"X({n})" for n in classes(self.arg_bytes))
        flags.update({f"SYSCALL_{name.upper()}": i for i, name in enumerate(SYSCALLS)})
        flags.update({f"FLAG_{name}": bit for name, bit in FLAGS.items()})
        return flags

    rows = True
    # The members bodies() reads, as columns.
    BODY_COLUMNS = ("ret", "argc", "filename_len", "args_len", "exe_len", "flags", "syscall",
                    "dirfd", "at_flags")

    def bodies(self, event_type, records, offsets, data):
        columns = [records[name].tolist() for name in self.BODY_COLUMNS]
        return self._bodies(event_type, columns, offsets.tolist(), data)

    def row_bodies(self, event_type, rows, payloads):
        columns = [[r[name] for r in rows] for name in self.BODY_COLUMNS]
        size = event_type.size
        return self._bodies(event_type, columns, [i * size for i in range(len(rows))],
                            b"".join(payloads))

    def _bodies(self, event_type, columns, offs, data):
        """The bodies from the columns as lists (BODY_COLUMNS), each record's
        payload offset in `data`, and `data`: numpy or not, the same code."""
        ret, argc, fn_len, args_len, exe_len, flags, syscall, dirfd, at_flags = columns
        data_off, room = event_type.member("data")
        max_args = self.max_args
        errno_name = fields.errno_name
        out = []
        for i in range(len(offs)):
            f = flags[i]
            start = offs[i] + data_off
            a = args_len[i]
            b = a + fn_len[i]
            c = min(b + exe_len[i], room)
            blob = bytes(data[start:start + c])
            argv, last_cut = split_args(blob[:a])
            if len(argv) > max_args:           # read back from the new program
                del argv[max_args:]
                last_cut = False
            e = {}
            sc = syscall[i]
            e["syscall"] = SYSCALLS[sc] if sc < len(SYSCALLS) else str(sc)
            filename = cstr(blob[a:b])
            if f & FILENAME_FROM_EXEC and sc == SYSCALL_EXECVEAT:
                filename = filename_as_passed(filename, dirfd[i])
            put_text(e, "filename", filename)
            if sc == SYSCALL_EXECVEAT:
                e["dirfd"] = dirfd[i]
                e["at_flags"] = at_flags[i]
                if f & EXE:
                    exe = exe_path(blob[b:c])
                    if f & EXE_DELETED:
                        exe += b" (deleted)"     # as readlink(/proc/PID/exe) says
                    put_text(e, "exe", exe)
                else:
                    e["exe"] = None
            put_text_list(e, "argv", argv)
            # Exact from the data: FLAG_ARGS_TRUNCATED is also set when the
            # strings fill the buffer exactly.
            truncated = last_cut or len(argv) < argc[i] or bool(f & ARGC_CAPPED)
            e["argc"] = argc[i]
            e["args_truncated"] = truncated
            e["ret"] = ret[i]
            e["errno"] = errno_name(ret[i]) or None
            if f & _RARE or last_cut:
                e["filename_truncated"] = bool(f & FILENAME_TRUNCATED)
                e["filename_fault"] = bool(f & FILENAME_FAULT)
                e["argv_fault"] = bool(f & ARGV_FAULT)
                e["argv_null"] = bool(f & ARGV_NULL)
                e["argc_capped"] = bool(f & ARGC_CAPPED)
                e["argv_unknown"] = bool(f & NO_ARGV)
                e["last_arg_cut"] = last_cut
            out.append(e)
        return out


_RARE_WHEN = "only when one of the seven rare flags is true (then all seven are there)"

SPEC = Spec(
    name="exec",
    # The man page's words (rbtrace/mandoc.py): this kind's own, in place
    # of the common ones.
    man={
        # rbtrace(8), COMMANDS
        "command": ("Every program execution on the host (execve, execveat, and executions started by "
                    "the kernel), with its result."),
        "pid": "Only execs called by this process (thread group id, 1 to 4194304). Checked in "
               "the kernel when the exec starts.",
        "uid": "Only execs called by this user, a name or a number: the real user id of the "
               "calling thread. Checked in the kernel when the exec starts.",
        "comm": "Only events whose command name is exactly *COMM* (1 to 15 bytes). Checked in "
                "the kernel when the event is written, so for a successful exec it is the new "
                "program's name (**-n ls** selects executions of **ls**), and for a failed one"
                " the caller's.",
        "failed": "Only execs that failed.",
        "max_args": "Arguments captured per exec, from 1 to 4096; default 64. The number of "
                    "arguments, **argc**, is counted whatever this is, exactly up to 65536 "
                    "arguments.",
        "max_arg_bytes": "Bytes of arguments captured per exec, the terminating NUL of each "
                         "one included: a number of bytes with an optional binary suffix "
                         "(**K**, **M**), from 64 to 1048576 (1M); default 4096. An argument "
                         "that does not fit is cut. Larger values make larger records for "
                         "execs with long command lines, and a larger scratch area in the "
                         "kernel (see **OVERHEAD**). On kernels without the **bpf_loop** "
                         "helper (before Linux 5.17) the kernel's verifier walks the argument "
                         "loops once per argument at every start; if it ever gives up on the "
                         "probe's complexity, rbtrace says so and suggests lowering "
                         "**--max-args** or **--max-arg-bytes**.",
        "column.PPID": "Its parent.",
        "column.RET": "**0** for success, else the error name (**ENOENT**), or the raw "
                      "negative return value when it has no name.",
        "column.FILENAME": "The file name as passed. For **execveat**, a relative name is "
                           "prefixed by **fd ***N***/** (the directory file descriptor), and "
                           "when the exec succeeded the executable that was run follows an "
                           "arrow: “**fd 3 → /usr/bin/true**”. In the table, a long name keeps"
                           " its end.",
        "column.ARGV": "The arguments, separated by spaces (argv[0] included), each written as"
                       " a shell would read it back: as it is when it holds nothing special to"
                       " a shell, else in single quotes, with an embedded quote as **'\\\\''**; "
                       "the empty argument is **''**. So **echo \"a b\" c** shows as **echo 'a "
                       "b' c** and **echo a \"b c\"** as **echo a 'b c'**. The escapes of "
                       "control bytes (**\\\\n**, **\\\\x***NN* , **\\\\\\\\**) stay as they are "
                       "inside the quotes: split the line as **sh**(1) would, then undo the "
                       "escapes, and you have the exact argv. A cut last argument is followed "
                       "by an unquoted “**…**” (an argument that really contains “…” is always"
                       " quoted), and when not every argument was captured, **…[***N*** "
                       "args]** gives their number (**≥** before it when the count is a "
                       "minimum).",
        "event.ts_ns": "Raw time of the event: the kernel's **CLOCK_MONOTONIC** in nanoseconds"
                       " (time since boot, not counting suspend), as **clock_gettime**(2) "
                       "gives it; for a successful exec, when the new program took over, for a"
                       " failed one, when the call returned.",
        "event.pid": "The process (thread group id). When a thread other than the main one "
                     "execs, the process keeps its id and the thread takes it over.",
        "event.tid": "The thread that called exec.",
        "event.ppid": "The parent process (its thread group id), when the event was written.",
        "event.uid": "Raw real user id (in the initial user namespace), when the event was "
                     "written.",
        "event.comm": "The command name, at most 15 bytes: for a successful exec the new "
                      "program's (the kernel takes it from the file name), for a failed one "
                      "the caller's.",
        "event.syscall": "**\"execve\"** or **\"execveat\"**; or **\"kernel\"** when the exec was "
                         "seen without its system call: one started by the kernel itself, or "
                         "one already under way when rbtrace attached. Its arguments are then "
                         "unknown (**argv_unknown**).",
        "event.filename": "The file name the caller passed, exactly (at most 4095 bytes): not "
                          "resolved, relative to the working directory or to **dirfd**. For "
                          "**\"kernel\"**, the name the kernel used.",
        "event.filename_b64": "Only when the bytes of **filename** are not valid UTF-8: their "
                              "exact bytes in base64, as for **comm_b64**.",
        "event.dirfd": "Only for **execveat**: raw directory file descriptor a relative "
                       "**filename** is resolved against; **-100** is **AT_FDCWD** (the "
                       "working directory).",
        "event.at_flags": "Only for **execveat**: raw flags, **AT_EMPTY_PATH** (4096, run the "
                          "file **dirfd** refers to, as **fexecve**(3) does) and "
                          "**AT_SYMLINK_NOFOLLOW** (256).",
        "event.exe": "Only for **execveat**: the path of the executable that was run, as "
                     "*/proc/PID/exe* shows it, with “** (deleted)**” appended when the file "
                     "had been removed; **null** when the exec failed or the path was deeper "
                     "than 64 directories or longer than 4 KiB.",
        "event.exe_b64": "Only when the bytes of **exe** are not valid UTF-8: their exact "
                         "bytes in base64, as for **comm_b64**.",
        "event.argv": "The arguments captured, a list of strings (argv[0] first), at most "
                      "**--max-args** of them and **--max-arg-bytes** in all; the last one may"
                      " be cut (**last_arg_cut**). An argument that could not be read is an "
                      "empty string (**argv_fault**). Empty for **\"kernel\"**.",
        "event.argv_b64": "Only when the bytes of any argument are not valid UTF-8: a list "
                          "with the exact bytes of every argument in base64, as for "
                          "**comm_b64**.",
        "event.args_truncated": "**true** when **argv** is not all of the arguments, whole: "
                                "fewer than **argc**, or the last one cut.",
        "event.errno": "**ret**, decoded: the error's name (**\"ENOENT\"**), **\"E***N***\"** for "
                       "a number without a name, or **null** for success.",
        "event.filename_truncated": "This member and the six below are there only when one of "
                                    "the seven is true, and then all seven are, as booleans. "
                                    "**true** when the file name was longer than 4095 bytes "
                                    "(the exec fails with **ENAMETOOLONG**).",
        "start.filters": "The filters in effect, as text (**uid=33 comm=sh failed**), or an "
                         "empty string.",
        "lost.map_full": "Of those, execs whose arguments could not be stored from the system "
                         "call's entry to its result (more than 4096 execs in flight at once).",
        "summary.map_full": "Events dropped because the map of execs in flight was full.",
        "summary.top_errors": "The five most frequent errors among the events delivered, as an"
                              " object from error name to count, {**\"ENOENT\": 12**, "
                              "**\"EACCES\": 1**}.",
    },
    summary="trace every program execution on the host, with its result",
    help="""Every program execution on the host, with its result.

    One event per execve/execveat: successes when the new program starts,
    failures (ENOENT, EACCES, ENOEXEC...) when the call returns.  JSON
    fields: time, pid, tid (the thread that called exec; a non-leader
    thread's exec continues as pid), ppid, uid, user, comm (after exec
    for a success, the caller's for a failure), syscall, filename (as
    passed: "" for fexecve), argv, argc (the real count), args_truncated,
    ret, errno; for execveat also dirfd, at_flags and exe (the path of the
    executable, null when the call failed).

    argv is cut after --max-args arguments or --max-arg-bytes bytes:
    args_truncated is then true, argc keeps the full count, and the table
    ends the line with "…[N args]" (a cut argument ends with "…").  Table
    and plain lines escape control characters (\\n, \\t, \\x1b); JSON keeps
    the exact strings (argv_b64 when not UTF-8).

    --comm matches the command name after exec for successes and the
    caller's command name for failures.  --pid and --uid select the
    calling process; --pid, --uid and --comm are checked in the kernel.
    """,
    codec=ExecCodec,
    process_argv=True,
    otlp={"argv": "process.command_args", "exe": "process.executable.path"},
    source="exec.bpf.c",
    ring="4M",
    failed="Only failed calls.",
    offsets=STRUCT_OFFSETS,
    options=(
        Option(("--max-args",), "max_args", type=click.IntRange(1, LIMIT_MAX_ARGS),
               default=DEFAULT_MAX_ARGS, show_default=True, metavar="N", cflags="MAX_ARGS",
               help=f"Arguments captured per exec, 1 to {LIMIT_MAX_ARGS}.  argc is counted "
                    f"beyond them (exactly up to {ARGC_EXACT_MAX} arguments)."),
        Option(("--max-arg-bytes",), "max_arg_bytes", type=click.STRING,
               default=str(DEFAULT_ARG_BYTES), show_default=True, metavar="SIZE",
               callback=parse_arg_bytes, cflags="ARGS_BYTES",
               help=f"Bytes of argv captured per exec, NULs included: {MIN_ARG_BYTES} to "
                    f"{LIMIT_ARG_BYTES >> 20}M (K and M suffixes).  Costs about twice this in "
                    f"kernel memory per possible CPU."),
    ),
    fields=(
        Field("syscall", "enum", '"execve" or "execveat"; or "kernel" when the exec was seen '
              "without its system call: one started by the kernel itself, or one already "
              "under way when rbtrace attached (its arguments are then unknown, argv_unknown)",
              values=SYSCALLS),
        Field("filename", "text", "the file name the caller passed, exactly (at most 4095 "
              "bytes): not resolved, relative to the working directory or to dirfd; for "
              '"kernel", the name the kernel used'),
        Field("dirfd", "int", "the directory file descriptor a relative filename is resolved "
              "against; -100 is AT_FDCWD (the working directory)", when="execveat"),
        Field("at_flags", "int", "raw flags: AT_EMPTY_PATH (4096, run the file dirfd refers "
              "to, as fexecve(3) does) and AT_SYMLINK_NOFOLLOW (256)", when="execveat"),
        Field("exe", "text", "the path of the executable that was run, as /proc/PID/exe shows "
              'it, with " (deleted)" appended when the file had been removed; null when the '
              "exec failed or the path was deeper than 64 directories or longer than 4 KiB",
              null=True, when="execveat"),
        Field("argv", "texts", "the arguments captured (argv[0] first), at most --max-args of "
              "them and --max-arg-bytes in all; the last one may be cut (last_arg_cut); an "
              'argument that could not be read is an empty string (argv_fault); empty for "kernel"'),
        Field("argc", "int", "the number of arguments the program was given, counted in full, "
              "not only the captured ones (a minimum when argc_capped is true)", minimum=0),
        Field("args_truncated", "bool", "true when argv is not all of the arguments, whole: "
              "fewer than argc, or the last one cut"),
        Field("ret", "int", "raw result: 0 for success, or a negative error number"),
        Field("errno", "errno", 'ret, decoded: the error\'s name ("ENOENT"), "E<N>" for a '
              "number without a name, or null for success", null=True),
        Field("filename_truncated", "bool", "the file name was longer than 4095 bytes (the "
              "exec fails with ENAMETOOLONG)", when=_RARE_WHEN),
        Field("filename_fault", "bool", "the file name could not be read; filename is then "
              "empty", when=_RARE_WHEN),
        Field("argv_fault", "bool", "an argument could not be read; it shows as an empty "
              "string", when=_RARE_WHEN),
        Field("argv_null", "bool", "the caller passed a NULL argv; Linux runs the program with "
              "an empty argument list", when=_RARE_WHEN),
        Field("argc_capped", "bool", f"there were more than {ARGC_EXACT_MAX} arguments, more "
              "than rbtrace counts, so argc is a minimum", when=_RARE_WHEN),
        Field("argv_unknown", "bool", "the arguments are unknown: the exec was seen without its "
              'system call (syscall is "kernel")', when=_RARE_WHEN),
        Field("last_arg_cut", "bool", "the last argument captured was cut by --max-arg-bytes",
              when=_RARE_WHEN),
    ),
    columns=(
        # priority: which columns a narrow terminal drops first (highest)
        time_column(priority=5),
        pid_column(priority=1),
        pid_column("PPID", "ppid", priority=7),
        Column("USER", lambda e: fields.escape_str(e["user"]), width=8, min_width=4, priority=8,
               doc="the user's login name, or the user id when it has none"),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4,
               doc="the command name: the new program's for a successful exec, the caller's "
                   "for a failed one"),
        Column("RET", lambda e: e["errno"] or str(e["ret"]), width=6, justify="right",
               priority=3, whole=True, doc="0 for success, else the error name (ENOENT)"),
        Column("FILENAME", _file_text, min_width=12, keep="end", priority=6,
               doc="the file name as passed; for execveat, a relative name is prefixed by "
                   '"fd N/", and the executable that was run follows an arrow'),
        Column("ARGV", _args_text, min_width=24, priority=2,
               doc="the arguments, each as a shell would read it back"),
    ),
)
