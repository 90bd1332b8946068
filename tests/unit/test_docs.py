"""The man pages agree with the code.  No root needed.

What is compared, and where the code side comes from:

* commands: the click group (`rbtrace --help`); each has man/rbtrace-<cmd>.8;
* options: each click command's params, long and short names, must be the
  tags of its page's OPTIONS section, with their defaults and limits;
* columns: each probe's `columns` (the table and plain lines);
* JSON fields of a probe's event lines: the probe module's JSON_FIELDS if it
  has one, else read off the module's source with `ast` (decoder_fields):
  the keys of event dicts (dict displays with a "type" key, followed through
  copies and helpers that return them), every e["key"] = ..., and every
  put_text(e, "key") / put_text_list(e, "key"), which may add "key_b64".  A
  key the reader cannot see (computed, or added by a function the event is
  handed to) fails the test and asks for JSON_FIELDS.  The kernel test
  also decodes synthetic records built from the probes' real layouts;
* start / lost / summary lines: the engine itself, run on fakes
  (Session._summary, Session._report_lost), and the start dict in
  Session.run;
* doctor's checks: run_checks with every probe of the machine faked;
* environment variables: every "RBTRACE_*" string in the package;
* exit codes: rbtrace.errors.Exit.

The man pages use a small subset of roff; `Page` below reads it and
refuses escapes it does not know, so the pages stay in that subset.
Examples in EXAMPLES are `.EX` lines starting with "rbtrace "; the ones
piped to jq are run for real by tests/kernel/test_man_examples.py.
"""
import ast
import configparser
import glob
import inspect
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import click
import pytest

from rbtrace import __version__
from rbtrace.cli import cli
from rbtrace.errors import Exit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAN_DIR = os.path.join(REPO, "man")

# execsnoop-bpfcc / opensnoop-bpfcc options a user will reach for: each is
# either an option of the probe command or explained in its page.
SNOOP_OPTIONS = ("-p", "-u", "-n", "-x", "-T")
SEE_ALSO_PROBE = ("execsnoop-bpfcc(8)", "opensnoop-bpfcc(8)", "bpftrace(8)", "strace(1)", "jq(1)")
SECTIONS_ALL = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES", "EXIT STATUS", "SEE ALSO")
SECTIONS_PROBE = SECTIONS_ALL + ("FIELDS", "OVERHEAD")
SECTIONS_MAIN = SECTIONS_ALL + ("COMMANDS", "OUTPUT", "JSON OUTPUT", "LOSS ACCOUNTING",
                                "ENVIRONMENT", "FILES", "OVERHEAD", "SHELL COMPLETION")
SECTIONS_DOCTOR = SECTIONS_ALL + ("CHECKS",)


# --- reading the roff subset ------------------------------------------------

_SPECIAL = {"aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d", "bu": "\u2022",
            "em": "\u2014", "en": "\u2013", "->": "\u2192", ">=": "\u2265"}
_ESCAPE = re.compile(r"\\(\((..)|\[([^\]]*)\]|f(\(..|\[[^\]]*\]|.)|(.))")
_FONT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB"}
_BREAKS = {"TP", "SS", "SH", "PP", "P", "LP", "IP"}


def _escape(m):
    special, named, font, single = m.group(2), m.group(3), m.group(4), m.group(5)
    if special is not None:
        if special not in _SPECIAL:
            raise ValueError(f"unknown roff special character \\({special}")
        return _SPECIAL[special]
    if named is not None:
        if re.fullmatch(r"u[0-9A-F]{4,5}", named):
            return chr(int(named[1:], 16))
        raise ValueError(f"unknown roff escape \\[{named}]")
    if font is not None:
        return ""
    if single in ("e", "\\"):
        return "\\"
    if single == "-":
        return "-"
    if single in ("&", "c", "|", "^"):
        return ""
    if single == " ":
        return " "
    raise ValueError(f"unknown roff escape \\{single}")


def unroff(text: str) -> str:
    """Plain text of roff text: escapes resolved, fonts dropped."""
    return _ESCAPE.sub(_escape, text)


def macro_args(rest: str) -> list:
    """Arguments of a macro line: blanks separate, double quotes group."""
    args, i, n = [], 0, len(rest)
    while i < n:
        if rest[i] in " \t":
            i += 1
            continue
        if rest[i] == '"':
            i += 1
            buf = []
            while i < n:
                if rest[i] == '"':
                    if i + 1 < n and rest[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(rest[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and rest[j] not in " \t":
                j += 1
            args.append(rest[i:j])
            i = j
    return args


def line_text(line: str) -> str:
    """The text a source line contributes (font macros kept, others dropped)."""
    if line[:1] in (".", "'"):
        name, _, rest = line[1:].strip().partition(" ")
        if name not in _FONT_MACROS:
            return ""
        args = macro_args(rest)
        sep = " " if name in ("B", "I", "SM", "SB") else ""
        return unroff(sep.join(args))
    return unroff(line)


class Entry:
    def __init__(self, tag, body):
        self.tag = tag          # plain text of the tag line
        self.body = body        # plain text of the paragraph below it

    @property
    def words(self):
        return [w for w in re.split(r"[,\s]+", self.tag) if w]

    def options(self):
        return re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", self.tag)


class Page:
    """A man page as sections -> subsections -> source lines."""

    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)[:-2]
        with open(path, encoding="utf-8") as f:
            self.lines = [ln.rstrip("\n") for ln in f if not ln.startswith('.\\"')]
        self.th = None
        self.sections = {}          # title -> [(subsection title, [lines])]
        section = sub = None
        for ln in self.lines:
            if ln.startswith(".TH "):
                self.th = [unroff(a) for a in macro_args(ln[4:])]
            elif ln.startswith(".SH "):
                section = unroff(" ".join(macro_args(ln[4:])))
                self.sections[section] = [("", [])]
            elif ln.startswith(".SS ") and section:
                sub = unroff(" ".join(macro_args(ln[4:])))
                self.sections[section].append((sub, []))
            elif section:
                self.sections[section][-1][1].append(ln)

    def section_lines(self, section, subsection=None):
        out = []
        for title, lines in self.sections.get(section, []):
            if subsection is None or title == subsection:
                out.extend(lines)
        return out

    def text(self, section, subsection=None) -> str:
        return "\n".join(t for t in map(line_text, self.section_lines(section, subsection)) if t)

    def subsections(self, section):
        return [title for title, _ in self.sections.get(section, []) if title]

    def entries(self, section, subsection=None) -> list:
        """The .TP entries of a section: tag line and the paragraph after it."""
        lines = self.section_lines(section, subsection)
        out, i = [], 0
        while i < len(lines):
            if lines[i].strip() == ".TP" and i + 1 < len(lines):
                tag = line_text(lines[i + 1])
                body, j = [], i + 2
                while j < len(lines):
                    macro = lines[j][1:].split(" ")[0] if lines[j][:1] == "." else None
                    if macro in _BREAKS:
                        break
                    body.append(line_text(lines[j]))
                    j += 1
                out.append(Entry(tag, " ".join(b for b in body if b)))
                i = j
            else:
                i += 1
        return out

    def tags(self, section, subsection=None) -> set:
        return {w for e in self.entries(section, subsection) for w in e.words}

    def examples(self) -> list:
        """Shell commands in the EXAMPLES section's .EX blocks, one string
        each: backslash-newline joined, quoted newlines kept."""
        commands, pending, inside = [], None, False
        for ln in self.section_lines("EXAMPLES"):
            if ln.startswith(".EX"):
                inside = True
                continue
            if ln.startswith(".EE"):
                inside = False
                if pending is not None:
                    raise AssertionError(f"{self.name}: unfinished example {pending!r}")
                continue
            if not inside or ln[:1] in (".", "'"):
                continue
            text = unroff(ln)
            if pending is None:
                pending = text
            elif pending.endswith("\\"):
                pending = pending[:-1] + text
            else:
                pending += "\n" + text
            if pending.endswith("\\") or not _complete(pending):
                continue
            commands.append(pending)
            pending = None
        return commands

    def rbtrace_examples(self) -> list:
        return [c for c in self.examples() if c.startswith("rbtrace ")]


def _complete(command: str) -> bool:
    try:
        shlex.split(command)
        return True
    except ValueError:          # an open quote: the command goes on
        return False


def split_pipeline(command: str):
    """(words of the first command, the rest of the pipeline or "")."""
    quote = None
    for i, ch in enumerate(command):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "|":
            return shlex.split(command[:i]), command[i + 1:].strip()
    return shlex.split(command), ""


def jq_examples(page) -> list:
    """(rbtrace args, shell tail starting with jq) of every jq recipe."""
    out = []
    for command in page.rbtrace_examples():
        words, tail = split_pipeline(command)
        if tail.split(None, 1)[:1] == ["jq"]:
            out.append((words[1:], tail))
    return out


def load(name) -> Page:
    return Page(os.path.join(MAN_DIR, name + ".8"))


# --- what the code says -------------------------------------------------------

def command_names():
    return sorted(cli.commands)


def probe_commands():
    from rbtrace.probes import registry
    return sorted(set(registry()) & set(cli.commands))


def _root_context():
    return click.Context(cli, info_name="rbtrace", **cli.context_settings)


def command_params(cmd, name):
    ctx = click.Context(cmd, info_name=name, parent=_root_context())
    return [p for p in cmd.get_params(ctx) if isinstance(p, click.Option)]


def option_names(params) -> set:
    return {o for p in params for o in (*p.opts, *p.secondary_opts)}


_EVENT_METHODS_READ = ("get", "copy", "items", "keys", "values")
_TEXT_HELPERS = ("put_text", "put_text_list")


def _event_expr(v, events, producers) -> bool:
    """Is `v` an event dict: a dict display with a "type" key, a name bound
    to one, a copy of one, or a call of a function that returns one?"""
    if isinstance(v, ast.Dict):
        return any(isinstance(k, ast.Constant) and k.value == "type" for k in v.keys)
    if isinstance(v, ast.Name):
        return v.id in events
    if isinstance(v, ast.Call):
        f = v.func
        if isinstance(f, ast.Attribute) and f.attr == "copy":
            return _event_expr(f.value, events, producers)
        if isinstance(f, ast.Name) and f.id == "dict" and v.args:
            return _event_expr(v.args[0], events, producers)
        name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
        return name in producers
    return False


def decoder_fields(probe_cls):
    """(line type, field names) the probe's events can have.

    JSON_FIELDS of the probe's module wins when it exists.  Otherwise the
    module's source is read: event dicts are dict displays with a "type"
    key, names bound to them or to copies of them, and the results of
    functions that return one (found to a fixed point, so helpers such as
    a per-record `_event()` are followed).  Their fields are the display's
    keys, constant subscript stores and put_text/put_text_list names (plus
    "<name>_b64").  Anything that could add a field unseen (a computed key,
    the event handed to another function) is reported."""
    module = sys.modules[probe_cls.__module__]
    spec = getattr(module, "SPEC", None)
    if spec is not None:                 # declared: rbtrace/spec.py
        return spec.name, set(spec.json_fields)
    tree = ast.parse(textwrap.dedent(inspect.getsource(module)))
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    events = {f: set() for f in funcs}
    producers = set()
    changed = True
    while changed:
        changed = False
        for f in funcs:
            for node in ast.walk(f):
                if isinstance(node, ast.Assign) and _event_expr(node.value, events[f], producers):
                    for t in node.targets:
                        if isinstance(t, ast.Name) and t.id not in events[f]:
                            events[f].add(t.id)
                            changed = True
                elif isinstance(node, ast.Return) and node.value is not None \
                        and _event_expr(node.value, events[f], producers) \
                        and f.name not in producers:
                    producers.add(f.name)
                    changed = True
    fields, types, problems = set(), set(), []
    for f in funcs:
        ev = events[f]
        for node in ast.walk(f):
            if isinstance(node, ast.Dict) and _event_expr(node, ev, producers):
                for k, v in zip(node.keys, node.values):
                    if k is None:
                        problems.append(f"{f.name}: ** in an event display")
                    elif isinstance(k, ast.Constant):
                        fields.add(k.value)
                        if k.value == "type":
                            types.add(v.value if isinstance(v, ast.Constant) else None)
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) \
                            and sub.value.id in ev:
                        if isinstance(sub.slice, ast.Constant) and isinstance(sub.slice.value, str):
                            fields.add(sub.slice.value)
                        else:
                            problems.append(f"{f.name}: computed key {ast.unparse(sub)}")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and func.value.id in ev:
                arg = node.args[0] if len(node.args) == 1 else None
                if fname == "update" and isinstance(arg, ast.Dict) \
                        and all(isinstance(k, ast.Constant) for k in arg.keys):
                    fields.update(k.value for k in arg.keys)
                elif fname not in _EVENT_METHODS_READ:
                    problems.append(f"{f.name}: {ast.unparse(node)}")
                continue
            if not any(isinstance(a, ast.Name) and a.id in ev for a in node.args):
                continue
            if fname in _TEXT_HELPERS and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant):
                fields.update({node.args[1].value, node.args[1].value + "_b64"})
            elif fname != "append":
                problems.append(f"{f.name}: the event is passed to {ast.unparse(func)}()")
    if not fields:
        problems.append("no event dict (a dict display with a 'type' key) found")
    if len(types) != 1 or None in types:
        problems.append(f"event line types {types}: expected one constant")
    declared = getattr(module, "JSON_FIELDS", None)
    if declared is not None:
        missing = fields - set(declared)
        assert not missing, f"{module.__name__}.JSON_FIELDS lacks {sorted(missing)}"
        return (types.pop() if len(types) == 1 else probe_cls.name), set(declared)
    assert not problems, (f"{module.__name__}: cannot tell every JSON field from the source "
                          f"({'; '.join(problems)}); export JSON_FIELDS from it")
    return types.pop(), fields


class _FakeLoaded:
    def counters(self):
        return [10, 2, 1, 1]      # submitted, ringbuf_full, map_full, not_followed

    def prog_misses(self):
        return 3

    def followed_count(self):
        return 2


class _Recorder:
    def __init__(self):
        self.lost_records = []

    def lost(self, record):
        self.lost_records.append(record)


def envelope_fields():
    """{"start": fields, "lost": fields, "summary": fields} from the engine."""
    from rbtrace import render
    from rbtrace.probes import registry
    from rbtrace.session import Session
    from rbtrace.follow import Command, RunningProcess
    probe = registry()[probe_commands()[0]]({})
    renderer = _Recorder()
    session = Session(probe, renderer, None, None)
    session.started = 0.0
    summary = session._summary(_FakeLoaded())
    assert renderer.lost_records, "a drop on the fake counters makes a lost record"
    out = {"summary": {"type", *summary}, "lost": {"type", *renderer.lost_records[0]}}
    # Following `-- CMD` or `--pid P --children` adds members of its own.
    running = RunningProcess(os.getpid())
    for target in (Command(["true"]), running):
        session = Session(probe, _Recorder(), None, None, follow=target)
        session.started = 0.0
        out["summary"] |= set(session._summary(_FakeLoaded()))
    running.close()

    start = {"type"}
    for fn in (Session.run, render.JsonRenderer.start):
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("start", "_write"):
                for arg in ast.walk(node):
                    if isinstance(arg, ast.Dict):
                        start.update(k.value for k in arg.keys if isinstance(k, ast.Constant))
    assert {"version", "probe"} <= start, start
    out["start"] = start
    return out


def envelope_orders():
    """{"start": [keys], "lost": [[keys]], "summary": [[keys], ...]}: the
    members of the engine's own lines in the order they are written (the
    JSON renderer puts "type" first, and "version" in the start line)."""
    from rbtrace import render
    from rbtrace.follow import Command, RunningProcess
    from rbtrace.probes import registry
    from rbtrace.session import Session
    probe = registry()[probe_commands()[0]]({})
    out = {"lost": [], "summary": []}
    running = RunningProcess(os.getpid())
    try:
        for target in (None, Command(["true"]), running):
            renderer = _Recorder()
            session = Session(probe, renderer, None, None, follow=target)
            session.started = 0.0
            summary = session._summary(_FakeLoaded())
            out["summary"].append(_written(render, "close", summary))
            out["lost"].extend(_written(render, "lost", r) for r in renderer.lost_records)
    finally:
        running.close()
    # The start line: the info dict Session.run hands to the renderer.
    info = None
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(Session.run)))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "start" \
                and node.args and isinstance(node.args[0], ast.Dict):
            info = {k.value: 0 for k in node.args[0].keys}
    assert info, "Session.run starts the renderer with a dict display"
    out["start"] = _written(render, "start", info)
    return out


def _written(render, method, record) -> list:
    """The members, in order, of the line JsonRenderer writes for `record`."""
    import json
    buf = io.BytesIO()
    getattr(render.JsonRenderer(buf, None), method)(record)
    return list(json.loads(buf.getvalue()))


def documented_order(page, subsection) -> list:
    """The members a FIELDS subsection lists, in the order of its entries."""
    return [w for e in page.entries("FIELDS", subsection) for w in e.words]


def assert_in_documented_order(keys, documented, what):
    """Every member of a real line is documented, and the line's members
    come in the documented order (members that only appear sometimes may
    be missing from a line, not out of place)."""
    keys = list(keys)
    missing = [k for k in keys if k not in documented]
    assert not missing, f"{what}: {missing} not documented"
    pos = [documented.index(k) for k in keys]
    bad = [(keys[i], keys[i + 1]) for i in range(len(keys) - 1) if pos[i] > pos[i + 1]]
    assert not bad, (f"{what}: the output has these members in another order than the page "
                     f"(output, page): {bad}; output order {keys}")


def env_vars_in_code() -> set:
    names = set()
    for path in glob.glob(os.path.join(REPO, "rbtrace", "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r"[\"'](RBTRACE_[A-Z_]+)[\"']", f.read()))
    return names


def doctor_check_names(monkeypatch) -> list:
    """Names of every check run_checks makes, with the machine faked so
    nothing is tried: the checks are then all reported, quickly."""
    from rbtrace import bpf, doctor, kernel
    from rbtrace.errors import EnvironmentProblem
    names = []

    class Recording(doctor.Check):
        def __init__(self, name, *args, **kw):
            names.append(name)
            super().__init__(name, *args, **kw)

    def fail(*a, **kw):
        raise EnvironmentProblem("faked for the test")

    monkeypatch.setattr(doctor, "Check", Recording)
    monkeypatch.setattr(kernel, "privileges_ok", lambda caps=None: False)
    monkeypatch.setattr(kernel, "task_offsets", fail)
    monkeypatch.setattr(kernel, "find_headers", fail)
    monkeypatch.setattr(kernel, "ensure_tracefs", fail)
    monkeypatch.setattr(bpf, "import_bcc", fail)
    doctor.run_checks(io.StringIO())
    return names


# --- the tests ----------------------------------------------------------------

ALL_PAGES = ["rbtrace"] + [f"rbtrace-{c}" for c in command_names()]


def test_every_command_has_a_page_and_every_page_a_command():
    pages = sorted(os.path.basename(p)[:-2] for p in glob.glob(os.path.join(MAN_DIR, "*.8")))
    assert pages == sorted(ALL_PAGES)
    main = load("rbtrace")
    assert load("rbtrace").tags("COMMANDS") == set(command_names())
    see_also = main.text("SEE ALSO")
    for c in command_names():
        assert f"rbtrace-{c}(8)" in see_also


@pytest.mark.parametrize("name", ALL_PAGES)
def test_page_has_the_required_sections(name):
    page = load(name)
    if name == "rbtrace":
        required = SECTIONS_MAIN
    elif name == "rbtrace-doctor":
        required = SECTIONS_DOCTOR
    else:
        required = SECTIONS_PROBE
    missing = [s for s in required if s not in page.sections]
    assert not missing, f"{name}.8 lacks {missing}"
    assert page.th[:2] == [name.upper(), "8"], page.th
    assert page.th[3] == f"rbtrace {__version__}", "the .TH line names another version"
    assert re.fullmatch(r"[a-z-]+ - \S.*", page.text("NAME")), page.text("NAME")
    assert page.text("NAME").split(" - ")[0] == name


@pytest.mark.parametrize("name", ALL_PAGES)
def test_page_sees_the_others(name):
    see_also = load(name).text("SEE ALSO")
    if name != "rbtrace":
        assert "rbtrace(8)" in see_also
    if name == "rbtrace" or name[len("rbtrace-"):] in probe_commands():
        for ref in SEE_ALSO_PROBE:
            assert ref in see_also, f"{name}.8 SEE ALSO lacks {ref}"


@pytest.mark.parametrize("command", command_names())
def test_every_option_is_documented_and_only_those(command):
    cmd = cli.commands[command]
    params = command_params(cmd, command)
    page = load(f"rbtrace-{command}")
    entries = page.entries("OPTIONS")
    documented = {o for e in entries for o in e.options()}
    # A hidden option (tp's -x) is accepted only to be refused with a
    # reason: not an entry of its own, but explained in a subsection.
    code = option_names(p for p in params if not p.hidden)
    assert code - documented == set(), f"undocumented in rbtrace-{command}.8"
    # Options of other tools are discussed in subsections; the entries
    # proper are this command's only.
    proper = {o for e in page.entries("OPTIONS", "") for o in e.options()}
    assert proper - code == set(), f"rbtrace-{command}.8 documents options that don't exist"
    explained = "\n".join(page.text("OPTIONS", s) for s in page.subsections("OPTIONS"))
    for p in params:
        if p.hidden:
            for o in (*p.opts, *p.secondary_opts):
                assert re.search(rf"(?<![\w-]){o}(?![\w-])", explained), \
                    f"rbtrace-{command}.8: hidden {o} is not explained"


@pytest.mark.parametrize("command", command_names())
def test_help_lists_the_options_the_page_has(command):
    """`rbtrace CMD --help` offers exactly the options that are entries of
    the page: tp's --help has no -x/--failed, which tp refuses."""
    out = _rbtrace(command, "--help").stdout
    listed = set(re.findall(r"^  (?:(-\w), )?(--[\w-]+)", out, re.M))
    listed = {o for pair in listed for o in pair if o}
    page = load(f"rbtrace-{command}")
    proper = {o for e in page.entries("OPTIONS", "") for o in e.options()}
    assert listed == proper, (sorted(listed ^ proper), out)
    if command == "tp":
        assert "-x" not in listed and "--failed" not in listed


def test_rbtrace_alone_prints_the_help_on_stderr_and_exits_2():
    """No command is a usage error (exit 2, stdout kept for data), and the
    help is the useful thing to show: the same text as --help, without a
    prefix glued to it."""
    p = _rbtrace()
    assert p.returncode == 2, p
    assert p.stdout == ""
    assert p.stderr == _rbtrace("--help").stdout
    assert p.stderr.startswith("Usage: rbtrace ") and "rbtrace: " not in p.stderr
    text = " ".join(load("rbtrace").text("OPTIONS").split())
    assert "rbtrace alone, with no command, prints the same help on standard error and " \
           "exits 2" in text


def test_group_and_shared_options_are_in_rbtrace_8():
    page = load("rbtrace")
    documented = {o for e in page.entries("OPTIONS") for o in e.options()}
    group = option_names(p for p in cli.get_params(_root_context()) if isinstance(p, click.Option))
    shared = set.intersection(*(option_names(command_params(cli.commands[c], c))
                                for c in probe_commands()))
    assert group | shared <= documented
    assert documented <= group | shared, "rbtrace.8 documents options that don't exist"


@pytest.mark.parametrize("command", command_names())
def test_defaults_and_limits_are_stated(command):
    """A default shown by --help, and the bounds of a numeric range, appear
    in the option's entry."""
    page = load(f"rbtrace-{command}")
    by_option = {}
    for e in page.entries("OPTIONS", ""):
        for o in e.options():
            by_option[o] = e
    for p in command_params(cli.commands[command], command):
        if p.hidden:
            continue
        entry = by_option[p.opts[0]]
        if p.show_default and not p.is_flag and p.default is not None:
            assert str(p.default) in entry.body, f"{p.opts[0]}: default {p.default} not stated"
        if isinstance(p.type, (click.IntRange, click.FloatRange)):
            for bound in (p.type.min, p.type.max):
                if bound is not None:
                    text = str(int(bound)) if float(bound).is_integer() else str(bound)
                    assert re.search(rf"(?<![\d.]){re.escape(text)}(?![\d.])", entry.body), \
                        f"{p.opts[0]}: limit {text} not stated in rbtrace-{command}.8"


@pytest.mark.parametrize("command", probe_commands())
def test_snoop_options_are_there_or_explained(command):
    page = load(f"rbtrace-{command}")
    code = option_names(p for p in command_params(cli.commands[command], command)
                        if not p.hidden)
    explained = "\n".join(page.text("OPTIONS", s) for s in page.subsections("OPTIONS"))
    for opt in SNOOP_OPTIONS:
        assert opt in code or re.search(rf"(?<![\w-]){opt}(?![\w-])", explained), \
            f"rbtrace-{command}.8: {opt} is neither an option nor explained"


@pytest.mark.parametrize("command", probe_commands())
def test_every_column_is_documented(command):
    from rbtrace.probes import registry
    probe = registry()[command]({})
    page = load(f"rbtrace-{command}")
    assert page.tags("FIELDS", "Columns") == {c.header for c in probe.columns}


@pytest.mark.parametrize("command", probe_commands())
def test_every_json_field_is_documented(command):
    from rbtrace.probes import registry
    line_type, code = decoder_fields(registry()[command])
    assert line_type == command, "the event lines' type is the command's name"
    page = load(f"rbtrace-{command}")
    sub = f"{line_type} lines"
    assert sub in page.subsections("FIELDS"), f"rbtrace-{command}.8: no FIELDS subsection {sub!r}"
    documented = page.tags("FIELDS", sub)
    assert code - documented == set(), f"fields missing from rbtrace-{command}.8"
    assert documented - code == set(), f"rbtrace-{command}.8 documents fields the decoder lacks"


_READER_OK = """
def helper(rec):
    e = {"type": "x", "seq": None}
    put_text(e, "name", rec)
    e["a"] = e["b"] = 1
    return e


class P:
    def decode(self, records):
        out = []
        for r in records:
            tpl = self._event(r)
            e = tpl.copy()
            e["seq"] = 1
            out.append(e)
        return out

    def _event(self, r):
        e = helper(r)
        e.update({"c": 2})
        flags = {}
        flags["NOT_A_FIELD"] = 1
        return e
"""

_READER_COMPUTED = """
class P:
    def decode(self, records):
        e = {"type": "x"}
        for k in ("a", "b"):
            e[k] = 1
        return [e]
"""

_READER_HANDED_OVER = """
class P:
    def decode(self, records):
        e = {"type": "x"}
        fill(e)
        return [e]
"""


def _module_from(source, tmp_path, name):
    import importlib.util
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_field_reader_follows_helpers_and_refuses_what_it_cannot_see(tmp_path):
    ok = _module_from(_READER_OK, tmp_path, "rbtrace_doc_reader_ok")
    assert decoder_fields(ok.P) == ("x", {"type", "seq", "a", "b", "c", "name", "name_b64"})
    for i, source in enumerate((_READER_COMPUTED, _READER_HANDED_OVER)):
        bad = _module_from(source, tmp_path, f"rbtrace_doc_reader_bad{i}")
        with pytest.raises(AssertionError, match="JSON_FIELDS"):
            decoder_fields(bad.P)
        bad.JSON_FIELDS = ("type", "a", "b")
        assert decoder_fields(bad.P) == ("x", {"type", "a", "b"})


@pytest.mark.parametrize("command", probe_commands())
def test_start_lost_and_summary_lines_are_documented(command):
    page = load(f"rbtrace-{command}")
    for line_type, code in envelope_fields().items():
        sub = f"{line_type} lines"
        assert sub in page.subsections("FIELDS"), f"rbtrace-{command}.8: no {sub!r}"
        documented = page.tags("FIELDS", sub)
        assert code == documented, (line_type, sorted(code ^ documented))


@pytest.mark.parametrize("command", probe_commands())
def test_start_lost_and_summary_members_are_in_the_output_order(command):
    page = load(f"rbtrace-{command}")
    orders = envelope_orders()
    assert orders["lost"] and len(orders["summary"]) == 3
    assert_in_documented_order(orders["start"], documented_order(page, "start lines"),
                               f"rbtrace-{command}.8 start lines")
    for line_type in ("lost", "summary"):
        documented = documented_order(page, f"{line_type} lines")
        for keys in orders[line_type]:
            assert_in_documented_order(keys, documented, f"rbtrace-{command}.8 {line_type} lines")


def _exec_events():
    """Exec events with every member, non-UTF-8 text included, decoded
    from hand-built records by the real decoder (tests/unit/test_exec_decode)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_exec_decode as ted
    from rbtrace.probes import exec as ex
    recs = [ted.record(args=[b"true", b"x"]),
            ted.record(args=[b"\xff", b"x"], filename=b"/tmp/\xfe", comm=b"\xfd", syscall=1,
                       dirfd=3, at_flags=0x1000, exe=b"/tmp/\xfc", flags=ex.ARGV_FAULT, ret=-2),
            ted.record(args=[b"true"], syscall=1, dirfd=-100, flags=ex.FILENAME_TRUNCATED)]
    return ted.decode(recs)


def _open_events():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_open_decode as tod
    rows = [{"path": b"/a", "ret": 3}, {"path": b"bad-\xff", "comm": b"\xfe", "ret": -2},
            {"path": b"rel", "ret": -2, "flags": 0o101, "mode": 0o640}]
    _, plain = tod.decode(rows)
    _, full = tod.decode(rows, full_path=True)
    return plain + full


@pytest.mark.parametrize("command", probe_commands())
def test_event_members_are_documented_in_the_output_order(command):
    """The FIELDS entries of a probe's event lines come in the order the
    members are written: the decoder's real output where the unit tests
    can build records (exec, open), the module's JSON_FIELDS (declared in
    output order) otherwise.  tests/kernel/test_man_examples.py checks the
    order of real output lines too."""
    from rbtrace.probes import registry
    page = load(f"rbtrace-{command}")
    documented = documented_order(page, f"{command} lines")
    events = {"exec": _exec_events, "open": _open_events}.get(command, lambda: [])()
    for e in events:
        assert_in_documented_order(e, documented, f"rbtrace-{command}.8 ({e})")
    if command == "exec":
        b64 = {k for e in events for k in e if k.endswith("_b64")}
        assert b64 == {"comm_b64", "filename_b64", "exe_b64", "argv_b64"}, b64
    if command == "open":
        assert {k for e in events for k in e} >= {"comm_b64", "path_b64", "full_path", "mode"}
    module = sys.modules[registry()[command].__module__]
    declared = getattr(module, "JSON_FIELDS", None)
    if hasattr(module, "SPEC"):
        declared = module.SPEC.json_fields
    if declared is not None:
        assert_in_documented_order(declared, documented, f"rbtrace-{command}.8 (JSON_FIELDS)")
    else:
        assert events, f"no way to see the order of {command}'s members: add JSON_FIELDS"


@pytest.mark.parametrize("name", ["rbtrace"] + [f"rbtrace-{c}" for c in probe_commands()])
def test_overhead_does_not_call_its_own_numbers_missing(name):
    """rbtrace-exec(8) said "the measured numbers are still missing" and
    then gave measured numbers."""
    text = " ".join(load(name).text("OVERHEAD").split())
    measured = re.search(r"[Mm]easured|\d(?:\.\d+)? ?(?:ns|us|ms|s)\b", text)
    if measured:
        assert not re.search(r"missing|not (?:yet )?measured|to be measured", text), text[:300]


@pytest.mark.parametrize("name", ["rbtrace"] + [f"rbtrace-{c}" for c in probe_commands()])
def test_json_format_version_is_stated(name):
    from rbtrace.render import JSON_FORMAT_VERSION
    page = load(name)
    if name == "rbtrace":
        text = page.text("JSON OUTPUT")
    else:
        text = next(e.body for e in page.entries("FIELDS", "start lines") if e.tag == "version")
    found = re.findall(r"format version, currently (\d+)", text)
    assert found == [str(JSON_FORMAT_VERSION)], text


def test_b64_convention_and_line_types_are_explained():
    text = load("rbtrace").text("JSON OUTPUT")
    assert "_b64" in text and "base64" in text and "UTF-8" in text
    for t in ("start", "lost", "summary", *probe_commands()):
        assert t in load("rbtrace").tags("JSON OUTPUT")
    seq = load("rbtrace").text("LOSS ACCOUNTING")
    assert "seq" in seq and "gap" in seq


@pytest.mark.parametrize("name", ALL_PAGES)
def test_exit_status_is_complete(name):
    tags = load(name).tags("EXIT STATUS")
    if name == "rbtrace-doctor":
        # doctor traces nothing: no -- CMD (126, 127), no output file (74),
        # no drain-then-exit on a stop signal.
        wanted = {Exit.OK, Exit.ERROR, Exit.USAGE, Exit.INTERRUPTED}
    elif name == "rbtrace-cache":
        # cache lists on standard output (74 when it can't be written).
        wanted = {Exit.OK, Exit.ERROR, Exit.USAGE, Exit.OUTPUT, Exit.INTERRUPTED}
    else:
        wanted = set(Exit)
    assert {str(int(c)) for c in wanted} <= tags, f"{name}.8: exit codes {sorted(tags)}"
    assert tags <= {str(int(c)) for c in Exit}, f"{name}.8 documents an exit code the code lacks"


def test_environment_variables_are_documented():
    tags = load("rbtrace").tags("ENVIRONMENT")
    assert env_vars_in_code() <= tags
    assert "_RBTRACE_COMPLETE" in tags


def test_doctor_checks_are_documented(monkeypatch):
    names = doctor_check_names(monkeypatch)
    assert len(names) >= 8
    entries = load("rbtrace-doctor").entries("CHECKS")
    assert [e.tag for e in entries] == names, "CHECKS lists every check, in the printed order"


def test_examples_use_real_commands_and_options():
    """Every `rbtrace ...` example parses (click converts every value, so a
    stale option, a bad size or an unknown user fails here)."""
    n = 0
    for name in ALL_PAGES:
        for command in load(name).rbtrace_examples():
            words, tail = split_pipeline(command)
            args = words[1:]
            assert args and args[0] in cli.commands, f"{name}.8: {command}"
            parent = _root_context()
            cli.commands[args[0]].make_context(args[0], args[1:], parent=parent)
            if tail.startswith("jq"):
                assert "--json" in args, f"{name}.8: jq example without --json: {command}"
            n += 1
    assert n >= 10


@pytest.mark.parametrize("command", probe_commands())
def test_probe_pages_have_jq_recipes(command):
    recipes = jq_examples(load(f"rbtrace-{command}"))
    assert len(recipes) >= 4
    assert any("-s" in tail.split("'")[0] for _, tail in recipes), "a recipe over the whole run"


def test_the_example_reader_joins_lines_like_a_shell():
    page = Page.__new__(Page)
    page.name = "t"
    page.sections = {"EXAMPLES": [("", [
        ".EX", "rbtrace open \\-\\-json | \\e", "    jq \\-r \\(aqselect(.a)", "  | .b\\(aq",
        ".EE", ".EX", "jq . file", "rbtrace exec", ".EE"])]}
    assert page.examples() == ["rbtrace open --json |     jq -r 'select(.a)\n  | .b'",
                               "jq . file", "rbtrace exec"]
    assert jq_examples(page) == [(["open", "--json"], "jq -r 'select(.a)\n  | .b'")]


def test_setup_cfg_installs_every_page():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    data = cfg["options.data_files"]
    assert [g.strip() for g in data["share/man/man8"].split(",")] == ["man/*.8"]
    installed = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "man/*.8"))}
    assert installed == {f"{n}.8" for n in ALL_PAGES}


# As for kernel tests (tests/conftest.py): under CI=true a missing tool
# fails the test instead of skipping it, so CI can't pass without having
# rendered the pages.  `make setup-test` installs groff-base and man-db.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _tool(name):
    path = shutil.which(name)
    if not path:
        message = f"{name} is not installed (make setup-test installs groff-base and man-db)"
        if CI:
            pytest.fail(f"{message}; under CI=true this fails instead of skipping")
        pytest.skip(message)
    return path


@pytest.mark.parametrize("name", ALL_PAGES)
def test_page_renders_without_warnings_in_80_columns(name):
    path = os.path.join(MAN_DIR, name + ".8")
    groff = subprocess.run([_tool("groff"), "-man", "-ww", "-z", path],
                           capture_output=True, text=True, timeout=60)
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    man = subprocess.run([_tool("man"), "--warnings", "-l", path], capture_output=True,
                         env=env, timeout=60)
    err = man.stderr.decode()
    assert man.returncode == 0 and err == "", err
    wide = [ln for ln in man.stdout.decode().splitlines() if len(ln) > 80]
    assert not wide, f"{name}.8 has lines over 80 columns: {wide}"
    whatis = subprocess.run([_tool("lexgrog"), path], capture_output=True, text=True, timeout=60)
    assert whatis.returncode == 0 and f'"{name} - ' in whatis.stdout, whatis.stdout


def _rbtrace(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("shell, needle", [
    ("bash_source", "complete -o nosort -F _rbtrace_completion rbtrace"),
    ("zsh_source", "#compdef rbtrace"),
    ("fish_source", "complete --no-files --command rbtrace"),
])
def test_shell_completion_script(shell, needle):
    p = _rbtrace(env={"_RBTRACE_COMPLETE": shell})
    assert p.returncode == 0, p.stderr
    assert needle in p.stdout
    documented = load("rbtrace").text("SHELL COMPLETION")
    assert "_RBTRACE_COMPLETE=bash_source rbtrace" in documented
    assert shell in documented


def test_shell_completion_completes_commands_and_options():
    p = _rbtrace(env={"_RBTRACE_COMPLETE": "bash_complete", "COMP_WORDS": "rbtrace op",
                      "COMP_CWORD": "1"})
    assert p.returncode == 0 and p.stdout.split() == ["plain,open"], p.stdout
    p = _rbtrace(env={"_RBTRACE_COMPLETE": "bash_complete",
                      "COMP_WORDS": "rbtrace open --full", "COMP_CWORD": "2"})
    assert p.stdout.split() == ["plain,--full-path"], p.stdout


def test_version_is_the_one_in_the_pages():
    p = _rbtrace("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"rbtrace, version {__version__}"
    assert f"rbtrace, version {__version__}" in load("rbtrace").text("OPTIONS")
