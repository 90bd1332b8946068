"""rbtrace tp on the running kernel, against ground truth.

Each workload is a Python process that sets itself up, reports what it is
(pid, descriptors), waits on stdin until rbtrace's probes are attached,
then makes known calls and reports their results; the events must match
what it did, field by field."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import run_cli

O_RDONLY, O_WRONLY, O_CREAT, O_TRUNC = os.O_RDONLY, os.O_WRONLY, os.O_CREAT, os.O_TRUNC
O_CLOEXEC, O_DIRECTORY = os.O_CLOEXEC, os.O_DIRECTORY

PRELUDE = """\
import ctypes, json, os, sys
def report(**kw):
    print(json.dumps(kw), flush=True)
def wait_go():
    sys.stdin.readline()
"""


class Workload:
    def __init__(self, code, *args):
        self.proc = subprocess.Popen([sys.executable, "-c", PRELUDE + code, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._line()

    def _line(self):
        line = self.proc.stdout.readline()
        assert line, f"the workload died: rc={self.proc.wait()}"
        return json.loads(line)

    def go(self):
        """Let it make its calls; returns what it reports, once it exited."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        result = self._line()
        assert self.proc.wait(timeout=60) == 0
        return result


def events_of(result, pid=None):
    events = sorted(result.events, key=lambda e: e["seq"])
    assert all(e["type"] == "tp" for e in events)
    return [e for e in events if pid is None or e["pid"] == pid]


def syscall_nr(name):
    """The syscall's number from the C library's headers (<sys/syscall.h>,
    as gcc sees it for this machine), not from anything rbtrace reads."""
    p = subprocess.run(["gcc", "-E", "-dM", "-include", "sys/syscall.h", "-"], input="",
                       capture_output=True, text=True, check=True)
    (nr,) = re.findall(rf"^#define __NR_{name} (\d+)$", p.stdout, re.M)
    return int(nr)


def accounted(result):
    s = result.summary
    assert result.returncode == 130, result.stderr
    assert s["dropped"] == 0 and s["submitted"] == s["delivered"] == len(result.events), s


OPENAT = """
d = sys.argv[1]
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
report(pid=os.getpid(), dfd=dfd, comm=open("/proc/self/comm").read().strip())
wait_go()
a = os.open("rbtp-created", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640, dir_fd=dfd)
b = os.open(os.path.join(d, "rbtp-created"), os.O_RDONLY)
try:
    os.open("/nonexistent-rbtp/x", os.O_RDONLY)
except FileNotFoundError:
    pass
report(fds=[a, b])
"""


def test_syscall_tracepoints_by_wildcard_decode_the_arguments_passed(rbtrace, tmp_path):
    """sys_enter_openat and sys_exit_openat by one wildcard, -p in the
    kernel: every argument as the workload passed it (AT_FDCWD as -100, the
    path as a pointer), every result as it got it, nothing else."""
    w = Workload(OPENAT, tmp_path)
    pid, dfd = w.info["pid"], w.info["dfd"]
    t = rbtrace("tp", "--json", "-p", str(pid), "syscalls:sys_*_openat")
    a, b = w.go()["fds"]
    r = t.stop()
    accounted(r)
    events = events_of(r)
    assert all((e["pid"], e["tid"], e["ppid"], e["comm"]) == (pid, pid, os.getpid(), w.info["comm"])
               for e in events)
    calls = [(e["event"].split(":")[1], {k: v for k, v in e["args"].items() if k != "filename"})
             for e in events]
    nr = syscall_nr("openat")
    assert calls == [
        ("sys_enter_openat", {"__syscall_nr": nr, "dfd": dfd, "mode": 0o640,
                              "flags": O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC}),
        ("sys_exit_openat", {"__syscall_nr": nr, "ret": a}),
        # glibc passes a mode only with O_CREAT or O_TMPFILE
        ("sys_enter_openat", {"__syscall_nr": nr, "dfd": -100, "flags": O_RDONLY | O_CLOEXEC,
                              "mode": 0}),
        ("sys_exit_openat", {"__syscall_nr": nr, "ret": b}),
        ("sys_enter_openat", {"__syscall_nr": nr, "dfd": -100, "flags": O_RDONLY | O_CLOEXEC,
                              "mode": 0}),
        ("sys_exit_openat", {"__syscall_nr": nr, "ret": -2}),
    ]
    for e in events[0::2]:
        assert re.fullmatch(r"0x[0-9a-f]+", e["args"]["filename"]) and \
            int(e["args"]["filename"], 16) > 0x1000
        assert list(e["args"]) == ["__syscall_nr", "dfd", "filename", "flags", "mode"]


FORK = """
import ctypes
libc = ctypes.CDLL(None)
libc.prctl(15, b"rbtp-forker", 0, 0, 0)          # PR_SET_NAME
link = sys.argv[1]
report(pid=os.getpid(), comm=open("/proc/self/comm").read().strip())
wait_go()
child = os.fork()
if child == 0:
    os.execv(link, [link])
os.waitpid(child, 0)
report(child=child)
"""


def test_fork_comms_are_data_loc_strings_and_a_long_one_is_marked_cut(rbtrace, tmp_path):
    """sched_process_fork's parent_comm and child_comm (__data_loc strings
    on 6.18) against the real pids and names; sched_process_exec's filename
    longer than --string-bytes, cut and marked."""
    link = tmp_path / ("rbtp-" + "x" * 40)
    link.symlink_to("/bin/true")
    w = Workload(FORK, link)
    pid, comm = w.info["pid"], w.info["comm"]
    assert comm == "rbtp-forker"
    t = rbtrace("tp", "--json", "--string-bytes", "16", "sched:sched_process_fork",
                "sched:sched_process_exec")
    child = w.go()["child"]
    r = t.stop()
    accounted(r)
    forks = [e for e in events_of(r, pid) if e["event"] == "sched:sched_process_fork"]
    assert len(forks) == 1
    fork = forks[0]
    assert (fork["pid"], fork["comm"]) == (pid, comm)
    assert fork["args"] == {"parent_pid": pid, "child_pid": child,
                            "parent_comm": comm, "child_comm": comm}
    execs = [e for e in events_of(r, child) if e["event"] == "sched:sched_process_exec"]
    assert len(execs) == 1
    ex = execs[0]
    assert ex["comm"] == link.name[:15]                   # the kernel's comm after exec
    assert ex["args"] == {"pid": child, "old_pid": child, "filename": str(link)[:15],
                          "filename_truncated": True}


SYSCALLS = """
path = os.path.join(sys.argv[1], "rbtp-data")
report(pid=os.getpid())
wait_go()
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
n = os.write(fd, b"rbtrace!")
os.lseek(fd, -3, os.SEEK_END)
os.close(fd)
ppid = os.getppid()
os.kill(os.getpid(), 0)
report(fd=fd, n=n, ppid=ppid)
"""


_STRACE_CALL = re.compile(r"^(?:\d+ +)?(\w+)\((.*)")


def strace_calls(log, have):
    """The syscalls strace logged, named as their sys_enter tracepoints
    (`have`: those this kernel has; fstat is sys_enter_newfstat...)."""
    out = []
    for line in open(log):
        m = _STRACE_CALL.match(line)
        if not m:
            continue                        # signals, exits
        name, rest = m.groups()
        for tp in (f"sys_enter_{name}", f"sys_enter_new{name}"):
            if tp in have:
                out.append((tp, rest))
                break
    return out


def test_every_sys_enter_tracepoint_at_once(rbtrace, tmp_path):
    """syscalls:sys_enter_* (all of them: 360 on 6.18, under the default
    cap) with -p: exactly the calls strace sees the workload make, in its
    order, with the workload's arguments, and only its own."""
    import shutil
    import time
    from rbtrace.kinds import tp
    have = {n.split(":")[1] for n in tp.match("syscalls:sys_enter_*", tp.list_tracepoints())}
    w = Workload(SYSCALLS, tmp_path)
    pid = w.info["pid"]
    log = tmp_path / "strace.log"
    st = subprocess.Popen([shutil.which("strace"), "-f", "-qq", "-o", str(log), "-p", str(pid)],
                          stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while f"TracerPid:\t{st.pid}\n" not in open(f"/proc/{pid}/status").read():
        assert time.monotonic() < deadline and st.poll() is None, "strace did not attach"
        time.sleep(0.01)
    t = rbtrace("tp", "--json", "-p", str(pid), "syscalls:sys_enter_*")
    done = w.go()
    assert st.wait(timeout=60) == 0, st.stderr.read()
    r = t.stop()
    accounted(r)
    events = events_of(r)
    assert events and all(e["pid"] == pid for e in events)
    seen = [(e["event"].split(":")[1], e["args"]) for e in events]
    truth = strace_calls(log, have)
    # Both were attached while the workload waited in read(0) for "go":
    # strace shows that read whole, rbtrace saw it enter only if it was
    # restarted after rbtrace attached.
    assert truth[0][0] == "sys_enter_read" and truth[0][1].startswith("0, ")
    if seen[0][0] == "sys_enter_read" and seen[0][1]["fd"] == 0:
        seen = seen[1:]
    assert [name for name, _ in seen] == [name for name, _ in truth[1:]]
    fd = done["fd"]
    wanted = [
        ("sys_enter_openat", {"dfd": -100, "flags": O_WRONLY | O_CREAT | O_CLOEXEC, "mode": 0o600}),
        ("sys_enter_write", {"fd": fd, "count": 8}),
        ("sys_enter_lseek", {"fd": fd, "offset": -3, "whence": os.SEEK_END}),
        ("sys_enter_close", {"fd": fd}),
        ("sys_enter_getppid", {}),
        ("sys_enter_getpid", {}),                      # os.kill(os.getpid(), 0)
        ("sys_enter_kill", {"pid": pid, "sig": 0}),
    ]
    # The workload's own calls come one after the other (nothing of
    # Python's between them), with its arguments.
    at = [name for name, _ in seen].index("sys_enter_openat")
    got = [(name, {k: args.get(k) for k in want}) for (name, args), (_, want)
           in zip(seen[at:at + len(wanted)], wanted)]
    assert got == wanted, seen[at:at + len(wanted)]
    assert seen[-1][0] == "sys_enter_exit_group"


WAIT = """
report(pid=os.getpid())
wait_go()
child = os.fork()
if child == 0:
    os._exit(3)
_, status = os.waitpid(child, 0)
report(child=child, status=status)
"""


def test_a_wildcard_of_sched_tracepoints_with_a_pid_filter(rbtrace):
    w = Workload(WAIT)
    pid = w.info["pid"]
    t = rbtrace("tp", "--json", "-p", str(pid), "sched:sched_process_*")
    child = w.go()["child"]
    r = t.stop()
    accounted(r)
    events = events_of(r)
    assert all(e["pid"] == pid for e in events)
    names = [e["event"] for e in events]
    # the parent forks, waits, exits; the child's exit and exec are its own
    assert names.count("sched:sched_process_fork") == 1
    assert "sched:sched_process_wait" in names and "sched:sched_process_exec" not in names
    fork = events[names.index("sched:sched_process_fork")]
    assert (fork["args"]["parent_pid"], fork["args"]["child_pid"]) == (pid, child)
    exits = [e for e in events if e["event"] == "sched:sched_process_exit"]
    assert [e["args"]["pid"] for e in exits] == [pid]


def test_plain_lines_show_the_fields_as_name_value_pairs(kernel_ok, tmp_path):
    w = Workload(OPENAT, tmp_path)
    pid = w.info["pid"]
    p = subprocess.Popen([sys.executable, "-m", "rbtrace", "tp", "-p", str(pid), "-c", "2",
                          "syscalls:sys_enter_openat", "syscalls:sys_exit_openat"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    header = p.stdout.readline()          # written once attached
    assert header.split() == ["TIME", "PID", "COMM", "EVENT", "ARGS"]
    a, _ = w.go()["fds"]
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    enter, leave = out.splitlines()
    assert re.search(rf"^\S+ +{pid} +\S+ +syscalls:sys_enter_openat +dfd={w.info['dfd']} "
                     rf"filename=0x[0-9a-f]+ flags={O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC} "
                     rf"mode=416$", enter), enter
    assert leave.endswith(f"syscalls:sys_exit_openat     ret={a}"), leave


# --- what loads, and what is refused ------------------------------------------------

def test_every_format_on_this_kernel_generates_and_one_per_category_verifies(kernel_ok):
    """All formats parse and generate; for each category, the tracepoint
    with the most fields is compiled and its program loaded (verified, not
    attached: attaching adds nothing but seconds)."""
    from rbtrace.bpf import LoadedProbe
    from rbtrace.kinds import tp
    names = tp.list_tracepoints()
    formats = [tp.read_format(n) for n in names]
    tp.generate(formats)                               # every one of them: no exception
    best = {}
    for f in formats:
        if len(f.fields) > len(best.get(f.category, tp.TpFormat("", "", 0, [])).fields):
            best[f.category] = f
    kinds = {fl.kind for f in formats for fl in f.fields}
    chosen = list(best.values())
    for kind in kinds:                                 # and one of each kind of field
        if not any(fl.kind == kind for f in chosen for fl in f.fields):
            chosen.append(next(f for f in formats if any(fl.kind == kind for fl in f.fields)))
    probe = tp.TpCodec({"tracepoints": [f.name for f in chosen], "max_tracepoints": 2000})
    loaded = LoadedProbe(probe.source_path(), probe.cflags(), probe.event_structs,
                         tracepoints=probe.tracepoints, ring_bytes=4096, use_cache=False,
                         attach=False)
    try:
        assert loaded.program_count() == len(probe.tracepoints) == len(chosen)
        sizes = [et.size for et in loaded.event_types]
        assert len(set(sizes)) == len(sizes) == len(chosen)
    finally:
        loaded.close()
    assert {"int", "pointer", "chars", "array", "string", "dynarray"} <= kinds
    assert len(chosen) >= 20


@pytest.mark.parametrize("args, message", [
    (["sched:sched_process_frk"], "rbtrace: no tracepoint sched:sched_process_frk on this "
                                  "kernel; did you mean sched:sched_process_fork"),
    (["sched:zzz_*"], "rbtrace: no tracepoint matches 'sched:zzz_*'"),
    (["syscalls:*"], "tracepoints match, more than the 400 allowed at once (raise it with "
                     "--max-tracepoints, up to 2000)"),
    (["--max-tracepoints", "5", "sched:*"], "more than the 5 allowed"),
    (["ftrace:function"], "take no BPF program"),
    (["-x", "sched:sched_switch"], "rbtrace: --failed: a tracepoint has no result"),
    (["--list", "no-such-thing-here"], "rbtrace: no tracepoint matches 'no-such-thing-here'"),
])
def test_usage_errors_are_one_line_exit_2_and_load_nothing(kernel_ok, args, message):
    p = run_cli("tp", "--json", *args)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert p.stdout == b""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_the_cap_names_the_count(kernel_ok):
    from rbtrace.kinds import tp
    n = len(tp.match("syscalls:*", tp.list_tracepoints()))
    p = run_cli("tp", "syscalls:*")
    assert p.returncode == 2 and p.stdout == b"", p.stderr
    assert p.stderr.decode().startswith(
        f"rbtrace: {n} tracepoints match, more than the 400 allowed at once")
    assert p.stderr.decode().count("\n") == 1
    assert n > 400 >= len(tp.match("syscalls:sys_enter_*", tp.list_tracepoints()))


def test_list(kernel_ok):
    p = run_cli("tp", "--list")
    assert p.returncode == 0, p.stderr
    names = p.stdout.decode().splitlines()
    assert names == sorted(set(names)) and len(names) > 500
    assert "sched:sched_process_fork" in names and "syscalls:sys_enter_openat" in names
    assert all(re.fullmatch(r"[^:\s]+:[^:\s]+", n) for n in names)
    assert not any(n.startswith("ftrace:") for n in names)
    p = run_cli("tp", "--list", "sched:sched_process_*", "fork")
    listed = p.stdout.decode().splitlines()
    assert listed[:6] == ["sched:sched_process_exec", "sched:sched_process_exit",
                          "sched:sched_process_fork", "sched:sched_process_free",
                          "sched:sched_process_hang", "sched:sched_process_wait"]
    assert "syscalls:sys_enter_fork" in listed and listed.count("sched:sched_process_fork") == 1
