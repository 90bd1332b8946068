"""The machine rbtrace runs on: privileges, kernel headers, tracefs, BTF.

Each check returns facts; `ensure_*` functions fix what can be fixed and
raise EnvironmentProblem with a hint otherwise.  `rbtrace doctor`
(rbtrace/doctor.py) reports on all of them.
"""
import functools
import os
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from rbtrace.errors import EnvironmentProblem
from rbtrace.fields import for_message
from rbtrace.paths import cache_dir

# Capability numbers from linux/capability.h.
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def privileges_ok(caps=None) -> bool:
    caps = effective_caps() if caps is None else caps
    has = lambda n: bool(caps >> n & 1)  # noqa: E731
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def ensure_privileges():
    if not privileges_ok():
        raise EnvironmentProblem(
            "rbtrace needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load BPF programs",
            hint="run it with sudo")


# --- kernel headers ------------------------------------------------------

@dataclass
class Headers:
    path: Path          # handed to BCC as BCC_KERNEL_SOURCE (None: BCC's default)
    how: str            # one line for `doctor` and --debug


def _debian_arch():
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _version_key(name):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.-]", name)]


def _merge_trees(dst: Path, sources):
    """Make `dst` a tree of symlinks that shows all `sources` as one.

    Debian splits a kernel's headers in two: linux-headers-V-common (the
    sources) and linux-headers-V-ARCH (generated files, .config).  Kbuild
    and BCC expect one tree.  Only directories present in both are made
    real; everything else is one symlink, so the farm is a few dozen links.
    """
    dst.mkdir(parents=True, exist_ok=True)
    entries = {}
    for src in sources:
        for name in sorted(os.listdir(src)):
            entries.setdefault(name, []).append(src / name)
    for name, paths in entries.items():
        target = dst / name
        distinct = {p.resolve() for p in paths}
        if len(distinct) > 1 and all(p.is_dir() for p in paths):
            _merge_trees(target, paths)
        else:
            target.symlink_to(paths[0])  # the arch tree comes first: it wins


def _merged_debian_headers(src_root: Path):
    """Newest Debian split header pair under /usr/src, merged in the cache."""
    arch = _debian_arch()
    pairs = []
    for arch_tree in src_root.glob(f"linux-headers-*-{arch}"):
        version = arch_tree.name[len("linux-headers-"):-len(arch) - 1]
        common = src_root / f"linux-headers-{version}-common"
        if (arch_tree / "include" / "generated").is_dir() and (common / "include" / "linux").is_dir():
            pairs.append((version, arch_tree, common))
    if not pairs:
        return None
    version, arch_tree, common = max(pairs, key=lambda p: _version_key(p[0]))
    dst = cache_dir() / "headers" / f"linux-headers-{version}-{arch}"
    done = dst / ".rbtrace-complete"
    if not done.exists():
        # Build beside and rename: two rbtrace starting at once never see
        # half a tree.
        tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _merge_trees(tmp, [arch_tree, common])
            (tmp / ".rbtrace-complete").write_text(f"{arch_tree}\n{common}\n")
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not done.exists():
                raise EnvironmentProblem(
                    f"cannot build the merged header tree in {dst.parent}: {e.strerror}",
                    hint="set RBTRACE_CACHE_DIR to a writable directory") from e
    return Headers(dst, f"Debian {version} headers ({common.name} + {arch_tree.name}) "
                        f"merged under {dst}")


def find_headers(release=None, modules_root=Path("/lib/modules"), src_root=Path("/usr/src")) -> Headers:
    """Kernel headers BCC can compile against, found without user help.

    Order: an explicit RBTRACE_KERNEL_HEADERS; the running kernel's own
    build tree; the kernel's built-in /sys/kernel/kheaders.tar.xz (BCC
    unpacks it itself); Debian's split headers for another version, merged.
    Headers of another version are fine because rbtrace's probes read no
    kernel struct through them (offsets come from BTF).
    """
    release = release or os.uname().release
    explicit = os.environ.get("RBTRACE_KERNEL_HEADERS")
    if explicit:
        if not (Path(explicit) / "include").is_dir():
            raise EnvironmentProblem(f"RBTRACE_KERNEL_HEADERS={for_message(explicit)} has no "
                                     f"include/ directory")
        return Headers(Path(explicit), f"{explicit} (from RBTRACE_KERNEL_HEADERS)")
    build = modules_root / release / "build"
    if (build / "include").is_dir():
        return Headers(None, f"{build} (the running kernel's own)")
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Headers(None, "/sys/kernel/kheaders.tar.xz (built into the kernel)")
    merged = _merged_debian_headers(src_root)
    if merged:
        return merged
    raise EnvironmentProblem(
        f"no kernel headers found for {release} or any other version",
        hint=f"apt-get install linux-headers-{_debian_arch()}")


# --- tracefs -------------------------------------------------------------

DEBUGFS = Path("/sys/kernel/debug")
TRACEFS_UNDER_DEBUGFS = DEBUGFS / "tracing"


def tracefs_ready() -> bool:
    # BCC reads tracepoint formats and ids under /sys/kernel/debug/tracing.
    return (TRACEFS_UNDER_DEBUGFS / "events").is_dir()


@functools.lru_cache(maxsize=1)
def libc():
    """The C library, loaded once (the loss counters read through it ten
    times a second)."""
    import ctypes
    return ctypes.CDLL(None, use_errno=True)


def _mount(fstype, target):
    import ctypes
    if libc().mount(b"none", str(target).encode(), fstype.encode(), 0, None) != 0:
        return ctypes.get_errno()
    return 0


def ensure_tracefs():
    """Mount debugfs (tracefs appears under it) when it is missing."""
    if tracefs_ready():
        return
    fix = f"mount -t debugfs none {DEBUGFS}"
    if os.geteuid() != 0:
        raise EnvironmentProblem("tracefs is not mounted", hint=f"as root: {fix}")
    if not os.path.ismount(DEBUGFS):
        err = _mount("debugfs", DEBUGFS)
        if err:
            raise EnvironmentProblem(f"cannot mount debugfs on {DEBUGFS}: {os.strerror(err)}",
                                     hint=fix)
    if not tracefs_ready():
        err = _mount("tracefs", TRACEFS_UNDER_DEBUGFS)
        if err or not tracefs_ready():
            raise EnvironmentProblem(
                f"cannot mount tracefs on {TRACEFS_UNDER_DEBUGFS}: {os.strerror(err) if err else 'no events'}",
                hint=f"mount -t tracefs none {TRACEFS_UNDER_DEBUGFS}")


def tracepoint_exists(category, event) -> bool:
    return (TRACEFS_UNDER_DEBUGFS / "events" / category / event / "id").exists()


def exit_has_group_dead() -> bool:
    """Whether sched_process_exit passes group_dead (Linux 6.16 and later):
    then a process's exit is known even when its leader thread went first."""
    fmt = TRACEFS_UNDER_DEBUGFS / "events" / "sched" / "sched_process_exit" / "format"
    try:
        return "group_dead;" in fmt.read_text()
    except OSError:
        return False


# --- BTF -----------------------------------------------------------------

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# Kernel struct members the probes read, by -D name (see probes/common.h).
TASK_OFFSETS = {
    "TASK_REAL_PARENT_OFF": ("task_struct", "real_parent"),
    "TASK_TGID_OFF": ("task_struct", "tgid"),
}


def task_offsets() -> dict:
    from rbtrace.btf import BTFError, kernel_offsets
    if not VMLINUX_BTF.exists():
        raise EnvironmentProblem(
            f"{VMLINUX_BTF} is missing: the kernel was built without BTF (CONFIG_DEBUG_INFO_BTF)",
            hint="rbtrace needs BTF to read kernel structs of the running kernel")
    try:
        return kernel_offsets(TASK_OFFSETS, str(VMLINUX_BTF))
    except BTFError as e:
        raise EnvironmentProblem(f"reading {VMLINUX_BTF}: {e}") from e
