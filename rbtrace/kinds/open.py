"""rbtrace open: every file open, with its result (probes/open.bpf.c).

A record's `path` area holds the path and its NUL; with --full-path, for a
relative path, the components of the directory it is relative to follow
(`dir_len` bytes, innermost first, each with its NUL), read in the kernel
at the call.  SPEC below declares the event's members, options and
columns; the numbers the probe shares with this file (the syscalls' and
the status bits') are defined here and reach the C as -D flags.
"""
import os
from typing import NamedTuple, Optional

import click

from rbtrace import fields
from rbtrace.codec import Codec, put_text, shown
from rbtrace.kernel import FD_FILE_OFFSETS, PATH_WALK_OFFSETS
from rbtrace.spec import Column, Field, Option, Spec, pid_column, time_column

# The calls traced, by the number the probe gives each (-D SYSCALL_OPEN=0...).
SYSCALLS = ("open", "openat", "openat2", "creat")
SYSCALL_OPENAT2 = SYSCALLS.index("openat2")

AT_FDCWD = -100
O_ACCMODE = 0o3
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000       # __O_TMPFILE: with O_CREAT, the flags that take a mode

# A record's status bits, set by the probe (-D ST_PATH_TRUNCATED=1...).
PATH_TRUNCATED = 1               # longer than 4095 bytes: the first 4095 are there
PATH_FAULT = 2                   # unreadable, at entry and at exit
HOW_FAULT = 4                    # openat2's open_how unreadable
HOW_SHORT = 8                    # openat2's usize too small: no open_how
PATH_AT_EXIT = 16                # path read at exit (the read at entry faulted)
DIR = 32                         # the directory's components follow, complete
DIR_TRUNCATED = 64               # ... only the innermost ones (too deep or long)
DIR_DELETED = 128                # the directory had been removed

STATUS_BITS = {"PATH_TRUNCATED": PATH_TRUNCATED, "PATH_FAULT": PATH_FAULT,
               "HOW_FAULT": HOW_FAULT, "HOW_SHORT": HOW_SHORT, "PATH_AT_EXIT": PATH_AT_EXIT,
               "DIR": DIR, "DIR_TRUNCATED": DIR_TRUNCATED, "DIR_DELETED": DIR_DELETED}


def constants() -> dict:
    """The -D flags every open probe is compiled with: the numbers shared
    with probes/open.bpf.c, which defines none of its own."""
    flags = {f"SYSCALL_{name.upper()}": number for number, name in enumerate(SYSCALLS)}
    flags.update({f"ST_{name}": bit for name, bit in STATUS_BITS.items()})
    return flags


MAX_PREFIX = 255                 # --path: bytes compared in the kernel (unrolled)


class FlagsFilter(NamedTuple):
    """--flags: `mask` bits must all be set; `accmode`, when not None, must
    equal flags & O_ACCMODE."""
    mask: int
    accmode: Optional[int]
    text: str

    def __str__(self):
        return self.text


def parse_flags_filter(text: str) -> FlagsFilter:
    """"O_WRONLY", "wronly,creat", "O_RDONLY|O_CLOEXEC" -> FlagsFilter.

    Raises ValueError with a one-line reason."""
    mask, accmode = 0, None
    for part in text.replace("|", ",").split(","):
        if not part.strip():
            raise ValueError(f"empty flag name in '{fields.for_message(text)}' (names are separated by , or |)")
        value = fields.parse_open_flags(part)       # one name; raises ValueError
        if value & ~O_ACCMODE:
            mask |= value
        else:                                       # RDONLY, WRONLY, RDWR, ACCMODE
            if accmode is not None and accmode != value:
                raise ValueError(f"conflicting access modes in '{fields.for_message(text)}'")
            accmode = value
    return FlagsFilter(mask, accmode, text)


def parse_path_prefix(text: str) -> bytes:
    """--path: the bytes a path must start with (as the caller passed it)."""
    raw = os.fsencode(text)
    if not raw:
        raise ValueError("the path prefix is empty")
    if b"\0" in raw:
        raise ValueError("the path prefix contains a NUL byte")
    if len(raw) > MAX_PREFIX:
        raise ValueError(f"the path prefix is {len(raw)} bytes; at most {MAX_PREFIX} are "
                         f"compared in the kernel")
    return raw


def c_bytes_literal(raw: bytes) -> str:
    """A C string literal holding exactly these bytes (octal escapes)."""
    return '"' + "".join(f"\\{b:03o}" for b in raw) + '"'


class OpenFlagsType(click.ParamType):
    """open(2) flag names that must all be set: "O_WRONLY", "wronly,creat"."""

    name = "FLAGS"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return parse_flags_filter(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class PathPrefixType(click.ParamType):
    """A path prefix matched byte by byte in the kernel."""

    name = "PREFIX"

    def convert(self, value, param, ctx):
        try:
            parse_path_prefix(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return value


def path_cflags(prefix) -> dict:
    """--path: FILTER_PATH, the prefix's bytes as a C string literal."""
    return {"FILTER_PATH": c_bytes_literal(parse_path_prefix(prefix))}


def flags_cflags(f) -> dict:
    """--flags: FILTER_FLAGS (bits that must all be set), FILTER_ACCMODE."""
    if isinstance(f, str):
        f = parse_flags_filter(f)
    flags = {}
    if f.mask:
        flags["FILTER_FLAGS"] = hex(f.mask)
    if f.accmode is not None:
        flags["FILTER_ACCMODE"] = f.accmode
    return flags


# Kernel struct members the probe reads for --full-path, by -D name (see
# dir_path() in probes/open.bpf.c): the caller's cwd (task->fs->pwd), a
# dirfd's file (task->files->fdt->fd[dirfd]), and the dentry and mount
# walk up to the root.
STRUCT_OFFSETS = {
    "TASK_FS_OFF": ("task_struct", "fs"),
    "FS_PWD_OFF": ("fs_struct", "pwd"),
    **FD_FILE_OFFSETS,
    **PATH_WALK_OFFSETS,
}


def full_path(raw: Optional[bytes], status: int, components: bytes) -> tuple:
    """(full path or None, truncated) of a traced path: an absolute path as
    it is; a relative one joined to its directory's path, made from the
    components the probe read (innermost first, each ending with a NUL).
    Joined, never normalized: ".." and symlinks are left to the reader.
    When the directory was cut (too deep or too long), the result is its
    innermost components joined to the path, without the leading "/"."""
    if not raw:
        return None, False
    if raw.startswith(b"/"):
        return raw, False
    if not status & (DIR | DIR_TRUNCATED):
        return None, False
    parts = components.split(b"\0")
    parts.pop()                         # after the last NUL: nothing
    parts.reverse()
    parts.append(raw)
    if status & DIR:
        return b"/" + b"/".join(parts), False
    return b"/".join(parts), True


def _fd_or_error(e):
    if e["fd"] is not None:
        return str(e["fd"])
    return e["errno"] or str(e["ret"])


def _flags_cell(e):
    text = e["flags_text"]
    return "?" if text is None else text.replace("O_", "")


def _path_cell(e):
    if e.get("full_path") is not None:
        text = shown(e, "full_path")
        if e["full_path_truncated"]:
            text = "…/" + text
    elif e["path"] is None:
        return "(unreadable)"
    else:
        text = shown(e, "path")
        if not e["path"].startswith("/"):
            dirfd = e["dirfd"]
            text = ("AT_FDCWD:" if dirfd == AT_FDCWD else f"fd{dirfd}:") + text
    if e["path_truncated"]:
        text += " [truncated]"
    return text


class OpenCodec(Codec):
    """Storms repeat themselves: an event is a function of the record's
    bytes from `pid` to the end of the used path area (the path, its NUL,
    the directory's components), so the shared codec's template cache and
    JSON fast path serve it (Codec.cached)."""

    event_structs = ("open_event_short", "open_event_long")
    cached = True
    variable = "path"
    template_max = 512          # long paths are rare: not worth the memory

    def cflags(self):
        flags = super().cflags()
        flags.update(constants())
        return flags

    def wants_offsets(self):
        """The kernel structs are read only for --full-path."""
        return bool(self.options.get("full_path"))

    rows = True

    def used(self, event_type, records):
        """Bytes used in each record's path area: the path, its NUL, then the
        directory's components (--full-path); never past the area."""
        import numpy as np
        used = records["path_len"].astype(np.int64) + 1 + records["dir_len"].astype(np.int64)
        return np.minimum(used, event_type.member("path")[1])

    def bodies(self, event_type, records, offsets, data):
        path_off = event_type.member("path")[0]
        starts = (offsets + path_off).tolist()
        ends = (offsets + path_off + self.used(event_type, records)).tolist()
        full = bool(self.options.get("full_path"))
        out = []
        for rec, a, b in zip(records, starts, ends):
            out.append(self._body(rec, bytes(data[a:b]), full))
        return out

    def row_bodies(self, event_type, rows, payloads):
        """bodies() without numpy: the same _body() over dicts of ints."""
        path_off, room = event_type.member("path")
        full = bool(self.options.get("full_path"))
        out = []
        for row, payload in zip(rows, payloads):
            used = min(row["path_len"] + 1 + row["dir_len"], room)
            out.append(self._body(row, payload[path_off:path_off + used], full))
        return out

    @staticmethod
    def _body(rec, area, full):
        """The members after the header of one record.  `area`: the used
        bytes of its path area."""
        st = int(rec["status"])
        plen = int(rec["path_len"])
        raw, components = area[:plen], area[plen + 1:]
        sc = int(rec["syscall"])
        r = int(rec["ret"])
        e = {"syscall": SYSCALLS[sc] if sc < len(SYSCALLS) else str(sc)}
        if st & PATH_FAULT:
            raw = None
            e["path"] = None
        else:
            put_text(e, "path", raw)
        e["path_truncated"] = bool(st & PATH_TRUNCATED)
        e["dirfd"] = int(rec["dirfd"])
        if st & (HOW_FAULT | HOW_SHORT):
            # openat2 without a readable struct open_how: nothing known.
            e["flags"] = e["flags_text"] = e["mode"] = e["resolve"] = None
        else:
            f = int(rec["flags"])
            e["flags"] = f
            e["flags_text"] = fields.open_flags(f)
            e["mode"] = int(rec["mode"]) if f & (O_CREAT | O_TMPFILE_BIT) else None
            e["resolve"] = int(rec["resolve"]) if sc == SYSCALL_OPENAT2 else None
        e["ret"] = r
        e["fd"] = r if r >= 0 else None
        e["errno"] = fields.errno_name(r) or None
        if full:
            fp, cut = full_path(raw, st, components) if not st & PATH_TRUNCATED else (None, False)
            if fp is None:
                e["full_path"] = None
            else:
                put_text(e, "full_path", fp)
            e["full_path_truncated"] = cut
            e["full_path_deleted"] = fp is not None and bool(st & DIR_DELETED)
        return e


FULL = "--full-path"

SPEC = Spec(
    name="open",
    # The man page's words (rbtrace/mandoc.py): this kind's own, in place
    # of the common ones.
    man={
        # rbtrace(8), COMMANDS
        "command": ("Every file open on the host (open, openat, openat2, creat), with its result."),
        "pid": "Only this process (thread group id, 1 to 4194304), all its threads. Checked in"
               " the kernel at entry.",
        "tid": "Only this thread (1 to 4194304). Checked in the kernel at entry. A thread that"
               " does not exist, a zombie or a kernel thread is a usage error: the filter "
               "would match nothing.",
        "uid": "Only this user, a name or a number: the real user id of the calling thread. "
               "Checked in the kernel at entry.",
        "comm": "Only threads whose command name is exactly *COMM* (1 to 15 bytes). Checked in"
                " the kernel at entry.",
        "failed": "Only opens that failed. Checked in the kernel at exit.",
        "path": "Only paths that start with the bytes of *PREFIX* (1 to 255 bytes), compared "
                "in the kernel with the path as the caller passed it. The path is not resolved"
                " first: with **--path /etc/**, an open of **hostname** from a process whose "
                "working directory is */etc* does not match.",
        "flags": "Only opens with all these flags set, checked in the kernel. *FLAGS* are flag"
                 " names separated by commas or **|**, in any case, with or without the **O_**"
                 " prefix (**O_WRONLY**, **wronly,creat**, **O_RDWR|O_CLOEXEC**). An access "
                 "mode (**O_RDONLY**, **O_WRONLY**, **O_RDWR**) must match exactly, so "
                 "**--flags rdonly** selects read-only opens; two different access modes are "
                 "refused. Other flags must all be present; more may be set. **O_SYNC** and "
                 "**O_TMPFILE** stand for the two bits each of them is made of.",
        "full_path": "Also report **full_path**: a relative path joined to the directory it is"
                     " relative to, the caller's working directory or the directory **dirfd** "
                     "names, read in the kernel at the call (see **FULL PATHS**), so that a "
                     "process that has exited since still gets it. The table then shows it in "
                     "the PATH column. It makes every open on the host a little dearer (see "
                     "**OVERHEAD**).",
        "column.TIME": "Time of day of the event (when the call returned), local (UTC with "
                       "--utc), to the millisecond: *HH*:*MM*:*SS*.*mmm*.",
        "column.PID": "The calling process (thread group id).",
        "column.FD/ERR": "The file descriptor returned, or the error name (**ENOENT**), or the"
                         " raw negative return value when it has no name.",
        "column.FLAGS": "The open flags, decoded, without the **O_** prefixes "
                        "(**WRONLY|CREAT|TRUNC**), or **?** when they are not known (an "
                        "**openat2** whose **struct open_how** could not be read).",
        "column.PATH": "The path as passed; a relative path is prefixed by what it is relative"
                       " to, **AT_FDCWD:** (the working directory) or **fd***N***:** (a "
                       "directory file descriptor). With **--full-path**, the full path "
                       "instead when it is known, beginning with **…/** (an ellipsis) when its"
                       " directory was cut (see **full_path_truncated**). **(unreadable)** "
                       "when the path could not be read, and **[truncated]** appended when it "
                       "was longer than 4095 bytes. In the table, a long path keeps its end.",
        "event.ts_ns": "Raw time of the event when the call returned: the kernel's "
                       "**CLOCK_MONOTONIC** in nanoseconds (time since boot, not counting "
                       "suspend), as **clock_gettime**(2) gives it.",
        "event.pid": "The calling process (thread group id).",
        "event.tid": "The calling thread.",
        "event.ppid": "The calling process's parent (its thread group id), at the time of the "
                      "call.",
        "event.uid": "Raw real user id of the calling thread (in the initial user namespace).",
        "event.comm": "The calling thread's command name (at most 15 bytes).",
        "event.path": "The path the caller passed, exactly (at most 4095 bytes), or **null** "
                      "when it could not be read at entry nor at exit (a bad pointer: the call"
                      " then fails with **EFAULT**).",
        "event.path_b64": "Only when the bytes of **path** are not valid UTF-8: their exact "
                          "bytes in base64, as for **comm_b64**.",
        "event.path_truncated": "**true** when the path was longer than 4095 bytes and "
                                "**path** holds its first 4095 (such a call fails with "
                                "**ENAMETOOLONG**).",
        "event.dirfd": "Raw directory file descriptor a relative path is resolved against: "
                       "**-100** is **AT_FDCWD** (the working directory). Always -100 for "
                       "**open** and **creat**.",
        "event.flags": "Raw open flags as the caller passed them, an integer (**577** is "
                       "O_WRONLY|O_CREAT|O_TRUNC); for **creat** the flags it implies, "
                       "O_CREAT|O_WRONLY|O_TRUNC. **null** when unknown (an **openat2** whose "
                       "**struct open_how** was unreadable or too small).",
        "event.flags_text": "**flags**, decoded: the access mode first, then the flag names, "
                            "then any bits without a name as one hexadecimal number, "
                            "“**O_WRONLY|O_CREAT|O_TRUNC**”. **null** when **flags** is.",
        "event.mode": "Raw file mode bits for a file created, an integer (JSON has no octal: "
                      "**438** is 0666, before the umask); only when **flags** has **O_CREAT**"
                      " or **O_TMPFILE**, **null** otherwise.",
        "event.resolve": "Raw **RESOLVE_\\*** bits of **openat2**; **null** for the other calls"
                         " and when unknown.",
        "event.ret": "Raw return value: the file descriptor (0 or more), or a negative error "
                     "number.",
        "event.errno": "**ret**, decoded: the error's name (**\"ENOENT\"**), **\"E***N***\"** for "
                       "a number without a name, or **null** when the call succeeded.",
        "event.full_path": "Only with **--full-path**: the path made absolute: for a relative "
                           "**path**, the directory it is relative to (the caller's working "
                           "directory for **AT_FDCWD**, else the directory **dirfd** names), "
                           "as it was at the call, joined to **path** with a **/**. Joined, "
                           "never normalized: **..** and symbolic links stay as they are, and "
                           "**./x** gives *dir***/./x.** An absolute **path** is repeated as "
                           "it is. See **FULL PATHS** for what the directory is under "
                           "**chroot**(2) and in a mount namespace. **null** when there is no "
                           "directory to tell: **dirfd** is not open or not a directory (the "
                           "call failed with **EBADF** or **ENOTDIR**), or the path is "
                           "**null**, empty or truncated. When the directory's path was cut "
                           "(see **full_path_truncated**), it holds the end of the full path: "
                           "the innermost components that were read, then **path**, without "
                           "the leading **/**.",
        "event.full_path_b64": "Only when the bytes of **full_path** are not valid UTF-8: "
                               "their exact bytes in base64, as for **comm_b64**.",
        "event.full_path_truncated": "Only with **--full-path**: **true** when the directory "
                                     "had more than 128 levels (dentries and mount crossings) "
                                     "or a path longer than 4096 bytes (which a process can "
                                     "reach with relative **chdir**(2) calls), and "
                                     "**full_path** holds only its end; false otherwise.",
        "event.full_path_deleted": "Only with **--full-path**: **true** when the directory had"
                                   " been removed (**rmdir**(2)) at the call, while the caller"
                                   " still had it as working directory or open as **dirfd**; "
                                   "**full_path** then says where it was (what */proc* shows "
                                   "followed by “** (deleted)**”). A removed directory holds "
                                   "no names, so such an open fails with **ENOENT** (only "
                                   "**.**, **..** and paths through **..** still lead "
                                   "somewhere). False otherwise.",
        "start.filters": "The filters in effect, as text (**pid=1234 flags=wronly failed**), "
                         "or an empty string.",
    },
    summary="trace every file open on the host, with its result",
    help="Every file open on the host (open, openat, openat2, creat), with its result.",
    codec=OpenCodec,
    source="open.bpf.c",
    # A storm of a million failing opens (benchmarks/storm.c) dropped none
    # into 8M and 0.3% into 4M.
    ring="8M",
    failed="Only failed calls.",
    tally=(("commands", "comm"), ("errors", "ret")),
    # Top files for the table's summary view only: counting the path column
    # costs about a microsecond per event, more than decoding it, and in
    # JSON or plain mode storms are the point.
    table_tally=(("files", "path"),),
    tree_count="OPEN",
    offsets=STRUCT_OFFSETS,
    options=(
        # A run-time value (the probe's config map): no -D flag, so the
        # compile cache serves every thread.
        Option(("-t", "--tid"), "tid", "Only this thread.", type=click.IntRange(1, 2**22),
               metavar="TID", filter=True, rank=2),
        Option(("--path",), "path",
               "Only paths starting with PREFIX, as passed to the call (bytes, not resolved).",
               type=PathPrefixType(), metavar="PREFIX", cflags=path_cflags, filter=True),
        Option(("--flags",), "flags",
               "Only opens with all these flags set, e.g. O_WRONLY or wronly,creat.",
               type=OpenFlagsType(), metavar="FLAGS", cflags=flags_cflags, filter=True),
        Option(("--full-path",), "full_path",
               "Also report full_path: relative paths joined to the caller's cwd or dirfd, "
               "read in the kernel at the call.", is_flag=True, cflags="FULL_PATH"),
    ),
    fields=(
        Field("syscall", "enum", 'which call: "open", "openat", "openat2" or "creat"',
              values=SYSCALLS),
        Field("path", "text", "the path the caller passed, exactly (at most 4095 bytes); "
              "null when it could not be read at entry nor at exit (a bad pointer: the "
              "call then fails with EFAULT)", null=True),
        Field("path_truncated", "bool", "true when the path was longer than 4095 bytes and "
              "path holds its first 4095 (such a call fails with ENAMETOOLONG)"),
        Field("dirfd", "int", "the directory file descriptor a relative path is resolved "
              "against: -100 is AT_FDCWD (the working directory); always -100 for open "
              "and creat"),
        Field("flags", "int", "the open flags as the caller passed them (577 is "
              "O_WRONLY|O_CREAT|O_TRUNC); for creat the flags it implies; null when unknown "
              "(an openat2 whose struct open_how was unreadable or too small)",
              null=True, minimum=0),
        Field("flags_text", "flags", "flags, decoded: the access mode first, then the flag "
              'names, then any bits without a name as one hexadecimal number, '
              '"O_WRONLY|O_CREAT|O_TRUNC"; null when flags is', null=True),
        Field("mode", "int", "the file mode bits for a file created (438 is 0666, before "
              "the umask); only when flags has O_CREAT or O_TMPFILE, null otherwise",
              null=True, minimum=0),
        Field("resolve", "int", "the RESOLVE_* bits of openat2; null for the other calls "
              "and when unknown", null=True, minimum=0),
        Field("ret", "int", "the return value: the file descriptor (0 or more), or a "
              "negative error number"),
        Field("fd", "int", "the file descriptor returned, or null when the call failed",
              null=True, minimum=0),
        Field("errno", "errno", 'ret, decoded: the error\'s name ("ENOENT"), "E<n>" for a '
              "number without a name, or null when the call succeeded", null=True),
        Field("full_path", "text", "the path made absolute: for a relative path, the "
              "directory it is relative to (the caller's working directory for AT_FDCWD, "
              "else the directory dirfd names), as it was at the call, joined to path with "
              'a "/"; joined, never normalized; an absolute path as it is.  null when there '
              "is no directory to tell (dirfd not open or not a directory) or the path is "
              "null, empty or truncated.  When the directory was cut (full_path_truncated), "
              'the end of the full path, without the leading "/"',
              null=True, when=FULL),
        Field("full_path_truncated", "bool", "true when the directory had more than 128 "
              "levels or a path longer than 4096 bytes, and full_path holds only its end",
              when=FULL),
        Field("full_path_deleted", "bool", "true when the directory had been removed "
              "(rmdir) at the call, while the caller still had it as working directory or "
              "open as dirfd; full_path then says where it was", when=FULL),
    ),
    columns=(
        # priority: which columns a narrow terminal drops first (highest)
        time_column(priority=5),
        pid_column(priority=1),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4,
               doc="the calling thread's command name"),
        Column("FD/ERR", _fd_or_error, width=6, justify="right", priority=3, whole=True,
               doc="the file descriptor returned, or the error name (ENOENT)"),
        Column("FLAGS", _flags_cell, width=24, min_width=8, priority=6,
               doc="the open flags without their O_ prefixes (WRONLY|CREAT|TRUNC), "
                   "? when unknown"),
        Column("PATH", _path_cell, min_width=16, keep="end", priority=2,
               doc="the path as passed, a relative one prefixed by AT_FDCWD: or fdN:; "
                   "with --full-path the full path when known"),
    ),
    otlp={"path": "file.path"},
)
