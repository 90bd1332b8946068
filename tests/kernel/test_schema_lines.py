"""Every line of real --json output is valid against the shipped JSON schema.

For each kind declared by a spec (rbtrace/spec.py), rbtrace runs on a
small real workload (processes that open files, connect over TCP to a
local server, exec with and without success, exit with codes and by
signals, kill), with --json, and every line it writes (start, events,
lost, summary) is validated against schema/rbtrace-events.schema.json
(tests/unit/schemacheck.py): a member the output has and the spec lacks,
a missing member, a wrong type or range fails here.

Two runs per kind, so that every optional member of the run's own lines
shows: following the workload by `--pid P --children` with rbtrace
stopped (SIGSTOP) while the workload runs, so that its small ring fills
and `lost` lines and drops are real; and following it as `-- CMD`
(the summary's `command`).
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, parse_json_lines

sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
import schemacheck  # noqa: E402
from rbtrace import spec  # noqa: E402

RBTRACE = [sys.executable, "-m", "rbtrace"]

# Arguments a kind needs: the tracepoints for tp, a probe file for run.
ARGUMENTS = {"tp": ["sched:sched_process_fork", "syscalls:sys_enter_openat"],
             "run": [os.path.join(REPO, "examples", "kill.bpf.c")]}

# Processes the workload starts: enough events to overflow a 16 KiB ring
# while rbtrace is stopped, whatever the kind (exit records are 72 bytes).
CHILDREN = 400

WORKLOAD = r'''
import os, signal, socket, sys
if sys.argv[1] == "wait":
    sys.stdin.readline()                  # rbtrace is attached (and stopped)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
port = srv.getsockname()[1]
for i in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        try:
            open(b"/nonexistent-rbtrace-schema-\xff")   # a failed open, non-UTF-8 path
        except OSError:
            pass
        with open("/etc/hostname", "rb"):
            pass
        socket.create_connection(("127.0.0.1", port)).close()
        for _ in range(5):
            os.kill(os.getpid(), 0)           # kill(2) calls, for run's kill.bpf.c
        if i % 4 == 0:
            os.execv("/bin/true", [b"true", b"arg-\xfe"])
        elif i % 4 == 1:
            try:
                os.execv("/nonexistent-rbtrace-schema", ["x"])
            except OSError:
                os._exit(3)
        elif i % 4 == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    conn, _ = srv.accept()
    conn.close()
    os.waitpid(pid, 0)
'''


def _kinds():
    return [pytest.param(s.name, id=s.name) for s in spec.declared()]


def _check(kind, text, what):
    r = parse_json_lines(text)
    assert r.lines and r.lines[0]["type"] == "start" and r.lines[-1]["type"] == "summary", \
        text[-2000:]
    assert r.events, f"{what}: no {kind} events"
    assert {e["type"] for e in r.events} == {kind}
    schemacheck.check(r.lines, f"rbtrace {kind} {what}")
    return r


@pytest.mark.parametrize("kind", _kinds())
def test_every_line_of_a_stopped_run_with_losses_is_valid(kind, kernel_ok, tmp_path):
    assert kind in ARGUMENTS or not spec.load(kind).arguments, \
        f"{kind} takes arguments: add them to ARGUMENTS"
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    work = subprocess.Popen([sys.executable, str(script), "wait", str(CHILDREN)],
                            stdin=subprocess.PIPE)
    tracer = subprocess.Popen([*RBTRACE, kind, *ARGUMENTS.get(kind, []), "--json",
                               "--ring-size", "16K", "--pid", str(work.pid), "--children"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = tracer.stdout.readline()
        assert first.startswith(b'{"type":"start"'), (first, tracer.stderr.read1())
        tracer.send_signal(signal.SIGSTOP)          # the ring fills: real drops
        work.stdin.write(b"go\n")
        work.stdin.close()
        assert work.wait(timeout=120) == 0
        time.sleep(0.2)
        tracer.send_signal(signal.SIGCONT)
        out, err = tracer.communicate(timeout=120)  # ends when the process exits
    finally:
        for p in (tracer, work):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert tracer.returncode == 0, err.decode(errors="replace")
    r = _check(kind, (first + out).decode(), "--pid --children, stopped")
    assert r.lost and r.summary["dropped"] > 0, "the stopped run must have lost events"
    assert r.summary["stopped_by"] == "process exited" and "followed_root" in r.summary


@pytest.mark.parametrize("kind", _kinds())
def test_every_line_of_a_followed_command_is_valid(kind, kernel_ok, tmp_path):
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    p = subprocess.run([*RBTRACE, kind, *ARGUMENTS.get(kind, []), "--json", "--",
                        sys.executable, str(script), "go", "8"],
                       cwd=REPO, capture_output=True, timeout=180)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    r = _check(kind, p.stdout.decode(), "-- CMD")
    assert r.summary["command"]["status"] == 0 and r.summary["stopped_by"] == "command exited"
