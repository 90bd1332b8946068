"""The machine rbtrace runs on: privileges, kernel headers, tracefs, BTF.

Each check returns facts; `ensure_*` functions fix what can be fixed and
raise EnvironmentProblem with a hint otherwise.  `rbtrace doctor`
(rbtrace/doctor.py) reports on all of them.
"""
import functools
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from rbtrace.errors import EnvironmentProblem
from rbtrace.fields import for_message
from rbtrace.paths import cache_dir

# Capability numbers from linux/capability.h.
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

# What a user other than root needs, found by trying each subset on Linux
# 6.18: CAP_BPF to create maps and load programs, CAP_PERFMON to load
# tracing programs and open tracepoint perf events (with
# kernel.perf_event_paranoid > -1), and CAP_DAC_READ_SEARCH to read
# tracepoint ids and formats in tracefs, whose top directory is mode 0700.
# CAP_SYS_ADMIN stands in for the first two (the kernel's bpf_capable()
# and perfmon_capable()), CAP_DAC_OVERRIDE for the third.  Locked memory
# is no concern: since 5.11 BPF memory is charged to the memory cgroup,
# not to RLIMIT_MEMLOCK.
NEEDED_CAPS = "CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH"
SETPRIV_CAPS = "+bpf,+perfmon,+dac_read_search"


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _has(caps, *numbers):
    return any(caps >> n & 1 for n in numbers)


def missing_caps(caps=None) -> list:
    """The capabilities rbtrace needs that `caps` (default: this
    process's effective set) lacks, by name.  CAP_DAC_READ_SEARCH is only
    needed where tracefs is not readable without it (tracefs mounted with
    gid= for a group the user is in), so this lists it regardless; see
    missing_privileges()."""
    caps = effective_caps() if caps is None else caps
    missing = []
    if not _has(caps, CAP_BPF, CAP_SYS_ADMIN):
        missing.append("CAP_BPF")
    if not _has(caps, CAP_PERFMON, CAP_SYS_ADMIN):
        missing.append("CAP_PERFMON")
    if not _has(caps, CAP_DAC_READ_SEARCH, CAP_DAC_OVERRIDE):
        missing.append("CAP_DAC_READ_SEARCH")
    return missing


def privileges_ok(caps=None) -> bool:
    """Whether the kernel lets this process load and attach tracing
    programs (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)."""
    caps = effective_caps() if caps is None else caps
    return _has(caps, CAP_BPF, CAP_SYS_ADMIN) and _has(caps, CAP_PERFMON, CAP_SYS_ADMIN)


def missing_privileges(caps=None) -> list:
    """missing_caps(), less CAP_DAC_READ_SEARCH when tracefs can be read
    without it."""
    missing = missing_caps(caps)
    if "CAP_DAC_READ_SEARCH" in missing and tracefs_state()[1] == "ok":
        missing.remove("CAP_DAC_READ_SEARCH")
    return missing


def describe_privileges(caps=None) -> str:
    """Who this process is, for doctor: "root", or the uid and the caps
    it has of those rbtrace needs."""
    if os.geteuid() == 0 and not missing_caps(caps):
        return "root"
    missing = missing_privileges(caps)
    if missing:
        return f"uid {os.geteuid()}: missing " + ", ".join(missing)
    return f"uid {os.geteuid()} with {NEEDED_CAPS}"


def ensure_privileges():
    missing = missing_privileges()
    if missing:
        raise EnvironmentProblem(
            f"rbtrace needs root, or the capabilities {NEEDED_CAPS}: "
            f"uid {os.geteuid()} lacks " + ", ".join(missing),
            hint=f"run it with sudo, or grant them (setpriv --inh-caps={SETPRIV_CAPS} "
                 f"--ambient-caps={SETPRIV_CAPS} ...)")


# --- BPF ring buffer ------------------------------------------------------

# The largest BPF ring buffer: its size is the map's max_entries, a __u32
# that must be a power of two (kernel/bpf/ringbuf.c), so 2 GiB; a 2 GiB
# ring was created on this machine (Linux 6.18, 24 GiB), and BCC wraps
# 4 GiB to 0 ("Invalid argument").
RINGBUF_MAX_BYTES = 1 << 31


# --- kernel headers ------------------------------------------------------

@dataclass
class Headers:
    path: Path          # handed to BCC as BCC_KERNEL_SOURCE (None: BCC's default)
    how: str            # one line for `doctor` and --debug; part of the compile cache key
    btf: bool = False   # a tree generated from BTF alone (rbtrace/btftree.py)

    @property
    def cwd(self) -> Path:
        """Where the compiler runs: BCC searches its working directory for
        headers before the tree, so it runs where no header can be left by
        others (the BTF tree's own empty directory, or /)."""
        return self.path / "empty" if self.btf else Path("/")


def btf_headers() -> Headers:
    """The tree rbtrace writes from the running kernel's BTF."""
    from rbtrace.btftree import btf_tree
    if not VMLINUX_BTF.exists():
        raise EnvironmentProblem(
            f"no kernel headers found, and no {VMLINUX_BTF} to compile from instead "
            f"(a kernel built without CONFIG_DEBUG_INFO_BTF)",
            hint=f"apt-get install linux-headers-{_debian_arch()}")
    tree = btf_tree()
    return Headers(tree, f"none: BTF alone ({VMLINUX_BTF}), types written to {tree}", btf=True)


def _debian_arch():
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _version_key(name):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.-]", name)]


def _rmtree(path, ignore_errors=False):
    import shutil           # only to make a header tree: its import costs every start 3 ms
    shutil.rmtree(path, ignore_errors=ignore_errors)


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
        _rmtree(tmp, ignore_errors=True)
        try:
            _merge_trees(tmp, [arch_tree, common])
            (tmp / ".rbtrace-complete").write_text(f"{arch_tree}\n{common}\n")
            _rmtree(dst, ignore_errors=True)
            tmp.rename(dst)
        except OSError as e:
            _rmtree(tmp, ignore_errors=True)
            if not done.exists():
                raise EnvironmentProblem(
                    f"cannot build the merged header tree in {dst.parent}: {e.strerror}",
                    hint="set RBTRACE_CACHE_DIR to a writable directory") from e
    return Headers(dst, f"Debian {version} headers ({common.name} + {arch_tree.name}) "
                        f"merged under {dst}")


def find_headers(release=None, modules_root=Path("/lib/modules"), src_root=Path("/usr/src"),
                 kernel_types=False) -> Headers:
    """Kernel headers BCC can compile against, found without user help.

    Order: an explicit RBTRACE_KERNEL_HEADERS (a tree, or "btf"); the
    running kernel's own build tree; the kernel's built-in
    /sys/kernel/kheaders.tar.xz (BCC unpacks it itself); Debian's split
    headers for another version, merged; else a tree written from the
    running kernel's BTF.  Headers of another version are fine because
    rbtrace's probes read no kernel struct through them (offsets come from
    BTF).  `kernel_types`: the probe reads kernel structs by their C types
    (rbtrace run), so only the BTF tree, which has the running kernel's
    layouts, will do (unless RBTRACE_KERNEL_HEADERS names a tree).
    """
    release = release or os.uname().release
    explicit = os.environ.get("RBTRACE_KERNEL_HEADERS")
    if explicit == "btf" or (kernel_types and not explicit):
        return btf_headers()
    if explicit:
        if not (Path(explicit) / "include").is_dir():
            raise EnvironmentProblem(f"RBTRACE_KERNEL_HEADERS={for_message(explicit)} has no "
                                     f"include/ directory",
                                     hint="name a kernel headers tree, or \"btf\" to compile "
                                          "from the kernel's BTF alone")
        return Headers(Path(explicit), f"{explicit} (from RBTRACE_KERNEL_HEADERS)")
    build = modules_root / release / "build"
    if (build / "include").is_dir():
        return Headers(None, f"{build} (the running kernel's own)")
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Headers(None, "/sys/kernel/kheaders.tar.xz (built into the kernel)")
    merged = _merged_debian_headers(src_root)
    if merged:
        return merged
    return btf_headers()


# --- tracefs -------------------------------------------------------------

DEBUGFS = Path("/sys/kernel/debug")
TRACEFS_UNDER_DEBUGFS = DEBUGFS / "tracing"
TRACEFS = Path("/sys/kernel/tracing")


def tracefs_dir() -> Path:
    """The tracefs BCC's C library uses, so rbtrace reads the same one.

    libbcc (0.26) takes /sys/kernel/debug/tracing when access(2) finds it,
    else /sys/kernel/tracing, for tracepoint formats (the clang front end)
    and ids (attaching).  access(2) checks with the real uid and, for a
    uid other than 0, without capabilities: a user with CAP_DAC_READ_SEARCH
    is still refused /sys/kernel/debug (mode 0700), and BCC then looks in
    /sys/kernel/tracing only.  os.access is the same call."""
    if os.access(TRACEFS_UNDER_DEBUGFS, os.F_OK):
        return TRACEFS_UNDER_DEBUGFS
    return TRACEFS


def tracefs_state(root=None) -> tuple:
    """(path, state): state is "ok" (events listable), "unmounted" or
    "denied".  Never raises."""
    root = tracefs_dir() if root is None else root
    try:
        with os.scandir(root / "events"):
            return root, "ok"
    except PermissionError:
        return root, "denied"
    except OSError:
        if os.path.ismount(root) or not os.access(root.parent, os.X_OK):
            return root, "denied"
        return root, "unmounted"


def tracefs_ready() -> bool:
    return tracefs_state()[1] == "ok"


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
    """tracefs readable where BCC looks (tracefs_dir), mounted first when
    rbtrace runs as root: debugfs on /sys/kernel/debug (tracefs appears
    under it), and tracefs on /sys/kernel/tracing, where BCC looks for a
    user other than root."""
    if os.geteuid() == 0:
        _mount_tracefs_as_root()
    root, state = tracefs_state()
    if state == "ok":
        return
    if state == "unmounted":
        raise EnvironmentProblem(f"tracefs is not mounted on {root}",
                                 hint=f"as root: mount -t tracefs none {root} "
                                      f"(or run rbtrace doctor as root once)")
    need = ", ".join(c for c in missing_caps() if c == "CAP_DAC_READ_SEARCH")
    raise EnvironmentProblem(
        f"cannot read tracefs ({root}/events): permission denied"
        + (f" (needs {need})" if need else ""),
        hint=f"grant CAP_DAC_READ_SEARCH (setpriv --inh-caps={SETPRIV_CAPS} "
             f"--ambient-caps={SETPRIV_CAPS} ...), or run as root")


def _mount_tracefs_as_root():
    if tracefs_state(TRACEFS_UNDER_DEBUGFS)[1] != "ok":
        fix = f"mount -t debugfs none {DEBUGFS}"
        if not os.path.ismount(DEBUGFS):
            err = _mount("debugfs", DEBUGFS)
            if err:
                raise EnvironmentProblem(f"cannot mount debugfs on {DEBUGFS}: {os.strerror(err)}",
                                         hint=fix)
        if tracefs_state(TRACEFS_UNDER_DEBUGFS)[1] != "ok":
            err = _mount("tracefs", TRACEFS_UNDER_DEBUGFS)
            if err or tracefs_state(TRACEFS_UNDER_DEBUGFS)[1] != "ok":
                raise EnvironmentProblem(
                    f"cannot mount tracefs on {TRACEFS_UNDER_DEBUGFS}: "
                    f"{os.strerror(err) if err else 'no events'}",
                    hint=f"mount -t tracefs none {TRACEFS_UNDER_DEBUGFS}")
    # Not needed by root itself; it lets users with capabilities trace
    # later (see tracefs_dir).  A failure here is theirs to report.
    if TRACEFS.is_dir() and not os.path.ismount(TRACEFS):
        _mount("tracefs", TRACEFS)


def tracepoint_exists(category, event) -> bool:
    return (tracefs_dir() / "events" / category / event / "id").exists()


def exit_has_group_dead() -> bool:
    """Whether sched_process_exit passes group_dead (Linux 6.16 and later):
    then a process's exit is known even when its leader thread went first."""
    fmt = tracefs_dir() / "events" / "sched" / "sched_process_exit" / "format"
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
    # The process's start time, in every record's header.
    "TASK_GROUP_LEADER_OFF": ("task_struct", "group_leader"),
    "TASK_START_TIME_OFF": ("task_struct", "start_time"),
    # Before 6.16, whether a process's last thread is exiting (common.h).
    "TASK_SIGNAL_OFF": ("task_struct", "signal"),
    "SIGNAL_LIVE_OFF": ("signal_struct", "live"),
}

# What common.h's current_fd_file() reads: task->files->fdt->fd[fd] and
# the file's inode mode.  For probes that look up a caller's fd.
FD_FILE_OFFSETS = {
    "TASK_FILES_OFF": ("task_struct", "files"),
    "FILES_FDT_OFF": ("files_struct", "fdt"),
    "FDTABLE_MAX_FDS_OFF": ("fdtable", "max_fds"),
    "FDTABLE_FD_OFF": ("fdtable", "fd"),
    "FILE_F_INODE_OFF": ("file", "f_inode"),
    "INODE_I_MODE_OFF": ("inode", "i_mode"),
}

# A path's walk up to the root, as d_path does it: a file's path, its
# dentries' parents and names, and the mounts crossed on the way.
PATH_WALK_OFFSETS = {
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
}


def btf_offsets(table: dict) -> dict:
    """{-D name: byte offset} of the kernel struct members a probe reads,
    `table` being {-D name: (struct, member path)}, from the running
    kernel's BTF (the installed headers may be another version's)."""
    from rbtrace.btf import BTFError, kernel_offsets
    if not VMLINUX_BTF.exists():
        raise EnvironmentProblem(
            f"{VMLINUX_BTF} is missing: the kernel was built without BTF (CONFIG_DEBUG_INFO_BTF)",
            hint="rbtrace needs BTF to read kernel structs of the running kernel")
    try:
        return kernel_offsets(table, str(VMLINUX_BTF))
    except (BTFError, OSError) as e:
        raise EnvironmentProblem(f"reading {VMLINUX_BTF}: {e}") from e


def task_offsets() -> dict:
    return btf_offsets(TASK_OFFSETS)


# --- BPF features -----------------------------------------------------------

# Set to 1 to compile probes with their bounded-loop fallback even where
# bpf_loop works (for tests of the fallback, and to compare the two).
NO_BPF_LOOP_ENV = "RBTRACE_NO_BPF_LOOP"


@functools.lru_cache(maxsize=1)
def _bpf_loop_loads() -> bool:
    from rbtrace.loader import bpf_loop_loads
    return bpf_loop_loads()


def bpf_loop_usable() -> bool:
    """Whether probes may run their loops with bpf_loop (HAVE_BPF_LOOP in
    the C: the verifier checks a callback's body once instead of every
    iteration of a bounded loop).  Tried by loading a tiny program (Linux
    5.17 and later), unless RBTRACE_NO_BPF_LOOP=1."""
    if os.environ.get(NO_BPF_LOOP_ENV) == "1":
        return False
    return _bpf_loop_loads()
