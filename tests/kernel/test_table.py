"""The live table driven like a person would: in tmux, with keys, a
resize, and hostile file names and arguments from real execs."""
import base64
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, run_cli

RBTRACE = [sys.executable, "-m", "rbtrace"]

# Every way a traced string has of attacking a terminal or a renderer.
HOSTILE = [
    b"\x1b[31mred\x1b[0m",                       # CSI colour
    b"\x1b]0;pwned-title\x07",                    # OSC window title, BEL
    b"\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\",  # OSC 8 hyperlink
    b"back\x08\x08\x08\x08spaced",               # backspaces
    b"carriage\rreturn",                          # CR
    b"new\nline\ttab",                            # LF, TAB
    b"c1-\xc2\x9b31m",                            # C1 CSI as UTF-8 (U+009B)
    b"bidi-\xe2\x80\xaeevil\xe2\x80\xac",         # RLO ... PDF
    b"[link=http://evil/]x[/link]",               # rich markup
    b"[/bold][bold red]",
    b"bad-utf8-\xff\xfe\x80",                     # not UTF-8
]


COMM = "rbtrace-hostile"


def _tmux(*args, check=True):
    return subprocess.run(["tmux", *args], capture_output=True, check=check, timeout=30)


@pytest.fixture
def tmux_session(kernel_ok):
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (make setup-test installs it)")
    name = "rbtrace-test-" + uuid.uuid4().hex[:8]
    yield name
    _tmux("kill-session", "-t", name, check=False)


def _screen(name, escapes=False):
    args = ["capture-pane", "-p", "-t", name] + (["-e"] if escapes else [])
    return _tmux(*args).stdout.decode("utf-8", errors="replace")


def _wait_for(name, pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _screen(name)
        if pred(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError("screen never matched:\n" + _screen(name))


def _start_table(name, tmp_path, width=160, height=30, args=()):
    status = tmp_path / "status"
    errfile = tmp_path / "stderr"
    cmd = " ".join([*RBTRACE, "exec", *args]) + f" 2>{errfile}; echo $? > {status}; sleep 60"
    _tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), "-c", REPO, cmd)
    _wait_for(name, lambda s: "q quit" in s)
    return status, errfile


def test_keys_pause_summary_filter_resize_and_quit(tmux_session, tmp_path):
    name = tmux_session
    status, errfile = _start_table(name, tmp_path, args=("--comm", "echo"))
    mark = uuid.uuid4().hex[:12]
    subprocess.run(["/bin/echo", f"first-{mark}"], stdout=subprocess.DEVNULL)
    _wait_for(name, lambda s: f"first-{mark}" in s)

    _tmux("send-keys", "-t", name, " ")                      # pause
    _wait_for(name, lambda s: "PAUSED" in s)
    subprocess.run(["/bin/echo", f"second-{mark}"], stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    screen = _screen(name)
    assert f"second-{mark}" not in screen                     # the view is frozen
    events_line = re.search(r"events (\d+)", screen)
    assert events_line and int(events_line.group(1)) > 0      # counting goes on
    _tmux("send-keys", "-t", name, " ")                      # resume
    _wait_for(name, lambda s: f"second-{mark}" in s and "PAUSED" not in s)

    _tmux("send-keys", "-t", name, "s")                      # summary view
    screen = _wait_for(name, lambda s: "top commands" in s)
    assert "top errors" in screen and "echo" in screen
    _tmux("send-keys", "-t", name, "s")

    _tmux("send-keys", "-t", name, "/")                      # text filter
    _tmux("send-keys", "-t", name, "-l", f"second-{mark}")
    _tmux("send-keys", "-t", name, "Enter")
    screen = _wait_for(name, lambda s: f"filter 'second-{mark}'" in s)
    rows = [ln for ln in screen.splitlines() if re.match(r"\d\d:\d\d:\d\d", ln)]
    assert len(rows) == 1 and f"second-{mark}" in rows[0]

    _tmux("resize-window", "-t", name, "-x", "70", "-y", "12")
    screen = _wait_for(name, lambda s: max(len(ln) for ln in s.splitlines()) <= 70 and "q quit" in s)
    assert all(len(ln) <= 70 for ln in screen.splitlines())
    assert "…" in screen or len(screen.splitlines()) <= 12

    _tmux("send-keys", "-t", name, "q")
    deadline = time.monotonic() + 20
    while not status.exists() or not status.read_text().strip():
        assert time.monotonic() < deadline, "rbtrace did not quit on q"
        time.sleep(0.2)
    assert status.read_text().strip() == "0"
    err = errfile.read_text()
    assert "events delivered" in err and "Traceback" not in err


def _hostile_workload(tmp_path, mark):
    """A symlink with a hostile name to /bin/true, executed with hostile
    arguments; returns the (filename, argv) pairs it exec'd."""
    runs = []
    for i, h in enumerate(HOSTILE):
        # comm after exec is the link's name cut to 15 bytes: one for all.
        link = os.path.join(os.fsencode(tmp_path),
                            COMM.encode() + str(i).encode() + b"-" + h.replace(b"/", b"_"))
        os.symlink(b"/bin/true", link)
        argv = [link, mark.encode(), h]
        subprocess.run(argv)
        runs.append((link, argv))
    return runs


def test_hostile_names_stay_data_in_the_table(tmux_session, tmp_path):
    name = tmux_session
    # Wide enough that no cell is cut: every escape must be visible whole.
    _start_table(name, tmp_path, width=420, height=40, args=("--comm", COMM))
    title_before = _tmux("display", "-p", "-t", name, "#{pane_title}").stdout
    mark = uuid.uuid4().hex[:12]
    _hostile_workload(tmp_path, mark)
    screen = _wait_for(name, lambda s: s.count(mark) >= len(HOSTILE))
    rows = [ln for ln in screen.splitlines() if mark in ln]
    assert len(rows) == len(HOSTILE)                          # one row each, no extra lines
    text = "\n".join(rows)
    for visible in (r"\x1b[31mred\x1b[0m", r"\x1b]0;pwned-title\x07", r"\x08", r"\r",
                    r"\n", r"\t", r"\u009b", r"\u202e", "[link=http://evil/]x[/link]",
                    "[/bold][bold red]", r"\xff\xfe\x80"):
        assert visible in text, visible
    raw = _screen(name, escapes=True)
    assert "\x1b]8;" not in raw and "\x1b]0;" not in raw      # no hyperlink, no title
    assert _tmux("display", "-p", "-t", name, "#{pane_title}").stdout == title_before
    _tmux("send-keys", "-t", name, "q")


def test_hostile_names_escaped_in_plain_and_exact_in_json(kernel_ok, tmp_path):
    mark = uuid.uuid4().hex[:12]
    plain = subprocess.Popen([*RBTRACE, "exec", "--comm", COMM, "-d", "8"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    js = subprocess.Popen([*RBTRACE, "exec", "--json", "--comm", COMM, "-d", "8"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    plain.stdout.readline()                                  # header: attached
    js.stdout.readline()                                     # start line: attached
    runs = _hostile_workload(tmp_path, mark)
    pout, _ = plain.communicate(timeout=60)
    jout, _ = js.communicate(timeout=60)

    lines = [ln for ln in pout.split(b"\n") if mark.encode() in ln]
    assert len(lines) == len(HOSTILE)
    for ln in lines:
        assert not re.search(rb"[\x00-\x1f\x7f]", ln), ln    # no C0 controls, no DEL
        text = ln.decode("utf-8")                            # valid UTF-8 always
        assert not re.search("[\u0080-\u009f\u202a-\u202e\u2066-\u2069]", text), text

    import json
    events = [json.loads(x) for x in jout.splitlines()]
    ours = [e for e in events if e.get("type") == "exec" and mark in e.get("argv", [])[1:2]]
    assert len(ours) == len(HOSTILE)

    def exact(e, key):
        b64 = e.get(key + "_b64")
        if b64 is None:
            return e[key].encode()
        return base64.b64decode(b64)

    def exact_argv(e):
        if "argv_b64" in e:
            return [base64.b64decode(x) for x in e["argv_b64"]]
        return [a.encode() for a in e["argv"]]

    got = sorted((exact(e, "filename"), tuple(exact_argv(e))) for e in ours)
    want = sorted((link, tuple(argv)) for link, argv in runs)
    assert got == want
