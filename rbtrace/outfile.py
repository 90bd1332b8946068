"""The -o file: written whole lines at a time, rotated by size
(--rotate-size, --rotate-keep) and reopened on SIGUSR1, for log shippers
that tail it (issue 18, item 4).

Rotation is logrotate's numbering: FILE.1 is the newest old file, FILE.N
the oldest, and FILE.N+1 is gone.  It happens between two lines, so no
line is split, and every line written goes to exactly one file.

SIGUSR1 asks for a reopen, as nginx takes it after logrotate has renamed
its file (postrotate): FILE is opened again, created if it is gone, and
the lines after it go there.  The handler only sets a flag; the file is
reopened by the main loop, before its next write or at its next tick,
never in the middle of a write.

Every file rbtrace begins (the first, each rotation, a reopen that finds
FILE empty) starts with the run's `start` line, its `part` one more than
the file before, so each file can be read on its own.  `part` also makes
the first line of each file differ, which a shipper that recognises files
by a checksum of their first line (Vector's default) needs.

With rotation, a FILE that an earlier run left is rotated at the start
rather than truncated: a restarted daemon loses nothing its shipper had
not read yet.
"""
import os
import stat

from rbtrace import fields, notice
from rbtrace.errors import OutputError, UsageError
from rbtrace.render import Output

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
MODE = 0o666                  # less the umask, as a shell's `>` makes it

_open_files = []              # FileOutputs that a SIGUSR1 reopens


def request_reopen() -> bool:
    """SIGUSR1 (cli's handler): ask every -o file open now to reopen, which
    the main loop does; False when there is none."""
    for f in _open_files:
        f.reopen_wanted = True
    return bool(_open_files)


class FileOutput(Output):
    """An Output to a file named by the user, which it can rotate and reopen.

    `rotate_size`: bytes a file may hold (None: no rotation); a file is
    rotated before a line that would take it past that, unless it holds
    nothing but its start line (a longer line then goes in alone).
    `keep`: old files kept, FILE.1 .. FILE.keep (0: none)."""

    def __init__(self, path, rotate_size=None, keep=0):
        self.path = path
        self.rotate_size = rotate_size
        self.keep = keep
        self.part = 0                 # files begun so far
        self.header = None            # part -> the start line's bytes (begin())
        self.header_bytes = 0         # the size of the current file's start line
        self.size = 0                 # bytes in the current file
        self.reopen_wanted = False
        if rotate_size is not None:
            self._keep_earlier_run()
        super().__init__(self._open(truncate=True), path)
        _open_files.append(self)

    def _keep_earlier_run(self):
        """With rotation, FILE left by an earlier run (a restarted daemon's)
        may not all have been shipped yet: it is rotated, not truncated."""
        try:
            st = os.stat(self.path)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                self._shift()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UsageError(f"cannot rotate {fields.for_message(self.path)} (left by an "
                             f"earlier run): {e.strerror}") from None

    def _open(self, truncate):
        try:
            return os.open(self.path, FLAGS | (os.O_TRUNC if truncate else 0), MODE)
        except OSError as e:
            if self.part == 0:        # the user's path, before anything ran
                raise UsageError(f"cannot open {fields.for_message(self.path)}: "
                                 f"{e.strerror}") from None
            raise

    def regular(self) -> bool:
        return stat.S_ISREG(os.fstat(self.fd).st_mode)

    def close(self):
        if self in _open_files:
            _open_files.remove(self)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def begin(self, header):
        """Write the first file's start line; `header(part)` makes the start
        line of every file begun after it."""
        self.header = header
        self._start_file()

    def _start_file(self):
        self.part += 1
        line = self.header(self.part) if self.header else b""
        if line:
            try:
                Output.write_all(self, line)
            except OutputError as e:
                e.lines_kept = 0          # no event line was in it
                raise
        self.size += len(line)
        self.header_bytes = len(line)

    def tick(self):
        if self.reopen_wanted:
            self._reopen()

    def write_all(self, data: bytes):
        if self.reopen_wanted:
            self._reopen()
        limit = self.rotate_size
        if limit is None or self.size + len(data) <= limit:
            Output.write_all(self, data)
            self.size += len(data)
            return
        pos = 0
        try:
            while pos < len(data):
                room = limit - self.size
                if len(data) - pos <= room:
                    cut = len(data)
                else:
                    # (room <= 0: a reopened FILE already past the size)
                    cut = data.rfind(b"\n", pos, pos + room) + 1 if room > 0 else 0
                    if cut <= pos:            # not one more line fits
                        if self.size > self.header_bytes:
                            self._rotate()
                            continue
                        cut = data.find(b"\n", pos) + 1 or len(data)   # a line alone
                Output.write_all(self, data[pos:cut])
                self.size += cut - pos
                pos = cut
                if pos < len(data):
                    self._rotate()
        except OutputError as e:
            e.lines_kept += data.count(b"\n", 0, pos)
            raise

    def _rotate(self):
        """FILE.keep-1 .. FILE.1 one up, FILE to FILE.1 (FILE gone when no
        old file is kept), then a new FILE with its start line.  FILE is
        renamed only while it is still the file written: one that was moved
        away already (logrotate before its SIGUSR1) is left where it is."""
        try:
            try:
                ours = os.path.samestat(os.stat(self.path), os.fstat(self.fd))
            except FileNotFoundError:
                ours = False
            if ours:
                self._shift()
            fd = self._open(truncate=True)
        except OSError as e:
            error = OutputError(fields.escape_str(self.name), e)
            error.message = f"cannot rotate {fields.escape_str(self.name)}: {e.strerror or e}"
            raise error from e
        os.close(self.fd)
        self.fd, self.size = fd, 0
        self._start_file()

    def _shift(self):
        """FILE to FILE.1, each FILE.i to FILE.i+1, the oldest removed."""
        if self.keep == 0:
            os.unlink(self.path)
            return
        for i in range(self.keep - 1, 0, -1):
            try:
                os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            except FileNotFoundError:
                pass
        os.rename(self.path, f"{self.path}.1")

    def _reopen(self):
        """SIGUSR1: FILE again, appended to (created when gone).  A file
        found empty starts with a start line.  When it can't be opened, the
        lines go on to the file open now, and one line says so."""
        self.reopen_wanted = False
        try:
            fd = self._open(truncate=False)
            size = os.fstat(fd).st_size
        except OSError as e:
            notice.say(f"cannot reopen {fields.for_message(self.path)} on SIGUSR1: "
                       f"{e.strerror}; writing on to the file open before")
            return
        os.close(self.fd)
        self.fd, self.size = fd, size
        if size == 0:
            self._start_file()
