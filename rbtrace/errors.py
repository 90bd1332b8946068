"""Error types raised by the core; only the CLI turns them into messages.

Every error carries a one-line message and, where we know one, a hint that
tells the user what to run or change.  Exit codes are an enum so that the
CLI, the tests and the man page agree on them.
"""
import enum


class Exit(enum.IntEnum):
    OK = 0
    ERROR = 1          # runtime error: environment, compile, kernel
    USAGE = 2          # bad option value or command line
    OUTPUT = 74        # writing the output failed (sysexits.h's EX_IOERR)
    CANNOT_EXECUTE = 126   # `-- CMD`: CMD is not executable (as a shell says)
    NOT_FOUND = 127        # `-- CMD`: CMD is not found (as a shell says)
    HANGUP = 129       # SIGHUP (128 + 1)
    INTERRUPTED = 130  # SIGINT (128 + 2)
    QUIT = 131         # SIGQUIT (128 + 3)
    ALARM = 142        # SIGALRM (128 + 14)
    TERMINATED = 143   # SIGTERM (128 + 15)


class RbtraceError(Exception):
    """A failure the user can act on: message + hint, no traceback."""

    exit_code = Exit.ERROR

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class UsageError(RbtraceError):
    """A bad value given by the user; exits 2 like click's own usage errors."""

    exit_code = Exit.USAGE


class EnvironmentProblem(RbtraceError):
    """Something missing on the machine: privileges, BCC, headers, tracefs."""


class ProbeError(RbtraceError):
    """The probe failed to compile, load or attach."""


class CommandError(RbtraceError):
    """`-- CMD` could not be started: 127 not found, 126 not executable."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class OutputError(RbtraceError):
    """Writing the output failed (ENOSPC, EIO, EBADF...), as opposed to its
    reader going away (EPIPE), which is not an error of ours.

    `lines_kept`: whole lines of the failed write that are in the output
    (a partly written last line was cut off again where that is possible)."""

    exit_code = Exit.OUTPUT

    def __init__(self, name, error, lines_kept=0):
        super().__init__(f"cannot write {name}: {error.strerror or error}")
        self.errno = error.errno
        self.lines_kept = lines_kept
