"""Loopback TCP workload for tests/kernel/test_tcp.py, run as rbtrace's
`-- CMD`.  It keeps its own record (JSON, written to argv[1]) of what the
events must say: pids, both ends of each connection from getsockname and
getpeername, the bytes each side sent and received, `ss -tni`'s counters
taken before close, connect results, and CLOCK_MONOTONIC bounds.

Scenarios (argv[2:]), run in order:
  pair:FAMILY:PORT:CSEND:SSEND[:nb][:sfirst]  a server (a child process named
      tcp-server) listening on
      PORT accepts one connection from this process, reads CSEND bytes,
      sends SSEND, then both close in order (the client first).  nb: the
      client connects non-blocking (EINPROGRESS, then poll).
  refused:FAMILY:PORT[:nb]  a connect, from a bound port, to PORT where
      nothing listens (ECONNREFUSED).
  aborted:FAMILY:PORT:HOW  a connect to a listener whose accept queue is
      full (one connection waits in it, never accepted), so its SYN gets no
      answer; HOW is nb (non-blocking: EINPROGRESS) or signal (blocking,
      interrupted by SIGALRM).  The socket is then closed before the
      handshake ended; then the listener, which resets the waiting one.
FAMILY is 4 (127.0.0.1) or 6 (::1), or a loopback address to listen on
(127.0.0.2).
"""
import ctypes
import errno
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

class Hosts(dict):
    def __missing__(self, address):
        return address                              # an address given as such


HOST = Hosts({"4": "127.0.0.1", "6": "::1"})


class Families(dict):
    def __missing__(self, address):
        return socket.AF_INET6 if ":" in address else socket.AF_INET


FAMILY = Families({"4": socket.AF_INET, "6": socket.AF_INET6})


def family_number(fam):
    return 6 if FAMILY[fam] == socket.AF_INET6 else 4


def free_port(family):
    """A port nothing listens on, on both 127.0.0.1 and ::1 (family 4 or 6
    says which is tried first)."""
    hosts = {4: "127.0.0.1", 6: "::1"}
    families = {4: socket.AF_INET, 6: socket.AF_INET6}
    for _ in range(100):
        with socket.socket(families[family]) as s:
            s.bind((hosts[family], 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(families[10 - family]) as t:
                t.bind((hosts[10 - family], port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port")


def ss_counters(local, remote):
    """bytes_acked and bytes_received of one connection, as ss -tni shows them."""
    def ep(a):
        return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
    out = subprocess.run(["ss", "-tniH", "state", "established", "src", ep(local),
                          "dst", ep(remote)], capture_output=True, text=True, check=True).stdout
    def num(name):
        m = re.search(rf"\b{name}:(\d+)", out)
        return int(m.group(1)) if m else 0     # ss leaves out a zero counter
    return {"bytes_acked": num("bytes_acked"), "bytes_received": num("bytes_received"),
            "bytes_sent": num("bytes_sent"), "seen": bool(out.strip())}


def own_comm():
    with open("/proc/self/comm", "rb") as f:
        return f.read().rstrip(b"\n").decode()


def recv_exactly(s, n):
    got = 0
    while got < n:
        chunk = s.recv(min(65536, n - got))
        if not chunk:
            raise SystemExit(f"peer closed after {got} of {n} bytes")
        got += len(chunk)
    return got


SERVER_COMM = b"tcp-server"


def server(fam, port, csend, ssend, to_parent, from_parent, server_first):
    # a name of its own, for -n (prctl PR_SET_NAME)
    ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(SERVER_COMM), 0, 0, 0)
    srv = socket.socket(FAMILY[fam], socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST[fam], port))
    srv.listen(1)
    os.write(to_parent, b"L")                          # listening
    a, peer = srv.accept()
    rec = {"pid": os.getpid(), "comm": own_comm(), "local": list(a.getsockname()[:2]), "peer": list(peer[:2])}
    recv_exactly(a, csend)
    a.sendall(b"s" * ssend)
    os.read(from_parent, 1)                            # the client has all, and has read ss
    rec["ss"] = wait_acked(a.getsockname(), a.getpeername(), ssend)
    os.write(to_parent, b"S")
    if not server_first:
        assert a.recv(1) == b""                        # the client's FIN
    a.close()
    srv.close()
    os.write(to_parent, json.dumps(rec).encode())
    os._exit(0)


def wait_acked(local, remote, sent):
    """ss until every byte sent is acknowledged (a delayed ACK may lag)."""
    for _ in range(500):
        c = ss_counters(local, remote)
        if c["bytes_sent"] == sent and c["bytes_acked"] >= sent:
            return c
        time.sleep(0.01)
    raise SystemExit(f"ss never showed {sent} bytes acked for {local}")


def pair(fam, port, csend, ssend, nb=False, server_first=False):
    csend, ssend, port = int(csend), int(ssend), int(port)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r1)
        os.close(w2)
        server(fam, port, csend, ssend, w1, r2, server_first)
    os.close(w1)
    os.close(r2)
    assert os.read(r1, 1) == b"L"
    rec = {"scenario": "pair", "family": family_number(fam), "pid": os.getpid(), "comm": own_comm(),
           "server_pid": child,
           "nonblocking": bool(nb), "server_first": server_first, "csend": csend,
           "ssend": ssend}
    c = socket.socket(FAMILY[fam], socket.SOCK_STREAM)
    rec["t_before"] = time.monotonic_ns()
    if nb:
        c.setblocking(False)
        rec["ret"] = -c.connect_ex((HOST[fam], port))
        select.select([], [c], [])
        rec["outcome"] = -c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        c.setblocking(True)
    else:
        c.connect((HOST[fam], port))
        rec["ret"] = 0
    rec["local"], rec["peer"] = list(c.getsockname()[:2]), list(c.getpeername()[:2])
    c.sendall(b"c" * csend)
    recv_exactly(c, ssend)
    rec["ss"] = wait_acked(c.getsockname(), c.getpeername(), csend)
    os.write(w2, b"G")
    assert os.read(r1, 1) == b"S"                      # the server took its ss
    if server_first:
        assert c.recv(1) == b""                        # the server's FIN
    c.close()
    data = b""
    while True:
        chunk = os.read(r1, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(child, 0)
    rec["server"] = json.loads(data)
    rec["t_after"] = time.monotonic_ns()
    return rec


def refused(fam, port, nb=False):
    port = int(port)
    c = socket.socket(FAMILY[fam], socket.SOCK_STREAM)
    c.bind((HOST[fam], 0))                             # a bound port survives the failure
    rec = {"scenario": "refused", "family": family_number(fam), "pid": os.getpid(), "comm": own_comm(),
           "nonblocking": bool(nb), "local": list(c.getsockname()[:2]),
           "peer": [HOST[fam], port]}
    if nb:
        c.setblocking(False)
        rec["ret"] = -c.connect_ex((HOST[fam], port))
        select.select([], [c], [])
        rec["outcome"] = -c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    else:
        rec["ret"] = -c.connect_ex((HOST[fam], port))
    c.close()
    return rec


class Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise Interrupted()             # no retry by Python (PEP 475): the call ends


def aborted(fam, port, how):
    port = int(port)
    srv = socket.socket(FAMILY[fam], socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST[fam], port))
    srv.listen(0)                   # one connection fills the queue
    fill = socket.create_connection((HOST[fam], port))
    rec = {"scenario": "aborted", "family": family_number(fam), "pid": os.getpid(),
           "comm": own_comm(), "how": how, "fill": {
               "local": list(fill.getsockname()[:2]), "peer": list(fill.getpeername()[:2]),
               "ss": ss_counters(fill.getsockname(), fill.getpeername())}}
    c = socket.socket(FAMILY[fam], socket.SOCK_STREAM)
    c.bind((HOST[fam], 0))
    rec["local"], rec["peer"] = list(c.getsockname()[:2]), [HOST[fam], port]
    if how == "nb":
        c.setblocking(False)
        rec["ret"] = -c.connect_ex((HOST[fam], port))
    else:
        old = signal.signal(signal.SIGALRM, _interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            c.connect((HOST[fam], port))
            rec["ret"] = 0
        except Interrupted:
            rec["ret"] = -errno.EINTR
        signal.signal(signal.SIGALRM, old)
    rec["so_error"] = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    c.close()
    srv.close()                     # resets the connection waiting in the queue
    for _ in range(500):            # until fill has seen the reset
        if fill.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or fill.recv(1) == b"":
            break
    fill.close()
    return rec


def main():
    out, records = sys.argv[1], []
    for spec in sys.argv[2:]:
        kind, *args = spec.split(":")
        if kind == "aborted":
            records.append(aborted(*args))
            continue
        flags = {}
        while args[-1] in ("nb", "sfirst"):
            flags[{"nb": "nb", "sfirst": "server_first"}[args.pop()]] = True
        records.append({"pair": pair, "refused": refused}[kind](*args, **flags))
    with open(out, "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    main()
