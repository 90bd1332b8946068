"""A probe of one's own that discards records: rbtrace skips them, counts
them in the summary's `discarded`, and the gaps they leave in seq are
exactly those (ringbuf.py's discard branch, end to end)."""
import signal
import sys

from conftest import parse_json_lines, run_cli

PROBE = """#include "rbtrace.h"
struct ev { struct rb_header h; s32 sig; };
RBTRACE_EVENT(ev);
TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    struct ev *e = rbtrace_reserve(ev);
    if (!e)
        return 0;
    e->sig = args->sig;
    if (args->sig == 0) {              /* decided too late: discard it */
        events.ringbuf_discard(e, 0);
        return 0;
    }
    rbtrace_submit(e);
    return 0;
}
"""

# kill(self, 0) probes only; SIGURG is ignored by default.
WORK = ("import os, signal\n"
        "for sig in (0, signal.SIGURG, 0, 0, signal.SIGURG, 0):\n"
        "    os.kill(os.getpid(), sig)\n")


def test_discarded_records_are_counted_and_are_the_seq_gaps(kernel_ok, tmp_path):
    path = tmp_path / "discard.bpf.c"
    path.write_text(PROBE)
    p = run_cli("run", str(path), "--json", "--", sys.executable, "-c", WORK)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    r = parse_json_lines(p.stdout.decode())
    assert [e["args"]["sig"] for e in r.events] == [signal.SIGURG, signal.SIGURG]
    s = r.summary
    assert s["discarded"] == 4
    assert s["delivered"] == s["submitted"] == 2 and s["dropped"] == 0
    # Six records took numbers 0..5; the delivered ones are the 2nd and 5th.
    assert [e["seq"] for e in r.events] == [1, 4]
    assert "2 events delivered, 0 dropped, 4 records discarded by the probe" in err, err
