"""`rbtrace trace exec,open,exit` against strace, and the process key.

A shell script with subshells, a pipe, a failed exec and exit codes runs
once under `strace -f` and once as rbtrace's followed command: the execs
(filename, argv, result), the opens (path, result) and the exit codes
must be equal as multisets.  rbtrace's one stream must also be causal:
seq numbers unique and in order for each thread, a process's exec before
the dynamic loader of its new program opens anything, and its exit its
last event; the process key joins a process's exec, opens and exit,
including when a thread that is not the leader execs.
"""
import collections
import os
import re
import shutil
import subprocess

import pytest

from conftest import parse_json_lines, run_cli, strace_args

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


def _whole_lines(text):
    """strace -f lines with each call whole (unfinished/resumed joined)."""
    lines, pending = [], {}
    for line in text.splitlines():
        m = re.match(r"^(\d+) +(.*) <(unfinished|pid changed to (\d+)) \.\.\.>$", line)
        if m:
            pending[m.group(4) or m.group(1)] = (m.group(1), m.group(2))
            continue
        m = re.match(r"^(\d+) +<\.\.\. \w+ resumed>(.*)$", line)
        if m:
            pid, head = pending.pop(m.group(1))
            line = f"{pid} {head}{m.group(2)}"
        lines.append(line)
    return lines


def strace_view(tmp_path, argv):
    """(execs, opens, exit codes) as multisets, from strace -f."""
    if STRACE is None:
        pytest.fail("strace is not installed (make setup-test installs it)")
    log = tmp_path / "strace.log"
    subprocess.run([STRACE, "-f", "-q", "-xx", "-s", "65536", "-v", "-e",
                    "trace=execve,execveat,open,openat,openat2,creat,exit_group",
                    "-o", str(log), *argv], env=ENV, capture_output=True, timeout=120)
    execs, opens, exits = collections.Counter(), collections.Counter(), collections.Counter()
    for line in _whole_lines(log.read_text()):
        m = _EXITED.match(line)
        if m:
            exits[int(m.group(3)) if m.group(3) else m.group(4)] += 1
            continue
        m = _LINE.match(line)
        if not m or m.group(2) == "exit_group":
            continue
        call, args, ret, err = m.group(2), strace_args(m.group(3)), m.group(4), m.group(5)
        result = err if err else int(ret)
        if call == "execve":
            execs[(args[0], tuple(args[1]), result)] += 1
        elif call == "execveat":
            execs[(args[1], tuple(args[2]), result)] += 1
        elif call in ("openat", "openat2"):
            opens[(args[1], result)] += 1
        else:
            opens[(args[0], result)] += 1
    return execs, opens, exits


def rbtrace_view(events):
    execs, opens, exits = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e["type"] == "exec":
            execs[(e["filename"].encode(), tuple(a.encode() for a in e["argv"]),
                   e["errno"] or e["ret"])] += 1
        elif e["type"] == "open":
            opens[(e["path"].encode(), e["errno"] or e["ret"])] += 1
        elif e["type"] == "exit":
            exits[e["exit_code"] if e["signal"] is None else e["signal"]] += 1
    return execs, opens, exits


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


def test_exec_open_exit_match_strace_and_are_causal(kernel_ok, tmp_path):
    argv = ["/bin/sh", "-c", SCRIPT]
    r = trace(*argv)
    assert r.returncode == 3, r.stderr
    check_stream(r)
    want = strace_view(tmp_path, argv)
    got = rbtrace_view(r.events)
    for name, w, g in zip(("execs", "opens", "exit codes"), want, got):
        assert g == w, f"{name}: only strace {w - g}, only rbtrace {g - w}"
    assert got[2][3] == 1 and got[2][4] == 1 and got[2][7] == 1 and got[2][9] == 1
    assert got[2][127] == 1                         # the exec that failed
    assert any(k[2] == "ENOENT" for k in got[0])

    by_key = collections.defaultdict(list)
    for i, e in enumerate(r.events):
        by_key[e["process"]].append((i, e))
    for key, evs in by_key.items():
        types = [e["type"] for _, e in evs]
        # Its exit is its last event, and it has one.
        assert types.count("exit") == 1 and types[-1] == "exit", (key, types)
        execs = [i for i, e in evs if e["type"] == "exec" and e["ret"] == 0]
        loader = [i for i, e in evs if e["type"] == "open" and e["path"] == "/etc/ld.so.cache"]
        # The dynamic loader opens its cache only in a new program: after
        # the process's exec, and never in a process that did not exec.
        if execs:
            assert loader and min(loader) > max(execs), (key, types)
        else:
            assert not loader, (key, types)
    # The key joins: every process that exec'd has its exit under that key,
    # and every pid's events are one process (no pid was reused here).
    pids = collections.defaultdict(set)
    for e in r.events:
        pids[e["pid"]].add(e["process"])
    assert all(len(keys) == 1 for keys in pids.values()), pids


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
