"""rbtrace tcp: TCP connections from connect or accept to close
(probes/tcp.bpf.c).

One record layout, struct tcp_event, for three kinds of events: `connect`
(the call's result, and for a non-blocking connect the outcome later),
`accept`, and `close` (duration and bytes, attributed to the process that
connected or accepted).  The JSON fields are listed once, with their kind,
in FIELDS below.
"""
import ipaddress
import socket

from rbtrace import fields
from rbtrace.kernel import btf_offsets
from rbtrace.probes import Column, Probe, cstr, pid_column, put_text, shown, time_column

# Mirrors EV_* and SRC_* in probes/tcp.bpf.c.
EVENTS = ("connect", "accept", "close")
SOURCES = ("syscall", "state")
FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}

# Every member of a tcp event line, in order, with its kind: how the raw
# record value becomes the JSON value.  A member that does not apply to an
# event kind is null (ret/errno/source outside connect; duration and bytes
# outside close).
FIELDS = (
    ("type", "const"),
    ("seq", "int"), ("time", "time"), ("ts_ns", "int"),
    ("pid", "int"), ("tid", "int"), ("ppid", "int"), ("uid", "int"), ("user", "uid"),
    ("comm", "text"),
    ("event", "enum"),            # connect, accept, close
    ("source", "enum"),           # connect: syscall (the call's result) or state (its outcome later)
    ("family", "enum"),           # 4 or 6
    ("saddr", "ip"), ("sport", "port"), ("daddr", "ip"), ("dport", "port"),
    ("ret", "int"), ("errno", "errno"),
    ("duration_ns", "duration"), ("tx_bytes", "int"), ("rx_bytes", "int"),
    ("sock", "hex"),              # the kernel's struct sock *: one connection's events share it
)
# text kinds may add `<name>_b64` when the bytes are not UTF-8
JSON_FIELDS = tuple(n for name, kind in FIELDS
                    for n in ((name, name + "_b64") if kind == "text" else (name,)))

# Kernel struct members the probe reads, by -D name (see the C file): an
# fd's file (task->files->fdt->fd[fd]), its struct socket and struct sock,
# the sock's addresses, ports, state and error, and tcp_sock's counters.
STRUCT_OFFSETS = {
    "TASK_FILES_OFF": ("task_struct", "files"),
    "FILES_FDT_OFF": ("files_struct", "fdt"),
    "FDTABLE_MAX_FDS_OFF": ("fdtable", "max_fds"),
    "FDTABLE_FD_OFF": ("fdtable", "fd"),
    "FILE_F_INODE_OFF": ("file", "f_inode"),
    "FILE_PRIVATE_DATA_OFF": ("file", "private_data"),
    "INODE_I_MODE_OFF": ("inode", "i_mode"),
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


class TcpProbe(Probe):
    name = "tcp"
    source = "tcp.bpf.c"
    event_structs = ("tcp_event",)
    tally = (("commands", "comm"), ("errors", "ret"))
    columns = (
        time_column(priority=5),
        pid_column(priority=1),
        Column("COMM", lambda e: shown(e, "comm"), width=15, min_width=6, priority=4),
        Column("EVENT", _event_cell, width=8, priority=2, whole=True),
        Column("LOCAL", lambda e: _endpoint(e["saddr"], e["sport"]), width=21, min_width=9,
               keep="end", priority=3),
        Column("REMOTE", lambda e: _endpoint(e["daddr"], e["dport"]), min_width=9,
               keep="end", priority=1),
        Column("RESULT", _result, width=11, justify="right", priority=2, whole=True),
        Column("TX/RX", _bytes, width=15, justify="right", priority=6, whole=True),
    )

    def cflags(self):
        flags = super().cflags()
        o = self.options
        if o.get("port"):
            flags["FILTER_PORT"] = int(o["port"])
        if o.get("addr") is not None:
            addr = o["addr"]
            if isinstance(addr, str):
                addr = parse_addr(addr)
            flags.update(addr_cflags(addr))
        flags.update(btf_offsets(STRUCT_OFFSETS))
        return flags

    def decode(self, event_type, records, offsets, data):
        clock = self.clock
        out = []
        for rec in records:
            out.append(self._event(rec, clock))
        return out

    def _event(self, rec, clock):
        ts = int(rec["ts_ns"])
        uid = int(rec["uid"])
        kind = EVENTS[int(rec["kind"])] if int(rec["kind"]) < len(EVENTS) else str(int(rec["kind"]))
        t = rec                    # the tuple's members, flattened (see bpf.py)
        fam = int(t["family"])
        e = {"type": "tcp", "seq": int(rec["seq"]), "time": clock.iso(ts), "ts_ns": ts,
             "pid": int(rec["pid"]), "tid": int(rec["tid"]), "ppid": int(rec["ppid"]),
             "uid": uid, "user": fields.user_name(uid)}
        put_text(e, "comm", cstr(bytes(rec["comm"])))
        e["event"] = kind
        e["source"] = SOURCES[int(rec["source"]) & 1] if kind == "connect" else None
        e["family"] = FAMILIES.get(fam, fam)
        e["saddr"] = address(fam, bytes(t["saddr"]))
        e["sport"] = int(t["sport"])
        e["daddr"] = address(fam, bytes(t["daddr"]))
        e["dport"] = int(t["dport"])
        if kind == "connect":
            r = int(rec["ret"])
            e["ret"] = r
            e["errno"] = fields.errno_name(r) or None
        else:
            e["ret"] = e["errno"] = None
        if kind == "close":
            e["duration_ns"] = int(rec["duration_ns"])
            e["tx_bytes"] = int(rec["tx_bytes"])
            e["rx_bytes"] = int(rec["rx_bytes"])
        else:
            e["duration_ns"] = e["tx_bytes"] = e["rx_bytes"] = None
        e["sock"] = hex(int(rec["sock"]))
        return e
