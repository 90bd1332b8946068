"""rbtrace exec: every program execution (probes/exec.bpf.c).

A record carries its strings packed in `data`: the argv strings (each
NUL-terminated; the last one may be cut), then the filename (NUL
included, unless cut), then, for a successful execveat, the executable's
path as NUL-terminated components from the file up to the root.  The
probe reserves the smallest of several record sizes that holds them, each
its own event struct; the decoder handles them all alike.
"""
import functools

from rbtrace import fields
from rbtrace.kernel import btf_offsets
from rbtrace.probes import (Column, Probe, cstr, pid_column, put_text, put_text_list, shown,
                            shown_list, time_column)

SYSCALLS = ("execve", "execveat", "kernel")
SYSCALL_EXECVEAT = 1

# Mirrors the FLAG_* bits in probes/exec.bpf.c.
ARGS_TRUNCATED = 1
FILENAME_TRUNCATED = 2
FILENAME_FAULT = 4
ARGV_FAULT = 8
ARGC_CAPPED = 16
NO_ARGV = 32
ARGV_NULL = 64
EXE = 128
EXE_TRUNCATED = 256
EXE_DELETED = 512
ARGC_FAULT = 1024
ARGV_FROM_EXEC = 2048
FILENAME_FROM_EXEC = 4096
_RARE = FILENAME_TRUNCATED | FILENAME_FAULT | ARGV_FAULT | ARGC_CAPPED | NO_ARGV | ARGV_NULL

# Sizes fixed in probes/exec.bpf.c.
FILENAME_BYTES = 4096
EXE_BYTES = 4096
# Record size classes by data bytes (EXEC_CLASS in the C file): these
# below the maximum, then the maximum, FILENAME + ARGS + EXE bytes.
CLASSES = (256, 1024, 4096, 16384, 65536, 262144, 1048576)

# Defaults and limits of the capture, mirrored in the exec command's
# options (rbtrace/cli.py).  Measured on 6.18: with its bounded loops (no
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


def event_structs(arg_bytes: int) -> tuple:
    """The C event structs a probe built with ARGS_BYTES=arg_bytes defines."""
    total = FILENAME_BYTES + arg_bytes + EXE_BYTES
    return tuple(f"exec_event_{n}" for n in CLASSES if n < total) + ("exec_event_max",)


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
    "FILE_F_PATH_OFF": ("file", "f_path"),
    "PATH_MNT_OFF": ("path", "mnt"),
    "PATH_DENTRY_OFF": ("path", "dentry"),
    "DENTRY_D_PARENT_OFF": ("dentry", "d_parent"),
    "DENTRY_D_NAME_OFF": ("dentry", "d_name"),
    "DENTRY_D_HASH_OFF": ("dentry", "d_hash"),
    "QSTR_NAME_OFF": ("qstr", "name"),
    "VFSMOUNT_MNT_ROOT_OFF": ("vfsmount", "mnt_root"),
    "MOUNT_MNT_OFF": ("mount", "mnt"),
    "MOUNT_MNT_PARENT_OFF": ("mount", "mnt_parent"),
    "MOUNT_MNT_MOUNTPOINT_OFF": ("mount", "mnt_mountpoint"),
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


class ExecProbe(Probe):
    name = "exec"
    source = "exec.bpf.c"
    # The argv loops are what the verifier walks (rbtrace/bpf.py _too_large).
    cost_hint = "lower --max-args or --max-arg-bytes"
    columns = (
        # priority: which columns a narrow terminal drops first (highest)
        time_column(priority=5),
        pid_column(priority=1),
        pid_column("PPID", "ppid", priority=7),
        Column("USER", lambda e: fields.escape_str(e["user"]), width=8, min_width=4, priority=8),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4),
        Column("RET", lambda e: e["errno"] or str(e["ret"]), width=6, justify="right",
               priority=3, whole=True),
        Column("FILENAME", _file_text, min_width=12, keep="end", priority=6),
        Column("ARGV", _args_text, min_width=24, priority=2),
    )

    def __init__(self, options):
        super().__init__(options)
        self.arg_bytes = options.get("max_arg_bytes") or DEFAULT_ARG_BYTES
        self.max_args = options.get("max_args") or DEFAULT_MAX_ARGS
        self.event_structs = event_structs(self.arg_bytes)

    def cflags(self):
        flags = super().cflags()
        flags["MAX_ARGS"] = self.max_args
        flags["ARGS_BYTES"] = self.arg_bytes
        flags["ARGV_PAGES"] = ARGV_PAGES
        flags["SCRATCH_SLOTS"] = possible_cpus()
        flags.update(btf_offsets(STRUCT_OFFSETS))
        return flags

    def decode(self, event_type, records, offsets, data):
        seq, ts, pid, tid, ppid, uid, comm = self.header_fields(records)
        ret = records["ret"].tolist()
        argc = records["argc"].tolist()
        fn_len = records["filename_len"].tolist()
        args_len = records["args_len"].tolist()
        exe_len = records["exe_len"].tolist()
        flags = records["flags"].tolist()
        syscall = records["syscall"].tolist()
        dirfd = records["dirfd"].tolist()
        at_flags = records["at_flags"].tolist()
        data_off = event_type.dtype.fields["data"][1]
        room = event_type.dtype.fields["data"][0].itemsize
        offs = offsets.tolist()
        clock = self.clock
        user_name = fields.user_name
        max_args = self.max_args
        out = []
        for i in range(len(seq)):
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
            e = {
                "type": "exec",
                "seq": seq[i],
                "time": clock.iso(ts[i]),
                "ts_ns": ts[i],
                "pid": pid[i],
                "tid": tid[i],
                "ppid": ppid[i],
                "uid": uid[i],
                "user": user_name(uid[i]),
            }
            put_text(e, "comm", cstr(comm[i]))
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
            e["errno"] = fields.errno_name(ret[i]) or None
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
