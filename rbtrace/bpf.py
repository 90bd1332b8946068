"""The only module that imports bcc: compile a probe, attach it, read maps.

bcc is imported lazily, after tracefs is mounted: bcc decides at import
time where tracefs is.  BCC and clang write diagnostics to the process's
stdout and stderr (file descriptors, not sys.stdout), so compiling runs
with both redirected to a temporary file; stdout stays pure data.
"""
import contextlib
import ctypes
import functools
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


_VERIFIER_END = re.compile(r"^processed \d+ insns")
_VERIFIER_INSN = re.compile(r"^\d+: \(")
_VERIFIER_SOURCE = re.compile(r"^; (.*?) @ (\S+):(\d+)$")


def _verifier_refusal(text, source):
    """A ProbeError from the verifier's log in BCC's output, or None.

    The log ends with the reason (after the last instruction, before
    "processed N insns"); the source lines it quotes ("; code @ file:line",
    from the program's BTF line info, which follows #line) say where."""
    lines = text.splitlines()
    ends = [i for i, ln in enumerate(lines) if _VERIFIER_END.match(ln)]
    if not ends:
        return None
    end = start = ends[-1]
    while start > 0 and not _VERIFIER_INSN.match(lines[start - 1]) \
            and not lines[start - 1].startswith(";"):
        start -= 1
    why = "; ".join(ln.strip() for ln in lines[start:end] if ln.strip()) or "no reason given"
    where = ""
    for ln in reversed(lines[:start]):
        m = _VERIFIER_SOURCE.match(ln)
        if m:
            code, name, number = m.groups()
            if name == os.path.basename(str(source)):
                name = str(source)
            where = f"{name}:{number}: "
            why += f" (at: {code.strip()})" if code.strip() else ""
            break
    bcc_hint = [ln[len("HINT:"):].strip() for ln in lines[end:] if ln.startswith("HINT:")]
    return ProbeError(f"{where or str(source) + ': '}the kernel's verifier refused the "
                      f"program: {why}",
                      hint=bcc_hint[0] if bcc_hint else "run with --debug for the verifier's log")


# The kernel's limits behind E2BIG from BPF_PROG_LOAD (kernel/bpf/verifier.c,
# include/linux/bpf.h, 6.18), for a loader with CAP_BPF, as rbtrace is.
PROG_MAX_INSNS = 1_000_000          # BPF_COMPLEXITY_LIMIT_INSNS: program size
VERIFIER_MAX_PROCESSED = 1_000_000  # instructions the verifier may check in all
VERIFIER_MAX_JMP_SEQ = 8192         # BPF_COMPLEXITY_LIMIT_JMP_SEQ: pending branches

_BCC_E2BIG = re.compile(r"Program \S* ?too large \((\d+) insns\), at most \d+ insns")
_PROCESSED = re.compile(r"BPF program is too large\. Processed (\d+) insn")
_JMP_SEQ = re.compile(r"The sequence of (\d+) jumps is too complex")
_MAP_FAILURE = re.compile(r"could not open bpf map: (\w+), error: ([^\n]+)")
_FAILED_FN = re.compile(r"Failed to load BPF program b'(\w+)'")

# For a probe of the user's own (rbtrace run); the built-in probes name
# their options (Probe.cost_hint).
USER_PROBE_COST_HINT = ("make the probe's loops shorter (smaller constant bounds) or "
                        "split the work over several programs")


def _too_large(text, source, cost_hint=None):
    """A ProbeError for E2BIG at load time, saying which limit was hit, or None.

    BCC 0.26 prints "Program too large (N insns), at most 4096 insns" for
    any E2BIG and shows no verifier log.  4096 is the limit for loaders
    without CAP_BPF, not rbtrace's (1,000,000), and the verifier answers
    E2BIG too when its complexity limits are reached: 1,000,000
    instructions checked along all paths ("BPF program is too large.
    Processed N insn"), or 8,192 branches pending ("The sequence of N jumps
    is too complex").  `text` may carry the verifier's log (see
    _verifier_log) to tell those apart."""
    m = _BCC_E2BIG.search(text)
    processed, jumps = _PROCESSED.search(text), _JMP_SEQ.search(text)
    if m is None and processed is None and jumps is None:
        return None
    size = f"the program itself is {int(m.group(1)):,} instructions" if m else ""
    hint = cost_hint or "run with --debug for the verifier's statistics"
    if processed:
        why = (f"checked {int(processed.group(1)):,} instructions along the program's paths, "
               f"past its complexity limit of {VERIFIER_MAX_PROCESSED:,}")
    elif jumps:
        why = (f"had {int(jumps.group(1)):,} branches pending, past its complexity limit "
               f"of {VERIFIER_MAX_JMP_SEQ:,}")
    elif int(m.group(1)) > PROG_MAX_INSNS:
        return ProbeError(f"{source}: the program is {int(m.group(1)):,} instructions, more "
                          f"than the kernel's size limit of {PROG_MAX_INSNS:,}", hint=hint)
    else:
        why = (f"reached a complexity limit ({VERIFIER_MAX_PROCESSED:,} instructions "
               f"checked along all paths, or {VERIFIER_MAX_JMP_SEQ:,} branches pending)")
    size = f" ({size}: its size is not the problem)" if size else ""
    return ProbeError(f"{source}: the kernel's verifier gave up: it {why}{size}", hint=hint)


def _verifier_log(bcc, module, fn_name, prog_type) -> str:
    """The verifier's own last lines for `fn_name` of a compiled BCC
    module, which BCC does not show after E2BIG: the program is loaded
    again with a log buffer at BPF_LOG_STATS (4), which gives the reason
    and the counts without a line per instruction.  "" when that fails."""
    log = ctypes.create_string_buffer(1 << 16)
    lib = bcc.lib
    with captured_fds():
        fd = lib.bcc_func_load(module, prog_type, fn_name,
                               lib.bpf_function_start(module, fn_name),
                               lib.bpf_function_size(module, fn_name),
                               lib.bpf_module_license(module),
                               lib.bpf_module_kern_version(module),
                               4, log, len(log), None, -1)
    if fd >= 0:
        os.close(fd)
    return log.value.decode(errors="replace")


def _recompiled_verifier_log(bcc, text, cflags, fn_name, prog_type) -> str:
    """_verifier_log for a program that BPF() failed to load while loading
    the module's others: compiled again, nothing else loaded."""
    class NoAutoload(bcc.BPF):
        def _trace_autoload(self):
            pass
    try:
        with captured_fds():
            b = NoAutoload(text=text, cflags=cflags)
        try:
            return _verifier_log(bcc, b.module, fn_name, prog_type)
        finally:
            b.cleanup()
    except Exception:  # BCC raises bare Exception; the first message stands
        return ""


def _load_failure(failure, text, source, cost_hint=None) -> ProbeError:
    """One line for BCC's failure: which size or complexity limit was hit,
    the verifier's reason, the compiler's first error (file:line: error:
    ...), or BCC's own message with the last line it printed (attach
    failures name the hook there)."""
    too_large = _too_large(text, source, cost_hint)
    if too_large is not None:
        return too_large
    refused = _verifier_refusal(text, source)
    if refused is not None:
        return refused
    bad_map = _MAP_FAILURE.search(text)
    if bad_map:
        # BCC reports this among the compiler's errors, but it is the kernel
        # refusing to create a map (memory, most often, for a large ring).
        name, why = bad_map.groups()
        if name == "events":
            return ProbeError(f"the kernel could not create the ring buffer: {why}",
                              hint="try a smaller --ring-size")
        return ProbeError(f"{source}: the kernel could not create BPF map {name}: {why}",
                          hint="make the map smaller")
    errors = [ln.strip() for ln in text.splitlines() if re.search(r"\berror\b", ln)]
    if errors:
        first = errors[0]
        if not re.match(r"\S+:\d+:\d+: ", first):      # clang's own lines name the file
            first = f"{source}: {first}"
        return ProbeError(first, hint="run with --debug for the compiler's full output")
    msg = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
    last = ([ln.strip() for ln in text.splitlines() if ln.strip()] or [""])[-1]
    if last and last not in msg:
        msg += f" ({last})"
    return ProbeError(f"loading {source}: {msg}", hint="run with --debug for BCC's output")


_CTYPE_TO_NUMPY = {
    ctypes.c_uint8: "u1", ctypes.c_int8: "i1", ctypes.c_uint16: "<u2", ctypes.c_int16: "<i2",
    ctypes.c_uint32: "<u4", ctypes.c_int32: "<i4", ctypes.c_uint64: "<u8", ctypes.c_int64: "<i8",
    ctypes.c_char: "S1", ctypes.c_bool: "?",
}


def dtype_from_ctypes(struct) -> np.dtype:
    """A flat numpy dtype with the same offsets as BCC's ctypes struct.

    BCC describes each table's C types exactly (from clang); nested structs
    are flattened to their leaf names (a name already taken gets its path,
    "i.flags"), char arrays become 'S<n>' columns, other arrays sub-arrays,
    and each element of an array of structs its own columns ("a[1].x").
    `dtype.metadata["c_paths"]` maps each column to the member's path as C
    spells it ("i.flags", "a[1].x"; members of an anonymous struct or union
    have no segment for it), for decoders that show what the user wrote.
    """
    names, formats, offsets, paths = [], [], [], []

    def add(leaf, path, fmt, off):
        if leaf in names:
            # The path is unique in C, but may be a top-level name already
            # used by a flattened leaf: the header's `pid` and a member
            # called `pid` after it.
            leaf = path if path not in names else f"{path}#{len(names)}"
        names.append(leaf)
        paths.append(path)
        formats.append(fmt)
        offsets.append(off)

    def walk(cls, base, cpath, by_path):
        anonymous = set(getattr(cls, "_anonymous_", ()))
        for field in cls._fields_:
            name, ftype = field[0], field[1]
            if name.startswith("__pad"):
                continue
            path = cpath if name in anonymous else cpath + name
            if len(field) > 2:
                raise ProbeError(f"event member {path} is a bit-field, which rbtrace "
                                 f"can't decode (BCC gives no bit offsets)",
                                 hint="make it a whole integer")
            off = base + getattr(cls, name).offset
            shape, elem = [], ftype
            while hasattr(elem, "_length_"):
                shape.append(elem._length_)
                elem = elem._type_
            if hasattr(elem, "_fields_"):
                if not shape:
                    walk(elem, off, path + ("." if name not in anonymous else ""), by_path)
                    continue
                size = ctypes.sizeof(elem)
                for i in range(int(np.prod(shape))):
                    index = "".join(f"[{k}]" for k in np.unravel_index(i, shape))
                    walk(elem, off + i * size, f"{path}{index}.", True)
                continue
            if len(shape) == 1 and elem in (ctypes.c_char, ctypes.c_int8, ctypes.c_uint8):
                fmt = f"S{shape[0]}"
            elif shape:
                fmt = (_numpy_scalar(elem, path), tuple(shape))
            else:
                fmt = _numpy_scalar(elem, path)
            add(path if by_path else name, path, fmt, off)

    walk(struct, 0, "", False)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": ctypes.sizeof(struct)},
                    metadata={"c_paths": dict(zip(names, paths))})


def _numpy_scalar(ctype, path=""):
    for c, fmt in _CTYPE_TO_NUMPY.items():
        if ctype is c or (ctypes.sizeof(ctype) == ctypes.sizeof(c) and
                          getattr(ctype, "_type_", None) == c._type_):
            return fmt
    raise ProbeError(f"event member {path or '?'} of C type {ctype.__name__} is not supported")


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


_TRACEPOINT_HEAD = re.compile(r"^(\s*TRACEPOINT_PROBE\s*\(\s*\w+\s*,\s*\w+\s*\))(.*)$")


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
            continued = number > 1 and lines[number - 2].endswith("\\")
            if number > 1 and not continued:
                out.append(f'#line {number} "{path}"')
            tp = None if continued else _TRACEPOINT_HEAD.match(line)
            if tp and tp.group(2).strip():
                # BCC inserts the tracepoint's argument struct (several
                # lines) just before TRACEPOINT_PROBE: code after it on the
                # same line would be reported that many lines further on.
                # It goes on a line of its own, at the same column.
                out += [tp.group(1), f'#line {number} "{path}"',
                        " " * len(tp.group(1)) + tp.group(2)]
                continue
            out.append(line)
            continue
        if candidate not in _seen:      # not ours: left to the compiler
            _seen.add(candidate)
            out.append(inline_local_includes(candidate, search, _seen))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out)


_C_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def code_only(text: str) -> str:
    """C source with comments blanked and string and character literals
    emptied (their quotes kept), newlines kept: for looking for code with
    regular expressions without being fooled by prose, on the same lines.
    An `#include "x.h"` keeps its file name."""
    def blank(m):
        s = m.group(0)
        if s.startswith("/"):
            return " " if s.startswith("//") or "\n" not in s else "\n" * s.count("\n")
        if text.rfind("#", 0, m.start()) > text.rfind("\n", 0, m.start()) and s[0] == '"':
            return s                 # a preprocessor line's "file name"
        return s[0] + " " * (len(s) - 2) + s[-1]
    return _C_TOKENS.sub(blank, text)


# Hook kinds a BCC source can use besides tracepoints, by how BCC spells them
# (its helpers.h macros, and the function name prefixes it attaches by).
_HOOK_USE = {
    "kprobe": re.compile(r"\b(kprobe__|kretprobe__)\w+\s*\("),
    "fentry": re.compile(r"\b(KFUNC_PROBE|KRETFUNC_PROBE|KMOD_RET)\s*\(|\bk(ret)?func__\w+\s*\("),
}


def _refuse_hooks_that_cannot_load(text, source):
    """Name a hook kind this kernel can't load (as `rbtrace doctor` finds it)
    instead of letting BCC fail with a traceback-shaped message."""
    from rbtrace.doctor import try_hook
    text = code_only(text)
    for kind, pattern in _HOOK_USE.items():
        if pattern.search(text):
            ok, reason = try_hook(kind)
            if not ok:
                raise ProbeError(f"{source}: uses {kind} hooks, which this kernel can't load: {reason}",
                                 hint="rbtrace doctor lists the hook kinds that load here; "
                                      "use tracepoints")


# struct rb_header (probes/common.h) as numpy sees it at the start of a record.
RB_HEADER = (("ts_ns", 0, "<u8"), ("seq", 8, "<u8"), ("pid", 16, "<u4"), ("tid", 20, "<u4"),
             ("ppid", 24, "<u4"), ("uid", 28, "<u4"), ("comm", 32, "S16"))


def check_event_types(event_types, source):
    """Records in the ring are told apart by size only, and every one starts
    with struct rb_header (time, seq, pid... for every decoder and filter)."""
    by_size = {}
    for et in event_types:
        fields = et.dtype.fields
        head = [(n, fields[n][1], fields[n][0].str if fields[n][0].kind != "S"
                 else f"S{fields[n][0].itemsize}") for n in et.dtype.names[:len(RB_HEADER)]]
        if tuple(head) != RB_HEADER:
            raise ProbeError(f"{source}: struct {et.name} does not begin with struct rb_header",
                             hint=f"declare it as struct {et.name} {{ struct rb_header h; ... }}")
        other = by_size.setdefault(et.size, et)
        if other is not et:
            raise ProbeError(f"{source}: event structs {other.name} and {et.name} are both "
                             f"{et.size} bytes, and records are told apart by their size",
                             hint="make one of them larger (a member such as u8 pad[8])")


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


def _close_in_parallel(closers):
    """Detach hooks from several threads.  Each detach waits for RCU grace
    periods (tracepoint_synchronize_unregister; for a perf tracepoint under
    the kernel's event_mutex, perf_trace_event_unreg, 6.18): 40-80 ms each
    here, so one after the other the exec probe took 0.4 s to stop.
    Threads overlap the waits outside the mutex."""
    if len(closers) <= 1:
        for close in closers:
            close()
        return
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=min(8, len(closers))) as pool:
        list(pool.map(lambda close: close(), closers))


class LoadedProbe:
    """A compiled probe with its tracepoints attached."""

    def __init__(self, source, cflags: dict, event_structs, debug=False, tracepoints=(),
                 cost_hint=None):
        """`tracepoints`: (function name, "category:event") pairs to load and
        attach besides what BCC attaches by itself (see _attach_tracepoints).
        `cost_hint`: the options that make the probe cheaper to verify, for
        when the verifier gives up."""
        self.cost_hint = cost_hint
        bcc, self.headers = prepare()
        flags = []
        if cflags.get("FOLLOW"):
            cflags = {**cflags, "EXIT_HAS_GROUP_DEAD": int(kernel.exit_has_group_dead())}
        cflags = {"SELF_PID": os.getpid(), **cflags}
        for name, value in {**kernel.task_offsets(), **cflags}.items():
            flags.append(f"-D{name}" if value is True else f"-D{name}={value}")
        self.cflags = flags
        text = inline_local_includes(source, [probes_dir()])
        for category, event in _TRACEPOINT_USE.findall(code_only(text)):
            if not kernel.tracepoint_exists(category, event):
                raise ProbeError(f"{source}: tracepoint {category}:{event} does not exist on this kernel",
                                 hint=f"ls {kernel.tracefs_dir()}/events/{category}")
        _refuse_hooks_that_cannot_load(text, source)
        with captured_fds() as output:
            try:
                text_bytes = text.encode(errors="surrogateescape")
                self.bpf = bcc.BPF(text=text_bytes, cflags=flags)
                failure = None
            except Exception as e:  # BCC raises bare Exception for all of these
                failure = e
        text = output.text
        if debug and text.strip():
            sys.stderr.write(text)
        if failure is not None:
            fn = _FAILED_FN.search(str(failure))
            if fn and _BCC_E2BIG.search(text):
                prog_type = (bcc.BPF.RAW_TRACEPOINT if fn.group(1).startswith("raw_tracepoint__")
                             else bcc.BPF.TRACEPOINT)
                log = _recompiled_verifier_log(bcc, text_bytes, flags, fn.group(1).encode(),
                                               prog_type)
                if debug:
                    sys.stderr.write(log)
                text += "\n" + log
            raise _load_failure(failure, text, source, cost_hint)
        try:
            self.event_types = [self._event_type(bcc, name, source) for name in event_structs]
            check_event_types(self.event_types, source)
        except BaseException:
            self.bpf.cleanup()
            raise
        ring = self.bpf[b"events"]
        self.ring_fd = ring.map_fd
        self._stats = self.bpf[b"stats"]
        self._tp_fds = []
        if tracepoints:
            self._attach_tracepoints(bcc, tracepoints, source, debug)
        if cflags.get("FOLLOW"):
            self._attach_follow_exit()

    def _attach_follow_exit(self):
        """common.h's hook that stops following a process when it exits,
        attached last so that it runs after the probe's own programs on
        sched_process_exit (the kernel calls them in attach order).
        Attached by its fd, kept with _tp_fds: BCC keeps one program per
        raw tracepoint in its table, and a probe's own (rbtrace exit) may
        be there already."""
        from bcc.libbcc import lib
        try:
            with captured_fds() as output:
                fn = self.bpf.load_func(b"rbtrace_follow_exit", self.bpf.RAW_TRACEPOINT)
                fd = lib.bpf_attach_raw_tracepoint(fn.fd, b"sched_process_exit")
                errno = ctypes.get_errno()
            if fd < 0:
                raise Exception(os.strerror(errno) if errno else "failed")
        except Exception as e:  # BCC raises bare Exception
            self.close()
            raise ProbeError(f"cannot attach the raw tracepoint sched_process_exit: {e} "
                             f"{output.text.strip()}".strip(), hint="rbtrace doctor")
        self._tp_fds.append(fd)

    def _attach_tracepoints(self, bcc, tracepoints, source, debug):
        """Programs attached by name, for generated sources (rbtrace tp):
        BCC attaches a tracepoint only for a function it can spell
        tracepoint__CAT__EVENT, which not every name allows, and keys it
        by tracepoint, so a second program on one (common.h's FOLLOW hooks
        sched_process_exit) would replace the first in its table."""
        from bcc.libbcc import lib
        # Off while attaching, so that every tracepoint starts at once: the
        # first ones would otherwise fill the ring before the last is on.
        self._set_stop(1)
        try:
            for fn_name, tp in tracepoints:
                with captured_fds() as output:
                    try:
                        fn = self.bpf.load_func(fn_name.encode(), bcc.BPF.TRACEPOINT)
                        failure = None
                    except Exception as e:  # BCC raises bare Exception
                        failure = e
                if debug and output.text.strip():
                    sys.stderr.write(output.text)
                if failure is not None:
                    text = output.text
                    if _BCC_E2BIG.search(text):
                        text += "\n" + _verifier_log(bcc, self.bpf.module, fn_name.encode(),
                                                     bcc.BPF.TRACEPOINT)
                    err = _load_failure(failure, text, source, self.cost_hint)
                    raise ProbeError(f"{tp}: {err.message}", hint=err.hint)
                category, _, event = tp.partition(":")
                with captured_fds():
                    fd = lib.bpf_attach_tracepoint(fn.fd, category.encode(), event.encode())
                    errno = ctypes.get_errno()
                if fd < 0:
                    from rbtrace.doctor import try_hook
                    ok, reason = try_hook("tracepoint")
                    if not ok:
                        raise ProbeError(f"{tp}: tracepoints can't be attached on this kernel: "
                                         f"{reason}", hint="rbtrace doctor")
                    raise ProbeError(f"cannot attach to tracepoint {tp}: {os.strerror(errno)}",
                                     hint="some events (ftrace:*) exist in tracefs but "
                                          "take no BPF program")
                self._tp_fds.append(fd)
            self._set_stop(0)
        except BaseException:
            self._close_tp_fds()
            self.bpf.cleanup()
            raise

    def _close_tp_fds(self):
        """Detach the programs attached by name (see _close_in_parallel)."""
        fds, self._tp_fds = self._tp_fds, []
        _close_in_parallel([functools.partial(os.close, fd) for fd in fds])

    def _stop_programs(self):
        self._set_stop(1)

    def _set_stop(self, value):
        """Probes with many tracepoints declare `BPF_ARRAY(rbtrace_stop, u32,
        1)` and return at once while it is set: detaching them takes seconds
        (see _close_tp_fds), and nothing may be counted meanwhile."""
        try:
            table = self.bpf.get_table(b"rbtrace_stop")
        except KeyError:
            return
        table[table.Key(0)] = table.Leaf(value)

    def _event_type(self, bcc, name, source) -> EventType:
        """The record layout of event struct `name`, from its layout_ map."""
        table = f"layout_{name}".encode()
        # BCC 0.26 has no ctypes type for "signed char" (s8) and fails on it.
        bcc.BPF.str2ctype.setdefault("signed char", ctypes.c_byte)
        try:
            leaf = self.bpf[table].Leaf
        except KeyError:
            raise ProbeError(f"{source}: no event struct {name}: RBTRACE_EVENT({name}) is "
                             f"missing or compiled out") from None
        except Exception as e:  # BCC raises bare Exception (or KeyError) on types it lacks
            raise ProbeError(f"{source}: BCC can't describe struct {name} ({e!r})") from e
        try:
            dtype = dtype_from_ctypes(leaf)
        except ProbeError as e:
            raise ProbeError(f"{source}: struct {name}: {e.message}", hint=e.hint) from None
        lib = bcc.lib
        lib.bpf_table_leaf_size.restype = ctypes.c_size_t
        lib.bpf_table_leaf_size.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        size = lib.bpf_table_leaf_size(self.bpf.module, table)
        if size != dtype.itemsize:
            # BCC keeps only the first dimension of a multi-dimensional array.
            raise ProbeError(f"{source}: struct {name} is {size} bytes but BCC describes "
                             f"{dtype.itemsize}: multi-dimensional arrays are not supported",
                             hint="declare them one-dimensional")
        return EventType(name, dtype)

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

    def followed_pids(self) -> set:
        """The followed processes still alive (they leave the map at exit)."""
        return {k.value for k in self.bpf[b"followed"].keys()}

    def prog_misses(self) -> int:
        """Program runs the kernel skipped (bpf_prog_info.recursion_misses).

        The kernel refuses to run a tracing program on a CPU where a BPF
        program is already running (another tracer's, say) and only counts
        it.  Each skipped run may be a lost event, so it is reported."""
        return sum(_recursion_misses(f.fd) for f in self.bpf.funcs.values())

    def detach(self):
        """Stop the programs; maps and the ring stay readable."""
        from bcc.libbcc import lib
        self._stop_programs()
        closers = [functools.partial(os.close, fd) for fd in self._tp_fds]
        # What BCC's detach_tracepoint and detach_raw_tracepoint do, at once.
        closers += [functools.partial(lib.bpf_close_perf_event_fd, fd)
                    for fd in self.bpf.tracepoint_fds.values()]
        closers += [functools.partial(os.close, fd) for fd in self.bpf.raw_tracepoint_fds.values()]
        self._tp_fds = []
        self.bpf.tracepoint_fds.clear()
        self.bpf.raw_tracepoint_fds.clear()
        _close_in_parallel(closers)

    def close(self):
        self._close_tp_fds()
        self.bpf.cleanup()
