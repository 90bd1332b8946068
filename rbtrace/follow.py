"""Follow one command, or one running process, and everything it starts.

`rbtrace exec -- CMD` forks CMD at once but holds it before exec until
the probes are attached and its pid is in the probe's `followed` map
(probes/common.h); from then on the kernel adds every child it forks.
`--pid P --children` seeds the same map with P and the descendants it
already has.

A command's failure to start is reported the way a shell reports it:
127 when it is not found, 126 when it can't be executed.
"""
import ctypes
import errno
import os
import signal
import stat
import sys

from rbtrace.errors import CommandError, EnvironmentProblem, Exit, UsageError
from rbtrace.fields import for_message

NOT_FOUND, NOT_EXECUTABLE = Exit.NOT_FOUND, Exit.CANNOT_EXECUTE


def resolve(name: str, path_env=None) -> str:
    """The file a shell would execute for `name`, or CommandError.

    As execvp(3) and shells do: a name with a slash is used as is, others
    are looked up in $PATH.  Resolving before the fork means CMD is started
    with one execve, as under strace, not one attempt per $PATH entry."""
    if not name:
        raise CommandError("'': command not found", NOT_FOUND)
    if "/" in name:
        return _check_file(name)
    path_env = os.environ.get("PATH", os.defpath) if path_env is None else path_env
    denied = None
    for d in path_env.split(":"):
        candidate = os.path.join(d or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        denied = denied or candidate
    if denied:
        return _check_file(denied)
    raise CommandError(f"{for_message(name)}: command not found", NOT_FOUND)


def _check_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise CommandError(f"{for_message(path)}: {e.strerror}",
                           NOT_FOUND if e.errno in (errno.ENOENT, errno.ENOTDIR) else NOT_EXECUTABLE)
    if stat.S_ISDIR(st.st_mode):
        raise CommandError(f"{for_message(path)}: Is a directory", NOT_EXECUTABLE)
    if not os.access(path, os.X_OK) or not stat.S_ISREG(st.st_mode):
        raise CommandError(f"{for_message(path)}: Permission denied", NOT_EXECUTABLE)
    return path


def initial_environment() -> dict:
    """The environment rbtrace was started with, for CMD.

    Python changes its own at start-up: with no locale set it adds
    LC_CTYPE=C.UTF-8 (PEP 538 locale coercion), which CMD must not inherit.
    /proc/self/environ still holds what exec gave the process."""
    try:
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except OSError:
        return dict(os.environb)
    env = {}
    for item in block.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key] = value
    return env


def shell_status(wait_status: int) -> int:
    """A wait status as a shell's $?: the exit code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Command:
    """CMD forked and held before exec until `release()`."""

    waits_for_end = True          # rbtrace's exit status is CMD's
    end_reason = "command exited"

    def __init__(self, argv):
        self.argv = list(argv)
        self.path = resolve(self.argv[0])
        self.pid = None
        self.pidfd = None
        self.wait_status = None
        self.released = False
        self.terminal = None      # a cmdpty.CommandPty with --table: CMD's own terminal

    def start(self):
        env = initial_environment()
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:                      # the child: never returns
            code = NOT_FOUND
            try:
                os.close(go_w)
                os.close(err_r)
                if self.terminal is not None:
                    self.terminal.child_side()
                # Python ignores these at start-up; exec would keep them ignored.
                for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())   # exec keeps a mask
                # Nothing between the release and the exec: CMD is followed
                # from here on, and a close() here would be traced as CMD's.
                # go_r is close-on-exec (PEP 446), like err_w.
                if os.read(go_r, 1) == b"g":
                    try:
                        os.execve(self.path, self.argv, env)
                    except OSError as e:
                        code = NOT_FOUND if e.errno == errno.ENOENT else NOT_EXECUTABLE
                        os.write(err_w, f"{e.errno}".encode())
            finally:
                os._exit(code)
        os.close(go_r)
        os.close(err_w)
        if self.terminal is not None:
            self.terminal.parent_side()
        self.pid = pid
        self._go, self._err = go_w, err_r
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError as e:             # ENOSYS before Linux 5.3, EMFILE...
            self.abandon()               # held, never exec'd: kill and reap it
            raise EnvironmentProblem(f"pidfd_open: {e.strerror}",
                                     hint="following a command needs Linux 5.3 or later"
                                     if e.errno == errno.ENOSYS else None) from e

    def roots(self):
        return [self.pid]

    def release(self):
        """Let CMD exec.  Raises CommandError if the exec fails."""
        os.write(self._go, b"g")
        os.close(self._go)
        self.released = True
        report = os.read(self._err, 64)    # EOF once exec succeeded (CLOEXEC)
        os.close(self._err)
        if report:
            self.wait()
            err = int(report)
            raise CommandError(f"{for_message(self.path)}: {os.strerror(err)}",
                               NOT_FOUND if err == errno.ENOENT else NOT_EXECUTABLE)

    def exited(self) -> bool:
        return self.wait_status is not None

    def reap(self):
        """CMD's pidfd is readable: it exited; take its status."""
        self.wait()

    def wait(self) -> int:
        if self.wait_status is None:
            _, self.wait_status = os.waitpid(self.pid, 0)
        return self.wait_status

    def forward(self, signum, from_kernel: bool) -> bool:
        """Give a signal meant to stop rbtrace to CMD instead, as a shell
        does with its foreground job.  One the kernel sent (a terminal's
        Ctrl-C) went to CMD's process group too: it is not sent twice.
        False once CMD has exited: then the signal is rbtrace's.

        On a terminal of its own (--table) CMD is not in the real terminal's
        foreground, so a signal typed there (Ctrl-C) is passed on to the
        pty's foreground process group, where the terminal would have sent it."""
        if self.exited():
            return False
        if from_kernel and self.terminal is not None:
            try:
                os.killpg(self.terminal.foreground(self.pid), signum)
            except ProcessLookupError:
                pass
        elif not from_kernel:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
        return True

    def hang_up(self):
        """CMD's own terminal (--table) goes away: SIGHUP, then SIGCONT,
        to CMD and to the terminal's foreground process group, as the
        kernel sends them when a terminal hangs up."""
        if self.exited():
            return
        groups = {self.terminal.foreground(self.pid)} if self.terminal is not None else set()
        for sig in (signal.SIGHUP, signal.SIGCONT):
            try:
                os.kill(self.pid, sig)          # not reaped yet: still CMD
            except ProcessLookupError:
                pass
            for group in groups:
                try:
                    os.killpg(group, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def abandon(self):
        """rbtrace failed before CMD ran: CMD must not run untraced."""
        if self.pid is None or self.released or self.exited():
            return
        # Killed before its pipe closes: the EOF would also end it without
        # exec, but with its own status, not the SIGKILL the summary reports.
        os.kill(self.pid, signal.SIGKILL)
        os.close(self._go)
        os.close(self._err)
        self.wait()

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def summary(self) -> dict:
        st = self.wait_status
        sig = None
        if st is not None and os.WIFSIGNALED(st):
            sig = signal.Signals(os.WTERMSIG(st)).name
        # Valid UTF-8 for JSON: an argument that is not shows U+FFFD (CMD's
        # exec event has the exact bytes, as argv_b64).
        argv = [os.fsencode(a).decode("utf-8", "replace") for a in self.argv]
        return {"command": {"argv": argv, "pid": self.pid,
                            "status": shell_status(st) if st is not None else None,
                            "signal": sig}}


def check_process(pid: int, option="--pid", thread=False):
    """UsageError unless `pid` is a running process (a thread group id), or
    with `thread` a running thread: a filter on a pid that is not one, a
    zombie or a kernel thread (which makes no system calls) would trace
    nothing, silently, until stopped."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
    except FileNotFoundError:
        raise UsageError(f"{option} {pid}: no such {'thread' if thread else 'process'}")
    except OSError as e:
        raise UsageError(f"{option} {pid}: cannot read /proc/{pid}/status: {e.strerror}")
    # A leader thread that exited shows Z while the other threads of its
    # process run on (Threads counts them, the zombie leader included).
    if status.get(b"State", b"").split()[:1] in ([b"Z"], [b"X"]) and (
            thread or int(status.get(b"Threads", 1)) <= 1):
        raise UsageError(f"{option} {pid} has exited (a zombie, not yet reaped by its parent): "
                         f"it can't make another system call")
    # Kthread: since Linux 6.3; before it, a kernel thread has no Vm lines.
    if status.get(b"Kthread", b"").strip() == b"1" or (
            b"Kthread" not in status and b"VmSize" not in status):
        raise UsageError(f"{option} {pid} is a kernel thread: it makes no system calls")
    tgid = int(status.get(b"Tgid", pid))
    if tgid != pid and not thread:
        raise UsageError(f"{option} {pid} is a thread of process {tgid}: "
                         f"{option} takes a process id")


class RunningProcess:
    """`--pid P --children`: P, already running, and its descendants."""

    waits_for_end = False
    end_reason = "process exited"

    def __init__(self, pid: int):
        self.pid = pid                    # checked by the CLI (check_process)
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError as e:
            if e.errno not in (errno.ESRCH, errno.EINVAL):
                raise EnvironmentProblem(f"pidfd_open: {e.strerror}",
                                         hint="--children needs Linux 5.3 or later"
                                         if e.errno == errno.ENOSYS else None) from e
            check_process(pid)            # gone since, or not a process leader
            raise UsageError(f"--pid {pid}: no such process")
        self.released = True
        self._exited = False

    def start(self):
        pass

    def roots(self):
        return [self.pid]

    def release(self):
        pass

    def exited(self) -> bool:
        return self._exited

    def reap(self):
        self._exited = True      # not our child: no status to take


    def abandon(self):
        pass

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def summary(self) -> dict:
        return {"followed_root": self.pid}


def descendants(roots, proc="/proc") -> set:
    """Processes whose parent chain reaches one of `roots`, from /proc."""
    parent = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as f:
                text = f.read()
        except OSError:
            continue                      # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        after = text[text.rindex(b")") + 2:].split()
        parent[int(name)] = int(after[1])
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found - set(roots)


def start_times(pids, proc="/proc") -> dict:
    """{pid: start time} of those of `pids` that are running now (not a
    zombie).  A pid and its start time name one process: a later process
    that took the same pid has another start time."""
    out = {}
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/stat", "rb") as f:
                text = f.read()
        except OSError:
            continue                      # gone
        # pid (comm) state ppid ... starttime is the 22nd field; comm may
        # hold spaces and parentheses.
        after = text[text.rindex(b")") + 2:].split()
        if after[0] in (b"Z", b"X"):
            continue
        out[pid] = int(after[19])
    return out


SI_KERNEL = 0x80           # si_code of a signal the kernel sent: a terminal's Ctrl-C
_SIGSET_BYTES = 128        # sizeof(sigset_t) in glibc
_SIGINFO_BYTES = 128       # sizeof(struct signalfd_siginfo)


class SignalFd:
    """Signals (the session's stop signals: SIGINT, SIGTERM, SIGHUP,
    SIGQUIT, SIGALRM) as a pollable fd, with who sent them.

    A Ctrl-C on the terminal goes to the whole foreground process group,
    CMD included, and arrives with si_code SI_KERNEL; one sent with
    kill(2) (by timeout(1), a supervisor, a user) comes as SI_USER and
    reached rbtrace alone.  Python's signal handlers can't tell them apart,
    signalfd(2) can.  While it is open the signals are blocked and come
    only through it."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        from rbtrace.kernel import libc
        self.signals = set(signals)
        mask = ctypes.create_string_buffer(_SIGSET_BYTES)
        bits = sum(1 << (int(s) - 1) for s in self.signals)
        mask[:8] = bits.to_bytes(8, "little")
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        fd = libc().signalfd(-1, mask, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
            raise OSError(err, f"signalfd: {os.strerror(err)}")
        self.fd = fd

    def read(self):
        """[(signal number, sent by the kernel?)] of the signals waiting."""
        out = []
        while True:
            try:
                info = os.read(self.fd, _SIGINFO_BYTES)
            except BlockingIOError:
                return out
            signo = int.from_bytes(info[0:4], "little")
            code = int.from_bytes(info[8:12], "little", signed=True)
            out.append((signo, code == SI_KERNEL))

    def close(self):
        """Unblock the signals.  Any still waiting are delivered to the
        handlers in place, as if they had just arrived."""
        os.close(self.fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
