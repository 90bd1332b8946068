"""Load compiled BPF programs into the kernel without BCC.

A compiled probe (`Compiled`) is plain data: the instructions of each
program, which of their ld_imm64 instructions name which map, the maps'
specs, the license and where each program attaches.  BCC produces it once
(rbtrace/bpf.py); the compile cache (rbtrace/cache.py) keeps it.  Loading
it needs no LLVM and no `import bcc`: maps and programs go through
libbpf's low-level calls (libbpf.so.1, which BCC itself depends on), and a
tracepoint is attached with perf_event_open, as the kernel's own samples do.
"""
import contextlib
import ctypes
import errno as errno_mod
import functools
import os
import platform
import struct
import threading
from dataclasses import dataclass, field

from rbtrace import kernel

# uapi/linux/bpf.h
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_PERCPU_HASH = 10
MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = {MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH}
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_RAW_TRACEPOINT = 17
PSEUDO_MAP_FD = 1        # ld_imm64 src_reg: imm is a map fd
PSEUDO_MAP_VALUE = 2     # ... imm a map fd, the next imm an offset into its value
PSEUDO_FUNC = 4          # ... imm the offset of a subprogram (a bpf_loop callback)
LD_IMM64 = 0x18          # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
INSN_SIZE = 8

# uapi/linux/perf_event.h
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331,
                    "riscv64": 241}

BPF_OBJ_NAME_LEN = 16


class LoadError(Exception):
    """A map or program the kernel refused, or an attach that failed.

    `what` says which ("program NAME", "map NAME", "tracepoint CAT:EV"),
    `errno` the kernel's answer, `log` the verifier's log (programs)."""

    def __init__(self, what, err, log="", program=None):
        super().__init__(f"{what}: {os.strerror(err) if err else 'failed'}")
        self.what, self.errno, self.log, self.program = what, err, log, program


@dataclass
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


@dataclass
class ProgSpec:
    name: str
    type: int                       # PROG_TYPE_*
    attach: str                     # "tracepoint" or "raw_tracepoint"
    target: str                     # "category:event", or the raw tracepoint's name
    insns: bytes
    map_refs: list = field(default_factory=list)   # [(instruction index, map name)]
    # Static subprograms (bpf_loop callbacks) appended after the program
    # itself: [(instruction index where it starts, its name)].  The kernel
    # wants BTF func_info for them; the loader makes it (func_btf).
    subprogs: list = field(default_factory=list)


@dataclass
class Compiled:
    """What a compiler produced for one probe, ready to load."""
    license: str
    maps: list                      # [MapSpec]
    programs: list                  # [ProgSpec], in attach order
    event_types: list = field(default_factory=list)   # [(struct name, dtype as data)]


# --- instructions ---------------------------------------------------------

def _ld_imm64s(insns: bytes):
    """(instruction index, src_reg, imm, next imm) of every ld_imm64: the
    one instruction that takes two slots (the next holds the upper half)."""
    n = len(insns) // INSN_SIZE
    # The opcodes alone, one byte per instruction: found with bytes.find
    # (a probe has thousands of instructions and a few dozen ld_imm64s;
    # every start walks them all).  The walk is the one instruction by
    # instruction would make: the slot after an ld_imm64 is its upper half.
    codes = bytes(insns[0:n * INSN_SIZE:INSN_SIZE])
    mark = bytes((LD_IMM64,))
    taken = -2
    i = codes.find(mark)
    while i != -1:
        if i != taken + 1:
            _code, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * INSN_SIZE)
            upper = struct.unpack_from("<i", insns, (i + 1) * INSN_SIZE + 4)[0] if i + 1 < n else None
            yield i, regs >> 4, imm, upper
            taken = i
        i = codes.find(mark, i + 1)


def map_fd_refs(insns: bytes):
    """(instruction index, map fd) of every ld_imm64 that loads a map."""
    return [(i, imm) for i, src, imm, _ in _ld_imm64s(insns)
            if src in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE)]


def patched(insns: bytes, refs, fds: dict) -> bytes:
    """`insns` with each referenced map's fd (from `fds`, by name) in place.

    Every map load must be among `refs`: a stale fd left unpatched could name
    a compatible map of this process and load silently against it."""
    out = bytearray(insns)
    wanted = {index for index, _ in refs}
    found = {index for index, _ in map_fd_refs(insns)}
    if wanted != found:
        raise ValueError(f"map references at instructions {sorted(found ^ wanted)} "
                         f"do not match the compiled record")
    for index, name in refs:
        struct.pack_into("<i", out, index * INSN_SIZE + 4, fds[name])
    return bytes(out)


# Callback references the compiler could not relocate (see LOOP_CALLBACK in
# probes/common.h): an ld_imm64 of CALLBACK_MARK << 32 | n stands for the
# address of the function BCC compiled as rbtrace_cb<n>__<name>.
CALLBACK_MARK = 0x72626362


def callback_marks(insns: bytes):
    """(instruction index, callback number) of every callback reference."""
    return [(i, imm) for i, src, imm, upper in _ld_imm64s(insns)
            if src == 0 and upper == CALLBACK_MARK]


def link_callbacks(insns: bytes, callbacks: dict):
    """(instructions, subprogs): `insns` with each callback it refers to
    appended once, and each reference made a BPF_PSEUDO_FUNC load of it.
    `callbacks`: {number: (name, instructions)}.  A KeyError names a
    callback number that has no function."""
    out = bytearray(insns)
    starts, subprogs = {}, []
    for index, number in callback_marks(insns):
        if number not in starts:
            name, body = callbacks[number]
            starts[number] = len(out) // INSN_SIZE
            subprogs.append((starts[number], name))
            out += body
        regs = out[index * INSN_SIZE + 1]
        out[index * INSN_SIZE + 1] = (regs & 0x0F) | (PSEUDO_FUNC << 4)
        struct.pack_into("<i", out, index * INSN_SIZE + 4, starts[number] - index - 1)
        struct.pack_into("<i", out, (index + 1) * INSN_SIZE + 4, 0)
    return bytes(out), subprogs


# --- libbpf and libc through ctypes -----------------------------------------

class _MapCreateOpts(ctypes.Structure):
    # struct bpf_map_create_opts as of libbpf 1.0; `sz` tells libbpf which.
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("map_extra", ctypes.c_uint64), ("numa_node", ctypes.c_uint32),
                ("map_ifindex", ctypes.c_uint32)]


class _ProgLoadOpts(ctypes.Structure):
    # struct bpf_prog_load_opts as of libbpf 1.0 (up to log_buf).
    _fields_ = [("sz", ctypes.c_size_t), ("attempts", ctypes.c_int),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_ifindex", ctypes.c_uint32),
                ("kern_version", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_prog_fd", ctypes.c_uint32), ("attach_btf_obj_fd", ctypes.c_uint32),
                ("fd_array", ctypes.c_void_p), ("func_info", ctypes.c_void_p),
                ("func_info_cnt", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("line_info", ctypes.c_void_p), ("line_info_cnt", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("log_level", ctypes.c_uint32),
                ("log_size", ctypes.c_uint32), ("log_buf", ctypes.c_void_p)]


class _PerfEventAttr(ctypes.Structure):
    # The head of struct perf_event_attr (PERF_ATTR_SIZE_VER5, 112 bytes).
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64),
                ("config2", ctypes.c_uint64), ("branch_sample_type", ctypes.c_uint64),
                ("sample_regs_user", ctypes.c_uint64), ("sample_stack_user", ctypes.c_uint32),
                ("clockid", ctypes.c_int32), ("sample_regs_intr", ctypes.c_uint64),
                ("aux_watermark", ctypes.c_uint32), ("sample_max_stack", ctypes.c_uint16),
                ("reserved_2", ctypes.c_uint16)]


@functools.lru_cache(maxsize=1)
def libbpf():
    """libbpf.so.1 with the prototypes rbtrace calls (all return -errno on
    failure, libbpf 1.0 semantics)."""
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        # find_library runs ldconfig -p: only when the soname isn't found.
        try:
            from ctypes.util import find_library
            lib = ctypes.CDLL(find_library("bpf") or "libbpf.so.1", use_errno=True)
        except OSError as e:
            from rbtrace.errors import EnvironmentProblem
            raise EnvironmentProblem(f"libbpf is not installed ({e})",
                                     hint="apt-get install libbpf1") from e
    c = ctypes
    proto = {
        "bpf_map_create": (c.c_int, [c.c_int, c.c_char_p, c.c_uint32, c.c_uint32, c.c_uint32,
                                     c.POINTER(_MapCreateOpts)]),
        "bpf_prog_load": (c.c_int, [c.c_int, c.c_char_p, c.c_char_p, c.c_void_p, c.c_size_t,
                                    c.POINTER(_ProgLoadOpts)]),
        "bpf_map_lookup_elem": (c.c_int, [c.c_int, c.c_void_p, c.c_void_p]),
        "bpf_map_update_elem": (c.c_int, [c.c_int, c.c_void_p, c.c_void_p, c.c_uint64]),
        "bpf_map_get_next_key": (c.c_int, [c.c_int, c.c_void_p, c.c_void_p]),
        "bpf_raw_tracepoint_open": (c.c_int, [c.c_char_p, c.c_int]),
        "bpf_obj_get_info_by_fd": (c.c_int, [c.c_int, c.c_void_p, c.POINTER(c.c_uint32)]),
        "libbpf_num_possible_cpus": (c.c_int, []),
        "btf__new_empty": (c.c_void_p, []),
        "btf__add_int": (c.c_int, [c.c_void_p, c.c_char_p, c.c_size_t, c.c_int]),
        "btf__add_func_proto": (c.c_int, [c.c_void_p, c.c_int]),
        "btf__add_func_param": (c.c_int, [c.c_void_p, c.c_char_p, c.c_int]),
        "btf__add_func": (c.c_int, [c.c_void_p, c.c_char_p, c.c_int, c.c_int]),
        "btf__load_into_kernel": (c.c_int, [c.c_void_p]),
        "btf__fd": (c.c_int, [c.c_void_p]),
        "btf__free": (None, [c.c_void_p]),
    }
    for fn, (restype, argtypes) in proto.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = restype, argtypes
    return lib


def _err(ret) -> int:
    """The errno of a failed libbpf call (it returns -errno)."""
    return -ret if ret < 0 and -ret < 4096 else (ctypes.get_errno() or errno_mod.EINVAL)


@functools.lru_cache(maxsize=1)
def possible_cpus() -> int:
    n = libbpf().libbpf_num_possible_cpus()
    if n <= 0:
        raise OSError(_err(n), "cannot count the possible CPUs")
    return n


def _perf_event_open(attr, pid, cpu, group_fd, flags) -> int:
    number = _PERF_EVENT_OPEN.get(platform.machine())
    if number is None:
        raise OSError(errno_mod.ENOSYS, f"perf_event_open: unknown on {platform.machine()}")
    libc = kernel.libc()
    fd = libc.syscall(ctypes.c_long(number), ctypes.byref(attr), ctypes.c_long(pid),
                      ctypes.c_long(cpu), ctypes.c_long(group_fd), ctypes.c_long(flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _ioctl(fd, request, arg) -> None:
    libc = kernel.libc()
    if libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_long(arg)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# --- maps -----------------------------------------------------------------

class Map:
    """A map this process created: its fd and its spec."""

    def __init__(self, spec: MapSpec, fd: int):
        self.spec, self.fd = spec, fd
        # A per-CPU map's value comes as one 8-byte-aligned slot per CPU.
        self.percpu = spec.type in PERCPU_MAP_TYPES
        self.slot = (spec.value_size + 7) // 8 * 8
        self.value_bytes = self.slot * possible_cpus() if self.percpu else spec.value_size

    def lookup(self, key: bytes):
        """The value's bytes (all CPUs' slots for a per-CPU map), or None."""
        value = ctypes.create_string_buffer(max(self.value_bytes, 1))
        k = ctypes.create_string_buffer(key, len(key))
        ret = libbpf().bpf_map_lookup_elem(self.fd, k, value)
        if ret < 0:
            err = _err(ret)
            if err == errno_mod.ENOENT:
                return None
            raise OSError(err, f"map {self.spec.name}: {os.strerror(err)}")
        return value.raw[:self.value_bytes]

    def update(self, key: bytes, value: bytes, flags=0):
        if self.percpu:
            value = b"".join(value.ljust(self.slot, b"\0") for _ in range(possible_cpus()))
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        ret = libbpf().bpf_map_update_elem(self.fd, k, v, flags)
        if ret < 0:
            err = _err(ret)
            raise OSError(err, f"map {self.spec.name}: {os.strerror(err)}")

    def keys(self):
        """Every key, as bytes (a snapshot taken while the map changes may
        miss or repeat keys that come and go meanwhile)."""
        lib = libbpf()
        size = self.spec.key_size
        key = ctypes.create_string_buffer(size)
        nxt = ctypes.create_string_buffer(size)
        out, prev = [], None
        while True:
            ret = lib.bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                err = _err(ret)
                if err == errno_mod.ENOENT:
                    return out
                raise OSError(err, f"map {self.spec.name}: {os.strerror(err)}")
            out.append(nxt.raw)
            ctypes.memmove(key, nxt, size)
            prev = key

    def u64_sum(self, index: int) -> int:
        """An array entry of u64 summed over CPUs (per-CPU counters)."""
        raw = self.lookup(struct.pack("<I", index))
        if raw is None:
            return 0
        return sum(int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), self.slot))


def create_map(spec: MapSpec) -> Map:
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=spec.flags)
    fd = libbpf().bpf_map_create(spec.type, spec.name[:BPF_OBJ_NAME_LEN - 1].encode(),
                                 spec.key_size, spec.value_size, spec.max_entries,
                                 ctypes.byref(opts))
    if fd < 0:
        raise LoadError(f"map {spec.name}", _err(fd))
    return Map(spec, fd)


# --- programs -------------------------------------------------------------

BTF_FUNC_STATIC, BTF_FUNC_GLOBAL = 0, 1
BTF_INT_SIGNED = 1


class FuncBTF:
    """The BTF the kernel wants with a program that has static subprograms
    (a bpf_loop callback must be one, and known to be one from func_info):
    a FUNC per program and per subprogram, all of type long (long...).
    The verifier takes the arguments' types from the helper, not from here.
    Closed once the programs are loaded (a program keeps its own reference)."""

    def __init__(self, programs):
        lib = libbpf()
        self.btf = lib.btf__new_empty()
        if not self.btf:
            raise LoadError("BTF for callbacks", ctypes.get_errno() or errno_mod.ENOMEM)
        self.func_info = {}
        try:
            long_t = self._check(lib.btf__add_int(self.btf, b"long", 8, BTF_INT_SIGNED))
            main_t = self._check(lib.btf__add_func_proto(self.btf, long_t))
            self._check(lib.btf__add_func_param(self.btf, b"ctx", long_t))
            cb_t = self._check(lib.btf__add_func_proto(self.btf, long_t))
            self._check(lib.btf__add_func_param(self.btf, b"index", long_t))
            self._check(lib.btf__add_func_param(self.btf, b"ctx", long_t))
            for p in programs:
                records = [(0, self._check(lib.btf__add_func(self.btf, p.name.encode(),
                                                              BTF_FUNC_GLOBAL, main_t)))]
                for start, name in p.subprogs:
                    records.append((start, self._check(lib.btf__add_func(
                        self.btf, name.encode(), BTF_FUNC_STATIC, cb_t))))
                self.func_info[p.name] = (ctypes.c_uint32 * (2 * len(records)))(
                    *[v for r in records for v in r])
            self._check(lib.btf__load_into_kernel(self.btf))
            self.fd = lib.btf__fd(self.btf)
        except BaseException:
            self.close()
            raise

    def _check(self, ret):
        if ret < 0:
            raise LoadError("BTF for callbacks", _err(ret))
        return ret

    def close(self):
        if self.btf:
            libbpf().btf__free(self.btf)
            self.btf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_program(spec: ProgSpec, insns: bytes, license: str, log_level=0,
                 log_size=1 << 20, btf: FuncBTF = None) -> int:
    """Its fd.  On refusal a LoadError; with `log_level` it carries the
    verifier's log.  `btf`: the func_info of a program with subprograms."""
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), attempts=5)
    if spec.subprogs:
        if btf is None:
            raise LoadError(f"program {spec.name}", errno_mod.EINVAL, program=spec)
        info = btf.func_info[spec.name]
        opts.prog_btf_fd, opts.func_info = btf.fd, ctypes.addressof(info)
        opts.func_info_cnt, opts.func_info_rec_size = len(info) // 2, 8
    log = None
    if log_level:
        log = ctypes.create_string_buffer(log_size)
        opts.log_level, opts.log_size, opts.log_buf = log_level, log_size, ctypes.addressof(log)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fd = libbpf().bpf_prog_load(spec.type, spec.name[:BPF_OBJ_NAME_LEN - 1].encode(),
                                license.encode(), buf, len(insns) // INSN_SIZE,
                                ctypes.byref(opts))
    if fd < 0:
        raise LoadError(f"program {spec.name}", _err(fd),
                        log.value.decode(errors="replace") if log is not None else "",
                        program=spec)
    return fd


BPF_FUNC_LOOP = 181      # uapi/linux/bpf.h, Linux 5.17


def _insn(code, dst=0, src=0, off=0, imm=0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def bpf_loop_loads() -> bool:
    """Whether the kernel loads a tracepoint program calling bpf_loop with
    a callback, linked and described the way rbtrace does it for a probe
    (link_callbacks, FuncBTF): Linux 5.17 and later, with BTF."""
    mov, ld, call, exit_ = 0xb7, LD_IMM64, 0x85, 0x95
    main = (_insn(mov, 1, imm=1) + _insn(ld, 2, imm=1) + _insn(0, imm=CALLBACK_MARK) +
            _insn(mov, 3) + _insn(mov, 4) + _insn(call, imm=BPF_FUNC_LOOP) +
            _insn(mov, 0) + _insn(exit_))
    insns, subprogs = link_callbacks(main, {1: ("rbtrace_cb1__probe",
                                                _insn(mov, 0) + _insn(exit_))})
    spec = ProgSpec(name="rbtrace_loop", type=PROG_TYPE_TRACEPOINT, attach="tracepoint",
                    target="", insns=insns, subprogs=subprogs)
    try:
        with FuncBTF([spec]) as btf:
            os.close(load_program(spec, insns, "GPL", btf=btf))
        return True
    except (LoadError, OSError):
        return False


def tracepoint_id(category, event) -> int:
    path = kernel.tracefs_dir() / "events" / category / event / "id"
    return int(path.read_text())


def attach_tracepoint(prog_fd, target) -> int:
    """A perf event on tracepoint `target` ("category:event") running the
    program; closing its fd detaches it.  One event (cpu 0, any task) is
    enough: the kernel runs a tracepoint's BPF programs on every CPU."""
    category, _, event = target.partition(":")
    try:
        tp_id = tracepoint_id(category, event)
    except (OSError, ValueError) as e:
        raise LoadError(f"tracepoint {target}", getattr(e, "errno", None) or errno_mod.ENOENT)
    attr = _PerfEventAttr(type=PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfEventAttr),
                          config=tp_id, sample_period=1, sample_type=PERF_SAMPLE_RAW,
                          wakeup_events=1)
    try:
        fd = _perf_event_open(attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    except OSError as e:
        raise LoadError(f"tracepoint {target}", e.errno)
    try:
        _ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        _ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as e:
        os.close(fd)
        raise LoadError(f"tracepoint {target}", e.errno)
    return fd


def attach_raw_tracepoint(prog_fd, target) -> int:
    fd = libbpf().bpf_raw_tracepoint_open(target.encode(), prog_fd)
    if fd < 0:
        raise LoadError(f"raw tracepoint {target}", _err(fd))
    return fd


def attach(spec: ProgSpec, prog_fd) -> int:
    if spec.attach == "raw_tracepoint":
        return attach_raw_tracepoint(prog_fd, spec.target)
    return attach_tracepoint(prog_fd, spec.target)


BPF_OBJ_GET_INFO_BY_FD_PROG_INFO_SIZE = 232     # sizeof(struct bpf_prog_info), uapi 6.1
_RECURSION_MISSES_OFF = 208                     # offsetof(struct bpf_prog_info, recursion_misses)


def _prog_info_field(prog_fd: int, offset: int, size: int) -> int:
    """An unsigned field of the program's struct bpf_prog_info; 0 when the
    kernel's struct is too old to have it (or the call fails)."""
    info = ctypes.create_string_buffer(BPF_OBJ_GET_INFO_BY_FD_PROG_INFO_SIZE)
    length = ctypes.c_uint32(len(info))
    if libbpf().bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(length)) != 0:
        return 0
    if length.value < offset + size:
        return 0
    return int.from_bytes(info.raw[offset:offset + size], "little")


def recursion_misses(prog_fd: int) -> int:
    """Runs of the program the kernel skipped (see LoadedProbe.prog_misses)."""
    return _prog_info_field(prog_fd, _RECURSION_MISSES_OFF, 8)


_VERIFIED_INSNS_OFF = 216                       # offsetof(struct bpf_prog_info, verified_insns)


def verified_insns(prog_fd: int) -> int:
    """Instructions the verifier checked to load the program (Linux 5.16
    and later; 0 when unknown): its cost to load, paid at every load."""
    return _prog_info_field(prog_fd, _VERIFIED_INSNS_OFF, 4)


def in_threads(calls, workers):
    """Run `calls` (no-argument callables) on up to `workers` threads; a
    list of (result, exception) in the order of `calls`.  For system calls
    that block in the kernel (ctypes and os let go of the GIL meanwhile).
    Plain threads: concurrent.futures costs every start 5 ms of imports."""
    results = [None] * len(calls)
    todo = iter(range(len(calls)))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                results[i] = (calls[i](), None)
            except BaseException as e:  # handed to the caller, who decides
                results[i] = (None, e)
    threads = [threading.Thread(target=work, daemon=True)
               for _ in range(max(1, min(workers, len(calls))) - 1)]
    for t in threads:
        t.start()
    work()                              # this thread takes its share too
    for t in threads:
        t.join()
    return results


def close_in_parallel(closers):
    """Detach hooks from several threads.  Each detach waits for RCU grace
    periods (tracepoint_synchronize_unregister; for a perf tracepoint under
    the kernel's event_mutex, perf_trace_event_unreg, 6.18): 40-80 ms each
    here, so one after the other the exec probe took 0.4 s to stop.
    Threads overlap the waits outside the mutex."""
    for _, e in in_threads(list(closers), 8):
        if e is not None:
            raise e


class Loaded:
    """A Compiled probe's maps created and programs loaded (not attached).

    Programs are verified in parallel: the kernel verifies each load on
    the calling thread, and ctypes lets go of the GIL during the call."""

    def __init__(self, compiled: Compiled, sizes=None, shared=None):
        """`sizes`: {map name: max_entries} overriding the compiled ones
        (the ring's size is a run-time choice, not part of the bytes).
        `shared`: {map name: Map} of maps another Loaded created, used
        instead of creating this probe's own (several probes writing to
        one ring, one seq counter, one set of counters): each must be of
        the same type and sizes as the one compiled here.  They stay the
        other's to close."""
        self.compiled = compiled
        self.maps, self.prog_fds, self.attached = {}, {}, []
        self.shared = {}
        sizes = sizes or {}
        shared = shared or {}
        try:
            used = {name for p in compiled.programs for _, name in p.map_refs}
            for spec in compiled.maps:
                if spec.name not in used and spec.name not in sizes:
                    continue
                if spec.name in sizes:
                    spec = MapSpec(**{**spec.__dict__, "max_entries": sizes[spec.name]})
                if spec.name in shared:
                    other = shared[spec.name]
                    if other.spec != spec:
                        raise ValueError(f"map {spec.name} differs from the shared one: "
                                         f"{spec} and {other.spec}")
                    self.shared[spec.name] = other
                    continue
                self.maps[spec.name] = create_map(spec)
            fds = {name: m.fd for name, m in {**self.maps, **self.shared}.items()}
            images = [patched(p.insns, p.map_refs, fds) for p in compiled.programs]
            with_subprogs = [p for p in compiled.programs if p.subprogs]
            with FuncBTF(with_subprogs) if with_subprogs else contextlib.nullcontext() as btf:
                calls = [functools.partial(load_program, p, image, compiled.license, btf=btf)
                         for p, image in zip(compiled.programs, images)]
                results = in_threads(calls, os.cpu_count() or 1)
            failure = None
            for p, (fd, e) in zip(compiled.programs, results):
                if e is None:
                    self.prog_fds[p.name] = fd
                elif isinstance(e, LoadError):
                    failure = failure or e
                else:
                    raise e
            if failure is not None:
                raise failure
        except BaseException:
            self.close()
            raise

    def map(self, name):
        """The map called `name`, or None when the probe has none."""
        return self.maps.get(name) or self.shared.get(name)

    def attach_all(self, before_each=None, only=None):
        """Attach every program in order (the kernel runs the programs of
        one hook in attach order); `only`: a test of a ProgSpec, to attach
        those it passes."""
        for p in self.compiled.programs:
            if only is not None and not only(p):
                continue
            if before_each is not None:
                before_each(p)
            self.attached.append(attach(p, self.prog_fds[p.name]))

    def detach(self):
        fds, self.attached = self.attached, []
        close_in_parallel([functools.partial(os.close, fd) for fd in fds])

    def close(self):
        self.detach()
        for fd in self.prog_fds.values():
            os.close(fd)
        for m in self.maps.values():
            os.close(m.fd)
        self.prog_fds, self.maps, self.shared = {}, {}, {}
