"""Fixtures for kernel tests: run the real rbtrace CLI against real workloads.

`rbtrace` starts `python -m rbtrace <probe> --json ...`, waits for the
`start` line (printed once the probes are attached), lets the test run
its workload, then stops rbtrace with SIGINT and returns every JSON line.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# How the tests start rbtrace; test_no_headers.py puts it in a mount
# namespace that hides every kernel header.
RBTRACE_ARGV = [sys.executable, "-m", "rbtrace"]


@pytest.hookimpl(trylast=True)        # after tests/conftest.py's own
def pytest_configure(config):
    """Under CI=true, tests/conftest.py must be loaded: it is what makes a
    skipped or unselected kernel test fail the run.  `--confcutdir` could
    keep it out while this file still loads."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") \
            and not config.pluginmanager.has_plugin("rbtrace_ci_guard"):
        raise pytest.UsageError("CI=true: the CI guard in tests/conftest.py is not loaded, so "
                                "skipped kernel tests would pass unseen; run pytest without "
                                "--confcutdir for it")


@pytest.fixture(scope="session")
def kernel_ok():
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        pytest.skip(f"BCC is not importable from {sys.executable}: {e}")


@dataclass
class Result:
    lines: list
    stderr: str
    returncode: int
    events: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    summary: dict = None


def parse_json_lines(text):
    lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    r = Result(lines, "", 0)
    r.events = [x for x in lines if x["type"] not in ("start", "lost", "summary")]
    r.lost = [x for x in lines if x["type"] == "lost"]
    sums = [x for x in lines if x["type"] == "summary"]
    r.summary = sums[-1] if sums else None
    return r



_STRACE_TOKEN = None


def strace_args(text):
    """The arguments of a call as `strace -xx` prints them: bytes ("\\x41"),
    lists of them ([...]), None for NULL, and the other words as text."""
    import re
    global _STRACE_TOKEN
    if _STRACE_TOKEN is None:
        _STRACE_TOKEN = re.compile(r'"((?:\\x[0-9a-f]{2})*)"|\[|\]|NULL|[^,\[\]\s"]+')
    out, stack = [], []
    cur = out
    for m in _STRACE_TOKEN.finditer(text):
        tok = m.group(0)
        if tok == "[":
            stack.append(cur)
            cur.append([])
            cur = cur[-1]
        elif tok == "]":
            cur = stack.pop()
        elif tok.startswith('"'):
            cur.append(bytes.fromhex(m.group(1).replace("\\x", "")))
        elif tok == "NULL":
            cur.append(None)
        else:
            cur.append(tok)
    return out


def strace_whole_lines(text):
    """The lines of `strace -f` output with every call whole: a call cut in
    two by another thread's ("<unfinished ...>" then "<... X resumed>") is
    joined back, under its first line's pid.  An execve by a thread that is
    not the leader ends "<pid changed to P ...>" and resumes under P, the
    leader's pid (the kernel gives the exec'ing thread the leader's pid):
    joined back under P, whose process it is."""
    import re
    lines, pending = [], {}
    for line in text.splitlines():
        m = re.match(r"^(\d+) +(.*) <(unfinished|pid changed to (\d+)) \.\.\.>$", line)
        if m:
            pending[m.group(4) or m.group(1)] = (m.group(4) or m.group(1), m.group(2))
            continue
        m = re.match(r"^(\d+) +<\.\.\. \w+ resumed>(.*)$", line)
        if m:
            pid, head = pending.pop(m.group(1))
            line = f"{pid} {head}{m.group(2)}"
        lines.append(line)
    return lines


def bpf_ids_held(pid):
    """(program ids, map ids) of the BPF objects process `pid` holds fds of,
    from its fdinfo: ours alone, while other tracers on the machine come and
    go."""
    progs, maps = set(), set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                progs.add(int(value))
            elif key == "map_id":
                maps.add(int(value))
    return progs, maps


def bpf_ids_loaded():
    """(program ids, map ids) loaded in the kernel now, as bpftool lists them."""
    ids = []
    for kind in ("prog", "map"):
        out = subprocess.run(["bpftool", kind, "list", "--json"], capture_output=True,
                             check=True).stdout
        ids.append({x["id"] for x in json.loads(out or b"[]")})
    return tuple(ids)


def still_loaded(held, wait=5.0):
    """Of the (programs, maps) a process held, those still loaded after up
    to `wait` seconds.  The kernel frees them after the process is gone,
    some a moment later: a program drops its maps only when its own
    deferred free runs, after an RCU grace period (seen: 7 maps of an
    exited rbtrace still listed just after its exit)."""
    deadline = time.monotonic() + wait
    while True:
        left = [h & now for h, now in zip(held, bpf_ids_loaded())]
        if not any(left) or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


class Tracer:
    def __init__(self, args, env=None):
        self.args = args
        self.proc = subprocess.Popen(
            [*RBTRACE_ARGV, *args], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})})
        self._out = b""

    def wait_started(self, timeout=60):
        """Block until the `start` line: the probes are attached."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._out:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.proc.kill()
                out, err = self.proc.communicate()
                raise AssertionError(f"rbtrace did not start: rc={self.proc.returncode} "
                                     f"stderr={err.decode(errors='replace')}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                self._out += chunk
        first = json.loads(self._out.split(b"\n", 1)[0])
        assert first["type"] == "start", first
        return self

    def stop(self, sig=signal.SIGINT, timeout=60) -> Result:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.finish(timeout)

    def finish(self, timeout=120) -> Result:
        out, err = self.proc.communicate(timeout=timeout)
        r = parse_json_lines((self._out + out).decode())
        r.stderr = err.decode(errors="replace")
        r.returncode = self.proc.returncode
        return r


@pytest.fixture
def tmux_session(kernel_ok):
    """A fresh tmux session's name (tmuxterm.py drives it); killed after."""
    import shutil
    import uuid
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (make setup-test installs it)")
    name = "rbtrace-test-" + uuid.uuid4().hex[:8]
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


@pytest.fixture
def rbtrace(kernel_ok):
    started = []

    def start(*args, env=None, wait=True):
        t = Tracer(list(args), env)
        started.append(t)
        return t.wait_started() if wait else t

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.communicate()


def run_cli(*args, timeout=120, input=None, env=None):
    """Run rbtrace to completion; returns CompletedProcess (bytes)."""
    return subprocess.run([*RBTRACE_ARGV, *args], cwd=REPO,
                          capture_output=True, timeout=timeout, input=input,
                          env={**os.environ, **(env or {})})
