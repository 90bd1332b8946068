"""--table -- CMD without the kernel: CMD's own pseudo-terminal (a real
one, with a real child), its output kept and cleaned for the output view,
and --table refused, in one line, where there is no terminal."""
import fcntl
import os
import select
import struct
import subprocess
import sys
import termios

import pytest

from rbtrace.cmdpty import CommandPty, OutputLines, clean_line
from rbtrace.follow import Command


@pytest.mark.parametrize("raw, shown", [
    ("plain text", "plain text"),
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b]0;pwned-title\x07after", "after"),
    ("\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("\x1bP1$qm\x1b\\dcs gone", "dcs gone"),
    ("c1-\x9b31mcsi", "c1-csi"),
    ("back\b\b\b\bspaced", "spaced"),
    ("progress 10%\rprogress 99%", "progress 99%"),
    ("a\tb", "a       b"),
    ("crlf\r", "crlf"),
    ("bidi-\u202eevil\u202c", "bidi-\\u202eevil\\u202c"),
    ("bell\x07 and del\x7f", "bell and del"),
    ("\x1b[?1049h\x1b[2J\x1b[Hscreen", "screen"),
    ("unterminated \x1b]0;title", "unterminated"),
])
def test_a_line_of_output_is_inert_text(raw, shown):
    assert clean_line(raw) == shown
    assert clean_line(raw).isprintable()


def test_lines_are_kept_across_reads_and_wrapped_to_the_width():
    out = OutputLines(kept=5)
    out.feed(b"first line\r\nsec")
    assert out.tail(80, 10) == ["first line", "sec"]
    out.feed(b"ond \xe2\x82")                 # a UTF-8 character cut between two reads
    out.feed(b"\xac line\r\n" + b"x" * 25 + b"\r\n")
    assert out.tail(80, 10) == ["first line", "second € line", "x" * 25]
    assert out.tail(10, 10) == ["first line", "second € l", "ine", "x" * 10, "x" * 10, "x" * 5]
    assert out.tail(10, 2) == ["x" * 10, "x" * 5]
    out.feed(b"".join(b"%d\n" % i for i in range(100)))
    assert list(out.lines) == ["95", "96", "97", "98", "99"]     # the last `kept`
    assert out.tail(80, 0) == []


def _read_all(pty, timeout=10):
    while pty.open:
        ready, _, _ = select.select([pty.fd], [], [], timeout)
        assert ready, "the command's terminal never reached its end"
        pty.read()


def test_the_command_runs_on_a_terminal_of_its_own_the_size_of_the_real_one(tmp_path):
    real_master, real_slave = os.openpty()          # the terminal rbtrace runs on
    fcntl.ioctl(real_slave, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 97, 0, 0))
    pty = CommandPty(terminal_fd=real_slave, size_fd=real_slave)
    script = ("echo tty=$(tty) size=$(stty size) sid=$(ps -o sid= -p $$ | tr -d \' \') pid=$$;"
              "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-three-on-it;"
              "echo to-stderr >&2; printf '\\033]0;t\\007\\033[1mbold\\033[0m\\n'; exit 6")
    cmd = Command(["sh", "-c", script])
    cmd.terminal = pty
    try:
        cmd.start()
        assert pty.slave is None                  # the slave is CMD's alone
        cmd.release()
        _read_all(pty)
        assert os.waitstatus_to_exitcode(cmd.wait()) == 6
        text = "\n".join(pty.lines.lines)
        assert f"size=31 97 sid={cmd.pid} pid={cmd.pid}" in text, text
        pty.resize(120, 40)             # the real terminal resized: the command's follows
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(pty.fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        assert (cols, rows) == (120, 40)
        assert f"tty={os.ttyname(real_slave)} " not in text
        assert "tty=/dev/pts/" in text and "all-three-on-it" in text and "to-stderr" in text
        assert "bold" in pty.lines.lines and "\x1b" not in text
        # The spool has every byte as written, escapes included.
        pty.close()
        r, w = os.pipe()
        pty.replay(w)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            spooled = f.read()
        # The very bytes the command wrote: no \r added (the real terminal adds it).
        assert spooled.endswith(b"to-stderr\n\x1b]0;t\x07\x1b[1mbold\x1b[0m\n")
        assert len(spooled) == pty.bytes
    finally:
        cmd.abandon()
        cmd.close()
        os.close(real_master)
        os.close(real_slave)


def test_nothing_is_lost_when_the_command_writes_more_than_is_kept():
    pty = CommandPty(terminal_fd=None, size_fd=None)     # no real terminal: the pty's defaults
    cmd = Command(["seq", "1", "200000"])
    cmd.terminal = pty
    try:
        cmd.start()
        cmd.release()
        _read_all(pty)
        cmd.wait()
        assert list(pty.lines.lines)[-1] == "200000"
        pty.close()
        r, w = os.pipe()
        import threading
        got = []
        t = threading.Thread(target=lambda: got.append(os.fdopen(r, "rb").read()))
        t.start()
        pty.replay(w)
        os.close(w)
        t.join(10)
        assert got[0] == b"".join(b"%d\n" % i for i in range(1, 200001))
    finally:
        cmd.abandon()
        cmd.close()


def _rbtrace(*args, stdin, stdout):
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], stdin=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, timeout=60)


@pytest.mark.parametrize("args, needle", [
    (["exec", "--table", "--", "true"], "standard input is not one"),
    (["trace", "exec,open", "--table", "--", "true"], "standard input is not one"),
    (["exec", "--table"], "standard input is not one"),
    (["exec", "--table", "--json", "--", "true"], "--table and --json"),
    (["exec", "--table", "-o", "/dev/null", "--", "true"], "--table and -o"),
])
def test_table_without_a_terminal_is_one_line_and_exit_2(args, needle):
    p = _rbtrace(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert p.stdout == b""
    assert len(err.strip().splitlines()) == 1 and err.startswith("rbtrace: ") and needle in err


def test_table_with_a_terminal_on_stdin_but_not_stdout_is_refused_too():
    master, slave = os.openpty()
    try:
        p = _rbtrace("exec", "--table", "--", "true", stdin=slave, stdout=subprocess.PIPE)
    finally:
        os.close(master)
        os.close(slave)
    err = p.stderr.decode()
    assert p.returncode == 2 and "standard output is not one" in err, err
    assert len(err.strip().splitlines()) == 1
