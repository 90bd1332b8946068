"""`rbtrace doctor`: every requirement checked for real, one line each.

Nothing is guessed from version numbers: the ring buffer is created, each
hook kind is loaded and attached.  Requirements that fail make the exit
status 1; hook kinds rbtrace does not need (kprobe, fentry) are reported
but don't fail.
"""
import ctypes
import os
import platform

from rbtrace import kernel
from rbtrace.errors import EnvironmentProblem, Exit

BPF_MAP_CREATE = 0
BPF_MAP_TYPE_RINGBUF = 27
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())


class Check:
    def __init__(self, name, ok, detail, fix="", required=True):
        self.name, self.ok, self.detail, self.fix, self.required = name, ok, detail, fix, required

    def line(self):
        status = "ok" if self.ok else ("missing" if self.required else "no")
        text = f"{status:<8} {self.name:<20} {self.detail}"
        if not self.ok and self.fix:
            text += f"  -> {self.fix}"
        return text


def _try_ringbuf(size=4096) -> tuple:
    """Create a BPF ring buffer map of `size` bytes with the raw syscall."""
    if SYS_BPF is None:
        return False, f"unknown bpf syscall number on {platform.machine()}"
    attr = (ctypes.c_uint32 * 32)()
    attr[0] = BPF_MAP_TYPE_RINGBUF   # map_type
    attr[1] = 0                      # key_size
    attr[2] = 0                      # value_size
    attr[3] = size                   # max_entries: data size
    fd = kernel.libc().syscall(SYS_BPF, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return False, f"BPF_MAP_TYPE_RINGBUF create failed: {os.strerror(err)}"
    os.close(fd)
    return True, "BPF_MAP_TYPE_RINGBUF created"


def _guarded(name, required, fn):
    """One check, whatever goes wrong inside it: a line, never a traceback."""
    try:
        return fn()
    except EnvironmentProblem as e:
        return Check(name, False, e.message, e.hint or "", required=required)
    except Exception as e:  # a check that fails unexpectedly is still a line
        return Check(name, False, f"check failed: {type(e).__name__}: {e}", required=required)


def _privileges_check():
    missing = kernel.missing_privileges()
    return Check("privileges", not missing, kernel.describe_privileges(),
                 f"run as root, or grant {', '.join(missing)} "
                 f"(setpriv --inh-caps={kernel.SETPRIV_CAPS} "
                 f"--ambient-caps={kernel.SETPRIV_CAPS} ...)")


def _btf_check():
    offs = kernel.task_offsets()
    return Check("BTF", True, f"{kernel.VMLINUX_BTF} (" +
                 ", ".join(f"{k}={v}" for k, v in offs.items()) + ")")


def _headers_check():
    """Which of the two modes the probes compile in: against a headers
    tree, or from the kernel's BTF alone (rbtrace/btftree.py)."""
    headers = kernel.find_headers()
    if headers.btf:
        return Check("kernel headers", True, headers.how)
    return Check("kernel headers", True, f"headers tree: {headers.how}; "
                                         f"rbtrace run compiles from BTF alone")


def _tracefs_check():
    kernel.ensure_tracefs()
    return Check("tracefs", True, str(kernel.tracefs_dir()))


def _bcc_check():
    from rbtrace.bpf import import_bcc
    bcc = import_bcc()
    return Check("BCC", True, f"{getattr(bcc, '__version__', '?')} ({os.path.dirname(bcc.__file__)})")


def _libbpf_check():
    from rbtrace import loader
    lib = loader.libbpf()
    return Check("libbpf", True, f"{lib._name} (loads probes without BCC)")


def _bpf_loop_check():
    if os.environ.get(kernel.NO_BPF_LOOP_ENV) == "1":
        return Check("bpf_loop", False, f"not used ({kernel.NO_BPF_LOOP_ENV}=1): probes "
                     "run their bounded loops, which take the verifier longer",
                     required=False)
    if kernel.bpf_loop_usable():
        return Check("bpf_loop", True, "loads with a callback: the verifier checks "
                     "probes' loops once, not once per iteration", required=False)
    return Check("bpf_loop", False, "a program calling it did not load (Linux 5.17 "
                 "and later have it): probes run their bounded loops, which take the "
                 "verifier longer", required=False)


def _cache_check():
    from rbtrace import cache
    try:
        d = cache.open_dir(create=False)
    except cache.Unsafe as e:
        return Check("compile cache", False, f"not used: {e}",
                     "fix its owner and mode (0700), or set RBTRACE_CACHE_DIR", required=False)
    if not d.exists():
        return Check("compile cache", True, f"{d}: empty (made at the first run)", required=False)
    rows = cache.entries(d)
    refused = sum(1 for _, doc, _ in rows if doc is None)
    text = f"{d}: {len(rows)} compiled probe{'s' if len(rows) != 1 else ''}"
    if refused:
        text += f", {refused} refused (compiled again when used; rbtrace cache list)"
    return Check("compile cache", True, text, required=False)


def _cgroup_check():
    """Where cgroup v2 is mounted, for container_id and --cgroup/--container."""
    from rbtrace import cgroups
    root = cgroups.v2_mount()
    if root is None:
        return Check("cgroup v2", False, "not mounted: container_id is always null, "
                     "--cgroup and --container can't be used",
                     "mount -t cgroup2 none /sys/fs/cgroup/unified", required=False)
    return Check("cgroup v2", True, f"{root} (container_id, --cgroup, --container)",
                 required=False)


def run_checks(out) -> int:
    """Every check, one line each, in a fixed order (rbtrace-doctor(8),
    CHECKS): a check that can't be made says why instead of stopping."""
    checks = [_guarded("privileges", True, _privileges_check),
              Check("kernel", True, f"{os.uname().release} ({platform.machine()})")]
    privileged = kernel.privileges_ok()
    lacking = ", ".join(c for c in kernel.missing_caps() if c != "CAP_DAC_READ_SEARCH")
    if privileged:
        checks.append(_guarded("ring buffer", True,
                               lambda: Check("ring buffer", *_try_ringbuf(),
                                             "kernel 5.8 or newer is needed")))
    else:
        checks.append(Check("ring buffer", False, f"not tried: needs {lacking or 'CAP_BPF'}",
                            "run as root"))
    checks.append(_guarded("BTF", True, _btf_check))
    checks.append(_guarded("kernel headers", True, _headers_check))
    checks.append(_guarded("tracefs", True, _tracefs_check))
    checks.append(_guarded("BCC", True, _bcc_check))
    checks.append(_guarded("libbpf", True, _libbpf_check))
    if privileged:
        checks.append(_guarded("bpf_loop", False, _bpf_loop_check))
    else:
        checks.append(Check("bpf_loop", False, f"not tried: needs {lacking or 'CAP_BPF'}",
                            "run as root", required=False))
    checks.append(_guarded("compile cache", False, _cache_check))
    checks.append(_guarded("cgroup v2", False, _cgroup_check))
    ready = {c.name: c.ok for c in checks}
    can_load = privileged and ready["BCC"] and ready["tracefs"] and ready["kernel headers"]
    if not privileged:
        why = f"not tried: needs {lacking or 'CAP_BPF, CAP_PERFMON'}"
    else:
        why = "not tried: " + ", ".join(n for n in ("kernel headers", "tracefs", "BCC")
                                        if not ready[n]) + " missing (see above)"
    from rbtrace.bpf import HOOK_PROGRAMS, try_hook
    for kind in HOOK_PROGRAMS:
        required = kind == "tracepoint"
        if not can_load:
            checks.append(Check(f"hook {kind}", False, why, required=required))
            continue
        checks.append(_guarded(f"hook {kind}", required,
                               lambda: Check(f"hook {kind}", *try_hook(kind), required=required)))
    for c in checks:
        out.write(c.line() + "\n")
    out.flush()
    missing = [c for c in checks if c.required and not c.ok]
    return Exit.ERROR if missing else Exit.OK
