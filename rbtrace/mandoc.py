"""The generated parts of the man pages, and the shipped JSON schema.

`make man` (python -m rbtrace.mandoc) rewrites, in each page of a kind
declared by a spec (rbtrace/spec.py), the regions between

    .\\" BEGIN GENERATED: <NAME> (make man)
    .\\" END GENERATED

from the spec: OPTIONS (the option entries), COLUMNS (the table's
columns), EVENT (the members of the kind's event lines), START, LOST and
SUMMARY (the members of the run's own lines).  Headings and the prose
around the regions (DESCRIPTION, EXAMPLES, OVERHEAD...) stay written by
hand.  It also writes schema/rbtrace-events.schema.json, the JSON schema
`rbtrace schema` prints.  tests/unit/test_docs.py fails when a region or
the schema file is not what this module makes now.

Man texts in specs use a small markup: **bold**, *italic*, \\* for a
literal asterisk and \\\\ for a backslash (a lone one is kept), “quotes”;
each sentence goes on a source line of its own; "-" that starts a
word (an option) and every "-" in bold or italic become "\\-".  The roff
made is the subset tests/unit/test_docs.py's Page reads.

Not imported when tracing, nor by `rbtrace schema` (which prints
spec.schema_json): only by `make man` and the tests.
"""
from __future__ import annotations

import os
import re
import sys
import textwrap

from rbtrace import spec as specs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN_DIR = os.path.join(REPO, "man")
SCHEMA_FILE = os.path.join(REPO, "schema", "rbtrace-events.schema.json")

BEGIN = '.\\" BEGIN GENERATED: {} (make man)'
END = '.\\" END GENERATED'
_BEGIN_RE = re.compile(r'^\.\\" BEGIN GENERATED: ([A-Z]+) \(make man\)$')

WIDTH = 78


# --- the markup -----------------------------------------------------------------

_SPAN = re.compile(r"\*\*(.+?)\*\*|\*(.+?)\*")
_QUOTES = {"\u201c": "\\(lq", "\u201d": "\\(rq", "\u2014": "\\(em", "\u2013": "\\(en"}


def _escape(text: str, code: bool) -> str:
    text = text.replace("\\", "\\e")
    if code:
        text = text.replace("-", "\\-")
    else:
        text = re.sub(r"(?<![\w])-", "\\-", text)
        text = re.sub(r"(?<=\\-)-", "\\-", text)
    for ch, esc in _QUOTES.items():
        text = text.replace(ch, esc)
    if any(ord(c) > 127 for c in text):
        text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return text


_STAR, _BACKSLASH = "\x00", "\x01"   # markup \* and \\ while the rest is escaped


def _literals(text: str) -> str:
    """Markup escapes, left to right: \\* an asterisk, \\\\ a backslash."""
    return re.sub(r"\\([*\\])", lambda m: _STAR if m.group(1) == "*" else _BACKSLASH, text)


def inline(text: str) -> str:
    """One line's worth of markup as roff text (no line breaks)."""
    text = _literals(text)
    out, pos = [], 0
    for m in _SPAN.finditer(text):
        out.append(_escape(text[pos:m.start()], False))
        if m.group(1) is not None:
            out.append("\\fB" + _escape(m.group(1), True) + "\\fR")
        else:
            out.append("\\fI" + _escape(m.group(2), True) + "\\fR")
        pos = m.end()
    out.append(_escape(text[pos:], False))
    return "".join(out).replace(_STAR, "*").replace(_BACKSLASH, "\\e")


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(“*])")


def paragraph(text: str) -> list:
    """Source lines of a paragraph of markup: a sentence per line, long
    ones wrapped; no line starts with a control character."""
    lines = []
    for sentence in _SENTENCE.split(" ".join(text.split())):
        roff = inline(sentence)
        # Wrap on blanks outside font escapes' arguments: any blank will do
        # in roff, which fills the lines again.
        for ln in textwrap.wrap(roff, WIDTH, break_long_words=False, break_on_hyphens=False):
            if ln[:1] in (".", "'"):
                ln = "\\&" + ln
            lines.append(ln)
    return lines


def _capital(doc: str) -> str:
    doc = doc.strip()
    if not doc:
        return doc
    doc = doc[0].upper() + doc[1:]
    return doc if doc.endswith(".") else doc + "."


# --- the entries ------------------------------------------------------------------

def _tag(flags, metavar, is_flag) -> str:
    flags = [f.replace("-", "\\-") for f in flags]
    if len(flags) == 1:
        if is_flag or not metavar:
            return f".B {flags[0]}"
        return f'.BI {flags[0]} " {metavar}"'
    head = f'.BR {flags[0]} ", " {flags[1]}'
    return head if is_flag or not metavar else head + f' " \\fI{metavar}\\fR"'


def _entry(tag: str, text: str) -> list:
    return [".TP", tag] + paragraph(text)


def _substitute(text: str, spec) -> str:
    from rbtrace.cli import filters_text
    from rbtrace.render import JSON_FORMAT_VERSION
    if "{filters}" in text:
        example = {"comm": "make", "failed": True} if spec.failed else {"pid": 1234,
                                                                          "comm": "make"}
        text = text.replace("{filters}", filters_text(spec, example, None))
    return text.replace("{version}", str(JSON_FORMAT_VERSION)).replace("{kind}", spec.name)


def options(spec) -> list:
    """The OPTIONS entries: the arguments that have a text, the common
    options (rbtrace.cli) with the kind's own among them, then -h."""
    from rbtrace.cli import common_options
    # A kind's own process filters (rank < 5: open's --tid) go with the
    # common ones, after --pid --children; its other options after -x.
    ordered = []
    for o in common_options(spec):
        ordered.append(o)
        if o.name == "children":
            ordered += [k for k in spec.options if k.rank < 5]
        if o.name == "failed":
            ordered += [k for k in spec.options if k.rank >= 5]
    out = []
    for a in spec.arguments:            # an entry when it has a text: run's FILE.bpf.c
        text = spec.man.get(f"argument.{a.name}") or a.man
        if text:
            out += _entry(f".I {a.metavar}", _substitute(text, spec))
    for o in ordered:
        if o.hidden:
            continue
        if o.name == "failed":
            text = spec.failed or ""
        else:
            text = o.man or o.help
        if o.name in spec.man:
            text = spec.man[o.name]
        if o.name in spec.notes:
            text += " " + spec.notes[o.name]
        if o.show_default and o.default is not None and not o.is_flag \
                and "default" not in text.lower():
            text += f" Default **{o.default}**."
        # click's own choice when the option names none: the type's name.
        metavar = o.metavar or getattr(o.type, "name", "").upper()
        out += _entry(_tag(o.flags, metavar, o.is_flag), _substitute(text, spec))
    out += _entry(_tag(("-h", "--help"), None, True), "Print the options and exit.")
    return out


def columns(spec) -> list:
    out = []
    for c in spec.columns:
        text = spec.man.get(f"column.{c.header}") or c.man or _capital(c.doc)
        out += _entry(f".B {c.header}", _substitute(text, spec))
    return out


def _members(fields, line, spec, consts) -> list:
    out = []
    for f in fields:
        key = f"{line}.{f.name}"
        if key in spec.man:
            text = spec.man[key]
        elif f.name in consts:
            text = consts[f.name]
        else:
            text = f.man or _capital(f.doc)
        out += _entry(f".B {f.name}", _substitute(text, spec))
        if f.kind in ("text", "texts"):
            b64 = f"{f.name}_b64"
            text = spec.man.get(f"{line}.{b64}") or (
                specs.B64_MAN if f.kind == "text" else specs.B64_LIST_MAN).format(name=f.name)
            if line == "event" and f.name == "comm" and f"{line}.{b64}" not in spec.man:
                text += specs.B64_RULE           # the first _b64 of a page: the rule
            out += _entry(f".B {b64}", _substitute(text, spec))
    return out


def event(spec) -> list:
    return _members(specs.HEADER + spec.fields, "event", spec,
                    {"type": f'Always **"{spec.name}"**.'})


def regions(spec) -> dict:
    """{region name: roff lines} of a kind's page."""
    kind = f'**"{spec.name}"**.'
    return {"OPTIONS": options(spec), "COLUMNS": columns(spec), "EVENT": event(spec),
            "START": _members(specs.START, "start", spec, {"type": '**"start"**.',
                                                           "probe": kind}),
            "LOST": _members(specs.LOST, "lost", spec, {"type": '**"lost"**.'}),
            "SUMMARY": _members(specs.SUMMARY, "summary", spec, {"type": '**"summary"**.',
                                                                 "probe": kind})}


def kinds() -> list:
    """rbtrace(8)'s COMMANDS entries of the kinds: each one's
    man["command"] text (else its summary), then its page."""
    lines = []
    for spec in specs.declared():
        text = spec.man.get("command") or _capital(spec.summary)
        lines += _entry(f".B {spec.name}", text)
        lines += ["See", f".BR rbtrace\\-{spec.name} (8)."]
    return lines


MAIN_PAGE = os.path.join(MAN_DIR, "rbtrace.8")


def show_options() -> list:
    """rbtrace-show(8)'s OPTIONS entries: FILE, then rbtrace/show.py's
    options, then -h."""
    from rbtrace import show
    out = _entry(".I FILE", "The recording: JSON lines written by a tracing command with "
                            "**--json**, or **-** for standard input.")
    for o in show.options():
        metavar = o.metavar or getattr(o.type, "name", "").upper()
        out += _entry(_tag(o.flags, metavar, o.is_flag), o.man or o.help)
    out += _entry(_tag(("-h", "--help"), None, True), "Print the options and exit.")
    return out


def show_page_now() -> tuple:
    """(path, text on disk, text as made now) of rbtrace-show(8)."""
    path = page_path("show")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return path, text, rewrite(text, {"OPTIONS": show_options()}, "rbtrace-show.8")


def main_page_now() -> tuple:
    """(path, text on disk, text as made now) of rbtrace(8)."""
    with open(MAIN_PAGE, encoding="utf-8") as f:
        text = f.read()
    return MAIN_PAGE, text, rewrite(text, {"KINDS": kinds()}, "rbtrace.8")


# Every region a spec'd kind's page has (COLUMNS when it has columns).
REQUIRED = ("OPTIONS", "EVENT", "START", "LOST", "SUMMARY")


def rewrite(text: str, made: dict, page="page") -> str:
    """`text` with each region's lines replaced by made[name]."""
    out, inside = [], None
    for ln in text.splitlines():
        m = _BEGIN_RE.match(ln)
        if inside is not None:
            if ln == END:
                out.extend(made[inside])
                out.append(ln)
                inside = None
            elif m:
                raise ValueError(f"{page}: region {inside} is not ended before {m.group(1)}")
            continue
        if m:
            if m.group(1) not in made:
                raise ValueError(f"{page}: unknown region {m.group(1)} "
                                 f"(known: {', '.join(made)})")
            inside = m.group(1)
        elif ln == END:
            raise ValueError(f"{page}: {END} without a BEGIN")
        out.append(ln)
    if inside is not None:
        raise ValueError(f"{page}: region {inside} is not ended")
    return "\n".join(out) + "\n"


def region_names(text: str) -> list:
    return [m.group(1) for m in map(_BEGIN_RE.match, text.splitlines()) if m]


def page_path(kind: str) -> str:
    return os.path.join(MAN_DIR, f"rbtrace-{kind}.8")


def page_now(spec) -> tuple:
    """(path, text on disk, text as made now) of a kind's page."""
    path = page_path(spec.name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return path, text, rewrite(text, regions(spec), os.path.basename(path))


def schema_text() -> str:
    """The shipped schema: every kind declared by a spec."""
    return specs.schema_json(specs.declared())


def add_markers(text: str, kind: str) -> str:
    """A hand-written page with markers put around its entries (the .TP
    paragraphs of OPTIONS before its first subsection, of Columns, of
    "<kind> lines", start, lost and summary lines), once, when a kind gets
    a spec: `python -m rbtrace.mandoc --add-markers KIND`, then `make man`."""
    lines = text.splitlines()
    heads = {"OPTIONS": ".SH OPTIONS", "COLUMNS": '.SS "Columns"',
             "EVENT": f'.SS "{kind} lines"', "START": '.SS "start lines"',
             "LOST": '.SS "lost lines"', "SUMMARY": '.SS "summary lines"'}
    spans = []
    for name, head in heads.items():
        if head not in lines:
            continue
        i = lines.index(head) + 1
        while i < len(lines) and lines[i] != ".TP":
            i += 1
        j = i
        while j < len(lines) and not lines[j].startswith((".SS", ".SH")):
            j += 1
        if i < j:
            spans.append((i, j, name))
    for i, j, name in sorted(spans, reverse=True):
        lines[i:j] = [BEGIN.format(name)] + lines[i:j] + [END]
    return "\n".join(lines) + "\n"


def main():
    """0, or a message for sys.exit (which writes it on stderr, status 1):
    a make tool, not the tracer, so it does not go through rbtrace.notice."""
    if sys.argv[1:2] == ["--add-markers"]:
        for kind in sys.argv[2:]:
            path = page_path(kind)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if region_names(text):
                return f"{path} has markers already"
            with open(path, "w", encoding="utf-8") as f:
                f.write(add_markers(text, kind))
        return 0
    changed = []
    path, text, made = main_page_now()
    if "KINDS" not in region_names(text):
        return f"{path}: no region KINDS in its COMMANDS"
    if made != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(made)
        changed.append(path)
    path, text, made = show_page_now()
    if "OPTIONS" not in region_names(text):
        return f"{path}: no region OPTIONS"
    if made != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(made)
        changed.append(path)
    for spec in specs.declared():
        path, text, made = page_now(spec)
        missing = [r for r in REQUIRED + (("COLUMNS",) if spec.columns else ())
                   if r not in region_names(text)]
        if missing:
            return (f"{path}: no region {', '.join(missing)}: add its BEGIN/END markers "
                    f"(python -m rbtrace.mandoc --add-markers {spec.name})")
        if made != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(made)
            changed.append(path)
    schema = schema_text()
    os.makedirs(os.path.dirname(SCHEMA_FILE), exist_ok=True)
    try:
        with open(SCHEMA_FILE, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        old = None
    if old != schema:
        with open(SCHEMA_FILE, "w", encoding="utf-8") as f:
            f.write(schema)
        changed.append(SCHEMA_FILE)
    sys.stdout.write("".join(f"rewrote {os.path.relpath(p, REPO)}\n" for p in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
