"""The live table driven like a person would: in tmux, with keys, a
resize, and hostile file names and arguments from real execs."""
import base64
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO
from tmuxterm import screen as _screen, tmux as _tmux, wait_for as _wait_for

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


def _start_table(name, tmp_path, width=160, height=30, args=()):
    """rbtrace in a tmux pane of that size: `exec ARGS`, or `PROBE ARGS`
    when ARGS starts with a probe name."""
    status = tmp_path / "status"
    errfile = tmp_path / "stderr"
    if not args or args[0].startswith("-"):
        args = ("exec", *args)
    cmd = " ".join(shlex.quote(a) for a in [*RBTRACE, *args]) + f" 2>{errfile}; echo $? > {status}; sleep 60"
    _tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), "-c", REPO, cmd)
    _wait_for(name, lambda s: "q quit" in s)
    return status, errfile


def _named_python(tmp_path):
    """/usr/bin/python3 under a fresh name: its events carry that comm and
    no one else's do, so the counts on screen are the workload's alone."""
    name = "rbt-" + uuid.uuid4().hex[:10]
    link = tmp_path / name
    os.symlink(os.path.realpath("/usr/bin/python3"), link)
    return name, str(link)


# Execs that fail in the process that asks: 3 ENOENT, then 2 EACCES (a file
# without an x bit, refused to root too).
FAILING_EXECS = """
import os, sys
for p in ["/nonexistent-rbt-1", "/nonexistent-rbt-2", "/nonexistent-rbt-3", sys.argv[1], sys.argv[1]]:
    try:
        os.execv(p, [p])
    except OSError:
        pass
"""


def _cells(text):
    from rich.cells import cell_len
    return cell_len(text)


def test_keys_pause_summary_filter_resize_and_quit(tmux_session, tmp_path):
    name = tmux_session
    comm, link = _named_python(tmp_path)
    noexec = tmp_path / "noexec"
    noexec.write_text("not a program\n")
    status, errfile = _start_table(name, tmp_path, args=("--comm", comm))
    mark = uuid.uuid4().hex[:12]
    subprocess.run([comm, "-c", "pass", f"first-{mark}"], executable=link)
    _wait_for(name, lambda s: f"first-{mark}" in s)

    _tmux("send-keys", "-t", name, " ")                      # pause
    _wait_for(name, lambda s: "PAUSED" in s)
    second = subprocess.Popen([comm, "-c", "pass", f"second-{mark}"], executable=link)
    second.wait()
    screen = _wait_for(name, lambda s: "events 2 " in s)     # counting goes on...
    assert f"second-{mark}" not in screen                     # ...the view is frozen
    _tmux("send-keys", "-t", name, " ")                      # resume
    _wait_for(name, lambda s: f"second-{mark}" in s and "PAUSED" not in s)

    # 1 exec that works and 5 that fail, all with our comm.
    subprocess.run([comm, "-c", FAILING_EXECS, str(noexec), f"third-{mark}"], executable=link,
                   check=True)
    _wait_for(name, lambda s: "events 8 " in s)
    _tmux("send-keys", "-t", name, "s")                      # summary view
    screen = _wait_for(name, lambda s: "top commands" in s and f"8 {comm}" in s)
    body = screen.split("top commands", 1)[1]
    assert re.search(rf"(^|\s)8 {comm}(\s|$)", body, re.M), screen
    assert re.search(r"(^|\s)3 ENOENT(\s|$)", body, re.M), screen
    assert re.search(r"(^|\s)2 EACCES(\s|$)", body, re.M), screen
    assert "files" not in screen                              # exec counts no files
    _tmux("send-keys", "-t", name, "s")

    _tmux("send-keys", "-t", name, "/")                      # text filter
    _tmux("send-keys", "-t", name, "-l", f"second-{mark}")
    _tmux("send-keys", "-t", name, "Enter")
    screen = _wait_for(name, lambda s: f"filter 'second-{mark}'" in s)
    rows = [ln for ln in screen.splitlines() if re.match(r"\d\d:\d\d:\d\d", ln)]
    assert len(rows) == 1 and f"second-{mark}" in rows[0]
    assert re.search(rf"\s{second.pid}\s", rows[0])

    # From 160x30 to 70x12: the table is laid out again for 69 cells.  The
    # argv (longer than the room) is cut with "…", the pid stays whole, the
    # less important columns are gone whole.
    _tmux("resize-window", "-t", name, "-x", "70", "-y", "12")
    screen = _wait_for(name, lambda s: "FILENAME" not in s and "PID" in s)
    lines = screen.splitlines()
    assert all(_cells(ln) <= 69 for ln in lines), screen
    header = [ln for ln in lines if "PID" in ln][0].split()
    assert header == ["TIME", "PID", "COMM", "RET", "ARGV"], screen
    (row,) = [ln for ln in lines if re.match(r"\d\d:\d\d:\d\d", ln)]
    assert re.search(rf"\s{second.pid}\s", row) and row.endswith("…"), row
    assert f" {comm[:5]}" in row and f" {comm} -c pass" in row

    _tmux("send-keys", "-t", name, "q")
    deadline = time.monotonic() + 60
    while not status.exists() or not status.read_text().strip():
        assert time.monotonic() < deadline, "rbtrace did not quit on q"
        time.sleep(0.2)
    assert status.read_text().strip() == "0"
    err = errfile.read_text()
    assert "8 events delivered" in err and "Traceback" not in err


def _open_files(base, children=3):
    """The files the open workload uses, made before rbtrace starts: per
    child one that exists (a CJK name, deep in a long directory) and one
    that doesn't."""
    deep = base / ("long-directory-name-" * 3) / "目录"
    deep.mkdir(parents=True)
    files = []
    for i in range(children):
        present = deep / f"数据-{i}-file.txt"
        present.write_text("x")
        files.append((present, base / f"missing-{i}"))
    return files


def _open_workload(files, results):
    """Child i opens its file i+1 times and its missing file once; returns
    (pid, fd or error, path) per open, as the children saw them, in order."""
    opened = []
    for i, (present, missing) in enumerate(files):
        pid = os.fork()
        if pid == 0:
            try:
                fds = [os.open(present, os.O_RDONLY) for _ in range(i + 1)]
                try:
                    os.open(missing, os.O_RDONLY)
                except FileNotFoundError:
                    pass
                with open(results, "a") as f:
                    f.write(f"{os.getpid()} {' '.join(map(str, fds))}\n")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        opened.extend([(pid, k, str(present)) for k in range(i + 1)])
        opened.append((pid, None, str(missing)))
    fds = {int(ln.split()[0]): ln.split()[1:] for ln in results.read_text().splitlines()}
    return [(pid, "ENOENT" if k is None else fds[pid][k], path) for pid, k, path in opened]


@pytest.mark.parametrize("width, height", [(80, 24), (60, 15), (40, 10)])
def test_open_table_shows_real_pids_and_paths_at_small_sizes(tmux_session, tmp_path, width, height):
    name = tmux_session
    base = tmp_path / "w"
    files = _open_files(base)
    _start_table(name, tmp_path, width=width, height=height, args=("open", "--path", str(base)))
    opens = _open_workload(files, tmp_path / "results")
    screen = _wait_for(name, lambda s: f"events {len(opens)} " in s)
    lines = screen.splitlines()
    assert len(lines) <= height and all(_cells(ln) <= width - 1 for ln in lines), screen
    header = lines[0].split()
    assert header == {80: ["TIME", "PID", "COMM", "FD/ERR", "FLAGS", "PATH"],
                      60: ["TIME", "PID", "COMM", "FD/ERR", "PATH"],
                      40: ["PID", "COMM", "FD/ERR", "PATH"]}[width], screen
    rows = [ln for ln in lines[1:-2] if ln.strip()]
    assert len(rows) == min(len(opens), height - 3), screen
    at = header.index("PID")
    for row, (pid, result, path) in zip(rows, opens[-len(rows):]):
        words = row.split()
        assert words[at] == str(pid) and words[at + 2] == result, (row, pid, result)
        cell = words[-1]
        assert cell == path or (cell.startswith("…") and path.endswith(cell[1:])
                                and _cells(cell) >= 16), (row, path)
        if "FLAGS" in header:                                 # python opens with O_CLOEXEC
            flags = words[at + 3]
            assert flags == "RDONLY|CLOEXEC" or (flags.endswith("…") and
                                                 "RDONLY|CLOEXEC".startswith(flags[:-1]))
    if width < 60:
        return
    _tmux("send-keys", "-t", name, "s")                      # top files, counted
    screen = _wait_for(name, lambda s: "top files" in s)
    for pid, result, path in set(opens):
        times = sum(1 for o in opens if o[2] == path)
        # count, a space, then the path or its end after "…"
        assert re.search(rf"(^|\s){times} (…\S*)?{re.escape(path[-12:])}(\s|$)", screen, re.M), \
            (times, path, screen)
    _tmux("send-keys", "-t", name, "q")


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


def _seconds_of_day(hms):
    h, m, s = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_plain_time_is_local_as_date_shows_it_and_utc_with_the_option(kernel_ok, tmp_path):
    """TIME against date(1) run under the same TZ (UTC+5:30, far from the
    machine's zone), and with --utc against date -u; ARGV quoted so that
    a shell reads back the exact arguments."""
    mark = uuid.uuid4().hex[:12]
    env = {**os.environ, "TZ": "XST-5:30"}
    tracers = {}
    for utc in (False, True):
        p = subprocess.Popen([*RBTRACE, "exec", *(["--utc"] if utc else [])], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout.readline().split()[:2] == [b"TIME", b"PID"]     # attached
        tracers[utc] = p
    local = subprocess.run(["/bin/date", f"+%H:%M:%S.%N local-{mark}"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()[0]
    utc = subprocess.run(["/bin/date", "-u", f"+%H:%M:%S.%N utc-{mark}"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()[0]
    argvs = [["/bin/echo", "a b", "c", mark], ["/bin/echo", "a", "b c", mark],
             ["/bin/echo", "", "it's", mark]]
    for argv in argvs:
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    out = {}
    for key, p in tracers.items():
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 130, stderr                        # SIGINT, as documented
        out[key] = [ln for ln in stdout.decode().splitlines() if mark in ln]
    for key, date_said, which in ((False, local, "local"), (True, utc, "utc")):
        (line,) = [ln for ln in out[key] if f"{which}-{mark}" in ln]
        shown = line.split()[0]
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", shown), line
        # date reads the clock just after its exec: the same time, to the
        # second or so; a wrong zone is hours away.
        late = (_seconds_of_day(date_said) - _seconds_of_day(shown)) % 86400
        assert late < 60, (which, shown, date_said)
    for key in (False, True):
        echoes = [ln.split(" /bin/echo ", 1)[1] for ln in out[key] if "/bin/echo" in ln]
        assert echoes == [f"/bin/echo 'a b' c {mark}", f"/bin/echo a 'b c' {mark}",
                          f"/bin/echo '' 'it'\\''s' {mark}"], echoes
        assert [shlex.split(e) for e in echoes] == argvs
