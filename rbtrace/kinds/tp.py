"""rbtrace tp: any tracepoint, decoded from its format file.

For each tracepoint asked for, rbtrace reads tracefs'
events/CATEGORY/EVENT/format, generates one C event struct and one BPF
program, writes them to a temporary file that includes common.h, and
decodes the records with GenericCodec (rbtrace/generic.py).

Reading the format
    Each `field:TYPE NAME; offset:N; size:N; signed:N;` line is a member
    of the raw tracepoint record.  The common_* members (type, flags,
    preempt count, pid) are left out: the record header has better ones.
    A TYPE is classified (TpField.kind): an integer, a pointer (shown as
    hex), a char array (text), an integer array (a list), a __data_loc or
    __rel_loc char[] (a string stored after the fixed members; the field
    holds its offset in the low 16 bits and its length, NUL included, in
    the high 16), a __data_loc array of something else, or, for anything
    rbtrace does not know, the raw bytes in hex.

    Syscall tracepoints store every argument in 8 bytes whatever its C
    type (kernel/trace/trace_syscalls.c) and say signed:0 for all of
    them, so an `int dfd` of AT_FDCWD arrives as 0xffffff9c.  A field whose
    type is a C integer type rbtrace knows (INT_TYPES) is decoded with that
    type's size and sign: dfd is -100.

The generated program (see generate())
    Fixed members are copied with one bpf_probe_read_kernel() of the
    record's bytes into a struct whose members sit at the same relative
    offsets (packed, with explicit padding), rather than through BCC's
    TRACEPOINT_PROBE `args` struct: BCC builds that struct from the format
    by pasting each field's TYPE into C, which fails to compile for types
    the installed headers (Debian's 6.1 on a 6.18 kernel) don't declare
    and for odd names, and would cost one load per field.  A __data_loc
    string is then read with bpf_probe_read_kernel_str() from the record
    into a buffer of --string-bytes, its full length kept beside it so the
    decoder can mark a cut one.  Padding is zeroed: equal events have equal
    bytes, which the JSON encoder caches by.

    Programs are plain functions that LoadedProbe loads and attaches by
    name (its `tracepoints`), rather than BCC's tracepoint__CAT__EVENT
    functions, which it attaches by parsing the name: any category and
    event name works, and no name can clash with a program of common.h's.
    Each program first checks `rbtrace_stop`, which user space sets before
    detaching: detaching hundreds of tracepoints takes seconds.

    The ring consumer tells record types apart by size, so the generator
    makes every struct's size unique, with up to one byte of padding per
    event of the same natural size (structs are packed for that reason).
"""
import dataclasses
import difflib
import fnmatch
import os
import re
import resource
import sys
import tempfile
from pathlib import Path
from typing import Optional

import click

from rbtrace import kernel
from rbtrace.errors import EnvironmentProblem, UsageError
from rbtrace.fields import for_message
from rbtrace.generic import COLUMNS, FIELDS, EventSpec, FieldSpec, GenericCodec
from rbtrace.spec import Argument, Option, Spec

__all__ = ["SPEC", "TpCodec", "TpField", "TpFormat", "parse_format", "generate",
           "resolve", "list_tracepoints"]

# How many tracepoints one run attaches unless --max-tracepoints says more.
# Measured on the 2-core 6.18 VM (man/rbtrace-tp.8, OVERHEAD): one program
# per tracepoint, so start-up (BCC's compile, mostly) and stopping (a
# kernel RCU wait per detached tracepoint, serialized) grow with the count:
#   syscalls:sys_enter_*  360 tracepoints:  4.4 s to start, 10.5 s to stop
#   syscalls:*            720 tracepoints: 13.5 s to start, 20-28 s to stop
# sys_enter_* (and sys_exit_*) must work as they are; all of syscalls:*
# is refused unless asked for.
DEFAULT_MAX_TRACEPOINTS = 400
LIMIT_MAX_TRACEPOINTS = 2000

# Bytes kept of a __data_loc string (NUL included) or dynamic array.
DEFAULT_STRING_BYTES = 256
MIN_STRING_BYTES = 16
LIMIT_STRING_BYTES = 4096


# C integer types a tracepoint format names: (size, signed).  None for
# signed means "as the format says" (char's sign depends on the arch).
INT_TYPES = {
    "char": (1, None), "signed char": (1, True), "unsigned char": (1, False),
    "short": (2, True), "short int": (2, True), "signed short": (2, True),
    "unsigned short": (2, False), "unsigned short int": (2, False),
    "int": (4, True), "signed": (4, True), "signed int": (4, True),
    "unsigned": (4, False), "unsigned int": (4, False), "uint": (4, False),
    "long": (8, True), "long int": (8, True), "signed long": (8, True),
    "unsigned long": (8, False), "unsigned long int": (8, False), "ulong": (8, False),
    "long long": (8, True), "long long int": (8, True), "signed long long": (8, True),
    "unsigned long long": (8, False), "unsigned long long int": (8, False),
    "bool": (1, False), "_Bool": (1, False),
    "u8": (1, False), "__u8": (1, False), "uint8_t": (1, False),
    "s8": (1, True), "__s8": (1, True), "int8_t": (1, True),
    "u16": (2, False), "__u16": (2, False), "uint16_t": (2, False),
    "__be16": (2, False), "__le16": (2, False),
    "s16": (2, True), "__s16": (2, True), "int16_t": (2, True),
    "u32": (4, False), "__u32": (4, False), "uint32_t": (4, False),
    "__be32": (4, False), "__le32": (4, False),
    "s32": (4, True), "__s32": (4, True), "int32_t": (4, True),
    "u64": (8, False), "__u64": (8, False), "uint64_t": (8, False),
    "__be64": (8, False), "__le64": (8, False),
    "s64": (8, True), "__s64": (8, True), "int64_t": (8, True),
    "pid_t": (4, True), "uid_t": (4, False), "gid_t": (4, False),
    "size_t": (8, False), "ssize_t": (8, True), "loff_t": (8, True), "off_t": (8, True),
    "umode_t": (2, False), "mode_t": (4, False), "dev_t": (4, False), "ino_t": (8, False),
    "key_serial_t": (4, True), "key_t": (4, True), "qid_t": (4, False),
    "clockid_t": (4, True), "timer_t": (4, True), "mqd_t": (4, True), "rwf_t": (4, True),
    "aio_context_t": (8, False), "time64_t": (8, True), "sector_t": (8, False),
    "gfp_t": (4, False), "fmode_t": (4, False), "pgoff_t": (8, False),
}
# Typedefs of pointers (shown as hex like any pointer).
POINTER_TYPES = {"cap_user_header_t", "cap_user_data_t", "caddr_t"}
_QUALIFIERS = re.compile(r"\b(const|volatile|__user|__rcu|__iomem|__percpu|__force)\b")
_C_INT = {(1, False): "u8", (1, True): "s8", (2, False): "u16", (2, True): "s16",
          (4, False): "u32", (4, True): "s32", (8, False): "u64", (8, True): "s64"}


# --- the format file ---------------------------------------------------------

@dataclasses.dataclass
class TpField:
    """One field of a tracepoint's format, classified."""
    name: str
    type: str                # as the format declares it: "const char *", "__data_loc char[]"
    offset: int
    size: int
    signed: bool
    kind: str = ""           # int, pointer, chars, array, string, dynarray, bytes, skip
    elem: tuple = (1, False)  # element (size, signed) of arrays; value type of ints
    count: int = 0           # elements of a fixed array
    rel: bool = False        # __rel_loc: offset relative to the end of the field
    cast: Optional[tuple] = None   # decode as (size, signed) when stored wider


@dataclasses.dataclass
class TpFormat:
    category: str
    event: str
    id: int
    fields: list             # TpField, common_* left out, in offset order

    @property
    def name(self):
        return f"{self.category}:{self.event}"


_FIELD_LINE = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>-?\d+);)?")
_ARRAY = re.compile(r"^(?P<name>[^\[\]\s]+)\s*\[(?P<len>[^\]]*)\]$")


def _base_type(text: str) -> str:
    return " ".join(_QUALIFIERS.sub(" ", text).split())


def classify(f: TpField) -> TpField:
    """Fill f.kind and the members that go with it."""
    t = _base_type(f.type)
    dynamic = re.match(r"^__(data|rel)_loc\s+(.*)$", t)
    if dynamic:
        f.rel = dynamic.group(1) == "rel"
        inner = dynamic.group(2).strip()
        elem = re.sub(r"\s*\[\s*\]$", "", inner).strip()
        if elem in ("char", "signed char", "unsigned char") and inner.endswith("]"):
            f.kind = "string"
        else:
            f.kind = "dynarray"
            known = INT_TYPES.get(elem)
            f.elem = (known[0], bool(known[1])) if known else (1, False)
        return f
    m = _ARRAY.match(f.name)
    if m:
        f.name = m.group("name")
        if f.size == 0:
            f.kind = "skip"        # a flexible array: nothing of its own to copy
            return f
        if t in ("char", "signed char") and f.size:
            f.kind, f.count = "chars", f.size
            return f
        known = INT_TYPES.get(t)
        if "*" in t or t in POINTER_TYPES:
            known = (8, False)
        if known and f.size % known[0] == 0:
            f.kind = "array"
            f.elem = (known[0], known[1] if known[1] is not None else f.signed)
            f.count = f.size // known[0]
            return f
        f.kind = "bytes"
        return f
    if f.size == 0:
        f.kind = "skip"
        return f
    if f.size not in (1, 2, 4, 8):
        f.kind = "bytes"
        return f
    if "*" in t or t in POINTER_TYPES:
        f.kind = "pointer"
        f.elem = (f.size, False)
        return f
    known = INT_TYPES.get(t)
    if known is None and t.startswith("enum "):
        known = (f.size, f.signed)
    if known is None:
        # A typedef rbtrace doesn't know: as wide and signed as stored.
        f.kind, f.elem = "int", (f.size, f.signed)
        return f
    size, signed = known
    signed = f.signed if signed is None else signed
    f.kind = "int"
    f.elem = (f.size, signed)
    if size < f.size:
        f.cast = (size, signed)
    return f


def parse_format(text: str, category: str = "", event: str = "") -> TpFormat:
    """A TpFormat from the text of a tracefs format file."""
    tp_id, name = -1, event
    fields = []
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("ID:"):
            try:
                tp_id = int(line.split(":", 1)[1])
            except ValueError:
                pass
        m = _FIELD_LINE.match(line)
        if not m:
            continue
        decl = m.group("decl").strip()
        type_text, _, field_name = decl.rpartition(" ")
        if not type_text:
            continue
        # "char comm[16]" has its size with the name; "__data_loc char[] x" with the type
        if field_name.startswith("common_"):
            continue
        signed = m.group("signed")
        f = TpField(field_name, type_text.strip(), int(m.group("offset")), int(m.group("size")),
                    signed is not None and int(signed) != 0)
        fields.append(classify(f))
    fields.sort(key=lambda f: f.offset)
    return TpFormat(category, event or name, tp_id, fields)


# --- which tracepoints exist ------------------------------------------------------

def events_root() -> Path:
    return kernel.tracefs_dir() / "events"


def _ensure_tracefs(root):
    if root is None:
        kernel.ensure_tracefs()
        return events_root()
    return Path(root)


# Categories of events that are in tracefs but take no BPF program: the
# ftrace events (function, print, ...) are the tracer's own records, not
# tracepoints, and perf refuses them (EINVAL).
UNTRACEABLE_CATEGORIES = ("ftrace",)


def list_tracepoints(root=None) -> list:
    """Every CATEGORY:EVENT under tracefs that can be traced, sorted."""
    root = _ensure_tracefs(root)
    names = []
    try:
        categories = list(os.scandir(root))
    except OSError as e:
        raise EnvironmentProblem(f"cannot list {root}: {e.strerror}") from e
    for cat in categories:
        if not cat.is_dir() or cat.name in UNTRACEABLE_CATEGORIES:
            continue
        try:
            for ev in os.scandir(cat.path):
                if ev.is_dir() and os.path.exists(os.path.join(ev.path, "format")):
                    names.append(f"{cat.name}:{ev.name}")
        except OSError:
            continue
    return sorted(names)


_NAME = re.compile(r"^[^:\s/]+:[^:\s/]+$")


def is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def match(pattern: str, names) -> list:
    """Names matching a CATEGORY:EVENT pattern, each part an fnmatch
    pattern (case-sensitive)."""
    cat_pat, _, ev_pat = pattern.partition(":")
    out = []
    for n in names:
        cat, _, ev = n.partition(":")
        if fnmatch.fnmatchcase(cat, cat_pat) and fnmatch.fnmatchcase(ev, ev_pat):
            out.append(n)
    return out


def list_matching(pattern: Optional[str], root=None) -> list:
    """--list: every tracepoint, or those matching PATTERN.  A PATTERN
    without ':' matches anywhere in the name ("fork" finds
    sched:sched_process_fork)."""
    names = list_tracepoints(root)
    if not pattern:
        return names
    if ":" in pattern:
        return match(pattern, names)
    glob = pattern if is_pattern(pattern) else f"*{pattern}*"
    return [n for n in names if fnmatch.fnmatchcase(n, glob)]


def resolve(specs, max_tracepoints=DEFAULT_MAX_TRACEPOINTS, root=None) -> list:
    """The tracepoint names for CATEGORY:EVENT arguments, wildcards
    expanded, in the order given, each once.  Raises UsageError."""
    specs = list(specs or ())
    if not specs:
        raise UsageError("no tracepoint given: rbtrace tp CATEGORY:EVENT... "
                         "(rbtrace tp --list shows them)")
    for s in specs:
        if not _NAME.match(s):
            raise UsageError(f"'{for_message(s)}' is not a tracepoint name: CATEGORY:EVENT, "
                             f"like sched:sched_process_fork or 'syscalls:sys_enter_*'")
    names = list_tracepoints(root)
    known = set(names)
    out, seen = [], set()
    for s in specs:
        if is_pattern(s):
            found = match(s, names)
            if not found:
                raise UsageError(f"no tracepoint matches '{for_message(s)}' (rbtrace tp --list shows them)")
        elif s in known:
            found = [s]
        elif s.partition(":")[0] in UNTRACEABLE_CATEGORIES:
            raise UsageError(f"{s}: the {s.partition(':')[0]} events are the tracer's own "
                             f"records, not tracepoints, and take no BPF program")
        else:
            close = difflib.get_close_matches(s, names, n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                " (rbtrace tp --list shows them)"
            raise UsageError(f"no tracepoint {for_message(s)} on this kernel{hint}")
        for n in found:
            if n not in seen:
                seen.add(n)
                out.append(n)
    if len(out) > max_tracepoints:
        raise UsageError(f"{len(out)} tracepoints match, more than the {max_tracepoints} "
                         f"allowed at once (raise it with --max-tracepoints, up to "
                         f"{LIMIT_MAX_TRACEPOINTS})")
    return out


def read_format(name: str, root=None) -> TpFormat:
    root = _ensure_tracefs(root)
    cat, _, ev = name.partition(":")
    path = Path(root) / cat / ev / "format"
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UsageError(f"cannot read the format of {for_message(name)}: {e.strerror}") from e
    return parse_format(text, cat, ev)


# --- the C source ---------------------------------------------------------------

@dataclasses.dataclass
class Generated:
    source: str
    events: dict             # struct name -> EventSpec
    tracepoints: list        # (function name, "category:event")


def _ident(text: str) -> str:
    out = re.sub(r"\W", "_", text, flags=re.ASCII)
    return out if out and not out[0].isdigit() else "_" + out


def _c_comment(text: str) -> str:
    return text.replace("*/", "* /")


_C_SIZE = {"char": 1, "bool": 1, "u8": 1, "s8": 1, "u16": 2, "s16": 2, "u32": 4, "s32": 4,
           "u64": 8, "s64": 8}


@dataclasses.dataclass
class Member:
    """A member of a generated event struct, after the header."""
    name: str
    ctype: str               # a key of _C_SIZE
    count: int = 0           # array length; 0: a scalar
    comment: str = ""

    @property
    def size(self):
        return _C_SIZE[self.ctype] * max(1, self.count)

    def c(self) -> str:
        text = f"{self.ctype} {self.name}{f'[{self.count}]' if self.count else ''};"
        return f"{text}  /* {_c_comment(self.comment)} */" if self.comment else text


@dataclasses.dataclass
class Layout:
    """One tracepoint's event struct: members after `struct rb_header h`,
    the C statements that fill them, how each is decoded, and the size of
    its members (after the header) before the padding that makes it
    unique.  The header's size is the C's to know (RBTP_HDR)."""
    members: list
    fill: list
    specs: dict
    size: int


def layout(fmt: TpFormat, string_bytes: int) -> Layout:
    members, fill, specs, used = [], [], {}, set()
    bulk = [f for f in fmt.fields if f.kind != "skip"]
    # The fixed part: the record's bytes from its first field to the end
    # of its last, copied at once into members at the same relative
    # offsets.  A field overlapping an earlier one (none in 6.18's
    # formats) is read on its own afterwards.
    base = bulk[0].offset if bulk else 0
    pos, extra, dynamic, gaps = base, [], [], []

    def member_name(prefix, f):
        n = prefix + _ident(f.name)
        while n in used:
            n += "_"
        used.add(n)
        return n

    def add_field(f, note=""):
        cname = member_name("f_", f)
        comment = f"{f.type} {f.name}{note}"
        if f.kind == "int" and f.type in ("bool", "_Bool") and f.size == 1:
            members.append(Member(cname, "bool", 0, comment))    # JSON true/false
        elif f.kind in ("int", "pointer"):
            members.append(Member(cname, _C_INT[f.elem], 0, comment))
        elif f.kind == "chars":
            members.append(Member(cname, "char", f.count, comment))
        elif f.kind == "array":
            members.append(Member(cname, _C_INT[f.elem], f.count, comment))
        elif f.kind in ("string", "dynarray"):
            members.append(Member(cname, "u32", 0, comment))     # the raw loc word
        else:
            members.append(Member(cname, "u8", f.size, comment))  # bytes
        kind = {"int": "int", "pointer": "hex", "chars": "text", "array": "array",
                "string": "hidden", "dynarray": "hidden"}.get(f.kind, "bytes")
        specs[cname] = FieldSpec(kind, f.name, f.cast if f.kind == "int" else None)
        return cname

    for f in bulk:
        if f.offset < pos:
            extra.append(f)
            continue
        if f.offset > pos:
            gap = f"__pad_{pos}"
            members.append(Member(gap, "u8", f.offset - pos))
            gaps.append(gap)
        cname = add_field(f)
        if f.kind in ("string", "dynarray"):
            dynamic.append((f, f"(char *)e + RBTP_HDR + {f.offset - base}"))
        pos = f.offset + f.size
    fixed = pos - base
    if fixed:
        fill.append(f"bpf_probe_read_kernel((char *)e + RBTP_HDR, {fixed}, "
                    f"(char *)ctx + {base});")
    # Padding holds whatever the buffers held before: zeroed, so that equal
    # events have equal bytes (the decoder caches by them).
    for gap in gaps:
        fill.append(f"__builtin_memset(e->{gap}, 0, sizeof(e->{gap}));")
    for f in extra:
        cname = add_field(f, " (overlaps another field)")
        fill.append(f"bpf_probe_read_kernel(&e->{cname}, {f.size}, (char *)ctx + {f.offset});")
        if f.kind in ("string", "dynarray"):
            dynamic.append((f, f"&e->{cname}"))
    # __data_loc / __rel_loc: the loc word is offset | length << 16, the
    # length counting a string's NUL; __rel_loc offsets start after the word.
    for f, loc_at in dynamic:
        n_name = member_name("n_", f)
        d_name = member_name("s_" if f.kind == "string" else "d_", f)
        members.append(Member(n_name, "u16"))
        start = "(loc & 0xffff)" if not f.rel else f"{f.offset + 4} + (loc & 0xffff)"
        read_loc = f"u32 loc = 0; __builtin_memcpy(&loc, {loc_at}, 4);"
        if f.kind == "string":
            members.append(Member(d_name, "char", string_bytes))
            specs[d_name] = FieldSpec("text", f.name, full_length=n_name)
            fill.append(f"{{ {read_loc} e->{n_name} = loc >> 16; "
                        f"bpf_probe_read_kernel_str(e->{d_name}, {string_bytes}, "
                        f"(char *)ctx + {start}); }}")
        else:
            each = f.elem[0]
            room = max(each, string_bytes - string_bytes % each)
            members.append(Member(d_name, _C_INT[f.elem], room // each))
            specs[d_name] = FieldSpec("array", f.name, full_length=n_name)
            fill.append(f"{{ {read_loc} u32 n = loc >> 16; e->{n_name} = n; "
                        f"if (n > {room}) n = {room}; "
                        f"bpf_probe_read_kernel(e->{d_name}, n, (char *)ctx + {start}); }}")
    return Layout(members, fill, specs, sum(m.size for m in members))


def unique_sizes(natural: list) -> list:
    """Sizes >= each natural size, all different, as small as can be."""
    order = sorted(range(len(natural)), key=lambda i: natural[i])
    out, last = [0] * len(natural), 0
    for i in order:
        out[i] = last = max(natural[i], last + 1)
    return out


def generate(formats, string_bytes=DEFAULT_STRING_BYTES) -> Generated:
    """The BCC C source tracing these tracepoints, with the decoding
    specs of its event structs and the programs to attach."""
    layouts = [layout(f, string_bytes) for f in formats]
    sizes = unique_sizes([lay.size for lay in layouts])
    parts = [
        "/* Generated by rbtrace tp (rbtrace/kinds/tp.py) from the tracepoints'",
        " * format files; one event struct and one program per tracepoint.",
        " * Fields are copied by their offsets in the raw record (see tp.py). */",
        '#include "common.h"',
        "",
        "/* Sizes and offsets below count from the end of the header. */",
        "#define RBTP_HDR sizeof(struct rb_header)",
        "",
        "/* Set by user space before detaching (rbtrace/bpf.py _stop_programs):",
        " * closing hundreds of tracepoints takes seconds, and nothing may be",
        " * submitted or counted meanwhile. */",
        "BPF_ARRAY(rbtrace_stop, u32, 1);",
        "",
        "static __always_inline int rbtp_stopped(void)",
        "{",
        "    int zero = 0;",
        "    u32 *stop = rbtrace_stop.lookup(&zero);",
        "    return stop && *stop;",
        "}",
        "",
    ]
    events, tps = {}, []
    for i, (fmt, lay, size) in enumerate(zip(formats, layouts, sizes)):
        struct, fn = f"rbtp_event_{i}", f"rbtp_{i}"
        members = [m.c() for m in lay.members]
        pad = [f"u8 __pad_size[{size - lay.size}];"] if size > lay.size else []
        zero_pad = ("\n    __builtin_memset(e->__pad_size, 0, sizeof(e->__pad_size));"
                    if pad else "")
        body = "\n".join(f"    {m}" for m in ["struct rb_header h;", *members, *pad])
        fills = "\n".join(f"    {ln}" for ln in lay.fill)
        parts.append(f"""/* {_c_comment(fmt.name)} */
struct {struct} {{
{body}
}} __attribute__((packed));
RBTRACE_EVENT({struct});
_Static_assert(sizeof(struct {struct}) == RBTP_HDR + {size}, "size of {struct}");

int {fn}(void *ctx)
{{
    if (rbtp_stopped())
        return 0;
    if (!current_wanted())
        return 0;
    u64 seq = next_seq();
    struct {struct} *e = reserve_event(sizeof(struct {struct}), seq);
    if (!e)
        return 0;
{fills}{zero_pad}
    submit_event(e);
    return 0;
}}
""")
        events[struct] = EventSpec(fmt.name, lay.specs)
        tps.append((fn, fmt.name))
    return Generated("\n".join(parts), events, tps)


# --- the probe --------------------------------------------------------------------

def raise_fd_limit(needed: int):
    """Each tracepoint costs a program, a layout map and a perf event fd:
    raise the soft limit on open files toward the hard one if need be."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


class TpCodec(GenericCodec):
    """Options: `tracepoints` (CATEGORY:EVENT names or patterns; absent:
    a codec with no events, for inspection), `max_tracepoints`,
    `string_bytes`."""
    tracepoints = ()        # (program, "category:event"): LoadedProbe attaches them

    def __init__(self, options, spec=None, root=None):
        super().__init__(options, spec)
        self._tmp = None
        self._generated = None
        self.formats = []
        if options.get("tracepoints") is None:
            return
        if options.get("failed"):
            raise UsageError("--failed: a tracepoint has no result to test; for sys_exit_* "
                             "select on .args.ret with jq")
        cap = options.get("max_tracepoints") or DEFAULT_MAX_TRACEPOINTS
        names = resolve(options["tracepoints"], cap, root)
        self.formats = [read_format(n, root) for n in names]
        self._generated = generate(self.formats,
                                   options.get("string_bytes") or DEFAULT_STRING_BYTES)
        self.events = self._generated.events
        self.event_structs = tuple(self.events)
        self.tracepoints = list(self._generated.tracepoints)
        raise_fd_limit(3 * len(self.tracepoints) + 256)

    def source_path(self):
        """The generated source, written once to a temporary directory that
        lives as long as the codec (the compiler's messages name it)."""
        if self._generated is None:
            raise UsageError("no tracepoint given: rbtrace tp CATEGORY:EVENT...")
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rbtrace-tp-")
            with open(os.path.join(self._tmp.name, "tp.bpf.c"), "w") as f:
                f.write(self._generated.source)
        return Path(self._tmp.name) / "tp.bpf.c"


def list_only(opts):
    """--list: print the tracepoints (those matching the arguments, if any)
    and end the command there, before anything is compiled."""
    if not opts.get("list_only"):
        return None
    names = []
    for pattern in opts.get("tracepoints") or (None,):
        found = list_matching(pattern)
        if not found:
            raise UsageError(f"no tracepoint matches '{for_message(pattern)}'")
        names.extend(n for n in found if n not in names)
    sys.stdout.write("".join(n + "\n" for n in names))
    sys.stdout.flush()
    return 0


SPEC = Spec(
    name="tp",
    # The man page's words (rbtrace/mandoc.py): this kind's own, in place
    # of the common ones.
    man={
        # rbtrace(8), COMMANDS
        "command": ("Any kernel tracepoint, or many at once with wildcards, every field of its format "
                    "decoded (integers, strings, pointers as hexadecimal)."),
        "list_only": "Print the tracepoints that exist on this kernel, sorted, one "
                     "*CATEGORY*:*EVENT* per line, and exit 0. With arguments, only those "
                     "matching one of them: a *PATTERN* with a colon matches as a "
                     "*CATEGORY*:*EVENT* wildcard, one without matches anywhere in the name "
                     "(**--list fork** lists **sched:sched_process_fork** and the fork system "
                     "calls). A pattern that matches nothing is a usage error.",
        "max_tracepoints": "Attach at most *N* tracepoints (1 to 2000, default **400**); more "
                           "matching the arguments is a usage error that says how many "
                           "matched. Each tracepoint is one BPF program, compiled (or taken "
                           "from the compile cache) and verified at start, and detached at the"
                           " end, and detaching one takes the kernel tens of milliseconds (see"
                           " **OVERHEAD**): the default takes **syscalls:sys_enter_\\*** (360 "
                           "tracepoints on 6.18) or **syscalls:sys_exit_\\*** and refuses all of"
                           " **syscalls:\\*** (720).",
        "string_bytes": "Bytes kept of each **__data_loc** string, NUL included, and of each "
                        "**__data_loc** array (16 to 4096, default **256**). Every record of "
                        "such a tracepoint has room for that many bytes per string, used or "
                        "not.",
        "pid": "Only this process (thread group id, 1 to 4194304), all its threads, as the "
               "task that hits the tracepoint. Checked in the kernel.",
        "uid": "Only this user, a name or a number: the real user id of the task that hits the"
               " tracepoint. Checked in the kernel.",
        "comm": "Only tasks whose command name is exactly *COMM* (1 to 15 bytes). Checked in "
                "the kernel.",
        "column.PID": "The process (thread group id) of the task that hit the tracepoint.",
        "column.COMM": "That task's command name.",
        "column.EVENT": "The tracepoint, *CATEGORY*:*EVENT*.",
        "column.ARGS": "The tracepoint's fields as *name***=***value* pairs in the format's "
                       "order: text in double quotes, followed by **…** when it was truncated,"
                       " lists in brackets. Fields whose name starts with **__** (the system "
                       "calls' **__syscall_nr**) are left to the JSON output.",
        "event.seq": "The event's sequence number: from 0 for each run, one per event the "
                     "probe tried to write, shared by all CPUs and tracepoints. A gap in the "
                     "numbers is an event dropped because the ring was full (see "
                     "**rbtrace**(8), LOSS ACCOUNTING).",
        "event.time": "Wall-clock time of the event, decoded from **ts_ns**: ISO 8601 in UTC "
                      "with nanoseconds, as in “**2026-11-24T07:23:04.247907736Z**”.",
        "event.pid": "The process (thread group id) of the task that hit the tracepoint, which"
                     " is not always the one the event is about: the parent for "
                     "**sched:sched_process_fork**, the task switched out for "
                     "**sched:sched_switch**.",
        "event.tid": "That task's thread id.",
        "event.ppid": "That process's parent (its thread group id), at the time of the event.",
        "event.uid": "Raw real user id of that task (in the initial user namespace).",
        "event.comm": "That task's command name (at most 15 bytes).",
        "event.event": "The tracepoint, “**sched:sched_process_fork**”.",
        "event.args": "An object with the tracepoint's own fields, named as in its format "
                      "file, in the format's order (see **args members**). They are kept apart"
                      " from the members above because many tracepoints have a **pid** or a "
                      "**comm** of their own, which need not be the task's.",
        "start.filters": "The filters in effect, as text (**pid=1234 uid=0**), or an empty "
                         "string.",
        "lost.map_full": "Always 0 here: the programs of **rbtrace tp** keep no state between "
                         "events.",
        "summary.seen": "Events the probes saw and tried to write: **submitted** + "
                        "**dropped**.",
        "summary.map_full": "Always 0 here (see the **lost** lines).",
        "summary.duration_s": "Seconds from the start line to the end, to the millisecond, the"
                              " time taken to detach the tracepoints included.",
        "summary.top_errors": "Always empty here: tracepoint fields are not interpreted as "
                              "errors.",
    },
    summary="trace any kernel tracepoint, every field decoded",
    help="""Any tracepoint, every field decoded from its format.

    CATEGORY:EVENT names a tracepoint (sched:sched_process_fork); either
    part may be a wildcard ('syscalls:sys_enter_*').  JSON lines have the
    common fields (time, pid, tid, ppid, uid, user, comm), "event" (the
    tracepoint) and "args", the tracepoint's own fields: integers as
    numbers, pointers as "0x..." strings, char arrays and __data_loc
    strings as text, other arrays as lists.
    """,
    codec=TpCodec,
    source=None,                # generated (TpCodec.source_path)
    ring="8M",
    # A tracepoint has no result to select on: -x is hidden, and refused
    # with the reason (TpCodec).
    failed=None,
    tally=(("commands", "comm"),),
    before=list_only,
    arguments=(Argument("tracepoints", "CATEGORY:EVENT...", nargs=-1, colon_words=True),),
    options=(
        Option(("--list",), "list_only", is_flag=True,
               help="Print the tracepoints that exist (those matching the arguments, "
                    "if any), one per line, and exit."),
        Option(("--max-tracepoints",), "max_tracepoints",
               type=click.IntRange(1, LIMIT_MAX_TRACEPOINTS), default=DEFAULT_MAX_TRACEPOINTS,
               show_default=True, metavar="N",
               help=f"Refuse to attach more than N tracepoints at once, "
                    f"1 to {LIMIT_MAX_TRACEPOINTS}."),
        Option(("--string-bytes",), "string_bytes",
               type=click.IntRange(MIN_STRING_BYTES, LIMIT_STRING_BYTES),
               default=DEFAULT_STRING_BYTES, show_default=True, metavar="N",
               help=f"Bytes kept of each __data_loc string or array, "
                    f"{MIN_STRING_BYTES} to {LIMIT_STRING_BYTES}."),
    ),
    fields=FIELDS,
    columns=COLUMNS,
)
