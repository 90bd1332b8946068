"""rbtrace show against a live run (issue #16, item 5): a recording of
`rbtrace trace exec,open,exit --json -- sh -c SCRIPT` replayed gives the
summary the live run gave: processes, kinds, errors, exit statuses,
counts; from the file, from stdin, as JSON and as plain lines, and with
garbage lines put into the file (counted exactly, changing nothing)."""
import collections
import json
import os
import random
import subprocess

import pytest

from conftest import REPO, RBTRACE_ARGV, parse_json_lines, run_cli
from tmuxterm import tmux as _tmux, wait_for as _wait_for

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}
if os.environ.get("RBTRACE_CACHE_DIR"):
    ENV["RBTRACE_CACHE_DIR"] = os.environ["RBTRACE_CACHE_DIR"]

# Subshells, a pipe, children that fail, one killed by a signal, and a
# non-zero status of the script itself.
SCRIPT = r"""
( exit 4 )
sh -c 'cat /nonexistent-rbtrace-show 2>/dev/null; exit 7'
sh -c 'kill -TERM $$'
( ( exit 0 ) & wait; cat /etc/hostname >/dev/null; exit 6 )
ls / | wc -l >/dev/null
exit 3
"""


def show(*args, stdin=None):
    p = subprocess.run([*RBTRACE_ARGV, "show", *map(str, args)], cwd=REPO, input=stdin,
                       capture_output=True, timeout=300, env={**os.environ, **ENV})
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.fixture(scope="module")
def recorded(kernel_ok, tmp_path_factory):
    """(the recording's path, its lines, the live run's stderr)."""
    path = tmp_path_factory.mktemp("show") / "run.jsonl"
    p = run_cli("trace", "exec,open,exit", "--json", "-o", str(path), "--", "/bin/sh", "-c",
                SCRIPT, env=ENV)
    assert p.returncode == 3, p.stderr
    r = parse_json_lines(path.read_text())
    s = r.summary
    assert s["dropped"] == 0 and s["missed_by_kernel"] == 0, s
    # The live summary is worth comparing with: the script's statuses are
    # in it (what the shell got from wait: 4, 7, SIGTERM, 6, 3).
    ends = collections.Counter((p["exit_code"], p["signal"]) for p in s["processes"])
    for want in ((4, None), (7, None), (None, "SIGTERM"), (6, None), (3, None), (0, None)):
        assert ends[want] >= 1, ends
    assert s["kinds"]["open"]["errors"].get("ENOENT"), s["kinds"]
    return path, r, p.stderr.decode()


def same_summary(replayed, live):
    """Equal, member by member; processes as a set (a live run's order
    depends on where its ring segments ended)."""
    def key(s):
        return {**s, "processes": sorted(s["processes"], key=lambda p: p["process"])}
    assert key(replayed) == key(live)
    assert [k for k in replayed] == [k for k in live]


def test_json_replay_gives_the_live_runs_summary_and_events(recorded):
    path, live, _ = recorded
    code, out, err = show(path, "--json")
    assert code == 0, err
    r = parse_json_lines(out)
    same_summary(r.summary, live.summary)
    assert r.events == live.events
    # The start line as recorded, less `part`: the number of the -o file
    # the live run wrote it to, which is no member of the replay's output.
    assert live.lines[0]["part"] == 1
    assert r.lines[0] == {k: v for k, v in live.lines[0].items() if k != "part"}
    assert "skipped" not in err


def test_stdin_replay_is_the_file_replay(recorded):
    path, live, _ = recorded
    code, from_file, _ = show(path, "--json")
    code2, from_stdin, err = show("-", "--json", stdin=path.read_bytes())
    assert code == code2 == 0, err
    assert from_stdin == from_file
    same_summary(parse_json_lines(from_stdin).summary, live.summary)


def test_plain_replay_prints_the_live_runs_end_summary(recorded):
    from rbtrace.procsum import table_lines
    path, live, live_err = recorded
    code, out, err = show(path)
    assert code == 0, err
    # One plain line per event under the header.
    assert len(out.splitlines()) == len(live.events) + 1
    lines = err.splitlines()
    # The tree the live run's summary makes, and its one line, the same.
    want = table_lines(live.summary, tree=True)
    assert len(want) > 3
    assert lines[:2] == want[:2]
    assert collections.Counter(lines[:len(want)]) == collections.Counter(want)
    assert lines[-1] == live_err.splitlines()[-1]
    assert "exited with status 3" in lines[-1]


def test_garbage_lines_are_counted_and_change_nothing(recorded, tmp_path):
    path, live, _ = recorded
    raw = path.read_bytes().splitlines()
    junk = [b"garbage", b"{", b"[]", b'{"type":"nosuch"}', b'{"type":"exec","seq":1}',
            json.dumps({**live.events[0], "pid": -1}).encode(),
            b"\x00\x01\x02", b"Terminated"]
    rnd = random.Random(1)
    for j in junk:
        raw.insert(rnd.randrange(1, len(raw)), j)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(raw) + b"\n")
    code, out, err = show(bad, "--json")
    assert code == 0, err
    r = parse_json_lines(out)
    same_summary(r.summary, live.summary)
    assert r.events == live.events
    assert f"{len(junk)} lines of {bad} skipped" in err, err
    # And as plain lines, from stdin.
    code, out, err = show("-", stdin=bad.read_bytes())
    assert code == 0 and len(out.splitlines()) == len(live.events) + 1
    assert f"{len(junk)} lines of standard input skipped" in err


def test_a_filtered_replay_counts_the_events_kept(recorded):
    path, live, _ = recorded
    failing = [e for e in live.events
               if (e["type"] == "exit" and e["status"] != 0)
               or (e["type"] != "exit" and e["ret"] < 0)]
    code, out, err = show(path, "--json", "-x")
    r = parse_json_lines(out)
    assert code == 0 and r.events == failing
    s = r.summary
    assert s["delivered"] == len(failing)
    assert sum(k["events"] for k in s["kinds"].values()) == len(failing)
    # The recorded run's counters stay the run's.
    assert (s["seen"], s["submitted"]) == (live.summary["seen"], live.summary["submitted"])
    pid = live.summary["command"]["pid"]
    code, out, _ = show(path, "--json", "-p", pid, "-n", "sh")
    r = parse_json_lines(out)
    assert r.events and r.events == [e for e in live.events
                                     if e["pid"] == pid and e["comm"] == "sh"]


# --- the table, in tmux ---------------------------------------------------------------

@pytest.mark.parametrize("from_stdin", [False, True])
def test_the_table_shows_the_recording_until_q(recorded, tmux_session, tmp_path, from_stdin):
    """On a terminal: the table with the recording's last events (real
    pids), its summary view (s), kept on screen until q; then the live
    run's end summary on stderr.  From stdin, the keys come from the
    terminal (/dev/tty)."""
    import shlex
    path, live, live_err = recorded
    status, errfile = tmp_path / "status", tmp_path / "stderr"
    rbtrace = " ".join(shlex.quote(a) for a in RBTRACE_ARGV)
    show_cmd = (f"cat {shlex.quote(str(path))} | {rbtrace} show -" if from_stdin
                else f"{rbtrace} show {shlex.quote(str(path))}")
    cmd = f"{show_cmd} 2>{errfile}; echo $? > {status}; sleep 60"
    _tmux("new-session", "-d", "-s", tmux_session, "-x", "100", "-y", "30", "-c", REPO,
          "env", *[f"{k}={v}" for k, v in ENV.items()], "sh", "-c", cmd)
    n = len(live.events)
    screen = _wait_for(tmux_session, lambda s: f"events {n} |" in s)
    last = live.events[-1]          # the script's own exit: its pid on screen
    assert last["type"] == "exit" and f" {last['pid']} " in screen
    assert "exit" in screen.splitlines()[-3]
    _tmux("send-keys", "-t", tmux_session, "s")
    screen = _wait_for(tmux_session, lambda s: "top commands" in s)
    assert "ENOENT" in screen
    assert not status.exists() or not status.read_text().strip()   # still up, waiting
    _tmux("send-keys", "-t", tmux_session, "q")
    _wait_for(tmux_session, lambda s: status.exists() and status.read_text().strip() != "",
              timeout=30)
    assert status.read_text().strip() == "0"
    err = errfile.read_text()
    assert err.splitlines()[-1] == live_err.splitlines()[-1], err
    assert "rbtrace: per process" in err
