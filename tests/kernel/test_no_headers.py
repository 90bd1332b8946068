"""rbtrace on a machine without kernel headers: every command compiles from
the running kernel's BTF alone (rbtrace/btftree.py).

Each command runs in a mount namespace where /usr/src, /lib/modules,
/usr/include and the cache are empty tmpfs, so nothing of the installed
headers (nor a tree made earlier) can be used; the tests of each command
then compare its events with their usual ground truth (strace, /proc,
waitpid, the workloads' own records), ppid and exe included, which are
read through struct offsets.
"""
import subprocess
import sys

import pytest

import conftest
import test_exec
import test_exit
import test_open
import test_run
import test_tcp
import test_tp
from conftest import parse_json_lines, run_cli
from test_exec import exectool  # noqa: F401  (a fixture)
from test_open import workload  # noqa: F401  (a fixture)

HIDDEN = ["/usr/src", "/lib/modules", "/usr/include"]

# Runs "$@" with every header directory and the cache empty; exits 97 if
# anything is left to see there.
HIDE = """set -e
cache="${RBTRACE_CACHE_DIR:-/var/cache/rbtrace}"
for d in /usr/src /lib/modules /usr/include "$cache"; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0700 none "$d"
done
[ -z "$(find /usr/src /lib/modules /usr/include "$cache" -mindepth 1)" ] || exit 97
exec "$@"
"""
NO_HEADERS_ARGV = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDE,
                   "no-headers", sys.executable, "-m", "rbtrace"]


@pytest.fixture
def no_headers(kernel_ok, monkeypatch):
    """Every rbtrace the shared helpers start runs without headers."""
    monkeypatch.setattr(conftest, "RBTRACE_ARGV", NO_HEADERS_ARGV)


def test_doctor_says_btf_alone(no_headers):
    p = run_cli("doctor")
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    (line,) = [ln for ln in out.splitlines() if "kernel headers" in ln]
    assert line.split()[0] == "ok" and "none: BTF alone (/sys/kernel/btf/vmlinux)" in line


def test_doctor_names_a_tree_given_and_btf_when_asked(kernel_ok, tmp_path):
    """The other mode, with a tree named by RBTRACE_KERNEL_HEADERS (its
    contents don't matter to doctor), and BTF chosen by name."""
    (tmp_path / "include").mkdir()
    for value, expected in ((str(tmp_path), f"headers tree: {tmp_path} (from RBTRACE_KERNEL_HEADERS)"),
                            ("btf", "none: BTF alone (/sys/kernel/btf/vmlinux)")):
        p = run_cli("doctor", env={"RBTRACE_KERNEL_HEADERS": value})
        (line,) = [ln for ln in p.stdout.decode().splitlines() if "kernel headers" in ln]
        assert expected in line, line


def test_exec_without_headers(no_headers, rbtrace, tmp_path, exectool):  # noqa: F811
    test_exec.test_thread_exec_matches_strace_and_proc(rbtrace, tmp_path, exectool)
    test_exec.test_exe_is_what_proc_pid_exe_says_across_mounts_and_after_unlink(rbtrace, exectool)


def test_open_without_headers(no_headers, rbtrace, workload, tmp_path):  # noqa: F811
    test_open.test_open_matches_strace(rbtrace, workload, tmp_path)


def test_tp_without_headers(no_headers, rbtrace, tmp_path):
    test_tp.test_syscall_tracepoints_by_wildcard_decode_the_arguments_passed(rbtrace, tmp_path)


def test_run_without_headers(no_headers, rbtrace):
    test_run.test_kill_example_reports_every_call_of_the_process_exactly(rbtrace)


def test_exit_without_headers(no_headers, tmp_path):
    test_exit.assert_ground_truth(*test_exit.run_workload(tmp_path, rbtrace=NO_HEADERS_ARGV))


def test_tcp_without_headers(no_headers, tmp_path):
    test_tcp.test_connections_match_the_workload_and_ss(tmp_path)


# A probe of one's own that reads kernel structs through their C types.
PARENT_PROBE = r"""
#include "rbtrace.h"

struct parent_event {
    struct rb_header h;
    u32 tgid;
    u32 parent_tgid;
};
RBTRACE_EVENT(parent_event);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    struct parent_event *e = rbtrace_reserve(parent_event);
    if (!e)
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    e->tgid = task->tgid;
    e->parent_tgid = task->real_parent->tgid;
    rbtrace_submit(e);
    return 0;
}
"""

# Three processes, each a child of the last, each calls getppid() and
# appends to the file argv[2] what /proc says of it.
CHAIN = r"""
import os, subprocess, sys
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
os.getppid()
with open(sys.argv[2], "a") as f:
    f.write(f"{status['Tgid'].strip()} {status['PPid'].strip()}\n")
if int(sys.argv[1]) > 1:
    subprocess.run([sys.executable, __file__, str(int(sys.argv[1]) - 1), sys.argv[2]], check=True)
"""


@pytest.mark.parametrize("headers", ["installed", "hidden"])
def test_users_probe_reads_task_structs_as_proc_says(kernel_ok, monkeypatch, tmp_path, headers):
    """task->tgid and task->real_parent->tgid, read through the kernel's
    own struct task_struct, equal /proc's Tgid and PPid, whether kernel
    headers (of another version, here) are installed or not: a user's
    probe is compiled against the running kernel's BTF either way."""
    if headers == "hidden":
        monkeypatch.setattr(conftest, "RBTRACE_ARGV", NO_HEADERS_ARGV)
    probe, chain, proc = tmp_path / "parent.bpf.c", tmp_path / "chain.py", tmp_path / "proc"
    probe.write_text(PARENT_PROBE)
    chain.write_text(CHAIN)
    p = run_cli("run", str(probe), "--json", "--no-cache", "--",
                sys.executable, str(chain), "3", str(proc))
    assert p.returncode == 0, p.stderr.decode()
    truth = [tuple(map(int, ln.split())) for ln in proc.read_text().splitlines()]
    r = parse_json_lines(p.stdout.decode())
    got = [(e["args"]["tgid"], e["args"]["parent_tgid"]) for e in r.events
           if e["comm"].startswith("python")]
    assert len(truth) == 3 and got == truth
    assert all((e["pid"], e["ppid"]) == (e["args"]["tgid"], e["args"]["parent_tgid"])
               for e in r.events)


def test_an_include_the_btf_tree_lacks_is_one_line_naming_the_mode(no_headers, tmp_path):
    probe = tmp_path / "sched.bpf.c"
    probe.write_text("#include <linux/sched.h>\n" + PARENT_PROBE)
    p = run_cli("run", str(probe), "--json", "-d", "0.1")
    err = p.stderr.decode().strip().splitlines()
    assert p.returncode != 0 and len(err) <= 2, err
    assert err[0].startswith(f"rbtrace: {probe}:1: <linux/sched.h> is not available: no kernel "
                             f"headers are used here"), err


def test_a_stray_header_in_the_working_directory_is_not_used(no_headers, tmp_path):
    """BCC searches the compiler's working directory before the tree."""
    stray = tmp_path / "linux"
    stray.mkdir()
    (stray / "types.h").write_text('#error "a stray header was used"\n')
    (stray / "version.h").write_text('#error "a stray header was used"\n')
    p = subprocess.run([*NO_HEADERS_ARGV, "exec", "--json", "-d", "0.1", "--no-cache"],
                       cwd=tmp_path, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert parse_json_lines(p.stdout.decode()).summary is not None
