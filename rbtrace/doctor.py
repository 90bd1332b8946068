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


def _try_ringbuf() -> tuple:
    """Create a 4 KiB BPF ring buffer map with the raw syscall."""
    if SYS_BPF is None:
        return False, f"unknown bpf syscall number on {platform.machine()}"
    attr = (ctypes.c_uint32 * 32)()
    attr[0] = BPF_MAP_TYPE_RINGBUF   # map_type
    attr[1] = 0                      # key_size
    attr[2] = 0                      # value_size
    attr[3] = 4096                   # max_entries: data size
    fd = kernel.libc().syscall(SYS_BPF, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return False, f"BPF_MAP_TYPE_RINGBUF create failed: {os.strerror(err)}"
    os.close(fd)
    return True, "BPF_MAP_TYPE_RINGBUF created"


_HOOK_PROGRAMS = {
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
    if kind in os.environ.get(FORCE_UNLOADABLE, "").split(","):
        return False, FORCED_REASON
    from rbtrace.bpf import captured_fds, prepare
    bcc, _ = prepare()
    text, prog_type, attach = _HOOK_PROGRAMS[kind]
    with captured_fds() as output:
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
    elif kind == "fentry":
        lockdown = _read("/sys/kernel/security/lockdown")
        if lockdown:
            reason += f" (lockdown: {lockdown})"
    return False, reason


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def run_checks(out) -> int:
    checks = []
    root = os.geteuid() == 0
    privileged = kernel.privileges_ok()
    checks.append(Check("privileges", privileged,
                        "root" if root else ("CAP_BPF+CAP_PERFMON" if privileged
                                             else f"uid {os.geteuid()} without CAP_BPF+CAP_PERFMON"),
                        "run as root (sudo)"))
    checks.append(Check("kernel", True, f"{os.uname().release} ({platform.machine()})"))
    if privileged:
        ok, detail = _try_ringbuf()
        checks.append(Check("ring buffer", ok, detail, "kernel 5.8 or newer is needed"))
    else:
        checks.append(Check("ring buffer", False, "not tried without privileges", "run as root"))
    btf_ok, btf_detail = False, ""
    try:
        offs = kernel.task_offsets()
        btf_ok = True
        btf_detail = f"{kernel.VMLINUX_BTF} (" + ", ".join(f"{k}={v}" for k, v in offs.items()) + ")"
    except EnvironmentProblem as e:
        btf_detail = e.message
    checks.append(Check("BTF", btf_ok, btf_detail, "a kernel built with CONFIG_DEBUG_INFO_BTF"))
    try:
        h = kernel.find_headers()
        checks.append(Check("kernel headers", True, h.how))
    except EnvironmentProblem as e:
        checks.append(Check("kernel headers", False, e.message, e.hint or ""))
    try:
        kernel.ensure_tracefs()
        checks.append(Check("tracefs", True, f"{kernel.TRACEFS_UNDER_DEBUGFS}"))
    except EnvironmentProblem as e:
        checks.append(Check("tracefs", False, e.message, e.hint or ""))
    bcc_ok = False
    try:
        from rbtrace.bpf import import_bcc
        bcc = import_bcc()
        bcc_ok = True
        checks.append(Check("BCC", True, f"{getattr(bcc, '__version__', '?')} ({os.path.dirname(bcc.__file__)})"))
    except EnvironmentProblem as e:
        checks.append(Check("BCC", False, e.message, e.hint or ""))
    can_load = privileged and bcc_ok and checks[-2].ok and any(c.name == "kernel headers" and c.ok for c in checks)
    for kind in _HOOK_PROGRAMS:
        required = kind == "tracepoint"
        if not can_load:
            checks.append(Check(f"hook {kind}", False, "not tried (see above)", required=required))
            continue
        ok, detail = try_hook(kind)
        checks.append(Check(f"hook {kind}", ok, detail, required=required))
    for c in checks:
        out.write(c.line() + "\n")
    out.flush()
    missing = [c for c in checks if c.required and not c.ok]
    return Exit.ERROR if missing else Exit.OK
