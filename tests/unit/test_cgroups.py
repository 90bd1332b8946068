"""rbtrace/cgroups.py without the kernel: container ids and pod uids from
cgroup paths (every runtime's naming), the cgroup v2 mount from
mountinfo, the id -> path resolver's cache and walk rate, --cgroup's and
--container's checks, and container_id through open's JSON fast path."""
import os

import pytest

from rbtrace import cgroups

ID = "4f8c1d2e3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f"
ID2 = "0123456789abcdef" * 4
POD = "2f1c7a4e-0b3d-4c55-9e2a-6d1f0c8b7a90"


@pytest.mark.parametrize("path, want", [
    # systemd driver, each runtime's scope unit
    (f"/system.slice/docker-{ID}.scope", (ID, None)),
    (f"/system.slice/cri-containerd-{ID}.scope", (ID, None)),
    (f"/machine.slice/libpod-{ID}.scope", (ID, None)),
    (f"/system.slice/crio-{ID}.scope", (ID, None)),
    # a container's own sub-cgroups (systemd in the container) are still it
    (f"/system.slice/docker-{ID}.scope/init.scope", (ID, None)),
    (f"/machine.slice/libpod-{ID}.scope/container", (ID, None)),
    # cgroupfs driver
    (f"/docker/{ID}", (ID, None)),
    (f"docker/{ID}", (ID, None)),                 # relative to the mount
    (f"/libpod_parent/libpod-{ID}", (ID, None)),
    # Kubernetes, systemd driver: QoS slices, the pod's uid with "_" for "-"
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}"
     f".slice/cri-containerd-{ID}.scope", (ID, POD)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
     f"{POD.replace('-', '_')}.slice/crio-{ID}.scope", (ID, POD)),
    (f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/cri-containerd-{ID}.scope",
     (ID, POD)),                                  # Guaranteed: no QoS slice
    # Kubernetes, cgroupfs driver
    (f"/kubepods/burstable/pod{POD}/{ID}", (ID, POD)),
    (f"/kubepods/pod{POD}/{ID}", (ID, POD)),
    # the pod's own cgroup: a pod, no container
    (f"/kubepods/burstable/pod{POD}", (None, POD)),
    # docker in docker: the innermost container
    (f"/docker/{ID}/docker/{ID2}", (ID2, None)),
    # not containers
    ("/", (None, None)),
    ("", (None, None)),
    ("/user.slice/user-1000.slice/session-3.scope", (None, None)),
    ("/system.slice/docker.service", (None, None)),
    (f"/system.slice/crio-conmon-{ID}.scope", (None, None)),     # the monitor
    (f"/machine.slice/libpod-conmon-{ID}.scope", (None, None)),
    (f"/system.slice/docker-{ID[:-1]}.scope", (None, None)),     # 63 digits
    (f"/system.slice/docker-{ID.upper()}.scope", (None, None)),
    (f"/system.slice/docker-{ID}.scope.bak", (None, None)),
    (f"/x/{ID}0", (None, None)),                                  # 65 digits
])
def test_parse_path(path, want):
    assert cgroups.parse_path(path) == want


MOUNTINFO = """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
"""


def test_the_v2_mount_comes_from_mountinfo(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(MOUNTINFO)
    assert cgroups.v2_mount(str(f)) == "/sys/fs/cgroup/unified"
    # a unified host; a bind mount of a subtree loses to the whole tree;
    # an escaped space in the mount point
    f.write_text("40 1 0:30 /docker/abc /mnt/sub rw - cgroup2 cgroup2 rw\n"
                 "41 1 0:30 / /sys/fs/cg\\040v2 rw shared:4 - cgroup2 cgroup2 rw\n")
    assert cgroups.v2_mount(str(f)) == "/sys/fs/cg v2"
    f.write_text(MOUNTINFO.replace("cgroup2 cgroup2", "cgroup cgroup"))
    assert cgroups.v2_mount(str(f)) is None
    assert cgroups.v2_mount(str(tmp_path / "absent")) is None


def _tree(root, *paths):
    for p in paths:
        d = root / p
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("")
    (root / "cgroup.procs").write_text("")


def test_resolver_caches_by_id_and_walks_at_most_once_a_second(tmp_path):
    """Without file handles (tmpfs has none for cgroups): a walk of the
    mount finds the path; an id not found waits for the next walk, which
    comes no sooner than WALK_INTERVAL after the last."""
    _tree(tmp_path, f"system.slice/docker-{ID}.scope", "user.slice")
    now = [100.0]
    r = cgroups.Resolver(root=str(tmp_path), clock=lambda: now[0], by_handle=False)
    ino = os.stat(tmp_path / f"system.slice/docker-{ID}.scope").st_ino
    assert r(ino) == (ID, None)
    assert r.walks == 1
    assert r(os.stat(tmp_path / "user.slice").st_ino) == (None, None)
    assert r(ino) == (ID, None) and r.walks == 1            # cached, no walk
    # A cgroup made after the walk: not found until the interval is over.
    _tree(tmp_path, f"kubepods/pod{POD}/{ID2}")
    new = os.stat(tmp_path / f"kubepods/pod{POD}/{ID2}").st_ino
    now[0] += cgroups.WALK_INTERVAL / 2
    assert r(new) == (None, None) and r.walks == 1
    assert r(new) == (None, None) and r.walks == 1          # still no second walk
    now[0] += cgroups.WALK_INTERVAL
    assert r(new) == (ID2, POD) and r.walks == 2
    assert r(0) == (None, None)                             # no id: no walk
    assert r.walks == 2


def test_resolver_by_file_handle_on_the_real_mount():
    """On the machine's cgroup v2 mount, the root cgroup (id 1) is ""."""
    root = cgroups.v2_mount()
    assert root is not None, "every machine of this project mounts cgroup v2 (KERNEL-NOTES)"
    r = cgroups.Resolver(root=root)
    assert r.path(os.stat(root).st_ino) == ""
    assert r(os.stat(root).st_ino) == (None, None)


def test_check_dir(tmp_path):
    _tree(tmp_path, "a/b")
    (tmp_path / "plain").mkdir()
    root = str(tmp_path)
    assert cgroups.check_dir(str(tmp_path / "a" / "b"), root) == str(tmp_path / "a" / "b")
    assert cgroups.check_dir("a/b", root) == str(tmp_path / "a" / "b")   # from the mount
    assert cgroups.check_dir(root, root) == root
    with pytest.raises(cgroups.NotFound, match="is not a directory"):
        cgroups.check_dir("a/nope", root)
    with pytest.raises(cgroups.NotFound, match="no cgroup.procs"):
        cgroups.check_dir(str(tmp_path / "plain"), root)
    with pytest.raises(cgroups.NotFound, match="not in the cgroup v2 mount"):
        cgroups.check_dir("/", root)


def test_find_container(tmp_path):
    _tree(tmp_path, f"system.slice/docker-{ID}.scope/init.scope",
          f"kubepods/burstable/pod{POD}/{ID2}", "system.slice/docker.service")
    root = str(tmp_path)
    # the outermost directory naming the container, whatever the prefix's length
    want = os.path.join(root, f"system.slice/docker-{ID}.scope")
    for prefix in (ID[:1], ID[:12], ID):
        assert cgroups.find_container(prefix, root) == want
    assert cgroups.find_container("0123", root) == os.path.join(
        root, f"kubepods/burstable/pod{POD}/{ID2}")
    with pytest.raises(cgroups.NotFound, match="no container's id starts with 5"):
        cgroups.find_container("5", root)
    _tree(tmp_path, f"docker/{ID[:8]}{'9' * 56}")
    with pytest.raises(cgroups.NotFound, match=f"2 containers' ids start with {ID[:8]}"):
        cgroups.find_container(ID[:8], root)
    assert cgroups.find_container(ID[:9], root) == want
    for bad in ("", "xyz", ID.upper()[:4], ID + "0"):
        with pytest.raises(cgroups.NotFound, match="is not a container id"):
            cgroups.find_container(bad, root)


def test_container_id_through_the_json_fast_path():
    """Open's cached JSON lines (runs of equal records, templates keyed by
    the record's bytes) carry each record's own container: cgroup_id is in
    the key, so two cgroups never share a template."""
    import orjson

    import test_open_decode as od
    from rbtrace import fields
    from rbtrace.kinds import open as op
    known = {11: (ID, None), 12: (ID2, POD)}
    rows = ([{"cgroup_id": 11}] * 3 + [{"cgroup_id": 12}] * 2 + [{"cgroup_id": 1}]
            + [{"cgroup_id": 11}] * 2)
    for et in (od.SHORT, od.LONG):
        probe = op.OpenCodec({})
        probe.containers = lambda cg: known.get(cg, (None, None))
        probe.clock = fields.Clock(offset_ns=1_700_000_000 * 10**9)
        recs, offsets, data = od.records(et, rows)
        events = probe.decode(et, recs, offsets, data)
        assert [(e["cgroup_id"], e["container_id"], e["pod_uid"]) for e in events] == \
            [(r["cgroup_id"], *known.get(r["cgroup_id"], (None, None))) for r in rows]
        want = b"".join(orjson.dumps(e) + b"\n" for e in events)
        for _ in range(2):                           # fresh, then from the template cache
            got = probe.json_lines(et, recs, offsets, data)
            assert got == want
        assert [orjson.loads(ln)["container_id"] for ln in got.splitlines()] == \
            [ID] * 3 + [ID2] * 2 + [None] + [ID] * 2


def test_a_removed_cgroup_is_cached_as_none_without_walks(tmp_path, monkeypatch):
    """When file handles work, the kernel's ESTALE means the cgroup is gone
    for good: answered (None, None) from then on, with no walk; any other
    failure (no CAP_DAC_READ_SEARCH) falls back to walking."""
    _tree(tmp_path, f"docker/{ID}")
    ino = os.stat(tmp_path / f"docker/{ID}").st_ino
    r = cgroups.Resolver(root=str(tmp_path))
    calls = []
    monkeypatch.setattr(r, "_by_handle_path", lambda cg: calls.append(cg) or cgroups.GONE)
    assert r(ino) == (None, None) and r(ino) == (None, None)
    assert calls == [ino] and r.walks == 0
    r = cgroups.Resolver(root=str(tmp_path))

    def refused(cg):
        r._by_handle = False
        return None
    monkeypatch.setattr(r, "_by_handle_path", refused)
    assert r(ino) == (ID, None) and r.walks == 1


def test_gone_for_real_on_the_machines_mount():
    """A cgroup made and removed: its id answers GONE, not a walk."""
    root = cgroups.v2_mount()
    if os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    d = os.path.join(root, f"rbtrace-unit-{os.getpid()}")
    os.mkdir(d)
    try:
        ino = os.stat(d).st_ino
        assert cgroups.Resolver(root=root).path(ino) == os.path.basename(d)
    finally:
        os.rmdir(d)
    r = cgroups.Resolver(root=root)
    assert r.path(ino) is cgroups.GONE and r.walks == 0
