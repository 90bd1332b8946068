"""Messages that repeat user or traced text escape it (issue 14, item 9):
`rbtrace exec -- $'evil\\e]0;PWN\\a'` must not retitle the terminal.

Each hostile name goes through every kind of message that repeats a
name: rbtrace's own errors (command not found, not executable, output
file, tracepoint names, probe files, flag and user names, sizes), click's
usage errors (the last guard in cli.main), and the summary line.  The
expected text is fields.escape_str's, the one escaping of the table and
plain lines.  No root needed: all of this fails before anything loads.
"""
import os
import pathlib
import subprocess
import sys

import pytest

from rbtrace import cli, fields

HOSTILE = {
    "esc": "evil\x1bname",
    "osc": "evil\x1b]0;PWN\x07",
    "csi": "evil\x1b[2J\x1b[31mred",
    "newline": "two\nlines",
    "c1": "c1\x9b2J\x85",
    "bidi": "bidi\u202etxt.exe\u2066x\u2069",
    "non-utf8": os.fsdecode(b"bytes\xff\xfe\x9b"),
    "backslash": "back\\x1b",
}


def _main(capsys, argv, env=None, monkeypatch=None):
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _one_safe_line(err):
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    line = err[:-1]
    assert line.isprintable(), f"a control or format character reached stderr: {line!r}"
    assert line.startswith("rbtrace: ")
    return line


CASES = {
    # name -> (argv maker, exit code)
    "command not found": (lambda n, d: ["exec", "--", n], 127),
    "command path not found": (lambda n, d: ["exec", "--", f"{d}/missing/{n}"], 127),
    "command is a directory": (lambda n, d: ["exec", "--", _mkdir(d, n)], 126),
    "command not executable": (lambda n, d: ["exec", "--", _plain(d, n)], 126),
    "output file": (lambda n, d: ["exec", "-o", f"{d}/missing/{n}"], 2),
    # (x...x: these values are strip()ed, and U+0085 is white space)
    "open flag": (lambda n, d: ["open", "--flags", f"x{n}x"], 2),
    "user": (lambda n, d: ["exec", "--uid", f"x{n}x"], 2),
    "ring size": (lambda n, d: ["exec", "--ring-size", f"x{n}x"], 2),
    "comm": (lambda n, d: ["exec", "--comm", n + "x" * 16], 2),
    "max arg bytes": (lambda n, d: ["exec", "--max-arg-bytes", f"x{n}x"], 2),
    "tracepoint name": (lambda n, d: ["tp", f"{n} x:y"], 2),
    "probe file": (lambda n, d: ["run", f"{d}/missing-{n}.bpf.c"], 2),
    "probe file is a directory": (lambda n, d: ["run", _mkdir(d, n)], 2),
    "unknown option (click's own message)": (lambda n, d: ["exec", f"--bogus-{n}"], 2),
    "unknown command (click's own message)": (lambda n, d: [f"cmd-{n}"], 2),
}


def _mkdir(d, name):
    path = os.path.join(d, f"dir-{name}")
    os.makedirs(path, exist_ok=True)
    return path


def _plain(d, name):
    path = os.path.join(d, f"plain-{name}")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(path, 0o644)
    return path


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("case", CASES)
def test_every_message_escapes_the_name(capsys, tmp_path, kind, case):
    name = HOSTILE[kind]
    make, code = CASES[case]
    rc, out, err = _main(capsys, make(name, str(tmp_path)))
    assert rc == code, err
    assert out == ""
    line = _one_safe_line(err)
    if "click's own" in case:
        # click quotes these names with repr() itself, which escapes every
        # character that is not printable, though not as escape_str does;
        # cli.main's last guard (fields.safe_message) leaves them so.
        assert "No such" in line and repr(name)[1:-1] in line, line
    else:
        assert fields.escape_str(name) in line, line


def test_backslash_is_escaped_so_the_name_is_unambiguous(capsys):
    """A name that holds the text \\x1b is not shown as if it held ESC."""
    rc, _, err = _main(capsys, ["exec", "--", "back\\x1b"])
    assert rc == 127
    assert err == "rbtrace: back\\\\x1b: command not found\n"


def test_the_reported_command_shows_escapes_not_raw_bytes():
    """The reported case, through a real process and its real argv bytes."""
    p = subprocess.run([sys.executable, "-m", "rbtrace", "exec", "--",
                        b"evil\x1b]0;PWN\x07"], capture_output=True, timeout=60)
    assert p.returncode == 127
    assert p.stdout == b""
    assert p.stderr == b"rbtrace: evil\\x1b]0;PWN\\x07: command not found\n"


def test_non_utf8_argv_bytes_show_as_their_bytes():
    p = subprocess.run([sys.executable, "-m", "rbtrace", "exec", "--", b"a\xff\x9b\x1b"],
                       capture_output=True, timeout=60)
    assert p.returncode == 127
    assert p.stderr == b"rbtrace: a\\xff\\x9b\\x1b: command not found\n"


@pytest.mark.parametrize("kind", HOSTILE)
def test_summary_line_escapes_the_command_name(capsys, kind):
    name = HOSTILE[kind]
    cli._print_summary({"probe": "exec", "delivered": 1, "dropped": 0, "duration_s": 0.1,
                        "command": {"argv": [f"/bin/{name}", "x"], "status": 0, "signal": None}})
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err[:-1].isprintable(), repr(err)
    assert f"; {fields.escape_str(name)} exited with status 0" in err


@pytest.mark.parametrize("kind", HOSTILE)
def test_for_message_is_escape_str_and_escape_text(kind):
    name = HOSTILE[kind]
    assert fields.for_message(name) == fields.escape_str(name)
    raw = os.fsencode(name)
    assert fields.for_message(raw) == fields.escape_text(raw) == fields.escape_str(name)
    assert fields.for_message(pathlib.Path(name)) == fields.escape_str(name)


def test_safe_message_leaves_escaped_text_and_backslashes_alone():
    escaped = fields.for_message("a\x1b]0;x\x07\\b")
    assert fields.safe_message(f"rbtrace: {escaped}") == f"rbtrace: {escaped}"
    assert fields.safe_message("x \x1b[2J\u202e\n\\") == "x \\x1b[2J\\u202e\\n\\"
