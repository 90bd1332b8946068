"""The only module that imports bcc: compile a probe, attach it, read maps.

bcc is imported lazily, after tracefs is mounted: bcc decides at import
time where tracefs is.  BCC and clang write diagnostics to the process's
stdout and stderr (file descriptors, not sys.stdout), so compiling runs
with both redirected to a temporary file; stdout stays pure data.
"""
import contextlib
import ctypes
import dataclasses
import errno
import functools
import os
import re
import struct
import sys


from rbtrace import csource, kernel, notice
from rbtrace.errors import EnvironmentProblem, ProbeError
from rbtrace.loader import (INSN_SIZE, PROG_TYPE_RAW_TRACEPOINT, PROG_TYPE_TRACEPOINT, Compiled,
                            Loaded, LoadError, MapSpec, ProgSpec, close_in_parallel,
                            link_callbacks, map_fd_refs, recursion_misses)
from rbtrace.paths import probes_dir
from rbtrace.ringbuf import EventType, dtype_from_data, dtype_to_data  # noqa: F401 (re-exported)

# Mirrors enum rbtrace_stat in probes/common.h.
# The per-CPU counters every probe keeps (`stats`, probes/common.h), in
# their index order; the C gets each index as -DSTAT_<NAME>, and STAT_NR.
STATS = ("submitted", "ringbuf_full", "map_full", "not_followed")
STAT_FLAGS = {**{f"STAT_{name.upper()}": i for i, name in enumerate(STATS)},
              "STAT_NR": len(STATS)}


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
    import tempfile    # here, not at start-up: the import costs 5 ms
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


def _verifier_log(bcc, module, fn_name, prog_type, level=4) -> str:
    """The verifier's log for `fn_name` of a compiled BCC module, loaded
    again through BCC, which passes the program's BTF: its line info puts
    "; code @ file:line" before the instructions.  Level 1 gives the whole
    log (its tail says why); BPF_LOG_STATS (4) only the reason and the
    counts, for E2BIG, where the whole log would be millions of lines.
    BCC's own hints (HINT: lines) come with it.  "" when that fails."""
    log = ctypes.create_string_buffer(1 << 22 if level == 1 else 1 << 16)
    lib = bcc.lib
    with captured_fds() as output:
        fd = lib.bcc_func_load(module, prog_type, fn_name,
                               lib.bpf_function_start(module, fn_name),
                               lib.bpf_function_size(module, fn_name),
                               lib.bpf_module_license(module),
                               lib.bpf_module_kern_version(module),
                               level, log, len(log), None, -1)
    if fd >= 0:
        os.close(fd)
    hints = "\n".join(ln for ln in output.text.splitlines() if ln.startswith("HINT:"))
    return log.value.decode(errors="replace") + ("\n" + hints if hints else "")


def _linked_verifier_log(bcc, p, b, level) -> str:
    """The verifier's log for program `p`, which has callbacks linked in,
    loaded as rbtrace loads it (no line info: no "; code @ file:line")."""
    from rbtrace.loader import FuncBTF, load_program
    size = 1 << 22 if level == 1 else 1 << 16
    license = bcc.lib.bpf_module_license(b.module).decode()
    try:
        with FuncBTF([p]) as btf:
            os.close(load_program(p, p.insns, license, log_level=level, log_size=size, btf=btf))
        return ""
    except LoadError as e:
        return e.log


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


def dtype_from_ctypes(struct):
    """A flat numpy dtype with the same offsets as BCC's ctypes struct.

    BCC describes each table's C types exactly (from clang); nested structs
    are flattened to their leaf names (a name already taken gets its path,
    "i.flags"), char arrays become 'S<n>' columns, other arrays sub-arrays,
    and each element of an array of structs its own columns ("a[1].x").
    `dtype.metadata["c_paths"]` maps each column to the member's path as C
    spells it ("i.flags", "a[1].x"; members of an anonymous struct or union
    have no segment for it), for decoders that show what the user wrote.
    """
    import numpy as np
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
    use_headers(headers)
    return import_bcc(), headers


def use_headers(headers):
    """Point BCC at `headers` (BCC reads BCC_KERNEL_SOURCE at each compile)."""
    if headers.path is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    else:
        os.environ.pop("BCC_KERNEL_SOURCE", None)


@contextlib.contextmanager
def compile_cwd(headers):
    """Run the compiler in headers.cwd: BCC looks for headers in the working
    directory before the kernel tree, where a stray linux/types.h would win."""
    saved = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(headers.cwd)
        yield
    finally:
        os.fchdir(saved)
        os.close(saved)


_NOT_FOUND = re.compile(r"^(\S+?):(\d+):\d+: fatal error: '([^']+)' file not found", re.M)


def _missing_include(text, source):
    """In BTF mode, a header the tree doesn't have, said as such."""
    m = _NOT_FOUND.search(text)
    if m is None:
        return None
    name, line, header = m.groups()
    return ProbeError(f"{name}:{line}: <{header}> is not available: no kernel headers are "
                      f"used here, the kernel's types come from its BTF and are declared "
                      f"already", hint="remove the #include: \"Kernel types\" in "
                                      "rbtrace-run(8) lists what a probe can include")


# --- which hook kinds load here ------------------------------------------------

HOOK_PROGRAMS = {
    "tracepoint": ("int f(void *ctx) { return 0; }", "TRACEPOINT",
                   lambda b: b.attach_tracepoint(tp="syscalls:sys_enter_getpid", fn_name="f")),
    "raw_tracepoint": ("int f(void *ctx) { return 0; }", "RAW_TRACEPOINT",
                       lambda b: b.attach_raw_tracepoint(tp="sys_enter", fn_name="f")),
    "kprobe": ("int f(void *ctx) { return 0; }", "KPROBE",
               lambda b: b.attach_kprobe(event=b.get_syscall_fnname("getpid"), fn_name="f")),
    "uprobe": ("int f(void *ctx) { return 0; }", "KPROBE",
               lambda b: b.attach_uprobe(name="c", sym="getpid", fn_name="f")),
    "fentry": ("KFUNC_PROBE(do_sys_openat2) { return 0; }", None, None),
}


# A testing aid: RBTRACE_FORCE_UNLOADABLE=kprobe,fentry makes those hook
# kinds fail as on a kernel that lacks them, so that the refusal can be
# tested on any kernel, with a reason that doesn't come from this function's
# own reading of the kernel.
FORCE_UNLOADABLE = "RBTRACE_FORCE_UNLOADABLE"
FORCED_REASON = f"refused by {FORCE_UNLOADABLE} (a testing aid)"


def try_hook(kind) -> tuple:
    """(loads, why): does a trivial program of this hook kind load and
    attach here?  Asked by `rbtrace doctor`, and before compiling a probe
    that uses such hooks, so that the refusal says why."""
    if kind in os.environ.get(FORCE_UNLOADABLE, "").split(","):
        return False, FORCED_REASON
    bcc, headers = prepare()
    text, prog_type, attach = HOOK_PROGRAMS[kind]
    with captured_fds() as output, compile_cwd(headers):
        try:
            b = bcc.BPF(text=text)
            if prog_type:
                b.load_func("f", getattr(bcc.BPF, prog_type))
                attach(b)
            b.cleanup()
            error = None
        except Exception as e:  # BCC raises bare Exception
            error = str(e)
    if error is None:
        return True, "loads and attaches"
    kernel_says = [ln for ln in output.text.splitlines() if "bpf:" in ln or "error" in ln.lower()]
    reason = (kernel_says[0].strip() if kernel_says else error.splitlines()[0])[:160]
    if kind == "kprobe" and not os.path.exists("/sys/bus/event_source/devices/kprobe"):
        reason = "the kernel has no kprobe support (CONFIG_KPROBES is off)"
    elif kind == "uprobe" and os.geteuid() != 0 and not kernel.effective_caps() >> kernel.CAP_SYS_ADMIN & 1:
        # Seen on 6.18: with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH
        # the uprobe does not attach; adding CAP_SYS_ADMIN makes it.
        reason += " (a user other than root needs CAP_SYS_ADMIN for uprobes)"
    elif kind == "fentry":
        try:
            with open("/sys/kernel/security/lockdown") as f:
                lockdown = f.read().strip()
        except OSError:
            lockdown = ""
        if lockdown:
            reason += f" (lockdown: {lockdown})"
    return False, reason


def _refuse_hooks_that_cannot_load(text, source):
    """Name a hook kind this kernel can't load (as `rbtrace doctor` finds it)
    instead of letting BCC fail with a traceback-shaped message."""
    for kind in csource.hook_kinds_used(text):
        ok, reason = try_hook(kind)
        if not ok:
            raise ProbeError(f"{source}: uses {kind} hooks, which this kernel can't load: {reason}",
                             hint="rbtrace doctor lists the hook kinds that load here; "
                                  "use tracepoints")


def check_event_types(event_types, source, header):
    """Records in the ring are told apart by size only, and every one starts
    with struct rb_header (time, seq, pid... for every decoder and filter),
    whose layout `header` (a dtype) is read from the compiled program."""
    def members(dtype, n):
        f = dtype.fields
        return [(name, f[name][1], f[name][0].str) for name in dtype.names[:n]]
    want = members(header, len(header.names))
    by_size = {}
    for et in event_types:
        if members(et.dtype, len(want)) != want:
            raise ProbeError(f"{source}: struct {et.name} does not begin with struct rb_header",
                             hint=f"declare it as struct {et.name} {{ struct rb_header h; ... }}")
        other = by_size.setdefault(et.size, et)
        if other is not et:
            raise ProbeError(f"{source}: event structs {other.name} and {et.name} are both "
                             f"{et.size} bytes, and records are told apart by their size",
                             hint="make one of them larger (a member such as u8 pad[8])")



# The ring's size is chosen at each run, and set when its map is created:
# the compiled bytes don't depend on it.  BCC still creates every map while
# compiling, so it compiles with the smallest ring.
RING_PAGES_AT_COMPILE = 1
DEFAULT_RING_BYTES = 16 << 20


def compile_flags(cflags: dict) -> list:
    """The -D flags BCC compiles a probe with: the probe's options and what
    the running kernel's BTF and tracepoints say (offsets, group_dead)."""
    if cflags.get("FOLLOW"):
        cflags = {**cflags, "EXIT_HAS_GROUP_DEAD": int(kernel.exit_has_group_dead())}
    return [f"-D{name}" if value is True else f"-D{name}={value}"
            for name, value in {**kernel.task_offsets(), **cflags}.items()]


def _key_flags(cflags: dict) -> list:
    """The options part of the cache key: what the kernel decides (offsets,
    group_dead) is keyed by the kernel's identity, so it need not be read
    from BTF before a cache hit."""
    return sorted(f"{k}={v}" for k, v in cflags.items())


def _attach_point(name: str, tracepoints: dict):
    """(attach kind, target) of a function BCC compiled, by BCC's naming
    (tracepoint__CAT__EVENT, raw_tracepoint__NAME), by the probe's own list
    (generated sources), or None: not an entry point."""
    if name in tracepoints:
        return "tracepoint", tracepoints[name]
    if name.startswith("tracepoint__"):
        return "tracepoint", name[len("tracepoint__"):].replace("__", ":", 1)
    if name.startswith("raw_tracepoint__"):
        return "raw_tracepoint", name[len("raw_tracepoint__"):]
    if name == "rbtrace_follow_exit":
        # common.h's hook that stops following a process when it exits,
        # attached last so that it runs after the probe's own programs on
        # sched_process_exit (the kernel calls them in attach order).
        return "raw_tracepoint", "sched_process_exit"
    return None


# LOOP_CALLBACK(n, name) in probes/common.h.
_CALLBACK_NAME = re.compile(r"^rbtrace_cb(\d+)__\w+$")


def _from_bcc(bcc, b, source, tracepoints: dict) -> Compiled:
    """What BCC compiled, as data: each entry point's instructions (BCC
    has patched its own map fds in; each becomes a reference by name), the
    maps' specs and the license."""
    lib = bcc.lib
    module = b.module
    for fn, res, args in (("bpf_num_tables", ctypes.c_ulonglong, [ctypes.c_void_p]),
                          ("bpf_table_name", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_ulonglong]),
                          ("bpf_table_key_size_id", ctypes.c_size_t,
                           [ctypes.c_void_p, ctypes.c_ulonglong]),
                          ("bpf_table_leaf_size_id", ctypes.c_size_t,
                           [ctypes.c_void_p, ctypes.c_ulonglong]),
                          ("bpf_table_fd_id", ctypes.c_int, [ctypes.c_void_p, ctypes.c_ulonglong])):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, args
    maps, by_fd = [], {}
    for i in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, i).decode()
        spec = MapSpec(name=name, type=lib.bpf_table_type_id(module, i),
                       key_size=lib.bpf_table_key_size_id(module, i),
                       value_size=lib.bpf_table_leaf_size_id(module, i),
                       max_entries=lib.bpf_table_max_entries_id(module, i),
                       flags=lib.bpf_table_flags_id(module, i))
        maps.append(spec)
        by_fd[lib.bpf_table_fd_id(module, i)] = name
    programs, last = [], []
    names = [lib.bpf_function_name(module, i).decode() for i in range(lib.bpf_num_functions(module))]

    def code(name):
        return ctypes.string_at(lib.bpf_function_start(module, name.encode()),
                                lib.bpf_function_size(module, name.encode()))
    callbacks = {int(m.group(1)): (name, code(name))
                 for name in names for m in [_CALLBACK_NAME.match(name)] if m}
    for name in names:
        point = _attach_point(name, tracepoints)
        if point is None:
            continue
        try:
            insns, subprogs = link_callbacks(code(name), callbacks)
        except KeyError as e:
            raise ProbeError(f"{source}: function {name} refers to bpf_loop callback {e.args[0]}, "
                             f"which has no LOOP_CALLBACK({e.args[0]}, ...) function") from None
        refs = []
        for index, fd in map_fd_refs(insns):
            if fd not in by_fd:
                raise ProbeError(f"{source}: function {name} refers to a map BCC did not "
                                 f"create (fd {fd}); it can't be loaded by rbtrace")
            refs.append((index, by_fd[fd]))
        kind, target = point
        spec = ProgSpec(name=name, type=PROG_TYPE_RAW_TRACEPOINT if kind == "raw_tracepoint"
                        else PROG_TYPE_TRACEPOINT, attach=kind, target=target,
                        insns=insns, map_refs=refs, subprogs=subprogs)
        (last if name == "rbtrace_follow_exit" else programs).append(spec)
    # Generated programs (rbtrace tp) go in the order given.
    order = {name: n for n, name in enumerate(tracepoints)}
    programs.sort(key=lambda p: (p.name in order, order.get(p.name, 0)))
    return Compiled(license=lib.bpf_module_license(module).decode(), maps=maps,
                    programs=programs + last)


def config_bytes(config: dict) -> bytes:
    """common.h's struct rbtrace_config: rbtrace's own tgid (never
    reported), the process filters: pid, tid, uid (None: any) and comm
    (bytes; empty: any), and `ready` (until it is set, nothing is traced)."""
    comm = config.get("comm") or b""
    if len(comm) > 15:
        raise ValueError(f"a command name has at most 15 bytes, not {len(comm)}")
    uid = config.get("uid")
    return struct.pack("<IIIIII16sII", os.getpid(), config.get("pid") or 0,
                       config.get("tid") or 0, uid is not None, uid or 0, 1, comm,
                       bool(config.get("cgroup")), 0)


def set_cgroup(loaded, path):
    """Put the cgroup v2 directory `path` (--cgroup, --container) in the
    probe's rbtrace_cgroup map: the kernel keeps the cgroup, not the fd,
    which is closed at once."""
    m = loaded.map("rbtrace_cgroup")
    if m is None:
        raise ProbeError("--cgroup and --container need a probe that checks rbtrace's filters "
                         "(rbtrace_reserve() or rbtrace_task_wanted())")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        m.update(struct.pack("<I", 0), struct.pack("<I", fd))
    finally:
        os.close(fd)


class LoadedProbe:
    """A compiled probe, its maps created and its programs attached.

    Compiled by BCC, or taken from the compile cache (rbtrace/cache.py);
    either way loaded by rbtrace/loader.py, so that a cached start never
    imports bcc."""

    def __init__(self, source, cflags: dict, event_structs, debug=False, tracepoints=(),
                 cost_hint=None, ring_bytes=None, use_cache=True, attach=True,
                 kernel_types=False, config=None, shared=None, skip=()):
        """`tracepoints`: (function name, "category:event") pairs to load and
        attach besides what BCC attaches by name (generated sources).
        `cost_hint`: the options that make the probe cheaper to verify, for
        when the verifier gives up.  `ring_bytes`: the ring's size.
        `attach`: False to load (verify) only.  `kernel_types`: the source
        reads kernel structs by their C types (a user's probe): compile it
        against the running kernel's BTF (kernel.find_headers).  `config`:
        the process filters for rbtrace_config (Probe.run_config); none by
        default.  `shared`: {map name: loader.Map} another probe of the
        run created, used instead of this one's (see LoadedRun).  `skip`:
        names of programs not to load (the follow hooks, which one probe
        of a run attaches for all)."""
        from rbtrace import cache
        self.cost_hint = cost_hint
        self.shared = dict(shared or {})
        self.skip = frozenset(skip)
        # The kind tag its programs write (RB_KIND): how the ring's
        # consumer tells this probe's records from another's.
        self.tag = cflags.get("RB_KIND")
        self.source = source
        self.config = config or {}
        self.generated = dict(tracepoints)
        kernel.ensure_privileges()
        kernel.ensure_tracefs()
        cflags = {k: v for k, v in cflags.items() if k not in ("RING_PAGES", "SELF_PID")}
        # Decided here, not by the probe, and part of the cache key: a probe
        # compiled with bpf_loop does not load on a kernel without it.
        cflags["HAVE_BPF_LOOP"] = int(kernel.bpf_loop_usable())
        cflags.update(STAT_FLAGS)
        ring_bytes = ring_bytes or DEFAULT_RING_BYTES
        text = csource.inline_local_includes(source, [probes_dir()])
        self.headers = kernel.find_headers(kernel_types=kernel_types)
        self.from_cache = False
        self.loaded = None
        entries, key = None, None
        if use_cache:
            try:
                entries = cache.open_dir()
            except cache.Unsafe as e:
                notice.say(f"not using the compile cache: {e}")
        if entries is not None:
            used = [f"{c}:{e}" for c, e in csource.tracepoints_used(text)]
            key, parts = cache.make_key(csource.without_dirs(text), _key_flags(cflags),
                                        used + list(self.generated.values()),
                                        self.headers.how, entries)
            compiled = cache.lookup(entries, key)
            if compiled is not None:
                try:
                    self._load(compiled, ring_bytes, attach)
                    self.from_cache = True
                    if debug:
                        notice.say(f"{source}: loaded from the compile cache ({key[:16]})")
                    return
                except (LoadError, ValueError, KeyError, TypeError) as e:
                    notice.say(f"the cached {os.path.basename(str(source))} did not load "
                              f"({e}); compiling again")
                    self.close()
        bcc, b, compiled = self._compile(text, cflags, source, event_structs, debug)
        try:
            try:
                self._load(compiled, ring_bytes, attach)
            except LoadError as e:
                raise self._diagnose(bcc, b, e) from None
        finally:
            b.cleanup()
        if entries is not None:
            try:
                cache.store(entries, key, compiled, os.path.basename(str(source)), parts)
            except OSError as e:
                notice.say(f"cannot store in the compile cache {entries}: {e.strerror}")

    def _compile(self, text, cflags, source, event_structs, debug):
        """(bcc, the BPF object, Compiled): BCC compiles; nothing is loaded."""
        use_headers(self.headers)
        bcc = import_bcc()
        for category, event in csource.tracepoints_used(text):
            if not kernel.tracepoint_exists(category, event):
                raise ProbeError(f"{source}: tracepoint {category}:{event} does not exist on this kernel",
                                 hint=f"ls {kernel.tracefs_dir()}/events/{category}")
        _refuse_hooks_that_cannot_load(text, source)
        flags = compile_flags({**cflags, "RING_PAGES": RING_PAGES_AT_COMPILE})

        class CompileOnly(bcc.BPF):
            def _trace_autoload(self):
                pass        # rbtrace/loader.py loads and attaches
        text = csource.defines(flags) + text
        with captured_fds() as output, compile_cwd(self.headers):
            try:
                b = CompileOnly(text=text.encode(errors="surrogateescape"), cflags=[])
                failure = None
            except Exception as e:  # BCC raises bare Exception for all of these
                failure = e
        if debug and output.text.strip():
            notice.show(output.text)
        if failure is not None:
            missing = _missing_include(output.text, source) if self.headers.btf else None
            raise missing or _load_failure(failure, output.text, source, self.cost_hint)
        try:
            compiled = _from_bcc(bcc, b, source, self.generated)
            event_types = [self._event_type(bcc, b, name, source) for name in event_structs]
            header = self._event_type(bcc, b, "rb_header", source)
            check_event_types(event_types, source, header.dtype)
            compiled.event_types = [(et.name, dtype_to_data(et.dtype)) for et in event_types]
        except BaseException:
            b.cleanup()
            raise
        return bcc, b, compiled

    def _load(self, compiled: Compiled, ring_bytes, attach):
        # Layouts only: numpy is imported when the first dtype is asked for.
        self.event_types = [EventType(name, tag=self.tag, layout=d)
                            for name, d in compiled.event_types]
        if self.skip:
            compiled = dataclasses.replace(compiled, programs=[
                p for p in compiled.programs if p.name not in self.skip])
        try:
            self.loaded = Loaded(compiled, sizes={"events": ring_bytes}, shared=self.shared)
        except LoadError as e:
            if e.what == "map events":
                raise ProbeError(f"the kernel could not create the ring buffer: "
                                 f"{os.strerror(e.errno)}", hint="try a smaller --ring-size") from None
            if e.what.startswith("map "):
                raise ProbeError(f"{self.source}: the kernel could not create BPF {e.what}: "
                                 f"{os.strerror(e.errno)}", hint="make the map smaller") from None
            raise
        self.ring_fd = self.loaded.map("events").fd
        if self.config.get("cgroup"):
            # Before the config that turns the check on: never a moment
            # when it is on with no cgroup to check against.
            set_cgroup(self.loaded, self.config["cgroup"])
        config = self.loaded.map("rbtrace_config")
        if config is not None:
            config.update(struct.pack("<I", 0), config_bytes(self.config).ljust(
                config.spec.value_size, b"\0"))
        if attach:
            self._attach()

    def _attach(self):
        # Off while attaching, so that every hook starts at once: the first
        # ones would otherwise fill the ring before the last is on.
        self._set_stop(1)
        try:
            self.loaded.attach_all()
        except LoadError as e:
            self.close()
            raise self._attach_failure(e) from None
        self._set_stop(0)

    def _attach_failure(self, e: LoadError) -> ProbeError:
        kind = "raw_tracepoint" if e.what.startswith("raw ") else "tracepoint"
        target = e.what.split(" ", 2)[-1]
        ok, reason = try_hook(kind)
        if not ok:
            return ProbeError(f"{target}: {kind.replace('_', ' ')}s can't be attached on this "
                              f"kernel: {reason}", hint="rbtrace doctor")
        if kind == "raw_tracepoint":
            return ProbeError(f"cannot attach the raw tracepoint {target}: "
                              f"{os.strerror(e.errno)}", hint="rbtrace doctor")
        return ProbeError(f"cannot attach to tracepoint {target}: {os.strerror(e.errno)}",
                          hint="some events (ftrace:*) exist in tracefs but take no BPF program")

    def _diagnose(self, bcc, b, e: LoadError) -> ProbeError:
        """One line for a program the kernel refused, from the verifier's
        log with source lines (BCC loads it again with its BTF)."""
        p = e.program
        if p is None:
            return ProbeError(f"{self.source}: {e}", hint="rbtrace doctor")
        prog_type = bcc.BPF.RAW_TRACEPOINT if p.type == PROG_TYPE_RAW_TRACEPOINT \
            else bcc.BPF.TRACEPOINT
        level = 4 if e.errno == errno.E2BIG else 1
        if p.subprogs:
            # BCC's copy lacks the callbacks rbtrace linked in: the log of
            # the program as loaded (BCC's map fds are still in it).
            text = _linked_verifier_log(bcc, p, b, level)
        else:
            text = _verifier_log(bcc, b.module, p.name.encode(), prog_type, level=level)
        if e.errno == errno.E2BIG:
            text = (f"Program too large ({len(p.insns) // INSN_SIZE} insns), at most 4096 insns\n"
                    + text)
        failure = Exception(f"Failed to load BPF program b'{p.name}': {os.strerror(e.errno)}")
        err = _load_failure(failure, text, self.source, self.cost_hint)
        if p.name in self.generated:
            return ProbeError(f"{self.generated[p.name]}: {err.message}", hint=err.hint)
        return err

    def _set_stop(self, value):
        """Probes with many tracepoints declare `BPF_ARRAY(rbtrace_stop, u32,
        1)` and return at once while it is set: detaching them takes seconds,
        and nothing may be counted meanwhile."""
        stop = self.loaded.map("rbtrace_stop") if self.loaded else None
        if stop is not None:
            stop.update(struct.pack("<I", 0), struct.pack("<I", value))

    def _event_type(self, bcc, b, name, source) -> EventType:
        """The record layout of event struct `name`, from its layout_ map."""
        table = f"layout_{name}".encode()
        # BCC 0.26 has no ctypes type for "signed char" (s8) and fails on it.
        bcc.BPF.str2ctype.setdefault("signed char", ctypes.c_byte)
        try:
            leaf = b[table].Leaf
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
        size = lib.bpf_table_leaf_size(b.module, table)
        if size != dtype.itemsize:
            # BCC keeps only the first dimension of a multi-dimensional array.
            raise ProbeError(f"{source}: struct {name} is {size} bytes but BCC describes "
                             f"{dtype.itemsize}: multi-dimensional arrays are not supported",
                             hint="declare them one-dimensional")
        return EventType(name, dtype)

    def program_count(self) -> int:
        return len(self.loaded.prog_fds) if self.loaded else 0

    def counters(self):
        """Per-CPU counters summed: submitted, ringbuf_full, map_full,
        not_followed."""
        stats = self.loaded.map("stats")
        if stats is None:       # no program reserves a record: nothing counted
            return [0] * len(STATS)
        return [stats.u64_sum(i) for i in range(len(STATS))]

    def follow(self, pids):
        """Add processes to the probe's `followed` map (FOLLOW=1 only)."""
        followed = self.loaded.map("followed")
        one = b"\1".ljust(followed.spec.value_size, b"\0")
        for pid in pids:
            followed.update(struct.pack("<I", pid), one)

    def followed_pids(self) -> set:
        """The followed processes still alive (they leave the map at exit)."""
        return {int.from_bytes(k, "little") for k in self.loaded.map("followed").keys()}

    def followed_count(self) -> int:
        return len(self.followed_pids())

    def prog_misses(self) -> int:
        """Program runs the kernel skipped (bpf_prog_info.recursion_misses).

        The kernel refuses to run a tracing program on a CPU where a BPF
        program is already running (another tracer's, say) and only counts
        it.  Each skipped run may be a lost event, so it is reported."""
        return sum(recursion_misses(fd) for fd in self.loaded.prog_fds.values())

    def detach(self):
        """Stop the programs; maps and the ring stay readable."""
        self._set_stop(1)
        self.loaded.detach()

    def close(self):
        if self.loaded is not None:
            self.loaded.close()


# The maps every probe declares (probes/common.h) that one run shares when
# several probes write to one ring (LoadedRun): the ring, the counters, the
# seq numbers, the filters' values (and --cgroup's cgroup), the followed
# processes, the stop switch.
SHARED_MAPS = ("events", "stats", "seq_counter", "rbtrace_config", "rbtrace_cgroup", "followed",
               "rbtrace_stop")
# common.h's hooks that follow a command's process tree: attached once per
# run (a second fork hook would find the child followed already and count
# it not followed), the exit one after every other program.
FOLLOW_PROGRAMS = ("raw_tracepoint__sched_process_fork", "rbtrace_follow_exit")


class LoadedRun:
    """Several probes loaded as one: their programs write to one ring, take
    their seq from one counter, count into one `stats` and read one
    rbtrace_config and one `followed`; each probe's other maps are its own.
    Each probe stays compiled (and cached) on its own.  What Session asks
    of a LoadedProbe, for all of them: ring_fd, event_types (each with its
    probe's tag), counters(), prog_misses(), follow(), followed_pids(),
    detach(), close()."""

    def __init__(self, probes, ring_bytes, use_cache=True, debug=False):
        """`probes`: keyword arguments of LoadedProbe, one dict per probe."""
        self.parts = []
        shared = {}
        try:
            for i, kw in enumerate(probes):
                part = LoadedProbe(**kw, ring_bytes=ring_bytes, use_cache=use_cache,
                                   debug=debug, attach=False, shared=shared,
                                   skip=FOLLOW_PROGRAMS if i else ())
                self.parts.append(part)
                for name in SHARED_MAPS:
                    m = part.loaded.maps.get(name)
                    if m is not None:
                        shared[name] = m
            tags = [p.tag for p in self.parts]
            if len(set(tags)) != len(tags):
                raise ValueError(f"two probes of one run have the same kind tag: {tags}")
            self.ring_fd = shared["events"].fd
            self.event_types = [et for p in self.parts for et in p.event_types]
            self.from_cache = all(p.from_cache for p in self.parts)
            self._attach()
        except BaseException:
            self.close()
            raise

    @property
    def first(self):
        return self.parts[0]

    def _set_stop(self, value):
        for p in self.parts:
            p._set_stop(value)

    def _attach(self):
        def own(p):
            return p.name not in FOLLOW_PROGRAMS
        self._set_stop(1)
        try:
            for part in self.parts:
                part.loaded.attach_all(only=own)
            # The follow hooks last: the exit one must run after every
            # probe's own program on sched_process_exit.
            self.first.loaded.attach_all(only=lambda p: not own(p))
        except LoadError as e:
            raise self.first._attach_failure(e) from None
        self._set_stop(0)

    def program_count(self) -> int:
        return sum(p.program_count() for p in self.parts)

    def counters(self):
        return self.first.counters()        # one shared `stats`

    def follow(self, pids):
        self.first.follow(pids)

    def followed_pids(self) -> set:
        return self.first.followed_pids()

    def followed_count(self) -> int:
        return len(self.followed_pids())

    def prog_misses(self) -> int:
        return sum(p.prog_misses() for p in self.parts)

    def detach(self):
        self._set_stop(1)
        fds = [fd for p in self.parts if p.loaded is not None for fd in p.loaded.attached]
        for p in self.parts:
            if p.loaded is not None:
                p.loaded.attached = []
        close_in_parallel([functools.partial(os.close, fd) for fd in fds])

    def close(self):
        # The later probes first: the first one owns the shared maps.
        for p in reversed(self.parts):
            p.close()
        self.parts = []
