"""rbtrace show (rbtrace/show.py): a recording replayed, without the kernel.

Recordings here are made of event lines built from the kinds' specs (every
member of HEADER + the kind's fields, checked against the shipped JSON
schema), so they are lines a live run could write.  What the replay's
summary must say is computed here in plain Python, line by line, and
compared with what `rbtrace show` prints."""
import collections
import json
import os
import random
import subprocess
import sys

import pytest

from rbtrace import fields, show, spec
from rbtrace.render import JSON_FORMAT_VERSION

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import schemacheck  # noqa: E402

BOOT = "0b5e7a1c-1111-2222-3333-444455556666"
DEFAULTS = {"int": 0, "hex": "0x0", "errno": "ENOENT", "user": "root", "flags": "RDONLY",
            "name": "x", "ip": "127.0.0.1", "port": 0, "duration": 0, "text": "",
            "texts": [], "bool": False, "object": {}, "number": 0, "time": None, "process": None}


def event(kind, pid, start, seq, ts, ppid=1, comm="sh", uid=0, **members):
    """An event line of `kind`: every member its spec declares (those that
    are always there), then `members`."""
    s = spec.load(kind)
    e = {}
    for f in spec.HEADER + s.fields:
        if f.when:
            continue
        if f.kind == "enum":
            e[f.name] = f.values[0]
        elif f.kind == "const":
            e[f.name] = kind
        elif f.null:
            e[f.name] = None
        else:
            e[f.name] = DEFAULTS[f.kind]
    clock = fields.Clock(offset_ns=1_700_000_000_000_000_000, utc=True)
    e.update(seq=seq, time=clock.iso(ts), ts_ns=ts, pid=pid, tid=pid, ppid=ppid, uid=uid,
             user=fields.user_name(uid), comm=comm, process=f"{BOOT}-{start}-{pid}")
    e.update(members)
    if "ret" in e and kind in ("open", "exec"):
        e["errno"] = fields.errno_name(e["ret"]) or None
        if kind == "open":
            e["fd"] = e["ret"] if e["ret"] >= 0 else None
    if kind == "exit":
        st = e["status"]
        e.update(exit_code=fields.exit_code(st), signal=fields.signal_name(st),
                 core_dumped=fields.core_dumped(st), duration_ns=ts - start)
    return e


def workload(seed=7, procs=12):
    """(lines, expected): a recording of `rbtrace trace exec,open,exit`
    with processes forking, exec'ing, opening and exiting, and what its
    summary must say, counted here event by event."""
    rnd = random.Random(seed)
    lines = [{"type": "start", "version": JSON_FORMAT_VERSION, "probe": "trace",
              "ring_bytes": 8 << 20, "filters": "command=sh"}]
    seq, ts = 0, 10_000_000
    live = [(100, 5_000_000, 1, "sh")]              # (pid, start, ppid, comm)
    pid = 100
    exp = {"kinds": collections.defaultdict(lambda: [0, collections.Counter()]),
           "procs": {}}

    def emit(kind, p, **m):
        nonlocal seq, ts
        e = event(kind, p[0], p[1], seq, ts, ppid=p[2], comm=p[3], **m)
        seq += 1
        ts += rnd.randrange(1000, 100_000)
        lines.append(e)
        key = e["process"]
        k = exp["kinds"][kind]
        k[0] += 1
        pr = exp["procs"].setdefault(key, {"pid": p[0], "ppid": p[2], "events": 0,
                                           "kinds": collections.Counter(),
                                           "errors": collections.Counter(), "argv": None,
                                           "comm": p[3], "status": None})
        pr["events"] += 1
        pr["kinds"][kind] += 1
        err = None
        if kind == "exit":
            err = show_exit_error(e["status"])
            pr["status"] = e["status"]
            pr["comm"] = e["comm"]
        elif e["ret"] < 0:
            err = fields.errno_name(e["ret"])
        if err:
            k[1][err] += 1
            pr["errors"][err] += 1
        if kind == "exec" and e["ret"] == 0:
            pr["argv"], pr["comm"] = e["argv"], e["comm"]
        return e

    while live:
        p = rnd.choice(live)
        r = rnd.random()
        if r < 0.1 and pid < 100 + procs:
            pid += 1
            live.append((pid, ts, p[0], p[3]))
        elif r < 0.2:
            argv = [rnd.choice(["ls", "cat", "wc"]), f"arg{seq}"]
            ret = rnd.choice([0, 0, -2, -13])
            if ret == 0:
                live.remove(p)
                p = (p[0], p[1], p[2], argv[0])
                live.append(p)
            emit("exec", p, filename="/usr/bin/" + argv[0], argv=argv, argc=2, ret=ret)
        elif r < 0.3 and (len(live) > 1 or pid >= 100 + procs):
            status = rnd.choice([0, 0, 3 << 8, 1 << 8, 15, 9 | 0x80])
            emit("exit", p, status=status)
            live.remove(p)
        else:
            emit("open", p, path=rnd.choice(["/etc/passwd", "/nonexist", "/root/x"]),
                 ret=rnd.choice([3, 4, -2, -2, -13]))
    return lines, exp


def show_exit_error(status):
    if status == 0:
        return None
    code = fields.exit_code(status)
    return f"exit {code}" if code is not None else fields.signal_name(status)


def write(path, lines, garbage=()):
    """The recording as bytes: JSON lines, with `garbage` (index, bytes)
    put before the line at each index."""
    out = [json.dumps(x, ensure_ascii=False).encode() for x in lines]
    for i, junk in sorted(garbage, reverse=True):
        out.insert(i, junk)
    data = b"\n".join(out) + b"\n"
    with open(path, "wb") as f:
        f.write(data)
    return data


def rbtrace(*args, stdin=None):
    p = subprocess.run([sys.executable, "-m", "rbtrace", *map(str, args)], input=stdin,
                       capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def json_out(stdout):
    return [json.loads(x) for x in stdout.splitlines()]


def check_summary(s, exp):
    """The summary's kinds and processes are the ones counted line by line."""
    assert s["kinds"] == {k: {"events": v[0], "errors": dict(v[1])}
                          for k, v in exp["kinds"].items()}
    got = {p["process"]: p for p in s["processes"]}
    assert set(got) == set(exp["procs"])
    for key, want in exp["procs"].items():
        p = got[key]
        assert (p["pid"], p["ppid"], p["events"], p["kinds"], p["errors"], p["argv"],
                p["comm"]) == (want["pid"], want["ppid"], want["events"], dict(want["kinds"]),
                               dict(want["errors"]), want["argv"], want["comm"]), key
        if want["status"] is None:
            assert p["state"] == "running"         # exit was traced: its events are here
        else:
            assert p["state"] == "exited"
            assert p["exit_code"] == fields.exit_code(want["status"])
            assert p["signal"] == fields.signal_name(want["status"])
        parent = [k for k, q in exp["procs"].items() if q["pid"] == want["ppid"]]
        assert p["parent"] == (parent[0] if parent else None)


@pytest.fixture(scope="module")
def recording():
    lines, exp = workload()
    assert sum(1 for x in lines if x["type"] == "exit") >= 5
    # (The shipped schema's start and summary lines don't take probe
    # "trace" yet: the events are checked.)
    for x in lines[1:]:
        assert schemacheck.problems(x) == [], x
    return lines, exp


def test_the_workload_lines_are_valid_for_the_schema_and_the_parser(recording):
    lines, _ = recording
    p = show.Parser("t")
    kinds = collections.Counter(p.parse(json.dumps(x).encode())[0] for x in lines)
    assert kinds == {"start": 1, "event": len(lines) - 1}


def test_json_replay_gives_the_summary_counted_line_by_line(tmp_path, recording):
    lines, exp = recording
    path = tmp_path / "rec.jsonl"
    data = write(path, lines)
    code, out, err = rbtrace("show", path, "--json")
    assert code == 0, err
    got = json_out(out)
    # The start line (made again: the same members), every event line
    # again byte for byte, then the summary.
    assert got[0] == lines[0]
    assert out.encode().splitlines()[1:-1] == data.splitlines()[1:]
    s = got[-1]
    assert s["type"] == "summary" and s["delivered"] == len(lines) - 1
    check_summary(s, exp)
    assert schemacheck.problems({**s, "probe": "open"}) == []
    assert "skipped" not in err


def test_garbage_lines_are_counted_exactly_and_change_nothing(tmp_path, recording):
    lines, exp = recording
    junk = [b"not json", b"[1, 2]", b'{"type": "nosuch"}', b'{"no": "type"}', b"0",
            b'{"type": "open", "seq": 1}',                              # members missing
            json.dumps({**lines[3], "pid": "12"}).encode(),            # a wrong type
            json.dumps({**lines[3], "seq": -1}).encode(),              # out of range
            json.dumps({**lines[3], "process": "nonsense"}).encode(),
            json.dumps({**lines[3], "comm_b64": "!!"}).encode(),
            b"\xff\xfe binary", b'{"type":"open"']                     # cut short
    rnd = random.Random(3)
    garbage = [(rnd.randrange(1, len(lines)), j) for j in junk]
    path = tmp_path / "rec.jsonl"
    write(path, lines, garbage + [(len(lines), b"")])              # and a blank line
    code, out, err = rbtrace("show", path, "--json")
    assert code == 0, err
    check_summary(json_out(out)[-1], exp)
    assert f"{len(junk)} lines of {path} skipped" in err, err
    warned = [x for x in err.splitlines() if ": skipped, " in x]
    assert len(warned) == show.WARN_FIRST, err
    # The plain replay says the same, and so does stdin.
    code, plain, err2 = rbtrace("show", "-", stdin=path.read_bytes())
    assert code == 0
    assert f"{len(junk)} lines of standard input skipped" in err2
    assert len(plain.splitlines()) == len(lines)          # the header, one line per event


def test_plain_replay_prints_the_live_summary_on_stderr(tmp_path, recording):
    from rbtrace.procsum import table_lines
    lines, exp = recording
    path = tmp_path / "rec.jsonl"
    write(path, lines)
    _, out, _ = rbtrace("show", path, "--json")
    s = json_out(out)[-1]
    code, plain, err = rbtrace("show", path)
    assert code == 0
    want = table_lines(s, tree=False)
    assert want and err.splitlines()[:len(want)] == want
    assert err.splitlines()[-1].startswith(f"rbtrace trace: {len(lines) - 1} events delivered")


@pytest.mark.parametrize("args, keep", [
    (["-p", 101], lambda e: e["pid"] == 101),
    (["-n", "ls"], lambda e: e["comm"] == "ls"),
    (["-u", 0], lambda e: e["uid"] == 0),
    (["-x"], lambda e: (e["status"] != 0) if e["type"] == "exit" else e["ret"] < 0),
    (["--kinds", "exit,exec"], lambda e: e["type"] in ("exit", "exec")),
    (["-p", 100, "-x", "--kinds", "open"],
     lambda e: e["pid"] == 100 and e["type"] == "open" and e["ret"] < 0),
])
def test_filters_keep_the_events_a_python_filter_keeps(tmp_path, recording, args, keep):
    lines, _ = recording
    path = tmp_path / "rec.jsonl"
    write(path, lines)
    code, out, err = rbtrace("show", path, "--json", *args)
    assert code == 0, err
    got = json_out(out)
    want = [x for x in lines[1:] if keep(x)]
    assert want, "the filter must keep something for the test to mean anything"
    assert len(want) < len(lines) - 1 or args == ["-u", 0]
    assert got[1:-1] == want
    s = got[-1]
    assert s["delivered"] == len(want)
    assert sum(k["events"] for k in s["kinds"].values()) == len(want)
    assert got[0]["filters"].startswith("command=sh ")


def test_count_stops_after_n_events(tmp_path, recording):
    lines, _ = recording
    path = tmp_path / "rec.jsonl"
    write(path, lines)
    code, out, _ = rbtrace("show", path, "--json", "-c", 7)
    got = json_out(out)
    assert code == 0 and got[1:-1] == lines[1:8] and got[-1]["delivered"] == 7


def test_the_recorded_runs_losses_are_in_the_summary(tmp_path, recording):
    lines, _ = recording
    lost = [{"type": "lost", "dropped": d, "ringbuf_full": d, "map_full": 0,
             "missed_by_kernel": m, "not_followed": 0, "total_dropped": 0,
             "total_missed_by_kernel": 0} for d, m in ((5, 1), (7, 0))]
    for x in lost:
        assert schemacheck.problems(x) == []
    body = lines[:4] + [lost[0]] + lines[4:9] + [lost[1]] + lines[9:]
    path = tmp_path / "rec.jsonl"
    write(path, body)
    # No summary line: the lost lines are summed.
    code, out, err = rbtrace("show", path, "--json")
    got = json_out(out)
    assert [x for x in got if x["type"] == "lost"] == lost          # written again, in place
    assert got.index(lost[0]) == 4 and got.index(lost[1]) == 10
    s = got[-1]
    assert (s["dropped"], s["ringbuf_full"], s["missed_by_kernel"]) == (12, 12, 1)
    assert s["seen"] == len(lines) - 1 + 12
    assert "no summary line" in err and "12 dropped" in err.splitlines()[-1]
    # Plain: each lost line on stderr as the live run prints it.
    code, _, err = rbtrace("show", path)
    assert "rbtrace: 5 events dropped (ring full 5, map full 0), 1 probe runs skipped" in err
    assert "rbtrace: 7 events dropped" in err
    # With the recorded summary line, its counters are the run's.
    _, out, _ = rbtrace("show", path, "--json")
    recorded = {**json_out(out)[-1], "dropped": 40, "ringbuf_full": 39, "map_full": 1,
                "seen": 999, "submitted": 959, "duration_s": 2.5, "stopped_by": "SIGINT"}
    write(path, body + [recorded])
    code, out, err = rbtrace("show", path, "--json", "-p", 100)
    s = json_out(out)[-1]
    assert (s["dropped"], s["ringbuf_full"], s["map_full"], s["seen"], s["duration_s"],
            s["stopped_by"]) == (40, 39, 1, 999, 2.5, "SIGINT")
    assert s["delivered"] == sum(1 for x in lines[1:] if x["pid"] == 100)
    assert "no summary line" not in err


def test_a_newer_format_version_is_one_error_line_and_exit_2(tmp_path, recording):
    lines, _ = recording
    path = tmp_path / "rec.jsonl"
    write(path, [{**lines[0], "version": JSON_FORMAT_VERSION + 1}] + lines[1:])
    for args in (["show", path], ["show", path, "--json"], ["show", "-"]):
        code, out, err = rbtrace(*args, stdin=path.read_bytes())
        assert code == 2, err
        assert out == ""
        assert len(err.splitlines()) == 1 and "newer" in err and "Traceback" not in err
        assert f"version {JSON_FORMAT_VERSION + 1}" in err
    # The version this rbtrace writes, and older ones, replay.
    write(path, lines)
    assert rbtrace("show", path, "--json")[0] == 0


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.jsonl", "No such file or directory"),
    (lambda d: d, "Is a directory"),
])
def test_a_file_that_cant_be_read_is_one_line(tmp_path, make, needle):
    code, out, err = rbtrace("show", make(tmp_path))
    assert code == 2 and out == ""
    assert err.startswith("rbtrace: cannot read ") and needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_read_error_is_one_line_and_exit_1():
    code, out, err = rbtrace("show", "/proc/self/mem")
    assert code == 1 and "cannot read /proc/self/mem" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


# --- the parts ------------------------------------------------------------------------

@pytest.mark.parametrize("line, category", [
    (b"}", "not JSON"),
    (b'"open"', "not a JSON object"),
    (b'{"type": 3}', "no type"),
    (b'{"type": "opne"}', "an unknown type"),
    (b'{"type": "lost"}', "a member missing"),
])
def test_bad_lines_say_why(line, category):
    with pytest.raises(show.Bad) as e:
        show.Parser("t").parse(line)
    assert e.value.category == category


def test_every_member_is_checked_for_its_type_and_range(recording):
    lines, _ = recording
    good = next(x for x in lines if x["type"] == "open")
    cases = {"pid": "1", "seq": -1, "ts_ns": 2**64, "comm": 3, "ret": None, "fd": "3",
             "syscall": "opne", "path_truncated": 1, "process": f"{BOOT}-x-{good['pid']}",
             "path_b64": "not base64!"}
    for member, value in cases.items():
        with pytest.raises(show.Bad) as e:
            show.Parser("t").parse(json.dumps({**good, member: value}).encode())
        assert member in str(e.value), (member, e.value)
    show.Parser("t").parse(json.dumps({**good, "fd": None}).encode())      # null allowed
    with pytest.raises(show.Bad, match="its pid is not pid"):
        show.Parser("t").parse(json.dumps({**good, "pid": good["pid"] + 1,
                                           "tid": good["pid"] + 1}).encode())


def test_a_recording_of_one_kind_takes_no_other_kind(recording):
    lines, _ = recording
    p = show.Parser("t")
    p.parse(json.dumps({**lines[0], "probe": "open"}).encode())
    p.parse(json.dumps(next(x for x in lines if x["type"] == "open")).encode())
    with pytest.raises(show.Bad, match="another kind"):
        p.parse(json.dumps(next(x for x in lines if x["type"] == "exec")).encode())
    with pytest.raises(show.Bad, match="start line after the first"):
        p.parse(json.dumps(lines[0]).encode())


def test_records_are_the_columns_procsum_reads(recording):
    lines, _ = recording
    opens = [x for x in lines if x["type"] == "open"][:20]
    starts = [int(x["process"].rsplit("-", 2)[1]) for x in opens]
    r = show.records(spec.load("open"), opens, starts, ("path",))
    assert r["pid"].tolist() == [x["pid"] for x in opens]
    assert r["ret"].tolist() == [x["ret"] for x in opens]
    assert r["proc_start_ns"].tolist() == starts
    assert [p[:n] for p, n in zip(r["path"].tolist(), r["path_len"].tolist())] == \
        [x["path"].encode() for x in opens]
    exits = [x for x in lines if x["type"] == "exit"]
    r = show.records(spec.load("exit"), exits, [0] * len(exits))
    assert r["status"].tolist() == [x["status"] for x in exits]


def test_read_lines_splits_whole_lines_and_keeps_a_last_one_without_newline(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a\nbb\n\nccc")
    fd = os.open(path, os.O_RDONLY)
    try:
        got = [x for batch in show.read_lines(fd, "f") for x in batch]
    finally:
        os.close(fd)
    assert got == [b"a", b"bb", b"", b"ccc"]


def test_a_line_too_long_is_one_bad_line(tmp_path, monkeypatch):
    monkeypatch.setattr(show, "MAX_LINE", 100)
    monkeypatch.setattr(show, "READ_BYTES", 64)
    path = tmp_path / "f"
    path.write_bytes(b"a\n" + b"x" * 1000 + b"\nb\n" + b"y" * 500)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = [x for batch in show.read_lines(fd, "f") for x in batch]
    finally:
        os.close(fd)
    assert got == [b"a", None, b"b", None]


def test_failed_is_what_each_kinds_probe_keeps_with_x():
    tcp, opn, ext, tp = (spec.load(k) for k in ("tcp", "open", "exit", "tp"))
    connect = {"type": "tcp", "event": "connect"}
    assert show.failed({**connect, "ret": -111}, tcp)             # ECONNREFUSED
    for pending in (-115, -4, -512, -516, 0):                     # the handshake goes on
        assert not show.failed({**connect, "ret": pending}, tcp), pending
    assert not show.failed({"type": "tcp", "event": "close", "ret": None}, tcp)
    assert show.failed({"type": "open", "ret": -2}, opn)
    assert not show.failed({"type": "open", "ret": 3}, opn)
    assert show.failed({"type": "exit", "status": 9}, ext)
    assert not show.failed({"type": "exit", "status": 0}, ext)
    assert not show.failed({"type": "tp", "args": {"ret": -1}}, tp)


def test_a_replayed_tracepoints_args_show_as_a_live_one_does():
    """tp's ARGS of an event no probe of this run decoded: texts quoted,
    addresses as they are, a text's _b64 and _truncated with it."""
    from rbtrace import codec
    tp = codec.make(spec.load("tp"), {})
    args = {"pid": 5, "comm": "sh", "comm_truncated": True, "ptr": "0x7ffd12a0",
            "ids": [1, 2], "name": "b\\xffad", "name_b64": "Yv9hZA=="}
    e = {"event": "x:y", "args": args}
    assert tp.args_cell(e) == 'pid=5 comm="sh"… ptr=0x7ffd12a0 ids=[1,2] name="b\\xffad"'


def test_a_stop_signal_ends_the_replay_with_its_summary(recording):
    """SIGTERM while the recording still comes (a quiet pipe): what was
    replayed is summarised and the status is 128 + 15, as for a live run."""
    import signal
    import time
    lines, _ = recording
    head = b"".join(json.dumps(x).encode() + b"\n" for x in lines[:6])
    p = subprocess.Popen([sys.executable, "-m", "rbtrace", "show", "-", "--json"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(head)
        p.stdin.flush()
        deadline = time.monotonic() + 60
        out = b""
        os.set_blocking(p.stdout.fileno(), False)
        while out.count(b"\n") < 6 and time.monotonic() < deadline:
            out += p.stdout.read() or b""
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    got = json_out((out + (rest or b"")).decode())
    assert p.returncode == 128 + signal.SIGTERM, err
    assert got[-1]["type"] == "summary" and got[-1]["delivered"] == 5
    assert b"no summary line" not in err          # it was stopped, not cut short


def test_members_of_another_rbtrace_version_are_not_bad_lines(tmp_path, recording):
    """New members appear within a format version: a recording without a
    member the replay does not read is replayed (its cell shows "?"), and
    one with a member this rbtrace does not know too; a line without a
    member the replay reads is bad."""
    lines, exp = recording
    older = [{k: v for k, v in x.items() if k not in ("flags_text", "user", "ring_bytes")}
             for x in lines]
    newer = [{**x, "cgroup_id": 1, "container_id": None} for x in lines]
    for variant in (older, newer):
        path = tmp_path / "rec.jsonl"
        write(path, variant)
        code, out, err = rbtrace("show", path, "--json")
        assert code == 0 and "skipped" not in err, err
        got = json_out(out)
        check_summary(got[-1], exp)
        assert got[0] == {**variant[0]}
        code, plain, err = rbtrace("show", path)
        assert code == 0 and "skipped" not in err and "Traceback" not in err, err
        assert len(plain.splitlines()) == len(lines)
    path.write_text("\n".join(json.dumps({**x, "probe": "open"} if x["type"] == "start" else x)
                              for x in older if x["type"] in ("start", "open")) + "\n")
    code, plain, err = rbtrace("show", path)
    assert code == 0 and "skipped" not in err, err
    rows = plain.splitlines()
    assert rows[0].split()[4] == "FLAGS" and len(rows) > 10
    assert all(row.split()[4] == "?" for row in rows[1:]), plain
    for member in show.NEEDS["event"][1:]:
        with pytest.raises(show.Bad, match=member):
            x = next(x for x in lines if x["type"] == "open")
            show.Parser("t").parse(json.dumps({k: v for k, v in x.items()
                                               if k != member}).encode())


def test_the_files_of_a_rotated_recording_replay_as_one(tmp_path, recording):
    """Each file of a recording written in parts begins with the run's
    start line (its "part" one more): concatenated, they are one
    recording, not bad lines; a start line of another run is bad."""
    lines, exp = recording
    cut = len(lines) // 2
    first = [{**lines[0], "part": 1}] + lines[1:cut]
    second = [{**lines[0], "part": 2}] + lines[cut:]
    path = tmp_path / "rec.jsonl"
    write(path, first + second)
    code, out, err = rbtrace("show", path, "--json")
    assert code == 0 and "skipped" not in err, err
    got = json_out(out)
    assert [x["type"] for x in got].count("start") == 1 and "part" not in got[0]
    check_summary(got[-1], exp)
    write(path, first + [{**lines[0], "filters": "pid=1"}] + lines[cut:])
    code, out, err = rbtrace("show", path, "--json")
    assert "1 line of" in err and "a start line after the first" in err, err


def test_time_is_the_recorded_time(tmp_path, recording):
    """TIME is each event's recorded `time` (another host's clock, another
    day), to the millisecond; in UTC with --utc."""
    lines, _ = recording
    path = tmp_path / "rec.jsonl"
    write(path, lines)
    code, plain, err = rbtrace("show", path, "--utc")
    assert code == 0, err
    rows = plain.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [e["time"][11:23] for e in lines[1:]]
    assert lines[1]["time"][:10] == "2023-11-14"          # not today's
