"""`--table -- CMD`: CMD on a pseudo-terminal of its own, so that the live
table can have the real one.

CMD gets the pty's slave as its controlling terminal and as stdin, stdout
and stderr, with the real terminal's modes and size (kept in step when the
real one is resized).  rbtrace reads the master in its poll loop
(render.TableRenderer.on_input) and keeps everything CMD writes: the whole
of it in an unlinked temporary file, written to the real terminal once the
table has closed, and its last lines, escape sequences taken out, for the
table's output view (key o).  The pty does no output processing, so that
the bytes kept are the very bytes CMD wrote.  Nothing is ever written to the master: keys
go to the table, and a CMD that reads its input waits, as on a terminal
nobody types in (interactive commands need plain mode, without --table).

Closing the master hangs the pty up: the kernel sends SIGHUP to what still
runs in the pty's foreground, as a terminal window closing does.
"""
import codecs
import collections
import errno
import fcntl
import os
import re
import struct
import tempfile
import termios

from rbtrace import fields
from rbtrace.errors import EnvironmentProblem

READ_BYTES = 65536
KEPT_LINES = 2000        # lines kept for the output view: more than any screen
PARTIAL_MAX = 65536      # characters of a line not yet ended (a progress bar) kept

# Escape sequences as a terminal reads them (ECMA-48), in their 7-bit and
# 8-bit (C1) forms: CSI, OSC (ended by BEL or ST), DCS/SOS/PM/APC (ended by
# ST), and two-character ESC sequences.  An unterminated string runs to the
# end of the line.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?")
# Controls left after the escapes: dropped, except those that move the cursor
# on the line (handled by _overlay).
_CONTROL = re.compile(r"[\x00-\x07\x0b-\x0c\x0e-\x1f\x7f-\x9f]")


def _overlay(line: str) -> str:
    """The line as a terminal leaves it: carriage return and backspace move
    back and what follows overwrites, a tab moves to the next multiple of 8."""
    cells = []
    col = 0
    for ch in line:
        if ch == "\r":
            col = 0
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch == "\t":
            col = (col // 8 + 1) * 8
            cells.extend(" " * (col - len(cells)))
        else:
            if col < len(cells):
                cells[col] = ch
            else:
                cells.extend(" " * (col - len(cells)))
                cells.append(ch)
            col += 1
    return "".join(cells).rstrip()


def clean_line(line: str) -> str:
    """One line of CMD's output as inert text: escape sequences and controls
    taken out, CR/BS/TAB applied, whatever else a terminal would act on
    (bidi controls, a lone surrogate) escaped (fields.safe_message)."""
    line = _ESCAPE.sub("", line)
    line = _CONTROL.sub("", line)
    if "\r" in line or "\b" in line or "\t" in line:
        line = _overlay(line)
    return fields.safe_message(line.rstrip())


class OutputLines:
    """The last lines of a byte stream, cleaned (clean_line) as they end."""

    def __init__(self, kept=KEPT_LINES):
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self.lines = collections.deque(maxlen=kept)
        self.partial = ""

    def feed(self, data: bytes):
        text = self.partial + self._decode(data)
        parts = text.split("\n")
        self.partial = parts.pop()[-PARTIAL_MAX:]
        self.lines.extend(clean_line(p) for p in parts[-self.lines.maxlen:])

    def tail(self, width: int, height: int) -> list:
        """The last `height` screen rows of the output, lines longer than
        `width` cells wrapped as a terminal wraps them."""
        from rich.cells import cell_len, chop_cells
        if height <= 0 or width <= 0:
            return []
        rows = []
        lines = list(self.lines)
        if self.partial:
            lines.append(clean_line(self.partial))
        for line in reversed(lines):
            if len(rows) >= height:
                break
            chunks = chop_cells(line, width) if cell_len(line) > width else [line]
            rows[:0] = chunks
        return rows[-height:]


class CommandPty:
    """The pty CMD runs on, its output spooled and tailed.  Made before CMD
    is forked: child_side() in the child, parent_side() in rbtrace."""

    def __init__(self, terminal_fd=0, size_fd=1):
        try:
            self.master, self.slave = os.openpty()
        except OSError as e:
            raise EnvironmentProblem(f"--table: no pseudo-terminal for the command: "
                                     f"{e.strerror or e}",
                                     hint="leave --table out for plain lines") from e
        self.size = None
        try:
            if terminal_fd is not None:
                termios.tcsetattr(self.slave, termios.TCSANOW, termios.tcgetattr(terminal_fd))
        except (termios.error, OSError):
            pass                          # not a terminal: the pty's own defaults
        # No output processing (ONLCR...): the spool keeps the very bytes CMD
        # wrote, and the real terminal processes them when they are written
        # there, as it would have had CMD written to it (plain mode).
        attrs = termios.tcgetattr(self.slave)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        try:
            if size_fd is not None:
                self.resize(*os.get_terminal_size(size_fd))
        except OSError:
            pass
        os.set_blocking(self.master, False)
        try:
            self.spool = tempfile.TemporaryFile(buffering=0)   # unlinked: gone with rbtrace
        except OSError as e:
            os.close(self.master)
            os.close(self.slave)
            raise EnvironmentProblem(f"--table: no temporary file for the command's output "
                                     f"in {tempfile.gettempdir()}: {e.strerror or e}",
                                     hint="set TMPDIR to a writable directory") from e
        self.spool_error = None
        self.bytes = 0
        self.lines = OutputLines()
        self.open = True                 # False once the slave side is closed everywhere

    @property
    def fd(self):
        return self.master

    def child_side(self):
        """In the forked child, before exec: a session of its own, the
        slave its controlling terminal and its standard fds."""
        os.setsid()
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(self.slave, fd)
        os.close(self.slave)
        os.close(self.master)

    def parent_side(self):
        """In rbtrace after the fork: the slave is CMD's alone, so that the
        master reads EOF (EIO) once CMD and its children have all closed it."""
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None

    def read(self) -> bool:
        """Take what CMD wrote; False once nothing more can come."""
        if not self.open:
            return False
        try:
            data = os.read(self.master, READ_BYTES)
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno != errno.EIO:       # EIO: the slave is closed everywhere
                raise
            data = b""
        if not data:
            self.open = False
            return False
        self.bytes += len(data)
        self._spool(data)
        self.lines.feed(data)
        return True

    def drain(self, budget=2.0):
        """Everything CMD has written and rbtrace not yet read (for at most
        `budget` seconds: a child left running may write on for ever)."""
        import time
        end = time.monotonic() + budget
        while self.open and time.monotonic() < end:
            try:
                data = os.read(self.master, READ_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.open = False
                return
            self.bytes += len(data)
            self._spool(data)
            self.lines.feed(data)

    def _spool(self, data):
        if self.spool_error is not None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[self.spool.write(view):]
        except OSError as e:              # ENOSPC: the rest is lost, and said to be
            self.spool_error = (self.bytes - len(view), e)

    def resize(self, cols: int, rows: int):
        """The pty's size, if it changed: the kernel then sends SIGWINCH to
        the pty's foreground processes."""
        if (cols, rows) == self.size or cols <= 0 or rows <= 0:
            return
        self.size = (cols, rows)
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError:
            pass

    def foreground(self, fallback: int) -> int:
        """The process group in the pty's foreground (CMD's, unless CMD gave
        the terminal to a job of its own), for a signal typed on the real
        terminal."""
        try:
            return os.tcgetpgrp(self.master)
        except (OSError, TypeError):      # (TypeError: closed already)
            return fallback

    def close(self):
        """Read what is left, then hang the pty up."""
        if self.master is None:
            return
        self.drain()
        self.parent_side()
        os.close(self.master)
        self.master = None

    def replay(self, out_fd=1):
        """Write everything CMD wrote to `out_fd` (the real terminal, the
        table gone), then drop the spool.  A line on stderr says what was
        lost if the spool could not hold it all."""
        try:
            self.spool.seek(0)
            while True:
                chunk = self.spool.read(READ_BYTES)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out_fd, view):]
        except OSError:
            pass                          # the terminal is gone: nothing to show it on
        finally:
            self.spool.close()
        if self.spool_error is not None:
            kept, e = self.spool_error
            from rbtrace import notice
            notice.say(f"the command's output after its first {kept} bytes was not kept "
                       f"(the temporary file failed: {e.strerror or e}); {self.bytes} bytes "
                       f"were written in all")
