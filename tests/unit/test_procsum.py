"""The run summary per process and per kind (rbtrace/procsum.py), over
synthetic records: every count is checked against one made record by
record in plain Python."""
import collections
import random
from types import SimpleNamespace

import numpy as np

from rbtrace import fields, procsum

HEAD = [("ts_ns", "u8"), ("pid", "u4"), ("ppid", "u4"), ("comm", "S16"),
        ("proc_start_ns", "u8")]
CALL = np.dtype(HEAD + [("ret", "i8")])
END = np.dtype(HEAD + [("status", "u4")])

CALLS = SimpleNamespace(name="calls", process_argv=False, process_end=None)
EXECS = SimpleNamespace(name="execs", process_argv=True, process_end=None)
ENDS = SimpleNamespace(name="ends", process_argv=False, process_end="status")
QUIET = SimpleNamespace(name="quiet", process_argv=False, process_end=None)  # no ret


def records(dtype, rows):
    out = np.zeros(len(rows), dtype=dtype)
    for i, row in enumerate(rows):
        for k, v in row.items():
            out[i][k] = v
    return out


def call(pid, start, ret=0, ppid=1, comm=b"x", ts=0):
    return dict(pid=pid, proc_start_ns=start, ret=ret, ppid=ppid, comm=comm, ts_ns=ts)


def by_key(result):
    return {(p["pid"], int(p["process"].rsplit("-", 2)[1])): p for p in result["processes"]}


def test_a_storm_from_one_process_counts_every_event_and_errno_with_few_calls(monkeypatch):
    n = 100_000
    recs = np.zeros(n, dtype=CALL)
    recs["pid"], recs["proc_start_ns"], recs["ppid"] = 42, 7000, 1
    recs["ret"] = 3
    recs["ret"][::4] = -2                        # ENOENT
    recs["ret"][1::10] = -13                     # EACCES (some overwrite none of the above)
    calls = []
    real = fields.errno_name
    monkeypatch.setattr(fields, "errno_name", lambda v: calls.append(v) or real(v))
    s = procsum.ProcessSummary(ends_traced=False)
    s.add(CALLS, recs)
    enoent = int((recs["ret"] == -2).sum())
    eacces = int((recs["ret"] == -13).sum())
    assert len(calls) <= 2                       # per distinct value, not per event
    r = s.result(boot="b")
    assert r["kinds"] == {"calls": {"events": n, "errors": {"ENOENT": enoent,
                                                              "EACCES": eacces}}}
    (p,) = r["processes"]
    assert (p["process"], p["pid"], p["ppid"], p["events"]) == ("b-7000-42", 42, 1, n)
    assert p["errors"] == {"ENOENT": enoent, "EACCES": eacces}
    assert p["kinds"] == {"calls": n}
    assert (p["state"], p["exit_code"], p["duration_ns"]) == ("unknown", None, None)


def test_interleaved_processes_and_pid_reuse_match_a_count_record_by_record():
    rng = random.Random(5)
    keys = [(10, 100), (11, 110), (10, 900), (12, 120)]     # pid 10 used twice
    expect_events = collections.Counter()
    expect_errors = collections.defaultdict(collections.Counter)
    batches = []
    for _ in range(7):
        rows = []
        for _ in range(rng.randrange(1, 300)):
            key = rng.choice(keys)
            ret = rng.choice([0, 5, -2, -13, -5000])     # -5000: not an error number
            rows.append(call(*key, ret=ret))
            expect_events[key] += 1
            if -4096 < ret < 0:
                expect_errors[key][fields.errno_name(ret)] += 1
        batches.append(records(CALL, rows))
    s = procsum.ProcessSummary(ends_traced=True)
    for b in batches:
        s.add(CALLS, b)
    got = by_key(s.result(boot="b"))
    assert set(got) == set(expect_events)
    for key, p in got.items():
        assert p["events"] == expect_events[key]
        assert p["errors"] == dict(expect_errors[key])
        assert p["state"] == "running"           # an end is traced, none came
    total = collections.Counter()
    for c in expect_errors.values():
        total.update(c)
    assert s.result(boot="b")["kinds"]["calls"] == {"events": sum(expect_events.values()),
                                                    "errors": dict(total)}


def test_ends_give_exit_code_signal_lifetime_and_count_failures_as_errors():
    s = procsum.ProcessSummary(ends_traced=True)
    s.add(CALLS, records(CALL, [call(20, 1000, comm=b"sh"), call(21, 2000, comm=b"sleep"),
                                call(22, 3000), call(23, 4000)]))
    s.add(ENDS, records(END, [
        dict(pid=20, proc_start_ns=1000, status=3 << 8, ts_ns=1500, comm=b"sh2"),
        dict(pid=21, proc_start_ns=2000, status=9, ts_ns=9000, comm=b"sleep"),
        dict(pid=22, proc_start_ns=3000, status=0, ts_ns=3001, comm=b"x")]))
    r = s.result(boot="b")
    got = by_key(r)
    assert r["kinds"]["ends"] == {"events": 3, "errors": {"exit 3": 1, "SIGKILL": 1}}
    p = got[(20, 1000)]
    assert (p["state"], p["exit_code"], p["signal"], p["duration_ns"], p["comm"]) == \
        ("exited", 3, None, 500, "sh2")
    assert p["errors"] == {"exit 3": 1} and p["kinds"] == {"calls": 1, "ends": 1}
    p = got[(21, 2000)]
    assert (p["state"], p["exit_code"], p["signal"], p["duration_ns"]) == \
        ("exited", None, "SIGKILL", 7000)
    assert got[(22, 3000)]["errors"] == {}
    assert got[(23, 4000)]["state"] == "running"


def test_argv_comes_from_successful_execs_only_decoded_on_demand():
    seen = []
    recs = records(CALL, [call(30, 300, ret=0), call(31, 310, ret=-2), call(30, 300, ret=0)])

    def decode(mask):
        seen.append(mask.copy())
        return [{"process": "b-300-30", "argv": ["a", str(i)], "comm": "a"}
                for i in range(int(mask.sum()))]

    s = procsum.ProcessSummary(ends_traced=False)
    s.add(EXECS, recs, decode)
    s.add(QUIET, np.zeros(3, dtype=np.dtype(HEAD)), decode)      # no ret: no decode
    assert len(seen) == 1 and seen[0].tolist() == [True, False, True]
    got = by_key(s.result(boot="b"))
    assert got[(30, 300)]["argv"] == ["a", "1"]                 # the last one
    assert got[(30, 300)]["comm"] == "a"
    assert got[(31, 310)]["argv"] is None
    assert got[(31, 310)]["errors"] == {"ENOENT": 1}


def test_parents_are_the_pid_that_started_last_before_the_child():
    s = procsum.ProcessSummary(ends_traced=False)
    s.add(CALLS, records(CALL, [
        call(50, 100, ppid=1),            # an old process 50
        call(50, 500, ppid=1),            # pid 50 reused
        call(60, 600, ppid=50),           # child of the second 50
        call(61, 300, ppid=50),           # child of the first
        call(62, 700, ppid=99)]))         # parent not traced
    got = by_key(s.result(boot="b"))
    assert got[(60, 600)]["parent"] == "b-500-50"
    assert got[(61, 300)]["parent"] == "b-100-50"
    assert got[(62, 700)]["parent"] is None
    assert got[(50, 100)]["parent"] is None


def test_processes_beyond_the_cap_are_counted_as_other():
    s = procsum.ProcessSummary(ends_traced=False, keep=3)
    rows = [call(pid, pid * 10) for pid in range(1, 6) for _ in range(pid)]
    s.add(CALLS, records(CALL, rows))
    s.add(CALLS, records(CALL, [call(5, 50), call(1, 10)]))
    r = s.result(boot="b")
    kept = by_key(r)
    assert len(kept) == 3
    assert sum(p["events"] for p in kept.values()) + r["processes_other"]["events"] == \
        len(rows) + 2
    assert r["processes_other"]["processes"] == 2
    assert r["kinds"]["calls"]["events"] == len(rows) + 2


def _summary(procs, kinds=("calls",)):
    return {"kinds": {k: {"events": 1, "errors": {}} for k in kinds},
            "processes": procs, "processes_other": {"processes": 0, "events": 0}}


def _proc(pid, ppid, parent, events, argv=None):
    return {"process": f"b-1-{pid}", "pid": pid, "ppid": ppid,
            "parent": f"b-1-{parent}" if parent else None, "comm": "c", "argv": argv,
            "events": events, "kinds": {}, "errors": {}, "state": "exited", "exit_code": 0,
            "signal": None, "duration_ns": 5000}


def test_table_is_empty_for_one_process_and_one_kind():
    assert procsum.table_lines(_summary([_proc(1, 0, None, 9)]), tree=True) == []
    assert procsum.table_lines(_summary([_proc(1, 0, None, 9)], ("a", "b")), tree=True) != []


def test_table_tree_puts_children_under_parents_and_top_orders_by_events():
    procs = [_proc(1, 0, None, 1, ["root"]), _proc(3, 1, 1, 5, ["b"]),
             _proc(2, 1, 1, 9, ["a"]), _proc(4, 3, 3, 2, ["c"])]
    lines = procsum.table_lines(_summary(procs), tree=True)
    body = [l for l in lines[3:]]
    names = [l.split()[-1] for l in body]
    assert names == ["root", "b", "c", "a"]          # first seen order, depth first
    assert "└ c" in body[2] and body[2].index("└") > body[1].index("└")
    top = procsum.table_lines(_summary(procs), tree=False, shown=2)
    assert [l.split()[-1] for l in top[3:5]] == ["a", "b"]
    assert top[5].startswith("rbtrace: 2 more processes not shown")


def test_table_says_how_many_processes_were_counted_together():
    s = procsum.ProcessSummary(ends_traced=False, keep=3)
    s.add(CALLS, records(CALL, [call(pid, pid) for pid in range(1, 6)]))
    lines = procsum.table_lines(s.result(boot="b"), tree=False)
    assert lines[-1] == "rbtrace: 2 more processes beyond the first 3 counted together: 2 events"
    # Beyond as many again, the count of processes is a lower bound.
    s = procsum.ProcessSummary(ends_traced=False, keep=2)
    s.add(CALLS, records(CALL, [call(pid, pid) for pid in range(1, 7)]))
    lines = procsum.table_lines(s.result(boot="b"), tree=False)
    assert lines[-1] == ("rbtrace: at least 2 more processes beyond the first 2 counted "
                         "together: 4 events")
