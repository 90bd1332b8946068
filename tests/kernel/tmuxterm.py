"""A terminal for tests of the live table: a tmux session, its screen, and
a wait until the screen shows what a test expects.  The `tmux_session`
fixture (in conftest) names a fresh session and kills it afterwards."""
import subprocess
import time


def tmux(*args, check=True):
    return subprocess.run(["tmux", *args], capture_output=True, check=check, timeout=30)


def screen(name, escapes=False):
    """The pane's text now (with its escape sequences when `escapes`)."""
    args = ["capture-pane", "-p", "-t", name] + (["-e"] if escapes else [])
    return tmux(*args).stdout.decode("utf-8", errors="replace")


def wait_for(name, pred, timeout=30):
    """The screen once pred(screen) holds; fails with the last screen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = screen(name)
        if pred(text):
            return text
        time.sleep(0.2)
    raise AssertionError("screen never matched:\n" + screen(name))


def tree_rows(text):
    """{pid: the rest of the row} of the process tree's rows on a screen."""
    import re
    out = {}
    for ln in text.splitlines():
        m = re.match(r"\s*(\d+) (running|exit \d+|SIG\w+|\?) ", ln)
        if m:
            out[int(m.group(1))] = ln[m.end(1):].strip()
    return out
