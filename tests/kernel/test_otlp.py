"""--otlp on the real kernel (issue 18, item 3): what a local OTLP/HTTP
receiver decodes with the official schema (tests/otlp_receiver.py) is
counted against the JSON stream of the same run and against the
workload; a receiver that answers 503 for 3 s loses nothing; one gone for
good makes drops that are counted and said, and rbtrace still ends on
time."""
import calendar
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from otlp_receiver import Receiver  # noqa: E402

from conftest import REPO, RBTRACE_ARGV, parse_json_lines, run_cli  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
import schemacheck  # noqa: E402  (every line against the shipped JSON schema)

LOOP = "for i in $(seq 50); do /bin/true rbotlp-$i; done"


def unix_ns(iso):
    """Nanoseconds since the epoch of JSON's time, "2026-...T..:..:...123456789Z"."""
    head, frac = iso[:-1].split(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) * 10**9 + int(frac)


def by_seq(receiver, body):
    return {a["rbtrace.seq"]: (t, a) for t, b, a in receiver.records if b == body}


def test_every_exec_of_a_workload_reaches_the_receiver_as_in_the_json(kernel_ok):
    with Receiver() as r:
        p = run_cli("exec", "--json", "--otlp", r.url, "--", "sh", "-c", LOOP)
        assert p.returncode == 0, p.stderr
        res = parse_json_lines(p.stdout.decode())
        mine = [e for e in res.events if e["argv"][1:2] and e["argv"][1].startswith("rbotlp-")]
        assert [e["argv"][1] for e in mine] == [f"rbotlp-{i}" for i in range(1, 51)]
        got = by_seq(r, "exec")
        # The receiver holds exactly the run's events, nothing more, nothing twice.
        assert len(r.records) == len(got) == len(res.events)
        assert sorted(got) == sorted(e["seq"] for e in res.events)
        for e in res.events:
            t, a = got[e["seq"]]
            assert t == unix_ns(e["time"])
            assert a["process.pid"] == e["pid"] and a["process.parent_pid"] == e["ppid"]
            assert a["process.command_args"] == e["argv"]
            assert a["process.command"] == e["comm"] and a["rbtrace.process"] == e["process"]
            assert a["user.id"] == str(e["uid"])
            if e.get("exe") is not None:
                assert a["process.executable.path"] == e["exe"]
        s = res.summary
        assert s["otlp_sent"] == s["delivered"] == len(res.events) and s["otlp_dropped"] == 0
        schemacheck.check(res.lines, "rbtrace exec --json --otlp")
        assert r.resources[0]["host.name"] == socket.gethostname()
        assert r.resources[0]["os.version"] == os.uname().release
        assert f"OTLP: {s['otlp_sent']} sent, 0 dropped" in p.stderr.decode()


def test_a_receiver_answering_503_for_3_seconds_loses_nothing(kernel_ok):
    window = {}

    def answer(receiver):
        t0 = window.get("start")
        if t0 is not None and t0 + 1.0 <= time.monotonic() < t0 + 4.0:
            return 503
        return 200

    loop = "for i in $(seq 60); do /bin/true rbotlp-$i; sleep 0.1; done"
    with Receiver(answer) as r:
        proc = subprocess.Popen([*RBTRACE_ARGV, "exec", "--json", "--otlp", r.url,
                                 "--otlp-timeout", "10", "--", "sh", "-c", loop],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        window["start"] = time.monotonic()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        res = parse_json_lines(out.decode())
        assert r.refused >= 1, "the receiver never said 503: the test proves nothing"
        assert any(status == 503 for _, _, status in r.requests)
        mine = [e for e in res.events if e["argv"][1:2] and e["argv"][1].startswith("rbotlp-")]
        assert len(mine) == 60
        got = by_seq(r, "exec")
        assert sorted(got) == sorted(e["seq"] for e in res.events)
        assert len(r.records) == len(res.events)
        assert res.summary["otlp_dropped"] == 0
        assert res.summary["otlp_sent"] == len(res.events)
        assert not [x for x in res.lost if x.get("otlp_dropped")]
        assert "503" in err.decode()


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_a_receiver_gone_for_good_drops_are_counted_and_said_and_rbtrace_ends_on_time(kernel_ok):
    url = closed_port_url()
    began = time.monotonic()
    p = run_cli("exec", "--json", "--otlp", url, "--otlp-timeout", "2", "--", "sh", "-c", LOOP)
    took = time.monotonic() - began
    assert p.returncode == 0, p.stderr
    res = parse_json_lines(p.stdout.decode())
    n = len(res.events)
    assert n >= 50
    s = res.summary
    assert s["otlp_sent"] == 0 and s["otlp_dropped"] == n
    # The last lost line holds them, as the ring's drops would be.
    assert res.lost and res.lost[-1]["total_otlp_dropped"] == n
    assert sum(x["otlp_dropped"] for x in res.lost) == n
    schemacheck.check(res.lines, "rbtrace exec --json --otlp (collector gone)")
    err = p.stderr.decode()
    assert "Connection refused" in err
    assert f"{n} events not sent to {url}" in err
    assert f"OTLP: 0 sent, {n} dropped" in err
    # Start-up (compile cache) and the workload take a second or two; the
    # flush waits 2 s, not the request timeout nor the backoff's.
    assert took < 2 + 8, took


def test_otlp_alone_on_a_pipe_writes_nothing_there_and_trace_sends_every_kind(kernel_ok,
                                                                             tmp_path):
    target = tmp_path / "rbotlp-file"
    script = f"for i in 1 2 3; do cat {target} 2>/dev/null; /bin/true rbotlp-$i; done"
    with Receiver() as r:
        p = run_cli("trace", "exec,open,exit", "--otlp", r.url, "--", "sh", "-c", script)
        assert p.returncode == 0, p.stderr
        assert p.stdout == b""
        kinds = {b for _, b, _ in r.records}
        assert {"exec", "open", "exit"} <= kinds, kinds
        opens = [a for _, b, a in r.records if b == "open" and a.get("file.path") == str(target)]
        assert len(opens) == 3 and all(a["error.type"] == "ENOENT" for a in opens)
        execs = [a["process.command_args"] for _, b, a in r.records if b == "exec"]
        assert [["/bin/true", f"rbotlp-{i}"] for i in (1, 2, 3)] == [
            x for x in execs if x[1:2] and x[1].startswith("rbotlp-")]
        exits = [a for _, b, a in r.records if b == "exit"]
        assert exits and all("process.exit.code" in a for a in exits)
        seqs = [a["rbtrace.seq"] for _, _, a in r.records]
        assert len(seqs) == len(set(seqs))
        err = p.stderr.decode()
        assert f"OTLP: {len(r.records)} sent, 0 dropped" in err, err


def test_tcp_and_tp_events_map_to_records(kernel_ok):
    with Receiver() as r:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port})).close()\n"
        p = run_cli("trace", "tcp,sched:sched_process_exec", "--otlp", r.url, "--json",
                    "--", sys.executable, "-c", code)
        srv.close()
        assert p.returncode == 0, p.stderr
        res = parse_json_lines(p.stdout.decode())
        got = by_seq(r, "tcp")
        connects = [a for _, a in got.values() if a["rbtrace.event"] == "connect"]
        assert connects, r.records
        a = connects[0]
        assert a["network.peer.address"] == "127.0.0.1" and a["network.peer.port"] == port
        assert a["network.transport"] == "tcp" and a["network.type"] == "ipv4"
        tps = by_seq(r, "tp")
        assert tps and all(isinstance(a["rbtrace.args"], dict) for _, a in tps.values())
        assert len(r.records) == len(res.events) == res.summary["otlp_sent"]


def test_run_probe_events_map_to_records(kernel_ok):
    kill = os.path.join(REPO, "examples", "kill.bpf.c")
    with Receiver() as r:
        p = run_cli("run", kill, "--json", "--otlp", r.url,
                    "--", "sh", "-c", "kill -0 $$; kill -0 $$; kill -0 999999 2>/dev/null; true")
        assert p.returncode == 0, p.stderr
        res = parse_json_lines(p.stdout.decode())
        assert len(res.events) == 3, res.events
        got = by_seq(r, "run")
        assert sorted(got) == [e["seq"] for e in res.events]
        for e in res.events:
            _, a = got[e["seq"]]
            assert a["rbtrace.event"] == e["event"] == "kill_event"
            assert a["rbtrace.args"] == e["args"]
            assert a["process.pid"] == e["pid"]
        assert res.summary["otlp_sent"] == 3
