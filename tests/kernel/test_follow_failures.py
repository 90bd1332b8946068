"""`-- CMD` when something fails after CMD was forked (issue 19, item 10).

CMD is forked before the probe is compiled and held before exec.  When
loading fails then, CMD must never run untraced: the held child is killed
and reaped (follow.Command.abandon).  When the exec at release fails (a
file the kernel can't execute), rbtrace exits 126 as a shell does.

Ground truth: strace -f of rbtrace (the held child's fork, its SIGKILL,
and every execve), a marker file CMD would create, and /proc.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, parse_json_lines

RBTRACE = [sys.executable, "-m", "rbtrace"]
STRACE = shutil.which("strace")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}

GOOD_HEAD = r"""
#include "rbtrace.h"
struct exit_event {
    struct rb_header h;
    s32 code;
};
RBTRACE_EVENT(exit_event);
"""

BAD_PROBES = {
    # clang refuses it: an undeclared identifier.
    "compile error": GOOD_HEAD + r"""
TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    struct exit_event *e = rbtrace_reserve(exit_event);
    if (!e)
        return 0;
    e->code = no_such_variable_anywhere;
    rbtrace_submit(e);
    return 0;
}
""",
    # Compiles, but the tracepoint does not exist on this kernel.
    "missing tracepoint": GOOD_HEAD + r"""
TRACEPOINT_PROBE(syscalls, sys_enter_no_such_call_rbtrace)
{
    struct exit_event *e = rbtrace_reserve(exit_event);
    if (!e)
        return 0;
    e->code = 0;
    rbtrace_submit(e);
    return 0;
}
""",
}


def _processes_mentioning(mark):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if mark.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("kind", BAD_PROBES)
def test_cmd_never_runs_when_the_probe_fails_to_load(kernel_ok, tmp_path, kind):
    if STRACE is None:
        pytest.fail("strace is not installed (make setup-test installs it)")
    mark = uuid.uuid4().hex
    marker = tmp_path / f"ran-{mark}"
    probe = tmp_path / "bad.bpf.c"
    probe.write_text(BAD_PROBES[kind])
    log = tmp_path / "strace.log"
    p = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=execve,kill", "-e", "signal=none",
                        "-o", str(log), *RBTRACE, "run", "--json", str(probe), "--",
                        "/bin/sh", "-c", f"touch {marker}"],
                       cwd=REPO, env=ENV, capture_output=True, timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("rbtrace: "), err
    assert p.stdout == b"", "nothing was attached, so not even a start line"
    trace = log.read_text()
    # CMD had been forked (the compile comes after), and was killed, held.
    kills = re.findall(r"^\d+ +kill\((\d+), SIGKILL\)\s+= 0", trace, re.M)
    assert len(kills) == 1, trace[-2000:]
    execs = re.findall(r'^(\d+) +execve\("([^"]*)"', trace, re.M)
    assert [path for _, path in execs] == [sys.executable], execs   # rbtrace's own only
    time.sleep(0.5)                 # a CMD let go would have touched it by now
    assert not marker.exists(), "CMD ran untraced"
    assert _processes_mentioning(mark) == []
    assert not os.path.exists(f"/proc/{kills[0]}"), "the held child was left behind"


def test_tp_with_a_bad_tracepoint_fails_before_cmd_is_forked(kernel_ok, tmp_path):
    """tp checks its tracepoints against tracefs first: CMD is never forked."""
    mark = uuid.uuid4().hex
    marker = tmp_path / f"ran-{mark}"
    log = tmp_path / "strace.log"
    p = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=execve,kill,clone,clone3,fork,vfork",
                        "-e", "signal=none", "-o", str(log), *RBTRACE, "tp", "--json",
                        "syscalls:sys_enter_no_such_call_rbtrace", "--",
                        "/bin/sh", "-c", f"touch {marker}"],
                       cwd=REPO, env=ENV, capture_output=True, timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert len(err.splitlines()) == 1 and "sys_enter_no_such_call_rbtrace" in err, err
    assert p.stdout == b""
    trace = log.read_text()
    assert [m for m in re.findall(r'execve\("([^"]*)"', trace)] == [sys.executable], trace
    time.sleep(0.5)
    assert not marker.exists()
    assert _processes_mentioning(mark) == []


def test_exec_of_a_garbage_file_fails_at_release_with_126(kernel_ok, tmp_path):
    """resolve() accepts it (a regular, executable file); the kernel's
    execve refuses it (ENOEXEC) once CMD is released: one error line,
    exit 126, the failed exec traced, nothing left running."""
    garbage = tmp_path / f"garbage-{uuid.uuid4().hex[:8]}"
    garbage.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 4)
    garbage.chmod(0o755)
    p = subprocess.run([*RBTRACE, "exec", "--json", "--", str(garbage), "arg"],
                       cwd=REPO, env=ENV, capture_output=True, timeout=300)
    err = p.stderr.decode().splitlines()
    assert p.returncode == 126, err
    errors = [ln for ln in err if ln.startswith("rbtrace: ")]
    assert errors == [f"rbtrace: {garbage}: Exec format error"], err
    assert len(err) == 2 and err[0].startswith("rbtrace exec: 1 events delivered"), err
    r = parse_json_lines(p.stdout.decode())
    assert [(e["filename"], e["argv"], e["errno"]) for e in r.events] == [
        (str(garbage), [str(garbage), "arg"], "ENOEXEC")]
    assert r.summary["command"] == {"argv": [str(garbage), "arg"], "pid": r.events[0]["pid"],
                                    "status": 126, "signal": None}
    assert not os.path.exists(f"/proc/{r.events[0]['pid']}"), "CMD's process left behind"
    # What a shell says: the same status (dash then tries it as a script,
    # which rbtrace does not).
    sh = subprocess.run(["/bin/bash", "-c", '"$0" arg', str(garbage)], env=ENV,
                        capture_output=True)
    assert sh.returncode == 126, sh


def test_cmd_and_comm_names_that_are_not_utf8(kernel_ok, tmp_path):
    """argv bytes that are not UTF-8 (CMD's name, a --comm) were an internal
    error when the start and summary records were written as JSON."""
    import base64
    d = tmp_path / "bin"
    d.mkdir()
    name = os.fsdecode(b"t\xff\x1b")
    shutil.copy("/bin/true", d / name)
    p = subprocess.run([*RBTRACE, "exec", "--json", "--", str(d / name), "x"],
                       cwd=REPO, env=ENV, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = parse_json_lines(p.stdout.decode("utf-8"))
    assert r.lines[0]["filters"] == "command=t\ufffd\x1b"
    [e] = r.events
    assert [base64.b64decode(a) for a in e["argv_b64"]] == [os.fsencode(d / name), b"x"]
    assert r.summary["command"]["argv"] == [os.fsencode(d / name).decode("utf-8", "replace"), "x"]
    err = p.stderr.decode()
    assert err.count("\n") == 1 and err[:-1].isprintable(), err
    p = subprocess.run([*RBTRACE, "exec", "--json", "-d", "0.5", "--comm", name],
                       cwd=REPO, env=ENV, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[0])["filters"] == "comm=t\ufffd\x1b"
