"""The man pages against real output.

* Every jq recipe in an EXAMPLES section (a `.EX` line starting with
  "rbtrace " and piped to jq; tests/unit/test_docs.py reads them) is run:
  rbtrace with the recipe's own options, a workload that gives every recipe
  something to find, then the recipe's pipeline over rbtrace's real output.
  Every stage must succeed, and the output is compared with what the
  workload did (its own record: the pids it forked, argv, files, signals,
  exit codes; strace -f for a recipe's own command): each recipe has a
  check in CHECKS, and a recipe without one fails.
* Every member of every JSON line a workload produces is documented in
  FIELDS, and so is every member the decoders emit for synthetic records
  built from the probes' real record layouts (every flag and status bit,
  bytes that are not UTF-8), which reaches members no workload easily
  does; and every line has its members in the order FIELDS lists them.
"""
import base64
import errno
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
import test_docs as docs  # noqa: E402  (the man page reader)

JQ = "/usr/bin/jq"
DEVNULL = subprocess.DEVNULL


def _recipes():
    out = []
    for page in docs.ALL_PAGES:
        for i, (args, tail) in enumerate(docs.jq_examples(docs.load(page))):
            out.append(pytest.param(args, tail, id=f"{page}.8#{i + 1}:{' '.join(args)}"))
    return out


RECIPES = _recipes()


@pytest.fixture(scope="module")
def jq():
    if not os.access(JQ, os.X_OK):
        pytest.skip(f"{JQ} is not installed (make setup-test installs it)")
    return JQ


def _user_exists(name):
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# The children's environment: the C locale (no locale files opened, so a
# child's opens are the loader's and its own) and a PATH without surprises.
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


class Workload:
    """What the workload did, as it did it: the pid of every process it
    started (fork, so the pid is known before the exec), their argv, the
    files they opened, the signals sent, the exit codes.  The recipes'
    expected output is computed from this record, never from rbtrace's."""

    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.me = os.getpid()
        with open("/proc/self/comm") as f:
            self.me_comm = f.read().strip()
        self.marker = "rbtrace-doc-" + uuid.uuid4().hex[:8]
        self.execs = []         # dicts: pid, ppid, argv, filename, comm, ret, errno, uid
        self.opens = []         # dicts: pid, comm, path (bytes), flags, mode, ret, dfd
        self.forks = []         # child pids, forked by this process's main thread
        self.exits = {}         # pid -> exit_group code (comm in self.exit_comm)
        self.exit_comm = {}
        self.kills = []         # (pid, comm, target, sig, ret)
        self.signals = []       # (pid, comm, sig, handled)

    def child(self, argv, *, path=None, comm=None, cwd=None, uid=None, fd=None, expect=0):
        """fork; in the child: cwd, user, comm, stdio on /dev/null, then
        execve of `path` (argv[0] by default; execveat(fd, "") when fd is
        given); _exit(127) if it fails.
        Returns (pid, its stdout)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                if cwd:
                    os.chdir(cwd)
                if uid is not None:
                    import pwd
                    os.setgroups([])
                    os.setgid(pwd.getpwuid(uid).pw_gid)
                    os.setuid(uid)
                if comm:
                    with open("/proc/self/comm", "w") as f:
                        f.write(comm)
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(w, 1)
                os.dup2(devnull, 2)
                os.execve(fd if fd is not None else path or argv[0], argv, CHILD_ENV)
            finally:
                os._exit(127)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read()
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        assert status == expect, (argv, status)
        self.forks.append(pid)
        return pid, out

    def exec_ok(self, argv, comm=None, **kw):
        """A program that runs and exits by itself with `expect`."""
        pid, out = self.child(argv, **kw)
        path = kw.get("path") or argv[0]
        comm = comm or os.path.basename(_text(path))[:15]
        self.execs.append({"pid": pid, "ppid": self.me, "argv": [_text(a) for a in argv],
                           "filename": _text(path) if kw.get("fd") is None else "",
                           "comm": comm, "ret": 0, "errno": None,
                           "uid": kw.get("uid") or 0, "fd": kw.get("fd")})
        self.exits[pid] = kw.get("expect", 0)
        self.exit_comm[pid] = comm
        return pid, out

    def run(self):
        tmp, m = self.tmp, self.marker
        many = ["/bin/true", m, "one", "two", "three", "four", "five", "six"]
        self.true7, _ = self.exec_ok(many)
        created = os.path.join(tmp, "created")
        self.sh_created, _ = self.exec_ok(["/bin/sh", "-c", f"echo x > {created}"])
        self.opens.append({"pid": self.sh_created, "comm": "sh", "path": created.encode(),
                           "flags": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "mode": 0o666,
                           "ret": 3, "dfd": -100})
        self.cat_abs, _ = self.exec_ok(["/bin/cat", "/etc/hostname"])
        self.cat_rel, _ = self.exec_ok(["/bin/cat", "hostname"], cwd="/etc")
        for pid, path in ((self.cat_abs, b"/etc/hostname"), (self.cat_rel, b"hostname")):
            self.opens.append({"pid": pid, "comm": "cat", "path": path, "flags": 0, "mode": None,
                               "ret": 3, "dfd": -100})
        missing = os.path.join(tmp, f"missing-{m}")
        self.cat_missing, _ = self.exec_ok(["/bin/cat", missing], expect=1)
        self.opens.append({"pid": self.cat_missing, "comm": "cat", "path": missing.encode(),
                           "flags": 0, "mode": None, "ret": -errno.ENOENT, "dfd": -100})
        # A failed exec, by a child named after the marker (its comm stays).
        self.noprog_path = os.path.join(tmp, f"no-such-program-{m}")
        self.noprog_comm = ("np" + m[-8:])[:15]
        self.noprog, _ = self.child([self.noprog_path], comm=self.noprog_comm, expect=127)
        self.execs.append({"pid": self.noprog, "ppid": self.me, "argv": [self.noprog_path],
                           "filename": self.noprog_path, "comm": self.noprog_comm,
                           "ret": -errno.ENOENT, "errno": "ENOENT", "uid": 0, "fd": None})
        self.exits[self.noprog] = 127
        self.exit_comm[self.noprog] = self.noprog_comm
        # fexecve: execveat(fd, "", AT_EMPTY_PATH) of a shell that prints
        # the command name the kernel gave it.
        fd = os.open("/bin/sh", os.O_RDONLY)
        try:
            self.fexec, out = self.exec_ok(["sh", "-c", "read c < /proc/$$/comm; echo $c", m],
                                           fd=fd, comm="?")
        finally:
            os.close(fd)
        self.fexec_fd = fd
        self.execs[-1]["comm"] = self.exit_comm[self.fexec] = out.decode().strip()
        self.fexec_exe = os.path.realpath("/bin/sh")
        if _user_exists("www-data"):
            import pwd
            self.www_uid = pwd.getpwnam("www-data").pw_uid
            # argv[0] carries the marker: other tests may run cat as www-data.
            self.www, _ = self.exec_ok([f"cat-{m}", "/etc/hostname"], path="/bin/cat",
                                       uid=self.www_uid)
            self.opens.append({"pid": self.www, "comm": "cat", "path": b"/etc/hostname",
                               "flags": 0, "mode": None, "ret": 3, "dfd": -100})
        # A path that is not UTF-8, created by this process.
        self.odd = os.path.join(os.fsencode(tmp), b"odd-\xff-" + m.encode())
        with open(self.odd, "w") as f:
            self.opens.append({"pid": self.me, "comm": self.me_comm, "path": self.odd,
                               "flags": os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                               "mode": 0o666, "ret": f.fileno(), "dfd": -100})
        os.unlink(self.odd)
        self.argff, _ = self.exec_ok([b"/bin/true", b"arg-\xff"])
        # A long file name, for --string-bytes.
        self.long_dir = f"/tmp/rbm-{m[-8:]}"
        os.makedirs(self.long_dir, exist_ok=True)
        self.long_path = os.path.join(self.long_dir, "true-with-a-long-name")
        os.symlink("/bin/true", self.long_path)
        self.long_exec, _ = self.exec_ok([self.long_path], comm="true-with-a-lon")
        os.unlink(self.long_path)
        os.rmdir(self.long_dir)
        # kill(): checked, sent and delivered; to a process that is gone
        # (ESRCH); a process that handles a signal of its own.
        self.sleeper = subprocess.Popen(["/usr/bin/sleep", "60"], env=CHILD_ENV)
        self.forks.append(self.sleeper.pid)
        s = self.sleeper.pid
        self.execs.append({"pid": s, "ppid": self.me, "argv": ["/usr/bin/sleep", "60"],
                           "filename": "/usr/bin/sleep", "comm": "sleep", "ret": 0,
                           "errno": None, "uid": 0, "fd": None})
        os.kill(s, 0)
        self.kills.append((self.me, self.me_comm, s, 0, 0))
        os.kill(s, signal.SIGTERM)
        self.kills.append((self.me, self.me_comm, s, signal.SIGTERM, 0))
        self.sleeper.wait()
        # A fatal signal with the default action is turned into SIGKILL for
        # every thread of the group before delivery (complete_signal() in
        # kernel/signal.c), so signal_deliver sees 9, not 15.
        self.signals.append((s, "sleep", signal.SIGKILL, False))
        try:
            os.kill(s, 0)
        except ProcessLookupError:
            self.kills.append((self.me, self.me_comm, s, 0, -errno.ESRCH))
        argv = [sys.executable, "-c", "import os, signal, sys; "
                "signal.signal(signal.SIGUSR1, lambda *a: 0); "
                "os.kill(os.getpid(), signal.SIGUSR1); "
                "sys.stdout.write(open('/proc/self/comm').read())"]
        usr1 = subprocess.Popen(argv, stdout=subprocess.PIPE, env=CHILD_ENV)
        out, _ = usr1.communicate(timeout=60)
        assert usr1.returncode == 0
        self.usr1, self.usr1_comm = usr1.pid, out.decode().strip()
        self.forks.append(self.usr1)
        self.execs.append({"pid": self.usr1, "ppid": self.me, "argv": argv,
                           "filename": sys.executable, "comm": self.usr1_comm, "ret": 0,
                           "errno": None, "uid": 0, "fd": None})
        self.kills.append((self.usr1, self.usr1_comm, self.usr1, signal.SIGUSR1, 0))
        self.signals.append((self.usr1, self.usr1_comm, signal.SIGUSR1, True))
        self.exits[self.usr1] = 0
        self.exit_comm[self.usr1] = self.usr1_comm
        # Twenty more execs, so that a recipe with -c 20 is full of ours.
        self.many = []
        for i in range(20):
            pid, _ = self.exec_ok(["/bin/true", m, f"n{i}"])
            self.many.append(pid)
        self.pids = {e["pid"] for e in self.execs} | {self.me, s}
        # TCP on the loopback (tcp_workload.py, its own record): IPv4 and
        # IPv6, blocking and not, refused connects.
        from tcp_workload import __file__ as tcp_workload, free_port
        self.tcp_port, self.tcp_closed = free_port(4), free_port(4)
        record = os.path.join(tmp, "tcp.json")
        self.tcp_pid, _ = self.child(
            [sys.executable, tcp_workload, record, f"pair:4:{self.tcp_port}:100:200",
             f"pair:6:{self.tcp_port}:300:400:nb", f"refused:4:{self.tcp_closed}",
             f"refused:6:{self.tcp_closed}:nb"])
        with open(record) as f:
            self.tcp = json.load(f)
        self.exits[self.tcp_pid] = 0
        self.exit_comm[self.tcp_pid] = self.tcp[0]["comm"]
        return self

    def exec_of(self, pid):
        [e] = [e for e in self.execs if e["pid"] == pid]
        return e


def workload(tmp):
    """Something for every recipe: execs that succeed, fail, go through a
    file descriptor, have many and odd arguments, run as www-data; opens
    that succeed, fail, create files, use relative and non-UTF-8 paths;
    signals sent, delivered and handled; exits with and without errors.
    Returns the record of it all (Workload)."""
    return Workload(tmp).run()


class Run:
    """rbtrace with these arguments, the workload once its probes are
    attached, then SIGINT (unless it stopped by itself); stdout is read
    all along so that a full pipe never makes it drop events."""

    def __init__(self, args, tmp, work=workload):
        # rbtrace-run(8)'s recipes run in the examples directory, as it says.
        cwd = os.path.join(REPO, "examples") if args[:1] == ["run"] else REPO
        proc = subprocess.Popen([sys.executable, "-m", "rbtrace", *args], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        chunks, started = [], threading.Event()

        def read():
            for line in iter(proc.stdout.readline, b""):
                chunks.append(line)
                started.set()
            started.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert started.wait(120), "rbtrace did not start"
            assert chunks and json.loads(chunks[0])["type"] == "start", \
                f"rbtrace did not start: {proc.stderr.read().decode(errors='replace')}"
            self.pid = proc.pid
            self.w = work(tmp)
            time.sleep(0.3)
            own = args[:args.index("--")] if "--" in args else args
            count = int(own[own.index("-c") + 1]) if "-c" in own else None
            ends = count is not None and args[0] == "exec" and count <= len(self.w.execs)
            if "--" in args or ends:
                # With -- CMD, rbtrace ends with CMD, and with -c N once the
                # workload has made N execs: a SIGINT could land while it
                # exits (after its handlers are restored).
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            self.returncode = proc.wait(timeout=120)
            reader.join(60)
            self.stderr = proc.stderr.read().decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.stdout = b"".join(chunks)
        self.lines = [json.loads(ln) for ln in self.stdout.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kernel_ok):
    """One run per distinct option list, shared by the recipes using it."""
    cache = {}

    def get(args):
        key = tuple(args)
        if key not in cache:
            cache[key] = Run(args, tmp_path_factory.mktemp("work"))
        return cache[key]
    return get


# --- what each recipe must print, from the workload's record ------------------
#
# A check gets the run (rbtrace's own JSON lines: .lines, .pid, .stderr),
# the recipe's output, and the workload's record.  Host-wide recipes also
# see other processes' events: a check then compares exactly the lines of
# the workload's own processes (by pid, or by paths and names carrying the
# workload's marker), and checks what the recipe promises of the others.

def _out_lines(out):
    return [ln for ln in out.splitlines() if ln.strip()]


def _out_json(out):
    return [json.loads(ln) for ln in _out_lines(out)]


def _text(s):
    """A traced string as the JSON output holds it."""
    return s.decode(errors="replace") if isinstance(s, bytes) else s


def _once(lines, wanted):
    for w in wanted:
        assert lines.count(w) == 1, (w, lines.count(w), lines[:50])


def _word(line, i, kind=int):
    """Word i of a line as a number, or None: other processes' argv may
    hold newlines, so some lines are the rest of another process's line."""
    try:
        return kind(line.split()[i])
    except (IndexError, ValueError):
        return None


def _secs_and_rest(lines):
    """Lines "<seconds since the first event> <rest>": the rests, after
    checking the seconds start at 0 and never go negative."""
    assert lines and _word(lines[0], 0, float) == 0, lines[:3]
    records = [ln.split(" ", 1) for ln in lines if _word(ln, 0, float) is not None]
    assert min(float(t) for t, _ in records) >= 0
    return [rest for _, rest in records]


def _sorted_desc(entries, key):
    counts = [e[key] for e in entries]
    assert counts == sorted(counts, reverse=True), counts


def _summary(run):
    assert run.lines[-1]["type"] == "summary"
    return run.lines[-1]


def check_exec_count(run, out, w):
    got = _out_json(out)
    assert len(got) == 20 and {e["type"] for e in got} == {"exec"}, got
    assert _summary(run)["stopped_by"] == "count"
    # Other processes' execs may take some of the 20 places: the
    # workload's are its first ones, in order, none missing, exact.
    keys = ("pid", "ppid", "argv", "comm", "ret", "errno", "uid")
    ours = [{k: e[k] for k in keys} for e in got if e["pid"] in w.pids]
    assert ours == [{k: e[k] for k in keys} for e in w.execs[:len(ours)]]


def check_lost_summary(run, out, w):
    got = _out_json(out)
    assert got and {e["type"] for e in got} <= {"lost", "summary"}
    assert [e["type"] for e in got].count("summary") == 1 and got[-1] == _summary(run)
    s = got[-1]
    events = [e for e in run.lines if e["type"] == s["probe"]]
    assert s["delivered"] == len(events)
    assert s["seen"] == s["submitted"] + s["dropped"] and s["submitted"] >= s["delivered"]
    assert sum(e["dropped"] for e in got if e["type"] == "lost") == s["dropped"]
    # ... and the workload's own events are among those delivered.
    if s["probe"] == "open":
        seen = {(e["pid"], e["path"]) for e in events}
        assert {(o["pid"], _text(o["path"])) for o in w.opens} <= seen
    elif s["probe"] == "exec":
        assert {e["pid"] for e in w.execs} <= {e["pid"] for e in events}
    elif s["probe"] == "tcp":
        seen = {(e["pid"], e["comm"], e["daddr"], e["dport"], e["errno"], e["source"])
                for e in events if e["event"] == "connect"}
        assert set(_tcp_connects(w)) <= seen
    else:
        seen = {(e["pid"], e["args"]["target"], e["args"]["sig"], e["args"]["ret"])
                for e in events}
        assert {(p, t, s_, r) for p, _, t, s_, r in w.kills} <= seen


def check_exec_pid_argv(run, out, w):
    ours = [e for e in _out_json(out) if e["pid"] in w.pids]
    assert ours == [{"pid": e["pid"], "argv": e["argv"]} for e in w.execs]


def check_exec_ppid_pid_argv(run, out, w):
    ours = [ln for ln in _out_lines(out)
            if _word(ln, 0) == w.me and _word(ln, 1) in w.pids]
    assert ours == [f"{w.me} {e['pid']} {' '.join(e['argv'])}" for e in w.execs]


def check_exec_failed(run, out, w):
    lines = _out_lines(out)
    assert not [ln for ln in lines if ln.startswith("null ")], lines
    assert [ln for ln in lines if w.marker in ln] == [f"ENOENT {w.noprog_path}"]


def check_exec_www(run, out, w):
    lines = _out_lines(out)
    # The www-data child's exec, once; not the same exec made as root.
    assert [ln for ln in lines if w.marker in ln] == [f"cat-{w.marker} /etc/hostname"], lines


def check_exec_hostname(run, out, w):
    got = _out_json(out)
    assert all(any("hostname" in a for a in e["argv"]) for e in got)
    wanted = [w.cat_abs, w.cat_rel] + ([w.www] if hasattr(w, "www") else [])
    assert [e for e in got if e["pid"] in w.pids] == \
        [{"pid": p, "argv": w.exec_of(p)["argv"]} for p in wanted]


def check_exec_execveat(run, out, w):
    ours = [e for e in _out_json(out) if e["pid"] in w.pids]
    assert ours == [{"pid": w.fexec, "dirfd": w.fexec_fd, "filename": "", "exe": w.fexec_exe}]


def check_exec_max_args(run, out, w):
    ours = [e for e in _out_json(out) if e["pid"] in w.pids]
    assert ours == [{"pid": w.true7, "argc": 8, "captured": 4}]


def check_exec_seconds(run, out, w):
    rests = _secs_and_rest(_out_lines(out))
    _once(rests, [" ".join(e["argv"]) for e in w.execs if w.marker in " ".join(e["argv"])])


def check_exec_top_files(run, out, w):
    table = json.loads(out)          # jq -s: one array, pretty-printed
    _sorted_desc(table, "execs")
    by = {e["filename"]: e["execs"] for e in table}
    assert by[w.noprog_path] == 1 and by[w.long_path] == 1
    assert by["/bin/true"] >= sum(e["filename"] == "/bin/true" for e in w.execs)


def check_exec_command_tree(run, out, w):
    sh = _summary(run)["command"]["pid"]
    lines = _out_lines(out)
    assert lines[0] == f"{run.pid} {sh} sh -c uname -r >&2; id -un >&2", lines
    assert [ln.split(" ", 2)[::2] for ln in lines[1:]] == [[str(sh), "uname -r"],
                                                         [str(sh), "id -un"]], lines
    children = [int(ln.split()[1]) for ln in lines[1:]]
    assert len(set(children + [sh])) == 3
    # The command's own output went to stderr, not into the pipe.
    assert os.uname().release in run.stderr and "root" in run.stderr


def check_exec_command_summary(run, out, w):
    [got] = _out_json(out)
    first = next(e for e in run.lines if e["type"] == "exec")
    assert first["ppid"] == run.pid and first["argv"] == ["sh", "-c", "sleep 1 & true"]
    # sh exits at once; the sleep it left in the background still runs.
    assert got == {"command": {"argv": ["sh", "-c", "sleep 1 & true"], "pid": first["pid"],
                               "status": 0, "signal": None},
                   "followed_running": 1}


def _open_json(o):
    r = o["ret"]
    return {"comm": o["comm"], "path": _text(o["path"]), "fd": r if r >= 0 else None,
            "errno": errno.errorcode[-r] if r < 0 else None}


def _unique(o, w):
    return w.marker.encode() in o["path"] or o["path"].startswith(w.tmp.encode())


def check_open_who_what(run, out, w):
    got = [json.dumps(e, sort_keys=True) for e in _out_json(out)]
    for o in w.opens:
        line = json.dumps(_open_json(o), sort_keys=True)
        if _unique(o, w):
            assert got.count(line) == 1, line
        else:
            assert got.count(line) >= sum(_open_json(x) == _open_json(o) for x in w.opens), line


def check_open_enoent_counts(run, out, w):
    lines = _out_lines(out)
    assert all(re.fullmatch(r"\s*\d+ .*", ln) for ln in lines), lines
    mine = [ln for ln in lines if w.marker in ln]
    missing = os.path.join(w.tmp, f"missing-{w.marker}")
    assert [ln.split() for ln in mine] == [["1", missing]], mine


def check_open_created(run, out, w):
    lines = _out_lines(out)
    created = [o for o in w.opens if o["flags"] & os.O_CREAT]
    assert len(created) == 2
    _once(lines, [f"{o['mode']:o} {o['comm']} {_text(o['path'])}" for o in created])


def check_open_www_etc(run, out, w):
    lines = _out_lines(out)
    # Other tests may open files as www-data too: the child's lines, and
    # none of the same open made as root.
    mine = [ln for ln in lines if _word(ln, 0) == w.www]
    assert mine and all(ln.startswith(f"{w.www} cat /etc/") for ln in mine), lines
    _once(mine, [f"{w.www} cat /etc/hostname"])
    assert not [ln for ln in lines if _word(ln, 0) == w.cat_abs]


def check_open_relative(run, out, w):
    _once(_out_lines(out), ["hostname -> /etc/hostname"])


def check_open_seconds(run, out, w):
    rests = _secs_and_rest(_out_lines(out))
    _once(rests, [f"{o['comm']} {_text(o['path'])}" for o in w.opens if _unique(o, w)])


def check_open_per_command(run, out, w):
    table = json.loads(out)          # jq -s: one array, pretty-printed
    _sorted_desc(table, "opens")
    by = {e["comm"]: e["opens"] for e in table}
    assert by["cat"] >= sum(o["comm"] == "cat" for o in w.opens)
    assert by["sh"] >= 1 and by[w.me_comm] >= 1


def check_open_b64(run, out, w):
    ours = [e for e in _out_json(out) if e["pid"] in w.pids]
    assert ours == [{"pid": w.me, "path": _text(w.odd),
                     "path_b64": base64.b64encode(w.odd).decode()}]


def check_open_missing_seq(run, out, w, tail):
    s = _summary(run)
    missing = int(out.strip())
    if s["dropped"] == 0:
        assert missing == 0
    else:
        assert 0 <= missing <= s["dropped"]
    # A run with no events at all: 0, and jq succeeds.
    quiet = b"".join(json.dumps(e).encode() + b"\n" for e in (run.lines[0], run.lines[-1]))
    assert _pipeline(tail, quiet).strip() == "0"


def _strace_opens(argv):
    """(path, result) of every open of the command and its children, in
    order, from strace -f: the ground truth for a recipe with -- CMD (run
    in the same directory and environment as rbtrace runs it)."""
    trace = subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat,openat2,creat",
                            "-o", "/dev/stdout", *argv], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
    out = []
    for ln in trace.stdout.splitlines():
        m = re.search(r'\b(?:open|openat|openat2|creat)\((?:[^,"]+, )?"([^"]*)".*\) += '
                      r'(-?\d+)(?: (E[A-Z0-9]+))?', ln)
        if m:
            ret = -getattr(errno, m.group(3)) if m.group(3) else int(m.group(2))
            out.append((m.group(1), ret))
        else:
            assert "resumed" not in ln and "unfinished" not in ln, ln
    assert out, trace.stdout
    return out


def check_open_command_failed(run, out, w):
    opens = _strace_opens(["sh", "-c", "cat /nofile >&2; true"])
    assert ("/nofile", -errno.ENOENT) in opens
    assert _out_lines(out) == [f"{errno.errorcode[-r]} {p}" for p, r in opens if r < 0]


def check_open_command_files(run, out, w):
    opens = _strace_opens(["sh", "-c", "cat /etc/hostname >&2"])
    assert ("/etc/hostname", 3) in opens
    assert _out_lines(out) == sorted({p for p, r in opens if r >= 0})


def check_run_kills(run, out, w):
    lines = _out_lines(out)
    _once(lines, [f"{c} {p} -> {t} sig {s} ret {r}" for p, c, t, s, r in w.kills])


def check_run_failed_kills(run, out, w):
    ours = [e for e in _out_json(out) if e["pid"] in w.pids]
    assert ours == [{"comm": c, "pid": p, "args": {"ret": r, "target": t, "sig": s}}
                    for p, c, t, s, r in w.kills if r < 0]


def check_run_failed_exits(run, out, w):
    # "code comm pid": a comm may hold blanks, the pid is the last word.
    ours = [ln for ln in _out_lines(out) if _word(ln, -1) in w.pids]
    assert ours == [f"{code} {w.exit_comm[p]} {p}" for p, code in w.exits.items() if code]


def check_run_exits_per_command(run, out, w):
    table = json.loads(out)          # jq -s: one array, pretty-printed
    by = {e["comm"]: e for e in table}
    assert by[w.noprog_comm] == {"comm": w.noprog_comm, "exits": 1, "failed": 1}
    cats = [p for p, c in w.exit_comm.items() if c == "cat"]
    assert by["cat"]["exits"] >= len(cats)
    assert by["cat"]["failed"] >= sum(1 for p in cats if w.exits[p])


def check_run_signals(run, out, w):
    # "comm pid sig N handler": a comm may hold blanks.
    ours = [ln for ln in _out_lines(out) if _word(ln, -4) in w.pids]
    assert len(ours) == len(w.signals), ours
    for ln, (pid, comm, sig, handled) in zip(ours, w.signals):
        head, handler = ln.rsplit(" ", 1)
        assert head == f"{comm} {pid} sig {int(sig)}", ln
        # SIG_DFL is 0; a handler of its own is an address.
        assert (int(handler, 16) > 1) if handled else handler == "0x0", ln


def check_run_exit_seconds(run, out, w):
    rests = _secs_and_rest(_out_lines(out))
    _once(rests, [f"{w.noprog_comm} 127"])


def check_run_command_exits(run, out, w):
    sh = _summary(run)["command"]["pid"]
    lines = _out_lines(out)
    assert len(lines) == 2 and lines[1] == f"{sh} sh 0", lines
    inner, comm, code = lines[0].split()
    assert (comm, code) == ("sh", "3") and int(inner) != sh


def _tcp_connects(w):
    """(pid, comm, family, daddr, dport, errno, source) of the workload's
    connect events, from its record."""
    from rbtrace.fields import errno_name
    out = []
    for r in w.tcp:
        out.append((r["pid"], r["comm"], r["peer"][0], r["peer"][1],
                    errno_name(r["ret"]) or None, "syscall"))
        if r["nonblocking"]:
            out.append((r["pid"], r["comm"], r["peer"][0], r["peer"][1],
                        errno_name(r["outcome"]) or None, "state"))
    return out


def _tcp_closes(w):
    """(pid, comm, sport, daddr, dport, tx, rx) of each side of each pair:
    ss before close, plus one for each FIN (see rbtrace-tcp(8))."""
    out = []
    for r in w.tcp:
        if r["scenario"] != "pair":
            continue
        s = r["server"]
        out.append((r["pid"], r["comm"], r["local"][1], r["peer"][0], r["peer"][1],
                    r["ss"]["bytes_acked"] + 1, r["ss"]["bytes_received"] + 1))
        out.append((s["pid"], s["comm"], s["local"][1], s["peer"][0], s["peer"][1],
                    s["ss"]["bytes_acked"] + 1, s["ss"]["bytes_received"] + 1))
    return out


def check_tcp_connects(run, out, w):
    got = _out_json(out)
    assert all(set(e) == {"comm", "daddr", "dport", "errno"} for e in got)
    # the workload's pids are not in the recipe's output: its comms are
    wanted = [{"comm": c, "daddr": a, "dport": p, "errno": e}
              for _, c, a, p, e, _ in _tcp_connects(w)]
    for x in wanted:
        assert got.count(x) >= wanted.count(x), (x, got[:20])


def check_tcp_failed_counts(run, out, w):
    lines = _out_lines(out)
    counts = {tuple(ln.split()[1:]): int(ln.split()[0]) for ln in lines}
    assert [int(ln.split()[0]) for ln in lines] == sorted(counts.values(), reverse=True)
    # refused connects to a port nothing listens on: one per family, and
    # nothing that is not a failure
    for fam_host in ("127.0.0.1", "::1"):
        assert counts.get((fam_host, str(w.tcp_closed), "ECONNREFUSED"), 0) >= 1, lines
    assert not any(k[-1] in ("null", "EINPROGRESS") for k in counts), lines


def check_tcp_life(run, out, w):
    lines = _out_lines(out)
    for pid, comm, sport, daddr, dport, tx, rx in _tcp_closes(w):
        head = f"{pid} {comm} {sport} {daddr}:{dport} "
        [ln] = [ln for ln in lines if ln.startswith(head)]
        assert ln.endswith(f"ms tx={tx} rx={rx}"), (ln, tx, rx)
        assert float(ln[len(head):].split("ms")[0]) > 0


def check_tcp_accepts_v6(run, out, w):
    got = _out_json(out)
    assert got and all(e["peer"].startswith("::1 ") for e in got), got
    wanted = [{"pid": r["server"]["pid"], "comm": r["server"]["comm"],
               "peer": f"{r['server']['peer'][0]} {r['server']['peer'][1]}",
               "port": r["server"]["local"][1]}
              for r in w.tcp if r["scenario"] == "pair" and r["family"] == 6]
    assert wanted and all(got.count(x) == 1 for x in wanted), (wanted, got)


def check_tcp_rx_per_command(run, out, w):
    got = json.loads(out)                   # jq -s: one array, indented
    _sorted_desc(got, "rx_bytes")
    by_comm = {e["comm"]: e["rx_bytes"] for e in got}
    # tcp-server is the workload's servers' own name
    servers = sum(rx for pid, comm, *_, rx in _tcp_closes(w) if comm == "tcp-server")
    assert by_comm["tcp-server"] == servers, (by_comm, servers)


def check_tcp_connect_times(run, out, w):
    lines = _out_lines(out)
    for r in w.tcp:
        if r["nonblocking"]:
            from rbtrace.fields import errno_name
            head = f"{r['peer'][1]} {errno_name(r['outcome']) or 'ok'} "
            assert any(ln.startswith(head) and ln.endswith("us")
                       and float(ln[len(head):-2]) >= 0 for ln in lines), (head, lines)


def check_tp_execs(run, out, w):
    lines = _out_lines(out)
    ours = [ln for ln in lines if _word(ln, 0) in w.pids]
    want = [f"{e['pid']} {e['comm']} "
            + (f"/dev/fd/{e['fd']}" if e["fd"] is not None else _text(e["filename"]))
            for e in w.execs if e["ret"] == 0]
    assert ours == want


def check_tp_forks(run, out, w):
    lines = _out_lines(out)
    ours = [ln for ln in lines if ln.startswith(f"{w.me} ")]
    want = [f"{w.me} {w.me_comm} -> {p} {w.me_comm}" for p in w.forks]
    assert [ln for ln in ours if _word(ln, 3) in w.forks] == want


def check_tp_counts(run, out, w):
    table = json.loads(out)          # jq -s: one array, pretty-printed
    _sorted_desc(table, "count")
    by = {e["event"]: e["count"] for e in table}
    assert sum(by.values()) == sum(1 for e in run.lines if e["type"] == "tp")
    assert by["sched:sched_process_fork"] >= len(w.forks)
    assert by["sched:sched_process_exec"] >= sum(e["ret"] == 0 for e in w.execs)
    assert by["sched:sched_process_exit"] >= len(w.forks)


def check_tp_openat_enter(run, out, w):
    got = [e for e in _out_json(out) if e["pid"] in w.pids]
    for o in w.opens:
        if _unique(o, w):
            # The tracepoint has the path's address, not the path: the
            # open is told apart by its process and flags.
            same = [g for g in got if (g["pid"], g["comm"], g["dfd"], g["flags"])
                    == (o["pid"], o["comm"], o["dfd"], o["flags"])]
            assert len(same) == 1, (o, [g for g in got if g["pid"] == o["pid"]])
            assert re.fullmatch(r"0x[0-9a-f]+", same[0]["filename"]), same
            assert int(same[0]["filename"], 16) != 0


def check_tp_openat_failed(run, out, w):
    lines = _out_lines(out)
    mine = [ln for ln in lines if _word(ln, 0) == w.cat_missing]
    assert mine == [f"{w.cat_missing} cat errno {errno.ENOENT}"]


def check_tp_truncated(run, out, w):
    _once(_out_lines(out), [w.long_path[:15]])


# --- exit: every process the workload forked ends once, as waitpid saw it ----

def _exit_truth(w):
    """pid -> (comm, exit_code, signal) of every child the workload forked,
    in fork order: the codes it waited for, and the sleeper it killed."""
    truth = {p: (w.exit_comm[p], code, None) for p, code in w.exits.items()}
    truth[w.sleeper.pid] = ("sleep", None, "SIGTERM")
    assert set(truth) == set(w.forks), (sorted(truth), sorted(w.forks))
    return {p: truth[p] for p in w.forks}


def check_exit_failed(run, out, w):
    truth = _exit_truth(w)
    ours = [e for e in _out_json(out) if e["pid"] in truth]
    assert ours == [{"pid": p, "comm": c, "exit_code": code, "signal": sig, "core_dumped": False}
                    for p, (c, code, sig) in truth.items() if code or sig]


def check_exit_signalled(run, out, w):
    truth = _exit_truth(w)
    ours = [ln for ln in _out_lines(out) if _word(ln, 0) in truth]
    assert ours == [f"{p} {c} {sig}" for p, (c, _, sig) in truth.items() if sig]


def check_exit_short_lived(run, out, w):
    # Lifetimes are the kernel's; what the workload knows is who ended
    # and with what name: the lines are exactly the events under 10 ms.
    events = [e for e in run.lines if e["type"] == "exit"]
    truth = _exit_truth(w)
    ours = {e["pid"]: e for e in events if e["pid"] in truth}
    assert sorted(ours) == sorted(truth), "every child of the workload ended once"
    assert all(ours[p]["comm"] == c for p, (c, _, _) in truth.items())
    assert _out_lines(out) == [f"{e['duration_ns'] // 1000}us {e['comm']}" for e in events
                               if e["duration_ns"] < 10_000_000]


def check_exit_status(run, out, w):
    lines = _out_lines(out)
    truth = _exit_truth(w)
    # The comm carrying the marker is the workload's alone; another
    # workload on the machine may run the long-named true too.
    _once(lines, [f"{w.noprog_comm} 127"])
    assert f"true-with-a-lon {truth[w.long_exec][1]}" in lines
    assert all(re.fullmatch(r".* \d+", ln) for ln in lines), lines


def check_exit_per_command(run, out, w):
    table = json.loads(out)          # jq -s: one array, pretty-printed
    _sorted_desc(table, "exits")
    by = {e["comm"]: e for e in table}
    events = [e for e in run.lines if e["type"] == "exit"]
    assert sum(e["exits"] for e in table) == len(events)
    [noprog] = [e for e in events if e["pid"] == w.noprog]
    assert by[w.noprog_comm] == {"comm": w.noprog_comm, "exits": 1,
                                 "seconds": noprog["duration_ns"] / 1e9}


def _strace_exits(argv):
    """[(comm, exit code)] of every process of the command that exited, in
    order, from strace -f: comm is the name of the last program the pid
    ran (the command's own for one that never execs)."""
    trace = subprocess.run(["strace", "-f", "-e", "trace=execve", "-o", "/dev/stdout", *argv],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    prog, out = {}, []
    for ln in trace.stdout.splitlines():
        pid = int(ln.split()[0])
        m = re.search(r'execve\("([^"]*)".* = 0$', ln)
        if m:
            prog[pid] = os.path.basename(m.group(1))[:15]
        m = re.search(r"\+\+\+ exited with (\d+) \+\+\+", ln)
        if m:
            out.append((prog.get(pid, os.path.basename(argv[0])), int(m.group(1))))
    assert out, trace.stdout
    return out


def check_exit_command_failed(run, out, w):
    exits = _strace_exits(["sh", "-c", "false; ls /nofile >&2; true"])
    assert ("ls", 2) in exits
    assert _out_lines(out) == [f"{c} {code}" for c, code in exits if code]


CHECKS = [
    # (rbtrace's arguments, a piece of the pipeline that tells the recipe
    # apart, the check)
    ("exec --json -c 20", 'select(.type == "exec")', check_exec_count),
    ("open --json -d 5", '"lost" or', check_lost_summary),
    ("exec --json -d 5", '"lost" or', check_lost_summary),
    ("run kill.bpf.c --json -d 5", '"lost" or', check_lost_summary),
    ("exec --json", """jq -c 'select(.type == "exec") | {pid, argv}'""", check_exec_pid_argv),
    ("exec --json", '"\\(.ppid) \\(.pid)', check_exec_ppid_pid_argv),
    ("exec --json --failed -d 10", "errno", check_exec_failed),
    ("exec --json -u www-data -c 100", "join", check_exec_www),
    ("exec --json", 'test("hostname")', check_exec_hostname),
    ("exec --json", "execveat", check_exec_execveat),
    ("exec --json --max-args 4", "args_truncated", check_exec_max_args),
    ("exec --json", "foreach", check_exec_seconds),
    ("exec --json -d 10", "group_by", check_exec_top_files),
    ("exec --json -- sh -c 'uname -r >&2; id -un >&2'", "ppid", check_exec_command_tree),
    ("exec --json -- sh -c 'sleep 1 & true'", "followed_running", check_exec_command_summary),
    ("open --json", "{comm, path, fd, errno}", check_open_who_what),
    ("open --json --failed -d 10", "uniq -c", check_open_enoent_counts),
    ("open --json --flags wronly,creat", "oct", check_open_created),
    ("open --json -u www-data --path /etc/ -d 60", "pid", check_open_www_etc),
    ("open --json --full-path", "full_path", check_open_relative),
    ("open --json", "foreach", check_open_seconds),
    ("open --json -d 5", "group_by(.comm)", check_open_per_command),
    ("open --json", "path_b64", check_open_b64),
    ("open --json -d 5", ".seq", check_open_missing_seq),
    ("open --json -x -- sh -c 'cat /nofile >&2; true'", "errno", check_open_command_failed),
    ("open --json -- sh -c 'cat /etc/hostname >&2'", "sort -u", check_open_command_files),
    ("run kill.bpf.c --json", "-> ", check_run_kills),
    ("run kill.bpf.c --json -x", "{comm, pid, args}", check_run_failed_kills),
    ("run exit.bpf.c --json", ".args.code != 0", check_run_failed_exits),
    ("run exit.bpf.c --json -d 10", "group_by(.comm)", check_run_exits_per_command),
    ("run signal.bpf.c --json", "handler", check_run_signals),
    ("run exit.bpf.c --json", "foreach", check_run_exit_seconds),
    ("run exit.bpf.c --json -- sh -c 'sh -c \"exit 3\"; true'", "code", check_run_command_exits),
    ("exit --json -x", "core_dumped", check_exit_failed),
    ("exit --json", ".signal != null", check_exit_signalled),
    ("exit --json", "10000000", check_exit_short_lived),
    ("exit --json", "128 + (.status % 128)", check_exit_status),
    ("exit --json -d 10", "group_by(.comm)", check_exit_per_command),
    ("exit --json -x -- sh -c 'false; ls /nofile >&2; true'", "exit_code", check_exit_command_failed),
    ("tp --json 'sched:sched_process_*'", "sched_process_exec", check_tp_execs),
    ("tp --json 'sched:sched_process_*'", "sched_process_fork", check_tp_forks),
    ("tp --json 'sched:sched_process_*'", "group_by(.event)", check_tp_counts),
    ("tp --json 'syscalls:sys_*_openat'", "sys_enter_openat", check_tp_openat_enter),
    ("tp --json 'syscalls:sys_*_openat'", "sys_exit_openat", check_tp_openat_failed),
    ("tp --json --string-bytes 16 sched:sched_process_exec", "filename_truncated",
     check_tp_truncated),
    ("tcp --json", "{comm, daddr, dport, errno}", check_tcp_connects),
    ("tcp --json -x -d 10", "uniq -c", check_tcp_failed_counts),
    ("tcp --json", "tx=", check_tcp_life),
    ("tcp --json --addr ::1", "peer:", check_tcp_accepts_v6),
    ("tcp --json -d 10", "rx_bytes", check_tcp_rx_per_command),
    ("tcp --json", "foreach", check_tcp_connect_times),
    ("tcp --json -d 5", '"lost" or', check_lost_summary),
]


def check_for(args, tail):
    """The one check of this recipe (its arguments exactly, and the piece
    of its pipeline); none or several is an error."""
    flat = " ".join(tail.split())
    found = [c for a, piece, c in CHECKS if shlex.split(a) == list(args) and piece in flat]
    assert len(found) == 1, (f"{len(found)} checks for the recipe rbtrace {shlex.join(args)} | "
                             f"{tail}: add one to CHECKS in {__file__}")
    return found[0]


def _pipeline(tail, data: bytes) -> str:
    """The recipe's own pipeline over `data`, jq being the one at /usr/bin;
    every stage must exit 0."""
    script = f"{tail}\necho \"pipeline-status: ${{PIPESTATUS[*]}}\" >&2\n"
    env = {**os.environ, "PATH": f"{os.path.dirname(JQ)}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(["bash", "-c", script], input=data, capture_output=True,
                       timeout=120, env=env)
    err = p.stderr.decode(errors="replace")
    status = err.strip().splitlines()[-1]
    assert status.startswith("pipeline-status: "), err
    assert set(status.split(": ")[1].split()) == {"0"}, f"{tail}\n{err}"
    return p.stdout.decode()


@pytest.mark.parametrize("args, tail", RECIPES)
def test_jq_recipe_on_real_output(args, tail, runs, jq):
    assert "--json" in args
    assert "$(" not in tail and "`" not in tail, "a recipe must be self-contained"
    check = check_for(args, tail)
    run = runs(args)
    assert run.returncode in (0, 130), run.stderr
    assert run.lines[-1]["type"] == "summary"
    out = _pipeline(tail, run.stdout)
    if "tail" in inspect.signature(check).parameters:
        check(run, out, run.w, tail)
    else:
        check(run, out, run.w)


def test_every_check_has_its_recipe():
    """A check whose recipe left the pages is stale."""
    for a, piece, _ in CHECKS:
        assert any(shlex.split(a) == list(args) and piece in " ".join(tail.split())
                   for args, tail in (p.values for p in RECIPES)), (a, piece)


def test_every_recipe_is_run():
    """The reader finds the recipes the pages have (and no page lost its)."""
    per_page = {p: len(docs.jq_examples(docs.load(p))) for p in docs.ALL_PAGES}
    for command in docs.probe_commands():
        assert per_page[f"rbtrace-{command}"] >= 5, per_page
    assert len(RECIPES) == sum(per_page.values())


# --- every member in real output is documented --------------------------------

def _documented(command):
    page = docs.load(f"rbtrace-{command}")
    return {t: page.tags("FIELDS", f"{t} lines") for t in (command, "start", "lost", "summary")}


def _odd_workload(tmp):
    """Rarer members: argv and file names that are not UTF-8 (filename_b64,
    comm_b64, argv_b64), a cut argument (the flag group), fexecve of a file
    whose path is not UTF-8 (exe_b64)."""
    workload(tmp)
    tmp = os.fsencode(str(tmp))
    link = os.path.join(tmp, b"odd-\xff")
    os.symlink(b"/bin/true", link)
    subprocess.run([link, b"\xfe", b"x" * 200], timeout=30)
    copy = os.path.join(tmp, b"copy-\xfd")
    shutil.copy(b"/bin/true", copy)
    os.chmod(copy, 0o755)
    subprocess.run([sys.executable, "-c",
                    "import os, sys; fd = os.open(os.fsencode(sys.argv[1]), os.O_RDONLY); "
                    "os.execve(fd, ['copy'], {})", copy], timeout=30)


@pytest.mark.parametrize("command, extra", [
    ("exec", ["--max-arg-bytes", "64"]),
    ("open", ["--full-path"]),
    ("tp", ["sched:sched_process_exec"]),
    ("tcp", []),
])
def test_every_member_in_real_output_is_documented(command, extra, tmp_path, kernel_ok):
    run = Run([command, "--json", *extra], tmp_path, work=_odd_workload)
    assert run.returncode == 130, run.stderr
    documented = _documented(command)
    seen = {}
    for line in run.lines:
        seen.setdefault(line["type"], set()).update(line)
    assert {"start", command, "summary"} <= set(seen)
    for line_type, members in seen.items():
        assert line_type in documented, f"line type {line_type!r} is not documented"
        assert members - documented[line_type] == set(), (line_type, members)
    # ... and every line has its members in the order the page lists them.
    page = docs.load(f"rbtrace-{command}")
    for line in run.lines:
        docs.assert_in_documented_order(
            line, docs.documented_order(page, f"{line['type']} lines"),
            f"rbtrace-{command}.8 {line['type']} lines")
    events = [ln for ln in run.lines if ln["type"] == command]
    b64 = {k for e in events for k in e if k.endswith("_b64")}
    wanted = {"exec": {"argv_b64", "filename_b64", "comm_b64", "exe_b64"},
              "open": {"path_b64", "full_path_b64"},
              "tp": {"comm_b64"}, "tcp": set()}[command]
    assert wanted <= b64, f"the workload should have produced {wanted - b64}"
    for e in events:
        for k in b64 & set(e):
            raw = e[k]
            assert all(base64.b64decode(x) for x in (raw if isinstance(raw, list) else [raw]))


# --- synthetic records with the probes' real layouts ---------------------------

_SMALL = (0, 1, 2, 3, 4, 7, 8, 64, 128, 255, 256, 512, 1024, 2048, 4096, 0xFFFF)
_NEGATIVE = (-1, -2, -13, -100)


def _fuzz_records(dtype, n, rng):
    """n records of this layout: small integers (flag words fully set
    included), negative ones where signed, bytes with NULs and 0xff."""
    raw = np.zeros(n, dtype=dtype)
    for name in dtype.names:
        ftype = dtype.fields[name][0]
        base = ftype.base
        if base.kind == "S":
            alphabet = np.frombuffer(b"ab/\xff\x00.c", dtype="u1")
            buf = rng.choice(alphabet, size=(n, base.itemsize * int(np.prod(ftype.shape or (1,)))))
            raw[name] = np.frombuffer(buf.astype("u1").tobytes(), dtype=ftype.base).reshape(
                raw[name].shape)
        elif base.kind in "iu":
            choices = [v for v in _SMALL if v < 2 ** (8 * base.itemsize - (base.kind == "i"))]
            if base.kind == "i":
                choices += list(_NEGATIVE)
            raw[name] = rng.choice(np.array(choices, dtype="i8"), size=raw[name].shape).astype(base)
    return raw


@pytest.mark.parametrize("command", docs.probe_commands())
def test_members_of_synthetic_records_are_documented(command, kernel_ok):
    from rbtrace.bpf import LoadedProbe
    from rbtrace import codec, spec
    cmd = docs.cli.commands[command]
    # A command that takes a probe file is given an example; tp, tracepoints
    # with every kind of field (__data_loc strings and arrays, char and
    # integer arrays, pointers, syscall arguments stored wide).
    arguments = {"run": [os.path.join(REPO, "examples", "kill.bpf.c")],
                 "tp": ["sched:sched_process_fork", "syscalls:sys_enter_openat",
                        "sched:sched_switch", "dma:dma_map_sg", "ipi:ipi_send_cpumask",
                        "ras:non_standard_event", "raw_syscalls:sys_enter",
                        "sock:inet_sock_set_state"]}.get(command, [])
    ctx = cmd.make_context(command, list(arguments), parent=docs._root_context())
    opts = dict(ctx.params)
    for p in docs.command_params(cmd, command):
        if p.is_flag and p.name not in ("help", "debug", "failed"):
            opts[p.name] = True            # --full-path and the like: every member
    opts["filters_text"] = ""
    probe = codec.make(spec.load(command), opts)
    loaded = LoadedProbe(probe.source_path(), probe.cflags(), probe.event_structs,
                         tracepoints=probe.tracepoints, ring_bytes=4096,
                         attach=False)
    try:
        event_types = list(loaded.event_types)
    finally:
        loaded.close()
    rng = np.random.default_rng(8)
    seen = set()
    for et in event_types:
        records = _fuzz_records(et.dtype, 4000, rng)
        data = records.tobytes()
        view = np.frombuffer(data, dtype=et.dtype)
        offsets = np.arange(len(view), dtype="i8") * et.dtype.itemsize
        order = docs.documented_order(docs.load(f"rbtrace-{command}"), f"{command} lines")
        for e in probe.decode(et, view, offsets, memoryview(data)):
            seen.update(e)
            docs.assert_in_documented_order(e, order, f"rbtrace-{command}.8 {command} lines")
    documented = _documented(command)[command]
    assert seen - documented == set(), sorted(seen - documented)
    # ... and reach every member the page lists: the page has none the
    # decoder can no longer emit.
    assert documented - seen == set(), sorted(documented - seen)
