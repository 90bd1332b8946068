"""rbtrace open: every file open, with its result (probes/open.bpf.c).

A record's `path` area holds the path and its NUL; with --full-path, for a
relative path, the components of the directory it is relative to follow
(`dir_len` bytes, innermost first, each with its NUL), read in the kernel
at the call.
"""
import os

import numpy as np
from typing import NamedTuple, Optional

from rbtrace import fields
from rbtrace.kernel import btf_offsets
from rbtrace.probes import Column, Probe, cstr, pid_column, put_text, shown, time_column

SYSCALLS = ("open", "openat", "openat2", "creat")
SYSCALL_OPENAT2 = 2

AT_FDCWD = -100
O_ACCMODE = 0o3
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000       # __O_TMPFILE: with O_CREAT, the flags that take a mode

# Mirrors the ST_* bits in probes/open.bpf.c.
PATH_TRUNCATED = 1
PATH_FAULT = 2
HOW_FAULT = 4
HOW_SHORT = 8
PATH_AT_EXIT = 16
DIR = 32                         # the directory's components follow, complete
DIR_TRUNCATED = 64               # ... only the innermost ones (too deep or long)
DIR_DELETED = 128                # the directory had been removed

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


# Kernel struct members the probe reads for --full-path, by -D name (see
# dir_path() in probes/open.bpf.c): the caller's cwd (task->fs->pwd), a
# dirfd's file (task->files->fdt->fd[dirfd]), and the dentry and mount
# walk up to the root.
STRUCT_OFFSETS = {
    "TASK_FS_OFF": ("task_struct", "fs"),
    "FS_PWD_OFF": ("fs_struct", "pwd"),
    "TASK_FILES_OFF": ("task_struct", "files"),
    "FILES_FDT_OFF": ("files_struct", "fdt"),
    "FDTABLE_MAX_FDS_OFF": ("fdtable", "max_fds"),
    "FDTABLE_FD_OFF": ("fdtable", "fd"),
    "FILE_F_PATH_OFF": ("file", "f_path"),
    "FILE_F_INODE_OFF": ("file", "f_inode"),
    "INODE_I_MODE_OFF": ("inode", "i_mode"),
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


# Every member an open event can have, in order (`*_b64` only when the
# text is not UTF-8, `full_path*` only with --full-path); the man page's
# FIELDS section is tested against it.
JSON_FIELDS = ("type", "seq", "time", "ts_ns", "pid", "tid", "ppid", "uid", "user",
               "comm", "comm_b64", "syscall", "path", "path_b64", "path_truncated", "dirfd",
               "flags", "flags_text", "mode", "resolve", "ret", "fd", "errno",
               "full_path", "full_path_b64", "full_path_truncated", "full_path_deleted")


def _used(event_type, records):
    """Bytes used in each record's path area: the path, its NUL, then the
    directory's components (--full-path), as int64; never past the area."""
    used = records["path_len"].astype(np.int64) + 1 + records["dir_len"].astype(np.int64)
    return np.minimum(used, event_type.dtype.fields["path"][0].itemsize)


class OpenProbe(Probe):
    name = "open"
    source = "open.bpf.c"
    event_structs = ("open_event_short", "open_event_long")
    tally = (("commands", "comm"), ("errors", "ret"))
    # Top files for the table's summary view only: counting the path column
    # costs about a microsecond per event, more than decoding it, and in
    # JSON or plain mode storms are the point.
    table_tally = (("files", "path"),)
    columns = (
        # priority: which columns a narrow terminal drops first (highest)
        time_column(priority=5),
        pid_column(priority=1),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4),
        Column("FD/ERR", _fd_or_error, width=6, justify="right", priority=3, whole=True),
        Column("FLAGS", _flags_cell, width=24, min_width=8, priority=6),
        Column("PATH", _path_cell, min_width=16, keep="end", priority=2),
    )

    def __init__(self, options):
        super().__init__(options)
        self._templates = {}
        self._json_templates = {}

    def cflags(self):
        flags = super().cflags()
        o = self.options
        if o.get("path"):
            flags["FILTER_PATH"] = c_bytes_literal(parse_path_prefix(o["path"]))
        f = o.get("flags")
        if f is not None:
            if isinstance(f, str):
                f = parse_flags_filter(f)
            if f.mask:
                flags["FILTER_FLAGS"] = hex(f.mask)
            if f.accmode is not None:
                flags["FILTER_ACCMODE"] = f.accmode
        if o.get("full_path"):
            flags["FULL_PATH"] = 1
            flags.update(btf_offsets(STRUCT_OFFSETS))
        return flags

    def decode(self, event_type, records, offsets, data):
        """Events for a segment of records.

        Storms repeat themselves: everything but seq and the time is a
        function of the record's bytes from `pid` to the end of the used
        path area (the path, its NUL, the directory's components), so those
        bytes key a cache of finished events ("templates") and most events
        cost one slice, one lookup and one dict copy."""
        if not len(records):
            return []
        layout = event_type.dtype.fields
        key_off, path_off = layout["pid"][1], layout["path"][1]
        lo = (offsets + key_off).tolist()
        hi = (offsets + path_off + _used(event_type, records)).tolist()
        seqs = records["seq"].tolist()
        stamps = records["ts_ns"].tolist()
        clock = self.clock
        wall = records["ts_ns"].astype("i8") + clock.offset_ns
        secs = (wall // 1_000_000_000).tolist()
        nsecs = (wall % 1_000_000_000).tolist()
        templates = self._templates
        if len(templates) > 4096:
            templates.clear()
        last_sec = prefix = None
        out = []
        append = out.append
        for i, (a, b, seq, ts, sec, ns) in enumerate(zip(lo, hi, seqs, stamps, secs, nsecs)):
            key = bytes(data[a:b])
            tpl = templates.get(key)
            if tpl is None:
                tpl = self._event(records[i], key[path_off - key_off:])
                if b - a <= 512:            # long paths are rare: not worth the memory
                    templates[key] = tpl
            if sec != last_sec:
                # "2026-11-24T07:01:02." from Clock, which caches the second
                prefix = clock.iso(sec * 1_000_000_000 - clock.offset_ns)[:-10]
                last_sec = sec
            e = tpl.copy()
            e["seq"] = seq
            e["time"] = f"{prefix}{ns:09d}Z"
            e["ts_ns"] = ts
            append(e)
        return out

    _JSON_HEAD = b'{"type":"open","seq":null,"time":null,"ts_ns":null,'

    def json_lines(self, event_type, records, offsets, data) -> bytes:
        """The JSON lines for a segment, without building a dict per event.

        Same templates as decode(), kept serialized: an event is its
        template's bytes after the seq/time/ts_ns members, behind a
        per-event head.  Exactly what JsonRenderer would write for decode()'s
        dicts (a unit test holds the two equal)."""
        import orjson
        if not len(records):
            return b""
        layout = event_type.dtype.fields
        key_off, path_off = layout["pid"][1], layout["path"][1]
        used = _used(event_type, records)
        lo = (offsets + key_off).tolist()
        hi = (offsets + path_off + used).tolist()
        clock = self.clock
        wall = records["ts_ns"].astype("i8") + clock.offset_ns
        secs = (wall // 1_000_000_000).tolist()
        cache = self._json_templates
        if len(cache) > 4096:
            cache.clear()
        head_len = len(self._JSON_HEAD)
        n = len(lo)
        # A storm repeats one event.  Records whose bytes after ts/seq equal
        # their predecessor's (one numpy compare for the segment) within the
        # same second form a run, and a run is formatted with one `%` over a
        # repeated line template: no per-event Python work but the numbers.
        newrun = np.ones(n, dtype=bool)
        stride = int(offsets[1] - offsets[0]) if n > 1 else 0
        if n > 1 and bool((np.diff(offsets) == stride).all()):
            base = int(offsets[0])
            # Fixed members (path_len and dir_len among them) compared as
            # one value...
            fixed = np.ndarray((n,), dtype=np.dtype((np.void, path_off - key_off)), buffer=data,
                               offset=base + key_off, strides=(stride,))
            same = fixed[1:] == fixed[:-1]
            # ...then the used bytes of the path area (path, NUL, directory):
            # the rest is whatever an earlier record left there.
            width = min(int(used.max()), event_type.size - path_off)
            paths = np.ndarray((n, width), dtype=np.uint8, buffer=data,
                               offset=base + path_off, strides=(stride, 1))
            valid = np.arange(width)[None, :] < used[1:, None]
            same &= ~((paths[1:] != paths[:-1]) & valid).any(axis=1)
            newrun[1:] = ~same
        sec_arr = wall // 1_000_000_000
        newrun[1:] |= sec_arr[1:] != sec_arr[:-1]
        starts = np.flatnonzero(newrun).tolist()
        ends = starts[1:] + [n]
        # All int64: with a uint64 column numpy would promote to float64,
        # exact only below 2**53 (ts_ns passes that after 104 days up).
        numbers = np.column_stack((records["seq"].astype(np.int64),
                                   (wall % 1_000_000_000).astype(np.int64),
                                   records["ts_ns"].astype(np.int64))).ravel().tolist()
        out = []
        for s0, e0 in zip(starts, ends):
            key = bytes(data[lo[s0]:hi[s0]])
            rest = cache.get(key)
            if rest is None:
                tpl = self._event(records[s0], key[path_off - key_off:])
                # '%' in a path must survive the formatting below
                rest = orjson.dumps(tpl)[head_len:].replace(b"%", b"%%") + b"\n"
                if hi[s0] - lo[s0] <= 512:
                    cache[key] = rest
            prefix = clock.iso(secs[s0] * 1_000_000_000 - clock.offset_ns)[:-10].encode()
            unit = b'{"type":"open","seq":%d,"time":"' + prefix + b'%09dZ","ts_ns":%d,' + rest
            out.append(unit * (e0 - s0) % tuple(numbers[3 * s0:3 * e0]))
        return b"".join(out)

    def _event(self, rec, area):
        """The event for one record, with seq, time and ts_ns left None.
        `area`: the used bytes of its path area."""
        st = int(rec["status"])
        plen = int(rec["path_len"])
        raw, components = area[:plen], area[plen + 1:]
        sc = int(rec["syscall"])
        r = int(rec["ret"])
        pid, tid, uid, dirfd = int(rec["pid"]), int(rec["tid"]), int(rec["uid"]), int(rec["dirfd"])
        e = {"type": "open", "seq": None, "time": None, "ts_ns": None, "pid": pid, "tid": tid,
             "ppid": int(rec["ppid"]), "uid": uid, "user": fields.user_name(uid)}
        put_text(e, "comm", cstr(bytes(rec["comm"])))
        e["syscall"] = SYSCALLS[sc] if sc < len(SYSCALLS) else str(sc)
        if st & PATH_FAULT:
            raw = None
            e["path"] = None
        else:
            put_text(e, "path", raw)
        e["path_truncated"] = bool(st & PATH_TRUNCATED)
        e["dirfd"] = dirfd
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
        if self.options.get("full_path"):
            fp, cut = full_path(raw, st, components) if not st & PATH_TRUNCATED else (None, False)
            if fp is None:
                e["full_path"] = None
            else:
                put_text(e, "full_path", fp)
            e["full_path_truncated"] = cut
            e["full_path_deleted"] = fp is not None and bool(st & DIR_DELETED)
        return e
