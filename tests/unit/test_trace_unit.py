"""rbtrace trace without the kernel: the kinds argument, which kind owns
which option, and TraceCodec sending each segment to its kind's codec."""
import subprocess
import sys

import numpy as np
import pytest

from rbtrace import codec, fields, trace
from rbtrace.ringbuf import EventType
from rbtrace.spec import kind_tag

from test_exit_decode import DTYPE as EXIT_DTYPE


def run(*args):
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True,
                          timeout=60)


def test_kinds_are_parsed_in_order_and_bad_ones_refused():
    assert trace.parse_kinds("exit,exec") == (["exit", "exec"], {})
    assert trace.parse_kinds(" open , tcp") == (["open", "tcp"], {})
    for text, why in (("exec,nope", "unknown kind 'nope'"), ("exec,", "an empty kind"),
                      ("open,open", "kind 'open' is given twice")):
        with pytest.raises(ValueError, match=why):
            trace.parse_kinds(text)


def test_colon_words_are_the_tracepoints_of_the_kind_that_takes_them():
    specs = trace.kind_specs()
    [colon] = [k for k, s in specs.items() if trace.colon_argument(s) is not None]
    kinds, words = trace.parse_kinds("exec,sched:sched_switch,exit,sched:sched_wakeup", specs)
    assert kinds == ["exec", colon, "exit"]
    assert words == {colon: ["sched:sched_switch", "sched:sched_wakeup"]}
    opts = trace.kind_options(specs, colon, {"pid": 1}, words)
    assert opts == {"pid": 1, trace.colon_argument(specs[colon]).name:
                    ("sched:sched_switch", "sched:sched_wakeup")}
    with pytest.raises(ValueError, match="takes its tracepoints as CATEGORY:EVENT words"):
        trace.parse_kinds(f"exec,{colon}", specs)
    with pytest.raises(ValueError, match="is given twice"):
        trace.parse_kinds("sched:sched_switch,sched:sched_switch", specs)


def test_each_kind_option_has_its_owner():
    options, owners = trace.options_by_owner(trace.kind_specs())
    assert owners["path"] == ["open"] and owners["max_args"] == ["exec"]
    assert owners["port"] == ["tcp"]
    assert len({o.name for o in options}) == len(options)


@pytest.mark.parametrize("args, message", [
    (("exec,exit", "--path", "/etc"),
     "rbtrace: --path is an option of open, which is not among the kinds traced (exec,exit)"),
    (("open", "--max-args", "3"),
     "rbtrace: --max-args is an option of exec, which is not among the kinds traced (open)"),
    (("exec,bogus",), "rbtrace: unknown kind 'bogus': the kinds are exec, exit, open, tcp, "
                      "or a tracepoint CATEGORY:EVENT"),
])
def test_usage_errors_are_one_line(args, message):
    p = run("trace", *args)
    assert p.returncode == 2
    assert p.stderr.decode().splitlines() == [message]


def exit_records(n, tag):
    rec = np.zeros(n, dtype=EXIT_DTYPE)
    rec["seq"] = np.arange(n)
    rec["ts_ns"] = 10**9 + np.arange(n)
    rec["pid"] = 100 + np.arange(n)
    rec["comm"] = b"sh"
    rec["proc_start_ns"] = 998_000_000
    rec["rb_kind"] = tag
    rec["status"] = 3 << 8
    rec["start_ns"] = 998_000_000
    return rec


def test_segments_go_to_the_codec_of_their_tag():
    run_codec = trace.make(["exec", "exit"], {})
    exit_codec = codec.make(trace.kind_specs()["exit"], {})
    exit_codec.clock = run_codec.by_name["exit"].clock = fields.Clock(offset_ns=1_700 * 10**15)
    et = EventType("exit_event", EXIT_DTYPE, tag=kind_tag("exit"))
    recs = exit_records(3, et.tag)
    data = memoryview(recs.tobytes())
    offsets = np.arange(3) * EXIT_DTYPE.itemsize
    # What `rbtrace exit` writes, byte for byte.
    assert run_codec.json_lines(et, recs, offsets, data) == \
        exit_codec.json_lines(et, recs, offsets, data)
    events = run_codec.decode(et, recs, offsets, data)
    assert [e["type"] for e in events] == ["exit"] * 3
    assert events[1]["process"] == f"{fields.boot_id()}-998000000-101"
    assert run_codec.details(events[0]) == "ppid=0 user=root age=2ms code/signal=3"
    with pytest.raises(KeyError):
        run_codec.decode(EventType("open_event", EXIT_DTYPE, tag=kind_tag("open")),
                         recs, offsets, data)


def test_the_plain_line_is_time_pid_comm_type_details():
    run_codec = trace.make(["exit"], {})
    assert [c.header for c in run_codec.columns] == ["TIME", "PID", "COMM", "TYPE", "DETAILS"]
