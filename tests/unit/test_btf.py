"""rbtrace.btf on BTF blobs built here, plus one check against bpftool.

The blobs are encoded by a small builder below, so the tests need neither
root nor /sys; only test_vmlinux_matches_bpftool reads the real kernel's
BTF, and it is skipped where that or bpftool is missing.
"""
import os
import re
import shutil
import struct
import subprocess

import pytest

from rbtrace import btf as btf_mod
from rbtrace.btf import BTF, BTFError, kernel_offsets

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
CONST, FUNC, FUNC_PROTO, VAR, DATASEC = 10, 12, 13, 14, 15
DECL_TAG, ENUM64 = 17, 19


class Builder:
    """Encodes types into a BTF blob as described in Documentation/bpf/btf.rst."""

    def __init__(self, order="<"):
        self.order = order
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def name(self, text):
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, kind, name, size_or_type, vlen=0, kflag=False, tail=()):
        """Append one type record; returns its type id."""
        info = kflag << 31 | kind << 24 | vlen
        self.types += struct.pack(self.order + "III", self.name(name), info, size_or_type)
        self.types += struct.pack(self.order + "%dI" % len(tail), *tail)
        self.count += 1
        return self.count

    def int(self, name, size, bits=None, bit_offset=0):
        bits = size * 8 if bits is None else bits
        return self.add(INT, name, size, tail=[bit_offset << 16 | bits])

    def struct(self, name, size, members, kflag=False, kind=STRUCT):
        """members: (name, type id, bit offset[, bitfield size])."""
        tail = []
        for member in members:
            mname, mtype, bit_offset = member[:3]
            bitfield = member[3] if len(member) > 3 else 0
            tail += [self.name(mname), mtype, bitfield << 24 | bit_offset if kflag else bit_offset]
        return self.add(kind, name, size, vlen=len(members), kflag=kflag, tail=tail)

    def blob(self, magic=0xEB9F, version=1):
        header = struct.pack(self.order + "HBBIIIII", magic, version, 0, 24,
                             0, len(self.types), len(self.types), len(self.strings))
        return header + bytes(self.types) + bytes(self.strings)


def noise(b, int_id):
    """One record of every kind with trailing data, so that the walk must
    skip each of them by its exact length to find what follows."""
    b.add(ARRAY, "", 0, tail=[int_id, int_id, 4])
    b.add(ENUM, "colour", 4, vlen=2, tail=[b.name("RED"), 0, b.name("BLUE"), 1])
    b.add(ENUM64, "big", 8, vlen=1, tail=[b.name("HUGE"), 0, 1])
    proto = b.add(FUNC_PROTO, "", int_id, vlen=2, tail=[b.name("a"), int_id, b.name("b"), int_id])
    b.add(FUNC, "f", proto)
    var = b.add(VAR, "v", int_id, tail=[1])
    b.add(DATASEC, ".data", 4, vlen=1, tail=[var, 0, 4])
    b.add(DECL_TAG, "tag", var, tail=[0xFFFFFFFF])
    b.add(FWD, "task_struct", 0)   # a forward declaration is not the struct


@pytest.fixture
def sample():
    """struct task_struct {                     // 64 bytes
           int pid;                             // 0
           union { long state; struct { int a; int tgid; }; };   // 8, tgid 12
           const inner_t sig;                   // 16, inner_t = struct inner
           struct task_struct *parent;          // 40
           char comm[16];                       // 48
       };
       struct inner { long x; struct deep d; };  // d.y at 8 + 4
    """
    b = Builder()
    i32 = b.int("int", 4)
    i64 = b.int("long", 8)
    noise(b, i32)
    char = b.int("char", 1)
    comm = b.add(ARRAY, "", 0, tail=[char, i32, 16])
    deep = b.struct("deep", 8, [("z", i32, 0), ("y", i32, 32)])
    inner = b.struct("inner", 24, [("x", i64, 0), ("d", deep, 64)])
    inner_t = b.add(CONST, "", b.add(TYPEDEF, "inner_t", inner))
    anon_struct = b.struct("", 8, [("a", i32, 0), ("tgid", i32, 32)])
    anon_union = b.struct("", 8, [("state", i64, 0), ("", anon_struct, 0)], kind=UNION)
    task = b.count + 1
    b.struct("task_struct", 64, [("pid", i32, 0), ("", anon_union, 64), ("sig", inner_t, 128),
                                 ("parent", b.count + 2, 320), ("comm", comm, 384)])
    b.add(PTR, "", task)
    return BTF(b.blob())


def test_plain_struct(sample):
    assert sample.struct_size("task_struct") == 64
    assert sample.member_offset("task_struct", "pid") == 0
    assert sample.member_offset("task_struct", "parent") == 40
    assert sample.member_offset("task_struct", "comm") == 48
    assert sample.struct_size("inner") == 24


def test_member_inside_anonymous_union_and_struct(sample):
    assert sample.member_offset("task_struct", "state") == 8
    assert sample.member_offset("task_struct", "tgid") == 12


def test_dotted_path_through_const_typedef(sample):
    assert sample.member_offset("task_struct", "sig") == 16
    assert sample.member_offset("task_struct", "sig.x") == 16
    assert sample.member_offset("task_struct", "sig.d.y") == 16 + 8 + 4


def test_path_through_pointer_or_scalar_is_refused(sample):
    with pytest.raises(BTFError, match=r"task_struct: 'parent' is a pointer"):
        sample.member_offset("task_struct", "parent.pid")
    with pytest.raises(BTFError, match=r"'pid' is not a struct or union"):
        sample.member_offset("task_struct", "pid.x")
    with pytest.raises(BTFError, match="bad member path"):
        sample.member_offset("task_struct", "sig..x")


def test_missing_struct_and_member_are_named(sample):
    with pytest.raises(BTFError, match="struct nosuch not found"):
        sample.member_offset("nosuch", "pid")
    with pytest.raises(BTFError, match="struct nosuch not found"):
        sample.struct_size("nosuch")
    with pytest.raises(BTFError, match=r"struct task_struct has no member 'ppid'"):
        sample.member_offset("task_struct", "ppid")
    with pytest.raises(BTFError, match=r"struct task_struct has no member 'sig.d.w'"):
        sample.member_offset("task_struct", "sig.d.w")


def test_name_found_as_tail_of_a_longer_string():
    # BTF may point a name at the tail of another string ("pid" in "ppid").
    b = Builder()
    i32 = b.int("int", 4)
    off = b.name("ppid")
    b.types += struct.pack("<III", off + 1, STRUCT << 24 | 1, 4)
    b.types += struct.pack("<III", off, i32, 0)
    b.count += 1
    btf = BTF(b.blob())
    assert btf.struct_size("pid") == 4
    assert btf.member_offset("pid", "ppid") == 0


def test_kind_flag_bitfields():
    b = Builder()
    u32 = b.int("unsigned int", 4)
    b.struct("flags", 12, [("a", u32, 0, 3), ("b", u32, 3, 5), ("count", u32, 32),
                           ("c", u32, 64, 8)], kflag=True)
    btf = BTF(b.blob())
    assert btf.member_offset("flags", "count") == 4
    with pytest.raises(BTFError, match=r"struct flags: member 'b' is a bitfield"):
        btf.member_offset("flags", "b")
    # Byte aligned but still a bitfield: its storage unit is not 8 bits.
    with pytest.raises(BTFError, match=r"struct flags: member 'c' is a bitfield"):
        btf.member_offset("flags", "c")


def test_old_style_int_bitfield():
    # Without kind_flag a bitfield is an INT whose bit count is not its size.
    b = Builder()
    three_bits = b.int("unsigned int", 4, bits=3)
    b.struct("old", 4, [("x", three_bits, 0)])
    with pytest.raises(BTFError, match=r"struct old: member 'x' is a bitfield"):
        BTF(b.blob()).member_offset("old", "x")


def test_member_off_a_byte_boundary():
    # Not an INT bitfield, yet at bit 4: only a byte offset would be wrong.
    b = Builder()
    colour = b.add(ENUM, "colour", 4, vlen=1, tail=[b.name("RED"), 0])
    b.struct("odd", 8, [("c", colour, 4)])
    with pytest.raises(BTFError, match=r"struct odd: member 'c' is not byte aligned"):
        BTF(b.blob()).member_offset("odd", "c")


def test_duplicate_struct_names():
    b = Builder()
    i32 = b.int("int", 4)
    b.struct("dup", 4, [("a", i32, 0)])
    b.struct("dup", 8, [("a", i32, 32), ("b", i32, 0)])
    btf = BTF(b.blob())
    assert btf.member_offset("dup", "b") == 0
    with pytest.raises(BTFError, match=r"struct dup is ambiguous.*\[4, 8\]"):
        btf.struct_size("dup")
    with pytest.raises(BTFError, match=r"struct dup is ambiguous.*'a'.*\[0, 4\]"):
        btf.member_offset("dup", "a")


def test_big_endian_blob():
    b = Builder(order=">")
    i32 = b.int("int", 4)
    noise(b, i32)
    b.struct("be", 8, [("x", i32, 0), ("y", i32, 32)])
    btf = BTF(b.blob())
    assert btf.struct_size("be") == 8
    assert btf.member_offset("be", "y") == 4


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than the header"),
    (b"\x9f\xeb\x01", "shorter than the header"),
    (b"\x7fELF" + bytes(40), "bad magic"),
])
def test_garbage_is_refused(data, message):
    with pytest.raises(BTFError, match=message):
        BTF(data)


def test_corrupt_blobs_are_refused():
    b = Builder()
    i32 = b.int("int", 4)
    b.struct("s", 4, [("a", i32, 0)])
    good = b.blob()
    with pytest.raises(BTFError, match="bad magic"):
        BTF(Builder().blob(magic=0x1234))
    with pytest.raises(BTFError, match="version 2"):
        BTF(b.blob(version=2))
    with pytest.raises(BTFError, match="outside the data"):
        BTF(good[:-3])
    # A struct that claims more members than the type section holds.
    lying = bytearray(good)
    vlen_at = 24 + 16 + 4
    lying[vlen_at] = 9
    with pytest.raises(BTFError, match="truncated"):
        BTF(bytes(lying))
    unknown = Builder()
    unknown.add(31, "x", 0)
    with pytest.raises(BTFError, match="unknown BTF kind 31"):
        BTF(unknown.blob())


def test_from_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "vmlinux"
    with pytest.raises(BTFError, match=f"cannot read BTF from {missing}"):
        BTF.from_file(str(missing))


@pytest.fixture
def btf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(tmp_path / "cache"))
    b = Builder()
    i32 = b.int("int", 4)
    b.struct("task_struct", 16, [("pid", i32, 0), ("tgid", i32, 32), ("prio", i32, 64)])
    path = tmp_path / "vmlinux"
    path.write_bytes(b.blob())
    return path


@pytest.fixture
def parses(monkeypatch):
    """Counts BTF.from_file calls: a cache hit makes none."""
    calls = []
    real = BTF.from_file.__func__

    def counting(cls, path):
        calls.append(path)
        return real(cls, path)
    monkeypatch.setattr(btf_mod.BTF, "from_file", classmethod(counting))
    return calls


def test_kernel_offsets_uses_and_extends_its_cache(btf_file, parses):
    fields = {"TASK_PID_OFF": ("task_struct", "pid"), "TASK_TGID_OFF": ("task_struct", "tgid")}
    assert kernel_offsets(fields, str(btf_file)) == {"TASK_PID_OFF": 0, "TASK_TGID_OFF": 4}
    assert (btf_file.parent / "cache" / "btf-offsets.json").exists()
    assert kernel_offsets(fields, str(btf_file)) == {"TASK_PID_OFF": 0, "TASK_TGID_OFF": 4}
    assert kernel_offsets({"TASK_TGID_OFF": ("task_struct", "tgid")},
                          str(btf_file)) == {"TASK_TGID_OFF": 4}
    assert len(parses) == 1

    # A changed request (same macro, other member) must not hit the cache ...
    assert kernel_offsets({"TASK_TGID_OFF": ("task_struct", "prio")},
                          str(btf_file)) == {"TASK_TGID_OFF": 8}
    assert len(parses) == 2
    # ... and the entries of other requests stay cached.
    assert kernel_offsets({"TASK_PID_OFF": ("task_struct", "pid")},
                          str(btf_file)) == {"TASK_PID_OFF": 0}
    assert len(parses) == 2


def test_kernel_offsets_cache_follows_the_btf_file(btf_file, parses):
    fields = {"TASK_TGID_OFF": ("task_struct", "tgid")}
    assert kernel_offsets(fields, str(btf_file)) == {"TASK_TGID_OFF": 4}
    b = Builder()
    i32 = b.int("int", 4)
    b.struct("task_struct", 16, [("pid", i32, 0), ("tgid", i32, 96)])
    btf_file.write_bytes(b.blob())
    assert kernel_offsets(fields, str(btf_file)) == {"TASK_TGID_OFF": 12}
    assert len(parses) == 2


def test_kernel_offsets_ignores_a_corrupt_cache(btf_file):
    cache = btf_file.parent / "cache"
    cache.mkdir()
    (cache / "btf-offsets.json").write_text('{"btf": 1, "offsets": [')
    assert kernel_offsets({"P": ("task_struct", "pid")}, str(btf_file)) == {"P": 0}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the cache file")
def test_kernel_offsets_ignores_a_cache_written_by_another_user(btf_file, parses):
    fields = {"P": ("task_struct", "pid")}
    kernel_offsets(fields, str(btf_file))
    os.chown(btf_file.parent / "cache" / "btf-offsets.json", 4242, 4242)
    kernel_offsets(fields, str(btf_file))
    assert len(parses) == 2


def test_kernel_offsets_without_a_writable_cache(btf_file, monkeypatch):
    blocker = btf_file.parent / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(blocker / "cache"))
    assert kernel_offsets({"P": ("task_struct", "prio")}, str(btf_file)) == {"P": 8}


def test_kernel_offsets_reports_missing_members(btf_file):
    with pytest.raises(BTFError, match=r"struct task_struct has no member 'nope'"):
        kernel_offsets({"X": ("task_struct", "nope")}, str(btf_file))
    with pytest.raises(BTFError, match="cannot read BTF"):
        kernel_offsets({"X": ("task_struct", "pid")}, str(btf_file.parent / "absent"))


VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason="no readable kernel BTF")
@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_vmlinux_matches_bpftool():
    dump = subprocess.run(["bpftool", "btf", "dump", "file", VMLINUX, "format", "raw"],
                          capture_output=True, text=True, check=True).stdout
    block = re.search(r"^\[\d+\] STRUCT 'task_struct' size=(\d+) vlen=\d+\n((?:\t.*\n)*)",
                      dump, re.MULTILINE)
    assert block, "bpftool shows no struct task_struct"
    bits = dict(re.findall(r"^\t'(\w+)' type_id=\d+ bits_offset=(\d+)$", block.group(2),
                           re.MULTILINE))
    btf = BTF.from_file(VMLINUX)
    assert btf.struct_size("task_struct") == int(block.group(1))
    for member in ("real_parent", "tgid", "pid", "comm"):
        assert btf.member_offset("task_struct", member) == int(bits[member]) // 8, member


def test_tags_and_enums_for_the_btf_tree():
    b = Builder()
    i = b.int("int", 4)
    noise(b, i)
    b.struct("task_struct", 8, [("tgid", i, 0)])
    b.struct("", 4, [("x", i, 0)], kind=UNION)
    b.add(ENUM, "", 4, vlen=1, tail=[b.name("ANON_ONE"), 1])
    btf = BTF(b.blob())
    # Forward declarations and anonymous types name no tag.
    assert btf.tags() == {"colour", "big", "task_struct"}
    assert btf.enums() == [("colour", ["RED", "BLUE"]), ("big", ["HUGE"]), ("", ["ANON_ONE"])]
