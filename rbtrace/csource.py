"""C source text, read and rewritten as text: what rbtrace does to a probe's
source before BCC compiles it, and what it looks for in it.

No compiler here: regular expressions over the source with comments and
literals blanked (code_only), which is enough for the few constructs
rbtrace needs to find (its own #include "x.h", TRACEPOINT_PROBE, the hook
macros BCC attaches by).
"""
import os
import re

_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$')


_TRACEPOINT_HEAD = re.compile(r"^(\s*TRACEPOINT_PROBE\s*\(\s*\w+\s*,\s*\w+\s*\))(.*)$")


def inline_local_includes(path, search=(), _seen=None) -> str:
    """The probe's source with its `#include "x.h"` files pasted in.

    BCC rewrites map calls (`stats.lookup(...)`) only in the main file, so
    helpers in common.h that touch maps must become part of it.  `#line`
    markers keep compiler messages pointing at the real files and lines.
    BCC inserts text of its own between the lines (each tracepoint's
    argument struct, for one), so every line gets its marker; only lines
    continuing a macro (after a backslash) can't have one.
    """
    path = os.path.abspath(path)
    _seen = set() if _seen is None else _seen
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().split("\n")
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(lines, 1):
        m = _LOCAL_INCLUDE.match(line)
        candidate = None
        if m:
            for d in (os.path.dirname(path), *map(str, search)):
                if os.path.isfile(os.path.join(d, m.group(1))):
                    candidate = os.path.abspath(os.path.join(d, m.group(1)))
                    break
        if candidate is None:
            continued = number > 1 and lines[number - 2].endswith("\\")
            if number > 1 and not continued:
                out.append(f'#line {number} "{path}"')
            tp = None if continued else _TRACEPOINT_HEAD.match(line)
            if tp and tp.group(2).strip():
                # BCC inserts the tracepoint's argument struct (several
                # lines) just before TRACEPOINT_PROBE: code after it on the
                # same line would be reported that many lines further on.
                # It goes on a line of its own, at the same column.
                out += [tp.group(1), f'#line {number} "{path}"',
                        " " * len(tp.group(1)) + tp.group(2)]
                continue
            out.append(line)
            continue
        if candidate not in _seen:      # not ours: left to the compiler
            _seen.add(candidate)
            out.append(inline_local_includes(candidate, search, _seen))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out)


_C_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def code_only(text: str) -> str:
    """C source with comments blanked and string and character literals
    emptied (their quotes kept), newlines kept: for looking for code with
    regular expressions without being fooled by prose, on the same lines.
    An `#include "x.h"` keeps its file name."""
    def blank(m):
        s = m.group(0)
        if s.startswith("/"):
            return " " if s.startswith("//") or "\n" not in s else "\n" * s.count("\n")
        if text.rfind("#", 0, m.start()) > text.rfind("\n", 0, m.start()) and s[0] == '"':
            return s                 # a preprocessor line's "file name"
        return s[0] + " " * (len(s) - 2) + s[-1]
    return _C_TOKENS.sub(blank, text)


_TRACEPOINT_USE = re.compile(r"^\s*TRACEPOINT_PROBE\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.M)
_LINE_MARKER = re.compile(r'^(#line \d+ )"([^"]*/)?([^"/]*)"$', re.M)


def tracepoints_used(text: str) -> list:
    """(category, event) of every TRACEPOINT_PROBE in the source."""
    return _TRACEPOINT_USE.findall(code_only(text))


def without_dirs(text: str) -> str:
    """The source with its #line markers' paths cut to file names: where
    the files were read from doesn't change what they compile to."""
    return _LINE_MARKER.sub(r'\1"\3"', text)


# Hook kinds a BCC source can use besides tracepoints, by how BCC spells them
# (its helpers.h macros, and the function name prefixes it attaches by).
_HOOK_USE = {
    "kprobe": re.compile(r"\b(kprobe__|kretprobe__)\w+\s*\("),
    "fentry": re.compile(r"\b(KFUNC_PROBE|KRETFUNC_PROBE|KMOD_RET)\s*\(|\bk(ret)?func__\w+\s*\("),
}


def hook_kinds_used(text: str) -> list:
    """The hook kinds besides tracepoints ("kprobe", "fentry") the source
    uses, by how BCC spells them."""
    code = code_only(text)
    return [kind for kind, pattern in _HOOK_USE.items() if pattern.search(code)]


def defines(flags) -> str:
    """-D flags as #define lines for the top of the source.  Given as -D,
    they would be defined before the kernel's types are read, and a name
    the kernel has too (FILTER_COMM, once an option, is one of its
    enumerators) would break its declaration."""
    out = []
    for flag in flags:
        name, _, value = flag[2:].partition("=")
        out.append(f"#define {name} {value if value else 1}\n")
    return "".join(out)
