"""`rbtrace trace exec,open,exit` against strace, and the process key.

Three workloads (the issue's): a shell script with subshells, a pipe, a
failed exec and exit codes; make -j2 over gcc compiles; a python script
using multiprocessing by fork, spawn and forkserver.  Each runs once
under `strace -f` and once as rbtrace's followed command, and both must
see the same exit status, and the same execs (filename, argv, result),
opens (path, result) and exit codes as multisets, and the same
processes, each with its execs, opens and exit (rbtrace's joined by the
process key, strace's by thread group).  rbtrace's one stream must also
be causal: seq numbers unique and in order for each thread, a process's
exec before the dynamic loader of its new program opens anything, and
its exit its last event; the process key joins a process's exec, opens
and exit, including when a thread that is not the leader execs.
"""
import collections
import os
import re
import shutil
import subprocess

import pytest

from conftest import parse_json_lines, run_cli, strace_args, strace_whole_lines

STRACE = shutil.which("strace")
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}
if os.environ.get("RBTRACE_CACHE_DIR"):
    ENV["RBTRACE_CACHE_DIR"] = os.environ["RBTRACE_CACHE_DIR"]

SCRIPT = r"""
cat /etc/hostname > /dev/null
(ls /nonexistent-rbtrace-trace 2>/dev/null; exit 4)
echo hello | tr a-z A-Z > /dev/null
/bin/sh -c 'exit 7'
/nonexistent/rbtrace-prog 2>/dev/null
head -c1 /etc/passwd > /dev/null
( exit 9 )
exit 3
"""

# make -s -j2 -k (-s: no recipe echoed into rbtrace's JSON): four gcc
# compiles two at a time (each gcc runs cc1 and as, through temporary
# files), a link (collect2, ld) and the program it made, a recipe with a
# pipe, and one that fails with 6, which -k carries on past (make then
# exits 2).  Every target is built whatever the order.
SOURCES = {
    "common.h": "#define K 40\n",
    "main.c": "int f1(void), f2(void), f3(void);\n"
              "int main(void) { return f1() + f2() + f3() - 126; }\n",
    **{f"f{i}.c": f'#include "common.h"\nint f{i}(void) {{ return K + {i}; }}\n'
       for i in (1, 2, 3)},
    "Makefile": "all: prog words.txt broken.txt\n"
                "prog: main.o f1.o f2.o f3.o\n"
                "\tgcc -o $@ main.o f1.o f2.o f3.o\n"
                "\t./prog\n"
                "%.o: %.c common.h\n"
                "\tgcc -c -O1 -o $@ $<\n"
                "words.txt: f1.c f2.c\n"
                "\tcat f1.c f2.c | tr -s ' ' '\\n' | sort > $@\n"
                "broken.txt:\n"
                "\tsh -c 'exit 6'\n",
}

# multiprocessing's three ways to start a process: a fork Pool whose
# workers each open a file as they start and then files for their tasks
# (which worker gets which task is the scheduler's choice), and a Process
# each by fork, spawn (an exec of python) and forkserver (a python server
# that forks it), exiting with their own codes.  The forkserver and the
# resource tracker (spawn's) are stopped before the script ends, as
# strace -f waits for them while rbtrace ends with its command.
MULTIPROCESSING = r"""
import multiprocessing as mp, multiprocessing.forkserver, multiprocessing.resource_tracker
import sys

DATA = sys.argv[1]


def opened(name):
    try:
        with open(f"{DATA}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def start():
    opened("worker")


def leave(code, name):
    opened(name)
    sys.exit(code)


if __name__ == "__main__":
    pool = mp.get_context("fork").Pool(2, initializer=start)
    got = pool.map(opened, ["task-1", "task-2", "missing-task", "task-3"], chunksize=1)
    pool.close()
    pool.join()
    procs = [mp.get_context(how).Process(target=leave, args=(code, name))
             for how, code, name in (("fork", 3, "fork"), ("fork", 5, "missing-fork"),
                                     ("spawn", 7, "spawn"), ("forkserver", 11, "forkserver"))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    multiprocessing.forkserver._forkserver._stop()
    multiprocessing.resource_tracker._resource_tracker._stop()
    ok = got == [b"1", b"2", None, b"3"] and [p.exitcode for p in procs] == [3, 5, 7, 11]
    sys.exit(13 if ok else 1)
"""

# A thread that is not the leader execs: the kernel makes it the leader
# (de_thread), and the process is the same one, with one key.
THREAD_EXEC = r"""
import os, threading
open("/etc/hostname").close()
def go():
    os.execv("/bin/sh", ["sh", "-c", "exit 5"])
threading.Thread(target=go).start()
threading.Event().wait()
"""

_LINE = re.compile(r"^(\d+) +(\w+)\((.*)\) += (-?\d+|\?)(?: (E\w+))?")
_EXITED = re.compile(r"^(\d+) +\+\+\+ (exited with (\d+)|killed by (SIG\w+).*) \+\+\+$")
# The calls, and clone/clone3 to tell a thread from a process:
# strace prints "+++ exited" for every thread, rbtrace's exit is once per
# process.  They add lines to strace's log and change nothing compared.
STRACE_CALLS = "execve,execveat,open,openat,openat2,creat,exit_group,clone,clone3"


def strace_events(tmp_path, argv):
    """(events, exit status) of `strace -f` running argv: events are
    (process, kind, what) in strace's order, as rbtrace_events gives them.
    process is the thread group id; what is (filename, argv, result) for
    an exec, (path, result) for an open, the exit code or signal for an
    exit; a result is the return value or the errno name."""
    if STRACE is None:
        pytest.fail("strace is not installed (make setup-test installs it)")
    log = tmp_path / "strace.log"
    p = subprocess.run([STRACE, "-f", "-q", "-xx", "-s", "65536", "-v", "-e",
                        f"trace={STRACE_CALLS}", "-o", str(log), *argv],
                       env=ENV, capture_output=True, timeout=120)
    calls = []
    for line in strace_whole_lines(log.read_text()):
        m = _EXITED.match(line)
        if m:
            calls.append((int(m.group(1)), "+++", int(m.group(3)) if m.group(3) else m.group(4)))
            continue
        m = _LINE.match(line)
        if m and m.group(2) != "exit_group":
            result = m.group(5) or (int(m.group(4)) if m.group(4) != "?" else None)
            calls.append((int(m.group(1)), m.group(2), (m.group(3), result)))
    # Each thread's creator (a thread's lines may come before the clone
    # that made it returns), hence its process: the creator's, up the chain.
    creator = {what[1]: tid for tid, call, what in calls
               if call in ("clone", "clone3") and "CLONE_THREAD" in what[0]
               and isinstance(what[1], int) and what[1] > 0}
    events = []
    for tid, call, what in calls:
        pid = tid
        while pid in creator:
            pid = creator[pid]
        if call == "+++":
            if tid not in creator:                  # a thread's end is no exit
                events.append((pid, "exit", what))
            continue
        text, result = what
        if call in ("clone", "clone3"):
            continue
        args = strace_args(text)
        if call == "execve":
            events.append((pid, "exec", (args[0], tuple(args[1]), result)))
        elif call == "execveat":
            events.append((pid, "exec", (args[1], tuple(args[2]), result)))
        elif call in ("openat", "openat2"):
            events.append((pid, "open", (args[1], result)))
        else:
            events.append((pid, "open", (args[0], result)))
    return events, p.returncode


def rbtrace_events(events):
    """rbtrace's JSON events as strace_events gives strace's."""
    out = []
    for e in events:
        if e["type"] == "exec":
            what = (e["filename"].encode(), tuple(a.encode() for a in e["argv"]),
                    e["errno"] or e["ret"])
        elif e["type"] == "open":
            what = (e["path"].encode(), e["errno"] or e["ret"])
        elif e["type"] == "exit":
            what = e["exit_code"] if e["signal"] is None else e["signal"]
        else:
            continue
        out.append((e["process"], e["type"], what))
    return out


def _normalised(kind, what, normalise):
    if kind == "exec":
        return (normalise(what[0]), tuple(normalise(a) for a in what[1]), what[2])
    if kind == "open":
        return (normalise(what[0]), what[1])
    return what


def multisets(events, normalise=bytes):
    """(execs, opens, exit codes), each a Counter."""
    out = {"exec": collections.Counter(), "open": collections.Counter(),
           "exit": collections.Counter()}
    for _, kind, what in events:
        out[kind][_normalised(kind, what, normalise)] += 1
    return out["exec"], out["open"], out["exit"]


def processes(events, normalise=bytes, anywhere=()):
    """The processes as a Counter of (its execs in order, its opens as a
    multiset, its exits): what joining events by process gives.  Opens of
    a path in `anywhere` are left out: which process makes them is the
    scheduler's choice (tasks handed to a pool's workers)."""
    by = collections.defaultdict(lambda: {"exec": [], "open": [], "exit": []})
    for process, kind, what in events:
        what = _normalised(kind, what, normalise)
        if not (kind == "open" and what[0] in anywhere):
            by[process][kind].append(what)
    return collections.Counter(
        (tuple(p["exec"]), frozenset(collections.Counter(p["open"]).items()), tuple(p["exit"]))
        for p in by.values())


def trace(*argv, kinds="exec,open,exit"):
    p = run_cli("trace", kinds, "--json", "--", *argv, env=ENV)
    r = parse_json_lines(p.stdout.decode())
    r.returncode, r.stderr = p.returncode, p.stderr.decode(errors="replace")
    return r


def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def check_stream(r):
    """What holds in any rbtrace trace stream: nothing lost, seq unique
    and increasing for each thread, keys well formed."""
    s = r.summary
    assert s["dropped"] == 0 and s["delivered"] == len(r.events) == s["submitted"], s
    seqs = [e["seq"] for e in r.events]
    assert sorted(seqs) == list(range(len(seqs))), "seq: one number per event, no gap"
    last = {}
    for e in r.events:
        assert e["seq"] > last.get(e["tid"], -1), f"seq out of order in thread {e['tid']}"
        last[e["tid"]] = e["seq"]
        boot, start, pid = e["process"].rsplit("-", 2)
        assert boot == boot_id() and int(pid) == e["pid"] and int(start) > 0, e


def check_causal(r):
    """Per process (its key), the stream is causal: one exit, its last
    event; the dynamic loader opens its cache only in a new program, so at
    least once after each successful exec (every program run here is
    dynamically linked) and never before the first (a forked child that
    does not exec runs no loader).  And the key is the process: every pid's
    events are under one key (no pid is reused in a test's run)."""
    by_key = collections.defaultdict(list)
    for e in r.events:
        by_key[e["process"]].append(e)
    for key, evs in by_key.items():
        types = [e["type"] for e in evs]
        assert types.count("exit") == 1 and types[-1] == "exit", (key, types)
        programs = [[]]                     # the events before each exec, after the last
        for e in evs:
            if e["type"] == "exec" and e["ret"] == 0:
                programs.append([])
            else:
                programs[-1].append(e)
        loads = [sum(e["type"] == "open" and e["path"] == "/etc/ld.so.cache" for e in part)
                 for part in programs]
        assert loads[0] == 0 and all(n >= 1 for n in loads[1:]), (key, types)
    pids = collections.defaultdict(set)
    for e in r.events:
        pids[e["pid"]].add(e["process"])
    assert all(len(keys) == 1 for keys in pids.values()), pids


def matches_strace(tmp_path, argv, normalise=bytes, anywhere=(), fresh=lambda: None):
    """Run argv under rbtrace trace exec,open,exit, then under strace -f
    (`fresh()` before each: the same starting state), and check that they
    saw the same: exit status, execs, opens and exit codes as multisets,
    and each process's own execs, opens and exit (see processes()).  The
    rbtrace stream must be whole and causal.  `normalise` maps a path or
    argument to what both runs have in common, for names that are random
    by design; it is applied to both sides alike.  Returns (rbtrace's
    result, its multisets)."""
    fresh()
    r = trace(*argv)
    check_stream(r)
    check_causal(r)
    fresh()
    events, status = strace_events(tmp_path, argv)
    assert r.returncode == status, r.stderr
    got = rbtrace_events(r.events)
    want, have = multisets(events, normalise), multisets(got, normalise)
    for name, w, g in zip(("execs", "opens", "exit codes"), want, have):
        assert g == w, f"{name}: only strace {w - g}, only rbtrace {g - w}"
    w, g = processes(events, normalise, anywhere), processes(got, normalise, anywhere)
    assert g == w, f"processes: only strace {w - g}, only rbtrace {g - w}"
    return r, have


def test_exec_open_exit_match_strace_and_are_causal(kernel_ok, tmp_path):
    r, got = matches_strace(tmp_path, ["/bin/sh", "-c", SCRIPT])
    assert r.returncode == 3, r.stderr
    assert got[2][3] == 1 and got[2][4] == 1 and got[2][7] == 1 and got[2][9] == 1
    assert got[2][127] == 1                         # the exec that failed
    assert any(k[2] == "ENOENT" for k in got[0])


def test_a_thread_that_execs_stays_the_same_process(kernel_ok):
    r = trace("/usr/bin/python3", "-c", THREAD_EXEC)
    assert r.returncode == 5, r.stderr
    check_stream(r)
    python = [e for e in r.events if e["type"] == "exec" and e["argv"][:1] == ["/usr/bin/python3"]
              or e["type"] == "exec" and e["filename"] == "/usr/bin/python3"]
    assert len(python) == 1, [e for e in r.events if e["type"] == "exec"]
    key = python[0]["process"]
    marker = [e for e in r.events if e["type"] == "open" and e["path"] == "/etc/hostname"]
    sh = [e for e in r.events if e["type"] == "exec" and e["argv"] == ["sh", "-c", "exit 5"]]
    exits = [e for e in r.events if e["type"] == "exit"]
    assert len(marker) == 1 and len(sh) == 1 and len(exits) == 1, r.events
    # The exec came from a thread that was not the leader; after it, the
    # pid is the process's and the key is unchanged.
    assert sh[0]["pid"] == python[0]["pid"] == exits[0]["pid"]
    assert marker[0]["process"] == sh[0]["process"] == exits[0]["process"] == key
    assert exits[0]["exit_code"] == 5


def test_tcp_joins_the_stream(kernel_ok):
    """A fourth kind in the same ring: its connect comes between the
    process's exec and exit, under the same key."""
    code = ("import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 9))\n"
            "except OSError:\n    pass\n")
    r = trace("/usr/bin/python3", "-c", code, kinds="exit,tcp,exec")
    assert r.returncode == 0, r.stderr
    check_stream(r)
    types = [e["type"] for e in r.events]
    assert types[0] == "exec" and types[-1] == "exit" and "tcp" in types, types
    assert len({e["process"] for e in r.events}) == 1


def test_kind_options_need_their_kind(kernel_ok):
    p = run_cli("trace", "exec,exit", "--path", "/etc", "--json", "--", "/bin/true")
    assert p.returncode == 2
    assert p.stderr.decode().strip().splitlines() == [
        "rbtrace: --path is an option of open, which is not among the kinds traced (exec,exit)"]
    p = run_cli("trace", "exec,bogus", "--json", "--", "/bin/true")
    assert p.returncode == 2 and b"unknown kind 'bogus'" in p.stderr
    assert len(p.stderr.splitlines()) == 1


def test_a_kind_option_filters_its_kind_only(kernel_ok):
    """--path narrows open's events; exec's and exit's stay whole."""
    r = trace("/bin/sh", "-c", "cat /etc/hostname >/dev/null; cat /etc/passwd >/dev/null")
    full = collections.Counter(e["type"] for e in r.events)
    p = run_cli("trace", "exec,open,exit", "--path", "/etc/passwd", "--json", "--",
                "/bin/sh", "-c", "cat /etc/hostname >/dev/null; cat /etc/passwd >/dev/null",
                env=ENV)
    f = parse_json_lines(p.stdout.decode())
    narrowed = collections.Counter(e["type"] for e in f.events)
    assert narrowed["exec"] == full["exec"] == 3 and narrowed["exit"] == full["exit"] == 3
    assert [e["path"] for e in f.events if e["type"] == "open"] == ["/etc/passwd"]


def test_tracepoints_join_the_stream(kernel_ok):
    """A CATEGORY:EVENT word traces that tracepoint in the same ring, as
    rbtrace tp does: each fork the shell makes is one sched_process_fork
    line, whose child is a process that exits, and which comes before the
    child's own events."""
    r = trace("/bin/sh", "-c", "/bin/true; (exit 2); /bin/true",
              kinds="exec,sched:sched_process_fork,exit")
    assert r.returncode == 0, r.stderr
    check_stream(r)
    forks = [e for e in r.events if e["type"] == "tp"]
    exits = [e for e in r.events if e["type"] == "exit"]
    # Every process but the root was forked by a followed one (how many
    # the shell forks is its own business: 2 or 3).
    assert len(forks) == len(exits) - 1 >= 2, [e["type"] for e in r.events]
    children = {e["args"]["child_pid"] for e in forks}
    root = r.summary["command"]["pid"]
    assert children == {e["pid"] for e in exits} - {root}
    for fork in forks:
        assert fork["pid"] == root and fork["process"] == exits[-1]["process"]
        child = [i for i, e in enumerate(r.events) if e["pid"] == fork["args"]["child_pid"]]
        assert r.events.index(fork) < min(child)
    assert sorted(e["exit_code"] for e in exits)[-1] == 2
    assert sorted(e["exit_code"] for e in exits).count(2) == 1


def test_make_j2_matches_strace(kernel_ok, tmp_path):
    """make -j2 -k over gcc compiles, in a fresh tree each run.  gcc names
    its temporary files ccXXXXXX.s/.res/... with random letters (mkstemps),
    and passes them to as, collect2 and ld in their argv: those six letters,
    in paths under the run's own TMPDIR, are the one thing normalised, on
    both sides alike.  Everything else must be equal."""
    src, tmp = tmp_path / "src", tmp_path / "tmp"

    def fresh():
        for d in (src, tmp):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        for name, text in SOURCES.items():
            (src / name).write_text(text)

    temp = re.compile(re.escape(os.fsencode(tmp)) + rb"/cc[A-Za-z0-9]{6}\.")

    def normalise(b):
        return temp.sub(os.fsencode(tmp) + b"/ccXXXXXX.", b)

    argv = ["/usr/bin/env", "-i", "-C", str(src), "PATH=/usr/bin:/bin", "LANG=C",
            f"TMPDIR={tmp}", "make", "-s", "-k", "-j2"]
    r, (execs, opens, exits) = matches_strace(tmp_path, argv, normalise, fresh=fresh)
    assert r.returncode == 2, r.stderr
    programs = collections.Counter(os.path.basename(f) for f, _, ret in execs if ret == 0)
    assert programs[b"gcc"] == 5 and programs[b"cc1"] == 4 and programs[b"as"] == 4, programs
    assert programs[b"ld"] == 1 and programs[b"prog"] == 1, programs
    assert exits[6] == 1 and exits[2] == 1 and sum(exits.values()) == exits[0] + 2, exits
    made = {p for p, ret in opens if isinstance(ret, int)}
    assert {b"main.o", b"f1.o", b"prog", b"words.txt", b"common.h"} <= made, made
    # gcc's temporary files were there, and normalised: per compile, a .s
    # that gcc creates, cc1 writes and as reads.
    assert sum(n for (p, _), n in opens.items() if b"/ccXXXXXX.s" in p) == 12, opens


def test_python_multiprocessing_matches_strace(kernel_ok, tmp_path):
    """Python's multiprocessing, by fork, spawn and forkserver.  python -I
    -S -B: no user site, no site-packages, no .pyc written (a first run that
    wrote one would open files the second does not).  Names random by
    design, normalised on both sides alike: glibc's sem_open makes each
    semaphore as /dev/shm/sem.XXXXXX (six random letters, mkstemp's) before
    it links it to its name; Python's tempfile, in the run's own TMPDIR,
    makes pymp-XXXXXXXX (the forkserver's socket directory) and first tries
    an XXXXXXXX file there (eight random letters of a-z0-9_)."""
    data, tmp = tmp_path / "data", tmp_path / "tmp"
    data.mkdir()
    tmp.mkdir()
    sem = re.compile(rb"^/dev/shm/sem\.[A-Za-z0-9]{6}$")
    temp = re.compile(re.escape(os.fsencode(tmp)) + rb"/(pymp-)?[a-z0-9_]{8}$")

    def normalise(b):
        return temp.sub(os.fsencode(tmp) + rb"/\1XXXXXXXX", sem.sub(b"/dev/shm/sem.XXXXXX", b))

    for name, text in (("worker", "w"), ("task-1", "1"), ("task-2", "2"), ("task-3", "3"),
                       ("fork", "f"), ("spawn", "s"), ("forkserver", "k")):
        (data / name).write_text(text)
    script = tmp_path / "mp.py"
    script.write_text(MULTIPROCESSING)
    tasks = {os.fsencode(data / n) for n in ("task-1", "task-2", "task-3", "missing-task")}
    argv = ["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "LANG=C", f"TMPDIR={tmp}",
            "/usr/bin/python3", "-I", "-S", "-B", str(script), str(data)]
    r, (execs, opens, exits) = matches_strace(tmp_path, argv, normalise, anywhere=tasks)
    assert r.returncode == 13, r.stderr
    for code in (3, 5, 7, 11, 13):
        assert exits[code] == 1, exits
    # Nine processes: env (which became the script's python), the Pool's
    # two workers, the forkserver and the resource tracker (exit 0), the
    # four Processes; the Pool's threads made no exit.
    assert sum(exits.values()) == 9 and exits[0] == 4, exits
    pythons = [a for f, a, ret in execs if f == b"/usr/bin/python3" and ret == 0]
    assert len(pythons) == 4, pythons             # the script, spawn's, forkserver, tracker
    assert sum(n for (p, _), n in opens.items() if p == os.fsencode(data / "worker")) == 2
    assert opens[(os.fsencode(data / "missing-fork"), "ENOENT")] == 1, opens
    # The random names were there, and normalised.
    assert any(p == b"/dev/shm/sem.XXXXXX" for p, _ in opens), opens
    assert any(p == os.fsencode(tmp / "pymp-XXXXXXXX") for p, _ in opens), opens
