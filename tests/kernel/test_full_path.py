"""rbtrace open --full-path on the real kernel (issue #14, item 4): the
directory a relative path is relative to is read in the kernel at the
call, so processes that exit at once (make's children, sh -c 'cat rel')
get their full path too.

Ground truth is strace -f -y on a second run of the same workload: with
-y, strace 6.1 shows the directory of each openat's dirfd argument
(AT_FDCWD<cwd> or N<dir>), read from /proc while the caller is stopped at
the call.  The expected full path is that directory joined to the path
(absolute paths as they are), and rbtrace's must equal it for every open,
as multisets.  Then the cases strace can't show or shows otherwise: mount
boundaries (tmpfs, bind) inside `unshare -m`, a removed working
directory, bytes that are not UTF-8, a chroot, and directories too deep or
too long for the probe's walk.
"""
import base64
import collections
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import parse_json_lines, strace_whole_lines
from test_follow import ENV, assert_complete, make_clean, make_project, norm

STRACE = shutil.which("strace")
OPEN_TRACE = "open,openat,openat2,creat"
PY = "/usr/bin/python3"

_HEX = r"((?:\\x[0-9a-f]{2})*)"
_LINE = re.compile(r"^(\d+) +(open|openat|openat2|creat)\((.*)\) += (-?\d+)(?: (E[A-Z0-9]+))?")
_AT_ARGS = re.compile(r"^(AT_FDCWD|-?\d+)(?:<" + _HEX + r">)?, \"" + _HEX + r"\"")
_PLAIN_ARGS = re.compile(r"^\"" + _HEX + r"\"")


def unhex(text):
    return bytes.fromhex(text.replace("\\x", ""))


def parse_strace(text):
    """strace -f -y -xx lines -> [(syscall, path, directory or None, result)]:
    the directory as -y shows it for the dirfd argument (None for open and
    creat, which have none, and for a dirfd strace could not name); result
    is "ok" or the errno name."""
    lines = strace_whole_lines(text)
    calls = []
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        _, sc, args, ret, err = m.groups()
        if sc in ("openat", "openat2"):
            a = _AT_ARGS.match(args)
            assert a, line
            base = unhex(a.group(2)) if a.group(2) is not None else None
            path = unhex(a.group(3))
        else:
            a = _PLAIN_ARGS.match(args)
            assert a, line
            base, path = None, unhex(a.group(1))
        calls.append((sc, path, base, "ok" if int(ret) >= 0 else err))
    return calls


def expected(call, not_dirs=(), cwd=None):
    """(syscall, path, full path, deleted, result) that rbtrace must report
    for a call strace saw.  open and creat have no dirfd for strace to
    annotate: their directory is `cwd`, for a workload that stays there."""
    sc, path, base, result = call
    if sc in ("open", "creat") and base is None:
        base = cwd
    deleted = False
    if path.startswith(b"/"):
        full = path
    elif not path or base is None or not base.startswith(b"/") or base in not_dirs:
        full = None         # EBADF, a pipe or a file as dirfd: no directory
    else:
        if base.endswith(b" (deleted)"):
            base, deleted = base[:-len(b" (deleted)")], True
        full = (b"" if base == b"/" else base) + b"/" + path
    return (sc, norm(path), full and norm(full), deleted, result)


def event_bytes(e, key):
    if e.get(key) is None:
        return None
    b64 = e.get(key + "_b64")
    return base64.b64decode(b64) if b64 is not None else e[key].encode()


def reported(e):
    full = event_bytes(e, "full_path")
    return (e["syscall"], norm(event_bytes(e, "path")), full and norm(full),
            e.get("full_path_deleted", False), "ok" if e["ret"] >= 0 else e["errno"])


def strace_calls(tmp_path, cmd, cwd):
    if STRACE is None:
        pytest.fail("strace is not installed (make setup-test installs it)")
    log = tmp_path / "strace.log"
    s = subprocess.run([STRACE, "-f", "-y", "-qq", "-xx", "-s", "65536",
                        "-e", f"trace={OPEN_TRACE}", "-o", str(log), *cmd],
                       cwd=cwd, env=ENV, capture_output=True, timeout=300)
    return s, parse_strace(log.read_text())


def traced(tmp_path, cmd, cwd):
    """`rbtrace open --json --full-path -o OUT -- CMD` run in `cwd`, which
    CMD inherits: (CompletedProcess, Result)."""
    out = tmp_path / "open.json"
    p = subprocess.run([sys.executable, "-m", "rbtrace", "open", "--json", "--full-path",
                        "-o", str(out), "--", *cmd],
                       cwd=cwd, env=ENV, capture_output=True, timeout=300)
    assert out.exists(), p.stderr.decode(errors="replace")
    r = parse_json_lines(out.read_text())
    assert_complete(r)
    return p, r


def diff(want, got):
    return (f"missing: {list((want - got).elements())[:4]} "
            f"extra: {list((got - want).elements())[:4]}")


def compare(tmp_path, cmd, cwd, status=0, not_dirs=(), plain_cwd=None):
    """Run cmd under strace -f -y and under rbtrace --full-path; every
    open's full path equal, as multisets.  Returns rbtrace's events."""
    s, calls = strace_calls(tmp_path, cmd, cwd)
    assert s.returncode == status, s.stderr
    p, r = traced(tmp_path, cmd, cwd)
    assert p.returncode == status, p.stderr
    want = collections.Counter(expected(c, not_dirs, plain_cwd) for c in calls)
    got = collections.Counter(reported(e) for e in r.events)
    assert got == want, diff(want, got)
    for e in r.events:
        assert e["full_path_truncated"] is False, e
    return r.events


def by_path(events):
    out = collections.defaultdict(list)
    for e in events:
        out[event_bytes(e, "path")].append(e)
    return out


# --- make -j2: the workload of the issue -------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """test_follow's C project, and a recipe whose shell opens a file
    relative to another directory, then changes directory and lives on: a
    directory read after the call (from /proc) is then wrong, not only
    missing."""
    d = make_project(tmp_path_factory.mktemp("fullpath") / "proj", 7)
    mk = d / "Makefile"
    mk.write_text(mk.read_text().replace(
        "\t-env rbtrace-missing-tool --version 2>/dev/null\n",
        "\t-env rbtrace-missing-tool --version 2>/dev/null\n"
        "\tcd .. && sh -c 'exec 3< proj/main.c; cd /; sleep 0.3'\n", 1))
    assert "sleep 0.3" in mk.read_text()
    return d


def test_make_j2_every_relative_open_has_its_full_path(kernel_ok, project, tmp_path):
    make_clean(project)
    cmd = ["/usr/bin/make", "-C", str(project), "-j2"]
    s, calls = strace_calls(tmp_path, cmd, tmp_path)
    assert s.returncode == 0, s.stderr
    make_clean(project)
    p, r = traced(tmp_path, cmd, tmp_path)
    assert p.returncode == 0, p.stderr
    want = collections.Counter(expected(c) for c in calls)
    got = collections.Counter(reported(e) for e in r.events)
    assert got == want, diff(want, got)
    relative = [e for e in r.events if not e["path"].startswith("/")]
    assert len(relative) >= 40
    assert all(e["full_path"] and not e["full_path_truncated"] for e in relative)
    proj = str(project)
    fulls = {e["full_path"] for e in relative}
    assert {f"{proj}/Makefile", f"{proj}/f0.c", f"{proj}/main.c", f"{proj}/version.h",
            f"{proj}/f6.o", f"{proj}/prog"} <= fulls
    (late,) = [e for e in relative if e["path"] == "proj/main.c"]
    assert late["comm"] == "sh" and late["full_path"] == f"{project.parent}/proj/main.c"


# --- a command that is gone before its events are decoded ----------------------

def test_sh_c_cat_relative_file(kernel_ok, tmp_path):
    d = tmp_path / "work"
    (d / "sub").mkdir(parents=True)
    (d / "rel-file").write_text("x\n")
    events = compare(tmp_path, ["sh", "-c", "cat rel-file sub/../rel-file; cat missing; true"], d)
    got = by_path(events)
    assert [e["full_path"] for e in got[b"rel-file"]] == [f"{d}/rel-file"]
    assert got[b"rel-file"][0]["comm"] == "cat" and got[b"rel-file"][0]["fd"] >= 0
    assert [e["full_path"] for e in got[b"sub/../rel-file"]] == [f"{d}/sub/../rel-file"]
    assert [(e["full_path"], e["errno"]) for e in got[b"missing"]] == [(f"{d}/missing", "ENOENT")]


def test_openat_with_a_directory_fd(kernel_ok, tmp_path):
    d = tmp_path / "work"
    (d / "dfd" / "sub").mkdir(parents=True)
    (d / "dfd" / "inner").write_text("x")
    (d / "file").write_text("y")
    script = ("import os\n"
              "fd = os.open('dfd', os.O_RDONLY | os.O_DIRECTORY)\n"
              "os.close(os.open('inner', os.O_RDONLY, dir_fd=fd))\n"
              "for bad in ('missing', 'sub/../inner2'):\n"
              "    try: os.open(bad, os.O_RDONLY, dir_fd=fd)\n"
              "    except OSError: pass\n"
              "f = os.open('file', os.O_RDONLY)\n"
              "r, w = os.pipe()\n"
              "for dfd in (f, r, 999):\n"
              "    try: os.open('x', os.O_RDONLY, dir_fd=dfd)\n"
              "    except OSError: pass\n")
    events = compare(tmp_path, [PY, "-S", "-c", script], d, not_dirs={str(d / "file").encode()})
    got = by_path(events)
    assert [(e["full_path"], e["dirfd"] >= 0) for e in got[b"inner"]] == [(f"{d}/dfd/inner", True)]
    assert [e["full_path"] for e in got[b"missing"]] == [f"{d}/dfd/missing"]
    assert [e["full_path"] for e in got[b"sub/../inner2"]] == [f"{d}/dfd/sub/../inner2"]
    # A file, a pipe, a closed fd: the call fails, and there is no directory.
    assert [(e["full_path"], e["errno"]) for e in got[b"x"]] == [
        (None, "ENOTDIR"), (None, "ENOTDIR"), (None, "EBADF")]


def test_open_and_creat_system_calls(kernel_ok, tmp_path):
    """open(2) and creat(2), which glibc no longer calls: relative to the
    working directory as well."""
    d = tmp_path / "work"
    d.mkdir()
    (d / "rel").write_text("x")
    script = ("import ctypes, os\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "for nr, path, arg in ((2, b'rel', 0), (2, b'missing', 0), (85, b'made', 0o644)):\n"
              "    fd = libc.syscall(nr, path, arg)\n"
              "    if fd >= 0: os.close(fd)\n")
    events = compare(tmp_path, [PY, "-S", "-c", script], d, plain_cwd=os.fsencode(d))
    got = by_path(events)
    assert [(e["syscall"], e["full_path"], e["fd"] is not None) for e in
            got[b"rel"] + got[b"missing"] + got[b"made"]] == [
        ("open", f"{d}/rel", True), ("open", f"{d}/missing", False), ("creat", f"{d}/made", True)]


# --- mounts, namespaces, chroot ----------------------------------------------

MOUNTS_SH = r"""
D=$1
mount -t tmpfs rbtrace-test "$D/mnt"
mkdir "$D/mnt/sub"
echo x > "$D/mnt/sub/f"
mount --bind "$D/mnt/sub" "$D/bind"
cd "$D/mnt/sub" && cat f
cd "$D/bind" && cat f nothere
cd "$D/mnt" && cat sub/f
true
"""


def test_cwd_across_tmpfs_and_bind_mounts_in_a_mount_namespace(kernel_ok, tmp_path):
    """The walk climbs from a mount's root to its mountpoint in the parent
    mount.  The mounts exist only in the command's namespace (unshare -m),
    and the path is the one seen there, as strace -y (and /proc) show it."""
    d = tmp_path / "ns"
    (d / "mnt").mkdir(parents=True)
    (d / "bind").mkdir()
    events = compare(tmp_path, ["unshare", "-m", "sh", "-c", MOUNTS_SH, "sh", str(d)], d)
    got = by_path(events)
    assert [e["full_path"] for e in got[b"f"]] == [f"{d}/mnt/sub/f", f"{d}/bind/f"]
    assert [e["full_path"] for e in got[b"nothere"]] == [f"{d}/bind/nothere"]
    assert [e["full_path"] for e in got[b"sub/f"]] == [f"{d}/mnt/sub/f"]
    assert all(e["fd"] is not None for e in got[b"f"] + got[b"sub/f"])
    assert not os.path.exists(d / "mnt" / "sub")      # the tmpfs was the namespace's only


def test_chroot_gives_the_path_from_the_namespace_root(kernel_ok, tmp_path):
    """A chrooted process's relative path is shown from the root of its
    mount namespace, not from its chroot: where the file is on the host,
    as /proc/PID/cwd and strace -y show it."""
    d = tmp_path / "jail"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "rel").write_text("x")
    script = ("import os, sys\n"
              "os.chroot(sys.argv[1])\n"
              "os.chdir('/sub')\n"
              "os.close(os.open('rel', os.O_RDONLY))\n"
              "os.close(os.open('/sub/rel', os.O_RDONLY))\n")
    events = compare(tmp_path, [PY, "-S", "-c", script, str(d)], tmp_path)
    got = by_path(events)
    assert [e["full_path"] for e in got[b"rel"]] == [f"{d}/sub/rel"]
    assert [e["full_path"] for e in got[b"/sub/rel"]] == ["/sub/rel"]    # absolute: as passed


# --- what strace shows otherwise ---------------------------------------------

def test_removed_working_directory(kernel_ok, tmp_path):
    """A relative open in a removed directory fails; full_path says where
    the directory was, and full_path_deleted that it is gone (strace -y and
    /proc say "(deleted)")."""
    d = tmp_path / "work"
    d.mkdir()
    events = compare(tmp_path, ["sh", "-c", "mkdir gone && cd gone && rmdir ../gone && "
                                            "cat rel; true"], d)
    (e,) = by_path(events)[b"rel"]
    assert (e["full_path"], e["full_path_deleted"], e["errno"]) == (f"{d}/gone/rel", True, "ENOENT")
    assert all(not x["full_path_deleted"] for x in events if x is not e)


def test_directory_name_that_is_not_utf8(kernel_ok, tmp_path):
    d = tmp_path / "work"
    name = b"caf\xe9-\xff\x1b[1m"
    os.makedirs(os.fsencode(d) + b"/" + name)
    with open(os.fsencode(d) + b"/" + name + b"/rel", "w") as f:
        f.write("x")
    # Named by a glob: a CMD argument that is not UTF-8 is another matter.
    events = compare(tmp_path, ["sh", "-c", "cd caf* && cat rel"], d)
    (e,) = by_path(events)[b"rel"]
    assert base64.b64decode(e["full_path_b64"]) == os.fsencode(d) + b"/" + name + b"/rel"
    assert e["full_path"] == (os.fsencode(d) + b"/" + name + b"/rel").decode(errors="replace")
    assert e["fd"] is not None


def run_only(tmp_path, cmd, cwd):
    p, r = traced(tmp_path, cmd, cwd)
    assert p.returncode == 0, p.stderr
    return by_path(r.events)


def test_directory_deeper_than_the_walk_is_marked_truncated(kernel_ok, tmp_path):
    """More levels than the probe walks (DIR_DEPTH, 128): full_path holds
    the innermost components and the path, without the leading /, and
    full_path_truncated says so.  strace -y still names the directory: the
    truncated path must be its end."""
    d = tmp_path / "deep"
    deep = d / "/".join(["d"] * 140)
    deep.mkdir(parents=True)
    (deep / "rel").write_text("x")
    cmd = ["sh", "-c", "cd " + "/".join(["d"] * 140) + " && cat rel"]
    s, calls = strace_calls(tmp_path, cmd, d)
    assert s.returncode == 0, s.stderr
    (truth,) = [expected(c) for c in calls if c[1] == b"rel"]
    assert truth[2] == os.fsencode(deep / "rel")
    (e,) = run_only(tmp_path, cmd, d)[b"rel"]
    assert e["full_path_truncated"] is True and e["fd"] is not None
    assert e["full_path"].startswith("d/d/d/") and e["full_path"].endswith("/rel")
    assert truth[2].endswith(b"/" + e["full_path"].encode())
    assert e["full_path"].count("/") < str(deep).count("/")


def test_directory_longer_than_path_max_is_marked_truncated(kernel_ok, tmp_path):
    """A working directory whose path is longer than 4096 bytes (reached by
    relative chdirs; /proc and strace -y can't name it): full_path holds the
    innermost components that fit in the probe's 4096 bytes."""
    d = tmp_path / "long"
    d.mkdir()
    part = "x" * 250
    script = ("import os\n"
              "for i in range(20):\n"
              f"    os.mkdir('{part}')\n"
              f"    os.chdir('{part}')\n"
              "os.close(os.open('rel', os.O_WRONLY | os.O_CREAT, 0o644))\n"
              "os.close(os.open('rel', os.O_RDONLY))\n")
    events = run_only(tmp_path, [PY, "-S", "-c", script], d)
    rel = events[b"rel"]
    assert [e["syscall"] for e in rel] == ["openat", "openat"] and all(e["fd"] for e in rel)
    # 16 components of 250 bytes and their NULs fit in 4096; 17 don't.
    want = "/".join([part] * 16) + "/rel"
    assert [(e["full_path"], e["full_path_truncated"]) for e in rel] == [(want, True)] * 2
    shutil.rmtree(os.path.join(d, part))         # fd-relative: the tree is deeper than PATH_MAX
