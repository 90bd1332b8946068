"""rbtrace exit's decoding: the wait status and lifetime kinds of FIELDS,
the table's cells, and decode() over records laid out as the C struct
(probes/exit.bpf.c: struct rb_header, u64 start_ns, u32 status, u32 pad).
The ground truth for statuses is what os.W* make of them."""
import os
import signal

import numpy as np
import pytest

from rbtrace.codec import make
from rbtrace.kinds import exit as exit_probe

DTYPE = np.dtype([("ts_ns", "<u8"), ("seq", "<u8"), ("pid", "<u4"), ("tid", "<u4"),
                  ("ppid", "<u4"), ("uid", "<u4"), ("comm", "S16"), ("proc_start_ns", "<u8"),
                  ("rb_kind", "<u4"), ("rb_pad", "<u4"), ("cgroup_id", "<u8"), ("start_ns", "<u8"),
                  ("status", "<u4"), ("pad", "<u4")])

STATUSES = [0, 3 << 8, 255 << 8, signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV | 0x80,
            signal.SIGABRT | 0x80, 34, 64]      # 34, 64: real-time signals


@pytest.mark.parametrize("status", STATUSES)
def test_status_kinds_agree_with_the_wait_macros(status):
    if os.WIFEXITED(status):
        assert exit_probe.exit_code(status) == os.WEXITSTATUS(status)
        assert exit_probe.signal_name(status) is None
    else:
        assert exit_probe.exit_code(status) is None
        number = os.WTERMSIG(status)
        name = exit_probe.signal_name(status)
        try:
            assert name == signal.Signals(number).name
        except ValueError:
            assert name == f"SIG{number}"
    assert exit_probe.core_dumped(status) == os.WCOREDUMP(status)


def test_decode_makes_every_declared_member_in_order():
    rec = np.zeros(3, dtype=DTYPE)
    rec["ts_ns"] = [5_000_000_000, 7_000_000_000, 9_000_000_000]
    rec["start_ns"] = [4_999_000_000, 1_000_000_000, 8_999_999_000]
    rec["seq"] = [0, 1, 2]
    rec["pid"] = rec["tid"] = [10, 11, 12]
    rec["comm"] = [b"sh", b"make", b"\xffbad"]
    rec["status"] = [0, 3 << 8, signal.SIGSEGV | 0x80]
    data = rec.tobytes()
    offsets = np.arange(3, dtype="i8") * DTYPE.itemsize
    probe = make(exit_probe.SPEC, {})
    events = probe.decode(None, np.frombuffer(data, dtype=DTYPE), offsets, memoryview(data))
    assert [list(e) for e in events[:2]] == [[f for f in exit_probe.SPEC.json_fields
                                             if f != "comm_b64"]] * 2
    assert set(events[2]) == set(exit_probe.SPEC.json_fields)
    assert [e["duration_ns"] for e in events] == [1_000_000, 6_000_000_000, 1000]
    assert [(e["exit_code"], e["signal"], e["core_dumped"]) for e in events] == \
        [(0, None, False), (3, None, False), (None, "SIGSEGV", True)]
    cells = {c.header: c for c in probe.columns}
    assert [cells["CODE/SIGNAL"].value(e) for e in events] == ["0", "3", "SIGSEGV core"]
    assert [cells["AGE"].value(e) for e in events] == ["1ms", "6s", "1us"]


@pytest.mark.parametrize("ns, text", [
    (0, "0us"), (999_999, "999us"), (12_300_000, "12.3ms"), (4_070_000_000, "4.07s"),
    (999_499_999, "999ms"), (999_500_000, "1s"), (999_999_999, "1s"), (59_949_999_999, "59.9s"),
    (59_950_000_000, "1m00s"), (59_999_999_999, "1m00s"), (60 * 10**9, "1m00s"),
    (302 * 10**9, "5m02s"), (3 * 3600 * 10**9 + 5 * 60 * 10**9, "3h05m"),
    (2 * 86400 * 10**9 + 4 * 3600 * 10**9, "2d04h"),
])
def test_age_text(ns, text):
    assert exit_probe.age_text(ns) == text


def test_decoded_events_are_valid_against_the_shipped_schema():
    """Every status kind, a non-UTF-8 comm: the events as decoded are valid
    lines of the schema `rbtrace schema` prints (schemacheck); a member
    the codec adds without declaring it in the spec fails here."""
    import schemacheck
    rec = np.zeros(len(STATUSES), dtype=DTYPE)
    rec["ts_ns"] = 9_000_000_000
    rec["start_ns"] = 1_000_000_000
    rec["seq"] = np.arange(len(STATUSES))
    rec["pid"] = rec["tid"] = rec["ppid"] = 42
    rec["uid"] = 65534
    rec["comm"] = [b"sh", b"\xffbad"] * (len(STATUSES) // 2) + [b"x"] * (len(STATUSES) % 2)
    rec["status"] = STATUSES
    data = rec.tobytes()
    offsets = np.arange(len(STATUSES), dtype="i8") * DTYPE.itemsize
    events = make(exit_probe.SPEC, {}).decode(None, np.frombuffer(data, dtype=DTYPE), offsets,
                                              memoryview(data))
    assert len(events) == len(STATUSES) and any("comm_b64" in e for e in events)
    schemacheck.check(events, "decoded exit events")
    broken = dict(events[0], undeclared=1)
    assert schemacheck.problems(broken), "a member the spec lacks must be refused"
