"""A kernel tree for BCC made from the running kernel's BTF alone.

BCC compiles against a kernel tree (BCC_KERNEL_SOURCE): it force-includes
include/linux/kconfig.h, and its own headers (helpers.h, and virtual_bpf.h,
its copy of the kernel's uapi/linux/bpf.h) include linux/types.h,
linux/version.h, linux/log2.h, asm/page.h, uapi/linux/bpf.h and
uapi/linux/if_packet.h.  Where no kernel headers are installed, rbtrace
writes that tree itself, once per kernel, into its cache:

- linux/types.h declares every type of the running kernel, dumped from
  /sys/kernel/btf/vmlinux by libbpf's btf_dump (the library BCC itself
  links), so tracepoint arguments of any type compile and a probe reads
  kernel structs with the running kernel's layout;
- the other files are stubs: what BCC's headers need of them and nothing
  more (BTF has no macros; version.h and page.h are written from uname and
  the page size);
- names that virtual_bpf.h also defines (BPF structs, enums and their
  enumerators) are renamed while the kernel's types are parsed, so the
  two copies never meet.

The tree is keyed by a digest of the BTF and of BCC's virtual_bpf.h, built
beside its final name and renamed into place, and lives in a directory of
the cache checked as the compile cache's is (rbtrace/cache.py).
"""
import ctypes
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from rbtrace import cache
from rbtrace.errors import EnvironmentProblem

FORMAT = 2          # bump when what is written changes
RENAMED_PREFIX = "rbtrace_kernel_"

# Macros that rbtrace's probes and users' probes want and BTF can't carry.
# Spelled as the probes spell them, so that a probe's own identical
# definition is no redefinition.
MACROS = """\
#define AF_UNSPEC 0
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define AT_FDCWD -100
#define S_IFMT   0170000
#define S_IFSOCK 0140000
#define S_IFLNK  0120000
#define S_IFREG  0100000
#define S_IFDIR  0040000
#define TASK_COMM_LEN 16
"""

# The kernel's compiler_types.h words that BPF C code uses.
COMPILER_WORDS = """\
#define __always_inline inline __attribute__((always_inline))
#define noinline __attribute__((noinline))
#define __packed __attribute__((packed))
#define __aligned(x) __attribute__((aligned(x)))
"""

# What BCC's headers include, beside linux/types.h, and need nothing from
# (virtual_bpf.h stands in for uapi/linux/bpf.h).
EMPTY_STUBS = ("linux/bpf_common.h", "linux/log2.h", "uapi/linux/bpf.h",
               "uapi/linux/if_packet.h")


def _libbcc_path() -> str:
    """The file of the libbcc this process maps (bcc's Python module loads it)."""
    try:
        ctypes.CDLL("libbcc.so.0")
    except OSError as e:
        raise EnvironmentProblem(f"BCC's library is not installed ({e})",
                                 hint="apt-get install python3-bpfcc") from e
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(maxsplit=5)[-1].strip()
            if os.path.basename(path).startswith("libbcc.so"):
                return path
    raise EnvironmentProblem("libbcc.so.0 is loaded but not found in /proc/self/maps")


def bcc_bpf_header() -> str:
    """The text of BCC's virtual_bpf.h, which libbcc carries as a string."""
    try:
        data = Path(_libbcc_path()).read_bytes()
    except OSError as e:
        raise EnvironmentProblem(f"cannot read BCC's library: {e}",
                                 hint="apt-get install python3-bpfcc") from e
    at = data.find(b"#define _UAPI__LINUX_BPF_H__")
    if at == -1:
        raise EnvironmentProblem("BCC's library carries no uapi/linux/bpf.h: "
                                 "this BCC can't compile from BTF alone",
                                 hint="install kernel headers (see rbtrace doctor)")
    start, end = data.rfind(b"\0", 0, at) + 1, data.find(b"\0", at)
    return data[start:end].decode(errors="replace")


_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_TAG_BODY = re.compile(r"\b(?:struct|union|enum)\s+(\w+)\s*\{")
_ENUM_BODY = re.compile(r"\benum\b[^{;]*\{([^}]*)\}")
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)", re.M)


def defined_names(header: str):
    """(tags, enumerators, macros) that a C header defines, as far as
    plain reading sees (enumerators made by macros are not seen: see
    clashing_names)."""
    text = _COMMENTS.sub(" ", header)
    enumerators = {m.group(1) for body in _ENUM_BODY.findall(text)
                   for m in [re.match(r"\s*([A-Za-z_]\w*)", item) for item in body.split(",")]
                   if m}
    return set(_TAG_BODY.findall(text)), enumerators, set(_DEFINE.findall(text))


def clashing_names(btf, header: str) -> list:
    """The kernel's names that BCC's virtual_bpf.h defines too: its structs,
    unions and enums, every enumerator of an enum it defines (some are made
    by macros, BPF_FUNC_*), its other enumerators, and any kernel tag or
    enumerator that it defines as a macro."""
    tags, enumerators, macros = defined_names(header)
    kernel_tags = btf.tags()
    kernel_enums = btf.enums()
    kernel_enumerators = {n for _, members in kernel_enums for n in members}
    names = tags & kernel_tags
    for name, members in kernel_enums:
        if name in names:
            names.update(members)
    names |= enumerators & kernel_enumerators
    names |= macros & (kernel_tags | kernel_enumerators)
    return sorted(names)


def _libbpf_dump(btf_path: str, out_path: str):
    """Every type of the BTF at btf_path as C, written to out_path by
    libbpf's btf_dump, printing through the C library's vfprintf."""
    from rbtrace.loader import libbpf
    from rbtrace.kernel import libc
    lib, c = libbpf(), libc()
    vp = ctypes.c_void_p
    for name, res, args in (("btf__parse", vp, [ctypes.c_char_p, vp]),
                            ("btf__type_cnt", ctypes.c_uint32, [vp]),
                            ("btf_dump__new", vp, [vp, vp, vp, vp]),
                            ("btf_dump__dump_type", ctypes.c_int, [vp, ctypes.c_uint32]),
                            ("btf_dump__free", None, [vp]), ("btf__free", None, [vp])):
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    c.fopen.restype, c.fopen.argtypes = vp, [ctypes.c_char_p, ctypes.c_char_p]
    c.fclose.argtypes = [vp]
    btf = lib.btf__parse(btf_path.encode(), None)
    if not btf:
        raise EnvironmentProblem(f"libbpf cannot parse {btf_path}: "
                                 f"{os.strerror(ctypes.get_errno() or 22)}")
    out = c.fopen(out_path.encode(), b"w")
    if not out:
        lib.btf__free(btf)
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), out_path)
    # btf_dump's printf callback is (ctx, fmt, va_list): vfprintf's own
    # shape, with the FILE as ctx, so no Python runs per line.
    dump = lib.btf_dump__new(btf, ctypes.cast(c.vfprintf, vp), out, None)
    try:
        if not dump:
            raise EnvironmentProblem("libbpf's btf_dump__new failed")
        for tid in range(1, lib.btf__type_cnt(btf)):
            err = lib.btf_dump__dump_type(dump, tid)
            if err:
                raise EnvironmentProblem(f"libbpf cannot write BTF type {tid} as C: "
                                         f"{os.strerror(-err)}")
    finally:
        if dump:
            lib.btf_dump__free(dump)
        c.fclose(out)
        lib.btf__free(btf)


def _version_code(release: str) -> int:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    major, minor, patch = (int(x or 0) for x in m.groups()) if m else (0, 0, 0)
    return (major << 16) + (minor << 8) + min(patch, 255)


def _write_tree(root: Path, btf_path: str, header: str):
    from rbtrace.btf import BTF
    inc = root / "include"
    for d in ("linux", "asm", "uapi/linux", "rbtrace"):
        (inc / d).mkdir(parents=True, exist_ok=True)
    (root / "empty").mkdir()          # the compiler's working directory
    write = lambda name, text: (inc / name).write_text(text)   # noqa: E731
    made = "/* Written by rbtrace from the running kernel's BTF (rbtrace/btftree.py). */\n"
    write("linux/kconfig.h", made + "#define CONFIG_BPF_SYSCALL 1\n")
    write("linux/version.h", made +
          f"#define LINUX_VERSION_CODE {_version_code(os.uname().release)}\n"
          "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n")
    shift = (os.sysconf("SC_PAGE_SIZE") - 1).bit_length()
    write("asm/page.h", made + f"#define PAGE_SHIFT {shift}\n#define PAGE_SIZE (1UL << PAGE_SHIFT)\n")
    for name in EMPTY_STUBS:
        write(name, made + "/* Nothing: BCC's virtual_bpf.h defines what it would. */\n")
    write("linux/types.h", made + "#include <vmlinux.h>\n"
          # uapi/linux/types.h's macros (virtual_bpf.h uses them).
          "#define __aligned_u64 __u64 __attribute__((aligned(8)))\n"
          "#define __aligned_be64 __be64 __attribute__((aligned(8)))\n"
          "#define __aligned_le64 __le64 __attribute__((aligned(8)))\n" + COMPILER_WORDS + MACROS)
    names = clashing_names(BTF.from_file(btf_path), header)
    _libbpf_dump(btf_path, str(inc / "rbtrace" / "types.h"))
    rename = "".join(f'#pragma push_macro("{n}")\n#undef {n}\n#define {n} {RENAMED_PREFIX}{n}\n'
                     for n in names)
    restore = "".join(f'#undef {n}\n#pragma pop_macro("{n}")\n' for n in names)
    write("vmlinux.h", made + "#ifndef RBTRACE_VMLINUX_H\n#define RBTRACE_VMLINUX_H\n"
          f"/* {len(names)} names BCC's virtual_bpf.h defines too, renamed here. */\n"
          + rename + "#include <rbtrace/types.h>\n" + restore + "#endif\n")


def tree_key() -> str:
    """What the tree is made of: the BTF, the BCC whose virtual_bpf.h was
    renamed against (its version, read without loading it: a compile cache
    hit must not map LLVM), the kernel release, and this generator."""
    parts = [str(FORMAT), cache.btf_digest(), cache.bcc_version(), os.uname().release]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def btf_tree() -> Path:
    """The tree for the running kernel, written first if missing."""
    try:
        parent = cache.open_subdir("btf")
    except cache.Unsafe as e:
        raise EnvironmentProblem(f"cannot keep the BTF kernel tree in the cache: {e}",
                                 hint="set RBTRACE_CACHE_DIR to a directory of yours, mode 0700")
    dst = parent / tree_key()
    if (dst / "include" / "vmlinux.h").is_file():
        return dst
    header = bcc_bpf_header()
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".new-"))
    try:
        _write_tree(tmp, cache.VMLINUX_BTF, header)
        try:
            os.rename(tmp, dst)
        except OSError:
            if not (dst / "include" / "vmlinux.h").is_file():
                raise
            shutil.rmtree(tmp)      # another rbtrace made it first
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvironmentProblem(f"cannot write the BTF kernel tree in {parent}: "
                                 f"{e.strerror}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # One kernel runs at a time: the trees of others (3 MB each) would only
    # pile up across upgrades.  Booting one again writes its tree again.
    for old in trees(parent):
        if old != dst:
            shutil.rmtree(old, ignore_errors=True)
    return dst


def trees(parent: Path) -> list:
    """The finished trees in the cache's btf directory (not ones being
    written, whose names start with a dot)."""
    try:
        return sorted(p for p in parent.iterdir() if not p.name.startswith(".") and p.is_dir()
                      and not p.is_symlink())
    except FileNotFoundError:
        return []


def tree_bytes(tree: Path) -> int:
    return sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink())


def clear_trees(parent: Path) -> int:
    """Remove every tree (each is written again when next needed)."""
    found = trees(parent)
    for tree in found:
        shutil.rmtree(tree, ignore_errors=True)
    return len(found)
