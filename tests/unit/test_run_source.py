"""rbtrace run without the kernel: what is read from a probe file before it
is compiled (event structs, hooks, writes that bypass the counters), the
refusals and their messages, record layouts from BCC-style ctypes structs,
and decoding under "args" by C path.  No root needed."""
import configparser
import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

from rbtrace import bpf
from rbtrace.bpf import check_event_types, dtype_from_ctypes
from rbtrace.csource import code_only
from rbtrace.errors import Exit, ProbeError, UsageError
from rbtrace.kinds import run
from rbtrace.kinds.run import RunCodec, counts_errors, read_probe, ring_warnings
from rbtrace.ringbuf import EventType

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")

EVENT = """
struct ev {
    struct rb_header h;
    s32 sig;
};
RBTRACE_EVENT(ev);
"""
HOOK = """
TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    struct ev *e = rbtrace_reserve(ev);
    if (!e)
        return 0;
    e->sig = args->sig;
    rbtrace_submit(e);
    return 0;
}
"""


def probe_file(tmp_path, text, name="p.bpf.c"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def good(tmp_path, extra=""):
    return probe_file(tmp_path, '#include "rbtrace.h"\n' + EVENT + HOOK + extra)


# --- what is read from the source -------------------------------------------

def test_examples_are_read_as_they_are_meant():
    kill = read_probe(os.path.join(EXAMPLES, "kill.bpf.c"))
    assert kill.event_names == ("kill_event",)
    assert [h.what for h in kill.hooks] == ["tracepoint syscalls:sys_enter_kill",
                                            "tracepoint syscalls:sys_exit_kill"]
    assert {"rbtrace_ret_wanted", "rbtrace_count_map_full"} <= kill.mentions
    assert ring_warnings(kill) == []
    signal = read_probe(os.path.join(EXAMPLES, "signal.bpf.c"))
    assert signal.marks == {("signal_event", "handler"): "hex",
                            ("signal_event", "sa_flags"): "hex"}
    exit_ = read_probe(os.path.join(EXAMPLES, "exit.bpf.c"))
    assert exit_.event_names == ("exit_event",) and ring_warnings(exit_) == []


def test_every_example_is_installed_and_named_in_the_man_page():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    assert cfg["options.data_files"]["share/rbtrace/examples"].strip() == "examples/*.bpf.c"
    with open(os.path.join(REPO, "man", "rbtrace-run.8")) as f:
        page = f.read()
    names = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".bpf.c"))
    assert names == ["exit.bpf.c", "kill.bpf.c", "signal.bpf.c"]
    for n in names:
        assert f".B {n}" in page and f"rbtrace run {n}" in page


def test_comments_and_strings_are_not_code(tmp_path):
    path = good(tmp_path, """
/* RBTRACE_EVENT(in_a_comment); int kprobe__x(void *ctx) { */
// RBTRACE_EVENT(in_a_line_comment)
static const char s[] = "RBTRACE_EVENT(in_a_string) kprobe__y(";
""")
    p = read_probe(path)
    assert p.event_names == ("ev",)
    assert [h.what for h in p.hooks] == ["tracepoint syscalls:sys_enter_kill"]


def test_code_only_keeps_lines_and_include_names():
    text = ('#include "rbtrace.h"\n/* a\n b */ int x; // c\n'
            'char *s = "RBTRACE_EVENT(x)\\" y"; char c = \'"\';\n')
    out = code_only(text)
    assert out.count("\n") == text.count("\n")
    assert out.splitlines()[0] == '#include "rbtrace.h"'
    assert "RBTRACE_EVENT" not in out and " b " not in out and "int x;" in out
    assert out.splitlines()[3].startswith('char *s = "') and out.endswith("char c = ' ';\n")


def test_events_and_marks_in_a_local_header_are_found_with_their_line(tmp_path):
    (tmp_path / "events.h").write_text('#include "rbtrace.h"\n\n' + EVENT +
                                       "RBTRACE_HEX(ev, sig);\n")
    path = probe_file(tmp_path, '#include "events.h"\n' + HOOK)
    p = read_probe(path)
    assert [(f.what, f.path, f.line) for f in p.events] == [("ev", "events.h", 8)]
    assert p.marks == {("ev", "sig"): "hex"}
    assert p.includes_ring


def test_a_define_of_an_event_is_not_an_event(tmp_path):
    p = read_probe(good(tmp_path, "#define MY_EVENT(n) \\\n    RBTRACE_EVENT(n)\n"))
    assert p.event_names == ("ev",)


# --- refusals ---------------------------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ('#include "rbtrace.h"\n' + HOOK, "declares no event struct"),
    (EVENT + HOOK, 'does not #include "rbtrace.h"'),
    ('#include "rbtrace.h"\n' + EVENT, "hooks nothing"),
    ('#include "rbtrace.h"\n' + EVENT + EVENT.replace("struct ev {", "struct ev2 {") + HOOK
     + "RBTRACE_EVENT(ev);\n", "p.bpf.c:13: RBTRACE_EVENT(ev) again (first at "),
    ('#include "rbtrace.h"\n' + EVENT + HOOK + "int on_malloc(struct pt_regs *ctx)\n{\n"
     "    return 0;\n}\n", "p.bpf.c:18: on_malloc(struct pt_regs *) would never be attached"),
    ('#include "rbtrace.h"\n' + EVENT + HOOK + "LSM_PROBE(file_open, struct file *f)\n"
     "{ return 0; }\n", "p.bpf.c:18: LSM_PROBE(file_open) is an LSM program"),
    ('#include "rbtrace.h"\n' + EVENT + HOOK + "KMOD_RET(do_sys_openat2, int dfd)\n"
     "{ return 0; }\n", "KMOD_RET(do_sys_openat2) is a KMOD_RET program"),
    ('#include "rbtrace.h"\n' + EVENT + "BPF_ITER(task)\n{ return 0; }\n",
     "p.bpf.c:8: BPF_ITER(task) is an iterator"),
])
def test_a_file_that_cannot_work_is_refused_before_compiling(tmp_path, text, needle):
    path = probe_file(tmp_path, text)
    with pytest.raises(ProbeError) as e:
        read_probe(path)
    assert needle in str(e.value)
    assert e.value.exit_code == Exit.ERROR and "\n" not in str(e.value)
    assert "rbtrace-run(8)" in str(e.value) or "again" in needle


def test_kprobe_hooks_count_as_hooks_and_are_left_to_the_doctor_check(tmp_path):
    path = probe_file(tmp_path, '#include "rbtrace.h"\n' + EVENT +
                      "int kprobe__do_sys_openat2(struct pt_regs *ctx)\n{ return 0; }\n")
    p = read_probe(path)
    assert [h.what for h in p.hooks] == ["kprobe do_sys_openat2"] and not p.unattached


@pytest.mark.parametrize("source, kind", [
    ("int kprobe__do_sys_openat2(struct pt_regs *ctx) { return 0; }", "kprobe"),
    ("int kretprobe__do_sys_openat2(struct pt_regs *ctx) { return 0; }", "kprobe"),
    ("KFUNC_PROBE(do_sys_openat2, int dfd) { return 0; }", "fentry"),
    ("KRETFUNC_PROBE(do_sys_openat2, int dfd, long ret) { return 0; }", "fentry"),
    ("int kfunc__do_sys_openat2(void *ctx) { return 0; }", "fentry"),
])
def test_hooks_the_kernel_cannot_load_are_refused_with_the_doctors_reason(monkeypatch, source,
                                                                          kind):
    asked = []

    def try_hook(k):
        asked.append(k)
        return False, f"the reason doctor gives for {k}"
    monkeypatch.setattr(bpf, "try_hook", try_hook)
    with pytest.raises(ProbeError) as e:
        bpf._refuse_hooks_that_cannot_load(source, "my.bpf.c")
    assert asked == [kind]
    assert str(e.value).startswith(f"my.bpf.c: uses {kind} hooks, which this kernel can't "
                                   f"load: the reason doctor gives for {kind}")
    asked.clear()
    bpf._refuse_hooks_that_cannot_load(f"/* {source} */\n// {source}\n", "my.bpf.c")
    assert asked == [], "a hook in a comment is not a hook"


def test_unreadable_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"^nope\.bpf\.c: no such file$"):
        read_probe("nope.bpf.c")
    with pytest.raises(UsageError) as e:
        read_probe("kill.bpf.c")        # not in the current directory
    assert e.value.hint == f"rbtrace's example is {os.path.join(EXAMPLES, 'kill.bpf.c')}"
    with pytest.raises(UsageError, match="is a directory"):
        read_probe(str(tmp_path))
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(UsageError, match="cannot read .*Not a directory"):
        read_probe(str(plain / "p.bpf.c"))


def test_failed_filter_needs_the_probe_to_say_what_failed(tmp_path):
    with pytest.raises(UsageError, match=r"-x/--failed: .* never calls rbtrace_ret_wanted"):
        RunCodec({"file": good(tmp_path), "failed": True})
    assert RunCodec({"file": os.path.join(EXAMPLES, "kill.bpf.c"), "failed": True})


def test_following_refuses_the_raw_tracepoints_it_uses_itself(tmp_path):
    path = good(tmp_path, "RAW_TRACEPOINT_PROBE(sched_process_exit)\n{ return 0; }\n")
    assert read_probe(path).hooks[-1].what == "raw_tracepoint sched_process_exit"
    with pytest.raises(UsageError, match=r"p\.bpf\.c:18: RAW_TRACEPOINT_PROBE\(sched_process_exit"):
        read_probe(path, follow=True)


# --- records that bypass the counters ---------------------------------------

DIRECT = """#include "rbtrace.h"
struct ev { struct rb_header h; s32 sig; };
RBTRACE_EVENT(ev);
TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    struct ev *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return 0;
    fill_header(&e->h, next_seq());
    events.ringbuf_submit(e, 0);
    return 0;
}
"""


def test_direct_ring_calls_are_one_warning_line(tmp_path, notices):
    path = probe_file(tmp_path, DIRECT)
    (line,) = ring_warnings(read_probe(path))
    assert line.startswith(f"{path}:6: events.ringbuf_reserve() and events.ringbuf_submit() "
                           f"called directly: records dropped and sent are not counted")
    RunCodec({"file": path})
    assert notices == [(f"rbtrace run: warning: {line}", True)]


def test_the_warning_line_on_stderr_from_the_command_line(tmp_path, stderr_notices, capsys):
    path = probe_file(tmp_path, DIRECT)
    (line,) = ring_warnings(read_probe(path))
    RunCodec({"file": path})
    assert capsys.readouterr().err == f"rbtrace run: warning: {line}\n"


def test_direct_ring_calls_that_count_are_not_warned_about(tmp_path):
    counted = DIRECT.replace("return 0;\n    fill_header", "{ count(STAT_RINGBUF_FULL); return 0; }"
                             "\n    fill_header").replace(
        "events.ringbuf_submit(e, 0);", "events.ringbuf_submit(e, 0);\n    count(STAT_SUBMITTED);")
    assert ring_warnings(read_probe(probe_file(tmp_path, counted))) == []


def test_other_rings_are_not_read_and_say_so(tmp_path):
    path = good(tmp_path, "BPF_PERF_OUTPUT(mine);\nstatic void f(void *ctx) { int x = 0; "
                          "mine.perf_submit(ctx, &x, sizeof(x)); }\n")
    (line,) = ring_warnings(read_probe(path))
    assert "mine.perf_submit() writes where rbtrace does not read" in line


# --- layouts ----------------------------------------------------------------

class Header(ctypes.Structure):
    _fields_ = [("ts_ns", ctypes.c_uint64), ("seq", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("ppid", ctypes.c_uint32), ("uid", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16), ("proc_start_ns", ctypes.c_uint64),
                ("rb_kind", ctypes.c_uint32), ("rb_pad", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


class Inner(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint16), ("name", ctypes.c_char * 6)]


class Anon(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint8), ("y", ctypes.c_int8)]


class Event(ctypes.Structure):
    _anonymous_ = ("__anon0",)
    _fields_ = [("h", Header), ("pid", ctypes.c_int32), ("flag", ctypes.c_bool),
                ("ptr", ctypes.c_uint64), ("in", Inner), ("slots", Inner * 2),
                ("__anon0", Anon), ("words", ctypes.c_uint32 * 3), ("a", ctypes.c_int64)]


def test_layout_columns_and_their_c_paths():
    dt = dtype_from_ctypes(Event)
    paths = dt.metadata["c_paths"]
    assert dt.itemsize == ctypes.sizeof(Event)
    assert [paths[n] for n in dt.names] == [
        "h.ts_ns", "h.seq", "h.pid", "h.tid", "h.ppid", "h.uid", "h.comm", "h.proc_start_ns",
        "h.rb_kind", "h.rb_pad", "h.cgroup_id", "pid", "flag", "ptr",
        "in.a", "in.name", "slots[0].a", "slots[0].name", "slots[1].a", "slots[1].name",
        "x", "y", "words", "a"]
    # Flat leaf names where free (what rbtrace's own decoders read), the C
    # path where not, and a unique one for a top-level name already taken.
    assert dt.names == ("ts_ns", "seq", "pid", "tid", "ppid", "uid", "comm", "proc_start_ns",
                        "rb_kind", "rb_pad", "cgroup_id", "pid#11", "flag",
                        "ptr", "a", "name", "slots[0].a", "slots[0].name", "slots[1].a",
                        "slots[1].name", "x", "y", "words", "a#23")
    for name in dt.names:
        assert dt.fields[name][1] == _offset_of(paths[name]), name
    assert dt["flag"] == np.dtype("?") and dt["words"].shape == (3,)
    assert dt["name"] == np.dtype("S6")


def _offset_of(path):
    """Offset of a C path in Event, from ctypes itself."""
    import re
    cls, off = Event, 0
    for part in path.split("."):
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part)
        name, index = m.group(1), m.group(2)
        if name in ("x", "y") and cls is Event:
            off += Event.__anon0.offset
            cls = Anon
        f = getattr(cls, name)
        off += f.offset
        ftype = dict((n, t) for n, t, *_ in cls._fields_)[name]
        if index is not None:
            off += int(index) * ctypes.sizeof(ftype._type_)
            ftype = ftype._type_
        cls = ftype
    return off


def test_bit_fields_are_refused_by_name():
    class Bits(ctypes.Structure):
        _fields_ = [("h", Header), ("mode", ctypes.c_uint32, 3)]
    with pytest.raises(ProbeError, match="event member mode is a bit-field"):
        dtype_from_ctypes(Bits)


def _et(name, cls):
    return EventType(name, dtype_from_ctypes(cls))


def test_event_structs_must_begin_with_the_header_and_differ_in_size():
    class NoHeader(ctypes.Structure):
        _fields_ = [("sig", ctypes.c_int32), ("h", Header)]

    class Same(ctypes.Structure):
        _fields_ = [("h", Header), ("x", ctypes.c_int64)]

    class Same2(ctypes.Structure):
        _fields_ = [("h", Header), ("y", ctypes.c_uint32), ("z", ctypes.c_uint32)]
    header = dtype_from_ctypes(Header)
    check_event_types([_et("ev", Event), _et("same", Same)], "p.bpf.c", header)
    with pytest.raises(ProbeError, match=r"^p\.bpf\.c: struct nh does not begin with struct "
                                         r"rb_header"):
        check_event_types([_et("nh", NoHeader)], "p.bpf.c", header)
    with pytest.raises(ProbeError, match=r"event structs same and same2 are both 80 bytes"):
        check_event_types([_et("same", Same), _et("same2", Same2)], "p.bpf.c", header)


# --- decoding ---------------------------------------------------------------

def test_members_are_decoded_under_args_by_c_path(tmp_path):
    path = good(tmp_path, "RBTRACE_HEX(ev, ptr);\nRBTRACE_BYTES(ev, slots[1].name);\n")
    probe = RunCodec({"file": path})
    et = EventType("ev", dtype_from_ctypes(Event))
    rec = np.zeros(1, dtype=et.dtype)
    rec["pid"], rec["comm"], rec["seq"], rec["ts_ns"] = 10, b"caller", 5, 1_000_000_000
    rec["pid#11"], rec["flag"], rec["ptr"] = -3, True, 0x7FFD12A0
    rec["a"], rec["name"], rec["slots[1].name"] = 7, b"x\xffz", b"\x00\x01"
    rec["x"], rec["y"], rec["words"], rec["a#23"] = 1, -2, [1, 2, 3], -9
    data = memoryview(rec.tobytes())
    (e,) = probe.decode(et, rec, np.array([0]), data)
    assert e["type"] == "run" and e["event"] == "ev" and e["pid"] == 10 and e["seq"] == 5
    assert e["comm"] == "caller"
    assert e["args"] == {
        "pid": -3, "flag": True, "ptr": "0x7ffd12a0", "in.a": 7, "in.name": "x\ufffdz",
        "in.name_b64": "eP96", "slots[0].a": 0, "slots[0].name": "", "slots[1].a": 0,
        "slots[1].name": "000100000000", "x": 1, "y": -2, "words": [1, 2, 3], "a": -9}
    cell = probe.columns[-1].value(e)
    assert cell.startswith('pid=-3 flag=true ptr=0x7ffd12a0 in.a=7 in.name="x\\xffz"')
    import schemacheck              # valid against the shipped schema
    schemacheck.check([e], "a decoded run event")


def test_the_command_is_one_line_and_exit_2_for_a_missing_file(tmp_path):
    p = subprocess.run([sys.executable, "-m", "rbtrace", "run", str(tmp_path / "no.bpf.c")],
                       capture_output=True, timeout=60, cwd=REPO)
    err = p.stderr.decode()
    assert p.returncode == 2 and p.stdout == b"", err
    assert err == f"rbtrace: {tmp_path / 'no.bpf.c'}: no such file\n"


def test_a_probe_without_a_file_is_described_only():
    probe = RunCodec({})
    assert [c.header for c in probe.columns] == ["TIME", "PID", "COMM", "EVENT", "ARGS"]
    assert probe.event_structs == () and run.SPEC.json_fields[-2:] == ("event", "args")


@pytest.mark.parametrize("member, counted", [
    ("s64 ret;", True), ("long long ret;", True), ("int ret;", True), ("", False),
    ("char ret[8];", False), ("s32 ret[2];", False), ("u64 ret;", False),
    ("s64 ret; }; static long f(long ret) { return ret; } struct x { u8 y;", True),
])
def test_errors_are_tallied_only_for_a_signed_ret(tmp_path, member, counted):
    path = good(tmp_path, f"struct other {{ struct rb_header h; {member} u8 pad[9]; }};\n")
    assert counts_errors(read_probe(path)) is counted
    tally = dict(RunCodec({"file": path}).tally)
    assert ("errors" in tally) is counted
