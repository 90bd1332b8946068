"""rbtrace tcp on the real kernel, against ground truth: a loopback server
and client (tests/kernel/tcp_workload.py) run as the followed command, so
that no other traffic on the machine reaches the events, and keep their own
record: pids, both ends from getsockname/getpeername and accept(), the bytes
each side sent and received, `ss -tni` before close, connect results
(connect_ex, SO_ERROR) and CLOCK_MONOTONIC bounds."""
import errno
import json
import os
import socket
import sys
import threading

import pytest

from conftest import parse_json_lines, run_cli
from tcp_workload import free_port

WORKLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcp_workload.py")
HOST = {4: "127.0.0.1", 6: "::1"}


def trace(tmp_path, scenarios, *options):
    """(events, records, result) of `rbtrace tcp --json OPTIONS -- workload`."""
    record = tmp_path / "record.json"
    p = run_cli("tcp", "--json", *options, "--", sys.executable, WORKLOAD, str(record),
                *scenarios)
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    assert r.summary["command"]["status"] == 0, r.stderr
    assert r.summary["dropped"] == 0 and r.summary["map_full"] == 0, r.summary
    with open(record) as f:
        return r.events, json.load(f), r


def key(e):
    return (e["event"], e["source"], e["pid"], e["family"], e["saddr"], e["sport"], e["daddr"],
            e["dport"], e["ret"], e["errno"], e["tx_bytes"], e["rx_bytes"])


def ev(event, pid, family, local, remote, source=None, ret=None, tx=None, rx=None):
    from rbtrace.fields import errno_name
    return (event, source, pid, family, local[0], local[1], remote[0], remote[1], ret,
            (errno_name(ret) or None) if ret is not None else None, tx, rx)


def expected(records):
    """The events each scenario must give, from the workload's record."""
    out = []
    for r in records:
        fam, pid = r["family"], r["pid"]
        local, peer = r["local"], r["peer"]
        if r["scenario"] == "aborted":
            # The connection waiting in the full queue: reset when the
            # listener closed, so its bytes_acked is its SYN alone.
            f = r["fill"]
            out.append(ev("connect", pid, fam, f["local"], f["peer"], "syscall", 0))
            out.append(ev("close", pid, fam, f["local"], f["peer"],
                          tx=f["ss"]["bytes_acked"], rx=f["ss"]["bytes_received"]))
            # Interrupted, the blocking call returns EINTR to the caller,
            # and ERESTARTSYS at the exit tracepoint, where signals are not
            # delivered yet.  Closed before the handshake ended, without an
            # error on the socket: ECONNABORTED.
            assert r["so_error"] == 0
            if r["how"] == "signal":
                assert r["ret"] == -errno.EINTR
            ret = -512 if r["how"] == "signal" else r["ret"]
            out.append(ev("connect", pid, fam, local, peer, "syscall", ret))
            out.append(ev("connect", pid, fam, local, peer, "state", -errno.ECONNABORTED))
            continue
        out.append(ev("connect", pid, fam, local, peer, "syscall", r["ret"]))
        if r["nonblocking"]:
            out.append(ev("connect", pid, fam, local, peer, "state", r["outcome"]))
        if r["scenario"] != "pair":
            continue
        s = r["server"]
        out.append(ev("accept", s["pid"], fam, s["local"], s["peer"]))
        # bytes_acked and bytes_received count sequence space: ss before
        # close, then one for each FIN of the orderly close.  The client's
        # own count of bytes: its SYN is in bytes_acked too (the server's
        # SYN-ACK is not: its counter starts after the handshake).
        assert r["ss"]["bytes_acked"] == r["csend"] + 1 and r["ss"]["bytes_received"] == r["ssend"]
        assert s["ss"]["bytes_acked"] == r["ssend"] and s["ss"]["bytes_received"] == r["csend"]
        out.append(ev("close", pid, fam, local, peer,
                      tx=r["ss"]["bytes_acked"] + 1, rx=r["ss"]["bytes_received"] + 1))
        out.append(ev("close", s["pid"], fam, s["local"], s["peer"],
                      tx=s["ss"]["bytes_acked"] + 1, rx=s["ss"]["bytes_received"] + 1))
    return sorted(out, key=repr)


def scenarios():
    p4, p6, closed, full = free_port(4), free_port(6), free_port(4), free_port(6)
    while len({p4, p6, closed, full}) < 4:
        p6, closed, full = free_port(6), free_port(4), free_port(6)
    # 127.0.0.2 is loopback too: a server there tells --addr from a
    # family filter (its clients' local address is 127.0.0.1).
    return (p4, p6, closed), [f"pair:4:{p4}:1000:3000", f"pair:6:{p6}:1500:2500:nb",
                              f"pair:4:{p4}:7:70000:nb", f"pair:127.0.0.2:{p4}:11:13",
                              f"pair:6:{p6}:17:19:sfirst",
                              f"refused:4:{closed}", f"refused:6:{closed}:nb",
                              f"aborted:4:{full}:nb", f"aborted:6:{full}:signal"]


class Traffic(threading.Thread):
    """Loopback connections from this process, not followed, all along:
    none of their events may appear, state changes in softirq included."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.connections = 0

    def run(self):
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(8)
            while not self.stop.is_set():
                with socket.create_connection(srv.getsockname()) as c:
                    a, _ = srv.accept()
                    c.sendall(b"x")
                    a.recv(1)
                    a.close()
                self.connections += 1


def test_connections_match_the_workload_and_ss(tmp_path):
    _, specs = scenarios()
    traffic = Traffic()
    traffic.start()
    try:
        events, records, _ = trace(tmp_path, specs)
    finally:
        traffic.stop.set()
        traffic.join()
    assert traffic.connections > 0
    assert sorted(map(key, events), key=repr) == expected(records)
    comm = {r["pid"]: r["comm"] for r in records}
    comm.update((r["server"]["pid"], r["server"]["comm"]) for r in records if r["scenario"] == "pair")
    for e in events:
        assert e["type"] == "tcp" and e["comm"] == comm[e["pid"]] and e["tid"] == e["pid"]
    # The server (a child of the client) is followed too, and its close,
    # which ends in the network stack's context, is still its own.
    servers = {r["server"]["pid"] for r in records if r["scenario"] == "pair"}
    for e in events:
        if e["pid"] in servers:
            assert e["ppid"] == records[0]["pid"]
    # One connection's events share its sock, in order, within the
    # workload's own time bounds; duration_ns runs from the connect or
    # accept call to the close.
    by_sock = {}
    for e in events:
        by_sock.setdefault((e["sock"], e["sport"], e["dport"]), []).append(e)
    pairs = [r for r in records if r["scenario"] == "pair"]
    for r in pairs:
        client = by_sock[next(k for k in by_sock if (k[1], k[2]) == (r["local"][1], r["peer"][1])
                              and by_sock[k][0]["event"] == "connect")]
        assert [(e["event"], e["source"]) for e in client] == (
            [("connect", "syscall")] + [("connect", "state")] * r["nonblocking"] + [("close", None)])
        assert [e["seq"] for e in client] == sorted(e["seq"] for e in client)
        close = client[-1]
        start = close["ts_ns"] - close["duration_ns"]
        assert r["t_before"] <= start <= client[0]["ts_ns"] <= close["ts_ns"] <= r["t_after"]
        server = by_sock[next(k for k in by_sock if (k[1], k[2]) == (r["peer"][1], r["local"][1])
                              and by_sock[k][0]["event"] == "accept")]
        assert [e["event"] for e in server] == ["accept", "close"]
        assert server[1]["ts_ns"] - server[1]["duration_ns"] == pytest.approx(
            server[0]["ts_ns"], abs=1_000_000)
        assert r["t_before"] <= server[0]["ts_ns"] <= server[1]["ts_ns"] <= r["t_after"]


def test_port_keeps_one_listener(tmp_path):
    (p4, p6, closed), specs = scenarios()
    events, records, _ = trace(tmp_path, specs, "--port", str(p6))
    want = expected([r for r in records if r["peer"][1] == p6])
    assert len(want) == 5 + 4                      # the two pairs on p6 (one non-blocking)
    assert sorted(map(key, events), key=repr) == want


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.0.0.2", "::1"])
def test_addr_keeps_connections_with_that_end(tmp_path, addr):
    _, specs = scenarios()
    events, records, _ = trace(tmp_path, specs, "--addr", addr)
    want = expected([r for r in records if addr in (r["local"][0], r["peer"][0])])
    assert want and len(want) < len(expected(records))
    assert sorted(map(key, events), key=repr) == want


def test_failed_keeps_failed_connects_only(tmp_path):
    _, specs = scenarios()
    events, records, _ = trace(tmp_path, specs, "-x")
    # EINPROGRESS and ERESTARTSYS are not failures: the handshake goes on.
    want = sorted((k for k in expected(records) if k[0] == "connect" and k[8] < 0
                   and k[9] not in ("EINPROGRESS", "ERESTARTSYS")), key=repr)
    assert sorted(k[9] for k in want) == ["ECONNABORTED"] * 2 + ["ECONNREFUSED"] * 2
    assert sorted(map(key, events), key=repr) == want


def test_comm_selects_connections_by_their_owner(tmp_path):
    """-n keeps the server's connections: its accepts, and their closes,
    which end in whatever context the last ACK arrives in (often the
    client's); not the client's connections, even when the client's close
    runs in the server's context."""
    _, specs = scenarios()
    events, records, _ = trace(tmp_path, specs, "-n", "tcp-server")
    servers = {r["server"]["pid"] for r in records if r["scenario"] == "pair"}
    assert all(r["server"]["comm"] == "tcp-server" for r in records if r["scenario"] == "pair")
    want = [k for k in expected(records) if k[2] in servers]
    assert len(want) == 2 * len(servers)
    assert sorted(map(key, events), key=repr) == want
