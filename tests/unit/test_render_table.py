"""The live table without a terminal: layout(), _cut(), whole frames drawn
into a fake console of a given size, the keys, and deferred frames; also
PlainRenderer.lost, the ARGV quoting and the table's TIME."""
import io
import random
import re
import shlex
import time

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console

from rbtrace import fields, render
from rbtrace.spec import Column
from rbtrace.kinds.exec import ExecCodec
from rbtrace.kinds.open import OpenCodec
from rbtrace.render import PlainRenderer, TableRenderer, _cut, layout
from rbtrace.session import Tally

# --- _cut ---------------------------------------------------------------------


@pytest.mark.parametrize("text, width, keep, want", [
    ("/bin/true", 9, "end", "/bin/true"),           # fits: untouched
    ("/bin/true", 8, "end", "…in/true"),
    ("/bin/true", 8, "start", "/bin/tr…"),
    ("/bin/true", 1, "end", "…"),
    ("/bin/true", 0, "end", ""),
    ("/数据/文件.txt", 10, "end", "…/文件.txt"),     # CJK: two cells each
    ("/数据/文件.txt", 6, "end", "….txt"),            # 件 would need 2, 1 is left
    ("数据数据", 5, "start", "数据…"),
    ("数据数据", 4, "start", "数…"),                  # a cell short, never split
    ("🙂🙂🙂x", 4, "end", "…🙂x"),
    ("e\u0301e\u0301e\u0301", 2, "start", "e\u0301…"),   # é with its combining mark
])
def test_cut_by_display_cells(text, width, keep, want):
    got = _cut(text, width, keep)
    assert got == want
    assert cell_len(got) <= width


def test_cut_fuzz_never_overflows_and_keeps_the_right_end():
    rng = random.Random(7)
    alphabet = "ab/.数据🙂é-"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 20)))
        width = rng.randrange(0, 25)
        for keep in ("start", "end"):
            got = _cut(text, width, keep)
            assert cell_len(got) <= width
            if cell_len(text) <= width:
                assert got == text
            elif width:
                assert "…" in got and cell_len(got) >= width - 1
                kept = got.replace("…", "")
                assert text.endswith(kept) if keep == "end" else text.startswith(kept)


# --- layout -------------------------------------------------------------------

def _open_columns():
    return OpenCodec({}).columns


def _exec_columns():
    return ExecCodec({}).columns


@pytest.mark.parametrize("width", range(1, 200))
@pytest.mark.parametrize("columns", [_open_columns, _exec_columns])
def test_layout_fits_and_never_cuts_a_number(columns, width):
    cols = columns()
    content = [len("30118") if c.header in ("PID", "PPID") else 0 for c in cols]
    widths = layout(cols, width, content)
    shown = [(c, w) for c, w in zip(cols, widths) if w is not None]
    assert sum(w for _, w in shown) + render.GAP * (len(shown) - 1) <= width or not shown
    for c, w in shown:
        if c.whole:
            assert w >= max(c.width, len(c.header))       # a whole value always fits
        else:
            assert w >= min(c.min_width, width)
    # Least important first: a column is never gone while a less important one stays.
    for c, w in zip(cols, widths):
        if w is None:
            assert all(o.priority <= c.priority for o, ow in zip(cols, widths) if ow is not None)


def test_layout_gives_the_path_the_room_at_80_columns():
    cols = _open_columns()
    w = dict(zip([c.header for c in cols], layout(cols, 79)))
    assert w["TIME"] == 12 and w["PID"] == 7 and w["FD/ERR"] == 6
    assert w["PATH"] > w["FLAGS"] and w["PATH"] >= 26
    assert sum(w.values()) + 5 == 79


def test_layout_drops_columns_least_important_first():
    cols = _open_columns()
    order = []
    for width in range(160, 0, -1):
        kept = {c.header for c, w in zip(cols, layout(cols, width)) if w is not None}
        for c in cols:
            if c.header not in kept and c.header not in order:
                order.append(c.header)
    assert order == ["FLAGS", "TIME", "COMM", "FD/ERR", "PATH", "PID"]
    # A whole column grows for a long value, and is dropped rather than cut.
    w = layout(cols, 79, [0, 0, 0, len("ENAMETOOLONG"), 0, 0])
    assert w[3] == 12
    assert layout([Column("PID", str, width=7, whole=True)], 6) == [None]
    assert layout([Column("PATH", str, min_width=16)], 5) == [5]


# --- frames in a fake console --------------------------------------------------

def _open_event(pid, path, ret=3, comm="true", flags="O_RDONLY|O_CLOEXEC", ts=0):
    return {"type": "open", "ts_ns": ts, "pid": pid, "comm": comm, "fd": ret if ret >= 0 else None,
            "ret": ret, "errno": fields.errno_name(ret) or None, "flags_text": flags,
            "path": path, "dirfd": -100, "path_truncated": False}


def _table(probe, width, height, **kw):
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None,
                      force_terminal=False, legacy_windows=False)
    table = TableRenderer(console, probe, "", **kw)
    return table, console, out


def _frame(table, console, out):
    out.seek(0)
    out.truncate()
    console.print(table._renderable())
    return out.getvalue().rstrip("\n").split("\n")


PATHS = ["/bin/true", "/etc/ld.so.cache", "/home/用户/数据/报告-2026.txt",
         "/usr/lib/x86_64-linux-gnu/libc.so.6", "/tmp/🙂/smile"]


@pytest.mark.parametrize("width, height", [(80, 24), (60, 15), (40, 10), (30, 8)])
def test_open_frame_shows_numbers_whole_and_paths_with_their_end(width, height):
    probe = OpenCodec({"utc": True})
    table, console, out = _table(probe, width, height)
    events = [_open_event(30118 + i, PATHS[i % len(PATHS)], ret=-2 if i % 2 else 3 + i)
              for i in range(30)]
    table.events(events)
    lines = _frame(table, console, out)
    assert len(lines) == height
    assert all(cell_len(ln) <= width - 1 for ln in lines)
    rows = lines[1:height - 2]
    shown = events[-len(rows):]
    header = lines[0].split()
    assert header[0] == ("TIME" if width >= 60 else "PID")
    for ln, e in zip(rows, shown):
        words = ln.split()
        assert str(e["pid"]) in words                         # whole, never 3011
        if "FD/ERR" in header:
            assert (e["errno"] or str(e["fd"])) in words      # ENOENT, never ENOE
        tail = e["path"][-6:]
        cell = ln.rsplit(" ", 1)[-1]
        assert cell == e["path"] or (cell.startswith("…") and e["path"].endswith(cell[1:])), ln
        assert tail in ln
    if width >= 60:
        assert "TIME" in header and re.match(r"\d\d:\d\d:\d\d\.\d{3} ", lines[1])


def test_exec_frame_at_80_columns_keeps_argv_and_quotes_it():
    probe = ExecCodec({})
    table, console, out = _table(probe, 80, 12)
    e = {"type": "exec", "ts_ns": 0, "pid": 4194304, "ppid": 1, "user": "root", "comm": "echo",
         "syscall": "execve", "filename": "/bin/echo", "argv": ["echo", "a b", "", "c"],
         "argc": 4, "args_truncated": False, "ret": -36, "errno": "ENAMETOOLONG"}
    table.events([e])
    lines = _frame(table, console, out)
    row = lines[1]
    assert " 4194304 " in row and " ENAMETOOLONG " in row
    assert row.endswith("echo 'a b' '' c")


def test_a_frame_after_a_resize_fits_the_new_size():
    probe = OpenCodec({})
    table, console, out = _table(probe, 160, 30)
    table.events([_open_event(30118 + i, "/very/long/" + "x" * 100 + f"/{i}.end") for i in range(40)])
    wide = _frame(table, console, out)
    assert any(ln.endswith(".end") and "…" in ln for ln in wide)
    console.size = (50, 9)
    narrow = _frame(table, console, out)
    assert len(narrow) == 9 and all(cell_len(ln) <= 49 for ln in narrow)
    assert narrow[-3].endswith("/39.end") and "…" in narrow[-3] and "30157" in narrow[-3]


# --- keys -----------------------------------------------------------------------

class Keys:
    """A pipe standing in for the terminal's input."""

    def __init__(self):
        import os
        self.r, self.w = os.pipe()

    def send(self, table, data):
        import os
        os.write(self.w, data.encode())
        return table.on_input(self.r)


@pytest.fixture
def keyed():
    probe = OpenCodec({})
    keys = Keys()
    table, console, out = _table(probe, 100, 14)
    table.events([_open_event(1000 + i, f"/f/{i}") for i in range(50)])
    yield table, keys, lambda: _frame(table, console, out)


def _pids(lines):
    return [int(m.group(1)) for ln in lines if (m := re.search(r" (\d{4}) ", ln))]


def test_filter_keys_backspace_enter_and_esc(keyed):
    table, keys, frame = keyed
    keys.send(table, "//f/4x")
    assert table.editing == "/f/4x" and "filter: /f/4x_" in frame()[-1]
    keys.send(table, "\x7f\r")                     # Backspace, then Enter
    assert table.text_filter == "/f/4" and table.editing is None
    assert sorted(_pids(frame())) == [1004] + list(range(1040, 1050))
    keys.send(table, "/\x1b")                      # Esc clears the filter
    assert table.text_filter == "" and table.editing is None
    assert _pids(frame())[-1] == 1049 and len(_pids(frame())) == 11


def test_filter_covers_the_whole_history_not_the_last_200():
    table, console, out = _table(OpenCodec({}), 100, 14)
    table.events([_open_event(2000 + i, f"/g/{i}") for i in range(5000)])
    assert len(table.hist) == 5000 <= table.history
    keys = Keys()
    keys.send(table, "/g/17\r")
    want = [2000 + i for i in range(5000) if "/g/17" in f"/g/{i}"]
    assert [int(r[1]) for r in table.matched] == want
    assert want[0] == 2017                         # 4983 rows before the newest


def test_pause_while_filtered_freezes_the_matches_and_counting_goes_on(keyed):
    table, keys, frame = keyed
    keys.send(table, "/f/4\r")
    keys.send(table, " ")
    before = frame()
    assert sorted(_pids(before)) == [1004] + list(range(1040, 1050))
    table.events([_open_event(1100, "/f/4-new")])
    table.tick({"delivered": 51})
    after = frame()
    assert "PAUSED" in after[-2] and "events 51" in after[-2]
    assert after[:-2] == before[:-2] and "1100" not in "".join(after)
    keys.send(table, " ")
    assert _pids(frame())[-1] == 1100


def test_paused_view_scrolls_with_arrows_pages_and_jk(keyed):
    table, keys, frame = keyed
    visible = 14 - 3
    keys.send(table, "\x1b[A")                      # an arrow pauses, then scrolls
    assert table.paused_rows is not None and _pids(frame())[-1] == 1048
    keys.send(table, "k\x1b[A")
    assert _pids(frame())[-1] == 1046
    keys.send(table, "j")
    assert _pids(frame())[-1] == 1047
    keys.send(table, "\x1b[5~")                     # PgUp
    assert _pids(frame())[-1] == 1047 - visible
    table.events([_open_event(1200 + i, "/new") for i in range(5)])
    table.tick({"delivered": 55})
    assert "events 55" in frame()[-2] and "PAUSED -" in frame()[-2]
    keys.send(table, "\x1b[H")                      # Home: the oldest kept
    assert _pids(frame())[0] == 1000
    keys.send(table, "\x1b[6~\x1b[F")               # PgDn, End
    assert _pids(frame())[-1] == 1049
    keys.send(table, " ")                          # resume: the new rows
    assert _pids(frame())[-1] == 1204


def test_q_quits_and_s_shows_top_files():
    probe = OpenCodec({})
    table, console, out = _table(probe, 100, 12)
    tally = Tally(probe.tally + probe.table_tally)
    dt = np.dtype([("comm", "S16"), ("ret", "i8"), ("path_len", "u4"), ("path", "S32")])
    recs = np.zeros(6, dt)
    for i, (comm, ret, path, junk) in enumerate([
            (b"cat", 3, b"/etc/hosts", b"xyz"), (b"cat", -2, b"/nope", b""),
            (b"ls", 3, b"/etc/hosts", b"q"), (b"ls", -13, b"/root/x", b"garbage"),
            (b"ls", -2, b"/nope", b"zz"), (b"cat", -14, b"", b"\x01junk")]):
        recs[i] = (comm, ret, len(path), path + b"\0" + junk)
    tally.add(recs)
    table.tick({"tally": tally})
    keys = Keys()
    keys.send(table, "s")
    lines = _frame(table, console, out)
    assert lines[0].split() == ["top", "commands", "top", "errors", "top", "files"]
    assert lines[1].split() == ["3", "cat", "2", "ENOENT", "2", "/etc/hosts"]
    row2, row3 = lines[2].split(), lines[3].split()
    assert row2[:2] + row2[4:] == ["3", "ls", "2", "/nope"]
    assert row3[:1] + row3[2:] == ["1", "1", "/root/x"]             # no empty path
    assert {row2[3], row3[1]} == {"EACCES", "EFAULT"} and row2[2] == "1"
    assert lines[4] == ""                                           # 3 files, no more
    assert keys.send(table, "q") == "quit"


def test_the_session_counts_files_only_for_the_table():
    from rbtrace.session import Session
    probe = OpenCodec({})
    table, _, _ = _table(probe, 80, 10)
    assert [n for n, _ in Session(probe, table, None, None).tally.spec] == ["commands", "errors", "files"]
    plain = PlainRenderer(io.BytesIO(), probe)
    assert [n for n, _ in Session(probe, plain, None, None).tally.spec] == ["commands", "errors"]
    exec_probe = ExecCodec({})
    table, _, _ = _table(exec_probe, 80, 10)
    assert [n for n, _ in Session(exec_probe, table, None, None).tally.spec] == ["commands", "errors"]


# --- deferred frames ------------------------------------------------------------

def test_frames_at_most_ten_a_second_and_put_off_while_the_ring_fills(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(render.time, "monotonic", lambda: now[0])
    table, console, out = _table(OpenCodec({}), 80, 10)
    drawn = []
    monkeypatch.setattr(table.live, "update", lambda r, refresh: drawn.append(now[0]))
    table._draw(force=True)
    now[0] += 0.05
    table.tick({"ring_fill": 0.0})                 # too soon
    now[0] += 0.06
    table.tick({"ring_fill": 0.0})                 # 0.11 s later: drawn
    assert drawn == [100.0, 100.11]
    for _ in range(8):                             # the ring fills: drain first
        now[0] += 0.11
        table.tick({"ring_fill": 0.5})
    assert drawn == [100.0, 100.11]
    now[0] += 0.11                                 # 0.99 s: still put off
    table.tick({"ring_fill": 0.5})
    now[0] += 0.02                                 # past one second: drawn anyway
    table.tick({"ring_fill": 0.5})
    assert len(drawn) == 3 and drawn[-1] == pytest.approx(101.12)


# --- PlainRenderer.lost -----------------------------------------------------------

def test_plain_lost_goes_to_stderr_with_its_causes(capsys):
    out = io.BytesIO()
    plain = PlainRenderer(out, OpenCodec({}))
    plain.lost({"dropped": 7, "ringbuf_full": 5, "map_full": 2, "missed_by_kernel": 0})
    plain.lost({"dropped": 0, "ringbuf_full": 0, "map_full": 0, "missed_by_kernel": 3})
    err = capsys.readouterr().err.splitlines()
    assert err == ["rbtrace: 7 events dropped (ring full 5, map full 2)",
                   "rbtrace: 0 events dropped (ring full 0, map full 0), "
                   "3 probe runs skipped by the kernel"]
    assert out.getvalue() == b""                   # stdout is data only


# --- ARGV -----------------------------------------------------------------------

_UNESCAPE = re.compile(r"\\(\\|n|t|r|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def _unescape(text):
    """Undo fields.escape_text: back to the exact bytes."""
    out = bytearray()
    pos = 0
    for m in _UNESCAPE.finditer(text):
        out += text[pos:m.start()].encode()
        e = m.group(1)
        if e in ("\\", "n", "t", "r"):
            out += {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}[e]
        elif e[0] == "x":
            out.append(int(e[1:], 16))
        else:
            out += chr(int(e[1:], 16)).encode("utf-8", "surrogatepass")
        pos = m.end()
    out += text[pos:].encode()
    assert "\\" not in _UNESCAPE.sub("", text)
    return bytes(out)


def _argv_cell(argv):
    e = {"argv": [a.decode("utf-8", "replace") for a in argv], "argc": len(argv),
         "args_truncated": False}
    try:
        e["argv"] = [a.decode() for a in argv]
    except UnicodeDecodeError:
        import base64
        e["argv_b64"] = [base64.b64encode(a).decode() for a in argv]
    (col,) = [c for c in ExecCodec({}).columns if c.header == "ARGV"]
    return col.value(e)


def test_argv_is_unambiguous():
    assert _argv_cell([b"echo", b"a b", b"c"]) == "echo 'a b' c"
    assert _argv_cell([b"echo", b"a", b"b c"]) == "echo a 'b c'"
    assert _argv_cell([b"printf", b"", b"x"]) == "printf '' x"
    assert _argv_cell([b"sh", b"-c", b"echo it's $HOME"]) == "sh -c 'echo it'\\''s $HOME'"
    assert _argv_cell([b"ls", b"-la", b"/tmp/\xe6\x95\xb0"]) == "ls -la /tmp/数"
    assert _argv_cell([b"x", b"a\nb", b"\x1b[2J"]) == "x 'a\\nb' '\\x1b[2J'"
    assert _argv_cell([b"x", "…".encode()]) == "x '…'"


def test_argv_decodes_back_to_the_exact_bytes():
    rng = random.Random(11)
    pieces = [b"a", b" ", b"'", b'"', b"\\", b"\n", b"\t", b"$", b"*", b"\xff", b"\x1b",
              "数".encode(), "🙂".encode(), b"", b"-", b"=", "\u202e".encode(), b"~", b"#"]
    for _ in range(3000):
        argv = [b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 5)))
                for _ in range(rng.randrange(1, 5))]
        line = _argv_cell(argv)
        assert not re.search(r"[\x00-\x1f\x7f]", line)
        assert [_unescape(w) for w in shlex.split(line)] == argv, (argv, line)


# --- TIME -----------------------------------------------------------------------

@pytest.fixture
def tz(monkeypatch):
    def set_tz(name):
        monkeypatch.setenv("TZ", name)
        time.tzset()
    yield set_tz
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("probe_class", [OpenCodec, ExecCodec])
def test_time_column_is_local_and_utc_with_the_option(tz, probe_class):
    epoch = 1_795_000_000                          # 2026-11-18 11:06:40 UTC
    tz("XST-5:30")                                 # UTC+5:30, POSIX form
    for utc, want in ((False, "16:36:40.250"), (True, "11:06:40.250")):
        probe = probe_class({"utc": utc})
        probe.clock = fields.Clock(offset_ns=epoch * 10**9, utc=utc)
        (col,) = [c for c in probe.columns if c.header == "TIME"]
        assert col.value({"ts_ns": 250_000_000}) == want
    tz("America/New_York")                         # a zone file, with DST
    probe = probe_class({})
    probe.clock = fields.Clock(offset_ns=epoch * 10**9)
    (col,) = [c for c in probe.columns if c.header == "TIME"]
    assert col.value({"ts_ns": 0}) == "06:06:40.000"                        # EST
    assert col.value({"ts_ns": -(138 * 86400) * 10**9}) == "07:06:40.000"   # July: EDT


def test_the_man_page_states_the_history_and_the_drop_order():
    import pathlib
    from rbtrace.generic import GenericCodec
    page = (pathlib.Path(__file__).parents[2] / "man" / "rbtrace.8").read_text()
    text = re.sub(r"\n\.B[IR]? ?", " ", page).replace("\n", " ")
    assert f"newest {TableRenderer.history} events delivered" in text
    from rbtrace import history
    assert f"at most {history.MAX_BYTES >> 20} MiB" in text and TableRenderer.history == history.CAP
    for name, cols in (("exec", _exec_columns()), ("open", _open_columns()),
                       ("run", GenericCodec({}).columns)):
        order = [c.header for c in sorted(cols, key=lambda c: -c.priority) if c.header != "PID"]
        said = ", ".join(order[:-1]) + ", then " + order[-1] + "; "
        assert re.search(rf"{name} ?: {re.escape(said)}", text), (name, said)
    assert "PID goes last" in text and all(c.priority == 1 for c in _open_columns()
                                           if c.header == "PID")
