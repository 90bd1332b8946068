"""-o FILE --rotate-size SIZE --rotate-keep N and SIGUSR1's reopen, without
the kernel (issue 18, item 4): rbtrace.outfile.FileOutput under the JSON and
plain renderers, fed numbered lines, then every file read back.  The ground
truth is the numbers written: each must be in exactly one file, in order
across the files, and every file must begin with the run's start line.
The command line's refusals run rbtrace itself (exit 2, one line)."""
import errno
import json
import os
import subprocess
import sys

import pytest

from rbtrace import notice, outfile
from rbtrace.errors import OutputError
from rbtrace.outfile import FileOutput
from rbtrace.render import JsonRenderer, PlainRenderer


@pytest.fixture(autouse=True)
def no_file_left_open():
    """A test that fails half-way leaves no FileOutput for the next one's
    request_reopen() to find."""
    yield
    for f in list(outfile._open_files):
        f.close()


class Probe:
    name = "fake"
    columns = ()


def json_run(path, size, keep):
    out = FileOutput(str(path), size, keep)
    r = JsonRenderer(out, Probe())
    r.start({"probe": "fake", "ring_bytes": 4096, "filters": ""})
    return out, r


def events(first, n, pad=40):
    return [{"type": "fake", "seq": i, "pad": "x" * pad} for i in range(first, first + n)]


def read_files(path):
    """{name: [json lines]} of FILE, FILE.1, ... and any other FILE*."""
    got = {}
    for p in sorted(path.parent.iterdir()):
        if p.name.startswith(path.name):
            data = p.read_bytes()
            assert data.endswith(b"\n"), (p.name, data[-80:])
            got[p.name] = [json.loads(ln) for ln in data.splitlines()]
    return got


def by_part(files):
    """The files' lines, the files in the order of their start lines' part."""
    for name, lines in files.items():
        assert lines[0]["type"] == "start", name
        assert sum(ln["type"] == "start" for ln in lines) == 1, name
    return [files[n] for n in sorted(files, key=lambda n: files[n][0]["part"])]


def seqs(lines):
    return [ln["seq"] for ln in lines if ln["type"] == "fake"]


def test_every_line_is_in_one_file_in_order_and_each_file_starts_with_a_start_line(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, 4096, keep=50)
    first = 0
    for batch in (1, 7, 30, 100, 3, 64, 200, 1, 1, 90):    # batches straddle rotations
        r.events(events(first, batch))
        first += batch
    r.close({"delivered": first})
    out.close()
    files = read_files(path)
    names = set(files)
    assert "out.json" in names and len(names) >= 8, names
    assert names == {"out.json"} | {f"out.json.{i}" for i in range(1, len(names))}
    ordered = by_part(files)
    assert [f[0]["part"] for f in ordered] == list(range(1, len(ordered) + 1))
    # FILE.1 is the newest old file, FILE.N the oldest (logrotate's order)
    assert [f[0]["part"] for f in ordered] == [files[n][0]["part"] for n in
                                               [f"out.json.{i}" for i in range(len(names) - 1, 0, -1)]
                                               + ["out.json"]]
    assert [s for f in ordered for s in seqs(f)] == list(range(first))
    assert ordered[-1][-1]["type"] == "summary"
    for name, lines in files.items():
        assert all({k: v for k, v in ln.items() if k != "part"} ==
                   {"type": "start", "version": 1, "probe": "fake", "ring_bytes": 4096,
                    "filters": ""} for ln in lines[:1])
        size = (tmp_path / name).stat().st_size
        assert size <= 4096, (name, size)
        if name != "out.json":
            # rotated because the next line did not fit: full to within a line
            assert size > 4096 - 120, (name, size)


def test_only_keep_old_files_are_kept_the_newest(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, 2048, keep=2)
    for i in range(0, 400, 10):
        r.events(events(i, 10))
    out.close()
    files = read_files(path)
    assert set(files) == {"out.json", "out.json.1", "out.json.2"}
    parts = [files[n][0]["part"] for n in ("out.json.2", "out.json.1", "out.json")]
    assert parts[0] > 3 and parts == [parts[0], parts[0] + 1, parts[0] + 2]
    kept = seqs(files["out.json.2"]) + seqs(files["out.json.1"]) + seqs(files["out.json"])
    assert kept == list(range(kept[0], 400)) and kept[0] > 0


def test_keep_0_keeps_no_old_file(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, 2048, keep=0)
    for i in range(0, 200, 10):
        r.events(events(i, 10))
    out.close()
    files = read_files(path)
    assert set(files) == {"out.json"}
    assert files["out.json"][0]["part"] > 2 and seqs(files["out.json"])[-1] == 199


def test_a_line_longer_than_the_size_goes_in_a_file_of_its_own(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, 1024, keep=10)
    r.events(events(0, 2))
    r.events(events(2, 1, pad=3000) + events(3, 2))
    out.close()
    ordered = by_part(read_files(path))
    assert [seqs(f) for f in ordered] == [[0, 1], [2], [3, 4]]
    assert [f[0]["part"] for f in ordered] == [1, 2, 3]


def test_plain_lines_rotate_with_the_header_line_at_the_top_of_every_file(tmp_path):
    from rbtrace.spec import Column

    class PlainProbe:
        name = "fake"
        columns = (Column("SEQ", lambda e: str(e["seq"]), 8, justify="right"),
                   Column("PAD", lambda e: e["pad"]))
    path = tmp_path / "out.txt"
    out = FileOutput(str(path), 1500, keep=20)
    r = PlainRenderer(out, PlainProbe())
    r.start({})
    for i in range(0, 300, 25):
        r.events(events(i, 25))
    out.close()
    names = [f"out.txt.{i}" for i in range(20, 0, -1)] + ["out.txt"]
    texts = [(tmp_path / n).read_text() for n in names if (tmp_path / n).exists()]
    assert len(texts) >= 5
    numbers = []
    for t in texts:
        lines = t.splitlines()
        assert t.endswith("\n") and lines[0].split() == ["SEQ", "PAD"], lines[:2]
        numbers += [int(ln.split()[0]) for ln in lines[1:]]
        assert len(t) <= 1500
    assert numbers == list(range(300))


def test_a_reopen_after_a_rename_goes_on_in_a_new_file_that_starts_with_a_start_line(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, None, keep=5)
    r.events(events(0, 5))
    os.rename(path, tmp_path / "out.json.moved")       # logrotate, then its postrotate:
    assert outfile.request_reopen() is True             # the SIGUSR1 handler's part
    r.events(events(5, 5))
    out.close()
    files = read_files(path)
    assert set(files) == {"out.json", "out.json.moved"}
    assert files["out.json.moved"][0]["part"] == 1 and seqs(files["out.json.moved"]) == [0, 1, 2, 3, 4]
    assert files["out.json"][0]["part"] == 2 and seqs(files["out.json"]) == [5, 6, 7, 8, 9]


def test_a_reopened_file_already_past_the_size_is_rotated_before_the_next_line(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, 2048, keep=5)
    r.events(events(0, 3))
    os.rename(path, tmp_path / "moved")
    # someone else wrote a little more than the size there
    path.write_bytes(b'{"type":"other"}\n' * 124)        # 2108 bytes
    outfile.request_reopen()
    r.events(events(3, 10))                              # more bytes than it is past the size
    out.close()
    assert seqs(_lines(tmp_path / "moved")) == [0, 1, 2]
    assert _lines(tmp_path / "out.json.1") == [{"type": "other"}] * 124
    new = _lines(path)
    assert new[0]["type"] == "start" and new[0]["part"] == 2 and seqs(new) == list(range(3, 13))
    assert path.stat().st_size <= 2048


def _lines(p):
    return [json.loads(ln) for ln in p.read_bytes().splitlines()]


def test_a_reopen_at_a_tick_needs_no_event(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, None, keep=5)
    os.rename(path, tmp_path / "old")
    outfile.request_reopen()
    r.tick({})
    assert [json.loads(ln)["part"] for ln in path.read_bytes().splitlines()] == [2]
    out.close()


def test_a_reopen_of_a_file_still_there_appends_without_a_start_line(tmp_path):
    path = tmp_path / "out.json"
    out, r = json_run(path, None, keep=5)
    r.events(events(0, 3))
    outfile.request_reopen()
    r.events(events(3, 3))
    out.close()
    lines = read_files(path)["out.json"]
    assert [ln["type"] for ln in lines] == ["start"] + ["fake"] * 6 and seqs(lines) == list(range(6))


def test_a_rotation_after_a_rename_not_yet_followed_by_sigusr1_leaves_the_renamed_file(tmp_path):
    """logrotate moved FILE but its SIGUSR1 has not come yet: the file being
    written is not FILE any more, and is not renamed again."""
    path = tmp_path / "out.json"
    out, r = json_run(path, 2048, keep=5)
    r.events(events(0, 10))
    os.rename(path, tmp_path / "elsewhere")
    r.events(events(10, 30))
    out.close()
    files = read_files(path)
    assert files["out.json"][0]["part"] >= 2
    assert "elsewhere" not in files and (tmp_path / "elsewhere").exists()
    first = [json.loads(ln) for ln in (tmp_path / "elsewhere").read_bytes().splitlines()]
    assert first[0]["part"] == 1 and seqs(first)[0] == 0
    rest = by_part(files)
    assert seqs(first) + [s for f in rest for s in seqs(f)] == list(range(40))


def test_a_reopen_that_fails_is_said_and_the_lines_go_on_to_the_open_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    path = d / "out.json"
    said = []
    old = notice.set_sink(lambda text, line: said.append(text))
    try:
        out, r = json_run(path, None, keep=5)
        r.events(events(0, 2))
        os.rename(path, tmp_path / "kept.json")
        d.rmdir()                               # FILE can't be created again
        outfile.request_reopen()
        r.events(events(2, 2))
        out.close()
    finally:
        notice.set_sink(old)
    assert len(said) == 1 and "cannot reopen" in said[0] and "No such file" in said[0], said
    lines = [json.loads(ln) for ln in (tmp_path / "kept.json").read_bytes().splitlines()]
    assert seqs(lines) == [0, 1, 2, 3]


def test_a_rotation_that_fails_is_an_output_error_that_counts_the_lines_written(tmp_path):
    path = tmp_path / "out.json"
    (tmp_path / "out.json.1").mkdir()
    (tmp_path / "out.json.1" / "x").write_text("a non-empty directory can't be renamed over\n")
    out, r = json_run(path, 1024, keep=1)
    batch = events(0, 40)
    with pytest.raises(OutputError) as e:
        r.events(batch)
    out.close()
    assert str(e.value).startswith(f"cannot rotate {path}: ")
    assert e.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    written = seqs([json.loads(ln) for ln in path.read_bytes().splitlines()])
    assert written == list(range(e.value.lines_kept)) and 0 < e.value.lines_kept < 40


def test_a_file_left_by_an_earlier_run_is_rotated_not_truncated(tmp_path):
    path = tmp_path / "out.json"
    for run in range(3):
        out, r = json_run(path, 1 << 20, keep=2)
        r.events(events(run * 10, 10))
        out.close()
    files = read_files(path)
    assert set(files) == {"out.json", "out.json.1", "out.json.2"}
    assert [seqs(files[n]) for n in ("out.json.2", "out.json.1", "out.json")] == \
        [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    # without rotation, -o truncates as before
    out, r = json_run(path, None, keep=2)
    r.events(events(99, 1))
    out.close()
    assert seqs(read_files(path)["out.json"]) == [99]


def test_an_empty_file_left_by_an_earlier_run_is_just_reused(tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(b"")
    out, r = json_run(path, 1 << 20, keep=2)
    out.close()
    assert set(read_files(path)) == {"out.json"}


def test_closed_files_are_not_reopened(tmp_path):
    out, _ = json_run(tmp_path / "o", None, keep=1)
    out.close()
    assert outfile.request_reopen() is False


# --- the command line ---------------------------------------------------------------

def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "RBTRACE_DEBUG"}
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("args, needle", [
    (["--rotate-size", "0"], "must be greater than zero"),
    (["--rotate-size", "-1"], "invalid size '-1'"),
    (["--rotate-size", "10MB"], "invalid size '10MB'"),
    (["--rotate-size", "1M", "--rotate-keep", "-1"], "-1 is not in the range x>=0"),
    (["--rotate-size", "1M", "--rotate-keep", "two"], "'two' is not a valid integer"),
])
def test_bad_rotation_values_are_usage_errors(tmp_path, args, needle):
    p = run("open", "--json", "-o", str(tmp_path / "o"), *args)
    err = p.stderr.decode()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, needle", [
    (["--rotate-size", "1M"], "--rotate-size rotates the file of -o FILE: give -o FILE too"),
    (["--rotate-keep", "3"], "--rotate-keep rotates the file of -o FILE: give -o FILE too"),
    (["-o", "{d}/o", "--rotate-keep", "3"], "--rotate-keep needs --rotate-size SIZE"),
    (["-o", "/dev/null", "--rotate-size", "1M"], "/dev/null is not one"),
])
def test_rotation_options_without_what_they_need_are_usage_errors(tmp_path, args, needle):
    args = [a.format(d=tmp_path) for a in args]
    p = run("exec", "--json", *args)
    err = p.stderr.decode()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert p.stdout == b"" and "Traceback" not in err
