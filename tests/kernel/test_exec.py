"""rbtrace exec against ground truth on the real kernel.

Each workload runs under strace (-f -xx -v: every string exact, as hex)
while rbtrace traces; rbtrace's events of the workload's processes (the
thread ids strace reports) must be exactly strace's exec calls, as a
multiset of (syscall, filename, argv, result), with nothing dropped.
Further tests check limits, truncation, escaping, filters and fields
against values the test itself knows.
"""
import base64
import collections
import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, parse_json_lines, strace_args

STRACE = shutil.which("strace")
F_SETPIPE_SZ = 1031

# Workloads for exec calls of every kind; each mode makes exactly the exec
# calls named, so strace and rbtrace can be compared call for call.
EXECTOOL_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static char **targv;

static void *thread_exec(void *unused)
{
    printf("%ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    execv(targv[0], targv);
    _exit(127);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    const char *mode = argv[1];
    if (!strcmp(mode, "fexecve")) {              /* fexecve PATH ARGV... */
        int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
        fexecve(fd, argv + 3, environ);
        return 127;
    }
    if (!strcmp(mode, "fexecve-unlinked")) {     /* the same, file unlinked first */
        int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
        unlink(argv[2]);
        fexecve(fd, argv + 3, environ);
        return 127;
    }
    if (!strcmp(mode, "execveat")) {             /* execveat DIR NAME ARGV... */
        int dir = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        syscall(SYS_execveat, dir, argv[3], argv + 4, environ, 0);
        return 127;
    }
    if (!strcmp(mode, "fail")) {                 /* fail PATH...: each must fail */
        for (int i = 2; i < argc; i++) {
            char *args[] = {argv[i], "failing", "exec", NULL};
            execve(argv[i], args, environ);
            printf("%s %s\n", argv[i], strerrorname_np(errno));
        }
        fflush(stdout);
        return 0;
    }
    if (!strcmp(mode, "thread")) {               /* thread PATH ARGV... */
        targv = argv + 2;
        pthread_t t;
        pthread_create(&t, NULL, thread_exec, NULL);
        pause();
        return 1;
    }
    if (!strcmp(mode, "burst")) {                /* burst N PATH */
        int n = atoi(argv[2]);
        for (int i = 0; i < n; i++) {
            char num[16];
            snprintf(num, sizeof(num), "%d", i);
            pid_t pid = fork();
            if (pid == 0) {
                char *args[] = {argv[3], "burst", num, NULL};
                execve(argv[3], args, environ);
                _exit(127);
            }
            waitpid(pid, NULL, 0);
        }
        return 0;
    }
    if (!strcmp(mode, "literal")) {              /* literal PATH: argv in .rodata */
        execl(argv[2], "literal-argv0", "from", "read-only data", (char *)NULL);
        return 127;
    }
    return 2;
}
"""

# A small environment keeps strace's output (it prints envp too) short.
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}


@pytest.fixture(scope="module")
def exectool(tmp_path_factory):
    d = tmp_path_factory.mktemp("exectool")
    (d / "exectool.c").write_text(EXECTOOL_C)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(d / "exectool"), str(d / "exectool.c")],
                   check=True)
    return str(d / "exectool")


# --- strace's view ----------------------------------------------------------

Call = collections.namedtuple("Call", "pid syscall dirfd filename argv result")

_CALL = re.compile(r"^(\d+) +(execve|execveat)\((.*)$")
_RESUMED = re.compile(r"^(\d+) +<\.\.\. (execve|execveat) resumed>.*\) += (-?\d+|\?)(?: (E\w+))?")
_RESULT = re.compile(r"\) += (-?\d+)(?: (E\w+))?(?: \(.*\))?$")


def _call(pid, syscall, args, result):
    if syscall == "execve":
        filename, argv, dirfd = args[0], args[1], None
    else:
        dirfd, filename, argv = args[0], args[1], args[2]
        dirfd = -100 if dirfd == "AT_FDCWD" else int(dirfd)
    return Call(pid, syscall, dirfd, filename, tuple(argv) if argv is not None else None, result)


def parse_strace(path):
    """Every execve/execveat strace -f -xx logged, with its result
    (0 or the errno name), joining <unfinished ...> calls to their result."""
    calls, pending = [], {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            m = _CALL.match(line)
            if m:
                pid, syscall, rest = int(m.group(1)), m.group(2), m.group(3)
                unfinished = re.search(r" <(unfinished|pid changed to (\d+)) \.\.\.>$", rest)
                if unfinished:
                    args = strace_args(rest[:unfinished.start()])
                    # A non-leader thread's exec ends on the leader's pid.
                    resumes_on = int(unfinished.group(2) or pid)
                    pending[resumes_on] = (pid, syscall, args)
                    continue
                r = _RESULT.search(rest)
                assert r, line
                args = strace_args(rest[:r.start()])
                calls.append(_call(pid, syscall, args, 0 if r.group(1) == "0" else r.group(2)))
                continue
            m = _RESUMED.match(line)
            if m:
                caller, syscall, args = pending.pop(int(m.group(1)))
                ret = m.group(3)
                calls.append(_call(caller, syscall, args, 0 if ret == "0" else m.group(4)))
    assert not pending, pending
    return calls


def strace_cmd(out, *cmd):
    return [STRACE, "-f", "-qq", "-xx", "-s", "65536", "-v",
            "-e", "trace=execve,execveat", "-o", str(out), *cmd]


# --- rbtrace's view ---------------------------------------------------------

class Reading:
    """A started rbtrace whose stdout is read as it comes, and which is
    stopped only once its output has settled.  Python's BufferedWriter
    returns a partial count when a signal interrupts a blocked write, and
    rbtrace's renderer does not retry: a SIGINT that lands while a large
    batch waits for room in the pipe cuts a JSON line short.  A big pipe,
    a reader that keeps it empty and a quiet moment before SIGINT keep the
    tests off that (reported) bug."""

    def __init__(self, tracer):
        self.t = tracer
        self.chunks = [tracer._out]
        self.last = time.monotonic()
        fcntl.fcntl(tracer.proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        fd = self.t.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return
            self.chunks.append(chunk)
            self.last = time.monotonic()

    def stop(self, sig=signal.SIGINT, timeout=60, after=None):
        """Stop once `after` (bytes) has been output, or else once the
        output has been quiet for a moment."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if after is not None:
                if after in b"".join(self.chunks):
                    break
            elif time.monotonic() - self.last > 0.3 or time.monotonic() > deadline - 8:
                break
            time.sleep(0.05)
        self.t.proc.send_signal(sig)
        self.t.proc.wait(timeout)
        self.reader.join(timeout)
        r = parse_json_lines(b"".join(self.chunks).decode())
        r.stderr = self.t.proc.stderr.read().decode(errors="replace")
        r.returncode = self.t.proc.returncode
        return r


def trace(rbtrace, *args):
    return Reading(rbtrace("exec", "--json", *args))


def sentinel():
    """Run an exec the unfiltered tracers will report after everything the
    workload did; its mark tells when their output is complete."""
    mark = f"sentinel-{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(["/bin/true", mark], check=True)
    return mark.encode()


def text_bytes(e, name):
    b64 = e.get(name + "_b64")
    return base64.b64decode(b64) if b64 is not None else e[name].encode()


def argv_bytes(e):
    b64 = e.get("argv_b64")
    if b64 is not None:
        return tuple(base64.b64decode(x) for x in b64)
    return tuple(x.encode() for x in e["argv"])


def key_of_event(e):
    return (e["syscall"], text_bytes(e, "filename"), argv_bytes(e), e["errno"] or 0)


def key_of_call(c):
    return (c.syscall, c.filename, c.argv, c.result)


def compare_with_strace(rbtrace, tmp_path, cmd, options=(), timeout=120):
    """Run cmd under strace while rbtrace traces; assert both saw the same
    exec calls.  Returns (calls, events of the workload, rbtrace result)."""
    if STRACE is None:
        pytest.fail("strace is not installed (make setup-test installs it)")
    log = tmp_path / "strace.log"
    t = trace(rbtrace, *options)
    t0 = time.monotonic()
    p = subprocess.run(strace_cmd(log, *cmd), env=ENV, capture_output=True,
                       timeout=timeout)
    took = time.monotonic() - t0
    r = t.stop(after=sentinel())
    assert r.returncode == 130, r.stderr
    calls = parse_strace(log)
    tids = {c.pid for c in calls}
    events = [e for e in r.events if e["type"] == "exec" and e["tid"] in tids]
    want = collections.Counter(key_of_call(c) for c in calls)
    got = collections.Counter(key_of_event(e) for e in events)
    assert got == want, (f"missing: {list((want - got).elements())[:5]} "
                         f"extra: {list((got - want).elements())[:5]}")
    s = r.summary
    assert s["dropped"] == 0, s
    assert s["seen"] == s["submitted"] == s["delivered"], s
    for e in events:
        assert e["argc"] == len(e["argv"]) and not e["args_truncated"], e
    r.workload = p
    r.took = took
    return calls, events, r


# --- the workloads ----------------------------------------------------------

def test_shell_pipelines_match_strace(rbtrace, tmp_path):
    """Pipelines, subshells, command substitution, a failing command, and
    arguments with newlines, tabs, escapes, invalid UTF-8 and empty ones."""
    script = r"""
/bin/echo one two | /usr/bin/tr a-z A-Z | /usr/bin/sort -r | /usr/bin/cat > /dev/null
x=$(/usr/bin/printf 'line1\nline2\ttab\033[31mred\377\376')
/bin/echo "$x" "" " spaced  out " 'quote"d' "back\\slash" > /dev/null
( /usr/bin/env -i /usr/bin/true "$x" ) && /bin/true
/nonexistent/command arg 2> /dev/null || /usr/bin/seq 3 | /usr/bin/wc -l > /dev/null
for i in 1 2 3; do /usr/bin/expr $i + 1 > /dev/null; done
"""
    calls, events, r = compare_with_strace(rbtrace, tmp_path, ["/bin/sh", "-c", script])
    assert len(calls) >= 14
    odd = [e for e in events if e["filename"] == "/usr/bin/true"]
    assert argv_bytes(odd[0])[1] == b"line1\nline2\ttab\x1b[31mred\xff\xfe"
    assert odd[0]["argv_b64"] and "\ufffd" in odd[0]["argv"][1]
    assert [e["errno"] for e in events if e["filename"] == "/nonexistent/command"] == ["ENOENT"]


def test_make_j2_build_matches_strace(rbtrace, tmp_path):
    src = tmp_path / "proj"
    src.mkdir()
    for i in range(16):
        (src / f"f{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    (src / "main.c").write_text("int main(void) { return 0; }\n")
    (src / "Makefile").write_text(
        "OBJS := $(patsubst %.c,%.o,$(wildcard *.c))\n"
        "prog: $(OBJS)\n\tgcc -o $@ $^\n"
        "%.o: %.c\n\tgcc -O0 -c -o $@ $<\n")
    calls, events, r = compare_with_strace(rbtrace, tmp_path, ["make", "-j2", "-C", str(src)])
    assert r.workload.returncode == 0, r.workload.stderr
    names = collections.Counter(os.path.basename(c.filename).decode() for c in calls
                                if c.result == 0)
    assert names["gcc"] == 18 and names["cc1"] == 17 and names["ld"] == 1


def test_fexecve_and_execveat_match_strace_and_name_the_executable(rbtrace, tmp_path, exectool):
    calls, events, r = compare_with_strace(rbtrace, tmp_path, [
        "/bin/sh", "-c",
        f"{exectool} fexecve /bin/echo echo fexecve-ran > /dev/null;"
        f"{exectool} execveat /usr/bin true execveat-ran"])
    at = [e for e in events if e["syscall"] == "execveat"]
    assert len(at) == 2
    by_arg = {e["argv"][-1]: e for e in at}
    fex = by_arg["fexecve-ran"]
    assert fex["filename"] == "" and fex["at_flags"] == 0x1000       # AT_EMPTY_PATH
    assert fex["exe"] == os.path.realpath("/bin/echo") and fex["comm"] == "echo"
    assert fex["dirfd"] == [c.dirfd for c in calls if c.syscall == "execveat" and c.filename == b""][0]
    rel = by_arg["execveat-ran"]
    assert rel["filename"] == "true" and rel["at_flags"] == 0
    assert rel["exe"] == os.path.realpath("/usr/bin/true") and rel["comm"] == "true"
    for e in events:
        if e["syscall"] == "execve":
            assert "exe" not in e


def test_exe_is_what_proc_pid_exe_says_across_mounts_and_after_unlink(rbtrace, exectool):
    """exe is found in the kernel (mm->exe_file, walked like d_path), so it
    is there even for a program that has exited; compare it with
    readlink(/proc/PID/exe) while the programs run."""
    shm = f"/dev/shm/rbtrace-test-{os.getpid()}"           # tmpfs: another mount
    copies = [shm + "-a", shm + "-b"]
    for c in copies:
        shutil.copy("/bin/sleep", c)
    t = trace(rbtrace)
    procs = [subprocess.Popen([exectool, "fexecve", copies[0], "sleep", "30"]),
             subprocess.Popen([exectool, "fexecve-unlinked", copies[1], "sleep", "30"])]
    try:
        time.sleep(0.5)
        truth = [os.readlink(f"/proc/{p.pid}/exe") for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for c in copies:
            if os.path.exists(c):
                os.unlink(c)
    r = t.stop()
    assert truth == [copies[0], copies[1] + " (deleted)"]
    for p, path, copy in zip(procs, truth, copies):
        (e,) = [e for e in r.events if e["pid"] == p.pid and e["syscall"] == "execveat"]
        assert e["exe"] == path and e["filename"] == "" and e["argv"] == ["sleep", "30"]
        # comm after fexecve is the file's name (6.14+), not "3" from /dev/fd/3
        assert e["comm"] == os.path.basename(copy)[:15]


def test_failed_execs_match_strace_with_errno_names(rbtrace, tmp_path, exectool):
    no_x = tmp_path / "not-executable"
    no_x.write_text("#!/bin/sh\n")
    no_x.chmod(0o644)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELG this is no program\n")
    garbage.chmod(0o755)
    paths = ["/nonexistent/x", str(no_x), str(garbage), str(tmp_path)]
    calls, events, r = compare_with_strace(rbtrace, tmp_path, [exectool, "fail", *paths])
    said = dict(line.split() for line in r.workload.stdout.decode().splitlines())
    assert said == {paths[0]: "ENOENT", paths[1]: "EACCES", paths[2]: "ENOEXEC", paths[3]: "EACCES"}
    failed = {e["filename"]: e for e in events if e["ret"] < 0}
    for path, name in said.items():
        e = failed[path]
        assert e["errno"] == name and e["ret"] == -getattr(errno, name)
        assert e["argv"] == [path, "failing", "exec"] and e["comm"] == "exectool"


def test_thread_exec_matches_strace_and_proc(rbtrace, tmp_path, exectool):
    """A non-leader thread execs: the process keeps its pid, the event's tid
    is the thread that called execve (strace reports the call there too)."""
    calls, events, r = compare_with_strace(
        rbtrace, tmp_path, [exectool, "thread", "/bin/true", "true", "from-a-thread"])
    thread_tid = int(r.workload.stdout.split()[0])
    leader = [c.pid for c in calls if c.filename.endswith(b"exectool")][0]
    (e,) = [e for e in events if e["argv"] == ["/bin/true", "true", "from-a-thread"]]
    assert e["tid"] == thread_tid != leader
    assert e["pid"] == leader and e["comm"] == "true" and e["ret"] == 0
    (start,) = [e for e in events if e["filename"].endswith("exectool")]
    assert e["ppid"] == start["ppid"]          # both children of strace


def test_burst_of_2000_execs_matches_strace_with_nothing_dropped(rbtrace, tmp_path, exectool):
    calls, events, r = compare_with_strace(rbtrace, tmp_path, [exectool, "burst", "2000", "/bin/true"])
    assert len(events) == len(calls) == 2001
    assert sorted(int(e["argv"][2]) for e in events if e["argv"][:2] == ["/bin/true", "burst"]) \
        == list(range(2000))
    # Each event has its own seq and none is missing.  Their order may
    # differ slightly from seq's between CPUs: seq is taken before the ring
    # gives out space (rbtrace(8), JSON OUTPUT).
    seqs = [e["seq"] for e in r.events]
    assert r.summary["dropped"] == 0 and sorted(seqs) == list(range(len(seqs)))
    print(f"burst: {len(events)} events of the workload, {r.summary['delivered']} delivered "
          f"in all, {r.summary['dropped']} dropped, workload {r.took:.2f}s under strace")


def test_literal_argv_in_untouched_pages_is_recovered(rbtrace, tmp_path, exectool):
    """execl() with string literals: their page may not be mapped yet, so
    the entry probe can't read them; the exec's own copy is used."""
    calls, events, r = compare_with_strace(rbtrace, tmp_path, [exectool, "literal", "/bin/echo"])
    (e,) = [e for e in events if e["comm"] == "echo"]
    assert e["argv"] == ["literal-argv0", "from", "read-only data"]
    assert e["filename"] == "/bin/echo" and not e.get("argv_fault")


# --- limits and truncation ----------------------------------------------------

def _run(argv, **kw):
    return subprocess.run(argv, env=ENV, stdout=subprocess.DEVNULL, **kw)


def test_raised_limits_capture_1000_args_and_100k_exactly(rbtrace, tmp_path):
    many = [f"arg-{i:04d}-{'x' * (i % 23)}" for i in range(1000)]
    big = [bytes(range(1, 256)) * 140, b"\n\t\x1b[0m" * 6000, b"y" * 33000]   # ~102 KiB
    assert 100 * 1024 < sum(len(b) + 1 for b in big) < 110 * 1024
    raised = trace(rbtrace, "--max-args", "1000", "--max-arg-bytes", "110K")
    default = trace(rbtrace)
    _run(["/bin/true", *many[1:]])
    _run([b"/bin/true", *big])
    mark = sentinel()
    r_raised, r_default = raised.stop(after=mark), default.stop(after=mark)

    def find(r, first):
        return [e for e in r.events if e.get("argv") and argv_bytes(e)[:1] == (first,)]

    (e,) = [e for e in find(r_raised, b"/bin/true") if e["argc"] == 1000]
    assert e["argv"] == ["/bin/true", *many[1:]] and not e["args_truncated"]
    (e,) = [e for e in find(r_raised, b"/bin/true") if e["argc"] == 4]
    assert argv_bytes(e) == (b"/bin/true", *big) and not e["args_truncated"]
    assert r_raised.summary["dropped"] == 0

    (e,) = [e for e in find(r_default, b"/bin/true") if e["argc"] == 1000]
    assert e["args_truncated"] and len(e["argv"]) == 64 and e["argv"] == ["/bin/true", *many[1:64]]
    (e,) = [e for e in find(r_default, b"/bin/true") if e["argc"] == 4]
    got = argv_bytes(e)
    assert e["args_truncated"] and e["last_arg_cut"]
    assert got[0] == b"/bin/true" and len(got) == 2 and big[0].startswith(got[1])
    assert sum(len(a) + 1 for a in got) - 1 == 4096          # the limit, NULs included


def test_argc_is_counted_far_beyond_the_captured_args(rbtrace):
    t = trace(rbtrace)
    _run(["/bin/true", *["c"] * 29999])
    _run(["/bin/true", *["d"] * 69999])
    r = t.stop(after=sentinel())
    (e,) = [e for e in r.events if e["argv"][1:2] == ["c"]]
    assert e["argc"] == 30000 and e["args_truncated"] and not e.get("argc_capped")
    (e,) = [e for e in r.events if e["argv"][1:2] == ["d"]]
    assert e["argc_capped"] and 65536 <= e["argc"] < 70000 and e["args_truncated"]


def test_plain_output_marks_truncation_and_escapes_control_bytes(rbtrace):
    mark = f"mark{os.getpid()}{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-m", "rbtrace", "exec", "--max-args", "3"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()                               # header: attached
    _run(["/bin/echo", mark, "new\nline\ttab\x1bESC\x07", "4th", "5th"])
    _run(["/bin/echo", mark, "short"])
    proc.send_signal(signal.SIGINT)                      # drains, then exits
    out, err = proc.communicate(timeout=30)
    lines = [ln for ln in out.decode().splitlines() if mark in ln]
    assert len(lines) == 2, out
    assert lines[0].endswith(f"/bin/echo {mark} 'new\\nline\\ttab\\x1bESC\\x07' …[5 args]")
    assert lines[1].endswith(f"/bin/echo {mark} short")
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out.decode())


# --- filters and fields -------------------------------------------------------

def test_comm_filter_is_the_new_name_on_success_and_the_callers_on_failure(
        rbtrace, tmp_path, exectool):
    caller = tmp_path / "commcaller"
    shutil.copy(exectool, caller)
    by_caller = trace(rbtrace, "--comm", "commcaller")
    by_new = trace(rbtrace, "--comm", "true")
    _run([str(caller), "fail", "/nonexistent/by-commcaller"])
    _run([str(caller), "execveat", "/usr/bin", "true", "true", "run-by-commcaller"])
    r1, r2 = by_caller.stop(), by_new.stop()
    ours1 = [e for e in r1.events if "commcaller" in e["filename"] + " ".join(e["argv"])]
    # commcaller's own start (comm commcaller after exec) and its failure.
    assert sorted((e["filename"].rsplit("/", 1)[-1], e["errno"] or "") for e in ours1) == \
        [("by-commcaller", "ENOENT"), ("commcaller", ""), ("commcaller", "")]
    assert all(e["comm"] == "commcaller" for e in r1.events)
    assert [e["argv"] for e in r2.events if "run-by-commcaller" in e["argv"]] == \
        [["true", "run-by-commcaller"]]
    assert all(e["comm"] == "true" for e in r2.events)
    assert not [e for e in r2.events if "by-commcaller" in e["filename"]]


def test_pid_and_uid_filters_are_applied_in_the_kernel(rbtrace):
    mark = f"pidmark{time.monotonic_ns()}"
    waiter = subprocess.Popen([sys.executable, "-c",
                               f"import os,sys; sys.stdin.readline(); "
                               f"os.execv('/bin/true', ['/bin/true', '{mark}'])"],
                              stdin=subprocess.PIPE)
    by_pid = trace(rbtrace, "--pid", str(waiter.pid))
    by_uid = trace(rbtrace, "--uid", "nobody")
    _run(["/bin/true", mark, "other-process"])
    _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/true", mark, "nobody"])
    waiter.communicate(b"go\n", timeout=30)
    r_pid, r_uid = by_pid.stop(), by_uid.stop()
    assert [(e["pid"], e["argv"]) for e in r_pid.events] == [(waiter.pid, ["/bin/true", mark])]
    # Filtered before anything is reserved: nothing else was even seen.
    assert r_pid.summary["seen"] == 1
    ours = [e for e in r_uid.events if mark in e["argv"]]
    assert [(e["uid"], e["user"], e["argv"][-1]) for e in ours] == [(65534, "nobody", "nobody")]
    assert all(e["uid"] == 65534 for e in r_uid.events)
    assert r_uid.summary["seen"] == len(r_uid.events)


# --- bpf_loop and the bounded-loop fallback -----------------------------------

# The volatile part of an event: which process, and when.
_RUN_FIELDS = {"time", "ts_ns", "seq", "pid", "tid", "ppid", "process"}


def _followed_execs(tmp_path, script, env):
    """The exec events of `sh -c SCRIPT` as `rbtrace exec -- ...` reports
    them, less the fields that differ from run to run."""
    from conftest import run_cli
    out = tmp_path / f"events-{len(list(tmp_path.iterdir()))}.json"
    p = run_cli("exec", "--json", "--max-args", "8", "--max-arg-bytes", "256",
                "-o", str(out), "--", "/bin/sh", "-c", script, env=env)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    r = parse_json_lines(out.read_text())
    assert r.summary["dropped"] == 0, r.summary
    return [{k: v for k, v in e.items() if k not in _RUN_FIELDS}
            for e in r.events if e["type"] == "exec"]


def test_bounded_loop_fallback_reports_exactly_what_bpf_loop_does(tmp_path, exectool, kernel_ok):
    """The same workload traced with the probe compiled for bpf_loop and
    with its bounded loops (RBTRACE_NO_BPF_LOOP=1): every event the same,
    field for field.  The workload goes through every loop's edge cases:
    argc past a page of pointers and past --max-args, an argument cut by
    --max-arg-bytes, a failed exec, and executables' paths (fexecve, an
    unlinked file, execveat relative to a directory)."""
    gone = tmp_path / "gone-true"            # made again for each run
    script = (f"cp /bin/true {gone}; "f"/bin/true a b c; /bin/true $(seq 1500) > /dev/null; "
              f"/bin/echo {'x' * 400} short > /dev/null; /nonexistent/cmd 2> /dev/null; "
              f"{exectool} fexecve /bin/echo echo one > /dev/null; "
              f"{exectool} fexecve-unlinked {gone} gone-true two; "
              f"{exectool} execveat /usr/bin true three; exit 0")
    fast = _followed_execs(tmp_path, script, {"RBTRACE_NO_BPF_LOOP": "0"})
    bounded = _followed_execs(tmp_path, script, {"RBTRACE_NO_BPF_LOOP": "1"})
    assert fast == bounded
    by_argv0 = {e["argv"][0] if e["argv"] else "": e for e in fast}
    assert [e["argc"] for e in fast if e["filename"] == "/bin/true"] == [4, 1501]
    assert by_argv0["/bin/echo"]["args_truncated"]
    assert [e["exe"] for e in fast if e["syscall"] == "execveat"] == [
        os.path.realpath("/bin/echo"), f"{gone} (deleted)", os.path.realpath("/usr/bin/true")]


def test_exec_probe_uses_bpf_loop_on_this_kernel(kernel_ok, monkeypatch, tmp_path):
    """On Linux 5.17 and later the entry programs run their loops as
    bpf_loop callbacks, and the verifier checks a small fraction of the
    instructions it walks through the bounded loops."""
    from rbtrace import kernel
    from rbtrace.bpf import LoadedProbe
    from rbtrace.loader import verified_insns
    from rbtrace.kinds.exec import ExecCodec
    release = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    assert release >= (5, 17)
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(tmp_path))
    os.chmod(tmp_path, 0o700)
    checked = {}
    for forced in ("0", "1"):
        monkeypatch.setenv("RBTRACE_NO_BPF_LOOP", forced)
        assert kernel.bpf_loop_usable() == (forced == "0")
        probe = ExecCodec({})
        loaded = LoadedProbe(probe.source_path(), dict(probe.cflags()), probe.event_structs,
                             attach=False)
        try:
            programs = {p.name: p for p in loaded.loaded.compiled.programs}
            checked[forced] = {name: verified_insns(fd)
                               for name, fd in loaded.loaded.prog_fds.items()}
            for name in ("tracepoint__syscalls__sys_enter_execve",
                         "tracepoint__syscalls__sys_enter_execveat",
                         "tracepoint__sched__sched_process_exec"):
                assert bool(programs[name].subprogs) == (forced == "0"), name
        finally:
            loaded.close()
    fast, bounded = checked["0"], checked["1"]
    for name in ("tracepoint__syscalls__sys_enter_execve",
                 "tracepoint__syscalls__sys_enter_execveat"):
        assert 0 < fast[name] * 20 < bounded[name], (name, fast[name], bounded[name])
    assert 0 < fast["tracepoint__sched__sched_process_exec"] * 2 < \
        bounded["tracepoint__sched__sched_process_exec"]
