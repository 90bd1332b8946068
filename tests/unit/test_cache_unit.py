"""The compile cache's rules and the loader's relocation, without a kernel.

Entries are written and read in a temporary directory; the instructions
are hand-made (ld_imm64 of a map fd, and others that merely look alike)."""
import json
import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest

from rbtrace import cache
from rbtrace.bpf import dtype_from_data, dtype_to_data
from rbtrace.loader import (CALLBACK_MARK, LD_IMM64, PROG_TYPE_TRACEPOINT, PSEUDO_FUNC,
                            Compiled, MapSpec, ProgSpec, callback_marks, link_callbacks,
                            map_fd_refs, patched)


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_map(fd, dst=1, src=1):
    return insn(LD_IMM64, dst, src, 0, fd) + insn(0, 0, 0, 0, 0)


MOV_IMM = 0xb7      # r = imm: an imm that looks like an fd but is not a map
EXIT = 0x95


def program(*parts):
    return b"".join(parts)


def test_map_loads_are_found_and_nothing_else():
    insns = program(insn(MOV_IMM, 1, 0, 0, 7), ld_map(7), ld_map(9, src=2),
                    ld_map(5, src=0),        # a plain 64-bit constant: not a map
                    insn(EXIT))
    assert map_fd_refs(insns) == [(1, 7), (3, 9)]


def test_patching_puts_each_maps_fd_in_place():
    insns = program(ld_map(7), ld_map(9), insn(EXIT))
    out = patched(insns, [(0, "a"), (2, "b")], {"a": 41, "b": 42})
    assert map_fd_refs(out) == [(0, 41), (2, 42)]
    assert out[16 + 8:] == insns[16 + 8:] and len(out) == len(insns)


def test_an_unrecorded_map_load_is_refused():
    """A stale fd left in place could name another map of this process."""
    insns = program(ld_map(7), ld_map(9), insn(EXIT))
    with pytest.raises(ValueError, match="instructions \\[2\\]"):
        patched(insns, [(0, "a")], {"a": 41})


def ld_callback(number, dst=2):
    return insn(LD_IMM64, dst, 0, 0, number) + insn(0, 0, 0, 0, CALLBACK_MARK)


CALL = 0x85


def test_callback_references_are_found_and_nothing_else():
    insns = program(insn(MOV_IMM, 1, 0, 0, 4), ld_callback(1), ld_map(7),
                    insn(LD_IMM64, 2, 0, 0, 1) + insn(0, 0, 0, 0, 5), ld_callback(2), insn(EXIT))
    assert callback_marks(insns) == [(1, 1), (7, 2)]


def test_callbacks_are_appended_once_and_referred_to_as_functions():
    """Each callback follows the program once, however often it is named;
    each reference becomes a pseudo-function load of its first
    instruction, relative to the instruction after the ld_imm64."""
    main = program(ld_callback(2), insn(CALL, 0, 0, 0, 181), ld_callback(1), ld_callback(2),
                   insn(EXIT))
    one = program(insn(MOV_IMM, 0, 0, 0, 0), insn(EXIT))
    two = program(ld_map(9), insn(MOV_IMM, 0, 0, 0, 1), insn(EXIT))
    out, subprogs = link_callbacks(main, {1: ("rbtrace_cb1__one", one),
                                          2: ("rbtrace_cb2__two", two)})
    n = len(main) // 8
    assert subprogs == [(n, "rbtrace_cb2__two"), (n + 4, "rbtrace_cb1__one")]
    assert out[len(main):] == two + one
    for index, target in ((0, n), (3, n + 4), (5, n)):
        code, regs, _off, imm = struct.unpack_from("<BBhi", out, index * 8)
        assert code == LD_IMM64 and regs == (PSEUDO_FUNC << 4) | 2
        assert index + 1 + imm == target
        assert struct.unpack_from("<i", out, (index + 1) * 8 + 4)[0] == 0
    assert callback_marks(out) == []
    assert map_fd_refs(out) == [(n, 9)]


def test_a_callback_without_its_function_is_a_key_error():
    with pytest.raises(KeyError):
        link_callbacks(program(ld_callback(3), insn(EXIT)), {1: ("rbtrace_cb1__one", b"")})


def test_a_program_with_callbacks_round_trips(entries):
    c = _compiled()
    c.programs[0].subprogs = [(2, "rbtrace_cb1__one")]
    cache.store(entries, "k2", c, "x.bpf.c", {"why": 1})
    assert cache.lookup(entries, "k2") == c


def _compiled():
    return Compiled(license="GPL",
                    maps=[MapSpec("events", 27, 0, 0, 4096), MapSpec("stats", 6, 4, 8, 4)],
                    programs=[ProgSpec("tracepoint__a__b", PROG_TYPE_TRACEPOINT, "tracepoint",
                                       "a:b", program(ld_map(3), insn(EXIT)), [(0, "stats")])],
                    event_types=[("ev", {"names": ["x"], "formats": ["<u8"], "offsets": [0],
                                         "itemsize": 8, "c_paths": {"x": "x"}})])


@pytest.fixture
def entries(tmp_path, monkeypatch):
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(tmp_path / "cache"))
    return cache.open_dir()


def test_the_directory_is_made_private(entries):
    st = os.stat(entries)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()


def test_an_entry_round_trips(entries):
    c = _compiled()
    cache.store(entries, "k1", c, "x.bpf.c", {"why": 1})
    path = entries / ("k1" + cache.SUFFIX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = cache.lookup(entries, "k1")
    assert back == c


def test_a_missing_entry_is_a_quiet_miss(entries, notices):
    assert cache.lookup(entries, "nope") is None
    assert notices == []


@pytest.mark.parametrize("tamper,why", [
    (lambda p: os.chmod(p, 0o604), "mode 0604"),
    (lambda p: p.write_text(p.read_text().replace('"GPL"', '"MIT"')), "digest"),
    (lambda p: p.write_text(p.read_text()[:-5]), "corrupt"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "format": 99})),
     "another format"),
])
def test_a_tampered_entry_is_refused_with_one_line(entries, notices, tamper, why):
    cache.store(entries, "k1", _compiled(), "x.bpf.c", {})
    tamper(entries / ("k1" + cache.SUFFIX))
    assert cache.lookup(entries, "k1") is None
    ((text, line),) = notices
    assert line and text.startswith("rbtrace: compile cache entry refused, compiling again: ")
    assert why in text


def test_another_keys_entry_is_refused(entries, notices):
    cache.store(entries, "k1", _compiled(), "x.bpf.c", {})
    os.rename(entries / ("k1" + cache.SUFFIX), entries / ("k2" + cache.SUFFIX))
    assert cache.lookup(entries, "k2") is None
    assert len(notices) == 1 and "another key" in notices[0][0]


def test_a_symlinked_entry_is_refused(entries, tmp_path, notices):
    cache.store(entries, "k1", _compiled(), "x.bpf.c", {})
    real = tmp_path / "real.json"
    os.rename(entries / ("k1" + cache.SUFFIX), real)
    os.symlink(real, entries / ("k1" + cache.SUFFIX))
    assert cache.lookup(entries, "k1") is None
    assert len(notices) == 1 and "k1" in notices[0][0]


def test_a_refused_entry_is_one_line_on_stderr_from_the_command_line(
        entries, stderr_notices, capsys):
    """Through the command line's sink: the line as cache.py wrote it
    before notices existed, byte for byte; one a control character in an
    entry's name can't make two (or move the cursor)."""
    cache.store(entries, "k1", _compiled(), "x.bpf.c", {})
    os.rename(entries / ("k1" + cache.SUFFIX), entries / ("k2" + cache.SUFFIX))
    assert cache.lookup(entries, "k2") is None
    assert capsys.readouterr().err == ("rbtrace: compile cache entry refused, compiling again: "
                                       f"k2{cache.SUFFIX} holds another key's probe\n")
    cache.store(entries, "k\n\x1b[2J", _compiled(), "x.bpf.c", {})
    (entries / ("k\n\x1b[2J" + cache.SUFFIX)).chmod(0o604)
    assert cache.lookup(entries, "k\n\x1b[2J") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "k\\n\\x1b[2J" in err, repr(err)


def test_a_world_writable_root_is_not_trusted(tmp_path, monkeypatch):
    root = tmp_path / "open"
    root.mkdir()
    os.chmod(root, 0o777)
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(root))
    with pytest.raises(cache.Unsafe, match="can be written by others"):
        cache.open_dir()


def test_list_and_clear(entries):
    cache.store(entries, "k1", _compiled(), "x.bpf.c", {})
    cache.store(entries, "k2", _compiled(), "y.bpf.c", {})
    os.chmod(entries / ("k2" + cache.SUFFIX), 0o644)
    rows = cache.entries(entries)
    assert [(p.name, doc is not None, problem is None) for p, doc, problem in rows] == [
        ("k1" + cache.SUFFIX, True, True), ("k2" + cache.SUFFIX, False, False)]
    assert cache.clear(entries) == 2 and cache.entries(entries) == []


def test_the_key_changes_with_each_input(monkeypatch):
    monkeypatch.setattr(cache, "btf_digest", lambda d=None: "btf1")
    base = cache.make_key("int x;", ["A=1"], [], "headers 1")[0]
    assert base == cache.make_key("int x;", ["A=1"], [], "headers 1")[0]
    assert base != cache.make_key("int y;", ["A=1"], [], "headers 1")[0]
    assert base != cache.make_key("int x;", ["A=2"], [], "headers 1")[0]
    assert base != cache.make_key("int x;", ["A=1"], [], "headers 2")[0]
    monkeypatch.setattr(cache, "btf_digest", lambda d=None: "btf2")
    assert base != cache.make_key("int x;", ["A=1"], [], "headers 1")[0]


def test_the_btf_digest_is_kept_once_per_boot(entries, monkeypatch, tmp_path):
    """The BTF's digest is hashed once per boot and kept in the entries'
    directory; a memo of another boot or kernel, or one that is not a
    private file of ours, is not used."""
    import hashlib
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"BTF" * 1000)
    real = hashlib.sha256(btf.read_bytes()).hexdigest()
    monkeypatch.setattr(cache, "VMLINUX_BTF", str(btf))

    def digest():
        monkeypatch.setattr(cache, "_btf_digest", None)     # a new process
        return cache.btf_digest(entries)

    assert digest() == real
    memo_path = entries / cache.DIGEST_MEMO
    memo = json.loads(memo_path.read_text())
    assert memo["sha256"] == real and stat.S_IMODE(memo_path.stat().st_mode) == 0o600
    # The memo is what is used while its identity holds: a planted digest
    # under the same identity shows it was not hashed again.
    memo_path.write_text(json.dumps({**memo, "sha256": "a" * 64}))
    assert digest() == "a" * 64
    os.chmod(memo_path, 0o644)
    assert digest() == real                          # not private: hashed again
    memo_path.write_text(json.dumps({"identity": "another-boot", "sha256": "b" * 64}))
    os.chmod(memo_path, 0o600)
    assert digest() == real
    assert json.loads(memo_path.read_text())["identity"] == memo["identity"]   # made again
    monkeypatch.setattr(cache, "_btf_digest", None)
    assert cache.btf_digest() == real                # no directory: hashed, nothing kept


def test_record_layouts_round_trip_through_json():
    dt = np.dtype({"names": ["a", "s", "arr"], "formats": ["<u4", "S16", ("<i2", (3,))],
                   "offsets": [0, 8, 24], "itemsize": 32}, metadata={"c_paths": {"a": "h.a"}})
    back = dtype_from_data(json.loads(json.dumps(dtype_to_data(dt))))
    assert back == dt and back.itemsize == 32
    assert back.metadata["c_paths"] == {"a": "h.a"}


def test_process_filters_are_config_values_not_compile_flags():
    """-p, --tid, -u and -n select processes at run time (common.h reads
    rbtrace_config): two runs with other values share one compiled probe."""
    import struct
    from rbtrace.bpf import config_bytes
    from rbtrace.kinds.exec import ExecCodec
    a = ExecCodec({"pid": 7, "uid": 0, "comm": "make", "cgroup_dir": "/sys/fs/cgroup/x"})
    b = ExecCodec({"pid": 8, "tid": 9, "comm": "ninja"})
    keep = {"SCRATCH_SLOTS", "ARGV_PAGES", "MAX_ARGS", "ARGS_BYTES"}
    flags = lambda p: {k: v for k, v in p.cflags().items() if k in keep or k.startswith("FILTER")}
    assert flags(a) == flags(b)
    fmt = "<IIIIII16sII"
    self_pid, pid, tid, uid_on, uid, ready, comm, cgroup_on, _ = struct.unpack(
        fmt, config_bytes(a.run_config()))
    assert (pid, tid, uid_on, uid, ready, comm, cgroup_on) == \
        (7, 0, 1, 0, 1, b"make".ljust(16, b"\0"), 1)
    assert struct.unpack(fmt, config_bytes(b.run_config()))[1:] == \
        (8, 9, 0, 0, 1, b"ninja".ljust(16, b"\0"), 0, 0)
    # --cgroup/--container: the directory reaches the loader, which puts
    # its fd in a map at load, never in the compiled bytes.
    assert a.run_config()["cgroup"] == "/sys/fs/cgroup/x"
    assert not any("cgroup" in k.lower() for k in a.cflags())
    # No filter: zeros, and `ready`, without which (a map nobody wrote yet)
    # the programs trace nothing.
    assert config_bytes({})[4:] == bytes(16) + b"\1\0\0\0" + bytes(16) + bytes(8)


def test_the_cache_is_roots_or_the_users_own(monkeypatch, tmp_path):
    """Root's cache is closed to other users (mode 0700): a capable user
    gets one of their own rather than a refusal at every run."""
    from rbtrace import paths
    monkeypatch.delenv("RBTRACE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(paths.os, "geteuid", lambda: 0)
    assert paths.cache_dir() == Path("/var/cache/rbtrace")
    monkeypatch.setattr(paths.os, "geteuid", lambda: 1000)
    assert paths.cache_dir() == tmp_path / ".cache" / "rbtrace"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "rbtrace"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")     # the spec: absolute only
    assert paths.cache_dir() == tmp_path / ".cache" / "rbtrace"
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine" == cache.cache_root()


def test_the_ld_imm64_scan_walks_as_instruction_by_instruction():
    """loader._ld_imm64s finds opcodes with bytes.find; it must give what a
    walk of one instruction at a time gives (the slot after an ld_imm64 is
    its upper half, even when it looks like one), on any bytes."""
    import random

    from rbtrace import loader

    def walk(insns):
        i, n = 0, len(insns) // 8
        while i < n:
            code, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * 8)
            if code == LD_IMM64:
                upper = struct.unpack_from("<i", insns, (i + 1) * 8 + 4)[0] if i + 1 < n else None
                yield i, regs >> 4, imm, upper
                i += 2
            else:
                i += 1

    rng = random.Random(17)
    for _ in range(500):
        n = rng.randint(0, 40)
        b = bytearray(rng.getrandbits(8) for _ in range(n * 8 + rng.randint(0, 7)))
        for k in range(n):
            if rng.random() < 0.4:
                b[k * 8] = LD_IMM64
        assert list(loader._ld_imm64s(bytes(b))) == list(walk(bytes(b)))
