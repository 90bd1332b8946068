"""Kernel struct member offsets, read from the running kernel's BTF.

The BPF programs must not read kernel structs through the layouts in the
installed kernel headers: those headers may belong to another kernel (here
Debian's 6.1 headers on a 6.18 kernel), and struct layouts change between
versions and configs.  The running kernel describes its own types in
/sys/kernel/btf/vmlinux (BPF Type Format, Documentation/bpf/btf.rst), so
rbtrace reads the few member offsets it needs from there at start-up and
hands them to the BPF C code as -D flags (-DTASK_TGID_OFF=...).

The parser is written for start-up speed rather than generality: one pass
over the type section records where each type starts and which types are
structs, and only the members of the structs asked for are decoded.
Names are compared as string-section offsets, so no type name is decoded
while walking.  kernel_offsets() caches its answers on disk, so a repeated
start-up on the same kernel does not parse anything.
"""
from __future__ import annotations

import array
import hashlib
import json
import os
import struct
import sys

VMLINUX = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_HEADER = "HBBIIIII"        # magic, version, flags, hdr_len, type/str off/len
_HEADER_LEN = struct.calcsize("<" + _HEADER)

_INT, _PTR, _STRUCT, _UNION, _ENUM, _ENUM64 = 1, 2, 4, 5, 6, 19
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG = 8, 9, 10, 11, 18
# Kinds that only qualify or rename another type: a member declared with
# one of them still has the layout of the type underneath.
_MODIFIERS = frozenset((_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG))

# Trailing data after the 12-byte btf_type, in 4-byte words, per kind:
# a fixed part plus a part per vlen entry.  Indexed by kind 0..19 (ENUM64).
_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# Bounds typedef/const chains so that a corrupt file with a cycle fails
# instead of looping; real chains are a handful of links long.
_MAX_CHAIN = 64


class BTFError(Exception):
    """The BTF data is unreadable, or lacks the struct or member asked for."""


class BTF:
    """The struct layouts of one BTF blob (vmlinux or a file in that format)."""

    @classmethod
    def from_file(cls, path=VMLINUX) -> "BTF":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BTFError(f"cannot read BTF from {path}: {e.strerror}") from e
        return cls(data)

    def __init__(self, data: bytes):
        if len(data) < _HEADER_LEN:
            raise BTFError(f"not BTF data: {len(data)} bytes is shorter than the header")
        # The magic is written in the byte order of the kernel that made
        # the file, so it tells which order every other field is in.
        if data[:2] == _MAGIC.to_bytes(2, "little"):
            order = "little"
        elif data[:2] == _MAGIC.to_bytes(2, "big"):
            order = "big"
        else:
            raise BTFError(f"not BTF data: bad magic {data[:2].hex()}")
        (_, version, _, hdr_len, type_off, type_len, str_off, str_len) = struct.unpack_from(
            ("<" if order == "little" else ">") + _HEADER, data)
        if version != 1:
            raise BTFError(f"unsupported BTF version {version}")
        types_at = hdr_len + type_off
        strings_at = hdr_len + str_off
        if (hdr_len < _HEADER_LEN or type_len % 4
                or types_at + type_len > len(data) or strings_at + str_len > len(data)):
            raise BTFError("corrupt BTF header: sections lie outside the data")

        # Every type record is a whole number of 4-byte words, so the type
        # section is decoded once into an array of words; indexing it is far
        # cheaper than a struct.unpack_from call per field.
        words = array.array("I")
        if words.itemsize != 4:
            raise BTFError("this Python has no 4-byte unsigned array type")
        words.frombytes(data[types_at:types_at + type_len])
        if order != sys.byteorder:
            words.byteswap()
        self._words = words
        self._strings = data[strings_at:strings_at + str_len]

        # starts[id] is the word index of type `id`; id 0 is void and has no
        # record.  structs maps a name's string offset to the ids of the
        # structs with that name (vmlinux has a few duplicate names).
        starts = array.array("I", [0])
        structs = {}
        fixed, per_vlen = _FIXED_WORDS, _VLEN_WORDS
        i, end = 0, len(words)
        while i + 3 <= end:
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            if kind >= len(fixed) or kind == 0:
                raise BTFError(f"unknown BTF kind {kind} at type id {len(starts)}")
            if kind == _STRUCT:
                structs.setdefault(words[i], []).append(len(starts))
            starts.append(i)
            i += 3 + fixed[kind] + per_vlen[kind] * (info & 0xFFFF)
        if i != end:
            raise BTFError("corrupt BTF: the last type record is truncated")
        self._starts = starts
        self._structs = structs

    def struct_size(self, name: str) -> int:
        """Size in bytes of `struct name`."""
        sizes = {self._words[self._starts[tid] + 2] for tid in self._struct_ids(name)}
        if len(sizes) > 1:
            raise BTFError(f"struct {name} is ambiguous: BTF has several, of sizes "
                           f"{sorted(sizes)}")
        return sizes.pop()

    def member_offset(self, struct: str, path: str) -> int:
        """Byte offset of `path` (e.g. "tgid" or "thread.sp") in `struct struct`.

        Members of anonymous structs and unions are found as C finds them.
        Each dotted step must be an embedded struct or union: the offset of
        a member behind a pointer means nothing without reading the pointer,
        so a pointer on the path is an error.
        """
        offsets, errors = set(), []
        # When BTF holds several structs of that name (unrelated static
        # structs of different compilation units), the one that has the
        # member is the one meant; disagreeing answers cannot be resolved.
        for tid in self._struct_ids(struct):
            try:
                offsets.add(self._path_offset(tid, struct, path))
            except BTFError as e:
                errors.append(e)
        if not offsets:
            raise errors[0]
        if len(offsets) > 1:
            raise BTFError(f"struct {struct} is ambiguous: BTF has several, with "
                           f"member {path!r} at offsets {sorted(offsets)}")
        return offsets.pop()

    def _name(self, offset) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end if end != -1 else None].decode(errors="replace")

    def tags(self) -> set:
        """The names of every struct, union and enum (C's tag namespace)."""
        words, found = self._words, set()
        for start in self._starts[1:]:
            if (words[start + 1] >> 24) & 0x1F in (_STRUCT, _UNION, _ENUM, _ENUM64) and words[start]:
                found.add(self._name(words[start]))
        return found

    def enums(self) -> list:
        """[(enum name, or "" when anonymous, [enumerator names])]."""
        words, found = self._words, []
        for start in self._starts[1:]:
            info = words[start + 1]
            kind = (info >> 24) & 0x1F
            if kind in (_ENUM, _ENUM64):
                step = 2 if kind == _ENUM else 3
                first = start + 3
                members = [self._name(words[m])
                           for m in range(first, first + step * (info & 0xFFFF), step)]
                found.append((self._name(words[start]) if words[start] else "", members))
        return found

    def _struct_ids(self, name):
        ids = [tid for off in self._name_offsets(name) for tid in self._structs.get(off, ())]
        if not ids:
            raise BTFError(f"struct {name} not found in BTF")
        return ids

    def _name_offsets(self, name):
        """Every string-section offset that reads as `name`.

        A string may be referenced through the tail of a longer one ("pid"
        inside "ppid"), so every occurrence counts, not only whole strings.
        """
        needle = name.encode() + b"\0"
        found, at = set(), self._strings.find(needle)
        while at != -1:
            found.add(at)
            at = self._strings.find(needle, at + 1)
        return found

    def _path_offset(self, tid, struct, path):
        bits = 0
        steps = path.split(".")
        for n, step in enumerate(steps):
            where = ".".join(steps[:n + 1])
            if not step:
                raise BTFError(f"bad member path {path!r} for struct {struct}")
            if n:
                tid, kind = self._resolve(tid)
                if kind == _PTR:
                    raise BTFError(f"struct {struct}: {'.'.join(steps[:n])!r} is a pointer; "
                                   f"look up {step!r} in the struct it points to")
                if kind not in (_STRUCT, _UNION):
                    raise BTFError(f"struct {struct}: {'.'.join(steps[:n])!r} is not "
                                   f"a struct or union")
            found = self._find_member(tid, self._name_offsets(step))
            if found is None:
                raise BTFError(f"struct {struct} has no member {where!r}")
            member_bits, bitfield, tid = found
            if bitfield or self._is_int_bitfield(tid):
                raise BTFError(f"struct {struct}: member {where!r} is a bitfield "
                               f"and has no byte offset")
            bits += member_bits
        if bits % 8:
            raise BTFError(f"struct {struct}: member {path!r} is not byte aligned")
        return bits // 8

    def _find_member(self, tid, names):
        """(bit offset, is bitfield, type id) of a member named in `names`.

        Anonymous struct/union members are searched too, with their own
        offset added, because C names their members as if they were direct.
        """
        words = self._words
        start = self._starts[tid]
        info = words[start + 1]
        # With kind_flag set the offset word packs bitfield_size << 24 |
        # bit_offset; without it the word is the bit offset alone.
        packed = info >> 31
        for m in range(start + 3, start + 3 + 3 * (info & 0xFFFF), 3):
            name, mtype, offset = words[m], words[m + 1], words[m + 2]
            bit_offset = offset & 0xFFFFFF if packed else offset
            if name in names:
                return bit_offset, bool(packed and offset >> 24), mtype
            if name == 0 or self._strings[name:name + 1] == b"\0":
                inner, kind = self._resolve(mtype)
                if kind in (_STRUCT, _UNION):
                    found = self._find_member(inner, names)
                    if found is not None:
                        return bit_offset + found[0], found[1], found[2]
        return None

    def _is_int_bitfield(self, tid):
        # Old-style bitfields (no kind_flag) are INT types whose bit count
        # or bit offset does not fill their size.
        tid, kind = self._resolve(tid)
        if kind != _INT:
            return False
        start = self._starts[tid]
        encoding = self._words[start + 3]
        return (encoding & 0xFF) != self._words[start + 2] * 8 or (encoding >> 16) & 0xFF != 0

    def _resolve(self, tid):
        """(id, kind) of `tid` with typedefs and qualifiers peeled off."""
        for _ in range(_MAX_CHAIN):
            if not 0 < tid < len(self._starts):
                raise BTFError(f"corrupt BTF: reference to type id {tid}")
            start = self._starts[tid]
            kind = (self._words[start + 1] >> 24) & 0x1F
            if kind not in _MODIFIERS:
                return tid, kind
            tid = self._words[start + 2]
        raise BTFError(f"corrupt BTF: typedef chain longer than {_MAX_CHAIN} at type id {tid}")


def kernel_offsets(fields: dict[str, tuple[str, str]], path=VMLINUX) -> dict[str, int]:
    """{macro: byte offset} for {macro: (struct, member path)}, cached on disk.

    Parsing vmlinux BTF costs a noticeable fraction of a second, paid on
    every start-up; the cache makes that once per kernel boot.
    """
    try:
        identity = _btf_identity(path)
    except OSError as e:
        raise BTFError(f"cannot read BTF from {path}: {e.strerror}") from e
    cache_file = os.path.join(
        os.environ.get("RBTRACE_CACHE_DIR") or "/var/cache/rbtrace", "btf-offsets.json")
    cached = _read_cache(cache_file, identity)
    if all(cached.get(macro, [None, None])[:2] == [s, m] for macro, (s, m) in fields.items()):
        return {macro: cached[macro][2] for macro in fields}

    btf = BTF.from_file(path)
    offsets = {macro: btf.member_offset(s, m) for macro, (s, m) in fields.items()}
    # Entries asked for by other callers stay, so that callers with
    # different field sets do not keep invalidating each other.
    cached.update({macro: [s, m, offsets[macro]] for macro, (s, m) in fields.items()})
    _write_cache(cache_file, identity, cached)
    return offsets


def _btf_identity(path):
    """A string that changes whenever the BTF behind `path` may have changed.

    Hashing the whole file would cost about as much as parsing it.  Size,
    mtime (set at boot for the sysfs file), the kernel build string and a
    hash of the first 64 KiB together change with any kernel or file change.
    """
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
        st = os.fstat(f.fileno())
    uname = os.uname()
    return ":".join((os.path.realpath(path), str(st.st_size), str(st.st_mtime_ns),
                     uname.release, uname.version, hashlib.sha256(head).hexdigest()))


def _read_cache(cache_file, identity):
    """The cached {macro: [struct, path, offset]} for this BTF, or {}."""
    try:
        with open(cache_file, "rb") as f:
            # The offsets steer kernel memory reads by root-run BPF code, so
            # only a file that root or we ourselves wrote is trusted.
            if os.fstat(f.fileno()).st_uid not in (0, os.geteuid()):
                return {}
            content = json.load(f)
        if content["btf"] != identity:
            return {}
        entries = content["offsets"]
        if all(isinstance(s, str) and isinstance(m, str) and type(off) is int
               for s, m, off in entries.values()):
            return entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing, unreadable or malformed: parse again
    return {}


def _write_cache(cache_file, identity, entries):
    directory = os.path.dirname(cache_file)
    try:
        os.makedirs(directory, exist_ok=True)
        # Written to a temporary file and renamed, so that a concurrent
        # start-up never reads half a file.
        import tempfile    # here, not at start-up: the import costs 5 ms
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".btf-offsets.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"btf": identity, "offsets": entries}, f)
            os.replace(tmp, cache_file)
        except OSError:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # an unwritable cache only costs a parse on the next start-up
