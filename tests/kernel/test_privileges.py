"""rbtrace as a user other than root, with and without the capabilities
the docs name (rbtrace/kernel.py NEEDED_CAPS: CAP_BPF, CAP_PERFMON and
CAP_DAC_READ_SEARCH).

Each command runs as uid 65534 through setpriv, with exactly the
capabilities given (inheritable and ambient, so that they survive the
exec of python), inside a private mount namespace where tracefs is not
mounted on /sys/kernel/tracing until rbtrace, run as root once, mounts
it: what a fresh machine looks like after `sudo rbtrace doctor`.

The user must be able to read rbtrace and its venv.  When the checkout is
somewhere it can't (a home directory of mode 0700), the package, its
probes and the venv's site-packages are copied to a world-readable
directory and run with the same interpreter.
"""
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from conftest import REPO, parse_json_lines
from rbtrace import kernel

UID = 65534
ALL = ("bpf", "perfmon", "dac_read_search")
CAP_NAME = {"bpf": "CAP_BPF", "perfmon": "CAP_PERFMON", "dac_read_search": "CAP_DAC_READ_SEARCH"}
# Everything but the setpriv call: a private mount namespace in which
# rbtrace's root code mounts tracefs itself (kernel.ensure_tracefs).
SCRIPT = """
while umount /sys/kernel/tracing 2>/dev/null; do :; done
{prepare}
exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps={caps} --ambient-caps={caps} \
    "$PY" -m rbtrace "$@"
"""


def _user_can_import(python, env):
    p = subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                        python, "-c", "import rbtrace.cli, rbtrace.paths; rbtrace.paths.probes_dir()"],
                       cwd="/", env=env, capture_output=True)
    return p.returncode == 0


@pytest.fixture(scope="module")
def as_user(kernel_ok):
    tmp = tempfile.mkdtemp(prefix="rbtrace-user-")
    os.chmod(tmp, 0o755)
    home = os.path.join(tmp, "home")
    os.mkdir(home)
    os.chown(home, UID, UID)
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": home, "PY": sys.executable,
           "PYTHONDONTWRITEBYTECODE": "1"}
    for key in ("RBTRACE_CACHE_DIR", "RBTRACE_KERNEL_HEADERS"):
        if key in os.environ:
            env[key] = os.environ[key]
    env["PYTHONPATH"] = REPO             # this checkout's rbtrace, whatever is installed
    top = REPO
    if not _user_can_import(sys.executable, env):
        top = copy = os.path.join(tmp, "rbtrace")
        for part in ("rbtrace", "probes", "examples"):
            shutil.copytree(os.path.join(REPO, part), os.path.join(copy, part),
                            ignore=shutil.ignore_patterns("__pycache__"))
        site = os.path.join(tmp, "site-packages")
        shutil.copytree(sysconfig.get_paths()["purelib"], site,
                        ignore=shutil.ignore_patterns("__pycache__", "__editable__*", "pip",
                                                      "setuptools", "pytest", "_pytest"))
        subprocess.run(["chmod", "-R", "a+rX", tmp], check=True)
        # The venv's interpreter is a link to the system one (which sees
        # BCC), maybe through a directory the user can't enter.
        env["PY"] = os.path.realpath(sys.executable)
        env["PYTHONPATH"] = f"{copy}:{site}"
        assert _user_can_import(env["PY"], env), "the copy is not importable by the user"
    # The merged header tree is built by root (as `sudo rbtrace doctor`
    # would), in the cache every user reads.
    subprocess.run([sys.executable, "-c", "from rbtrace import kernel; kernel.find_headers()"],
                   cwd=REPO, check=True)

    def run(*args, caps=ALL, timeout=180, root_first=True, extra_env=None):
        prepare = ("\"$PY\" -c 'from rbtrace import kernel; kernel.ensure_tracefs()' || exit 99"
                   if root_first else "")
        script = SCRIPT.format(uid=UID, caps=",".join(f"+{c}" for c in caps) or "-all",
                               prepare=prepare)
        return subprocess.run(["unshare", "--mount", "--propagation", "private",
                               "sh", "-c", script, "sh", *args],
                              cwd=tmp, env={**env, **(extra_env or {})}, capture_output=True,
                              timeout=timeout)

    run.top = top
    run.home = home
    yield run
    shutil.rmtree(tmp, ignore_errors=True)


def doctor_lines(p):
    return [(ln.split(None, 1)[0], ln.split(None, 1)[1][:20].strip(), ln)
            for ln in p.stdout.decode().splitlines()]


def test_the_docs_name_the_set_that_is_tested():
    assert kernel.NEEDED_CAPS == "CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH"
    assert kernel.SETPRIV_CAPS == ",".join(f"+{c}" for c in ALL)
    for page in ("README.md", "man/rbtrace.8", "man/rbtrace-doctor.8"):
        with open(os.path.join(REPO, page)) as f:
            text = f.read().replace("\\fB", "").replace("\\fR", "").replace("\n.B ", " ")
        for cap in CAP_NAME.values():
            assert cap in text, (page, cap)


def test_doctor_without_privileges_prints_every_check(as_user):
    root = subprocess.run([sys.executable, "-m", "rbtrace", "doctor"], cwd=REPO,
                          capture_output=True)
    p = as_user("doctor", caps=())
    assert p.returncode == 1
    assert p.stderr.decode() == ""                     # no traceback, no internal error
    lines = doctor_lines(p)
    assert [n for _, n, _ in lines] == [n for _, n, _ in doctor_lines(root)]
    by_name = {n: (status, line) for status, n, line in lines}
    status, line = by_name["privileges"]
    assert status == "missing"
    assert f"uid {UID}: missing CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH" in line
    status, line = by_name["tracefs"]
    assert status == "missing" and "/sys/kernel/tracing" in line
    assert "permission denied (needs CAP_DAC_READ_SEARCH)" in line
    assert by_name["ring buffer"][0] == "missing"
    assert "not tried: needs CAP_BPF, CAP_PERFMON" in by_name["ring buffer"][1]
    assert by_name["hook tracepoint"][0] == "missing"


def test_doctor_with_the_capabilities_is_ok(as_user):
    p = as_user("doctor")
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    by_name = {n: (status, line) for status, n, line in doctor_lines(p)}
    assert by_name["privileges"][0] == "ok"
    assert f"uid {UID} with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH" in by_name["privileges"][1]
    assert by_name["tracefs"] == ("ok", by_name["tracefs"][1])
    assert by_name["tracefs"][1].split()[-1] == "/sys/kernel/tracing"
    assert by_name["hook tracepoint"][0] == "ok"


@pytest.mark.parametrize("lacking", ALL)
def test_each_capability_is_needed_and_named(as_user, lacking):
    caps = [c for c in ALL if c != lacking]
    p = as_user("exec", "--json", "-c", "1", "--", "/bin/true", caps=caps)
    assert p.returncode == 1
    assert p.stdout == b""
    err = p.stderr.decode().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("rbtrace: rbtrace needs root, or the capabilities "
                             "CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH: "
                             f"uid {UID} lacks {CAP_NAME[lacking]} (hint:"), err[0]


WORKLOAD = "/bin/true; /bin/echo 'a b' c >/dev/null; /nonexistent/rbtrace-x 2>/dev/null; exit 0"


def test_exec_as_a_user_with_the_capabilities(as_user):
    """The workload's exec calls, known exactly: sh's own, two programs,
    one that does not exist."""
    p = as_user("exec", "--json", "--", "/bin/sh", "-c", WORKLOAD)
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    got = [(e["filename"], e["argv"], e["ret"], e["errno"]) for e in r.events]
    assert got == [
        ("/bin/sh", ["/bin/sh", "-c", WORKLOAD], 0, None),
        ("/bin/true", ["/bin/true"], 0, None),
        ("/bin/echo", ["/bin/echo", "a b", "c"], 0, None),
        ("/nonexistent/rbtrace-x", ["/nonexistent/rbtrace-x"], -2, "ENOENT"),
    ]
    assert {e["uid"] for e in r.events} == {UID}
    sh = r.summary["command"]["pid"]
    assert r.events[0]["pid"] == sh
    assert all(e["ppid"] == sh for e in r.events[1:])
    assert len({e["pid"] for e in r.events[1:]}) == 3
    assert r.summary["dropped"] == 0 and r.summary["command"]["status"] == 0


def test_exec_filtered_by_comm_as_a_user(as_user):
    """-n: only the workload's /bin/true, among everything on the host."""
    marker = "rbtrace-priv-t"
    # In the user's own home: the command's cwd is not writable by it.
    p = as_user("exec", "--json", "-n", marker, "--", "/bin/sh", "-c",
                f"cd \"$HOME\" && ln -sf /bin/true {marker} && ./{marker} one && "
                f"./{marker} two && rm -f {marker}")
    assert p.returncode == 0, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    assert [(e["comm"], e["argv"]) for e in r.events] == [(marker, [f"./{marker}", "one"]),
                                                          (marker, [f"./{marker}", "two"])]


def test_tp_list_without_and_with_read_access(as_user):
    root = subprocess.run([sys.executable, "-m", "rbtrace", "tp", "--list", "sched:*"],
                          cwd=REPO, capture_output=True)
    assert root.returncode == 0 and root.stdout
    p = as_user("tp", "--list", "sched:*", caps=())
    assert p.returncode == 1 and p.stdout == b""
    err = p.stderr.decode().splitlines()
    assert len(err) == 1 and "needs CAP_DAC_READ_SEARCH" in err[0], err
    # Listing only reads tracefs: CAP_DAC_READ_SEARCH is all it needs.
    p = as_user("tp", "--list", "sched:*", caps=("dac_read_search",))
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == root.stdout


def test_tp_and_run_as_a_user_with_the_capabilities(as_user):
    p = as_user("tp", "--json", "sched:sched_process_exit", "--", "/bin/sh", "-c", "exit 7")
    assert p.returncode == 7, p.stderr.decode()
    r = parse_json_lines(p.stdout.decode())
    assert [(e["event"], e["pid"]) for e in r.events] == [("sched:sched_process_exit",
                                                           r.summary["command"]["pid"])]
    # A probe of one's own compiles from the kernel's BTF, in a tree kept
    # in a cache of mode 0700 that the user owns: root's is closed to them,
    # so theirs is ~/.cache/rbtrace unless RBTRACE_CACHE_DIR says otherwise.
    run = ("run", "--json", os.path.join(as_user.top, "examples", "exit.bpf.c"), "--",
           "/bin/sh", "-c", "exit 3")
    if not os.environ.get("RBTRACE_CACHE_DIR"):
        mine = os.path.join(as_user.home, ".cache", "rbtrace")
        shutil.rmtree(mine, ignore_errors=True)
        p = as_user(*run)
        assert p.returncode == 3, p.stderr.decode()
        r = parse_json_lines(p.stdout.decode())
        assert [(e["pid"], e["args"]["code"]) for e in r.events] == \
            [(r.summary["command"]["pid"], 3)]
        st = os.stat(mine)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (UID, 0o700)
        assert os.listdir(os.path.join(mine, "compiled")) and os.listdir(os.path.join(mine, "btf"))
        again = as_user(*run[:2], "--debug", *run[2:])     # now from the user's cache
        assert again.returncode == 3 and "loaded from the compile cache" in \
            again.stderr.decode(), again.stderr.decode()
    top = tempfile.mkdtemp(prefix="rbtrace-user-cache-")
    try:
        os.chmod(top, 0o711)
        cache = os.path.join(top, "cache")
        os.mkdir(cache, 0o700)
        os.chown(cache, UID, UID)
        p = as_user(*run, extra_env={"RBTRACE_CACHE_DIR": cache})
        if p.returncode != 3:
            raise AssertionError(p.stderr.decode())
        r = parse_json_lines(p.stdout.decode())
        assert [(e["pid"], e["args"]["code"]) for e in r.events] == \
            [(r.summary["command"]["pid"], 3)]
        assert os.listdir(os.path.join(cache, "compiled"))
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_tracefs_not_mounted_for_the_user_is_named(as_user):
    """Before root has run rbtrace, /sys/kernel/tracing is not mounted:
    one line that says where and how."""
    p = as_user("exec", "--json", "-c", "1", "--", "/bin/true", root_first=False)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.decode() == (
        "rbtrace: tracefs is not mounted on /sys/kernel/tracing (hint: as root: mount -t "
        "tracefs none /sys/kernel/tracing (or run rbtrace doctor as root once))\n")
