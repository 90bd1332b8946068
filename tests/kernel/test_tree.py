"""The live table's process view (key t), driven in tmux like a person
would: `rbtrace trace exec,open,exit --pid P --children` on a shell
script whose children exit with known codes, their real pids read from
the files they wrote, then expand, collapse and search for an event
more than 10,000 events back.

(With `-- CMD` the terminal is CMD's and rbtrace prints plain lines, so
the table follows a running script, held on a fifo until traced.)"""
import os
import re
import subprocess
import time
import uuid

import pytest

from test_table import _cells, _start_table
from tmuxterm import tmux as _tmux, tree_rows as _rows, wait_for as _wait_for

OPENS = 10_500

SCRIPT = """
read x < go
sh -c 'echo $$ > pid-exit3; exit 3'
sh -c 'echo $$ > pid-kill; kill -KILL $$'
sh -c 'echo $$ > pid-true; exec /bin/true'
: < {marker}
i=0
while [ $i -lt {opens} ]; do : < /dev/null; i=$((i+1)); done
echo done > ready
read x < end
exit 5
"""


def _release(path):
    with open(path, "w") as f:
        f.write("go\n")


@pytest.mark.parametrize("width, height", [(80, 24), (120, 40)])
def test_tree_view_pids_exit_codes_expand_collapse_and_search(tmux_session, tmp_path, width,
                                                              height):
    name = tmux_session
    d = tmp_path
    os.mkfifo(d / "go")
    os.mkfifo(d / "end")
    marker = "marker-" + uuid.uuid4().hex[:10]
    (d / marker).write_text("")
    work = subprocess.Popen(["sh", "-c", SCRIPT.format(marker=marker, opens=OPENS)], cwd=d,
                            stderr=subprocess.DEVNULL)
    try:
        status, errfile = _start_table(name, d, width=width, height=height,
                                       args=("trace", "exec,open,exit", "--pid", str(work.pid),
                                             "--children"))
        _release(d / "go")
        deadline = time.monotonic() + 30
        while not (d / "ready").exists():
            assert time.monotonic() < deadline, "the workload did not finish its opens"
            time.sleep(0.1)
        pids = {k: int((d / f"pid-{k}").read_text()) for k in ("exit3", "kill", "true")}
        # Everything traced is on screen: the footer's count stops at >= OPENS.
        _wait_for(name, lambda s: (m := re.search(r"events (\d+) ", s)) and int(m.group(1)) > OPENS)

        _tmux("send-keys", "-t", name, "t")
        screen = _wait_for(name, lambda s: "t log" in s and all(
            str(p) in s for p in pids.values()))
        lines = screen.splitlines()
        assert len(lines) <= height and all(_cells(ln) <= width - 1 for ln in lines), screen
        assert lines[0].split()[:3] == ["PID", "STATE", "LIFE"], screen
        rows = _rows(screen)
        # The script's own shell: traced from before it exec'd, so [sh]; running.
        assert rows[work.pid].startswith("running") and rows[work.pid].endswith("[sh]"), rows
        assert re.match(r"exit 3 .*├─sh -c 'echo \$\$ > pid-exit3; exit 3'$", rows[pids["exit3"]])
        assert re.match(r"SIGKILL .*├─sh -c 'echo \$\$ > pid-kill; kill -KILL \$\$'$",
                        rows[pids["kill"]]), rows
        assert re.match(r"exit 0 .*└─/bin/true$", rows[pids["true"]]), rows
        # OPEN counts: the script's shell opened the marker and /dev/null OPENS times.
        root = rows[work.pid].split()
        assert int(root[2]) >= OPENS + 1, rows

        # Select the first child (Home: the script's shell, then down) and expand it.
        _tmux("send-keys", "-t", name, "Home", "j", "Enter")
        screen = _wait_for(name, lambda s: "· " in s and " exit " in s)
        events = [ln for ln in screen.splitlines() if "· " in ln]
        kinds = [re.search(r"\d\d:\d\d:\d\d\.\d{3} (\w+) ", ln).group(1) for ln in events]
        assert kinds[0] == "exec" and kinds[-1] == "exit" and "open" in kinds, screen
        assert "code/signal=3" in events[-1], events[-1]
        assert " pid-exit3; exit 3" in events[0] or events[0].endswith("…"), events[0]
        assert all(_cells(ln) <= width - 1 for ln in screen.splitlines())
        # Down the events to its open of pid-exit3: its whole text, wrapped
        # above the footer, says where the shell wrote the pid.
        def pane(s):
            return "".join(s.split("─" * (width - 1), 1)[1].splitlines()[1:-2]) \
                if "─" * (width - 1) in s else None

        seen = [None]
        for _ in range(len(events)):
            _tmux("send-keys", "-t", name, "j")
            screen = _wait_for(name, lambda s: pane(s) not in seen)
            seen.append(pane(screen))
            if "path=AT_FDCWD:pid-exit3" in seen[-1]:
                assert "flags=WRONLY|CREAT|TRUNC path=AT_FDCWD:pid-exit3" in seen[-1], screen
                break
        else:
            raise AssertionError(f"no open event of pid-exit3 under its process: {seen}")
        assert len(seen) >= 3 and "exec" in seen[1]
        _tmux("send-keys", "-t", name, "Left")                   # collapse
        screen = _wait_for(name, lambda s: "· " not in s and "─" * 10 not in s)
        assert all(str(p) in screen for p in pids.values())

        # Search: the marker was opened before OPENS other opens.
        _tmux("send-keys", "-t", name, "/")
        _tmux("send-keys", "-t", name, "-l", marker)
        _tmux("send-keys", "-t", name, "Enter")
        screen = _wait_for(name, lambda s: f"search '{marker}'" in s)
        assert f"search '{marker}' 1/1" in screen, screen
        # Selected under the script's shell, expanded: its line, and its
        # whole text above the footer.
        hit = [ln for ln in screen.splitlines() if "· " in ln and "marker-" in ln]
        assert len(hit) == 1 and " open " in hit[0], screen
        assert f"open fd/err=3 flags=RDONLY path=AT_FDCWD:{marker}" in pane(screen), screen
        assert screen.count("path=/dev/null") >= height - 10, screen

        # The log's filter finds it too.
        _tmux("send-keys", "-t", name, "t", "/")
        _tmux("send-keys", "-t", name, "-l", marker)
        _tmux("send-keys", "-t", name, "Enter")
        screen = _wait_for(name, lambda s: f"filter '{marker}'" in s)
        # One row (its DETAILS are cut at 80 columns), the script's shell's open.
        rows = [ln for ln in screen.splitlines() if re.match(r"\d\d:\d\d:\d\d\.", ln)]
        assert len(rows) == 1 and re.search(rf"\s{work.pid}\s+sh\s+open\s", rows[0]), screen
        assert marker in rows[0] or rows[0].endswith("…")

        _release(d / "end")
        assert work.wait(timeout=30) == 5
        deadline = time.monotonic() + 30
        while not status.exists() or not status.read_text().strip():
            assert time.monotonic() < deadline, "rbtrace did not end with its process"
            time.sleep(0.2)
        assert status.read_text().strip() == "0"
        assert "Traceback" not in errfile.read_text()
    finally:
        if work.poll() is None:
            work.kill()
            work.wait()
