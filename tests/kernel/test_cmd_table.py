"""`--table -- CMD`: the live table for a command rbtrace starts, the
command on a pseudo-terminal of its own.  Driven in tmux at 80x24 like a
person would (the tree with real pids and exit codes, the command's
output on o, and after q the output and the summary on the terminal), and
on a pty of the test's own, where every byte written can be read back
(nothing of a large output lost; plain mode with -- CMD as it was)."""
import fcntl
import os
import re
import select
import shlex
import struct
import subprocess
import termios
import threading
import time

from conftest import REPO, RBTRACE_ARGV
from test_table import _cells
from tmuxterm import tmux as _tmux, tree_rows as _rows, wait_for as _wait_for

SCRIPT = "echo hello-from-cmd; (exit 3); sleep 1; exit 5"


class _ProcWatch(threading.Thread):
    """Independent of rbtrace: the pids of the script's shell and of its
    `sleep 1`, read from /proc while they run."""

    def __init__(self):
        super().__init__(daemon=True)
        self.root = self.sleep = None
        self.stop = False

    def run(self):
        deadline = time.monotonic() + 60
        while not self.stop and time.monotonic() < deadline and self.sleep is None:
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")[:-1]
                    with open(f"/proc/{name}/stat", "rb") as f:
                        ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if argv == [b"sh", b"-c", SCRIPT.encode()]:
                    self.root = int(name)
                elif argv == [b"sleep", b"1"] and self.root is not None and ppid == self.root:
                    self.sleep = int(name)
            time.sleep(0.01)


def _fits(screen, width, height):
    lines = screen.splitlines()
    return len(lines) <= height and all(_cells(ln) <= width - 1 for ln in lines)


def test_table_of_a_command_tree_output_and_exit_status_at_80x24(tmux_session, tmp_path):
    name, width, height = tmux_session, 80, 24
    status = tmp_path / "status"
    args = [*RBTRACE_ARGV, "trace", "exec,open,exit", "--table", "--", "sh", "-c", SCRIPT]
    # stderr stays on the terminal: the summary is to be seen there after q.
    cmd = " ".join(shlex.quote(a) for a in args) + f"; echo $? > {status}; sleep 60"
    watch = _ProcWatch()
    watch.start()
    try:
        _tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), "-c", REPO,
              cmd)
        screen = _wait_for(name, lambda s: "q quit" in s)
        assert "o output" in screen and _fits(screen, width, height), screen
        # The command ran and exited; the table stays, its status in the footer.
        screen = _wait_for(name, lambda s: "ENDED: sh exit 5 | trace | " in s)
        assert not status.exists(), "rbtrace ended without q"
        watch.join(5)
        assert watch.root and watch.sleep, "the script's processes were never seen in /proc"
        # The log shows the events of the command's processes.
        assert re.search(rf"\s{watch.sleep}\s+sleep\s+exit\s", screen), screen

        _tmux("send-keys", "-t", name, "t")
        screen = _wait_for(name, lambda s: "t log" in s and str(watch.sleep) in s)
        assert _fits(screen, width, height), screen
        assert screen.splitlines()[0].split()[:3] == ["PID", "STATE", "LIFE"], screen
        rows = _rows(screen)
        assert len(rows) == 3, screen
        assert re.match(r"exit 5 .* sh -c 'echo hello-from-cmd; \(exit 3\)", rows[watch.root]), rows
        assert re.match(r"exit 0 .*└─sleep 1$", rows[watch.sleep]), rows
        # The subshell of `(exit 3)`: forked between the two, never exec'd.
        (sub,) = [pid for pid in rows if pid not in (watch.root, watch.sleep)]
        assert watch.root < sub < watch.sleep, rows
        assert re.match(r"exit 3 .*├─\[sh\]$", rows[sub]), rows

        # Key o: what the command wrote, a line of its own.
        assert "hello-from-cmd" not in [ln.strip() for ln in screen.splitlines()]
        _tmux("send-keys", "-t", name, "o")
        screen = _wait_for(name, lambda s: "OUTPUT of the command" in s)
        assert [ln.strip() for ln in screen.splitlines()][1] == "hello-from-cmd", screen
        assert "q quit  o log" in screen and _fits(screen, width, height), screen

        # Back to the log (its last frame stays on the terminal), then q.
        _tmux("send-keys", "-t", name, "o")
        _wait_for(name, lambda s: "OUTPUT of the command" not in s)
        _tmux("send-keys", "-t", name, "q")
        deadline = time.monotonic() + 30
        while not status.exists() or not status.read_text().strip():
            assert time.monotonic() < deadline, "rbtrace did not end after q"
            time.sleep(0.2)
        assert status.read_text().strip() == "5"          # the command's status, as plain mode
        # -J: lines the terminal wrapped, joined again.
        screen = _tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", name).stdout.decode()
        lines = [ln.strip() for ln in screen.splitlines()]
        footer = max(i for i, ln in enumerate(lines) if ln.startswith("q quit"))
        outputs = [i for i, ln in enumerate(lines) if ln == "hello-from-cmd"]
        summary = [i for i, ln in enumerate(lines) if ln.startswith("rbtrace trace: ")]
        assert outputs and summary, screen
        assert footer < outputs[0] < summary[0] and len(outputs) == 1, screen
        assert lines[summary[0]].endswith("; sh exited with status 5"), screen
        assert any(ln.startswith("rbtrace: per process (3, as a tree)") for ln in lines), screen
        assert "Traceback" not in screen
    finally:
        watch.stop = True


def _controlling(fd=0):
    """For preexec_fn: the pty on stdin becomes the controlling terminal of
    the new session, so that a Ctrl-C typed there is a signal."""
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def _on_pty(args, keys=(), cols=100, rows=30, controlling=False, timeout=60):
    """Run `args` with stdin, stdout and stderr on a new pty of `cols` x
    `rows` (with `controlling`, its controlling terminal: a Ctrl-C typed
    is a signal); each of `keys`, (predicate on the text so far, bytes),
    is typed once its predicate holds (a function instead of bytes is
    called with the pty's master).  (exit status, every byte it
    wrote, the pty's name)."""
    master, slave = os.openpty()
    tty = os.ttyname(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                         start_new_session=True, preexec_fn=_controlling if controlling else None)
    os.close(slave)
    out = bytearray()
    keys = list(keys)
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, bytes(out[-3000:]).decode(errors="replace")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                out += data
            while keys and keys[0][0](bytes(out)):
                key = keys.pop(0)[1]
                key(master) if callable(key) else os.write(master, key)
        return p.wait(timeout=30), bytes(out), tty
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def test_every_byte_of_a_large_output_reaches_the_terminal_after_the_table(kernel_ok):
    n = 100_000
    script = f"stty size; seq 1 {n}; exit 7"
    status, out, tty = _on_pty([*RBTRACE_ARGV, "exec", "--table", "--", "sh", "-c", script],
                          keys=[(lambda o: b"ENDED: sh exit 7" in o, b"q")])
    assert status == 7, out[-2000:]
    text = out.decode(errors="replace")
    # Once, whole, in order, after the table's frames and before the summary;
    # the command's terminal was the size of the real one.
    block = "30 100\r\n" + "".join(f"{i}\r\n" for i in range(1, n + 1))
    assert tty not in text                  # (the command has a terminal of its own)
    assert text.count(block) == 1, text[-2000:]
    at = text.index(block)
    assert text.rfind("q quit", 0, at) > 0
    assert text.find("rbtrace exec: ", at + len(block)) > 0
    assert "Traceback" not in text


def test_plain_mode_with_a_command_is_unchanged_on_a_terminal(kernel_ok):
    status, out, tty = _on_pty([*RBTRACE_ARGV, "exec", "--", "sh", "-c",
                           "echo plain-out; tty; exit 4"])
    text = out.decode(errors="replace")
    assert status == 4, text
    # Plain lines (a header, no footer), the command's output among them
    # as it wrote it, on the very terminal rbtrace has.
    lines = text.split("\r\n")
    assert lines[0].split()[:3] == ["TIME", "PID", "PPID"], text
    assert "plain-out" in lines and "q quit" not in text, text
    assert tty in lines, text
    assert "sh exited with status 4" in text


def test_ctrl_c_goes_to_the_command_and_the_table_stays_until_q(kernel_ok):
    started = time.monotonic()
    status, out, _ = _on_pty(
        [*RBTRACE_ARGV, "exec", "--table", "--", "sleep", "30"], controlling=True,
        keys=[(lambda o: b"q quit" in o, b"\x03"),           # Ctrl-C on the real terminal
              (lambda o: b"ENDED: sleep SIGINT" in o, b"q")])
    text = out.decode(errors="replace")
    assert status == 130, text[-2000:]
    assert time.monotonic() - started < 20
    assert "sleep killed by SIGINT (130)" in text


def test_q_while_the_command_runs_hangs_it_up(kernel_ok):
    started = time.monotonic()
    status, out, _ = _on_pty(
        [*RBTRACE_ARGV, "exec", "--table", "--", "sleep", "30"], controlling=True,
        keys=[(lambda o: b"q quit" in o, b"q")])
    text = out.decode(errors="replace")
    assert status == 129, text[-2000:]                     # 128 + SIGHUP, as the summary says
    assert time.monotonic() - started < 20
    assert "sleep killed by SIGHUP (129)" in text and "ENDED" not in text


def test_the_commands_terminal_is_resized_with_the_real_one(kernel_ok):
    def resize(master):
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))

    status, out, _ = _on_pty(
        [*RBTRACE_ARGV, "exec", "--table", "--", "sh", "-c",
         "stty size; sleep 2; stty size"], cols=90, rows=20,
        keys=[(lambda o: b"q quit" in o, b"o"),              # the output view: its first line,
              (lambda o: b"20 90" in o, resize),              # then the real terminal resized
              (lambda o: b"ENDED: sh exit 0" in o, b"q")])
    text = out.decode(errors="replace")
    assert status == 0, text[-2000:]
    assert "20 90\r\n33 111\r\n" in text, text[-2000:]


def test_q_after_duration_while_the_command_still_runs_hangs_it_up(kernel_ok):
    """--duration stops the tracing; rbtrace waits for the command, the
    table still up: q then hangs the command up, and the table goes."""
    started = time.monotonic()
    status, out, _ = _on_pty(
        [*RBTRACE_ARGV, "exec", "--table", "-d", "1", "--", "sleep", "30"],
        keys=[(lambda o: b"q quit" in o and time.monotonic() > started + 4, b"q")])
    text = out.decode(errors="replace")
    assert status == 129, text[-2000:]
    assert time.monotonic() - started < 20
    assert "sleep killed by SIGHUP (129)" in text and "ENDED" not in text
