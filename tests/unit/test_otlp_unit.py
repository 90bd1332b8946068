"""--otlp without the kernel (issue 18, item 3): the attribute mapping, and
the exporter end to end against a local receiver that decodes what
arrives with the official protobuf schema (tests/otlp_receiver.py):
batching, gzip, retries on 503, a refused batch, a partial success, a
full queue and a collector gone for good, each counted exactly."""
import os
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from otlp_receiver import Receiver  # noqa: E402

from rbtrace import otlp  # noqa: E402
from rbtrace.render import lost_line  # noqa: E402

OFFSET = 1_700_000_000_000_000_000


def exec_event(seq, pid=4242, argv=("/bin/true", "-x"), ts=None):
    return {"type": "exec", "seq": seq, "time": "2026-01-01T00:00:00.000000000Z",
            "ts_ns": 5_000_000_000 + seq * 1000 if ts is None else ts,
            "pid": pid, "tid": pid, "ppid": 1, "uid": 1000, "user": "alice", "comm": "true",
            "process": f"b00t-123-{pid}", "syscall": "execve", "filename": "/bin/true",
            "exe": "/usr/bin/true", "argv": list(argv), "argc": len(argv),
            "args_truncated": False, "ret": 0, "errno": None}


def test_header_and_exec_members_map_to_the_semantic_conventions():
    items = otlp.attribute_items({**exec_event(3), "container_id": "abc123",
                                  "cgroup_id": 77, "pod_uid": "0f1e-22"})
    attrs = dict(items)
    assert len(attrs) == len(items), "no attribute twice"
    assert attrs["process.pid"] == 4242 and attrs["thread.id"] == 4242
    assert attrs["process.parent_pid"] == 1
    assert attrs["user.id"] == "1000" and attrs["user.name"] == "alice"
    assert attrs["process.command"] == "true"
    assert attrs["process.command_args"] == ["/bin/true", "-x"]
    assert attrs["process.executable.path"] == "/usr/bin/true"
    assert attrs["container.id"] == "abc123"
    assert attrs["rbtrace.cgroup_id"] == 77 and attrs["k8s.pod.uid"] == "0f1e-22"
    assert attrs["rbtrace.process"] == "b00t-123-4242"
    assert attrs["rbtrace.type"] == "exec" and attrs["rbtrace.filename"] == "/bin/true"
    # seq, time and ts_ns are the record's own; a null member is left out
    assert not {"rbtrace.seq", "rbtrace.time", "rbtrace.ts_ns", "error.type",
                "rbtrace.errno"} & set(attrs)


def test_open_tcp_and_exit_members():
    attrs = dict(otlp.attribute_items({"type": "open", "pid": 1, "path": "/etc/x", "ret": -2,
                                       "errno": "ENOENT", "flags_text": "O_RDONLY"}))
    assert attrs == {"rbtrace.type": "open", "process.pid": 1, "file.path": "/etc/x",
                     "rbtrace.ret": -2, "error.type": "ENOENT", "rbtrace.flags_text": "O_RDONLY"}
    attrs = dict(otlp.attribute_items({"type": "tcp", "event": "connect", "family": 6,
                                       "saddr": "::1", "sport": 5000, "daddr": "::1",
                                       "dport": 80, "ret": -111, "errno": "ECONNREFUSED"}))
    assert attrs["network.local.address"] == "::1" and attrs["network.local.port"] == 5000
    assert attrs["network.peer.address"] == "::1" and attrs["network.peer.port"] == 80
    assert attrs["network.type"] == "ipv6" and attrs["network.transport"] == "tcp"
    assert attrs["error.type"] == "ECONNREFUSED" and attrs["rbtrace.event"] == "connect"
    attrs = dict(otlp.attribute_items({"type": "exit", "exit_code": 3, "signal": None,
                                       "duration_ns": 9}))
    assert attrs == {"rbtrace.type": "exit", "process.exit.code": 3, "rbtrace.duration_ns": 9}


@pytest.mark.parametrize("url, endpoint", [
    ("http://127.0.0.1:4318", ("http", "127.0.0.1", 4318, "/v1/logs")),
    ("http://collector:4318/", ("http", "collector", 4318, "/v1/logs")),
    ("https://otel.example/prefix", ("https", "otel.example", 443, "/prefix/v1/logs")),
    ("http://[::1]:9/v1/logs", ("http", "::1", 9, "/v1/logs")),
    ("http://h", ("http", "h", 80, "/v1/logs")),
])
def test_the_logs_endpoint_of_a_url(url, endpoint):
    assert otlp.parse_url(url) == endpoint


@pytest.mark.parametrize("url", ["ftp://h:1", "localhost:4318", "http://", "http://h:99999",
                                 "http://h/?a=1", ""])
def test_a_url_that_is_not_an_endpoint_is_refused(url):
    with pytest.raises(ValueError):
        otlp.parse_url(url)


def test_a_bad_url_is_one_line_and_exit_2(capfd):
    from rbtrace.cli import main
    with pytest.raises(SystemExit) as e:
        main(["exec", "--otlp", "ftp://somewhere"])
    err = capfd.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "--otlp" in err and "http://" in err, err


def test_otlp_timeout_without_otlp_is_a_usage_error(capfd):
    from rbtrace.cli import main
    with pytest.raises(SystemExit) as e:
        main(["exec", "--otlp-timeout", "3"])
    err = capfd.readouterr().err
    assert e.value.code == 2 and err == "rbtrace: --otlp-timeout needs --otlp URL\n", err


def exporter(receiver_or_url, **kw):
    url = getattr(receiver_or_url, "url", receiver_or_url)
    said = []
    kw.setdefault("batch_events", 100)
    e = otlp.Exporter(url, "exec", say=said.append, **kw)
    e.said = said
    return e


def test_every_event_arrives_once_with_its_time_and_attributes():
    # A storm of one event, and events that differ from it by one member
    # each: the kept templates must never give an event another's members.
    events = [exec_event(i) for i in range(250)]
    events[7] = exec_event(7, argv=("/bin/false",))
    events[8] = exec_event(8, pid=99)
    events[9] = {**exec_event(9), "errno": "ENOENT", "ret": -2}
    events[10] = {**exec_event(10), "args": {"n": 2**64 - 1, "s": "x", "l": [1, 2]}}
    with Receiver() as r:
        e = exporter(r)
        e.add(events[:120], OFFSET)
        e.add(events[120:], OFFSET)
        assert e.close() == (250, 0)
        assert e.given == 250 and e.said == []
        got = sorted(r.records, key=lambda x: x[2]["rbtrace.seq"])
        assert len(got) == 250
        assert len(r.requests) == 3            # batches of 100
        for path, headers, status in r.requests:
            assert path == "/v1/logs" and status == 200
            assert headers["Content-Encoding"] == "gzip"
            assert headers["Content-Type"] == "application/x-protobuf"
        for ev, (t, body, attrs) in zip(events, got):
            assert t == ev["ts_ns"] + OFFSET and body == "exec"
            expected = dict(otlp.attribute_items(ev))
            expected["rbtrace.seq"] = ev["seq"]
            if "args" in ev:
                expected["rbtrace.args"] = {"n": str(2**64 - 1), "s": "x", "l": [1, 2]}
            assert attrs == expected
        res = r.resources[0]
        assert res["service.name"] == "rbtrace" and res["os.type"] == "linux"
        assert res["host.name"] == socket.gethostname()
        assert res["os.version"] == os.uname().release
        assert res["rbtrace.probe"] == "exec"


def test_a_batch_not_full_goes_after_batch_seconds():
    with Receiver() as r:
        e = exporter(r, batch_events=1000, batch_seconds=0.2)
        e.add([exec_event(i) for i in range(5)], OFFSET)
        e.tick()
        time.sleep(0.1)
        assert r.records == []
        time.sleep(0.15)
        e.tick()
        assert r.wait_for(5, timeout=5)
        assert e.close() == (5, 0)
        assert len(r.requests) == 1


def test_503_for_a_while_then_everything_arrives():
    until = time.monotonic() + 1.0

    def answer(receiver):
        return 503 if time.monotonic() < until else 200

    with Receiver(answer) as r:
        e = exporter(r, batch_events=10, timeout=10)
        for i in range(10):
            e.add([exec_event(i * 10 + j) for j in range(10)], OFFSET)
            time.sleep(0.05)
        sent, dropped = e.close()
        assert (sent, dropped) == (100, 0)
        assert r.refused >= 1
        assert sorted(a["rbtrace.seq"] for _, _, a in r.records) == list(range(100))
        assert any("503" in s for s in e.said)


def test_retry_after_is_followed():
    with Receiver(lambda r: 429 if len(r.requests) < 2 else 200) as r:
        r.retry_after = "0.7"
        e = exporter(r, batch_events=10, timeout=10)
        e.add([exec_event(i) for i in range(10)], OFFSET)
        assert e.close() == (10, 0)
        assert [s for _, _, s in r.requests] == [429, 429, 200]
        gaps = [b - a for a, b in zip(r.times, r.times[1:])]
        assert all(0.65 < g < 2.0 for g in gaps), gaps      # not the 0.1 s backoff


def test_a_refused_batch_is_dropped_and_counted():
    with Receiver(lambda r: 400 if len(r.requests) == 0 else 200) as r:
        e = exporter(r, batch_events=10)
        e.add([exec_event(i) for i in range(30)], OFFSET)
        assert e.close() == (20, 10)
        assert e.rejected == 10 and len(r.records) == 20
        assert any("400" in s for s in e.said)


def test_a_partial_success_counts_the_rejected_records():
    with Receiver() as r:
        reply = r.Response()
        reply.partial_success.rejected_log_records = 2
        reply.partial_success.error_message = "too old"
        r.Response = lambda: reply
        e = exporter(r, batch_events=10)
        e.add([exec_event(i) for i in range(10)], OFFSET)
        assert e.close() == (8, 2)
        assert any("too old" in s for s in e.said)


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                      # nothing listens there now
    return f"http://127.0.0.1:{port}"


def test_a_collector_gone_for_good_drops_at_the_deadline():
    e = exporter(closed_port_url(), batch_events=10, timeout=1.0)
    e.add([exec_event(i) for i in range(35)], OFFSET)
    began = time.monotonic()
    assert e.close() == (0, 35)
    assert time.monotonic() - began < 1.5
    assert any("Connection refused" in s for s in e.said)
    assert any("35 events not sent" in s for s in e.said)


def test_a_full_queue_drops_whole_batches_and_counts_them():
    gate = threading.Event()

    def answer(receiver):
        return 200 if gate.is_set() else 503

    with Receiver(answer) as r:
        e = exporter(r, batch_events=10, queue_events=30, timeout=5)
        e.add([exec_event(j) for j in range(10)], OFFSET)
        end = time.monotonic() + 5
        while not r.requests and time.monotonic() < end:
            time.sleep(0.01)                       # the first batch is in flight
        for i in range(1, 10):                     # 90 more events, 9 batches
            e.add([exec_event(i * 10 + j) for j in range(10)], OFFSET)
        # One batch in flight (being retried), three queued: six dropped.
        assert e.dropped == 60
        assert any("queue" in s and "full" in s for s in e.said)
        gate.set()
        sent, dropped = e.close()
        assert (sent, dropped) == (40, 60) and len(r.records) == 40


def test_lost_lines_on_stderr_say_what_was_not_exported():
    base = {"dropped": 0, "ringbuf_full": 0, "map_full": 0, "missed_by_kernel": 0}
    assert lost_line({**base, "otlp_dropped": 12}) == "rbtrace: 12 events not exported to OTLP"
    assert lost_line({**base, "dropped": 2, "ringbuf_full": 2, "otlp_dropped": 1}) == (
        "rbtrace: 2 events dropped (ring full 2, map full 0), 1 events not exported to OTLP")
    assert lost_line(base) == "rbtrace: 0 events dropped (ring full 0, map full 0)"


def test_session_reports_otlp_drops_in_lost_records_and_the_summary():
    from rbtrace.session import Session

    class Loaded:
        def counters(self):
            return [10, 0, 0, 0]

        def prog_misses(self):
            return 0

    class Exporter:
        sent, dropped = 0, 0
        closed = False

        def tick(self):
            pass

    class Renderer:
        shows_tally = False

        def __init__(self):
            self.records = []

        def lost(self, record):
            self.records.append(record)

        def tick(self, stats):
            self.stats = stats

    class Probe:
        name = "exec"
        tally = ()

    class Ring:
        discarded = 0

        def fill(self):
            return 0

    ex, renderer = Exporter(), Renderer()
    s = Session(Probe(), renderer, Loaded(), Ring(), exporter=ex)
    s.started = 0.0
    s._report(Loaded(), Ring(), 1.0)
    assert renderer.records == []
    ex.dropped = 4
    s._report(Loaded(), Ring(), 1.1)
    ex.dropped, ex.sent = 9, 1
    summary = s._summary(Loaded())
    assert [(r["otlp_dropped"], r["total_otlp_dropped"]) for r in renderer.records] == [(4, 4),
                                                                                      (5, 9)]
    assert all(r["dropped"] == 0 for r in renderer.records)
    assert summary["otlp_dropped"] == 9 and summary["otlp_sent"] == 1


def test_a_collector_that_never_answers_is_cut_at_the_deadline():
    def answer(receiver):
        time.sleep(3)              # holds the request past the deadline
        return 200

    with Receiver(answer) as r:
        e = exporter(r, batch_events=10, timeout=1.0)
        e.add([exec_event(i) for i in range(10)], OFFSET)
        e.tick()
        began = time.monotonic()
        assert e.close() == (0, 10)
        assert time.monotonic() - began < 1.5
        assert any("10 events not sent" in s for s in e.said)
        time.sleep(2.5)            # its late 200 changes nothing now
        assert (e.sent, e.dropped) == (0, 10)
