"""The spine of rbtrace on the real kernel: events, ppid from BTF offsets,
output modes, stopping, and errors that reach the user as one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, run_cli


def _proc_ppid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])


def _proc_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])


def _proc_cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def test_exec_events_match_proc_for_a_process_tree(rbtrace):
    """A parent forks three children that exec `sleep`; each event's pid,
    ppid (read through BTF offsets), uid, comm, filename and argv must
    match /proc while the children are alive."""
    # Every argument a valid interval, so that sleep keeps running (a hex
    # mark made it exit at once, and /proc then described zombies).
    mark = "0." + str(uuid.uuid4().int)[:15]
    t = rbtrace("exec", "--json")
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os,sys,time\n"
         "kids=[]\n"
         "for i in range(3):\n"
         "    pid=os.fork()\n"
         "    if pid==0:\n"
         f"        os.execv('/bin/sleep', ['sleep', '30', '{mark}', str(i)])\n"
         "    kids.append(pid)\n"
         "print(' '.join(map(str,kids)), flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        kids = [int(x) for x in parent.stdout.readline().split()]
        time.sleep(0.5)
        truth = {k: (_proc_ppid(k), _proc_uid(k), _proc_cmdline(k)) for k in kids}
        with open(f"/proc/{kids[0]}/comm") as f:
            comm = f.read().strip()
        r = t.stop()
    finally:
        for k in kids:
            os.kill(k, signal.SIGKILL)
        parent.kill()
        parent.wait()
    assert r.returncode == 130, r.stderr
    ours = [e for e in r.events if mark in e["argv"]]
    assert sorted(e["pid"] for e in ours) == sorted(kids)
    for e in ours:
        assert e["ppid"] == truth[e["pid"]][0] == parent.pid
        assert e["uid"] == truth[e["pid"]][1]
        assert e["tid"] == e["pid"]
        assert e["comm"] == comm == "sleep"
        assert e["filename"] == "/bin/sleep"
        # child i was forked i-th and given str(i); /proc says the same
        assert e["argv"] == ["sleep", "30", mark, str(kids.index(e["pid"]))] \
            == truth[e["pid"]][2]
        assert e["argc"] == 4 and e["args_truncated"] is False
        assert e["ret"] == 0 and e["errno"] is None
        assert e["syscall"] == "execve"
        assert e["type"] == "exec" and e["time"].endswith("Z")
    assert sorted(e["argv"][3] for e in ours) == ["0", "1", "2"]
    s = r.summary
    assert s["seen"] == s["delivered"] + s["dropped"]
    assert s["submitted"] == s["delivered"]


def test_failed_execs_report_errno(rbtrace, tmp_path):
    mark = uuid.uuid4().hex
    not_exec = tmp_path / "plain.txt"
    not_exec.write_text("hello\n")
    not_exec.chmod(0o644)
    t = rbtrace("exec", "--json", "--failed")
    for path in ("/nonexistent/" + mark, str(not_exec)):
        with pytest.raises(OSError):
            subprocess.run([path, mark])
    subprocess.run(["/bin/true", mark])          # succeeds: filtered out by --failed
    r = t.stop()
    ours = {e["filename"]: e for e in r.events if mark in e["argv"]}
    assert ours["/nonexistent/" + mark]["errno"] == "ENOENT"
    assert ours["/nonexistent/" + mark]["ret"] == -2
    assert ours[str(not_exec)]["errno"] == "EACCES"
    assert "/bin/true" not in ours
    assert all(e["ret"] < 0 for e in r.events)


def test_count_stops_after_exactly_n_events(rbtrace):
    t = rbtrace("exec", "--json", "--count", "3")
    for _ in range(20):
        subprocess.run(["/bin/true"])
        if t.proc.poll() is not None:
            break
    r = t.finish(timeout=30)
    assert r.returncode == 0, r.stderr
    assert len(r.events) == 3
    assert r.summary["stopped_by"] == "count"
    assert r.summary["delivered"] == 3


def test_duration_stops_and_summary_goes_to_stderr(kernel_ok):
    t0 = time.monotonic()
    p = run_cli("exec", "--json", "--duration", "1.5")
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "summary"
    assert lines[-1]["stopped_by"] == "duration"
    assert 1.5 <= lines[-1]["duration_s"] < took
    assert "events delivered" in p.stderr.decode()


def test_plain_lines_when_stdout_is_not_a_tty(rbtrace):
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "rbtrace", "exec", "--duration", "6"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    header = proc.stdout.readline().decode()       # printed once attached
    subprocess.run(["/bin/echo", mark, "two words"], stdout=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=30)
    assert header.split()[:3] == ["TIME", "PID", "PPID"]
    lines = [ln for ln in out.decode().splitlines() if mark in ln]
    assert len(lines) == 1
    assert f"/bin/echo /bin/echo {mark} 'two words'" in lines[0]
    assert "\x1b" not in out.decode()


def test_sigterm_drains_and_exits_143(rbtrace):
    mark = uuid.uuid4().hex
    t = rbtrace("exec", "--json")
    subprocess.run(["/bin/true", mark])
    r = t.stop(signal.SIGTERM)
    assert r.returncode == 143
    assert [e["argv"] for e in r.events if mark in e["argv"]] == [["/bin/true", mark]]
    assert r.summary["stopped_by"] == "SIGTERM"
    assert "Traceback" not in r.stderr


def _one_line_error(p, code):
    err = p.stderr.decode()
    assert p.returncode == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rbtrace: ") and "Traceback" not in err
    assert p.stdout == b""
    return err


def test_not_root_is_one_line(kernel_ok):
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", sys.executable, "-m", "rbtrace", "exec", "--json"],
                       cwd=REPO, capture_output=True, timeout=60)
    err = _one_line_error(p, 1)
    assert "CAP_BPF" in err and "root" in err


def test_bcc_missing_is_one_line(kernel_ok):
    p = subprocess.run([sys.executable, "-c",
                        "import sys; sys.modules['bcc'] = None\n"
                        "from rbtrace.cli import main; main(['exec', '--json', '-d', '1'])"],
                       cwd=REPO, capture_output=True, timeout=60)
    err = _one_line_error(p, 1)
    assert "python3-bpfcc" in err


def test_no_headers_is_one_line(kernel_ok, tmp_path):
    p = run_cli("exec", "--json", "-d", "1", env={"RBTRACE_KERNEL_HEADERS": str(tmp_path)})
    err = _one_line_error(p, 1)
    assert "RBTRACE_KERNEL_HEADERS" in err


def test_compile_failure_is_one_line_with_the_compiler_message(kernel_ok, tmp_path):
    probes = os.path.join(REPO, "probes")
    for name in os.listdir(probes):
        shutil.copy(os.path.join(probes, name), tmp_path / name)
    src = (tmp_path / "exec.bpf.c").read_text()
    broken_line = src.count("\n") + 1
    (tmp_path / "exec.bpf.c").write_text(src + "int broken(void) { return no_such_variable; }\n")
    p = run_cli("exec", "--json", "-d", "1", env={"RBTRACE_PROBES_DIR": str(tmp_path)})
    err = _one_line_error(p, 1)
    # The compiler's own message, pointing at the real file and line.
    assert "no_such_variable" in err and f"exec.bpf.c:{broken_line}:" in err


def test_tracefs_is_mounted_when_missing(kernel_ok):
    """rbtrace mounts debugfs/tracefs itself when it runs as root.  Run in a
    private mount namespace, so that unmounting there can't disturb any
    other tracer on the machine."""
    script = ("umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/debug; "
              "test ! -d /sys/kernel/debug/tracing/events || exit 90; "
              f"{sys.executable} -m rbtrace exec --json -d 0.5 >/dev/null || exit 91; "
              "test -d /sys/kernel/debug/tracing/events || exit 92")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       cwd=REPO, capture_output=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stderr.decode())
    assert os.path.isdir("/sys/kernel/debug/tracing/events")   # outside: untouched


def test_doctor_reports_each_check(kernel_ok):
    p = run_cli("doctor")
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    names = ["privileges", "kernel", "ring buffer", "BTF", "kernel headers", "tracefs", "BCC",
             "libbpf", "bpf_loop", "compile cache", "cgroup v2", "hook tracepoint", "hook raw_tracepoint", "hook kprobe", "hook uprobe", "hook fentry"]
    lines = out.splitlines()
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        status, rest = line.split(None, 1)
        assert rest.startswith(name), line
        assert status in ("ok", "missing", "no")
    status = {ln.split(None, 1)[1][:20].strip(): ln.split()[0] for ln in lines}
    assert status["hook tracepoint"] == "ok"      # rbtrace itself needs it
    # --cgroup, --container and container_id need the cgroup v2 mount,
    # wherever it is (/sys/fs/cgroup/unified on a hybrid host).
    v2 = [ln.split()[3] for ln in open("/proc/self/mountinfo") if " - cgroup2 " in ln]
    cg = next(ln for ln in lines if ln.split(None, 1)[1].startswith("cgroup v2"))
    assert (cg.split()[0] == "ok") == bool(v2) and (not v2 or v2[0] in cg), cg
    # Linux 6.18 here has it (5.17+), unless the run forces the fallback.
    assert status["bpf_loop"] == ("no" if os.environ.get("RBTRACE_NO_BPF_LOOP") == "1" else "ok")
    # kprobes load exactly when the kernel has the kprobe PMU.
    has_kprobes = os.path.exists("/sys/bus/event_source/devices/kprobe")
    assert (status["hook kprobe"] == "ok") == has_kprobes
