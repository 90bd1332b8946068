"""rbtrace tcp: TCP connections from connect or accept to close
(probes/tcp.bpf.c).

One record layout, struct tcp_event, for three kinds of events: `connect`
(the call's result, and for a non-blocking connect the outcome later),
`accept`, and `close` (duration and bytes, attributed to the process that
connected or accepted).  SPEC below declares the event's members, options
and columns.
"""
import errno
import ipaddress
import socket

import click

from rbtrace import fields
from rbtrace.codec import Codec, shown
from rbtrace.kernel import FD_FILE_OFFSETS
from rbtrace.spec import Column, Field, Option, Spec, pid_column, time_column

# The event kinds and connect sources, by their number in the record: the
# probe gets them as -D flags (EV_CONNECT=0 ..., SRC_SYSCALL=0 ...).
EVENTS = ("connect", "accept", "close")
SOURCES = ("syscall", "state")
FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}

# Kernel struct members the probe reads, by -D name (see the C file): an
# fd's file (task->files->fdt->fd[fd]), its struct socket and struct sock,
# the sock's addresses, ports, state and error, and tcp_sock's counters.
STRUCT_OFFSETS = {
    **FD_FILE_OFFSETS,
    "FILE_PRIVATE_DATA_OFF": ("file", "private_data"),
    "SOCKET_SK_OFF": ("socket", "sk"),
    "SOCK_SK_PROTOCOL_OFF": ("sock", "sk_protocol"),
    "SOCK_SK_TYPE_OFF": ("sock", "sk_type"),
    "SOCK_SK_ERR_OFF": ("sock", "sk_err"),
    "SKC_FAMILY_OFF": ("sock_common", "skc_family"),
    "SKC_STATE_OFF": ("sock_common", "skc_state"),
    "SKC_NUM_OFF": ("sock_common", "skc_num"),
    "SKC_DPORT_OFF": ("sock_common", "skc_dport"),
    "SKC_RCV_SADDR_OFF": ("sock_common", "skc_rcv_saddr"),
    "SKC_DADDR_OFF": ("sock_common", "skc_daddr"),
    "SKC_V6_RCV_SADDR_OFF": ("sock_common", "skc_v6_rcv_saddr"),
    "SKC_V6_DADDR_OFF": ("sock_common", "skc_v6_daddr"),
    "TCP_BYTES_ACKED_OFF": ("tcp_sock", "bytes_acked"),
    "TCP_BYTES_RECEIVED_OFF": ("tcp_sock", "bytes_received"),
}


def parse_addr(text: str):
    """--addr: an IPv4 or IPv6 address (ipaddress object); ValueError if not."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def addr_cflags(addr) -> dict:
    """FILTER_ADDR_* flags: the address's bytes as two little-endian words,
    as the C side loads them from the record."""
    raw = addr.packed.ljust(16, b"\0")
    return {"FILTER_ADDR_FAMILY": int(socket.AF_INET if addr.version == 4 else socket.AF_INET6),
            "FILTER_ADDR_LO": hex(int.from_bytes(raw[:8], "little")) + "ULL",
            "FILTER_ADDR_HI": hex(int.from_bytes(raw[8:], "little")) + "ULL"}


def address(family: int, raw: bytes) -> str:
    """"127.0.0.1", "::1" from the record's 16 address bytes (numpy gives a
    u8[16] member as bytes without its trailing NULs)."""
    raw = raw.ljust(16, b"\0")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _result(e):
    if e["event"] == "connect":
        return e["errno"] or "ok"
    if e["event"] == "close":
        return f"{e['duration_ns'] / 1e9:.3f}s"
    return ""


def _bytes(e):
    if e["event"] != "close":
        return ""
    return f"{e['tx_bytes']}/{e['rx_bytes']}"


def _event_cell(e):
    return "connect…" if e["source"] == "state" else e["event"]


class AddrType(click.ParamType):
    """An IPv4 or IPv6 address (--addr)."""

    name = "ADDR"

    def convert(self, value, param, ctx):
        try:
            return parse_addr(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _addr_flags(addr) -> dict:
    return addr_cflags(parse_addr(addr) if isinstance(addr, str) else addr)


def _name(names, i):
    return names[i] if i < len(names) else str(i)


class TcpCodec(Codec):
    event_structs = ("tcp_event",)

    def cflags(self):
        flags = super().cflags()
        flags.update({f"EV_{n.upper()}": i for i, n in enumerate(EVENTS)})
        flags.update({f"SRC_{n.upper()}": i for i, n in enumerate(SOURCES)})
        return flags

    def bodies(self, event_type, records, offsets, data):
        out = []
        cols = (records["kind"].tolist(), records["source"].tolist(),
                records["family"].tolist(), records["saddr"].tolist(),
                records["sport"].tolist(), records["daddr"].tolist(),
                records["dport"].tolist(), records["ret"].tolist(),
                records["duration_ns"].tolist(), records["tx_bytes"].tolist(),
                records["rx_bytes"].tolist(), records["sock"].tolist())
        errno_name = fields.errno_name
        for kind, src, fam, sa, sp, da, dp, ret, dur, tx, rx, sock in zip(*cols):
            event = _name(EVENTS, kind)
            connect = event == "connect"
            close = event == "close"
            out.append({
                "event": event,
                "source": SOURCES[src & 1] if connect else None,
                "family": FAMILIES.get(fam, fam),
                "saddr": address(fam, sa), "sport": sp,
                "daddr": address(fam, da), "dport": dp,
                "ret": ret if connect else None,
                "errno": (errno_name(ret) or None) if connect else None,
                "duration_ns": dur if close else None,
                "tx_bytes": tx if close else None,
                "rx_bytes": rx if close else None,
                "sock": f"0x{sock:x}",
            })
        return out


def failed_connect(e) -> bool:
    """What -x keeps, as the probe decides it: a connect whose ret is an
    error, other than one that lets the handshake go on (EINPROGRESS,
    EINTR, ERESTARTSYS and its kin, -512 to -516)."""
    ret = e.get("ret")
    return (e.get("event") == "connect" and isinstance(ret, int) and ret < 0
            and ret not in (-errno.EINPROGRESS, -errno.EINTR) and not -516 <= ret <= -512)


SPEC = Spec(
    name="tcp",
    # The man page's words (rbtrace/mandoc.py): this kind's own, in place
    # of the common ones.
    man={
        # rbtrace(8), COMMANDS
        "command": ("TCP connections, from connect or accept to close: the result of each connect, "
                    "the peer of each accept, the duration and bytes of each connection."),
        "pid": "Only connections connected or accepted by this process (thread group id, 1 to "
               "4194304), all its threads. Checked in the kernel at the call.",
        "uid": "Only connections connected or accepted by this user, a name or a number: the "
               "real user id of the calling thread. Checked in the kernel at the call.",
        "comm": "Only connections connected or accepted by threads whose command name is "
                "exactly *COMM* (1 to 15 bytes). Checked in the kernel at the call.",
        "failed": "Only failed connects: a **connect** event whose **ret** is an error other "
                  "than **EINPROGRESS**, **EINTR** and **ERESTARTSYS** (the handshake goes "
                  "on), and the failed outcome of a non-blocking connect. No **accept** or "
                  "**close** events. Checked in the kernel.",
        "port": "Only connections whose local or remote port is *PORT* (1 to 65535): both ends"
                " of a connection to a local server on that port, and connects to that port "
                "elsewhere. Checked in the kernel when the connect or accept returns (the "
                "local port of a connect is chosen during the call), once per connection: a "
                "connection that does not match is forgotten then.",
        "addr": "Only connections whose local or remote address is *ADDR*, an IPv4 "
                "(**127.0.0.1**) or IPv6 (**::1**) address, compared in the kernel like "
                "**--port**. An IPv4 address does not match an IPv6 socket's IPv4-mapped "
                "address (**::ffff:127.0.0.1**).",
        "column.PID": "The process that connected or accepted (the owner, see **Whose "
                      "events**).",
        "column.COMM": "Its command name.",
        "column.EVENT": "**connect**, **connect…** (the later outcome of a non-blocking "
                        "connect), **accept** or **close**.",
        "column.LOCAL": "The local address and port, *addr:port* or *[addr]:port*.",
        "column.RESULT": "For a connect, **ok** or the error name (**ECONNREFUSED**, "
                         "**EINPROGRESS**); for a close, its duration in seconds.",
        "column.TX/RX": "For a close, **tx_bytes/rx_bytes** (see below).",
        "event.time": "Wall-clock time of the event, decoded from **ts_ns**: ISO 8601 in UTC "
                      "with nanoseconds, as in “**2026-12-01T07:23:04.247907736Z**”.",
        "event.ts_ns": "Raw time of the event: the kernel's **CLOCK_MONOTONIC** in "
                       "nanoseconds, as **clock_gettime**(2) gives it.",
        "event.pid": "The process that connected or accepted (thread group id): the caller for"
                     " the events of a call, the connection's owner for the events of a state "
                     "change (see **Whose events**).",
        "event.tid": "Its thread.",
        "event.ppid": "Its parent (thread group id), at the connect or accept.",
        "event.uid": "Raw real user id of that thread (in the initial user namespace).",
        "event.user": "**uid**, decoded: the login name, or the number as a string.",
        "event.comm": "The thread's command name (at most 15 bytes).",
        "event.event": "**\"connect\"**, **\"accept\"** or **\"close\"**.",
        "event.source": "For a connect: **\"syscall\"** (the call's result, when it returned) or"
                        " **\"state\"** (the outcome of a connect that returned **EINPROGRESS** "
                        "or **EINTR**, when the handshake ended).",
        "event.saddr": "The local address, as text: **\"127.0.0.1\"**, **\"::1\"**. For a connect "
                       "that failed early (no route), before a local address was chosen: "
                       "**\"0.0.0.0\"** or **\"::\"**.",
        "event.sport": "The local port, a number; 0 when none was chosen (a connect that "
                       "failed before). For a connect that failed after its SYN was sent, the "
                       "port it had then (the kernel releases it before the call returns).",
        "event.daddr": "The remote address: for a connect, the one the caller asked for.",
        "event.ret": "For a connect: 0, or a negative error number (-512, **ERESTARTSYS**, for"
                     " a call interrupted by a signal: see **DESCRIPTION**).",
        "event.errno": "For a connect: **ret**, decoded: the error's name (**\"ECONNREFUSED\"**,"
                       " **\"EINPROGRESS\"**), or **null** when it succeeded.",
        "event.duration_ns": "For a close: nanoseconds from the connect call (its start) or "
                             "the accept call (its return) to the close.",
        "event.tx_bytes": "For a close: the kernel's **bytes_acked** for the connection (RFC "
                          "4898's **tcpEStatsAppHCThruOctetsAcked**, **bytes_acked** in **ss "
                          "-ti**), which counts sequence space acknowledged by the peer: the "
                          "data bytes, plus 1 for a FIN that was acknowledged, plus 1 for the "
                          "SYN on the side that connected. A connection that sent *N* bytes "
                          "and closed in order has *N*+2 on the connecting side and *N*+1 on "
                          "the accepting side.",
        "event.rx_bytes": "For a close: the kernel's **bytes_received** (RFC 4898's "
                          "**tcpEStatsAppHCThruOctetsReceived**): the data bytes received, "
                          "plus 1 for a FIN received.",
        "event.sock": "The kernel's address of the connection's socket, as a hexadecimal "
                      "string: the events of one connection share it (a later connection may "
                      "reuse it).",
        "start.filters": "The filters in effect, as text (**port=443 failed**), or an empty "
                         "string.",
        "lost.map_full": "Of those, connections the probe could not remember (its map of "
                         "connections, or of connect calls in flight, was full): for each, its"
                         " later events (the outcome of a non-blocking connect, the close) are"
                         " lost.",
        "summary.map_full": "Connections not remembered because a map was full (see the "
                            "**lost** lines).",
    },
    summary="trace TCP connections, from connect or accept to close",
    help="""TCP connections: connect (with its result), accept, and close (with
    duration and bytes), on tracepoints.  -x keeps only failed connects.

    close events, and the outcome of a non-blocking connect, happen in the
    kernel's network context: they carry the pid, comm and uid of the
    process that connected or accepted, and -p, -u, -n and -- CMD select
    connections by that process, when it connects or accepts.
    """,
    codec=TcpCodec,
    source="tcp.bpf.c",
    ring="2M",                  # connections come thousands of times slower than opens
    failed="Only failed connects (no accept or close events).",
    failed_event=failed_connect,
    offsets=STRUCT_OFFSETS,
    options=(
        Option(("--port",), "port", type=click.IntRange(1, 65535), metavar="PORT",
               help="Only connections whose local or remote port is PORT.",
               cflags="FILTER_PORT", filter=True),
        Option(("--addr",), "addr", type=AddrType(), metavar="ADDR",
               help="Only connections whose local or remote address is ADDR (IPv4 or IPv6).",
               cflags=_addr_flags, filter=True),
    ),
    # A member that does not apply to an event kind is null (ret/errno/source
    # outside connect; duration and bytes outside close).
    fields=(
        Field("event", "enum", "connect, accept or close", values=EVENTS),
        Field("source", "enum", "for a connect: syscall (the call's result, when it returned) "
              "or state (the outcome of a connect that returned EINPROGRESS or EINTR, when "
              "the handshake ended); null otherwise", null=True, values=SOURCES),
        Field("family", "enum", "4 for IPv4, 6 for IPv6", values=tuple(FAMILIES.values())),
        Field("saddr", "ip", 'the local address ("0.0.0.0" or "::" before one was chosen)'),
        Field("sport", "port", "the local port; 0 when none was chosen"),
        Field("daddr", "ip", "the remote address"),
        Field("dport", "port", "the remote port"),
        Field("ret", "int", "for a connect: 0, or a negative error number; null otherwise",
              null=True),
        Field("errno", "errno", "for a connect: the error's name, or null when it succeeded",
              null=True),
        Field("duration_ns", "duration", "for a close: nanoseconds from the connect call (its "
              "start) or the accept call (its return) to the close; null otherwise", null=True),
        Field("tx_bytes", "int", "for a close: the kernel's bytes_acked (sequence space "
              "acknowledged by the peer); null otherwise", null=True, minimum=0),
        Field("rx_bytes", "int", "for a close: the kernel's bytes_received; null otherwise",
              null=True, minimum=0),
        Field("sock", "hex", "the kernel's address of the connection's socket: the events "
              "of one connection share it"),
    ),
    columns=(
        # priority: which columns a narrow terminal drops first (highest)
        time_column(priority=5),
        pid_column(priority=1),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4,
               doc="the command name"),
        Column("EVENT", _event_cell, width=8, priority=2, whole=True,
               doc="connect, connect… (the later outcome of a non-blocking connect), "
                   "accept or close"),
        Column("LOCAL", lambda e: _endpoint(e["saddr"], e["sport"]), width=21, min_width=9,
               keep="end", priority=3, doc="the local address and port"),
        Column("REMOTE", lambda e: _endpoint(e["daddr"], e["dport"]), min_width=9,
               keep="end", priority=1, doc="the remote address and port"),
        Column("RESULT", _result, width=11, justify="right", priority=2, whole=True,
               doc="for a connect, ok or the error name; for a close, its duration in seconds"),
        Column("TX/RX", _bytes, width=15, justify="right", priority=6, whole=True,
               doc="for a close, tx_bytes/rx_bytes"),
    ),
    tree_count="TCP",
    otlp={"saddr": "network.local.address", "sport": "network.local.port",
          "daddr": "network.peer.address", "dport": "network.peer.port",
          "family": ("network.type", "ipv{}"), "*": (("network.transport", "tcp"),)},
)
