"""Cgroups v2: where they are mounted, which container a cgroup is, and the
directory --cgroup and --container name.

Every event carries `cgroup_id`, the kernel's bpf_get_current_cgroup_id():
the cgroup v2 id, which is the inode number of the cgroup's directory in
the cgroup v2 mount.  User space makes `container_id` and `pod_uid` of it:
the id becomes a path (open_by_handle_at, which cgroupfs answers for an id
since Linux 5.x; else a walk of the mount, at most once a second), the path
a container by the names container runtimes give their cgroups
(parse_path).  Both are cached by id, for the whole run: a cgroup's id is
never reused while the kernel runs, so neither goes stale.

The mount is found in /proc/self/mountinfo, never assumed: /sys/fs/cgroup
on a unified host, /sys/fs/cgroup/unified on a hybrid one (this project's
machines), anywhere in a container.
"""
import ctypes
import errno
import os
import re
import struct
import time

# --- the mount ------------------------------------------------------------------


def v2_mount(mountinfo="/proc/self/mountinfo"):
    """The cgroup v2 mount point, or None when there is none.  Of several
    (a bind mount of a subtree, say), the one of the whole hierarchy."""
    found = []
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        parts, rest = left.split(), right.split()
        if len(parts) < 5 or not rest or rest[0] != "cgroup2":
            continue
        found.append((parts[3] != "/", _unescape(parts[4])))
    return min(found)[1] if found else None


def _unescape(field):
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# --- container ids from a cgroup's path ------------------------------------------

_HEX64 = r"[0-9a-f]{64}"
# One path component naming a container, the id in group 1: systemd scope
# units of each runtime (docker, containerd's CRI, CRI-O, podman), and the
# cgroupfs driver's directories: /docker/<id>, /kubepods/.../pod<uid>/<id>,
# podman's /libpod_parent/libpod-<id>.  CRI-O's and podman's conmon
# (crio-conmon-<id>.scope, libpod-conmon-<id>.scope) are the monitor, not
# the container, and match nothing.
_CONTAINER = re.compile(
    r"^(?:(?:docker|cri-containerd|crio|libpod)-(" + _HEX64 + r")\.scope"
    r"|libpod-(" + _HEX64 + r")"
    r"|(" + _HEX64 + r"))$")
# A Kubernetes pod: pod<uid> (cgroupfs driver) or kubepods[-<qos>]-pod<uid
# with "_" for "-">.slice (systemd driver).
_POD = re.compile(r"^(?:kubepods(?:-[a-z]+)?-pod([0-9a-f_]{36})\.slice|pod([0-9a-f-]{36}))$")


def parse_path(path):
    """(container_id, pod_uid) of a cgroup v2 path (relative to the mount
    or not), each None when it names none: the container from the last
    component that names one (a container's own sub-cgroups, such as
    docker-<id>.scope/init.scope, are still that container), the pod from
    the last that names a Kubernetes pod, its uid with dashes."""
    container = pod = None
    for part in path.split("/"):
        m = _CONTAINER.match(part)
        if m:
            container = m.group(1) or m.group(2) or m.group(3)
            continue
        m = _POD.match(part)
        if m:
            pod = (m.group(1) or m.group(2)).replace("_", "-")
    return container, pod


# --- ids to paths ------------------------------------------------------------------

GONE = object()             # path(): the cgroup was removed
FILEID_KERNFS = 0xfe        # include/linux/exportfs.h: a kernfs node by its 64-bit id
WALK_INTERVAL = 1.0         # seconds between two walks of the mount on misses


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_char * 8)]


def walk(root):
    """{inode: path relative to root ("" for root)} of every cgroup under root."""
    out = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel) if rel else root)
        except OSError:
            continue
        with it:
            if not rel:
                try:
                    out[os.stat(root).st_ino] = ""
                except OSError:
                    pass
            for entry in it:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    out[entry.inode()] = child
                    stack.append(child)
                except OSError:
                    continue
    return out


class Resolver:
    """cgroup_id -> (container_id, pod_uid), cached.  `root`: the cgroup
    v2 mount (None: found from mountinfo; no mount: every answer is
    (None, None))."""

    def __init__(self, root=None, clock=time.monotonic, by_handle=True):
        self.root = root if root is not None else v2_mount()
        self.clock = clock
        self._cache = {}
        self._walked = {}
        self._last_walk = None
        self._mount_fd = None
        self._by_handle = by_handle and self.root is not None
        self.walks = 0

    def __call__(self, cgroup_id):
        try:
            return self._cache[cgroup_id]
        except KeyError:
            pass
        path = self.path(cgroup_id)
        if path is GONE:
            # Removed already: it never comes back (ids are not reused).
            self._cache[cgroup_id] = (None, None)
            return (None, None)
        if path is None:
            # Not cached: known on a later look, after the next walk.
            return (None, None)
        found = self._cache[cgroup_id] = parse_path(path)
        return found

    def path(self, cgroup_id):
        """The cgroup's path relative to the mount; GONE when the kernel
        says the cgroup no longer exists; None when not found (no file
        handles here, and not in the last walk)."""
        if self.root is None or not cgroup_id:
            return None
        if self._by_handle:
            path = self._by_handle_path(cgroup_id)
            if path is not None:
                return path
        path = self._walked.get(cgroup_id)
        if path is not None:
            return path
        now = self.clock()
        if self._last_walk is None or now - self._last_walk >= WALK_INTERVAL:
            self._last_walk = now
            self.walks += 1
            self._walked = walk(self.root)
            return self._walked.get(cgroup_id)
        return None

    def _by_handle_path(self, cgroup_id):
        try:
            if self._mount_fd is None:
                self._mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            libc = _libc()
            h = _FileHandle(8, FILEID_KERNFS, struct.pack("<Q", cgroup_id))
            fd = libc.open_by_handle_at(self._mount_fd, ctypes.byref(h),
                                        os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if fd < 0:
                err = ctypes.get_errno()
                if err in (errno.ESTALE, errno.ENOENT):
                    return GONE
                # EPERM (no CAP_DAC_READ_SEARCH), ENOSYS, EOPNOTSUPP...:
                # never will; walk instead.
                self._by_handle = False
                return None
            try:
                full = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            self._by_handle = False
            return None
        root = self.root.rstrip("/")
        if full == root:
            return ""
        if full.startswith(root + "/"):
            return full[len(root) + 1:]
        # Outside our view of the mount (another namespace's root): the
        # names still tell the container.
        return full

    def close(self):
        if self._mount_fd is not None:
            os.close(self._mount_fd)
            self._mount_fd = None


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.open_by_handle_at.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
        lib.open_by_handle_at.restype = ctypes.c_int
        _LIBC = lib
    return _LIBC


_SHARED = None


def resolver():
    """The process's Resolver, made on first use."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Resolver()
    return _SHARED


# --- --cgroup and --container ---------------------------------------------------------


class NotFound(ValueError):
    pass


def check_dir(path, root=None):
    """--cgroup PATH: its real path, when it is a directory in the cgroup v2
    mount; else NotFound with the reason.  A path relative to the mount
    ("system.slice/docker-...scope") is taken there when it is not a
    directory from the working directory."""
    root = root if root is not None else v2_mount()
    if root is None:
        raise NotFound("no cgroup v2 file system is mounted (see /proc/self/mountinfo)")
    candidates = [path]
    if not os.path.isabs(path):
        candidates.append(os.path.join(root, path))
    for c in candidates:
        if os.path.isdir(c):
            real = os.path.realpath(c)
            rroot = os.path.realpath(root)
            if real != rroot and not real.startswith(rroot.rstrip("/") + "/"):
                raise NotFound(f"{path} is not in the cgroup v2 mount {root}")
            if not os.path.exists(os.path.join(real, "cgroup.procs")):
                raise NotFound(f"{path} is not a cgroup (no cgroup.procs)")
            return real
    raise NotFound(f"{path} is not a directory (give a cgroup v2 directory, under {root})")


def find_container(prefix, root=None):
    """--container ID: the cgroup directory of the one container whose id
    starts with `prefix` (the outermost directory naming it; its
    sub-cgroups come with it).  NotFound when none or several match."""
    if not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
        raise NotFound(f"{prefix!r} is not a container id: 1 to 64 hexadecimal digits "
                       "(lower case)")
    root = root if root is not None else v2_mount()
    if root is None:
        raise NotFound("no cgroup v2 file system is mounted (see /proc/self/mountinfo)")
    found = {}
    for path in sorted(walk(root).values(), key=lambda p: (p.count("/"), p)):
        container, _ = parse_path(path)
        if container is None or not container.startswith(prefix):
            continue
        if container not in found:
            found[container] = path
    if not found:
        raise NotFound(f"no container's id starts with {prefix} (no cgroup under {root} "
                       "names one)")
    if len(found) > 1:
        ids = sorted(found)
        shown = ", ".join(i[:12] for i in ids[:4]) + (", ..." if len(ids) > 4 else "")
        raise NotFound(f"{len(ids)} containers' ids start with {prefix} ({shown}): give more "
                       "digits")
    (path,) = found.values()
    return os.path.join(root, path)
