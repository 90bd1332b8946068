"""The live table's process view (key t) and its history, without a
terminal: processes counted by procsum's real add() from numpy records,
the same records kept by the table as a ring segment would hand them
(TableRenderer.keep), frames drawn into a fake console of a given size,
and the keys."""
import io
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console

from rbtrace import fields, history, procsum, treeview
from rbtrace.render import TableRenderer
from rbtrace.spec import Column

HEAD = [("ts_ns", "u8"), ("pid", "u4"), ("ppid", "u4"), ("comm", "S16"),
        ("proc_start_ns", "u8")]
DT = {"exec": np.dtype(HEAD + [("ret", "i8"), ("argv", "S40")]),
      "open": np.dtype(HEAD + [("ret", "i8"), ("path", "S40")]),
      "exit": np.dtype(HEAD + [("status", "u4")])}
SPECS = {"exec": SimpleNamespace(name="exec", process_argv=True, process_end=None, tree_count=None),
         "open": SimpleNamespace(name="open", process_argv=False, process_end=None,
                                 tree_count="OPEN"),
         "exit": SimpleNamespace(name="exit", process_argv=False, process_end="status",
                                 tree_count=None)}


class FakeProbe:
    """A run of three kinds, decoding as a real codec does: each record's
    bytes read at its offset in `data` (the copy the history keeps)."""

    name = "trace"

    def __init__(self):
        self.codecs = [SimpleNamespace(name=k, spec=s) for k, s in SPECS.items()]
        self.clock = fields.Clock(utc=True)
        self.decoded = 0
        self.columns = (
            Column("PID", lambda e: str(e["pid"]), width=7, justify="right", whole=True,
                   priority=1),
            Column("COMM", lambda e: e["comm"], width=15, min_width=6, priority=3),
            Column("TYPE", lambda e: e["type"], width=5, whole=True, priority=2),
            Column("DETAILS", self.details, priority=4),
        )

    def details(self, e):
        if e["type"] == "exec":
            return "argv=" + " ".join(e["argv"])
        if e["type"] == "open":
            return f"path={e['path']} ret={e['ret']}"
        return f"status={e['status']}"

    def decode(self, et, records, offsets, data):
        kind = et.name
        dt = DT[kind]
        out = []
        for off in offsets.tolist():
            r = np.frombuffer(bytes(data[off:off + dt.itemsize]), dtype=dt)[0]
            e = {"type": kind, "ts_ns": int(r["ts_ns"]), "pid": int(r["pid"]),
                 "ppid": int(r["ppid"]), "comm": r["comm"].decode(),
                 "process": f"b-{int(r['proc_start_ns'])}-{int(r['pid'])}"}
            if kind == "exec":
                e["argv"], e["ret"] = r["argv"].decode().split(), int(r["ret"])
            elif kind == "open":
                e["path"], e["ret"] = r["path"].decode(), int(r["ret"])
            else:
                e["status"] = int(r["status"])
            out.append(e)
        self.decoded += len(out)
        return out


class Run:
    """Records of one kind at a time go to procsum.add and to the table,
    as Session hands a ring segment to both."""

    def __init__(self, width=80, height=24):
        self.probe = FakeProbe()
        self.procs = procsum.ProcessSummary(ends_traced=True)
        self.out = io.StringIO()
        self.console = Console(file=self.out, width=width, height=height, color_system=None,
                               force_terminal=False, legacy_windows=False)
        self.table = TableRenderer(self.console, self.probe, "")
        self.keys_r, self.keys_w = os.pipe()
        self.delivered = 0
        self.ts = 10_000

    def add(self, kind, rows):
        recs = np.zeros(len(rows), dtype=DT[kind])
        for i, row in enumerate(rows):
            self.ts += 1
            recs[i]["ts_ns"] = self.ts
            for k, v in row.items():
                recs[i][k] = v
        et = SimpleNamespace(name=kind)
        # In the ring, records are a strided view: give one, not a copy.
        padded = np.zeros(len(recs), dtype=[("pad", "u8"), ("p", DT[kind])])
        padded["p"] = recs
        view = padded["p"]

        def decode(mask):
            return self.probe.decode(et, recs[mask], np.flatnonzero(mask) * recs.itemsize,
                                     memoryview(recs.view(np.uint8)))

        self.procs.add(SPECS[kind], recs, decode)
        self.table.keep(et, view)
        self.delivered += len(recs)
        self.table.stats = {"delivered": self.delivered, "procs": self.procs}

    def send(self, keys):
        os.write(self.keys_w, keys.encode())
        return self.table.on_input(self.keys_r)

    def frame(self):
        self.out.seek(0)
        self.out.truncate()
        self.console.print(self.table._renderable())
        return self.out.getvalue().rstrip("\n").split("\n")


def proc(pid, start, ppid, comm):
    return dict(pid=pid, proc_start_ns=start, ppid=ppid, comm=comm)


def family(run):
    """sh (100) runs cat (101, exit 0), which runs a child (103, SIGKILL),
    and false (102, exit 1); sh is still running."""
    sh, cat, false, kid = (proc(100, 1000, 1, b"sh"), proc(101, 2000, 100, b"sh"),
                           proc(102, 3000, 100, b"sh"), proc(103, 4000, 101, b"cat"))
    run.add("exec", [dict(sh, ret=0, argv=b"sh -c work")])
    run.add("exec", [dict(cat, ret=0, argv=b"cat /etc/hosts"),
                     dict(false, ret=0, argv=b"false")])
    run.add("open", [dict(cat, comm=b"cat", ret=3, path=b"/etc/hosts"),
                     dict(kid, ret=-2, path=b"/nope"),
                     dict(cat, comm=b"cat", ret=4, path=b"/etc/passwd")])
    run.add("exit", [dict(false, comm=b"false", status=1 << 8),
                     dict(kid, status=9)])
    run.add("exit", [dict(cat, comm=b"cat", status=0)])


def _rows(lines):
    """{pid: the rest of its row} of the process rows of a frame."""
    out = {}
    for ln in lines:
        m = re.match(r"\s*(\d+) (.*)", ln)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def test_tree_order_puts_children_under_parents_with_guides():
    run = Run()
    family(run)
    order = treeview.tree_order(run.procs)
    assert [(k[0], row) for k, row, _ in order] == [
        (100, ""), (101, "├─"), (103, "│ └─"), (102, "└─")]
    # Each child's parent is the process above it at one level less.
    parents = run.procs.parents()
    for key, _, _ in order[1:]:
        assert parents[key] in dict((k, 1) for k, _, _ in order)


@pytest.mark.parametrize("width, height", [(80, 24), (120, 40), (50, 12)])
def test_tree_frame_shows_pid_argv_state_life_and_counts(width, height):
    run = Run(width, height)
    family(run)
    assert run.send("t") is None and run.table.view == "tree"
    lines = run.frame()
    assert len(lines) == height and all(cell_len(ln) <= width - 1 for ln in lines)
    assert "t log" in lines[-1] or width < 60
    header = lines[0].split()
    assert header[:3] == ["PID", "STATE", "LIFE"]
    rows = _rows(lines[1:-2])
    assert set(rows) == {100, 101, 102, 103}
    assert rows[100].split()[0] == "running" and rows[100].endswith("sh -c work")
    cat = rows[101].split()
    # exit 0, lifetime (exit ts - start), OPEN 2, ERR 0, then the tree guide and argv
    assert cat[:5] == ["exit", "0", fields.age_text(run.procs.procs[(101, 2000)].duration_ns),
                       "2", "0"]
    assert rows[101].endswith("├─cat /etc/hosts")
    assert rows[103].split()[:1] == ["SIGKILL"] and rows[103].endswith("│ └─[cat]")
    assert rows[103].split()[2:4] == ["1", "2"]          # 1 open; ENOENT and SIGKILL
    assert rows[102].split()[:2] == ["exit", "1"] and rows[102].endswith("└─false")


def test_expand_and_collapse_show_and_hide_a_process_events():
    run = Run(100, 20)
    family(run)
    run.send("t")
    before = run.frame()
    assert not any("/etc/passwd" in ln for ln in before)
    # The selection starts on the last process row (102); up: 103, up: 101.
    run.send("kk")
    sel = run.table.tree.selected
    assert sel == ("p", (101, 2000))
    run.send("\r")
    lines = run.frame()
    ev = [ln for ln in lines if "· " in ln]
    assert [re.search(r"(exec|open|exit) (.*)", ln).group(1) for ln in ev] == \
        ["exec", "open", "open", "exit"]
    assert "path=/etc/hosts ret=3" in ev[1] and "path=/etc/passwd ret=4" in ev[2]
    assert all(ln.index("· ") > lines[0].index("COMMAND") for ln in ev)
    run.send("\x1b[D")                                  # Left collapses
    assert not any("· " in ln for ln in run.frame())
    run.send("\x1b[C")                                  # Right expands
    assert sum("· " in ln for ln in run.frame()) == 4
    run.send("\r")                                      # Enter toggles back
    after = run.frame()
    assert not any("· " in ln for ln in after) and _rows(after) == _rows(before)


def test_search_finds_an_event_ten_thousand_back_and_expands_its_process():
    run = Run(80, 24)
    family(run)
    sh = proc(100, 1000, 1, b"sh")
    run.add("open", [dict(sh, ret=3, path=b"/tmp/marker-7f3a")])
    for lo in range(0, 10_500, 4096):                  # ring segments of at most 4096
        run.add("open", [dict(sh, ret=3, path=f"/other/{i}".encode())
                         for i in range(lo, min(10_500, lo + 4096))])
    assert len(run.table.hist) >= 10_501
    run.probe.decoded = 0
    run.send("t")
    run.frame()
    assert run.probe.decoded < 200                      # the tree decodes nothing unseen
    run.send("/marker-7f3a\r")
    lines = run.frame()
    assert all(cell_len(ln) <= 79 for ln in lines)
    hit = [ln for ln in lines if "/tmp/marker-7f3a" in ln]
    # Its line under its process, and its whole text above the footer.
    assert len(hit) == 2 and "· " in hit[0] and lines.index(hit[1]) == 24 - 3
    assert hit[1] == f"{run.probe.clock.hms(10_010)} open path=/tmp/marker-7f3a ret=3"
    assert set(lines[24 - 4]) == {"─"}
    assert "search 'marker-7f3a' 1/1" in lines[-1]
    assert run.table.tree.selected[0] == "e" and (100, 1000) in run.table.tree.expanded
    # Found by its exec event: false's process, expanded, its exec selected.
    run.send("/\x1b/false\r")                           # Esc clears the last search
    kind, number = run.table.tree.selected
    assert kind == "e" and run.table.tree._hit_keys[number] == (102, 3000)
    assert (102, 3000) in run.table.tree.expanded
    lines = run.frame()
    # Its exec and its exit (COMM false): n goes to the second.
    assert "1/2" in lines[-1] and any("exec argv=false" in ln for ln in lines)
    run.send("n")
    assert "2/2" in run.frame()[-1] and run.table.tree.selected == ("e", number + 4)
    run.send("/\x1b/no-such-thing\r")
    assert "not found" in run.frame()[-1]


def test_the_log_filter_finds_the_same_event_ten_thousand_back():
    run = Run(80, 24)
    sh = proc(100, 1000, 1, b"sh")
    run.add("open", [dict(sh, ret=3, path=b"/tmp/marker-9c1d")])
    for lo in range(0, 12_000, 4096):
        run.add("open", [dict(sh, ret=3, path=f"/other/{i}".encode())
                         for i in range(lo, min(12_000, lo + 4096))])
    run.send("/marker-9c1d\r")
    lines = run.frame()
    assert sum("/tmp/marker-9c1d" in ln for ln in lines) == 1
    assert len(run.table.matched) == 1


def test_pause_freezes_the_tree_while_counting_goes_on():
    run = Run(100, 20)
    family(run)
    run.send("t ")
    before = run.frame()
    run.add("exec", [dict(proc(104, 5000, 100, b"sh"), ret=0, argv=b"late")])
    lines = run.frame()
    assert "PAUSED" in lines[-2] and "events 10" in lines[-2]
    assert 104 not in _rows(lines[1:-2]) and _rows(lines[1:-2]).keys() == _rows(before[1:-2]).keys()
    run.send(" ")
    assert 104 in _rows(run.frame()[1:-2])


def test_history_keeps_the_newest_cap_events_within_its_bytes():
    h = history.History(cap=1000, max_bytes=1 << 20)
    probe = FakeProbe()
    et = SimpleNamespace(name="open")
    recs = np.zeros(700, dtype=DT["open"])
    recs["pid"] = np.arange(700)
    recs["proc_start_ns"] = 5
    recs["path"] = [f"/p/{i}".encode() for i in range(700)]
    h.add_records(et, recs, probe.decode)
    recs2 = recs.copy()
    recs2["pid"] += 700
    h.add_records(et, recs2, probe.decode)
    assert len(h) == 1000 and h.total == 1400
    v = h.view()
    assert (v.lo, v.hi) == (400, 1400)
    got = v.events(400, 403)
    assert [e["pid"] for e in got] == [400, 401, 402]
    assert [e["path"] for e in v.events(1398, 1400)] == ["/p/698", "/p/699"]
    assert v.of_process((1000, 5)).tolist() == [1000]
    assert v.of_process((5, 5)).tolist() == []          # gone
    # A view stays as it was while the history moves on.
    h.add_records(et, recs, probe.decode)
    assert [e["pid"] for e in v.events(400, 401)] == [400]
    assert h.view().lo == 1100
    # max_bytes: whole chunks go first.
    small = history.History(cap=10_000, max_bytes=100 * DT["open"].itemsize)
    for _ in range(5):
        small.add_records(et, recs[:60], probe.decode)
    assert len(small) <= 120 and small.nbytes <= 100 * DT["open"].itemsize + 60 * DT["open"].itemsize


def test_history_copies_even_a_one_record_segment():
    """A segment views the ring, which is written again once consumed (and
    unmapped at the end): what is kept must be a copy, one record too."""
    probe = FakeProbe()
    et = SimpleNamespace(name="open")
    ring_dt = np.dtype([("len", "u8"), ("p", DT["open"])])
    ring = bytearray(ring_dt.itemsize * 4)
    slots = np.ndarray((4,), dtype=ring_dt, buffer=ring)
    slots["p"]["pid"] = 7
    slots["p"]["path"] = b"/first"
    h = history.History(cap=100)
    h.add_records(et, slots["p"][:1], probe.decode)     # one record: "contiguous" to numpy
    h.add_records(et, slots["p"][1:3], probe.decode)
    ring[:] = b"\xff" * len(ring)                        # the kernel reuses the ring
    assert [(e["pid"], e["path"]) for e in h.view().events(0, 3)] == [(7, "/first")] * 3


def test_children_of_a_parent_without_events_go_under_its_row():
    """A shell that only waits has no event: its children share its row,
    known by pid alone; a lone process whose parent is unseen stays a root."""
    run = Run(100, 20)
    run.add("exec", [dict(proc(601, 10, 500, b"sh"), ret=0, argv=b"ls"),
                     dict(proc(700, 15, 1, b"sh"), ret=0, argv=b"lone"),
                     dict(proc(602, 20, 500, b"sh"), ret=0, argv=b"wc -l")])
    order = treeview.tree_order(run.procs)
    assert [(k, row) for k, row, _ in order] == [
        ((500, treeview.UNSEEN), ""), ((601, 10), "├─"), ((602, 20), "└─"), ((700, 15), "")]
    run.send("t")
    lines = run.frame()
    assert re.match(r"\s+500\s+\(no events: the parent of these\)$", lines[1]), lines[1]
    assert lines[2].endswith("├─ls") and lines[3].endswith("└─wc -l") and lines[4].endswith("lone")
    run.send("\x1b[H\r")                                # Home, Enter: nothing to expand
    assert not any("· " in ln for ln in run.frame())
    run.send("/wc\r")
    assert run.table.tree.selected == ("e", 2)


def test_the_tree_is_rebuilt_only_for_new_processes_and_at_most_5_percent_of_the_time(monkeypatch):
    run = Run(100, 20)
    family(run)
    run.send("t")
    builds = []
    real = treeview.tree_order
    now = [1000.0]
    monkeypatch.setattr(treeview.time, "monotonic", lambda: now[0])

    def counted(procsum):
        builds.append(now[0])
        now[0] += 0.05                      # a rebuild that takes 50 ms
        return real(procsum)

    monkeypatch.setattr(treeview, "tree_order", counted)
    run.table.tree.refresh()
    run.frame()
    run.frame()                             # nothing new since t drew it: no rebuild
    assert builds == []
    for i in range(30):                     # a new process every 100 ms
        now[0] += 0.1
        run.add("exec", [dict(proc(2000 + i, 9000 + i, 100, b"sh"), ret=0, argv=b"x")])
        run.frame()
    # 50 ms each, at most one per 20 x 50 ms = 1 s after the last
    assert 3 <= len(builds) <= 5, builds
    assert all(b - a >= 1.0 for a, b in zip(builds, builds[1:]))
    run.send(" ")                           # a pause shows every process counted
    assert 2029 in _rows(run.frame()[1:-2])


def test_every_size_fits_with_an_event_expanded_and_its_pane():
    for width in range(8, 130, 7):
        for height in (3, 5, 8, 12, 24):
            run = Run(width, height)
            family(run)
            run.send("tkk\rj")          # the tree, 101 expanded, its first event selected
            lines = run.frame()
            assert len(lines) == height, (width, height)
            assert all(cell_len(ln) <= width - 1 for ln in lines), (width, height, lines)
            if width >= 40 and height >= 12:
                assert any("exec argv=cat /etc/hosts" in ln for ln in lines), lines


def test_a_count_column_shows_once_its_kind_has_an_event():
    """A replay's table knows every kind; a column of counts for a kind
    with no event yet (TCP here) is left out."""
    run = Run(100, 20)
    tcp = SimpleNamespace(name="tcp", process_argv=False, process_end=None, tree_count="TCP")
    run.probe.codecs.append(SimpleNamespace(name="tcp", spec=tcp))
    run.table.tree = treeview.TreeView(run.probe)
    family(run)
    run.send("t")
    assert run.frame()[0].split() == ["PID", "STATE", "LIFE", "OPEN", "ERR", "COMMAND"]
    run.procs.kinds["tcp"] = [1, {}]             # as procsum counts a first tcp event
    assert run.frame()[0].split() == ["PID", "STATE", "LIFE", "OPEN", "TCP", "ERR", "COMMAND"]
