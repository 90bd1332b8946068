"""rbtrace tp without the kernel: format files parsed, C generated, records
decoded from the generated layouts, wildcards and the cap, CLI errors.

Format texts are as tracefs shows them on 6.18 (sched_process_fork's comms
are __data_loc strings there; syscall arguments are 8 bytes, signed:0)."""
import ctypes
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from rbtrace.bpf import dtype_from_ctypes
from rbtrace.errors import UsageError
from rbtrace import generic
from rbtrace.kinds import tp
from rbtrace.render import JsonRenderer
from rbtrace.ringbuf import EventType


HEADER = """\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

"""


def fmt_text(name, tp_id, fields, print_fmt='"x"'):
    return f"name: {name}\nID: {tp_id}\nformat:\n{HEADER}{fields}\nprint fmt: {print_fmt}\n"


FORK = fmt_text("sched_process_fork", 366, """\
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
""", '"comm=%s pid=%d child_comm=%s child_pid=%d", __get_str(parent_comm), REC->parent_pid')

OPENAT = fmt_text("sys_enter_openat", 782, """\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;
""")

CLOSE = fmt_text("sys_enter_close", 800, """\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
""")

DUP = fmt_text("sys_enter_dup", 801, """\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fildes;\toffset:16;\tsize:8;\tsigned:0;
""")

EXIT_OPENAT = fmt_text("sys_exit_openat", 781, """\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;
""")

SWITCH = fmt_text("sched_switch", 330, """\
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;
""")

# Everything else a format can hold: integer arrays, a flexible array, a
# __data_loc array of u64, a cpumask, a __rel_loc string, an unknown
# typedef, an enum, a 16-byte scalar, a pointer typedef, a bool.
ODD = fmt_text("odd_event", 999, """\
\tfield:__u8 saddr[4];\toffset:8;\tsize:4;\tsigned:0;
\tfield:long sysctl_mem[3];\toffset:16;\tsize:24;\tsigned:1;
\tfield:__data_loc u64[] addrs;\toffset:40;\tsize:4;\tsigned:0;
\tfield:__data_loc cpumask_t cpumask;\toffset:44;\tsize:4;\tsigned:0;
\tfield:__rel_loc char[] note;\toffset:48;\tsize:4;\tsigned:0;
\tfield:xfs_ino_t ino;\toffset:56;\tsize:8;\tsigned:0;
\tfield:enum dma_data_direction dir;\toffset:64;\tsize:4;\tsigned:0;
\tfield:bool ok;\toffset:68;\tsize:1;\tsigned:0;
\tfield:char c;\toffset:69;\tsize:1;\tsigned:1;
\tfield:__int128 big;\toffset:72;\tsize:16;\tsigned:1;
\tfield:cap_user_header_t header;\toffset:88;\tsize:8;\tsigned:0;
\tfield:char name[TASK_COMM_LEN];\toffset:96;\tsize:16;\tsigned:0;
\tfield:unsigned long args[];\toffset:112;\tsize:0;\tsigned:0;
""")


def by_name(fmt):
    return {f.name: f for f in fmt.fields}


# --- parsing ------------------------------------------------------------------

def test_fork_format_has_data_loc_strings_and_no_common_fields():
    fmt = tp.parse_format(FORK, "sched", "sched_process_fork")
    assert fmt.name == "sched:sched_process_fork" and fmt.id == 366
    f = by_name(fmt)
    assert list(f) == ["parent_comm", "parent_pid", "child_comm", "child_pid"]
    assert f["parent_comm"].kind == "string" and not f["parent_comm"].rel
    assert (f["parent_comm"].offset, f["parent_comm"].size) == (8, 4)
    assert f["parent_pid"].kind == "int" and f["parent_pid"].elem == (4, True)
    assert f["parent_pid"].cast is None


def test_syscall_arguments_are_decoded_as_their_c_type():
    f = by_name(tp.parse_format(OPENAT, "syscalls", "sys_enter_openat"))
    # stored in 8 bytes, declared int: the low 4 bytes, signed
    assert f["dfd"].kind == "int" and f["dfd"].elem == (8, True) and f["dfd"].cast == (4, True)
    assert f["flags"].cast == (4, True)
    assert f["mode"].cast == (2, False)                      # umode_t
    assert f["filename"].kind == "pointer"
    assert f["__syscall_nr"].elem == (4, True) and f["__syscall_nr"].cast is None
    ret = by_name(tp.parse_format(EXIT_OPENAT))["ret"]
    assert ret.kind == "int" and ret.elem == (8, True) and ret.cast is None


def test_char_arrays_integers_and_signedness():
    f = by_name(tp.parse_format(SWITCH))
    assert f["prev_comm"].kind == "chars" and f["prev_comm"].count == 16
    assert f["prev_state"].elem == (8, True)
    f = by_name(tp.parse_format(CLOSE))
    assert f["fd"].elem == (8, False) and f["fd"].cast == (4, False)


def test_odd_fields_are_classified_never_refused():
    f = by_name(tp.parse_format(ODD))
    assert (f["saddr"].kind, f["saddr"].elem, f["saddr"].count) == ("array", (1, False), 4)
    assert (f["sysctl_mem"].kind, f["sysctl_mem"].elem, f["sysctl_mem"].count) == \
        ("array", (8, True), 3)
    assert (f["addrs"].kind, f["addrs"].elem) == ("dynarray", (8, False))
    assert (f["cpumask"].kind, f["cpumask"].elem) == ("dynarray", (1, False))
    assert f["note"].kind == "string" and f["note"].rel
    assert (f["ino"].kind, f["ino"].elem, f["ino"].cast) == ("int", (8, False), None)
    assert (f["dir"].kind, f["dir"].elem) == ("int", (4, False))
    assert (f["ok"].kind, f["ok"].elem) == ("int", (1, False))
    assert (f["c"].kind, f["c"].elem) == ("int", (1, True))      # char: as the format says
    assert f["big"].kind == "bytes"
    assert f["header"].kind == "pointer"
    # a length the format leaves symbolic is the size
    assert (f["name"].kind, f["name"].count) == ("chars", 16)
    assert f["args"].kind == "skip"


def test_lines_that_are_not_fields_are_ignored():
    fmt = tp.parse_format("name: x\nID: 1\nformat:\n\tfield:garbage\n\n\tfield:int a;\toffset:8;\t"
                          "size:4;\n")
    assert [(f.name, f.signed) for f in fmt.fields] == [("a", False)]


# --- generation ----------------------------------------------------------------

def formats(*items):
    return [tp.parse_format(text, *name.split(":")) for name, text in items]


ALL = (("sched:sched_process_fork", FORK), ("syscalls:sys_enter_openat", OPENAT),
       ("syscalls:sys_enter_close", CLOSE), ("syscalls:sys_enter_dup", DUP),
       ("syscalls:sys_exit_openat", EXIT_OPENAT), ("sched:sched_switch", SWITCH),
       ("odd:odd_event", ODD))


def program(source, fn):
    m = re.search(rf"^int {fn}\(void \*ctx\)\n\{{\n(.*?)^\}}", source, re.S | re.M)
    assert m, fn
    return m.group(1)


def test_each_program_filters_before_reserving_and_accounts_like_open():
    g = tp.generate(formats(*ALL))
    assert g.source.startswith("/* Generated") and '#include "common.h"' in g.source
    assert [label for _, label in g.tracepoints] == [name for name, _ in ALL]
    for fn, _ in g.tracepoints:
        body = program(g.source, fn)
        order = [body.index(s) for s in (
            "rbtp_stopped()", "current_wanted()", "u64 seq = next_seq()",
            "reserve_event(sizeof(struct", "if (!e)", "submit_event(e)")]
        assert order == sorted(order), fn
        assert body.count("submit_event(e)") == 1
    # What the two helpers do, in common.h, shared with open.bpf.c and rbtrace.h:
    # a failed reservation counted, the header filled, each submit counted.
    from rbtrace.paths import probes_dir
    common = (probes_dir() / "common.h").read_text()
    for helper, steps in (
            ("void *reserve_event(u32 size, u64 seq)",
             (".ringbuf_reserve(size)", "count(STAT_RINGBUF_FULL)", "return 0;",
              "fill_header(h, seq)", "return h;")),
            ("void submit_event(void *record)",
             (".ringbuf_submit(record, 0)", "count(STAT_SUBMITTED)"))):
        body = common[common.index(helper):]
        body = body[:body.index("\n}\n")]
        order = [body.index(s) for s in steps]
        assert order == sorted(order), helper


def test_struct_sizes_are_unique_and_asserted():
    fmts = formats(*ALL)
    g = tp.generate(fmts)
    sizes = [int(n) for n in re.findall(r"_Static_assert\(sizeof\(struct \w+\) == RBTP_HDR \+ (\d+)", g.source)]
    assert len(sizes) == len(fmts) == len(set(sizes))
    natural = [tp.layout(f, 256).size for f in fmts]
    # close and dup have the same layout: one byte apart, no more
    assert natural[2] == natural[3] and abs(sizes[2] - sizes[3]) == 1
    assert all(s >= n for s, n in zip(sizes, natural))
    assert "__attribute__((packed))" in g.source


def test_unique_sizes_pads_as_little_as_it_can():
    assert tp.unique_sizes([10, 10, 10, 20]) == [10, 11, 12, 20]
    assert tp.unique_sizes([12, 10, 11, 10]) == [13, 10, 12, 11]
    assert tp.unique_sizes([]) == []


def test_names_in_the_c_source_are_identifiers_whatever_the_tracepoint_is_called():
    weird = fmt_text("ev.1-x", 5, "\tfield:int 2bad;\toffset:8;\tsize:4;\tsigned:1;\n"
                     "\tfield:int f;\toffset:12;\tsize:4;\tsigned:1;\n"
                     "\tfield:int f;\toffset:16;\tsize:4;\tsigned:1;\n")
    g = tp.generate([tp.parse_format(weird, "my-cat", "ev.1-x")])
    members = re.findall(r"^    (?:u|s)\d+ (\w+);", g.source, re.M)
    assert members == ["f__2bad", "f_f", "f_f_"]
    for name in re.findall(r"^(?:struct|int) (\w+)", g.source, re.M):
        assert re.fullmatch(r"[A-Za-z_]\w*", name)
    code = re.sub(r"/\*.*?\*/", "", g.source, flags=re.S)
    assert "my-cat" in g.source and "my-cat" not in code and "ev.1" not in code
    assert g.tracepoints == [("rbtp_0", "my-cat:ev.1-x")]
    labels = [s.label for s in g.events["rbtp_event_0"].fields.values()]
    assert labels == ["2bad", "f", "f"]


def test_a_comment_cannot_be_closed_by_a_type_name():
    evil = fmt_text("e", 5, "\tfield:int */ x;\toffset:8;\tsize:4;\tsigned:1;\n")
    g = tp.generate([tp.parse_format(evil, "c", "e")])
    assert "int */ x" not in g.source


def test_data_loc_strings_are_read_from_their_offset_and_their_length_kept():
    g = tp.generate(formats(("sched:sched_process_fork", FORK)), string_bytes=64)
    body = program(g.source, "rbtp_0")
    assert "bpf_probe_read_kernel((char *)e + RBTP_HDR, 16, (char *)ctx + 8);" in body
    assert re.search(r"e->n_parent_comm = loc >> 16; bpf_probe_read_kernel_str\("
                     r"e->s_parent_comm, 64, \(char \*\)ctx \+ \(loc & 0xffff\)\)", body)
    rel = tp.generate(formats(("odd:odd_event", ODD)))
    # __rel_loc: relative to the end of the field (offset 48 + 4)
    assert "(char *)ctx + 52 + (loc & 0xffff)" in rel.source


# --- decoding records laid out as generated -----------------------------------------

class RbHeader(ctypes.Structure):
    _fields_ = [("ts_ns", ctypes.c_uint64), ("seq", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("ppid", ctypes.c_uint32), ("uid", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16), ("proc_start_ns", ctypes.c_uint64),
                ("rb_kind", ctypes.c_uint32), ("rb_pad", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


_CT = {"char": ctypes.c_char, "bool": ctypes.c_bool, "u8": ctypes.c_uint8, "s8": ctypes.c_int8,
       "u16": ctypes.c_uint16, "s16": ctypes.c_int16, "u32": ctypes.c_uint32,
       "s32": ctypes.c_int32, "u64": ctypes.c_uint64, "s64": ctypes.c_int64}


def event_types(g, fmts, string_bytes=256):
    """EventTypes as LoadedProbe would build them from BCC's description of
    the generated structs (packed; BCC gives ctypes types like these)."""
    sizes = tp.unique_sizes([tp.layout(f, string_bytes).size for f in fmts])
    out = []
    for i, (f, size) in enumerate(zip(fmts, sizes)):
        lay = tp.layout(f, string_bytes)
        fields = [("h", RbHeader)]
        for m in lay.members:
            fields.append((m.name, _CT[m.ctype] * m.count if m.count else _CT[m.ctype]))
        if size > lay.size:
            fields.append(("__pad_size", ctypes.c_uint8 * (size - lay.size)))
        struct = type(f"rbtp_event_{i}", (ctypes.Structure,), {"_pack_": 1, "_fields_": fields})
        assert ctypes.sizeof(struct) == ctypes.sizeof(RbHeader) + size
        out.append(EventType(f"rbtp_event_{i}", dtype_from_ctypes(struct)))
    return out


def probe_for(*items, string_bytes=256):
    fmts = formats(*items)
    g = tp.generate(fmts, string_bytes)
    probe = tp.TpCodec({})
    probe.events = g.events
    return probe, event_types(g, fmts, string_bytes)


def records(et, rows):
    buf = np.zeros(len(rows), dtype=et.dtype)
    for i, row in enumerate(rows):
        base = {"ts_ns": 10**9 + i, "seq": i, "pid": 42, "tid": 43, "ppid": 1, "uid": 0,
                "comm": b"python3"}
        for k, v in {**base, **row}.items():
            buf[i][k] = v
    data = buf.tobytes()
    view = np.frombuffer(data, dtype=et.dtype)
    return view, np.arange(len(rows), dtype=np.int64) * et.size, memoryview(data)


def test_syscall_record_decodes_to_what_the_caller_passed():
    probe, (et,) = probe_for(("syscalls:sys_enter_openat", OPENAT))
    view, offs, data = records(et, [{"f___syscall_nr": 257, "f_dfd": 0xffffff9c,
                                     "f_filename": 0x7ffd12a0, "f_flags": 0o2000000 | 0o100,
                                     "f_mode": 0o644}])
    (e,) = probe.decode(et, view, offs, data)
    assert e["type"] == "tp" and e["event"] == "syscalls:sys_enter_openat"
    assert (e["pid"], e["tid"], e["ppid"], e["comm"], e["user"]) == (42, 43, 1, "python3", "root")
    assert e["args"] == {"__syscall_nr": 257, "dfd": -100, "filename": "0x7ffd12a0",
                         "flags": 0o2000100, "mode": 0o644}
    assert list(e) == [n for n in tp.SPEC.json_fields if not n.endswith("_b64")]
    assert list(e)[-2:] == ["event", "args"]
    # a register with the sign extended gives the same
    view, offs, data = records(et, [{"f_dfd": -100}])
    assert probe.decode(et, view, offs, data)[0]["args"]["dfd"] == -100


def test_data_loc_strings_are_exact_and_truncation_visible():
    probe, (et,) = probe_for(("sched:sched_process_fork", FORK), string_bytes=16)
    rows = [
        {"f_parent_pid": 10, "f_child_pid": 11, "n_parent_comm": 8, "s_parent_comm": b"python3",
         "n_child_comm": 8, "s_child_comm": b"python3\0junk"},
        # exactly 15 bytes + NUL fit; a 20-byte one is cut; bytes not UTF-8
        {"n_parent_comm": 16, "s_parent_comm": b"a" * 15, "n_child_comm": 21,
         "s_child_comm": b"b" * 15, "comm": b"odd-\xff"},
        {"n_parent_comm": 3, "s_parent_comm": b"\xfe\n", "n_child_comm": 1, "s_child_comm": b""},
    ]
    view, offs, data = records(et, rows)
    a, b, c = probe.decode(et, view, offs, data)
    assert a["args"] == {"parent_pid": 10, "child_pid": 11, "parent_comm": "python3",
                         "child_comm": "python3"}
    assert b["args"]["parent_comm"] == "a" * 15 and "parent_comm_truncated" not in b["args"]
    assert b["args"]["child_comm"] == "b" * 15 and b["args"]["child_comm_truncated"] is True
    assert b["comm_b64"] == "b2RkLf8="
    assert c["args"]["parent_comm_b64"] == "/go=" and c["args"]["child_comm"] == ""
    assert probe.args_cell(b) == ('parent_pid=0 child_pid=0 parent_comm="' + "a" * 15 +
                                  '" child_comm="' + "b" * 15 + '"…')
    assert probe.args_cell(c).endswith('parent_comm="\\xfe\\n" child_comm=""')


def test_arrays_bytes_and_odd_types():
    probe, (et,) = probe_for(("odd:odd_event", ODD), string_bytes=32)
    row = {"f_saddr": b"\x7f\0\0\x01", "f_sysctl_mem": [1, -2, 3], "n_addrs": 16,
           "d_addrs": [0x1000, 2**64 - 1, 7, 7], "n_cpumask": 2, "d_cpumask": b"\x03\x80junk",
           "n_note": 3, "s_note": b"hi", "f_ino": 2**63, "f_dir": 2, "f_ok": 1, "f_c": -1,
           "f_big": bytes(range(16)), "f_header": 0xffff888000001000, "f_name": b"kworker/0:1"}
    view, offs, data = records(et, [row])
    (e,) = probe.decode(et, view, offs, data)
    assert e["args"] == {
        "saddr": [127, 0, 0, 1], "sysctl_mem": [1, -2, 3], "ino": 2**63, "dir": 2, "ok": True,
        "c": -1, "big": bytes(range(16)).hex(), "header": "0xffff888000001000",
        "name": "kworker/0:1", "addrs": [0x1000, 2**64 - 1], "cpumask": [3, 128], "note": "hi"}
    cell = probe.args_cell(e)
    assert cell.startswith("saddr=[127,0,0,1] sysctl_mem=[1,-2,3] ino=9223372036854775808")
    assert 'name="kworker/0:1"' in cell and "args" not in e["args"]


def test_json_lines_are_what_the_json_renderer_writes_for_decode():
    probe, ets = probe_for(*ALL, string_bytes=32)
    by_label = {probe.events[et.name].label: et for et in ets}
    et = by_label["sched:sched_process_fork"]
    same = {"f_parent_pid": 5, "n_parent_comm": 6, "s_parent_comm": b"a%d%s", "n_child_comm": 3,
            "s_child_comm": b"\xff\xfe"}
    rows = [same, same, same, {**same, "f_child_pid": 9}, same,
            {**same, "ts_ns": 2 * 10**9}, {**same, "ts_ns": 2 * 10**9 + 1}]
    view, offs, data = records(et, rows)
    out = io.BytesIO()
    renderer = JsonRenderer(out, probe)
    renderer.events(probe.decode(et, view, offs, data))
    expected = out.getvalue()
    for _ in range(2):              # from an empty cache, then from a full one
        assert probe.json_lines(et, view, offs, data) == expected
    lines = [json.loads(ln) for ln in expected.splitlines()]
    assert [ln["seq"] for ln in lines] == list(range(7))
    assert lines[0]["args"]["parent_comm"] == "a%d%s"
    import schemacheck              # the lines are valid against the shipped schema
    schemacheck.check(lines, "tp JSON lines (fast path and renderer)")
    et = by_label["syscalls:sys_enter_openat"]
    view, offs, data = records(et, [{"f_dfd": 3}, {"f_dfd": 4}])
    out = io.BytesIO()
    JsonRenderer(out, probe).events(probe.decode(et, view, offs, data))
    assert probe.json_lines(et, view, offs, data) == out.getvalue()


def test_generic_probe_without_specs_decodes_every_field_auto():
    class Ev(ctypes.Structure):
        _fields_ = [("h", RbHeader), ("count", ctypes.c_int32), ("name", ctypes.c_char * 8),
                    ("vals", ctypes.c_uint16 * 3), ("flag", ctypes.c_bool)]
    et = EventType("my_event", dtype_from_ctypes(Ev))
    probe = generic.GenericCodec({})
    view, offs, data = records(et, [{"count": -3, "name": b"ab", "vals": [1, 2, 3], "flag": True}])
    (e,) = probe.decode(et, view, offs, data)
    assert e["type"] == "generic" and e["event"] == "my_event"
    assert e["args"] == {"count": -3, "name": "ab", "vals": [1, 2, 3], "flag": 1}
    with pytest.raises(ValueError, match="kind"):
        generic.FieldSpec("pointer")
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        generic.FieldSpec("int", cast=(3, True))


# --- which tracepoints ------------------------------------------------------------

@pytest.fixture
def tracefs(tmp_path):
    """A tracefs events/ directory with a few tracepoints."""
    for name, text in (("sched:sched_process_fork", FORK), ("sched:sched_process_exec", FORK),
                       ("sched:sched_switch", SWITCH), ("syscalls:sys_enter_openat", OPENAT),
                       ("syscalls:sys_exit_openat", EXIT_OPENAT),
                       ("syscalls:sys_enter_close", CLOSE), ("ftrace:print", CLOSE)):
        cat, ev = name.split(":")
        (tmp_path / cat / ev).mkdir(parents=True)
        (tmp_path / cat / ev / "format").write_text(text)
    (tmp_path / "sched" / "enable").write_text("0\n")             # files beside the events
    (tmp_path / "header_page").write_text("")
    (tmp_path / "sched" / "no_format").mkdir()
    return tmp_path


def test_listing_and_wildcards(tracefs):
    assert tp.list_tracepoints(tracefs) == [
        "sched:sched_process_exec", "sched:sched_process_fork", "sched:sched_switch",
        "syscalls:sys_enter_close", "syscalls:sys_enter_openat", "syscalls:sys_exit_openat"]
    assert tp.list_matching("fork", tracefs) == ["sched:sched_process_fork"]
    assert tp.list_matching("*:sys_e*_openat", tracefs) == ["syscalls:sys_enter_openat",
                                                           "syscalls:sys_exit_openat"]
    assert tp.list_matching("nothing", tracefs) == []
    assert tp.resolve(["syscalls:sys_exit_openat", "sched:sched_process_*",
                       "sched:sched_process_fork"], root=tracefs) == [
        "syscalls:sys_exit_openat", "sched:sched_process_exec", "sched:sched_process_fork"]
    assert tp.resolve(["*:*"], root=tracefs)[0] == "sched:sched_process_exec"
    assert len(tp.resolve(["*:*"], root=tracefs)) == 6          # no ftrace


@pytest.mark.parametrize("specs, message", [
    ([], "no tracepoint given"),
    (["sched_process_fork"], "is not a tracepoint name: CATEGORY:EVENT"),
    (["a:b:c"], "is not a tracepoint name"),
    (["sched:"], "is not a tracepoint name"),
    (["sched:sched_process_frk"], "did you mean sched:sched_process_fork"),
    (["nope:nothing"], "no tracepoint nope:nothing on this kernel (rbtrace tp --list"),
    (["sched:zzz*"], "no tracepoint matches 'sched:zzz*'"),
    (["ftrace:print"], "take no BPF program"),
    (["*:*"], "6 tracepoints match, more than the 5 allowed at once (raise it with "
              "--max-tracepoints, up to 2000)"),
])
def test_bad_tracepoint_arguments_are_usage_errors(tracefs, specs, message):
    with pytest.raises(UsageError) as e:
        tp.resolve(specs, max_tracepoints=5, root=tracefs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_probe_from_options(tracefs):
    probe = tp.TpCodec({"tracepoints": ("sched:sched_process_f*", "syscalls:sys_enter_openat"),
                        "string_bytes": 32}, root=tracefs)
    assert [f.name for f in probe.formats] == ["sched:sched_process_fork",
                                               "syscalls:sys_enter_openat"]
    assert probe.event_structs == ("rbtp_event_0", "rbtp_event_1")
    assert probe.tracepoints == [("rbtp_0", "sched:sched_process_fork"),
                                 ("rbtp_1", "syscalls:sys_enter_openat")]
    path = probe.source_path()
    assert path.name == "tp.bpf.c" and "s_parent_comm[32]" in path.read_text()
    assert probe.source_path() == path
    with pytest.raises(UsageError, match="--failed"):
        tp.TpCodec({"tracepoints": ("sched:sched_switch",), "failed": True}, root=tracefs)
    with pytest.raises(UsageError, match="more than the 1 allowed"):
        tp.TpCodec({"tracepoints": ("sched:*",), "max_tracepoints": 1}, root=tracefs)
    assert tp.TpCodec({}).event_structs == ()        # for inspection: no tracefs needed


@pytest.mark.parametrize("args, message", [
    ([], "rbtrace: no tracepoint given"),
    (["sched_switch"], "rbtrace: 'sched_switch' is not a tracepoint name"),
    (["--max-tracepoints", "0", "a:b"], "rbtrace: Invalid value for '--max-tracepoints'"),
    (["--string-bytes", "8", "a:b"], "rbtrace: Invalid value for '--string-bytes'"),
])
def test_cli_errors_are_one_line_and_exit_2(args, message):
    p = subprocess.run([sys.executable, "-m", "rbtrace", "tp", *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.startswith(message) and p.stderr.count("\n") == 1, p.stderr
