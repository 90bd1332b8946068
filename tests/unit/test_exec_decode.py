"""The exec decoder on hand-built records, its helpers, and the exec
command's limits.  No root, no BCC.

Records are built with ctypes mirrors of the C structs, turned into numpy
dtypes by the same function that reads BCC's description of the real ones
(rbtrace.bpf.dtype_from_ctypes), so the decoder sees what it sees at run
time: the header flattened, duplicate names (tid, pad) prefixed.
"""
import base64
import ctypes
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rbtrace.bpf import dtype_from_ctypes
from rbtrace.kinds import exec as ex
from rbtrace.ringbuf import EventType

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C_SOURCE = open(os.path.join(REPO, "probes", "exec.bpf.c")).read()


class RbHeader(ctypes.Structure):
    _fields_ = [("ts_ns", ctypes.c_uint64), ("seq", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("ppid", ctypes.c_uint32), ("uid", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16), ("proc_start_ns", ctypes.c_uint64),
                ("rb_kind", ctypes.c_uint32), ("rb_pad", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


class ExecInfo(ctypes.Structure):
    _fields_ = [("tid", ctypes.c_uint32), ("argc", ctypes.c_uint32),
                ("args_len", ctypes.c_uint32), ("filename_len", ctypes.c_uint32),
                ("exe_len", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("syscall", ctypes.c_uint32), ("dirfd", ctypes.c_int32),
                ("at_flags", ctypes.c_int32), ("pad", ctypes.c_uint32)]


class ExecHead(ctypes.Structure):
    _fields_ = [("h", RbHeader), ("ret", ctypes.c_int32), ("pad", ctypes.c_uint32),
                ("i", ExecInfo)]


def event_type(n=256):
    cls = type(f"exec_event_{n}", (ctypes.Structure,),
               {"_fields_": [("x", ExecHead), ("data", ctypes.c_char * n)]})
    return EventType(cls.__name__, dtype_from_ctypes(cls))


def record(args=(), filename=b"/bin/true", exe=None, argc=None, flags=0, ret=0,
           syscall=0, dirfd=0, at_flags=0, raw_args=None, comm=b"true", uid=0):
    """Fields of one record; data packed as the probe packs it."""
    if raw_args is None:
        raw_args = b"".join(a + b"\0" for a in args)
    fname = filename + b"\0"
    exe_raw = b""
    if exe is not None:
        exe_raw = b"".join(p + b"\0" for p in reversed(exe.strip(b"/").split(b"/")))
        flags |= ex.EXE
    return dict(seq=1, ts_ns=10**9, pid=100, tid=101, ppid=1, uid=uid, comm=comm, ret=ret,
                argc=len(args) if argc is None else argc, args_len=len(raw_args),
                filename_len=len(fname), exe_len=len(exe_raw), flags=flags,
                syscall=syscall, dirfd=dirfd, at_flags=at_flags,
                data=raw_args + fname + exe_raw)


def decode(recs, options=None, size=256):
    et = event_type(size)
    arr = np.zeros(len(recs), dtype=et.dtype)
    for i, r in enumerate(recs):
        for k, v in r.items():
            arr[i][k] = v
    # The ring hands out records at 8-byte aligned offsets in a byte area.
    stride = (et.size + 7) & ~7
    buf = bytearray(8 + stride * len(recs))
    offsets = 8 + stride * np.arange(len(recs))
    for i in range(len(recs)):
        buf[offsets[i]:offsets[i] + et.size] = arr[i:i + 1].tobytes()
    probe = ex.ExecCodec(options or {})
    probe.clock = ex.fields.Clock(offset_ns=0)
    return probe.decode(et, arr, offsets, memoryview(bytes(buf)))


def one(**kw):
    options = kw.pop("options", None)
    (e,) = decode([record(**kw)], options)
    return e


# --- argv -------------------------------------------------------------------

def test_plain_event_fields():
    e = one(args=[b"/bin/true", b"x"], uid=0)
    assert e["argv"] == ["/bin/true", "x"] and e["argc"] == 2
    assert e["args_truncated"] is False and e["filename"] == "/bin/true"
    assert (e["pid"], e["tid"], e["ppid"], e["uid"], e["user"]) == (100, 101, 1, 0, "root")
    assert e["comm"] == "true" and e["syscall"] == "execve"
    assert e["ret"] == 0 and e["errno"] is None and e["time"].endswith("Z")
    assert "exe" not in e and "last_arg_cut" not in e


def test_empty_arguments_are_kept():
    e = one(args=[b"", b"x", b"", b""])
    assert e["argv"] == ["", "x", "", ""] and e["args_truncated"] is False


def test_no_arguments():
    e = one(args=[])
    assert e["argv"] == [] and e["argc"] == 0 and e["args_truncated"] is False


def test_a_cut_last_argument_is_kept_and_flagged():
    e = one(raw_args=b"abc\0de", argc=2, flags=ex.ARGS_TRUNCATED)
    assert e["argv"] == ["abc", "de"] and e["args_truncated"] and e["last_arg_cut"]


def test_strings_that_fill_the_buffer_exactly_are_not_truncated():
    # The C side sets ARGS_TRUNCATED when the bytes reach the limit; the
    # data says whether anything was lost.
    e = one(args=[b"abc", b"de"], flags=ex.ARGS_TRUNCATED)
    assert e["args_truncated"] is False


def test_fewer_captured_than_counted_is_truncated():
    e = one(args=[b"a", b"b"], argc=1000, flags=ex.ARGS_TRUNCATED)
    assert e["argv"] == ["a", "b"] and e["argc"] == 1000 and e["args_truncated"]
    assert "last_arg_cut" not in e


def test_capped_count_is_a_minimum():
    e = one(args=[b"a"] * 3, argc=66048, flags=ex.ARGS_TRUNCATED | ex.ARGC_CAPPED)
    assert e["argc_capped"] and e["args_truncated"]


def test_control_bytes_are_exact_in_json():
    arg = b"new\nline\ttab\x1b[31m\x00"[:-1]
    e = one(args=[b"echo", arg])
    assert e["argv"][1] == arg.decode() and "argv_b64" not in e


def test_invalid_utf8_gets_base64_for_the_whole_list():
    e = one(args=[b"echo", b"\xff\xfe", b"ok"])
    assert [base64.b64decode(x) for x in e["argv_b64"]] == [b"echo", b"\xff\xfe", b"ok"]
    assert e["argv"][1] == "\ufffd\ufffd"


def test_argv_read_back_from_the_new_program_is_cut_to_max_args():
    e = one(args=[b"a", b"b", b"c", b"d"], flags=ex.ARGV_FROM_EXEC, options={"max_args": 2})
    assert e["argv"] == ["a", "b"] and e["argc"] == 4 and e["args_truncated"]
    assert "last_arg_cut" not in e


def test_null_and_faulted_argv_are_flagged():
    e = one(args=[], flags=ex.ARGV_NULL)
    assert e["argv_null"] and e["argv"] == [] and not e["argv_fault"]
    e = one(args=[b"", b"x"], flags=ex.ARGV_FAULT)
    assert e["argv_fault"] and e["argv"] == ["", "x"]


def test_exec_from_the_kernel_has_no_argv():
    e = one(args=[], flags=ex.NO_ARGV, syscall=2, filename=b"/sbin/modprobe")
    assert e["syscall"] == "kernel" and e["argv_unknown"] and e["filename"] == "/sbin/modprobe"


def test_failure_has_errno_name():
    e = one(args=[b"/x"], filename=b"/x", ret=-2)
    assert e["ret"] == -2 and e["errno"] == "ENOENT"
    assert one(args=[b"/x"], ret=-8)["errno"] == "ENOEXEC"


# --- execveat and exe ---------------------------------------------------------

def test_execveat_fields_and_exe():
    e = one(args=[b"true"], filename=b"", syscall=1, dirfd=3, at_flags=0x1000,
            exe=b"/usr/bin/true")
    assert e["syscall"] == "execveat" and e["filename"] == "" and e["dirfd"] == 3
    assert e["at_flags"] == 0x1000 and e["exe"] == "/usr/bin/true"


def test_exe_of_an_unlinked_file_and_of_a_failed_execveat():
    e = one(args=[b"x"], filename=b"", syscall=1, dirfd=3, exe=b"/dev/shm/x",
            flags=ex.EXE_DELETED)
    assert e["exe"] == "/dev/shm/x (deleted)"
    e = one(args=[b"x"], filename=b"x", syscall=1, dirfd=3, ret=-13)
    assert e["exe"] is None and e["errno"] == "EACCES"


def test_filename_from_bprm_is_given_back_as_passed():
    e = one(args=[b"t"], filename=b"/dev/fd/3", syscall=1, dirfd=3,
            flags=ex.FILENAME_FROM_EXEC, exe=b"/usr/bin/true")
    assert e["filename"] == ""
    e = one(args=[b"t"], filename=b"/dev/fd/3/true", syscall=1, dirfd=3,
            flags=ex.FILENAME_FROM_EXEC)
    assert e["filename"] == "true"
    e = one(args=[b"t"], filename=b"/bin/true", flags=ex.FILENAME_FROM_EXEC)
    assert e["filename"] == "/bin/true"


@pytest.mark.parametrize("raw, path", [
    (b"true\0bin\0usr\0", b"/usr/bin/true"),
    (b"init\0", b"/init"),
    (b"", b"/"),
])
def test_exe_path(raw, path):
    assert ex.exe_path(raw) == path


@pytest.mark.parametrize("name, dirfd, passed", [
    (b"/dev/fd/3", 3, b""),
    (b"/dev/fd/3/sub/x", 3, b"sub/x"),
    (b"/dev/fd/31", 3, b"/dev/fd/31"),
    (b"/dev/fd/3", -100, b"/dev/fd/3"),
    (b"/usr/bin/x", 5, b"/usr/bin/x"),
])
def test_filename_as_passed(name, dirfd, passed):
    assert ex.filename_as_passed(name, dirfd) == passed


@pytest.mark.parametrize("raw, argv, cut", [
    (b"", [], False),
    (b"\0", [b""], False),
    (b"a\0b\0", [b"a", b"b"], False),
    (b"a\0\0", [b"a", b""], False),
    (b"a\0bc", [b"a", b"bc"], True),
    (b"abc", [b"abc"], True),
])
def test_split_args(raw, argv, cut):
    assert ex.split_args(raw) == (argv, cut)


def test_at_flags_text():
    assert ex.at_flags_text(0x1000) == "AT_EMPTY_PATH"
    assert ex.at_flags_text(0x1100) == "AT_SYMLINK_NOFOLLOW|AT_EMPTY_PATH"
    assert ex.at_flags_text(0) == "0" and ex.at_flags_text(0x10000) == "0x10000"


# --- table and plain text -------------------------------------------------------

def column(name, e):
    (c,) = [c for c in ex.ExecCodec({}).columns if c.header == name]
    return c.value(e)


def test_columns_mark_truncation_and_escape():
    e = one(raw_args=b"echo\0new\nline\0ta\x1bb", argc=5, flags=ex.ARGS_TRUNCATED)
    assert column("ARGV", e) == "echo 'new\\nline' 'ta\\x1bb'… …[5 args]"
    e = one(args=[b"a"], argc=70000, flags=ex.ARGS_TRUNCATED | ex.ARGC_CAPPED)
    assert column("ARGV", e) == "a …[≥70000 args]"
    assert column("ARGV", one(args=[b"a", b"b c"])) == "a 'b c'"


def test_filename_column_for_execveat():
    fexecve = one(args=[b"t"], filename=b"", syscall=1, dirfd=3, exe=b"/usr/bin/true")
    assert column("FILENAME", fexecve) == "fd 3 → /usr/bin/true"
    rel = one(args=[b"t"], filename=b"true", syscall=1, dirfd=4, ret=-2)
    assert column("FILENAME", rel) == "fd 4/true"
    cwd = one(args=[b"t"], filename=b"/bin/true", syscall=1, dirfd=-100, exe=b"/usr/bin/true")
    assert column("FILENAME", cwd) == "/bin/true → /usr/bin/true"
    assert column("FILENAME", one(filename=b"a\nb")) == "a\\nb"


def test_records_of_every_size_class_decode_alike():
    for n in (256, 1024, ex.FILENAME_BYTES + 4096 + ex.EXE_BYTES):
        (e,) = decode([record(args=[b"x" * 100, b"y"])], size=n)
        assert e["argv"] == ["x" * 100, "y"]


# --- what the C file is compiled with ---------------------------------------------

def test_event_structs_follow_the_arg_bytes():
    assert ex.event_structs(4096) == ("exec_event_256", "exec_event_1024",
                                      "exec_event_4096", "exec_event_max")
    assert ex.event_structs(1 << 20)[-2:] == ("exec_event_1048576", "exec_event_max")
    # 8192 args bytes: data is exactly 16384, which is then the maximum.
    assert "exec_event_16384" not in ex.event_structs(8192)


def test_the_c_file_gets_every_constant_it_uses_from_the_flags(monkeypatch):
    """The C file has no copy of the flag bits, syscall numbers, sizes or
    classes: each name it uses must be one of the -D flags."""
    from rbtrace import kernel
    monkeypatch.setattr(kernel, "btf_offsets", lambda table: dict.fromkeys(table, 8))
    f = ex.ExecCodec({}).cflags()
    used = set(re.findall(r"\b((?:FLAG|SYSCALL)_[A-Z_]+)\b", C_SOURCE))
    assert used and used <= set(f)
    assert {"FLAG_EXE", "SYSCALL_EXECVEAT"} <= used
    assert not re.search(r"#define\s+(FLAG|SYSCALL)_", C_SOURCE)
    for name in ("MAX_ARGS", "ARGS_BYTES", "ARGV_PAGES", "SCRATCH_SLOTS", "FILENAME_BYTES",
                 "EXE_BYTES"):
        assert name in f and not re.search(rf"#define\s+{name}\b", C_SOURCE), name
    assert len(set(ex.FLAGS.values())) == len(ex.FLAGS)
    assert f["EXEC_CLASSES(X)"] == "X(256) X(1024) X(4096)"
    assert "EXEC_CLASSES(EXEC_CLASS)" in C_SOURCE and "EXEC_CLASSES(EMIT_CLASS)" in C_SOURCE


def test_offsets_the_c_file_needs():
    needed = set(re.findall(r"\b([A-Z_]+_OFF)\b", C_SOURCE)) - {"TASK_REAL_PARENT_OFF", "TASK_TGID_OFF"}
    assert needed == set(ex.STRUCT_OFFSETS)


def test_possible_cpus(tmp_path):
    f = tmp_path / "possible"
    for text, n in (("0\n", 1), ("0-1\n", 2), ("0-3,8-9\n", 10), ("0,2\n", 3)):
        f.write_text(text)
        assert ex.possible_cpus(str(f)) == n


def test_cflags_carry_the_limits(monkeypatch):
    from rbtrace import kernel
    monkeypatch.setattr(kernel, "btf_offsets", lambda table: {"TASK_MM_OFF": 1})
    p = ex.ExecCodec({"max_args": 1000, "max_arg_bytes": 100 * 1024, "pid": 7})
    f = p.cflags()
    assert (f["MAX_ARGS"], f["ARGS_BYTES"]) == (1000, 102400)
    # -p is a value in the probe's config map, not compiled in: the compile
    # cache serves every pid.
    assert "FILTER_PID" not in f and p.run_config()["pid"] == 7
    assert f["ARGV_PAGES"] * 512 >= ex.ARGC_EXACT_MAX + 512 and f["SCRATCH_SLOTS"] >= 1
    assert p.event_structs == ex.event_structs(102400)
    assert f["EXEC_CLASSES(X)"].split()[-1] == "X(65536)"
    # Without the options (a codec made by hand): the command's defaults.
    f = ex.ExecCodec({}).cflags()
    assert (f["MAX_ARGS"], f["ARGS_BYTES"]) == (64, 4096)


@pytest.mark.parametrize("args, says", [
    (["--max-args", "0"], "--max-args"),
    (["--max-args", "-1"], "--max-args"),
    (["--max-args", "4097"], "--max-args"),
    (["--max-arg-bytes", "0"], "--max-arg-bytes"),
    (["--max-arg-bytes", "-5"], "--max-arg-bytes"),
    (["--max-arg-bytes", "63"], "--max-arg-bytes"),
    (["--max-arg-bytes", "2M"], "--max-arg-bytes"),
    (["--max-arg-bytes", "lots"], "--max-arg-bytes"),
    (["--uid", "no-such-user-here"], "unknown user"),
    (["--count", "0"], "--count"),
])
def test_bad_exec_options_are_one_line_and_exit_2(args, says):
    p = subprocess.run([sys.executable, "-m", "rbtrace", "exec", *args], cwd=REPO,
                       capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2 and p.stdout == b""
    assert len(err.strip().splitlines()) == 1 and err.startswith("rbtrace: ") and says in err


def test_arg_bytes_accept_suffixes():
    assert ex.parse_arg_bytes(None, None, "100K") == 102400
    assert ex.parse_arg_bytes(None, None, "1M") == 1 << 20
    assert ex.parse_arg_bytes(None, None, "64") == 64
