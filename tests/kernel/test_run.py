"""rbtrace run on the real kernel: the shipped example probes against what
their workloads did (the kill() calls a process made and their results, the
exit codes its parent collected, the signals it handled), the filters, JSON
and plain output, exact drop counts under a burst, a probe of one's own
with a raw tracepoint, a local header and nested members, and the errors:
compiler and verifier messages with the user's file and line, and hooks
this kernel can't load refused with rbtrace doctor's reason."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, parse_json_lines, run_cli

EXAMPLES = os.path.join(REPO, "examples")
KILL = os.path.join(EXAMPLES, "kill.bpf.c")
EXIT = os.path.join(EXAMPLES, "exit.bpf.c")
SIGNAL = os.path.join(EXAMPLES, "signal.bpf.c")

# kill() calls with known targets and signals; prints what each returned.
KILLER = r"""
import json, os, signal, subprocess, sys
if "--gate" in sys.argv:
    sys.stdin.readline()                     # rbtrace is attached
done = []
def kill(pid, sig):
    try:
        os.kill(pid, sig)
        done.append([pid, int(sig), 0])
    except ProcessLookupError:
        done.append([pid, int(sig), -3])      # -ESRCH
children = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
for child, sig in zip(children, (signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1)):
    kill(child.pid, 0)
    kill(child.pid, sig)
    child.wait()
kill(-os.getpgid(0), 0)                      # a process group: target < 0
gone = next(p for p in range(32767, 300, -1) if not os.path.exists(f"/proc/{p}"))
kill(gone, 0)
kill(gone, 0)
with open("/proc/self/comm") as f:
    comm = f.read().strip()
print(json.dumps({"pid": os.getpid(), "comm": comm, "kills": done}), file=sys.stderr, flush=True)
"""


def start_killer():
    return subprocess.Popen([sys.executable, "-c", KILLER, "--gate"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_killer(p):
    _, err = p.communicate("go\n", timeout=60)
    assert p.returncode == 0, err
    return json.loads(err.strip().splitlines()[-1])


def kill_args(events):
    return [[e["args"]["target"], e["args"]["sig"], e["args"]["ret"]] for e in events]


def test_kill_example_reports_every_call_of_the_process_exactly(rbtrace):
    """-p: the calls of one process, in order, with exact fields; a second
    process making the same calls at the same time is not seen, not even
    in the sequence numbers (the filter runs before anything is taken)."""
    target, noise = start_killer(), start_killer()
    try:
        t = rbtrace("run", KILL, "--json", "-p", str(target.pid))
        truth, _ = finish_killer(target), finish_killer(noise)
        r = t.stop()
    finally:
        for p in (target, noise):
            p.kill()
            p.wait()
    assert r.returncode == 130, r.stderr
    assert r.lines[0]["probe"] == "run" and r.lines[0]["filters"] == f"pid={target.pid}"
    assert kill_args(r.events) == truth["kills"]
    for e in r.events:
        assert e["type"] == "run" and e["event"] == "kill_event"
        assert (e["pid"], e["tid"], e["comm"], e["uid"], e["user"]) == \
            (truth["pid"], truth["pid"], truth["comm"], os.getuid(), "root")
        assert e["ppid"] == os.getpid() and isinstance(e["ts_ns"], int)
        assert set(e["args"]) == {"ret", "target", "sig"}
    assert [e["seq"] for e in r.events] == list(range(len(r.events)))
    s = r.summary
    n = len(truth["kills"])
    assert n == 9 and (s["seen"], s["submitted"], s["delivered"], s["dropped"]) == (n, n, n, 0)
    assert s["top_errors"] == {"ESRCH": 2}


def test_failed_filter_keeps_only_the_calls_that_failed(rbtrace):
    target = start_killer()
    try:
        t = rbtrace("run", KILL, "--json", "-x", "-p", str(target.pid))
        truth = finish_killer(target)
        r = t.stop()
    finally:
        target.kill()
        target.wait()
    failed = [k for k in truth["kills"] if k[2] < 0]
    assert len(failed) == 2 and kill_args(r.events) == failed
    assert r.lines[0]["filters"] == f"pid={target.pid} failed"


def test_plain_lines_of_a_followed_command(kernel_ok):
    """-- CMD, plain lines: the command's calls and nothing else."""
    p = run_cli("run", KILL, "--", sys.executable, "-c", KILLER)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 0, err
    truth = json.loads(next(ln for ln in err.splitlines() if ln.startswith("{")))
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "PID", "COMM", "EVENT", "ARGS"]
    rows = [re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} +(\d+) (.{15}) kill_event +"
                         r"ret=(-?\d+) target=(-?\d+) sig=(\d+)", ln) for ln in lines[1:]]
    assert all(rows), lines
    assert [[int(m[4]), int(m[5]), int(m[3])] for m in rows] == truth["kills"]
    assert {(int(m[1]), m[2].strip()) for m in rows} == {(truth["pid"], truth["comm"])}
    assert re.search(r"rbtrace run: 9 events delivered, 0 dropped, .*python\S* exited with "
                     r"status 0", err), err


EXITER = r"""
import os, sys
statuses = {}
for code in (0, 1, 7, 255, 256 + 3):
    pid = os.fork()
    if pid == 0:
        os._exit(code)                       # exit_group(code)
    _, status = os.waitpid(pid, 0)
    statuses[pid] = os.WEXITSTATUS(status)
with open(sys.argv[1], "w") as f:
    f.write(repr(statuses))
"""


def test_exit_example_codes_equal_the_parents_waitpid_statuses(kernel_ok, tmp_path):
    report = tmp_path / "statuses"
    p = run_cli("run", EXIT, "--json", "--", sys.executable, "-c", EXITER, str(report))
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    statuses = eval(report.read_text())
    children = {e["pid"]: e["args"]["code"] for e in r.events if e["pid"] in statuses}
    assert {pid: code & 0xFF for pid, code in children.items()} == statuses
    assert sorted(children.values()) == [0, 1, 7, 255, 259]
    # ... and the command itself, last, with 0: every exit_group of the tree.
    assert len(r.events) == 6 and r.events[-1]["args"]["code"] == 0
    assert r.summary["command"]["status"] == 0 and r.summary["dropped"] == 0


SIGNALLER = r"""
import os, signal, subprocess, sys, json
signal.signal(signal.SIGUSR1, lambda *a: None)
os.kill(os.getpid(), signal.SIGUSR1)
child = subprocess.Popen(["sleep", "60"])
child.terminate()
child.wait()
print(json.dumps({"pid": os.getpid(), "child": child.pid}), file=sys.stderr)
"""


def test_signal_example_shows_handlers_in_hex(kernel_ok):
    p = run_cli("run", SIGNAL, "--json", "--", sys.executable, "-c", SIGNALLER)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    truth = json.loads(next(ln for ln in err.splitlines() if ln.startswith("{")))
    r = parse_json_lines(p.stdout.decode())
    got = {(e["pid"], e["args"]["sig"]): e["args"] for e in r.events}
    own = got[(truth["pid"], 10)]
    assert re.fullmatch(r"0x[0-9a-f]+", own["handler"]) and int(own["handler"], 16) > 1
    assert re.fullmatch(r"0x[0-9a-f]+", own["sa_flags"]) and own["code"] == 0   # SI_USER: kill()
    # The sleeping child dies by the default action, no handler.  (A fatal
    # signal is delivered as SIGKILL to the whole group: complete_signal().)
    (child,) = [a for (pid, sig), a in got.items() if pid == truth["child"]]
    assert child["handler"] == "0x0" and child["sig"] in (15, 9)


def test_drops_under_a_burst_are_counted_exactly(kernel_ok):
    """A 4 KiB ring holds about 56 records; 20000 kill() calls as fast as
    Python makes them: every call is either delivered or counted as
    dropped, and the gaps in seq are the ring-full drops."""
    burst = "import os\nme = os.getpid()\nfor _ in range(20000):\n    os.kill(me, 0)\n"
    p = run_cli("run", KILL, "--json", "--ring-size", "4K", "--", sys.executable, "-c", burst)
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    s = r.summary
    assert s["delivered"] == len(r.events) == s["submitted"]
    assert s["delivered"] + s["dropped"] == s["seen"] == 20000
    assert s["dropped"] == s["ringbuf_full"] > 0 and s["map_full"] == 0
    seqs = sorted(e["seq"] for e in r.events)
    assert len(set(seqs)) == len(seqs)
    assert 20000 - len(seqs) == s["ringbuf_full"] and max(seqs) < 20000
    assert sum(x["dropped"] for x in r.lost) == s["dropped"]


OWN_HEADER = """#include "rbtrace.h"

struct pair {
    u32 lo;
    u32 hi;
};

struct sys_event {
    struct rb_header h;
    u64 nr;
    u64 regs;                   /* a kernel address */
    struct pair pid;            /* the pid argument, split */
    s8 small[4];
    u16 words[3];
};
RBTRACE_EVENT(sys_event);
RBTRACE_HEX(sys_event, regs);
"""

OWN_PROBE = """// A probe of one's own: a raw tracepoint, a local header.
#include "own.h"

RAW_TRACEPOINT_PROBE(sys_enter)
{
    /* sys_enter(struct pt_regs *regs, long id) */
    if (ctx->args[1] != 62)     /* __NR_kill on x86-64 */
        return 0;
    struct sys_event *e = rbtrace_reserve(sys_event);
    if (!e)
        return 0;
    e->nr = ctx->args[1];
    e->regs = ctx->args[0];
    e->pid.lo = 0x12345678;
    e->pid.hi = 0x9abc;
    e->small[0] = -1;
    e->small[1] = 0;
    e->words[0] = 1;
    e->words[1] = 2;
    e->words[2] = 65535;
    rbtrace_submit(e);
    return 0;
}
"""


def test_a_probe_of_ones_own_with_a_raw_tracepoint_and_a_local_header(kernel_ok, tmp_path):
    if os.uname().machine != "x86_64":
        pytest.fail("the probe below uses x86-64's syscall number for kill")
    (tmp_path / "own.h").write_text(OWN_HEADER)
    probe = tmp_path / "own.bpf.c"
    probe.write_text(OWN_PROBE)
    work = "import os\nfor _ in range(3):\n    os.kill(os.getpid(), 0)\n"
    p = run_cli("run", str(probe), "--json", "--", sys.executable, "-c", work)
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    assert len(r.events) == 3 and r.summary["submitted"] == 3
    for e in r.events:
        args = e["args"]
        assert e["event"] == "sys_event" and list(args) == [
            "nr", "regs", "pid.lo", "pid.hi", "small", "small_b64", "words"]
        assert args["nr"] == 62 and re.fullmatch(r"0xffff[0-9a-f]{12}", args["regs"])
        assert (args["pid.lo"], args["pid.hi"]) == (0x12345678, 0x9ABC)
        assert args["small"] == "\ufffd" and args["small_b64"] == "/w=="
        assert args["words"] == [1, 2, 65535]


# --- errors -----------------------------------------------------------------

BROKEN = {
    # After TRACEPOINT_PROBE, BCC inserts the tracepoint's struct above the
    # function: the line numbers must still be the file's.
    "member": ("""#include "rbtrace.h"

struct ev {
    struct rb_header h;
    s32 sig;
};
RBTRACE_EVENT(ev);

TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    struct ev *e = rbtrace_reserve(ev);
    if (!e)
        return 0;
    e->sig = args->signal;
    rbtrace_submit(e);
    return 0;
}
""", 14, "no member named 'signal' in 'struct tracepoint__syscalls__sys_enter_kill'"),
    # An error inside the expansion of rbtrace.h's macro: reported where it
    # is used.
    "macro": ("""#include "rbtrace.h"
struct ev { struct rb_header h; s32 sig; };
RBTRACE_EVENT(ev);

TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_kill)
{
    struct evx *e = rbtrace_reserve(evx);
    if (e)
        rbtrace_submit(e);
    return 0;
}
""", 12, "invalid application of 'sizeof' to an incomplete type 'struct evx'"),
    # A whole probe on the line of its TRACEPOINT_PROBE: BCC's struct is
    # inserted before it on that very line.
    "one-line": ("""#include "rbtrace.h"
struct ev { struct rb_header h; s32 sig; };
RBTRACE_EVENT(ev);

TRACEPOINT_PROBE(syscalls, sys_enter_kill) { return args->signal; }
""", 5, "no member named 'signal' in 'struct tracepoint__syscalls__sys_enter_kill'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_compile_error_names_the_users_file_and_line(kernel_ok, tmp_path, case):
    text, line, message = BROKEN[case]
    path = tmp_path / f"{case}.bpf.c"
    path.write_text(text)
    p = run_cli("run", str(path), "--json")
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"", err
    assert len(err.splitlines()) == 1, err
    m = re.fullmatch(rf"rbtrace: {re.escape(str(path))}:(\d+):\d+: error: (.*) \(hint: run "
                     rf"with --debug for the compiler's full output\)\n", err)
    assert m and int(m[1]) == line and m[2] == message, err
    d = run_cli("run", str(path), "--json", "--debug")
    assert d.returncode == 1 and d.stdout == b""
    assert "1 error generated" in d.stderr.decode()


def test_verifier_refusal_in_a_bpf_loop_callback_says_why(kernel_ok, tmp_path):
    """A callback is linked in by rbtrace (BCC can't): the verifier's
    reason comes from the program as rbtrace loads it."""
    path = tmp_path / "callback.bpf.c"
    path.write_text("""#include "rbtrace.h"
struct ev { struct rb_header h; u32 value; };
RBTRACE_EVENT(ev);
BPF_HASH(seen, u32, u32);

LOOP_CALLBACK(1, step)
{
    u32 key = 1;
    u32 *v = seen.lookup(&key);
    return *v & 1;
}

TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    bpf_loop(4, LOOP_CALLBACK_REF(1), 0, 0);
    return 0;
}
""")
    p = run_cli("run", str(path))
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"" and len(err.splitlines()) == 1, err
    assert "the kernel's verifier refused the program: R0 invalid mem access " \
        "'map_value_or_null'" in err, err


def test_verifier_refusal_names_the_line(kernel_ok, tmp_path):
    path = tmp_path / "nullcheck.bpf.c"
    path.write_text("""#include "rbtrace.h"
struct ev { struct rb_header h; u32 value; };
RBTRACE_EVENT(ev);
BPF_HASH(seen, u32, u32);

TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    u32 key = 1;
    u32 *v = seen.lookup(&key);
    struct ev *e = rbtrace_reserve(ev);
    if (!e)
        return 0;
    e->value = *v;
    rbtrace_submit(e);
    return 0;
}
""")
    p = run_cli("run", str(path))
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"" and len(err.splitlines()) == 1, err
    assert err.startswith(f"rbtrace: {path}:13: the kernel's verifier refused the program: "), err
    assert "invalid mem access" in err and "(at: e->value = *v;)" in err


@pytest.mark.parametrize("kind, hook", [
    ("kprobe", "int kprobe__do_sys_openat2(struct pt_regs *ctx)"),
    ("fentry", "KFUNC_PROBE(do_sys_openat2, int dfd)"),
])
def test_hook_the_kernel_cannot_load_is_refused_with_doctors_reason(kernel_ok, tmp_path, kind,
                                                                   hook):
    """The refusal itself, whatever this kernel loads: RBTRACE_FORCE_UNLOADABLE
    makes the hook kind fail as on a kernel without it, with a reason known
    here, not read back from the function that builds the message."""
    path = tmp_path / f"{kind}.bpf.c"
    path.write_text('#include "rbtrace.h"\nstruct ev { struct rb_header h; s32 x; };\n'
                    f"RBTRACE_EVENT(ev);\n{hook}\n{{\n    return 0;\n}}\n")
    env = {"RBTRACE_FORCE_UNLOADABLE": kind}
    p = run_cli("run", str(path), "--json", "-d", "0.5", env=env)
    assert p.returncode == 1 and p.stdout == b"", p.stderr
    assert p.stderr.decode() == (
        f"rbtrace: {path}: uses {kind} hooks, which this kernel can't load: refused by "
        f"RBTRACE_FORCE_UNLOADABLE (a testing aid) (hint: rbtrace doctor lists the hook kinds "
        f"that load here; use tracepoints)\n")
    # doctor gives the same verdict, and a hook kind rbtrace doesn't need
    # doesn't fail it.
    d = run_cli("doctor", env=env)
    line = [ln for ln in d.stdout.decode().splitlines() if f" hook {kind} " in ln]
    assert line == [f"no       hook {kind:<15} refused by RBTRACE_FORCE_UNLOADABLE (a testing aid)"]


def test_doctor_fails_when_tracepoints_cannot_load(kernel_ok):
    d = run_cli("doctor", env={"RBTRACE_FORCE_UNLOADABLE": "tracepoint"})
    assert d.returncode == 1, d.stdout
    assert ("missing  hook tracepoint      refused by RBTRACE_FORCE_UNLOADABLE (a testing aid)"
            in d.stdout.decode().splitlines())


def test_missing_tracepoint_is_named_with_a_commented_one_ignored(kernel_ok, tmp_path):
    path = tmp_path / "nosuch.bpf.c"
    path.write_text('#include "rbtrace.h"\nstruct ev { struct rb_header h; s32 x; };\n'
                    "RBTRACE_EVENT(ev);\n/*\nTRACEPOINT_PROBE(nosuch, commented_out)\n*/\n"
                    "TRACEPOINT_PROBE(syscalls, sys_enter_nosuchcall)\n{\n    return 0;\n}\n")
    p = run_cli("run", str(path), "--json")
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"" and len(err.splitlines()) == 1, err
    assert err.startswith(f"rbtrace: {path}: tracepoint syscalls:sys_enter_nosuchcall does not "
                          f"exist on this kernel"), err


def test_direct_ring_writes_run_but_are_warned_about_once(kernel_ok, tmp_path):
    path = tmp_path / "direct.bpf.c"
    path.write_text("""#include "rbtrace.h"
struct ev { struct rb_header h; s32 sig; };
RBTRACE_EVENT(ev);
TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    struct ev *e;
    /* Only the followed command: kill(pid, 0) is common on a busy host. */
    if (!rbtrace_task_wanted())
        return 0;
    e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return 0;
    fill_header(&e->h, next_seq());
    e->sig = args->sig;
    events.ringbuf_submit(e, 0);
    return 0;
}
""")
    work = "import os\nfor sig in (0, 0, 0):\n    os.kill(os.getpid(), sig)\n"
    p = run_cli("run", str(path), "--json", "--", sys.executable, "-c", work)
    err = p.stderr.decode().splitlines()
    assert p.returncode == 0, err
    warnings = [ln for ln in err if "warning" in ln]
    assert warnings == [f"rbtrace run: warning: {path}:10: events.ringbuf_reserve() and "
                        f"events.ringbuf_submit() called directly: records dropped and sent are "
                        f"not counted, so loss accounting is off (rbtrace_reserve() and "
                        f"rbtrace_submit() count them)"]
    assert err.index(warnings[0]) == 0, "said at the start"
    r = parse_json_lines(p.stdout.decode())
    assert [e["args"]["sig"] for e in r.events] == [0, 0, 0]
    assert r.summary["delivered"] == 3 and r.summary["submitted"] == 0    # what it warned of


@pytest.mark.parametrize("structs, message", [
    ("struct a { struct rb_header h; s32 x; };\nstruct b { struct rb_header h; u32 y; };\n"
     "RBTRACE_EVENT(a);\nRBTRACE_EVENT(b);\n",
     "event structs a and b are both 80 bytes, and records are told apart by their size"),
    ("struct a { s32 x; struct rb_header h; };\nRBTRACE_EVENT(a);\n",
     "struct a does not begin with struct rb_header"),
    ("struct a { struct rb_header h; u32 grid[2][3]; u64 after; };\nRBTRACE_EVENT(a);\n",
     "struct a is 104 bytes but BCC describes 88: multi-dimensional arrays are not supported"),
    ("struct a { struct rb_header h; u32 mode:3, kind:5; };\nRBTRACE_EVENT(a);\n",
     "struct a: event member mode is a bit-field"),
])
def test_layouts_rbtrace_cannot_decode_are_refused_after_compiling(kernel_ok, tmp_path, structs,
                                                                   message):
    path = tmp_path / "layout.bpf.c"
    path.write_text('#include "rbtrace.h"\n' + structs +
                    "TRACEPOINT_PROBE(syscalls, sys_enter_kill)\n{\n    return 0;\n}\n")
    p = run_cli("run", str(path), "--json")
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"" and len(err.splitlines()) == 1, err
    assert err.startswith(f"rbtrace: {path}: {message}"), err
