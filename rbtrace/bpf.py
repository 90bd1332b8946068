"""The only module that imports bcc: compile a probe, attach it, read maps.

bcc is imported lazily, after tracefs is mounted: bcc decides at import
time where tracefs is.  BCC and clang write diagnostics to the process's
stdout and stderr (file descriptors, not sys.stdout), so compiling runs
with both redirected to a temporary file; stdout stays pure data.
"""
import contextlib
import ctypes
import os
import re
import sys
import tempfile

import numpy as np

from rbtrace import kernel
from rbtrace.errors import EnvironmentProblem, ProbeError
from rbtrace.paths import probes_dir
from rbtrace.ringbuf import EventType

# Mirrors enum rbtrace_stat in probes/common.h.
STAT_SUBMITTED, STAT_RINGBUF_FULL, STAT_MAP_FULL, STAT_NOT_FOLLOWED = 0, 1, 2, 3


def import_bcc():
    try:
        import bcc
    except ImportError as e:
        raise EnvironmentProblem(
            f"BCC's Python module is not importable from {sys.executable} ({e})",
            hint="apt-get install python3-bpfcc, and run rbtrace from a venv made with "
                 "/usr/bin/python3 -m venv --system-site-packages (make setup does this)") from e
    return bcc


class Captured:
    text = ""


@contextlib.contextmanager
def captured_fds():
    """Send fds 1 and 2 to a temp file; its text is in `.text` afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    captured = Captured()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            captured.text = tmp.read().decode(errors="replace")


def _compile_errors(text, source_name):
    """The compiler's error lines, for a one-line message plus detail."""
    lines = [ln for ln in text.splitlines() if re.search(r"\berror\b", ln)]
    return lines or [ln for ln in text.splitlines() if ln.strip()][-5:]


_CTYPE_TO_NUMPY = {
    ctypes.c_uint8: "u1", ctypes.c_int8: "i1", ctypes.c_uint16: "<u2", ctypes.c_int16: "<i2",
    ctypes.c_uint32: "<u4", ctypes.c_int32: "<i4", ctypes.c_uint64: "<u8", ctypes.c_int64: "<i8",
    ctypes.c_char: "S1", ctypes.c_bool: "u1",
}


def dtype_from_ctypes(struct) -> np.dtype:
    """A flat numpy dtype with the same offsets as BCC's ctypes struct.

    BCC describes each table's C types exactly (from clang); nested structs
    are flattened to their leaf names, char arrays become 'S<n>' columns.
    """
    names, formats, offsets = [], [], []

    def walk(cls, base, prefix):
        for field in cls._fields_:
            name, ftype = field[0], field[1]
            if name.startswith("__pad"):
                continue
            off = base + getattr(cls, name).offset
            if hasattr(ftype, "_fields_"):
                walk(ftype, off, prefix + name + ".")
                continue
            if hasattr(ftype, "_length_"):
                elem = ftype._type_
                if elem in (ctypes.c_char, ctypes.c_int8, ctypes.c_uint8):
                    fmt = f"S{ftype._length_}"
                else:
                    fmt = (_numpy_scalar(elem), (ftype._length_,))
            else:
                fmt = _numpy_scalar(ftype)
            leaf = name if name not in names else prefix + name
            names.append(leaf)
            formats.append(fmt)
            offsets.append(off)

    walk(struct, 0, "")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": ctypes.sizeof(struct)})


def _numpy_scalar(ctype):
    for c, fmt in _CTYPE_TO_NUMPY.items():
        if ctype is c or (ctypes.sizeof(ctype) == ctypes.sizeof(c) and
                          ctype._type_ == c._type_):
            return fmt
    raise ProbeError(f"event field of C type {ctype.__name__} is not supported")


def prepare():
    """Everything BCC needs before it compiles: privileges, tracefs mounted
    (before bcc is imported), headers it can use.  Returns (bcc, headers)."""
    kernel.ensure_privileges()
    kernel.ensure_tracefs()
    headers = kernel.find_headers()
    if headers.path is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    return import_bcc(), headers


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$')


def inline_local_includes(path, search=(), _seen=None) -> str:
    """The probe's source with its `#include "x.h"` files pasted in.

    BCC rewrites map calls (`stats.lookup(...)`) only in the main file, so
    helpers in common.h that touch maps must become part of it.  `#line`
    markers keep compiler messages pointing at the real files and lines.
    BCC inserts text of its own between the lines (each tracepoint's
    argument struct, for one), so every line gets its marker; only lines
    continuing a macro (after a backslash) can't have one.
    """
    path = os.path.abspath(path)
    _seen = set() if _seen is None else _seen
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().split("\n")
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(lines, 1):
        m = _LOCAL_INCLUDE.match(line)
        candidate = None
        if m:
            for d in (os.path.dirname(path), *map(str, search)):
                if os.path.isfile(os.path.join(d, m.group(1))):
                    candidate = os.path.abspath(os.path.join(d, m.group(1)))
                    break
        if candidate is None:
            if number > 1 and not lines[number - 2].endswith("\\"):
                out.append(f'#line {number} "{path}"')
            out.append(line)
            continue
        if candidate not in _seen:      # not ours: left to the compiler
            _seen.add(candidate)
            out.append(inline_local_includes(candidate, search, _seen))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out)


# Hook kinds a BCC source can use besides tracepoints, by how BCC spells them.
_HOOK_USE = {
    "kprobe": re.compile(r"\b(kprobe__|kretprobe__)\w+\s*\("),
    "fentry": re.compile(r"\b(KFUNC_PROBE|KRETFUNC_PROBE|KMOD_RET)\s*\("),
}


def _refuse_hooks_that_cannot_load(text, source):
    """Name a hook kind this kernel can't load (as `rbtrace doctor` finds it)
    instead of letting BCC fail with a traceback-shaped message."""
    from rbtrace.doctor import try_hook
    for kind, pattern in _HOOK_USE.items():
        if pattern.search(text):
            ok, reason = try_hook(kind)
            if not ok:
                raise ProbeError(f"{source}: uses {kind} hooks, which this kernel can't load: {reason}",
                                 hint="rbtrace doctor lists the hook kinds that load here; "
                                      "use tracepoints")


_TRACEPOINT_USE = re.compile(r"^\s*TRACEPOINT_PROBE\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.M)

BPF_OBJ_GET_INFO_BY_FD = 15
_PROG_INFO_SIZE = 232            # sizeof(struct bpf_prog_info), uapi 6.1
_RECURSION_MISSES_OFF = 208      # offsetof(struct bpf_prog_info, recursion_misses)


def _recursion_misses(prog_fd: int) -> int:
    from rbtrace.doctor import SYS_BPF
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    attr = (ctypes.c_uint64 * 4)()
    attr[0] = prog_fd | (_PROG_INFO_SIZE << 32)       # bpf_fd, info_len
    attr[1] = ctypes.addressof(info)                  # info
    if kernel.libc().syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), 16) != 0:
        return 0
    return int.from_bytes(info.raw[_RECURSION_MISSES_OFF:_RECURSION_MISSES_OFF + 8], "little")


class LoadedProbe:
    """A compiled probe with its tracepoints attached."""

    def __init__(self, source, cflags: dict, event_structs, debug=False):
        bcc, self.headers = prepare()
        flags = []
        if cflags.get("FOLLOW"):
            cflags = {**cflags, "EXIT_HAS_GROUP_DEAD": int(kernel.exit_has_group_dead())}
        for name, value in {**kernel.task_offsets(), **cflags}.items():
            flags.append(f"-D{name}" if value is True else f"-D{name}={value}")
        self.cflags = flags
        text = inline_local_includes(source, [probes_dir()])
        for category, event in _TRACEPOINT_USE.findall(text):
            if not kernel.tracepoint_exists(category, event):
                raise ProbeError(f"{source}: tracepoint {category}:{event} does not exist on this kernel",
                                 hint=f"ls {kernel.TRACEFS_UNDER_DEBUGFS}/events/{category}")
        _refuse_hooks_that_cannot_load(text, source)
        with captured_fds() as output:
            try:
                self.bpf = bcc.BPF(text=text.encode(errors="surrogateescape"), cflags=flags)
                failure = None
            except Exception as e:  # BCC raises bare Exception for all of these
                failure = e
        text = output.text
        if debug and text.strip():
            sys.stderr.write(text)
        if failure is not None:
            detail = _compile_errors(text, source)
            msg = str(failure)
            if "compile" in msg.lower() or detail:
                raise ProbeError(f"{source}: {detail[0].strip() if detail else msg}",
                                 hint="run with --debug for the compiler's full output")
            raise ProbeError(f"loading {source}: {msg}")
        self.event_types = [
            EventType(name, dtype_from_ctypes(self.bpf[f"layout_{name}".encode()].Leaf))
            for name in event_structs]
        ring = self.bpf[b"events"]
        self.ring_fd = ring.map_fd
        self._stats = self.bpf[b"stats"]

    def counters(self):
        """Per-CPU counters summed: submitted, ringbuf_full, map_full,
        not_followed."""
        out = []
        for i in (STAT_SUBMITTED, STAT_RINGBUF_FULL, STAT_MAP_FULL, STAT_NOT_FOLLOWED):
            vals = self._stats[self._stats.Key(i)]
            out.append(sum(int(v) for v in vals))
        return out

    def follow(self, pids):
        """Add processes to the probe's `followed` map (FOLLOW=1 only)."""
        followed = self.bpf[b"followed"]
        for pid in pids:
            followed[followed.Key(pid)] = followed.Leaf(1)

    def followed_count(self) -> int:
        """Followed processes still alive (they leave the map at exit)."""
        return sum(1 for _ in self.bpf[b"followed"].keys())

    def prog_misses(self) -> int:
        """Program runs the kernel skipped (bpf_prog_info.recursion_misses).

        The kernel refuses to run a tracing program on a CPU where a BPF
        program is already running (another tracer's, say) and only counts
        it.  Each skipped run may be a lost event, so it is reported."""
        return sum(_recursion_misses(f.fd) for f in self.bpf.funcs.values())

    def detach(self):
        """Stop the programs; maps and the ring stay readable."""
        for tp in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(tp)
        for tp in list(self.bpf.raw_tracepoint_fds):
            self.bpf.detach_raw_tracepoint(tp)

    def close(self):
        self.bpf.cleanup()
