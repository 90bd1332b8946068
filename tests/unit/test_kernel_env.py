"""Finding kernel headers without the user's help (no root, fake trees)."""
import os
from pathlib import Path

import pytest

from rbtrace import kernel
from rbtrace.errors import EnvironmentProblem


def make_debian_pair(src, version, arch):
    common = src / f"linux-headers-{version}-common"
    archd = src / f"linux-headers-{version}-{arch}"
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "sched.h").write_text("/* common */")
    (common / "arch" / "x86" / "include" / "asm").mkdir(parents=True)
    (common / "Makefile").write_text("common")
    (archd / "include" / "generated").mkdir(parents=True)
    (archd / "include" / "generated" / "autoconf.h").write_text("/* gen */")
    (archd / "arch" / "x86" / "include" / "generated").mkdir(parents=True)
    (archd / "Makefile").write_text("arch")
    (archd / ".config").write_text("CONFIG_X=y")
    return common, archd


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RBTRACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RBTRACE_KERNEL_HEADERS", raising=False)
    monkeypatch.setattr(kernel, "_debian_arch", lambda: "amd64")
    monkeypatch.setattr(os.path, "exists",
                        lambda p, _e=os.path.exists: False if p == "/sys/kernel/kheaders.tar.xz" else _e(p))
    src = tmp_path / "src"
    src.mkdir()
    return tmp_path, src


def test_split_debian_headers_are_merged_into_one_tree(env):
    tmp, src = env
    make_debian_pair(src, "6.1.0-9", "amd64")
    make_debian_pair(src, "6.1.0-10", "amd64")      # newest wins (10 > 9)
    h = kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src)
    assert h.path.name == "linux-headers-6.1.0-10-amd64"
    assert (h.path / "include" / "linux" / "sched.h").read_text() == "/* common */"
    assert (h.path / "include" / "generated" / "autoconf.h").exists()
    assert (h.path / "arch" / "x86" / "include" / "asm").is_dir()
    assert (h.path / "arch" / "x86" / "include" / "generated").is_dir()
    assert (h.path / "Makefile").read_text() == "arch"   # the arch tree wins
    assert (h.path / ".config").exists()
    links = sum(len(files) + len(dirs) for _, dirs, files in os.walk(h.path))
    assert links < 30                                     # a farm of a few links
    again = kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src)
    assert again.path == h.path


def test_running_kernels_own_headers_come_first(env):
    tmp, src = env
    make_debian_pair(src, "6.1.0-9", "amd64")
    build = tmp / "modules" / "6.18.0-test" / "build" / "include"
    build.mkdir(parents=True)
    h = kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src)
    assert h.path is None and "running kernel's own" in h.how


def test_no_headers_and_no_btf_says_what_to_install(env, monkeypatch):
    tmp, src = env
    monkeypatch.setattr(kernel, "VMLINUX_BTF", tmp / "no-btf")
    with pytest.raises(EnvironmentProblem) as e:
        kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src)
    assert "apt-get install linux-headers-amd64" in str(e.value)
    assert "no-btf" in str(e.value)


def fake_btf_tree(monkeypatch, calls):
    from rbtrace import btftree

    def tree():
        calls.append(True)
        return Path("/cache/btf/0123")
    monkeypatch.setattr(btftree, "btf_tree", tree)
    monkeypatch.setattr(kernel, "VMLINUX_BTF", Path(__file__))     # exists


def test_no_headers_compiles_from_btf(env, monkeypatch):
    tmp, src = env
    calls = []
    fake_btf_tree(monkeypatch, calls)
    h = kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src)
    assert h.btf and h.path == Path("/cache/btf/0123") and calls
    assert h.how.startswith("none: BTF alone")
    assert h.cwd == h.path / "empty"           # not the caller's directory


def test_btf_mode_is_chosen_by_name_or_for_kernel_types(env, monkeypatch):
    tmp, src = env
    make_debian_pair(src, "6.1.0-9", "amd64")
    calls = []
    fake_btf_tree(monkeypatch, calls)
    h = kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src)
    assert not h.btf and h.cwd == Path("/")
    assert kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src,
                               kernel_types=True).btf
    monkeypatch.setenv("RBTRACE_KERNEL_HEADERS", "btf")
    assert kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src).btf
    # A tree named explicitly wins, even for kernel types.
    monkeypatch.setenv("RBTRACE_KERNEL_HEADERS", str(h.path))
    assert kernel.find_headers("6.18.0-test", modules_root=tmp / "modules", src_root=src,
                               kernel_types=True).path == h.path


def test_privileges_from_capabilities():
    bit = lambda *ns: sum(1 << n for n in ns)  # noqa: E731
    assert kernel.privileges_ok(bit(kernel.CAP_SYS_ADMIN))
    assert kernel.privileges_ok(bit(kernel.CAP_BPF, kernel.CAP_PERFMON))
    assert not kernel.privileges_ok(bit(kernel.CAP_BPF))
    assert not kernel.privileges_ok(0)


class FakeBTF:
    """The two questions btftree asks of rbtrace/btf.py."""
    def tags(self):
        return {"bpf_map_type", "task_struct", "bpf_attr", "s"}

    def enums(self):
        return [("bpf_map_type", ["BPF_MAP_TYPE_UNSPEC", "BPF_MAP_TYPE_HASH", "BPF_MAP_TYPE_NEW"]),
                ("", ["BPF_ANY", "TASK_RUNNING"]), ("pid_type", ["PIDTYPE_PID"])]


BCC_HEADER = """
/* struct task_struct { in a comment: not a definition } */
#define BPF_MAP_TYPE_NEW 99
#define __BPF_ENUM(x) BPF_##x,
enum bpf_map_type { BPF_MAP_TYPE_UNSPEC, BPF_MAP_TYPE_HASH, };
enum { BPF_ANY = 0, BPF_NOEXIST };
union bpf_attr { int x; };
struct s;
"""


def test_names_clashing_with_bccs_bpf_header():
    from rbtrace.btftree import clashing_names
    # Its enums with all their kernel enumerators (macro-made ones too), its
    # structs and unions, enumerators of anonymous enums; not a tag it only
    # declares, nor anything only the kernel has.
    assert clashing_names(FakeBTF(), BCC_HEADER) == [
        "BPF_ANY", "BPF_MAP_TYPE_HASH", "BPF_MAP_TYPE_NEW", "BPF_MAP_TYPE_UNSPEC",
        "bpf_attr", "bpf_map_type"]
