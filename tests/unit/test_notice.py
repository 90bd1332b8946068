"""The core never writes to stderr itself (issue 15, item 4): its notices
go through rbtrace/notice.py, whose sink the command line sets."""
import re
from pathlib import Path

import pytest

from rbtrace import cli, notice

RBTRACE = Path(cli.__file__).parent
UI = {"cli.py", "render.py"}       # the user interface: writes to stderr itself


def test_without_a_sink_nothing_is_written(capfd):
    old = notice.set_sink(None)
    try:
        notice.say("hello")
        notice.show("compiler says\n")
    finally:
        notice.set_sink(old)
    assert capfd.readouterr() == ("", "")


def test_the_command_lines_sink_writes_one_inert_line_or_the_text_as_it_is(
        stderr_notices, capsys):
    notice.say("a plain message")
    notice.say("two\nlines \x1b[2J", who="rbtrace run")
    notice.show("x.c:1:2: warning: one\nx.c:3:4: warning: two\n")
    assert capsys.readouterr().err == ("rbtrace: a plain message\n"
                                       "rbtrace run: two\\nlines \\x1b[2J\n"
                                       "x.c:1:2: warning: one\nx.c:3:4: warning: two\n")


def test_main_sets_the_sink(tmp_path, monkeypatch, capsys):
    """`rbtrace cache` says what it found through cache.say: the line
    reaches stderr only if main() set the sink."""
    old = notice.set_sink(None)
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(cache_dir))
    try:
        with pytest.raises(SystemExit) as e:
            cli.main(["cache", "list"])
    finally:
        notice.set_sink(old)
    assert e.value.code == 0
    empty = cache_dir / "compiled"
    assert capsys.readouterr().err == f"rbtrace: the compile cache {empty} is empty\n"


WRITES_TO_STDERR = re.compile(r"sys\.stderr\.write|file\s*=\s*sys\.stderr|os\.write\(\s*2\s*,"
                              r"|sys\.__stderr__|print\(")


def test_no_core_module_writes_to_stderr():
    """Flushing sys.stderr before a fork or a dup2 of fd 2 (follow.py,
    bpf.captured_fds) writes nothing of the core's and stays."""
    found = []
    for path in sorted(RBTRACE.rglob("*.py")):
        if path.name in UI and path.parent == RBTRACE:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if WRITES_TO_STDERR.search(line.split("#")[0]):
                found.append(f"{path.relative_to(RBTRACE)}:{n}: {line.strip()}")
    assert not found, "use rbtrace.notice:\n" + "\n".join(found)
