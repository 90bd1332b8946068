"""missed_by_kernel for real (issue 19, item 11): probe runs the kernel
skipped, from bpf_prog_info.recursion_misses.

A raw tracepoint program runs at most once per CPU at a time (the
kernel's per-program `active` counter in __bpf_trace_run); a nested run is
skipped and counted.  The probe below provokes exactly one nested run per
event: the syscall program calls bpf_trace_printk() for each event it
submits, which runs the raw tracepoint program on bpf_trace_printk, whose
own bpf_trace_printk() would run it again, nested: skipped, counted.  So
missed_by_kernel == the events delivered == the workload's own count.
"""
import json
import signal
import subprocess
import sys
import uuid

from conftest import REPO, parse_json_lines

PROBE = r"""
#include "rbtrace.h"
struct ppid_event {
    struct rb_header h;
    s32 ppid;
};
RBTRACE_EVENT(ppid_event);

RAW_TRACEPOINT_PROBE(bpf_trace_printk)
{
    bpf_trace_printk("nested\n");       /* this program again: skipped, counted */
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    struct ppid_event *e = rbtrace_reserve(ppid_event);
    if (!e)
        return 0;                       /* not our workload (--comm) */
    e->ppid = 0;
    rbtrace_submit(e);
    bpf_trace_printk("event\n");        /* runs the raw tracepoint program once */
    return 0;
}
"""

WORKLOAD = r"""
import os, sys
n = int(sys.argv[1])
for _ in range(n):
    os.getppid()
print(n)
"""


def test_skipped_runs_are_counted_reported_and_summarised(kernel_ok, tmp_path):
    probe = tmp_path / "nested.bpf.c"
    probe.write_text(PROBE)
    comm = f"rbm{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([sys.executable, "-m", "rbtrace", "run", "--json", "--comm", comm,
                          str(probe)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    assert json.loads(first)["type"] == "start", first
    # comm is the name of the file exec'd: python3 under a name of its own.
    (tmp_path / comm).symlink_to("/usr/bin/python3")
    w = subprocess.run([str(tmp_path / comm), "-c", WORKLOAD, "250"],
                       capture_output=True, check=True)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    r = parse_json_lines((first + out).decode())
    n = int(w.stdout)
    assert len(r.events) == n, (len(r.events), n)
    s = r.summary
    assert s["missed_by_kernel"] == n, s
    assert s["delivered"] == s["submitted"] == s["seen"] == n and s["dropped"] == 0, s
    assert sum(x["missed_by_kernel"] for x in r.lost) == n, r.lost
    assert r.lost[-1]["total_missed_by_kernel"] == n
    assert f", {n} probe runs skipped by the kernel (events may be lost)" in err.decode()
