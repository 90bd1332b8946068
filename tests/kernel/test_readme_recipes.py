"""Every rbtrace command line in README.md, run against a real workload.

The recipes are read from README.md's code blocks (a line whose first word
is `rbtrace` or ends in `/rbtrace`; a trailing `# comment` is the README's,
not the command's), so a recipe added to the README is picked up here: it
fails `test_every_readme_recipe_has_a_check` until CHECKS says what its
output must be.  Each check runs the recipe as written (`.venv/bin/rbtrace`
is this checkout's rbtrace, `1234` in `--pid 1234` is the workload's pid),
gives it a workload whose every event is known in advance (pids from
fork/Popen, argv, paths, users, exit statuses), and compares the recipe's
output with those events exactly.  Host-wide recipes also see other
processes' events: those are checked for what the recipe promises (the
filter holds) and the workload's own lines must be there exactly.
"""
import errno
import json
import os
import pwd
import re
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
import test_docs as docs  # noqa: E402  (the man page reader, split_pipeline)

README = os.path.join(REPO, "README.md")
RBTRACE = [sys.executable, "-m", "rbtrace"]


def _strip_comment(line):
    """The line without a trailing `# comment` (a # outside quotes that
    starts a word, as a shell reads it)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def readme_recipes():
    """[(command line without comment, rbtrace args, pipeline tail)]."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    out = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            command = _strip_comment(line)
            first = command.split(None, 1)[:1]
            if not first or not (first[0] == "rbtrace" or first[0].endswith("/rbtrace")):
                continue
            words, tail = docs.split_pipeline(command)
            out.append((command.split(None, 1)[1], words[1:], tail))
    return out


RECIPES = readme_recipes()


# --- running a recipe ------------------------------------------------------

def _marker():
    return "rbreadme-" + uuid.uuid4().hex[:8]


class Running:
    """rbtrace with a recipe's arguments; stdout read all along (a full pipe
    would make it drop events), stderr kept."""

    def __init__(self, args, cwd=REPO):
        self.proc = subprocess.Popen(RBTRACE + list(args), cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = b""

    def _read(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if r:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            self.out += chunk
            return chunk
        return None

    def wait_first_line(self, timeout=120):
        """The first line (the plain header, or the JSON start line) is
        written once the probes are attached."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.out:
            assert time.monotonic() < deadline, "rbtrace did not start"
            if self._read(0.2) == b"":
                raise AssertionError(f"rbtrace ended before starting: "
                                     f"{self.proc.stderr.read().decode(errors='replace')}")
        return self

    def finish(self, interrupt=True, timeout=120):
        """SIGINT (unless it ends by itself), then everything it wrote."""
        if interrupt and self.proc.poll() is None:
            time.sleep(0.3)          # the workload's last events reach the ring
            self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self._read(0.5) != b"":
            assert time.monotonic() < deadline, "rbtrace did not end"
        self.returncode = self.proc.wait(timeout=timeout)
        self.stderr = self.proc.stderr.read().decode(errors="replace")
        return self

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def running():
    started = []

    def start(args, cwd=REPO):
        r = Running(args, cwd)
        started.append(r)
        return r
    yield start
    for r in started:
        r.kill()


_EVENT_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} ")


def plain_rows(out: bytes, others=None):
    """Plain lines as dicts by the header's column names (the last column
    takes the rest of the line).  With `-- CMD`, the command's own output
    shares stdout: lines that are not events go to `others`."""
    lines = out.decode().splitlines()
    header = lines[0].split()
    assert header[0] == "TIME", lines[0]
    rows = []
    for ln in lines[1:]:
        if _EVENT_LINE.match(ln):
            rows.append(dict(zip(header, ln.split(None, len(header) - 1))))
        elif others is not None:
            others.append(ln)
        else:
            raise AssertionError(f"not an event line: {ln!r}")
    return rows


def json_lines(out: bytes):
    return [json.loads(ln) for ln in out.splitlines() if ln.strip()]


def run_tail(tail, data: bytes):
    """The recipe's pipeline after rbtrace, over rbtrace's real output;
    every stage must succeed."""
    script = f"{tail}\necho \"pipeline-status: ${{PIPESTATUS[*]}}\" >&2\n"
    p = subprocess.run(["bash", "-c", script], input=data, capture_output=True, timeout=120)
    err = p.stderr.decode(errors="replace")
    status = err.strip().splitlines()[-1]
    assert set(status.split(": ")[1].split()) == {"0"}, f"{tail}\n{err}"
    return p.stdout.decode()


def exec_known(argv, uid=None, cwd=None):
    """fork + execv in the child: its pid is the exec event's pid, the
    exec's argv and result are ours.  Returns (pid, exit status)."""
    pid = os.fork()
    if pid == 0:
        try:
            if cwd:
                os.chdir(cwd)
            if uid is not None:
                os.setgroups([])
                os.setgid(pwd.getpwuid(uid).pw_gid)
                os.setuid(uid)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def write_makefile(tmp, rules):
    with open(os.path.join(tmp, "Makefile"), "w") as f:
        f.write(rules)


# --- what each recipe must show -------------------------------------------

def check_exec_table(recipe, tmp, running):
    """`exec`: on a pipe, plain lines; the workload's exec is one line with
    its pid, parent, user, name, result, file and arguments."""
    r = running(recipe).wait_first_line()
    mark = _marker()
    pid, status = exec_known(["/bin/true", mark, "one"])
    r.finish()
    assert r.returncode == 130 and status == 0, r.stderr
    rows = plain_rows(r.out)
    mine = [row for row in rows if row["PID"] == str(pid)]
    assert mine == [{"TIME": mine[0]["TIME"], "PID": str(pid), "PPID": str(os.getpid()),
                     "USER": pwd.getpwuid(os.getuid()).pw_name, "COMM": "true", "RET": "0",
                     "FILENAME": "/bin/true", "ARGV": f"/bin/true {mark} one"}], rows


def check_exec_jq(recipe, tmp, running, tail):
    """`exec --json | jq -c 'select(.type == "exec") | {pid, argv}'`: one
    {pid, argv} per exec event, and nothing else (no nulls from the start
    and summary lines)."""
    r = running(recipe).wait_first_line()
    mark = _marker()
    pid, _ = exec_known(["/bin/true", mark, "two words"])
    r.finish()
    assert r.returncode == 130, r.stderr
    execs = [e for e in json_lines(r.out) if e["type"] == "exec"]
    got = [json.loads(ln) for ln in run_tail(tail, r.out).splitlines()]
    assert got == [{"pid": e["pid"], "argv": e["argv"]} for e in execs]
    assert got.count({"pid": pid, "argv": ["/bin/true", mark, "two words"]}) == 1, got


def check_exec_failed(recipe, tmp, running):
    """`exec --failed -d 10`: the failed exec, not the successful one; it
    ends by itself after 10 s (exit 0)."""
    r = running(recipe).wait_first_line()
    mark = _marker()
    missing = os.path.join(str(tmp), f"missing-{mark}")
    bad, bad_status = exec_known([missing, "x"])
    good, good_status = exec_known(["/bin/true", mark])
    r.finish(interrupt=False)
    assert (bad_status, good_status) == (127, 0)
    assert r.returncode == 0, r.stderr           # it ended by itself: -d 10
    rows = plain_rows(r.out)
    assert all(row["RET"] != "0" for row in rows), rows
    mine = [row for row in rows if row["PID"] in (str(bad), str(good))]
    assert [(m["PID"], m["RET"], m["FILENAME"], m["ARGV"]) for m in mine] == \
        [(str(bad), "ENOENT", missing, f"{missing} x")], rows


def check_exec_user(recipe, tmp, running):
    """`exec -u www-data -c 100`: that user's execs only."""
    user = pwd.getpwnam("www-data")
    r = running(recipe).wait_first_line()
    mark = _marker()
    theirs, s1 = exec_known(["/bin/true", mark, "www"], uid=user.pw_uid)
    ours, s2 = exec_known(["/bin/true", mark, "root"])
    r.finish()
    assert r.returncode == 130 and (s1, s2) == (0, 0), r.stderr
    rows = plain_rows(r.out)
    assert rows and all(row["USER"] == "www-data" for row in rows), rows
    mine = [row for row in rows if mark in row["ARGV"]]
    assert [(m["PID"], m["ARGV"]) for m in mine] == [(str(theirs), f"/bin/true {mark} www")]


def check_doctor(recipe, tmp, running):
    """`doctor`: every check of rbtrace-doctor(8), in order; the facts it
    states about this machine are this machine's."""
    import platform
    p = subprocess.run(RBTRACE + recipe, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    names = [e.tag for e in docs.load("rbtrace-doctor").entries("CHECKS")]
    got = [re.split(r"\s{2,}", ln.split(None, 1)[1])[0] for ln in lines]
    assert got == names, p.stdout
    by = dict(zip(got, lines))
    assert by["privileges"].split()[:3] == ["ok", "privileges", "root"]   # we are root
    assert platform.release() in by["kernel"]
    assert by["hook tracepoint"].startswith("ok ")


def check_exec_make(recipe, tmp, running):
    """`exec -- make -j2`: make and every program it runs, and make's exit
    status (a failing build: 2) as rbtrace's."""
    mark = _marker()
    write_makefile(tmp, f"all: a b\na:\n\t/bin/true {mark}-a\nb:\n\t/bin/false {mark}-b\n")
    untraced = subprocess.run(["make", "-j2"], cwd=tmp, capture_output=True, timeout=60)
    r = running(recipe, cwd=tmp).wait_first_line().finish(interrupt=False)
    assert untraced.returncode == 2
    assert r.returncode == untraced.returncode, r.stderr
    others = []
    rows = plain_rows(r.out, others)
    # make's own output (it echoes each command) shares the terminal.
    assert sorted(others) == [f"/bin/false {mark}-b", f"/bin/true {mark}-a"], others
    [make] = [row for row in rows if row["ARGV"] == "make -j2"]
    assert make["RET"] == "0"
    children = sorted((row["PPID"], row["RET"], row["ARGV"]) for row in rows if row is not make)
    assert children == [(make["PID"], "0", f"/bin/false {mark}-b"),
                        (make["PID"], "0", f"/bin/true {mark}-a")], rows


def check_exit_make(recipe, tmp, running):
    """`exit -x -- make -j2`: the processes of a failing build that failed,
    with the codes waitpid gives: the failing rule's program and make."""
    mark = _marker()
    write_makefile(tmp, f"all: a b\na:\n\t/bin/true {mark}-a\nb:\n\t/bin/false {mark}-b\n")
    untraced = subprocess.run(["make", "-j2"], cwd=tmp, capture_output=True, timeout=60)
    false_code = subprocess.run(["/bin/false"]).returncode
    r = running(recipe, cwd=tmp).wait_first_line().finish(interrupt=False)
    assert untraced.returncode == 2 and false_code == 1
    assert r.returncode == untraced.returncode, r.stderr
    others = []
    rows = plain_rows(r.out, others)
    assert sorted(others) == [f"/bin/false {mark}-b", f"/bin/true {mark}-a"], others
    assert [(row["COMM"], row["CODE/SIGNAL"]) for row in rows] == \
        [("false", str(false_code)), ("make", str(untraced.returncode))], rows
    [false, make] = rows
    assert false["PPID"] == make["PID"], rows


def check_open_make(recipe, tmp, running):
    """`open --json -o opens.json -- make`: make's own output on stdout,
    the events in the file: the file cat read, by cat, make's Makefile,
    and nothing from outside make's tree."""
    mark = _marker()
    with open(os.path.join(tmp, f"{mark}.txt"), "w") as f:
        f.write(f"hello {mark}\n")
    write_makefile(tmp, f"all:\n\t/bin/cat {mark}.txt\n")
    r = running(recipe, cwd=tmp)
    r.finish(interrupt=False)
    assert r.returncode == 0, r.stderr
    assert r.out.decode().splitlines() == [f"/bin/cat {mark}.txt", f"hello {mark}"]
    with open(os.path.join(tmp, "opens.json"), "rb") as f:
        lines = json_lines(f.read())
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "summary"
    summary = lines[-1]
    assert summary["command"]["argv"] == ["make"] and summary["command"]["status"] == 0
    make = summary["command"]["pid"]
    events = [e for e in lines if e["type"] == "open"]
    assert summary["delivered"] == len(events) and summary["dropped"] == 0
    assert all(e["pid"] == make or e["ppid"] == make for e in events), events
    cat = [e for e in events if e["path"] == f"{mark}.txt"]
    assert [(e["comm"], e["ppid"], e["ret"] >= 0) for e in cat] == [("cat", make, True)]
    assert [e["ret"] >= 0 for e in events if e["pid"] == make and e["path"] == "Makefile"] \
        == [True]


def check_trace_make(recipe, tmp, running):
    """`trace exec,open,exit --json -o run.jsonl -- make -j2`: one stream of
    make's tree in ring order: each program's exec, the file it opened,
    its exit with its code, joined by the process key; make's status."""
    mark = _marker()
    with open(os.path.join(tmp, f"{mark}.txt"), "w") as f:
        f.write(f"hello {mark}\n")
    write_makefile(tmp, f"all: a b\na:\n\t/bin/cat {mark}.txt\nb:\n\t/bin/false {mark}-b\n")
    untraced = subprocess.run(["make", "-j2"], cwd=tmp, capture_output=True, timeout=60)
    false_code = subprocess.run(["/bin/false"]).returncode
    r = running(recipe, cwd=tmp)
    r.finish(interrupt=False)
    assert untraced.returncode == 2 and r.returncode == 2, r.stderr
    with open(os.path.join(tmp, "run.jsonl"), "rb") as f:
        lines = json_lines(f.read())
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "summary"
    summary = lines[-1]
    assert summary["command"]["status"] == 2 and summary["dropped"] == 0
    events = [e for e in lines if e["type"] in ("exec", "open", "exit")]
    assert summary["delivered"] == len(events)
    by_key = {}
    for e in events:
        by_key.setdefault(e["process"], []).append(e)
    cat = [k for k, evs in by_key.items()
           if any(e["type"] == "exec" and e["argv"] == ["/bin/cat", f"{mark}.txt"] for e in evs)]
    false = [k for k, evs in by_key.items()
             if any(e["type"] == "exec" and e["argv"] == ["/bin/false", f"{mark}-b"]
                    for e in evs)]
    assert len(cat) == 1 and len(false) == 1, by_key
    for key, code in ((cat[0], 0), (false[0], false_code)):
        evs = by_key[key]
        execs = [i for i, e in enumerate(evs) if e["type"] == "exec" and e["ret"] == 0]
        # the new program's events after its exec; its exit, last
        assert evs[-1]["type"] == "exit" and evs[-1]["exit_code"] == code, evs
        assert execs and all(e["type"] != "exit" for e in evs[:-1]), evs
    opened = [e for e in by_key[cat[0]] if e["type"] == "open" and e["path"] == f"{mark}.txt"]
    assert [e["ret"] >= 0 for e in opened] == [True], by_key[cat[0]]
    [make_exit] = [e for e in events if e["type"] == "exit"
                   and e["pid"] == summary["command"]["pid"]]
    assert make_exit["exit_code"] == 2


def _recorded_make(tmp):
    """A recording as the README's trace recipe makes it, in tmp/run.jsonl:
    make's tree running cat (ok) and false (fails); (its lines, rbtrace's
    stderr)."""
    mark = _marker()
    with open(os.path.join(tmp, f"{mark}.txt"), "w") as f:
        f.write(f"hello {mark}\n")
    write_makefile(tmp, f"all: a b\na:\n\t/bin/cat {mark}.txt\nb:\n\t/bin/false {mark}-b\n")
    p = subprocess.run(RBTRACE + ["trace", "exec,open,exit", "--json", "-o", "run.jsonl", "--",
                                  "make", "-j2"], cwd=tmp, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    with open(os.path.join(tmp, "run.jsonl"), "rb") as f:
        return json_lines(f.read()), p.stderr


def _replay_rows(lines, keep):
    """The plain rows `rbtrace show` must print for the recording's events
    that `keep` keeps: pid, comm and type of each, in order."""
    return [(str(e["pid"]), e["comm"], e["type"]) for e in lines
            if e["type"] in ("exec", "open", "exit") and keep(e)]


def check_show(recipe, tmp, running):
    """`show run.jsonl`: on a pipe, the recording's events as plain lines
    in order, then the live run's end summary: make's tree, its status."""
    lines, live_err = _recorded_make(tmp)
    p = subprocess.run(RBTRACE + recipe, cwd=tmp, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = plain_rows(p.stdout)
    assert [(r["PID"], r["COMM"], r["TYPE"]) for r in rows] == _replay_rows(lines, bool)
    err = p.stderr.decode().splitlines()
    assert err[-1] == live_err.splitlines()[-1] and "make exited with status 2" in err[-1]
    assert any(ln.split()[-2:] == ["make", "-j2"] for ln in err), err


def check_show_failed(recipe, tmp, running):
    """`show run.jsonl -x --kinds exec,exit`: only the failed execs and
    exits of the recording (false's, make's), and a summary of them."""
    lines, _ = _recorded_make(tmp)
    p = subprocess.run(RBTRACE + recipe, cwd=tmp, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = plain_rows(p.stdout)
    want = _replay_rows(lines, lambda e: e["type"] != "open" and (
        e["status"] != 0 if e["type"] == "exit" else e["ret"] < 0))
    assert [(r["PID"], r["COMM"], r["TYPE"]) for r in rows] == want
    assert {r["COMM"] for r in rows if r["TYPE"] == "exit"} == {"make", "false"}, rows
    assert f"rbtrace trace: {len(want)} events delivered" in p.stderr.decode()


def check_exec_pid_children(recipe, tmp, running):
    """`exec --pid 1234 --children` (1234: the workload's pid): the execs
    of that process and its children, and the end when it exits."""
    assert recipe[recipe.index("--pid") + 1] == "1234", "the README's placeholder pid"
    mark = _marker()
    sh = subprocess.Popen(["/bin/sh", "-c", f"read x; /bin/true {mark}-1; /bin/true {mark}-2"],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        args = [str(sh.pid) if a == "1234" else a for a in recipe]
        r = running(args).wait_first_line()
        exec_known(["/bin/true", mark, "outside"])         # not in the tree
        sh.communicate(b"go\n", timeout=60)
        r.finish(interrupt=False)
    finally:
        if sh.poll() is None:
            sh.kill()
            sh.wait()
    assert r.returncode == 0 and sh.returncode == 0, r.stderr
    rows = plain_rows(r.out)
    assert sorted(row["ARGV"] for row in rows) == [f"/bin/true {mark}-1", f"/bin/true {mark}-2"]
    assert all(str(sh.pid) in (row["PID"], row["PPID"]) for row in rows), rows


def _tracefs_events():
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(root, "events", "sched")):
            return os.path.join(root, "events")
    raise AssertionError("no tracefs (rbtrace mounts it: run another kernel test first)")


def check_tp_list(recipe, tmp, running):
    """`tp --list 'sched:*'`: exactly tracefs's sched events."""
    p = subprocess.run(RBTRACE + recipe, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    sched = os.path.join(_tracefs_events(), "sched")
    want = {f"sched:{d}" for d in os.listdir(sched) if os.path.isdir(os.path.join(sched, d))}
    got = p.stdout.splitlines()
    assert len(got) == len(set(got)) and set(got) == want


def check_tp_fork_kill(recipe, tmp, running):
    """`tp sched:sched_process_fork 'syscalls:sys_enter_kill'`: our fork of
    a child, and our two kill() calls to it, with their arguments."""
    r = running(recipe).wait_first_line()
    child = subprocess.Popen(["sleep", "60"])
    os.kill(child.pid, 0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    r.finish()
    assert r.returncode == 130, r.stderr
    rows = plain_rows(r.out)
    me = str(os.getpid())
    forks = [row for row in rows if row["EVENT"] == "sched:sched_process_fork"
             and f"child_pid={child.pid} " in row["ARGS"] + " "]
    assert [(f["PID"], f"parent_pid={me} " in f["ARGS"]) for f in forks] == [(me, True)], rows
    # (the SIGINT that stops rbtrace is ours too: only those to the child)
    kills = [row["ARGS"] for row in rows if row["EVENT"] == "syscalls:sys_enter_kill"
             and row["PID"] == me and row["ARGS"].startswith(f"pid={child.pid} ")]
    assert kills == [f"pid={child.pid} sig=0", f"pid={child.pid} sig=9"], rows


def check_run_kill_make(recipe, tmp, running):
    """`run examples/kill.bpf.c -- make -j2`: the probe file's events for
    the kill(2) calls of the build, and make's status."""
    os.symlink(os.path.join(REPO, "examples"), os.path.join(tmp, "examples"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_makefile(tmp, f"all: a b\na:\n\t/bin/kill -0 1\nb:\n\t-/bin/kill -0 {gone.pid}\n")
    r = running(recipe, cwd=tmp).wait_first_line().finish(interrupt=False)
    assert r.returncode == 0, r.stderr
    others = []
    rows = plain_rows(r.out, others)
    assert sorted(others) == sorted(["/bin/kill -0 1", f"/bin/kill -0 {gone.pid}"]), others
    got = sorted((row["COMM"], row["EVENT"], row["ARGS"]) for row in rows)
    assert got == sorted([("kill", "kill_event", "ret=0 target=1 sig=0"),
                          ("kill", "kill_event", f"ret={-errno.ESRCH} target={gone.pid} sig=0")]), rows


def check_tcp_curl_refused(recipe, tmp, running):
    """`tcp -x -- curl -s http://localhost:1/`: nothing listens on port 1;
    curl's non-blocking connects are refused, shown as their outcome, and
    rbtrace exits with curl's status (7: could not connect)."""
    untraced = subprocess.run(["curl", "-s", "http://localhost:1/"], capture_output=True,
                              timeout=60)
    r = running(recipe).wait_first_line().finish(interrupt=False)
    assert untraced.returncode == 7
    assert r.returncode == untraced.returncode, r.stderr
    rows = plain_rows(r.out)
    assert rows, r.out
    for row in rows:
        assert (row["COMM"], row["EVENT"], row["RESULT"]) == ("curl", "connect\u2026",
                                                             "ECONNREFUSED"), row
        assert row["REMOTE"] in ("127.0.0.1:1", "[::1]:1"), row


def check_tcp_port_closes(recipe, tmp, running, tail):
    """`tcp --json --port 8080 | jq ... close`: a loopback server on 8080
    and its client (tests/kernel/tcp_workload.py): their two closes, with
    the bytes of the workload's record, and only connections on 8080."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tcp_workload
    r = running(recipe).wait_first_line()
    record = os.path.join(tmp, "tcp.json")
    subprocess.run([sys.executable, tcp_workload.__file__, record, "pair:4:8080:1000:3000"],
                   check=True, timeout=120)
    r.finish()
    assert r.returncode == 130, r.stderr
    got = [json.loads(ln) for ln in run_tail(tail, r.out).splitlines()]
    assert got and all(e["type"] == "tcp" and e["event"] == "close" for e in got), got
    assert all(8080 in (e["sport"], e["dport"]) for e in got), got
    [w] = json.load(open(record))
    s = w["server"]
    # ss before close, plus one for each FIN (rbtrace-tcp(8), tx_bytes)
    wanted = {(w["pid"], w["local"][1], w["ss"]["bytes_acked"] + 1, w["ss"]["bytes_received"] + 1),
              (s["pid"], s["local"][1], s["ss"]["bytes_acked"] + 1, s["ss"]["bytes_received"] + 1)}
    mine = {(e["pid"], e["sport"], e["tx_bytes"], e["rx_bytes"]) for e in got
            if e["pid"] in (w["pid"], s["pid"])}
    assert mine == wanted, (mine, wanted)


CHECKS = {
    "exec": check_exec_table,
    "exec --json | jq -c 'select(.type == \"exec\") | {pid, argv}'": check_exec_jq,
    "exec --failed -d 10": check_exec_failed,
    "exec -u www-data -c 100": check_exec_user,
    "doctor": check_doctor,
    "exec -- make -j2": check_exec_make,
    "exit -x -- make -j2": check_exit_make,
    "open --json -o opens.json -- make": check_open_make,
    "trace exec,open,exit --json -o run.jsonl -- make -j2": check_trace_make,
    "show run.jsonl": check_show,
    "show run.jsonl -x --kinds exec,exit": check_show_failed,
    "exec --pid 1234 --children": check_exec_pid_children,
    "tp --list 'sched:*'": check_tp_list,
    "tp sched:sched_process_fork 'syscalls:sys_enter_kill'": check_tp_fork_kill,
    "run examples/kill.bpf.c -- make -j2": check_run_kill_make,
    "tcp -x -- curl -s http://localhost:1/": check_tcp_curl_refused,
    "tcp --json --port 8080 | jq -c 'select(.type == \"tcp\" and .event == \"close\")'":
        check_tcp_port_closes,
}


def test_every_readme_recipe_has_a_check():
    commands = [c for c, _, _ in RECIPES]
    assert len(commands) >= 10
    assert sorted(set(commands) - set(CHECKS)) == [], "README recipes without a check here"
    assert sorted(set(CHECKS) - set(commands)) == [], "checks of recipes the README lost"


@pytest.mark.parametrize("command, args, tail", RECIPES, ids=[c for c, _, _ in RECIPES])
def test_readme_recipe(command, args, tail, tmp_path, running, kernel_ok):
    check = CHECKS[command]
    if tail:
        assert "--json" in args and tail.startswith("jq ")
        check(args, str(tmp_path), running, tail)
    else:
        check(args, str(tmp_path), running)
