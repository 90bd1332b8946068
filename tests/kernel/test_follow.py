"""`rbtrace <probe> -- CMD` and `--pid PID --children` on the real kernel
(issue #7): only CMD and its descendants, from CMD's very first exec on.

The ground truth is strace -f on a second run of the same workload: a
`make -j2` build and a shell script that backgrounds, double-forks and
setsid()s.  Pids differ between the two runs, so processes are compared
by what they exec'd (their "identity"): the multiset of exec calls, the
multiset of open calls, the exec calls grouped by process, and the
parent -> child relations between processes.  A noise loop outside the
traced tree runs meanwhile and must not show up.

Then exit statuses (as a shell reports them), signals (kill(2), and
Ctrl-C on a real terminal, in tmux), --pid PID --children, and CMD's
stdin, stdout, environment and file descriptors being its own.
"""
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, parse_json_lines
from test_exec import argv_bytes, parse_strace as parse_exec_strace, text_bytes
from test_open import as_tuple as open_tuple, parse_strace as parse_open_strace

RBTRACE = [sys.executable, "-m", "rbtrace"]
STRACE = shutil.which("strace")

# The environment of every workload, under strace and under rbtrace alike
# (rbtrace hands its own to CMD).  Nothing of the caller's leaks in: a
# MAKEFLAGS from `make test` would change what make -j2 does.  The first
# PATH entries don't exist, so every execvp() makes failed attempts.
PATH = "/nonexistent-rbtrace-path:/usr/local/bin:/usr/bin:/bin"
ENV = {"PATH": PATH, "LANG": "C", "LC_ALL": "C"}

EXEC_TRACE = "execve,execveat"
OPEN_TRACE = "open,openat,openat2,creat"
FORK_TRACE = "clone,clone3,fork,vfork"

# gcc's temporary files (mkstemp: /tmp/ccAbC123.res, passed to ld as an
# argument) have another name on every run.
_GCC_TMP = re.compile(rb"/tmp/cc[A-Za-z0-9]{6}\.")


def norm(b: bytes) -> bytes:
    return _GCC_TMP.sub(b"/tmp/ccXXXXXX.", b)


# --- running the workloads ----------------------------------------------------

def strace_run(log, cmd, trace, timeout=300):
    if STRACE is None:
        pytest.fail("strace is not installed (make setup-test installs it)")
    return subprocess.run([STRACE, "-f", "-qq", "-xx", "-s", "65536", "-e", f"trace={trace}",
                           "-o", str(log), *cmd],
                          cwd=REPO, env=ENV, capture_output=True, timeout=timeout)


def rbtrace_run(args, env=None, timeout=300, input=None):
    return subprocess.run([*RBTRACE, *args], cwd=REPO, env=ENV if env is None else env,
                          capture_output=True, timeout=timeout, input=input)


def traced(probe, out, cmd, extra=(), timeout=300):
    """`rbtrace PROBE --json -o OUT -- CMD`: (CompletedProcess, Result).
    Run from the repository, as every workload here (make -C DIR), so that
    this checkout's rbtrace is the one tested."""
    p = rbtrace_run([probe, "--json", "-o", str(out), *extra, "--", *cmd], timeout=timeout)
    assert out.exists(), p.stderr.decode(errors="replace")
    r = parse_json_lines(out.read_text())
    return p, r


def assert_complete(r):
    """Nothing lost: no `lost` line, every event seen was delivered."""
    s = r.summary
    assert s is not None, "no summary line"
    assert not r.lost, r.lost
    assert s["dropped"] == 0 and s["missed_by_kernel"] == 0, s
    assert s["not_followed"] == 0, s            # every child made it into the map
    assert s["seen"] == s["submitted"] == s["delivered"] == len(r.events), s


class Noise:
    """Execs and opens outside the traced tree, with a mark that must never
    appear in rbtrace's output."""

    def __init__(self):
        self.mark = f"rbnoise-{uuid.uuid4().hex[:10]}"
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f"while :; do /bin/true {self.mark}; "
                              f"/bin/cat /nonexistent/{self.mark} 2>/dev/null; "
                              f"/bin/sleep 0.02; done"],
            env=ENV, start_new_session=True, stdout=subprocess.DEVNULL)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def assert_absent(self, text):
        assert self.mark not in text, f"an event from outside the tree: {self.mark}"


@pytest.fixture
def noise():
    n = Noise()
    yield n
    n.stop()


# --- identities and the process tree -------------------------------------------

def call_key(c):
    return (norm(c.filename), tuple(norm(a) for a in c.argv), c.result)


def event_key(e):
    return (norm(text_bytes(e, "filename")), tuple(norm(a) for a in argv_bytes(e)),
            e["errno"] or 0)


def open_key(t):
    """An open call without its thread id (strace tuple or event tuple)."""
    tid, syscall, dirfd, path, truncated, flags, mode, ret = t
    return (syscall, dirfd, norm(path or b""), truncated, flags, mode, ret)


def open_result(t):
    """(path, "ok" or the errno) of an open call: the issue's comparison."""
    _, _, _, path, _, _, _, ret = t
    return (norm(path or b""), "ok" if ret >= 0 else ret)


_FORK = re.compile(r"^(\d+) +(?:clone|clone3|fork|vfork)\((.*)$")
_FORK_RESUMED = re.compile(r"^(\d+) +<\.\.\. (?:clone|clone3|fork|vfork) resumed>(.*)$")


def parse_forks(path):
    """strace -f's clone/clone3/fork/vfork lines -> {child pid: parent pid}
    for new processes (not threads)."""
    parent, pending = {}, {}
    for line in open(path):
        line = line.rstrip("\n")
        m = _FORK.match(line)
        if m:
            pid, text = int(m.group(1)), m.group(2)
            if text.endswith("<unfinished ...>"):
                pending[pid] = text
                continue
        else:
            m = _FORK_RESUMED.match(line)
            if not m:
                continue
            pid, text = int(m.group(1)), pending.pop(int(m.group(1)), "") + m.group(2)
        r = re.search(r"\) += (\d+)$", text)
        if r and "CLONE_THREAD" not in text:
            parent[int(r.group(1))] = pid
    return parent


class Tree:
    """Processes that exec'd, named by their exec calls in order, and the
    parent -> child edges between two of them."""

    def __init__(self, keys_by_pid, parent_of):
        self.ident = {pid: tuple(keys) for pid, keys in keys_by_pid.items()}
        self.parent_of = parent_of
        self.groups = collections.Counter(self.ident.values())
        self.edges = collections.Counter(
            (self.ident[parent_of[p]], self.ident[p]) for p in self.ident
            if parent_of.get(p) in self.ident)

    def pid_of(self, pred):
        (pid,) = [p for p, i in self.ident.items() if pred(i)]
        return pid


def strace_tree(log):
    calls = parse_exec_strace(log)
    by_pid = collections.defaultdict(list)
    for c in calls:
        by_pid[c.pid].append(call_key(c))
    return calls, Tree(by_pid, parse_forks(log))


def rbtrace_tree(events):
    """ppid as the events carry it: the parent when the first exec of the
    process was reported."""
    by_pid, ppid = collections.defaultdict(list), {}
    for e in sorted(events, key=lambda e: e["seq"]):
        by_pid[e["pid"]].append(event_key(e))
        ppid.setdefault(e["pid"], e["ppid"])
    return Tree(by_pid, ppid)


def diff(want, got):
    return (f"missing: {list((want - got).elements())[:4]} "
            f"extra: {list((got - want).elements())[:4]}")


def compare_execs(log, r, p, cmd):
    """rbtrace's exec events (run p, result r) against strace's log of
    another run of cmd.  Returns both trees."""
    calls, st = strace_tree(log)
    events = [e for e in r.events if e["type"] == "exec"]
    assert len(events) == len(r.events)
    rt = rbtrace_tree(events)
    want = collections.Counter(call_key(c) for c in calls)
    got = collections.Counter(event_key(e) for e in events)
    assert got == want, diff(want, got)
    assert len(events) == len(calls)
    # The same calls made by the same processes.
    assert rt.groups == st.groups, diff(st.groups, rt.groups)
    # CMD's own exec comes first, as given, from the pid in the summary.
    cmdinfo = r.summary["command"]
    first = min(events, key=lambda e: e["seq"])
    assert argv_bytes(first) == tuple(a.encode() for a in cmd) == tuple(
        a.encode() for a in cmdinfo["argv"])
    assert first["pid"] == cmdinfo["pid"] and first["ret"] == 0 and first["syscall"] == "execve"
    assert cmdinfo["status"] == p.returncode
    # Every parent rbtrace names among the processes it reported is the
    # parent strace saw fork that process (a process reparented to init or
    # a subreaper names one outside the tree: no edge).
    assert not rt.edges - st.edges, diff(st.edges, rt.edges)
    return st, rt


def compare_opens(log, r):
    truth = parse_open_strace(open(log).read())
    events = [e for e in r.events if e["type"] == "open"]
    assert len(events) == len(r.events)
    want = collections.Counter(open_result(t) for t in truth)
    got = collections.Counter(open_result(open_tuple(e)) for e in events)
    assert got == want, diff(want, got)
    # Every member, the fds returned included: CMD runs with the same open
    # files as under strace (nothing of rbtrace's is inherited).
    want = collections.Counter(open_key(t) for t in truth)
    got = collections.Counter(open_key(open_tuple(e)) for e in events)
    assert got == want, diff(want, got)
    cmdinfo = r.summary["command"]
    first = min(events, key=lambda e: e["seq"])
    assert first["pid"] == cmdinfo["pid"]
    return truth, events


# --- a make -j2 build -----------------------------------------------------------

def make_project(d, nfiles):
    """A C project: nfiles sources, a generated header (a recipe make runs
    through /bin/sh), a link step, and a failing PATH lookup (env)."""
    d.mkdir(parents=True)
    (d / "common.h").write_text("#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\n")
    names = [f"f{i}" for i in range(nfiles)]
    for i, n in enumerate(names):
        (d / f"{n}.c").write_text(
            f'#include "common.h"\n#include "version.h"\n'
            f"int {n}(const char *s)\n{{\n    char buf[64];\n"
            f'    snprintf(buf, sizeof(buf), "%s-{i}-%d", s, VERSION);\n'
            f"    return (int)strlen(buf) + atoi(s);\n}}\n")
    decls = "".join(f"int {n}(const char *);\n" for n in names)
    calls = " + ".join(f'{n}("{i}")' for i, n in enumerate(names))
    (d / "main.c").write_text(f'#include "common.h"\n{decls}'
                              f'int main(void)\n{{\n    printf("%d\\n", {calls});\n    return 0;\n}}\n')
    srcs = " ".join(f"{n}.c" for n in names) + " main.c"
    (d / "Makefile").write_text(
        "SHELL = /bin/sh\nCC = gcc\nCFLAGS = -O0 -pipe\n"
        f"SRCS = {srcs}\nOBJS = $(SRCS:.c=.o)\n\n"
        "prog: $(OBJS)\n"
        "\t$(CC) $(CFLAGS) -o $@ $(OBJS)\n"
        "\t-env rbtrace-missing-tool --version 2>/dev/null\n\n"
        "%.o: %.c common.h version.h\n"
        "\t$(CC) $(CFLAGS) -c -o $@ $<\n\n"
        "version.h:\n"
        "\techo '#define VERSION 7' > $@\n\n"
        "clean:\n"
        "\trm -f prog $(OBJS) version.h\n")
    return d


def make_clean(d):
    for f in d.iterdir():
        if f.suffix == ".o" or f.name in ("prog", "version.h"):
            f.unlink()


def make_cmd(project):
    return ["/usr/bin/make", "-C", str(project), "-j2"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("follow") / "proj", 7)


def test_make_j2_execs_equal_strace_f(kernel_ok, project, tmp_path, noise):
    make_clean(project)
    log = tmp_path / "strace.log"
    s = strace_run(log, make_cmd(project), f"{EXEC_TRACE},{FORK_TRACE}")
    assert s.returncode == 0, s.stderr
    make_clean(project)
    out = tmp_path / "exec.json"
    p, r = traced("exec", out, make_cmd(project))
    assert p.returncode == 0, p.stderr
    assert (project / "prog").exists()
    noise.assert_absent(out.read_text())
    assert_complete(r)
    st, rt = compare_execs(log, r, p, make_cmd(project))
    # make waits for everything it started: every parent is alive when its
    # child execs, so rbtrace reports every edge strace saw.
    assert rt.edges == st.edges, diff(st.edges, rt.edges)
    assert r.summary["followed_running"] == 0
    assert r.summary["command"]["signal"] is None
    ok = [e for e in r.events if e["ret"] == 0]
    names = collections.Counter(os.path.basename(e["filename"]) for e in ok)
    # Which programs ran, per strace's log (the toolchain's own steps
    # differ between versions), and what the project implies whatever the
    # toolchain: one compiler driver per source and one to link, each
    # source through the compiler proper and the assembler.
    calls, _ = strace_tree(log)
    assert names == collections.Counter(os.path.basename(c.filename.decode())
                                        for c in calls if c.result == 0), names
    sources = len(list(project.glob("*.c")))
    assert (names["make"], names["env"]) == (1, 1)
    assert names["gcc"] == sources + 1 and names["cc1"] == names["as"] == sources, names
    failed = [e for e in r.events if e["errno"]]
    assert collections.Counter(e["errno"] for e in failed) == \
        collections.Counter(c.result for c in calls if c.result != 0)
    assert failed and {e["errno"] for e in failed} == {"ENOENT"}      # PATH lookups


def test_make_j2_opens_equal_strace_f(kernel_ok, project, tmp_path, noise):
    make_clean(project)
    log = tmp_path / "strace.log"
    s = strace_run(log, make_cmd(project), OPEN_TRACE)
    assert s.returncode == 0, s.stderr
    make_clean(project)
    out = tmp_path / "open.json"
    p, r = traced("open", out, make_cmd(project))
    assert p.returncode == 0, p.stderr
    noise.assert_absent(out.read_text())
    assert_complete(r)
    truth, events = compare_opens(log, r)
    assert len(events) > 200
    assert r.summary["followed_running"] == 0
    paths = {e["path"] for e in events}
    assert {"Makefile", "f0.c", "main.c", "version.h", "/usr/include/stdio.h"} <= paths


# --- a shell script that backgrounds, double-forks and setsid()s --------------

SCRIPT = r"""
# $1: a directory holding the fifos back, gate1..gate4.  Every exec and
# open this script makes is the same on every run: each process that
# outlives its parent waits at a gate, and says "done" on fd 3 when it
# finishes; the script waits for all of them before it exits.
D=$1
exec 3<>"$D/back"
/bin/echo top-start
/usr/bin/env rbtrace-no-such-cmd 2>/dev/null
( /bin/true in-subshell )
/bin/sh -c '/bin/true child-sh-1; /bin/true child-sh-2'
# A background child that outlives its parent subshell.
( /bin/sh -c 'read x <"$1/gate1"; /bin/true outlived; echo outlived >&3' sh "$D" & )
# ( (cmd &) & ): a double fork.
( ( { read x <"$D/gate2"; /bin/true double-forked; echo double >&3; } & ) & )
# A double fork whose grandchild execs only once both its parents are
# gone: $( ) returns at EOF, when the intermediate processes have exited.
x=$( ( ( read y <"$D/gate3"; exec /bin/sh -c '/bin/true orphan; echo orphan >&3' ) >/dev/null & ) )
# setsid -f: forks again, in a new session.
/usr/bin/setsid -f /bin/sh -c 'read x <"$1/gate4"; /bin/true daemon; echo daemon >&3' sh "$D"
echo go >"$D/gate1"
echo go >"$D/gate2"
echo go >"$D/gate3"
echo go >"$D/gate4"
read a <&3; read b <&3; read c <&3; read d <&3
/bin/true top-end
exit 3
"""

ORPHAN_SH = (b"/bin/sh", (b"/bin/sh", b"-c", b"/bin/true orphan; echo orphan >&3"), 0)


@pytest.fixture
def script(tmp_path):
    d = tmp_path / "fifos"
    d.mkdir()
    path = tmp_path / "forks.sh"
    path.write_text(SCRIPT)

    def fresh():
        for name in ("back", "gate1", "gate2", "gate3", "gate4"):
            if (d / name).exists():
                (d / name).unlink()
            os.mkfifo(d / name)
        return ["/bin/sh", str(path), str(d)]
    return fresh


def test_script_forks_execs_equal_strace_f(kernel_ok, script, tmp_path, noise):
    cmd = script()
    log = tmp_path / "strace.log"
    s = strace_run(log, cmd, f"{EXEC_TRACE},{FORK_TRACE}", timeout=60)
    assert s.returncode == 3, s.stderr
    cmd = script()
    out = tmp_path / "exec.json"
    p, r = traced("exec", out, cmd, timeout=60)
    assert p.returncode == 3, p.stderr
    assert p.stdout == s.stdout == b"top-start\n"
    noise.assert_absent(out.read_text())
    assert_complete(r)
    st, rt = compare_execs(log, r, p, cmd)
    argvs = {k[1] for i in rt.groups for k in i}
    for mark in (b"outlived", b"double-forked", b"orphan", b"daemon", b"top-end"):
        assert (b"/bin/true", mark) in argvs, mark
    # The script's own children: it is alive when each of them execs.
    top = rt.pid_of(lambda i: i[0][1] == tuple(a.encode() for a in cmd))
    assert top == r.summary["command"]["pid"]
    stop = st.pid_of(lambda i: i[0][1] == tuple(a.encode() for a in cmd))

    def children(t, pid):
        return collections.Counter(c for (par, c) in t.edges.elements() if par == t.ident[pid])
    assert children(rt, top) == children(st, stop) and sum(children(rt, top).values()) == 6
    # The late grandchild of the double fork: reparented before it exec'd,
    # it names a parent outside the tree, and is still reported.
    orphan = rt.pid_of(lambda i: i[0] == ORPHAN_SH)
    assert rt.parent_of[orphan] not in rt.ident
    assert rt.parent_of[orphan] != top
    sorphan = st.pid_of(lambda i: i[0] == ORPHAN_SH)
    assert st.parent_of[sorphan] not in st.ident       # forked by a subshell
    (true_orphan,) = [e for e in r.events if argv_bytes(e) == (b"/bin/true", b"orphan")]
    assert true_orphan["ppid"] == orphan


def test_script_forks_opens_equal_strace_f(kernel_ok, script, tmp_path, noise):
    cmd = script()
    log = tmp_path / "strace.log"
    s = strace_run(log, cmd, OPEN_TRACE, timeout=60)
    assert s.returncode == 3, s.stderr
    cmd = script()
    out = tmp_path / "open.json"
    p, r = traced("open", out, cmd, timeout=60)
    assert p.returncode == 3, p.stderr
    noise.assert_absent(out.read_text())
    assert_complete(r)
    truth, events = compare_opens(log, r)
    fifo = str(tmp_path / "fifos")
    gates = collections.Counter(e["path"] for e in events if e["path"].startswith(fifo))
    assert gates == {f"{fifo}/back": 1, **{f"{fifo}/gate{i}": 2 for i in range(1, 5)}}
    assert r.summary["command"]["status"] == 3


# --- exit statuses and bad input --------------------------------------------------

def _summary(p):
    r = parse_json_lines(p.stdout.decode())
    assert r.summary is not None, p.stderr
    return r


def test_exit_code_of_cmd_is_rbtraces(kernel_ok):
    p = rbtrace_run(["exec", "--json", "--", "sh", "-c", "exit 7"])
    assert p.returncode == 7, p.stderr
    r = _summary(p)
    sh = shutil.which("sh", path=PATH)
    assert r.summary["command"] == {"argv": ["sh", "-c", "exit 7"], "pid": r.events[0]["pid"],
                                    "status": 7, "signal": None}
    # Found in PATH by rbtrace, executed with one execve (as under strace).
    assert [(e["filename"], e["argv"], e["errno"]) for e in r.events] == [
        (sh, ["sh", "-c", "exit 7"], None)]
    assert r.summary["followed_running"] == 0


def test_cmd_killed_by_a_signal_gives_128_plus_signal(kernel_ok):
    p = rbtrace_run(["open", "--json", "--", "/bin/sh", "-c", "kill -TERM $$"])
    assert p.returncode == 143, p.stderr
    r = _summary(p)
    assert r.summary["command"]["status"] == 143
    assert r.summary["command"]["signal"] == "SIGTERM"
    assert r.events and all(e["pid"] == r.summary["command"]["pid"] for e in r.events)


def _bpf_prog_loads(tmp_path, args):
    """Run rbtrace under strace -e trace=bpf: its exit code, stderr, and
    how many programs it loaded."""
    log = tmp_path / "bpf.log"
    p = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=bpf", "-o", str(log), *RBTRACE, *args],
                       cwd=REPO, env=ENV, capture_output=True, timeout=120)
    return p, log.read_text().count("BPF_PROG_LOAD")


def _plain_file(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize("make, code", [
    (lambda d: "rbtrace-no-such-command", 127),
    (lambda d: str(d / "missing" / "cmd"), 127),
    (lambda d: _plain_file(d / "plain"), 126),
    (lambda d: str(d), 126),
])
def test_cmd_not_found_or_not_executable_exits_like_a_shell_loading_nothing(
        kernel_ok, tmp_path, make, code):
    cmd = make(tmp_path)
    p, loads = _bpf_prog_loads(tmp_path, ["exec", "--json", "--", cmd, "arg"])
    assert p.returncode == code, p.stderr
    err = p.stderr.decode()
    assert len(err.splitlines()) == 1 and os.path.basename(cmd) in err, err
    assert p.stdout == b""
    assert loads == 0
    # What the shell itself says, for the same name.
    sh = subprocess.run(["/bin/sh", "-c", '"$0" arg', cmd], env=ENV, capture_output=True)
    assert sh.returncode == code


@pytest.mark.parametrize("args", [
    ["exec", "--"],
    ["open", "--json", "--"],
    ["exec", "--children"],
    ["exec", "--json", "--children", "-d", "1"],
    ["exec", "--pid", "1", "--", "/bin/true"],
    ["open", "--pid", "1", "--children", "--", "/bin/true"],
])
def test_usage_errors_exit_2(kernel_ok, tmp_path, args):
    p, loads = _bpf_prog_loads(tmp_path, args)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.decode().splitlines()) == 1, p.stderr
    assert p.stdout == b"" and loads == 0


def test_first_exec_and_first_opens_of_cmd_are_seen(kernel_ok, tmp_path):
    argv = ["/bin/true", f"first-{uuid.uuid4().hex[:8]}", "two words", ""]
    p = rbtrace_run(["exec", "--json", "--", *argv])
    assert p.returncode == 0, p.stderr
    r = _summary(p)
    (e,) = r.events
    assert e["argv"] == argv and e["filename"] == "/bin/true" and e["ret"] == 0
    assert e["pid"] == r.summary["command"]["pid"] and e["comm"] == "true"
    # The dynamic loader's opens, before main(): all of them, as strace sees them.
    log = tmp_path / "strace.log"
    strace_run(log, argv, OPEN_TRACE)
    p = rbtrace_run(["open", "--json", "--", *argv])
    assert p.returncode == 0, p.stderr
    r = _summary(p)
    truth = parse_open_strace(log.read_text())
    assert [open_key(open_tuple(e)) for e in r.events] == [open_key(t) for t in truth]
    assert r.events[0]["path"] == "/etc/ld.so.cache"
    assert {e["pid"] for e in r.events} == {r.summary["command"]["pid"]}


def test_count_and_duration_stop_tracing_but_wait_for_cmd(kernel_ok, tmp_path):
    p = rbtrace_run(["exec", "--json", "-c", "1", "--", "/bin/sh", "-c",
                     "/bin/true one; /bin/true two; exit 5"])
    assert p.returncode == 5, p.stderr
    r = _summary(p)
    assert [e["argv"][0] for e in r.events] == ["/bin/sh"]
    assert r.summary["command"]["status"] == 5
    flag = tmp_path / "late"
    p = rbtrace_run(["exec", "--json", "-d", "0.3", "--", "/bin/sh", "-c",
                     f"/bin/sleep 1.5; /bin/true late; : > {flag}; exit 6"])
    assert p.returncode == 6, p.stderr
    assert flag.exists()                 # CMD ran to its end
    r = _summary(p)
    assert r.events[0]["argv"][0] == "/bin/sh"
    assert not [e for e in r.events if "late" in e["argv"]]
    assert r.summary["command"]["status"] == 6


def test_followed_running_counts_descendants_left_behind(kernel_ok, tmp_path):
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    p = rbtrace_run(["exec", "--json", "--", "/bin/sh", "-c",
                     f"/bin/sh -c 'read x <{fifo}; /bin/true left' >/dev/null 2>&1 & exit 4"],
                    timeout=60)
    try:
        assert p.returncode == 4, p.stderr
        r = _summary(p)
        assert r.summary["followed_running"] == 1
        assert r.summary["command"]["status"] == 4
    finally:
        try:                                # let the one left behind end
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"go\n")
            os.close(fd)
        except OSError:
            pass


# --- CMD's stdin, stdout, stderr, environment and fds are its own --------------------

def test_output_file_keeps_cmd_stdout_separate(kernel_ok, tmp_path):
    mark = uuid.uuid4().hex[:8]
    out = tmp_path / "events.json"
    script = f'printf "out-{mark} line1\\nline2\\n"; /bin/echo err-{mark} >&2; /bin/echo tail-{mark}'
    p = rbtrace_run(["exec", "--json", "-o", str(out), "--", "/bin/sh", "-c", script])
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"out-{mark} line1\nline2\ntail-{mark}\n".encode()
    assert f"err-{mark}\n" in p.stderr.decode()
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "summary"
    r = parse_json_lines(out.read_text())
    assert [e["argv"] for e in r.events] == [
        ["/bin/sh", "-c", script], ["/bin/echo", f"err-{mark}"], ["/bin/echo", f"tail-{mark}"]]


def test_cmd_gets_stdin_environment_and_only_fds_0_1_2(kernel_ok, tmp_path):
    data = os.urandom(100_000)
    p = rbtrace_run(["exec", "-o", str(tmp_path / "a"), "--", "/bin/cat"], input=data)
    assert p.returncode == 0 and p.stdout == data, p.stderr
    # The same command with and without rbtrace: same environment, same
    # open files (ls lists its own, fd 3 being the directory it reads).
    # No locale variables at all, as under cron or in a container: the C
    # locale, which Python "coerces" in its own environment at start-up.
    env = {"PATH": PATH, "RBTRACE_TEST_VAR": "a b\tc"}
    cmd = ["/bin/sh", "-c", "/usr/bin/env; /bin/ls /proc/self/fd; echo $$ >/dev/null"]
    bare = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True)
    p = rbtrace_run(["open", "-o", str(tmp_path / "b"), "--", *cmd], env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == bare.stdout
    assert b"0\n1\n2\n3\n" in p.stdout


# --- signals ------------------------------------------------------------------------

SIGCOUNT_C = r"""
/* sigcount SIG READY COUNT: counts SIG (INT or TERM); writes "pid ppid" to
 * READY once its handler is in place; after the first SIG, waits 1 s for
 * any second copy, writes the count to COUNT and exits 40 + count. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t n;
static void on(int s) { (void)s; n++; }

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int sig = strcmp(argv[1], "INT") == 0 ? SIGINT : SIGTERM;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    alarm(15);                                    /* never hang a test */
    sigset_t block, none;
    sigemptyset(&block);
    sigemptyset(&none);
    sigaddset(&block, sig);
    sigprocmask(SIG_BLOCK, &block, NULL);
    FILE *f = fopen(argv[2], "w");
    fprintf(f, "%d %d\n", (int)getpid(), (int)getppid());
    fclose(f);
    while (!n)
        sigsuspend(&none);
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    struct timespec t = {1, 0};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
    f = fopen(argv[3], "w");
    fprintf(f, "%d\n", (int)n);
    fclose(f);
    return 40 + n;
}
"""


@pytest.fixture(scope="module")
def sigcount(tmp_path_factory):
    d = tmp_path_factory.mktemp("sigcount")
    (d / "sigcount.c").write_text(SIGCOUNT_C)
    subprocess.run(["gcc", "-O2", "-o", str(d / "sigcount"), str(d / "sigcount.c")], check=True)
    return str(d / "sigcount")


def _wait_file(path, proc=None, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{path} never written"
                         + (f"; rbtrace exited {proc.returncode}: {proc.stderr.read()!r}"
                            if proc is not None and proc.poll() is not None else ""))


def _start_bg(args):
    """rbtrace in the background, in a session of its own: no controlling
    terminal, so a SIGINT can only come from kill(2)."""
    return subprocess.Popen([*RBTRACE, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_rbtrace_is_forwarded_once_and_cmds_status_returned(
        kernel_ok, tmp_path, sigcount, sig):
    ready, count = tmp_path / "ready", tmp_path / "count"
    name = sig.name[3:]
    proc = _start_bg(["exec", "--json", "--", sigcount, name, str(ready), str(count)])
    try:
        cmd_pid, cmd_ppid = map(int, _wait_file(ready, proc).split())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert count.read_text() == "1\n"             # one copy, from rbtrace
    assert proc.returncode == 41, err
    r = parse_json_lines(out.decode())
    assert r.summary["command"] == {"argv": [sigcount, name, str(ready), str(count)],
                                    "pid": cmd_pid, "status": 41, "signal": None}
    assert r.events[0]["pid"] == cmd_pid


@pytest.mark.parametrize("sig, trap, status", [
    (signal.SIGTERM, "trap 'kill $s; exit 42' TERM", 42),
    (signal.SIGINT, "trap 'kill $s; exit 42' INT", 42),
    (signal.SIGTERM, "", 143),
    (signal.SIGINT, "", 130),
])
def test_signal_to_rbtrace_ends_cmd_like_a_shell(kernel_ok, tmp_path, sig, trap, status):
    ready = tmp_path / "ready"
    # A background sleep and `wait`: the shell runs its trap at once.  (A
    # non-interactive shell ignores SIGINT in background jobs.)
    script = (f"{trap}\n/bin/sleep 30 >/dev/null 2>&1 & s=$!\necho ready >{ready}\nwait $s\n"
              f"kill $s 2>/dev/null\nexit 9\n")
    if not trap:
        script = f"echo ready >{ready}\nexec /bin/sleep 30\n"
    proc = _start_bg(["open", "--json", "--", "/bin/sh", "-c", script])
    try:
        _wait_file(ready, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    r = parse_json_lines(out.decode())
    assert r.summary["command"]["status"] == status
    assert r.summary["command"]["signal"] == (None if trap else sig.name)
    assert_complete(r)


def _tmux(*args, check=True):
    return subprocess.run(["tmux", *args], capture_output=True, check=check, timeout=30)


@pytest.fixture
def tmux_shell(kernel_ok, tmp_path):
    """An interactive bash on a tmux terminal: it runs each command line as
    a foreground job in a process group of its own, as a user's shell does."""
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (make setup-test installs it)")
    name = "rbtrace-follow-" + uuid.uuid4().hex[:8]
    _tmux("new-session", "-d", "-s", name, "-x", "150", "-y", "20", "-c", REPO,
          "env -i PATH=/usr/bin:/bin TERM=xterm bash --norc --noprofile -i")
    yield name
    _tmux("kill-session", "-t", name, check=False)


def _run_in_terminal(name, line):
    _tmux("send-keys", "-t", name, "-l", line)
    _tmux("send-keys", "-t", name, "Enter")


def test_ctrl_c_on_a_terminal_reaches_cmd_once(tmux_shell, tmp_path, sigcount):
    ready, count, status, out = (tmp_path / n for n in ("ready", "count", "status", "out.json"))
    rb = " ".join(RBTRACE)
    _run_in_terminal(tmux_shell, f"{rb} exec --json -o {out} -- {sigcount} INT {ready} {count}"
                                 f" 2>{tmp_path}/err; echo $? >{status}")
    _wait_file(ready)
    _tmux("send-keys", "-t", tmux_shell, "C-c")
    _wait_file(status)
    assert count.read_text() == "1\n", "CMD got the terminal's SIGINT more or less than once"
    assert status.read_text() == "41\n", (tmp_path / "err").read_text()
    r = parse_json_lines(out.read_text())
    assert r.summary["command"]["status"] == 41


def test_kill_int_to_rbtrace_in_a_terminals_foreground_is_forwarded(tmux_shell, tmp_path, sigcount):
    """rbtrace in the foreground of a terminal, and a SIGINT sent to it with
    kill(2) from elsewhere: CMD did not get that one from the terminal, so
    rbtrace must pass it on."""
    ready, count, status, out = (tmp_path / n for n in ("ready", "count", "status", "out.json"))
    rb = " ".join(RBTRACE)
    _run_in_terminal(tmux_shell, f"{rb} exec --json -o {out} -- {sigcount} INT {ready} {count}"
                                 f" 2>{tmp_path}/err; echo $? >{status}")
    cmd_pid, rbtrace_pid = map(int, _wait_file(ready).split())
    os.kill(rbtrace_pid, signal.SIGINT)
    _wait_file(status)
    assert count.exists() and count.read_text() == "1\n", \
        f"CMD never got the SIGINT sent to rbtrace; rbtrace exited {status.read_text()!r}"
    assert status.read_text() == "41\n", (tmp_path / "err").read_text()


# --- --pid PID --children -------------------------------------------------------------

CHILDREN_SCRIPT = r"""
D=$1; M=$2
( read x <"$D/go2"; /bin/true "pre-existing-$M" ) &
read x <"$D/go"
/bin/true "child-$M"
( /bin/true "subshell-$M" )
( ( read x <"$D/go3"; /bin/true "orphan-$M"; echo done >"$D/back" ) & )
echo go >"$D/go3"
echo go >"$D/go2"
read x <"$D/back"
wait
"""


def test_pid_children_follows_a_running_tree_and_ends_with_it(rbtrace, tmp_path, noise):
    mark = uuid.uuid4().hex[:10]
    for name in ("go", "go2", "go3", "back"):
        os.mkfifo(tmp_path / name)
    w = subprocess.Popen(["/bin/sh", "-c", CHILDREN_SCRIPT, "sh", str(tmp_path), mark],
                         env=ENV, stdout=subprocess.DEVNULL)
    try:
        # The child forked before rbtrace starts, waiting at go2.
        deadline = time.monotonic() + 30
        kids = ""
        while not kids.strip() and time.monotonic() < deadline:
            kids = open(f"/proc/{w.pid}/task/{w.pid}/children").read()
            time.sleep(0.02)
        assert kids.strip(), "the workload's first child never appeared"
        t = rbtrace("exec", "--json", "--pid", str(w.pid), "--children")
        subprocess.run(["/bin/true", f"outside-{mark}"])
        with open(tmp_path / "go", "w") as f:
            f.write("go\n")
        w.wait(timeout=60)
        r = t.finish(timeout=60)           # ends by itself when the process exits
    finally:
        if w.poll() is None:
            w.kill()
    assert r.returncode == 0, r.stderr
    noise.assert_absent(json.dumps(r.lines))
    assert_complete(r)
    got = collections.Counter(tuple(e["argv"]) for e in r.events)
    assert got == collections.Counter(("/bin/true", f"{k}-{mark}") for k in (
        "pre-existing", "child", "subshell", "orphan")), got
    (pre,) = [e for e in r.events if e["argv"][1].startswith("pre-existing")]
    assert {pre["pid"], pre["ppid"]} & {int(k) for k in kids.split()}


def test_cmds_closes_are_its_own_and_nothing_of_rbtraces(kernel_ok, tmp_path):
    """`tp 'syscalls:sys_enter_close*' -- CMD` sees the calls strace -f
    sees: nothing from the held child between its release and its exec (a
    close() there once showed), nothing of rbtrace's own."""
    cmd = ["/bin/sh", "-c", "cat /etc/hostname >/dev/null; ls / >/dev/null"]
    p, r = traced("tp", tmp_path / "tp.json", cmd, extra=["syscalls:sys_enter_close*"])
    assert p.returncode == 0, p.stderr.decode()
    assert r.summary["dropped"] == 0 and r.summary["missed_by_kernel"] == 0
    ours = collections.Counter((e["event"].split(":")[1][len("sys_enter_"):], e["args"]["fd"])
                               for e in r.events if e["event"].endswith("close"))
    log = tmp_path / "strace.log"
    assert strace_run(log, cmd, "close").returncode == 0
    theirs = collections.Counter(("close", int(m[1])) for m in
                                 re.finditer(r"^\d+ +close\((\d+)\)", log.read_text(), re.M))
    assert ours == theirs and sum(theirs.values()) > 5


def test_rbtrace_never_reports_itself(rbtrace, tmp_path):
    """rbtrace's own opens (its user-name lookup in /etc/passwd among them)
    are not events: on a write path they would feed back into the trace."""
    marker = tmp_path / ("self-" + uuid.uuid4().hex[:8])
    t = rbtrace("open", "--json")
    for _ in range(3):
        subprocess.run(["/bin/cat", str(marker)], stderr=subprocess.DEVNULL)
        time.sleep(0.2)
    r = t.stop()
    assert [e["path"] for e in r.events if e["path"] == str(marker)] == [str(marker)] * 3
    assert not [e for e in r.events if e["pid"] == t.proc.pid]
