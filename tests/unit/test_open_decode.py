"""rbtrace open without the kernel: the codec on hand-built ring records,
the columns, the --flags / --path parsers, full_path, the -D flags, and
bad CLI values."""
import base64
import ctypes
import re
import subprocess
import sys

import numpy as np
import pytest

from rbtrace import fields
from rbtrace.bpf import dtype_from_ctypes
from rbtrace.kinds import open as op
from rbtrace.ringbuf import EventType

# --- records laid out as probes/open.bpf.c declares them ---------------------


class RbHeader(ctypes.Structure):
    _fields_ = [("ts_ns", ctypes.c_uint64), ("seq", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("ppid", ctypes.c_uint32), ("uid", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16), ("proc_start_ns", ctypes.c_uint64),
                ("rb_kind", ctypes.c_uint32), ("rb_pad", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


class OpenInfo(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64), ("dirfd", ctypes.c_int32),
                ("path_len", ctypes.c_uint32), ("syscall", ctypes.c_uint16),
                ("status", ctypes.c_uint16), ("dir_len", ctypes.c_uint32)]


def event_struct(path_bytes):
    class Event(ctypes.Structure):
        _fields_ = [("h", RbHeader), ("ret", ctypes.c_int64), ("i", OpenInfo),
                    ("path", ctypes.c_char * path_bytes)]
    return Event


SHORT = EventType("open_event_short", dtype_from_ctypes(event_struct(256)))
LONG = EventType("open_event_long", dtype_from_ctypes(event_struct(4096)))
# With --full-path (FULL_PATH) the long record holds a path and a directory.
LONG_FULL = EventType("open_event_long", dtype_from_ctypes(event_struct(8192)))


def test_record_sizes_differ_and_short_is_about_12x_smaller():
    assert SHORT.size == 376 and LONG.size == 4216
    assert (LONG.size + 8) / (SHORT.size + 8) >= 11


def records(et, rows):
    """A ring-like buffer: 8-byte record header, payload, padded to 8; the
    path area after the copied bytes holds junk, as the real ring does.
    A row's "dir" (a list of components, innermost first) goes after the
    path's NUL, each with its NUL, as the probe's dir_path() puts it."""
    stride = (et.size + 8 + 7) & ~7
    buf = np.frombuffer(bytearray(b"\xAA" * stride * len(rows)), dtype=np.uint8)
    rec_dtype = np.dtype({"names": ["_len", "_pgoff", "_payload"],
                          "formats": ["<u4", "<u4", et.dtype], "offsets": [0, 4, 8],
                          "itemsize": stride})
    view = np.ndarray((len(rows),), dtype=rec_dtype, buffer=buf)
    payload = view["_payload"]
    path_off = et.dtype.fields["path"][1]
    for k, row in enumerate(rows):
        row = {"ts_ns": 10**12 + k, "seq": k, "pid": 100, "tid": 101, "ppid": 1, "uid": 0,
               "comm": b"cat", "ret": 3, "flags": 0, "mode": 0, "resolve": 0,
               "dirfd": op.AT_FDCWD, "syscall": 1, "status": 0, **row}
        path = row.pop("path", b"/etc/hostname")
        comps = b"".join(c + b"\0" for c in row.pop("dir", ()))
        payload[k]["dir_len"] = len(comps)
        for name, value in row.items():
            payload[k][name] = value
        payload[k]["path_len"] = len(path) if not row["status"] & op.PATH_FAULT else 0
        start = k * stride + 8 + path_off
        area = path + b"\0" + comps
        buf[start:start + len(area)] = np.frombuffer(area, dtype=np.uint8)
    offsets = 8 + stride * np.arange(len(rows))
    return payload, offsets, memoryview(buf)


def decode(rows, et=SHORT, **options):
    probe = op.OpenCodec(options)
    probe.clock = fields.Clock(offset_ns=1_700_000_000 * 10**9)
    recs, offsets, data = records(et, rows)
    return probe, probe.decode(et, recs, offsets, data)


KEYS = ["type", "seq", "time", "ts_ns", "pid", "tid", "ppid", "uid", "user", "comm", "process",
        "cgroup_id", "container_id", "pod_uid", "syscall", "path", "path_truncated", "dirfd", "flags", "flags_text", "mode", "resolve", "ret", "fd",
        "errno"]


def test_decode_fields_and_order():
    probe, [e] = decode([{"ret": 3, "flags": 0o2000000}])
    assert list(e) == KEYS
    assert e == {
        "type": "open", "seq": 0, "time": probe.clock.iso(10**12), "ts_ns": 10**12,
        "pid": 100, "tid": 101, "ppid": 1, "uid": 0, "user": fields.user_name(0), "comm": "cat",
        "process": f"{fields.boot_id()}-{0xAAAAAAAAAAAAAAAA}-100",
        "cgroup_id": 0xAAAAAAAAAAAAAAAA, "container_id": None, "pod_uid": None, "syscall": "openat", "path": "/etc/hostname", "path_truncated": False,
        "dirfd": -100, "flags": 0o2000000, "flags_text": "O_RDONLY|O_CLOEXEC", "mode": None,
        "resolve": None, "ret": 3, "fd": 3, "errno": None}


def test_decode_errors_modes_and_syscalls():
    _, ev = decode([
        {"ret": -2},
        {"ret": -13, "flags": 0o101, "mode": 0o640},                       # O_WRONLY|O_CREAT
        {"ret": 4, "flags": 0o1101, "mode": 0o600, "syscall": 3},          # creat
        {"ret": 5, "flags": 0o20200002, "mode": 0o600},                    # O_RDWR|O_TMPFILE
        {"ret": 6, "flags": 0, "mode": 0o777, "syscall": 2, "resolve": 8},  # openat2
        {"ret": 7, "syscall": 0, "mode": 0o644},                           # open, no O_CREAT
    ])
    assert [(e["fd"], e["errno"]) for e in ev] == [
        (None, "ENOENT"), (None, "EACCES"), (4, None), (5, None), (6, None), (7, None)]
    assert [e["mode"] for e in ev] == [None, 0o640, 0o600, 0o600, None, None]
    assert [e["syscall"] for e in ev] == ["openat", "openat", "creat", "openat", "openat2", "open"]
    assert ev[2]["flags_text"] == "O_WRONLY|O_CREAT|O_TRUNC"
    assert ev[3]["flags_text"] == "O_RDWR|O_TMPFILE"
    assert [e["resolve"] for e in ev] == [None, None, None, None, 8, None]


def test_decode_path_exact_bytes_truncation_and_faults():
    bad = b"/tmp/\xff\xfe\x1b[31m"
    long_path = b"/" + b"d" * 4094
    _, ev = decode([{"path": bad}, {"path": b""}, {"status": op.PATH_FAULT},
                    {"syscall": 2, "status": op.HOW_FAULT, "flags": 0o101, "mode": 0o600},
                    {"status": op.PATH_AT_EXIT, "path": b"/late"}])
    assert base64.b64decode(ev[0]["path_b64"]) == bad and ev[0]["path"] == bad.decode(errors="replace")
    assert ev[1]["path"] == "" and "path_b64" not in ev[1]
    assert ev[2]["path"] is None and ev[2]["path_truncated"] is False
    assert ev[3]["flags"] is None and ev[3]["flags_text"] is None and ev[3]["mode"] is None
    assert ev[4]["path"] == "/late"
    _, [e] = decode([{"path": long_path, "status": op.PATH_TRUNCATED, "ret": -36}], et=LONG)
    assert e["path"] == long_path.decode() and e["path_truncated"] is True
    assert e["errno"] == "ENAMETOOLONG"


def test_decode_storm_shares_nothing_that_differs():
    """Identical records but for seq/time come from one cached template;
    each event still gets its own seq and time, and any differing byte
    gives a different event."""
    rows = [{"ret": -2}] * 5 + [{"ret": -13}, {"path": b"/etc/hostnamf", "ret": -2},
                                 {"pid": 7, "ret": -2}]
    probe, ev = decode(rows)
    assert [e["seq"] for e in ev] == list(range(8))
    assert [e["time"] for e in ev] == [probe.clock.iso(10**12 + k) for k in range(8)]
    assert len({id(e) for e in ev}) == 8
    assert [e["errno"] for e in ev] == ["ENOENT"] * 5 + ["EACCES", "ENOENT", "ENOENT"]
    assert ev[6]["path"] == "/etc/hostnamf" and ev[7]["pid"] == 7 and ev[5]["pid"] == 100
    assert len(probe._templates) == 4


def test_full_path_in_decode():
    """full_path comes from the record alone: the directory's components,
    innermost first, read in the kernel at the call (no /proc: the process
    may be gone)."""
    ok = op.DIR
    _, ev = decode([
        {"path": b"rel", "status": ok, "dir": [b"c", b"b", b"a"]},
        {"path": b"x/../y", "dirfd": 7, "status": ok, "dir": [b"d"]},
        {"path": b"/abs"},
        {"path": b"rel", "pid": 2**22 + 5},                    # no directory read: never a guess
        {"path": b"rel", "status": ok},                         # the cwd is /
        {"path": b"rel", "status": ok | op.DIR_DELETED, "dir": [b"gone", b"t"], "ret": -2},
        {"path": b"rel", "status": op.DIR_TRUNCATED, "dir": [b"z", b"y"]},
        {"path": b"r\xff", "status": ok, "dir": [b"\xfe"]},
        {"status": op.PATH_FAULT},
        {"path": b"", "ret": -2},
    ], full_path=True)
    got = [(e["full_path"], e["full_path_truncated"], e["full_path_deleted"]) for e in ev]
    assert got[:7] == [("/a/b/c/rel", False, False), ("/d/x/../y", False, False),
                       ("/abs", False, False), (None, False, False), ("/rel", False, False),
                       ("/t/gone/rel", False, True), ("y/z/rel", True, False)]
    assert base64.b64decode(ev[7]["full_path_b64"]) == b"/\xfe/r\xff"
    assert ev[7]["full_path"] == b"/\xfe/r\xff".decode(errors="replace")
    assert got[8:] == [(None, False, False)] * 2
    assert all("full_path" not in e for e in decode([{"path": b"rel", "status": ok,
                                                       "dir": [b"a"]}])[1])


def test_full_path_of_a_long_record_and_a_long_directory():
    d = [b"n" * 255] * 15                                   # 3840 bytes of components
    _, [e] = decode([{"path": b"p" * 300, "status": op.DIR, "dir": d}], et=LONG_FULL,
                    full_path=True)
    assert e["full_path"] == "/" + "/".join(["n" * 255] * 15) + "/" + "p" * 300
    assert e["path"] == "p" * 300
    _, [e] = decode([{"path": b"/x" * 2000 + b"/", "status": op.PATH_TRUNCATED, "ret": -36}],
                    et=LONG_FULL, full_path=True)
    assert e["full_path"] is None and e["path_truncated"] is True


def test_full_path_rules():
    assert op.full_path(b"/a/b", 0, b"") == (b"/a/b", False)
    assert op.full_path(b"/a/b", op.DIR, b"x\0") == (b"/a/b", False)   # absolute: as passed
    assert op.full_path(b"", op.DIR, b"x\0") == (None, False)
    assert op.full_path(None, 0, b"") == (None, False)
    assert op.full_path(b"rel", 0, b"") == (None, False)                # EBADF, ENOTDIR
    assert op.full_path(b"a/../b", op.DIR, b"t\0") == (b"/t/a/../b", False)
    assert op.full_path(b"rel", op.DIR, b"") == (b"/rel", False)
    assert op.full_path(b"rel", op.DIR_TRUNCATED, b"c\0b\0") == (b"b/c/rel", True)


# --- columns ----------------------------------------------------------------

def cells(**changes):
    probe, [e] = decode([changes])
    return {c.header: c.value(e) for c in probe.columns}


def test_columns():
    c = cells(ret=-2, path=b"missing")
    assert list(c) == ["TIME", "PID", "COMM", "FD/ERR", "FLAGS", "PATH"]
    assert c["FD/ERR"] == "ENOENT" and c["FLAGS"] == "RDONLY" and c["PATH"] == "AT_FDCWD:missing"
    c = cells(ret=5, path=b"inner", dirfd=3, flags=0o2000101)
    assert c["FD/ERR"] == "5" and c["FLAGS"] == "WRONLY|CREAT|CLOEXEC" and c["PATH"] == "fd3:inner"
    assert cells(path=b"/a\x1b[2J\n")["PATH"] == "/a\\x1b[2J\\n"
    assert cells(status=op.PATH_FAULT)["PATH"] == "(unreadable)"
    assert cells(syscall=2, status=op.HOW_SHORT)["FLAGS"] == "?"
    _, [e] = decode([{"path": b"/x" * 2000, "status": op.PATH_TRUNCATED}], et=LONG)
    assert op._path_cell(e).endswith("/x [truncated]")
    _, [e, f] = decode([{"path": b"r", "status": op.DIR, "dir": [b"b", b"a"]},
                        {"path": b"r", "status": op.DIR_TRUNCATED, "dir": [b"b"]}],
                       full_path=True)
    assert op._path_cell(e) == "/a/b/r"
    assert op._path_cell(f) == "…/b/r"


# --- options ----------------------------------------------------------------

@pytest.mark.parametrize("text, mask, accmode", [
    ("O_WRONLY", 0, 1),
    ("wronly,creat", 0o100, 1),
    ("O_RDONLY|O_CLOEXEC", 0o2000000, 0),
    ("creat", 0o100, None),
    ("O_TMPFILE", 0o20200000, None),
    ("sync,rdwr", 0o4010000, 2),
])
def test_parse_flags_filter(text, mask, accmode):
    f = op.parse_flags_filter(text)
    assert (f.mask, f.accmode, str(f)) == (mask, accmode, text)


@pytest.mark.parametrize("text", ["bogus", "rdonly,wronly", ",", "creat,", ""])
def test_parse_flags_filter_refuses(text):
    with pytest.raises(ValueError):
        op.parse_flags_filter(text)


def test_cflags():
    probe = op.OpenCodec({"path": "/tmp/a\"b", "flags": op.parse_flags_filter("wronly,creat"),
                          "tid": 7, "failed": True})
    flags = probe.cflags()
    assert flags["FILTER_PATH"] == '"\\057\\164\\155\\160\\057\\141\\042\\142"'
    assert flags["FILTER_FLAGS"] == "0x40" and flags["FILTER_ACCMODE"] == 1
    assert flags["FILTER_FAILED"] == 1 and probe.run_config()["tid"] == 7
    assert "FILTER_ACCMODE" not in op.OpenCodec({"flags": "creat"}).cflags()
    assert "FILTER_FLAGS" not in op.OpenCodec({"flags": "rdonly"}).cflags()


def test_shared_numbers_come_from_python_only():
    """The syscall numbers and status bits the probe writes are -D flags from
    open.py: every SYSCALL_* and ST_* name the C uses is one of them, and
    the C defines none itself (it stops with #error when one is missing)."""
    from rbtrace.paths import probes_dir
    src = (probes_dir() / op.SPEC.source).read_text()
    used = set(re.findall(r"\b(?:SYSCALL|ST)_[A-Z0-9_]+\b", src))
    flags = op.OpenCodec({}).cflags()
    assert used and used <= set(flags), sorted(used - set(flags))
    assert not re.search(r"#\s*define\s+(?:SYSCALL|ST)_", src)
    assert [flags[f"SYSCALL_{n.upper()}"] for n in op.SYSCALLS] == list(range(len(op.SYSCALLS)))
    bits = [v for k, v in flags.items() if k.startswith("ST_")]
    assert len(bits) == len(set(bits)) == 8 and all(b & (b - 1) == 0 for b in bits)
    # The decoder reads them back as it wrote them.
    _, ev = decode([{"syscall": flags["SYSCALL_OPENAT2"], "status": flags["ST_PATH_FAULT"]},
                    {"syscall": flags["SYSCALL_CREAT"], "path": b"/x" * 2000,
                     "status": flags["ST_PATH_TRUNCATED"]}], et=LONG)
    assert [e["syscall"] for e in ev] == ["openat2", "creat"]
    assert ev[0]["path"] is None and ev[1]["path_truncated"] is True


def test_offsets_only_with_full_path():
    """The BTF offsets are read only when --full-path compiles the walk."""
    assert op.OpenCodec({"full_path": True}).wants_offsets()
    assert not op.OpenCodec({}).wants_offsets()


def test_cflags_of_full_path():
    """--full-path builds the directory walk, with the running kernel's
    offsets (the 6.1 headers' layouts are wrong on this kernel); without
    it, none of that is compiled."""
    flags = op.OpenCodec({"full_path": True}).cflags()
    assert flags["FULL_PATH"] == 1
    assert set(op.STRUCT_OFFSETS) <= set(flags)
    from rbtrace.btf import BTF
    btf = BTF.from_file()
    for macro, (struct, member) in op.STRUCT_OFFSETS.items():
        assert flags[macro] == btf.member_offset(struct, member), macro
    plain = op.OpenCodec({}).cflags()
    assert "FULL_PATH" not in plain and not set(op.STRUCT_OFFSETS) & set(plain)


def test_path_prefix_is_bytes():
    assert op.parse_path_prefix("/tmp/\udcff") == b"/tmp/\xff"      # undecodable argv byte
    assert op.c_bytes_literal(b"\xff\0") == '"\\377\\000"'
    for bad in ("", "a" * 256):
        with pytest.raises(ValueError):
            op.parse_path_prefix(bad)
    assert op.parse_path_prefix("a" * 255) == b"a" * 255


@pytest.mark.parametrize("args, needle", [
    (["open", "--flags", "bogus"], "unknown open flag"),
    (["open", "--flags", "rdonly,wronly"], "conflicting access modes"),
    (["open", "--flags", "creat,,excl"], "empty flag name"),
    (["open", "--path", ""], "empty"),
    (["open", "--path", "/" * 300], "at most 255"),
    (["open", "--tid", "0"], "--tid"),
    (["open", "--pid", "x"], "--pid"),
])
def test_bad_open_options_are_one_line_and_exit_2(args, needle):
    p = subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert p.stdout == b""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rbtrace: ") and needle in err and "Traceback" not in err


def test_json_lines_equal_the_dicts_serialized():
    """The JSON fast path writes exactly what orjson writes for decode()'s
    dicts: runs of one repeated event, events that differ, a second
    boundary inside a run, '%' in a path, bytes that are not UTF-8."""
    import orjson
    rows = ([{"path": b"/same/%d%s/file"}] * 5 + [{"path": b"/other", "ret": -2}]
            + [{"path": b"bad-\xff", "ts_ns": 999_999_999 + k} for k in range(3)]
            + [{"path": b"/same/%d%s/file", "ret": -13, "flags": 0o101, "mode": 0o644}] * 4)
    for et in (SHORT, LONG):
        probe = op.OpenCodec({})
        probe.clock = fields.Clock(offset_ns=1_700_000_000 * 10**9)
        recs, offsets, data = records(et, rows)
        # Different junk after each path's NUL, as an earlier lap of the
        # ring leaves it: it must neither split nor join runs wrongly.
        path_off = et.dtype.fields["path"][1]
        for k, off in enumerate(offsets.tolist()):
            end = off + path_off + int(recs[k]["path_len"]) + 1
            data[end:end + 8] = bytes([k + 1]) * 8
        want = b"".join(orjson.dumps(e) + b"\n" for e in probe.decode(et, recs, offsets, data))
        assert probe.json_lines(et, recs, offsets, data) == want
        assert probe.json_lines(et, recs, offsets, data) == want   # from the template cache


def test_json_lines_with_full_path_equal_the_dicts_serialized():
    """--full-path goes through the same fast path: records that differ only
    in their directory's bytes (same lengths) are different events, and
    junk after the directory does not matter."""
    import orjson
    ok = op.DIR
    rows = ([{"path": b"f", "status": ok, "dir": [b"aa"]}] * 3
            + [{"path": b"f", "status": ok, "dir": [b"bb"]}] * 2
            + [{"path": b"f", "status": ok | op.DIR_DELETED, "dir": [b"bb"]},
               {"path": b"f", "status": op.DIR_TRUNCATED, "dir": [b"bb"]},
               {"path": b"/abs"}, {"path": b"f\xff", "status": ok, "dir": [b"%s"]}])
    for et in (SHORT, LONG_FULL):
        probe = op.OpenCodec({"full_path": True})
        probe.clock = fields.Clock(offset_ns=1_700_000_000 * 10**9)
        recs, offsets, data = records(et, rows)
        path_off = et.dtype.fields["path"][1]
        for k, off in enumerate(offsets.tolist()):
            end = off + path_off + int(recs[k]["path_len"]) + 1 + int(recs[k]["dir_len"])
            data[end:end + 8] = bytes([k + 1]) * 8
        events = probe.decode(et, recs, offsets, data)
        assert [e["full_path"] for e in events[:7]] == ["/aa/f"] * 3 + ["/bb/f"] * 3 + ["bb/f"]
        want = b"".join(orjson.dumps(e) + b"\n" for e in events)
        assert probe.json_lines(et, recs, offsets, data) == want
        assert probe.json_lines(et, recs, offsets, data) == want   # from the template cache


def test_json_fields_lists_every_member_decode_makes():
    rows = [{"path": b"/a"}, {"path": b"bad-\xff", "comm": b"\xfe"}, {"path": b"rel", "ret": -2},
            {"path": b"rel", "status": op.DIR, "dir": [b"\xff"]}]
    _, plain = decode(rows)
    _, full = decode(rows, full_path=True)
    seen = {k for e in plain + full for k in e}
    assert seen <= set(op.SPEC.json_fields)
    assert {"path_b64", "comm_b64", "full_path", "full_path_b64", "full_path_truncated",
            "full_path_deleted"} <= seen


def test_json_lines_keep_big_numbers_exact():
    """ts_ns past 2**53 (104 days of uptime) and a large seq come out to
    the unit, as decode() has them: no trip through float64."""
    import orjson
    big = 2**53 + 1
    rows = [{"path": b"/a", "ts_ns": big + k, "seq": big + 7 * k} for k in range(3)]
    probe = op.OpenCodec({})
    probe.clock = fields.Clock(offset_ns=0)
    recs, offsets, data = records(SHORT, rows)
    want = b"".join(orjson.dumps(e) + b"\n" for e in probe.decode(SHORT, recs, offsets, data))
    got = probe.json_lines(SHORT, recs, offsets, data)
    assert got == want
    assert [orjson.loads(ln)["ts_ns"] for ln in got.splitlines()] == [big, big + 1, big + 2]
