"""The man pages against real output.

* Every jq recipe in an EXAMPLES section (a `.EX` line starting with
  "rbtrace " and piped to jq; tests/unit/test_docs.py reads them) is run:
  rbtrace with the recipe's own options, a workload that gives every recipe
  something to find, then the recipe's pipeline over rbtrace's real output.
  jq must succeed and print something that isn't all null.
* Every member of every JSON line a workload produces is documented in
  FIELDS, and so is every member the decoders emit for synthetic records
  built from the probes' real record layouts (every flag and status bit,
  bytes that are not UTF-8), which reaches members no workload easily
  does.
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
import test_docs as docs  # noqa: E402  (the man page reader)

JQ = "/usr/bin/jq"
DEVNULL = subprocess.DEVNULL


def _recipes():
    out = []
    for page in docs.ALL_PAGES:
        for i, (args, tail) in enumerate(docs.jq_examples(docs.load(page))):
            out.append(pytest.param(args, tail, id=f"{page}.8#{i + 1}:{' '.join(args)}"))
    return out


RECIPES = _recipes()


@pytest.fixture(scope="module")
def jq():
    if not os.access(JQ, os.X_OK):
        pytest.skip(f"{JQ} is not installed (make setup-test installs it)")
    return JQ


def _user_exists(name):
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def workload(tmp):
    """Something for every recipe: execs that succeed, fail, go through a
    file descriptor, have many and odd arguments, run as www-data; opens
    that succeed, fail, create files, use relative and non-UTF-8 paths."""
    tmp = str(tmp)
    marker = "rbtrace-doc-" + uuid.uuid4().hex[:8]
    run = lambda *a, **kw: subprocess.run(list(a), stdout=DEVNULL, stderr=DEVNULL,  # noqa: E731
                                          timeout=30, **kw)
    run("/bin/true", marker, "one", "two", "three", "four", "five", "six")
    run("/bin/sh", "-c", f"cat /etc/hostname; echo x > {tmp}/created")
    run("cat", "hostname", cwd="/etc")
    run("cat", f"{tmp}/missing-{marker}")
    try:
        subprocess.run([f"{tmp}/no-such-program-{marker}"], timeout=30)
    except FileNotFoundError:
        pass
    # fexecve: execveat(fd, "", ..., AT_EMPTY_PATH)
    run(sys.executable, "-c",
        "import os, sys; fd = os.open('/bin/true', os.O_RDONLY); "
        "os.execve(fd, ['true', sys.argv[1]], {})", marker)
    if _user_exists("www-data") and shutil.which("setpriv"):
        run("setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups",
            "cat", "/etc/hostname")
    odd = os.path.join(os.fsencode(tmp), b"odd-\xff-" + marker.encode())
    with open(odd, "w"):
        pass
    run(b"/bin/true", b"arg-\xff")
    os.unlink(odd)
    # kill(): a signal checked, sent and delivered; one to a process that is
    # gone (ESRCH); a process that handles a signal itself.
    child = subprocess.Popen(["sleep", "60"])
    os.kill(child.pid, 0)
    child.terminate()
    child.wait()
    try:
        os.kill(child.pid, 0)
    except ProcessLookupError:
        pass
    run(sys.executable, "-c", "import os, signal; signal.signal(signal.SIGUSR1, lambda *a: 0); "
        "os.kill(os.getpid(), signal.SIGUSR1)")
    # TCP on the loopback (tcp_workload.py): connections over IPv4 and IPv6,
    # blocking and not, and refused connects.
    from tcp_workload import __file__ as tcp_workload, free_port
    port, closed = free_port(4), free_port(4)
    run(sys.executable, tcp_workload, os.path.join(tmp, "tcp.json"), f"pair:4:{port}:100:200",
        f"pair:6:{port}:300:400:nb", f"refused:4:{closed}", f"refused:6:{closed}:nb")


class Run:
    """rbtrace with these arguments, the workload once its probes are
    attached, then SIGINT (unless it stopped by itself); stdout is read
    all along so that a full pipe never makes it drop events."""

    def __init__(self, args, tmp, work=workload):
        # rbtrace-run(8)'s recipes run in the examples directory, as it says.
        cwd = os.path.join(REPO, "examples") if args[:1] == ["run"] else REPO
        proc = subprocess.Popen([sys.executable, "-m", "rbtrace", *args], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        chunks, started = [], threading.Event()

        def read():
            for line in iter(proc.stdout.readline, b""):
                chunks.append(line)
                started.set()
            started.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert started.wait(120), "rbtrace did not start"
            assert chunks and json.loads(chunks[0])["type"] == "start", \
                f"rbtrace did not start: {proc.stderr.read().decode(errors='replace')}"
            work(tmp)
            time.sleep(0.3)
            if "--" in args:
                # With -- CMD, rbtrace ends with CMD: a SIGINT could land
                # while it exits (after its handlers are restored).
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            self.returncode = proc.wait(timeout=120)
            reader.join(60)
            self.stderr = proc.stderr.read().decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.stdout = b"".join(chunks)
        self.lines = [json.loads(ln) for ln in self.stdout.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kernel_ok):
    """One run per distinct option list, shared by the recipes using it."""
    cache = {}

    def get(args):
        key = tuple(args)
        if key not in cache:
            cache[key] = Run(args, tmp_path_factory.mktemp("work"))
        return cache[key]
    return get


@pytest.mark.parametrize("args, tail", RECIPES)
def test_jq_recipe_on_real_output(args, tail, runs, jq):
    assert "--json" in args
    assert "$(" not in tail and "`" not in tail, "a recipe must be self-contained"
    run = runs(args)
    assert run.returncode in (0, 130), run.stderr
    assert run.lines[-1]["type"] == "summary"
    # The recipe's own pipeline, jq being the one at /usr/bin; the exit
    # status of every stage is reported on the last line of stderr.
    script = f"{tail}\necho \"pipeline-status: ${{PIPESTATUS[*]}}\" >&2\n"
    env = {**os.environ, "PATH": f"{os.path.dirname(jq)}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(["bash", "-c", script], input=run.stdout, capture_output=True,
                       timeout=120, env=env)
    err = p.stderr.decode(errors="replace")
    status = err.strip().splitlines()[-1]
    assert status.startswith("pipeline-status: "), err
    assert set(status.split(": ")[1].split()) == {"0"}, f"{tail}\n{err}"
    out = p.stdout.decode()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, f"no output from: {tail}\non {len(run.lines)} lines of rbtrace output"
    assert any(ln.strip() != "null" for ln in lines), f"only nulls from: {tail}"


def test_every_recipe_is_run():
    """The reader finds the recipes the pages have (and no page lost its)."""
    per_page = {p: len(docs.jq_examples(docs.load(p))) for p in docs.ALL_PAGES}
    for command in docs.probe_commands():
        assert per_page[f"rbtrace-{command}"] >= 5, per_page
    assert len(RECIPES) == sum(per_page.values())


# --- every member in real output is documented --------------------------------

def _documented(command):
    page = docs.load(f"rbtrace-{command}")
    return {t: page.tags("FIELDS", f"{t} lines") for t in (command, "start", "lost", "summary")}


def _odd_workload(tmp):
    """Rarer members: argv and file names that are not UTF-8 (filename_b64,
    comm_b64, argv_b64), a cut argument (the flag group), fexecve of a file
    whose path is not UTF-8 (exe_b64)."""
    workload(tmp)
    tmp = os.fsencode(str(tmp))
    link = os.path.join(tmp, b"odd-\xff")
    os.symlink(b"/bin/true", link)
    subprocess.run([link, b"\xfe", b"x" * 200], timeout=30)
    copy = os.path.join(tmp, b"copy-\xfd")
    shutil.copy(b"/bin/true", copy)
    os.chmod(copy, 0o755)
    subprocess.run([sys.executable, "-c",
                    "import os, sys; fd = os.open(os.fsencode(sys.argv[1]), os.O_RDONLY); "
                    "os.execve(fd, ['copy'], {})", copy], timeout=30)


@pytest.mark.parametrize("command, extra", [
    ("exec", ["--max-arg-bytes", "64"]),
    ("open", ["--full-path"]),
    ("tp", ["sched:sched_process_exec"]),
    ("tcp", []),
])
def test_every_member_in_real_output_is_documented(command, extra, tmp_path, kernel_ok):
    run = Run([command, "--json", *extra], tmp_path, work=_odd_workload)
    assert run.returncode == 130, run.stderr
    documented = _documented(command)
    seen = {}
    for line in run.lines:
        seen.setdefault(line["type"], set()).update(line)
    assert {"start", command, "summary"} <= set(seen)
    for line_type, members in seen.items():
        assert line_type in documented, f"line type {line_type!r} is not documented"
        assert members - documented[line_type] == set(), (line_type, members)
    events = [ln for ln in run.lines if ln["type"] == command]
    b64 = {k for e in events for k in e if k.endswith("_b64")}
    wanted = {"exec": {"argv_b64", "filename_b64", "comm_b64", "exe_b64"},
              "open": {"path_b64", "full_path_b64"},
              "tp": {"comm_b64"}, "tcp": set()}[command]
    assert wanted <= b64, f"the workload should have produced {wanted - b64}"
    for e in events:
        for k in b64 & set(e):
            raw = e[k]
            assert all(base64.b64decode(x) for x in (raw if isinstance(raw, list) else [raw]))


# --- synthetic records with the probes' real layouts ---------------------------

_SMALL = (0, 1, 2, 3, 4, 7, 8, 64, 128, 255, 256, 512, 1024, 2048, 4096, 0xFFFF)
_NEGATIVE = (-1, -2, -13, -100)


def _fuzz_records(dtype, n, rng):
    """n records of this layout: small integers (flag words fully set
    included), negative ones where signed, bytes with NULs and 0xff."""
    raw = np.zeros(n, dtype=dtype)
    for name in dtype.names:
        ftype = dtype.fields[name][0]
        base = ftype.base
        if base.kind == "S":
            alphabet = np.frombuffer(b"ab/\xff\x00.c", dtype="u1")
            buf = rng.choice(alphabet, size=(n, base.itemsize * int(np.prod(ftype.shape or (1,)))))
            raw[name] = np.frombuffer(buf.astype("u1").tobytes(), dtype=ftype.base).reshape(
                raw[name].shape)
        elif base.kind in "iu":
            choices = [v for v in _SMALL if v < 2 ** (8 * base.itemsize - (base.kind == "i"))]
            if base.kind == "i":
                choices += list(_NEGATIVE)
            raw[name] = rng.choice(np.array(choices, dtype="i8"), size=raw[name].shape).astype(base)
    return raw


@pytest.mark.parametrize("command", docs.probe_commands())
def test_members_of_synthetic_records_are_documented(command, kernel_ok):
    from rbtrace.bpf import LoadedProbe
    from rbtrace.probes import registry
    cmd = docs.cli.commands[command]
    # A command that takes a probe file is given an example; tp, tracepoints
    # with every kind of field (__data_loc strings and arrays, char and
    # integer arrays, pointers, syscall arguments stored wide).
    arguments = {"run": [os.path.join(REPO, "examples", "kill.bpf.c")],
                 "tp": ["sched:sched_process_fork", "syscalls:sys_enter_openat",
                        "sched:sched_switch", "dma:dma_map_sg", "ipi:ipi_send_cpumask",
                        "ras:non_standard_event", "raw_syscalls:sys_enter",
                        "sock:inet_sock_set_state"]}.get(command, [])
    ctx = cmd.make_context(command, list(arguments), parent=docs._root_context())
    opts = dict(ctx.params)
    for p in docs.command_params(cmd, command):
        if p.is_flag and p.name not in ("help", "debug", "failed"):
            opts[p.name] = True            # --full-path and the like: every member
    opts["filters_text"] = ""
    probe = registry()[command](opts)
    loaded = LoadedProbe(probe.source_path(), {**probe.cflags(), "RING_PAGES": 1},
                         probe.event_structs)
    try:
        event_types = list(loaded.event_types)
    finally:
        loaded.close()
    rng = np.random.default_rng(8)
    seen = set()
    for et in event_types:
        records = _fuzz_records(et.dtype, 4000, rng)
        data = records.tobytes()
        view = np.frombuffer(data, dtype=et.dtype)
        offsets = np.arange(len(view), dtype="i8") * et.dtype.itemsize
        for e in probe.decode(et, view, offsets, memoryview(data)):
            seen.update(e)
    documented = _documented(command)[command]
    assert seen - documented == set(), sorted(seen - documented)
    # ... and reach every member the page lists: the page has none the
    # decoder can no longer emit.
    assert documented - seen == set(), sorted(documented - seen)
