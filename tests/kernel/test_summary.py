"""The run summary per process and per kind (issue #16 item 4), live.

`rbtrace trace exec,open,exit --json -- sh -c SCRIPT`: the summary's
counts per process and per kind must be those of the events in the same
stream, its exit codes those the shell itself got from wait (written by
the script to a file), and its tree's parents those of the exec events.
"""
import collections
import os

from conftest import parse_json_lines, run_cli

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}
if os.environ.get("RBTRACE_CACHE_DIR"):
    ENV["RBTRACE_CACHE_DIR"] = os.environ["RBTRACE_CACHE_DIR"]

# Each child in the background, so the shell knows its pid ($!), then
# waited for: "pid status" as the shell reports it (128 + signal).
SCRIPT = r"""
rec=$1
( exit 4 ) & p=$!; wait $p; echo "$p $?" >> "$rec"
sh -c 'cat /nonexistent-rbtrace-summary 2>/dev/null; exit 7' & p=$!; wait $p; echo "$p $?" >> "$rec"
sh -c 'kill -TERM $$' & p=$!; wait $p; echo "$p $?" >> "$rec"
( ( exit 0 ) & wait; cat /etc/hostname >/dev/null; exit 6 ) & p=$!; wait $p; echo "$p $?" >> "$rec"
exit 3
"""


def errno_or_end(e):
    """The error name the summary counts for one event, or None."""
    if e["type"] == "exit":
        if e["signal"] is not None:
            return e["signal"]
        return f"exit {e['exit_code']}" if e["exit_code"] else None
    ret = e.get("ret")
    return e["errno"] if isinstance(ret, int) and ret < 0 else None


def run(tmp_path, *extra):
    rec = tmp_path / "rec.txt"
    p = run_cli("trace", "exec,open,exit", *extra, "--", "/bin/sh", "-c", SCRIPT, "sh",
                str(rec), env=ENV)
    return p, rec


def test_summary_matches_the_stream_and_the_shells_own_record(kernel_ok, tmp_path):
    p, rec = run(tmp_path, "--json")
    assert p.returncode == 3, p.stderr
    r = parse_json_lines(p.stdout.decode())
    s = r.summary
    assert s["dropped"] == 0 and s["missed_by_kernel"] == 0, s
    assert s["processes_other"] == {"processes": 0, "events": 0}

    # Per process: events, events per kind, errors, from the stream itself.
    events = collections.Counter(e["process"] for e in r.events)
    kinds = collections.defaultdict(collections.Counter)
    errors = collections.defaultdict(collections.Counter)
    for e in r.events:
        kinds[e["process"]][e["type"]] += 1
        name = errno_or_end(e)
        if name:
            errors[e["process"]][name] += 1
    procs = {x["process"]: x for x in s["processes"]}
    assert set(procs) == set(events)
    for key, x in procs.items():
        assert x["events"] == events[key], key
        assert x["kinds"] == dict(kinds[key]), key
        assert x["errors"] == dict(errors[key]), key
    # Per kind.
    for kind in ("exec", "open", "exit"):
        evs = [e for e in r.events if e["type"] == kind]
        assert s["kinds"][kind]["events"] == len(evs)
        assert s["kinds"][kind]["errors"] == dict(collections.Counter(
            n for n in map(errno_or_end, evs) if n))
    assert s["kinds"]["open"]["errors"].get("ENOENT", 0) >= 1

    # How each process ended: its exit event, the same in the summary.
    exits = {e["process"]: e for e in r.events if e["type"] == "exit"}
    assert set(exits) == set(procs)          # all exited while traced
    for key, x in procs.items():
        e = exits[key]
        assert x["state"] == "exited"
        assert (x["exit_code"], x["signal"], x["duration_ns"]) == \
            (e["exit_code"], e["signal"], e["duration_ns"])

    # ... and as the shell itself saw it.
    root = [x for x in s["processes"] if x["pid"] == s["command"]["pid"]]
    assert len(root) == 1 and root[0]["exit_code"] == 3 and root[0]["parent"] is None
    assert root[0]["argv"] == ["/bin/sh", "-c", SCRIPT, "sh", str(rec)]
    record = [tuple(map(int, line.split())) for line in rec.read_text().splitlines()]
    assert [status for _, status in record] == [4, 7, 128 + 15, 6]
    by_pid = {x["pid"]: x for x in s["processes"]}
    for pid, status in record:
        x = by_pid[pid]
        if status > 128:
            assert (x["exit_code"], x["signal"]) == (None, "SIGTERM")
        else:
            assert (x["exit_code"], x["signal"]) == (status, None)
        assert x["parent"] == root[0]["process"] and x["ppid"] == root[0]["pid"]

    # The tree: a process's parent is that of its exec event; argv its
    # last successful exec's.
    execs = [e for e in r.events if e["type"] == "exec" and e["ret"] == 0]
    assert len(execs) >= 3
    for e in execs:
        x = procs[e["process"]]
        assert x["ppid"] == e["ppid"]
        parent = [k for k, y in procs.items() if y["pid"] == e["ppid"]]
        assert x["parent"] == (parent[0] if parent else None)
    for key, x in procs.items():
        mine = [e for e in execs if e["process"] == key]
        assert x["argv"] == (mine[-1]["argv"] if mine else None)
    # The subshell's own child: a grandchild of the root.
    sixth = by_pid[record[3][0]]
    grandchildren = [x for x in s["processes"] if x["parent"] == sixth["process"]]
    assert len(grandchildren) == 2          # ( exit 0 ) and cat
    assert sorted(x["exit_code"] for x in grandchildren) == [0, 0]


def test_plain_mode_prints_the_tree_before_the_one_line(kernel_ok, tmp_path):
    p, rec = run(tmp_path, "-o", str(tmp_path / "out.txt"))
    assert p.returncode == 3, p.stderr
    lines = p.stderr.decode().splitlines()
    assert lines[-1].startswith("rbtrace trace: ") and lines[-1].endswith(
        "sh exited with status 3"), lines
    start = lines.index(next(l for l in lines if l.startswith("rbtrace: per kind: ")))
    assert lines[start + 1].startswith("rbtrace: per process (")
    table = lines[start + 3:-1]
    record = [tuple(map(int, line.split())) for line in rec.read_text().splitlines()]
    rows = {int(l.split()[0]): l for l in table}
    for pid, status in record:
        state = "SIGTERM" if status > 128 else f"exit {status}"
        assert state in rows[pid], rows[pid]
        assert "└ " in rows[pid]            # a child, indented under the root
    assert "└ " not in table[0] and "exit 3" in table[0]
