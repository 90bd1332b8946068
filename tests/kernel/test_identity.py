"""Identity in the stream and the cgroup filters, against real cgroups.

The test makes cgroups under the cgroup v2 mount (found in mountinfo, as
rbtrace finds it): rbtrace-test-<random>/ with a docker-style scope
docker-<64 hex>.scope in it, a sub-cgroup of that scope, and a second
container whose id shares the first one's leading digits.  A workload
moves itself into the scope and forks children, each of which moves
itself to a cgroup of the test's choosing and then execs `sh -c 'exit N'`;
it writes down every child's pid, status and cgroup.  A second workload
does the same at the same time outside the test's cgroups.  The ground
truth is what the workloads wrote and the directories' inode numbers.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli

WORKLOAD = r'''
import json, os, sys
conf = json.loads(sys.argv[1])
if conf["self"]:
    with open(os.path.join(conf["self"], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
out = []
for i, target in enumerate(conf["children"]):
    pid = os.fork()
    if pid == 0:
        try:
            if target:
                with open(os.path.join(target, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            os.execv("/bin/sh", ["sh", "-c", "exit %d" % (conf["base_code"] + i)])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    out.append({"pid": pid, "status": status, "cgroup": target})
with open(conf["out"], "w") as f:
    json.dump({"pid": os.getpid(), "children": out}, f)
'''

# The workloads' exit codes: inside the cgroups from 10, outside from 100,
# so a stray event says where it came from.
INSIDE, OUTSIDE = 10, 100
N = 12


def _kill_and_remove(dirs):
    """Empty each cgroup (SIGKILL what is left) and remove it, deepest first."""
    for d in sorted(dirs, key=lambda p: -p.count("/")):
        for _ in range(50):
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids = [int(x) for x in f.read().split()]
            except FileNotFoundError:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def tree(kernel_ok):
    from rbtrace.cgroups import v2_mount
    root = v2_mount()
    assert root is not None, "no cgroup v2 mount in /proc/self/mountinfo"
    cid = secrets.token_hex(32)
    # Another container whose id shares the first 8 digits: --container
    # with those 8 is ambiguous, with 12 it is not.
    twin = cid[:8] + secrets.token_hex(28)
    base = os.path.join(root, f"rbtrace-test-{secrets.token_hex(4)}")
    scope = os.path.join(base, f"docker-{cid}.scope")
    sub = os.path.join(scope, "sub")
    other = os.path.join(base, f"cri-containerd-{twin}.scope")
    made = []
    try:
        for d in (base, scope, sub, other):
            os.mkdir(d)
            made.append(d)
        yield {"root": root, "id": cid, "twin": twin, "base": base, "scope": scope,
               "sub": sub, "other": other,
               "inode": {d: os.stat(d).st_ino for d in (base, scope, sub, other)}}
    finally:
        _kill_and_remove(made)
        assert not os.path.exists(base), f"{base} could not be removed"


def _workloads(tmp_path, t, inside_children):
    """Run the inside workload (moved into the scope, its children to
    `inside_children`) and the outside one at the same time; return what
    each wrote down."""
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    runs = []
    for name, conf in (("inside", {"self": t["scope"], "children": inside_children,
                                   "base_code": INSIDE}),
                       ("outside", {"self": None, "children": [None] * N,
                                    "base_code": OUTSIDE})):
        conf["out"] = str(tmp_path / f"{name}.json")
        runs.append((conf["out"], subprocess.Popen([sys.executable, str(script),
                                                    json.dumps(conf)])))
    for _, p in runs:
        assert p.wait(timeout=60) == 0
    return [json.loads(open(path).read()) for path, _ in runs]


def _read(path):
    with open(path) as f:
        return f.read().strip()


def test_start_record_and_cgroup_filter_keeps_out_everything_else(rbtrace, tree, tmp_path):
    """`rbtrace trace exec,exit --cgroup BASE`: every child of the inside
    workload (in the scope, in its sub-cgroup, in BASE itself) is there,
    with its exec and its exit, each with cgroup_id == its directory's
    inode and the container id of the scope; nothing of the outside
    workload, nor anything else, is."""
    t = tree
    targets = [t["scope"], t["sub"], t["base"]] * (N // 3)
    tracer = rbtrace("trace", "exec,exit", "--json", "--cgroup", t["base"])
    inside, outside = _workloads(tmp_path, t, targets)
    r = tracer.stop()
    assert r.returncode == 130, r.stderr

    start = r.lines[0]
    assert start["type"] == "start"
    assert start["hostname"] == _read("/proc/sys/kernel/hostname")
    assert start["boot_id"] == _read("/proc/sys/kernel/random/boot_id")
    assert start["kernel"] == os.uname().release
    from rbtrace import __version__
    assert start["rbtrace_version"] == __version__
    assert f"cgroup={t['base']}" in start["filters"]

    mine = set(t["inode"].values())
    assert r.events, r.stderr
    strays = [e for e in r.events if e["cgroup_id"] not in mine]
    assert not strays, strays[:3]
    outside_pids = {c["pid"] for c in outside["children"]} | {outside["pid"]}
    assert not [e for e in r.events if e["pid"] in outside_pids]

    container = {t["base"]: None, t["scope"]: t["id"], t["sub"]: t["id"]}
    exits = {e["pid"]: e for e in r.events if e["type"] == "exit"}
    execs = {e["pid"]: e for e in r.events if e["type"] == "exec" and e["ret"] == 0}
    for c in inside["children"]:
        for got in (exits.get(c["pid"]), execs.get(c["pid"])):
            assert got is not None, (c, sorted(exits))
            assert got["cgroup_id"] == t["inode"][c["cgroup"]], (c, got)
            assert got["container_id"] == container[c["cgroup"]], (c, got)
            assert got["pod_uid"] is None
        assert exits[c["pid"]]["status"] == c["status"]
    # The workload itself ended in the scope.
    assert exits[inside["pid"]]["cgroup_id"] == t["inode"][t["scope"]]
    assert exits[inside["pid"]]["container_id"] == t["id"]
    # Exits in the cgroups are exactly the inside workload's and its children's.
    assert set(exits) == {c["pid"] for c in inside["children"]} | {inside["pid"]}


def test_container_filter_takes_the_container_and_its_subcgroups(rbtrace, tree, tmp_path):
    """`rbtrace exit --container PREFIX`: the scope and its sub-cgroup, not
    its parent, not the other container, not the rest of the host."""
    t = tree
    targets = [t["scope"], t["sub"], t["base"], t["other"]] * (N // 4)
    tracer = rbtrace("exit", "--json", "--container", t["id"][:12])
    inside, outside = _workloads(tmp_path, t, targets)
    r = tracer.stop()
    assert r.returncode == 130, r.stderr
    assert r.lines[0]["filters"] == f"container={t['id'][:12]}"
    want = {c["pid"]: c for c in inside["children"] if c["cgroup"] in (t["scope"], t["sub"])}
    want[inside["pid"]] = {"cgroup": t["scope"], "status": None}
    got = {e["pid"]: e for e in r.events}
    assert set(got) == set(want), (sorted(got), sorted(want))
    for pid, e in got.items():
        assert e["container_id"] == t["id"]
        assert e["cgroup_id"] == t["inode"][want[pid]["cgroup"]]
        if want[pid]["status"] is not None:
            assert e["status"] == want[pid]["status"]


def test_unmatched_or_ambiguous_container_and_bad_cgroup_exit_2(kernel_ok, tree):
    t = tree
    unknown = secrets.token_hex(8)
    cases = [(("--container", unknown), f"no container's id starts with {unknown}"),
             (("--container", t["id"][:8]), f"2 containers' ids start with {t['id'][:8]}"),
             (("--cgroup", t["base"] + "-absent"), "is not a directory"),
             (("--cgroup", "/tmp"), "is not in the cgroup v2 mount"),
             (("--cgroup", t["base"], "--container", t["id"]), "can't be combined")]
    for args, said in cases:
        p = run_cli("exit", "--json", "-d", "5", *args)
        err = p.stderr.decode()
        assert p.returncode == 2, (args, err)
        assert err.count("\n") == 1 and said in err, (args, err)
        assert p.stdout == b""
    # The twin alone, by enough digits: found (rbtrace starts, then stops).
    p = run_cli("trace", "exit,exec", "--json", "-d", "0.5", "--container", t["twin"][:12])
    assert p.returncode == 0, p.stderr.decode()
    start = json.loads(p.stdout.splitlines()[0])
    assert start["filters"] == f"container={t['twin'][:12]}"


def test_one_compiled_probe_serves_every_cgroup(kernel_ok, tree, tmp_path):
    """--cgroup is a map value written at load, not compiled in: a run with
    it, and one with another cgroup, load what a run without it compiled."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = {"RBTRACE_CACHE_DIR": str(cache)}
    hit = "loaded from the compile cache"
    runs = [(), ("--cgroup", tree["base"]), ("--container", tree["id"][:12])]
    for n, args in enumerate(runs):
        p = run_cli("exit", "--json", "--debug", "-d", "0.3", *args, env=env)
        err = p.stderr.decode()
        assert p.returncode == 0, err
        assert (hit in err) == (n > 0), (args, err)
