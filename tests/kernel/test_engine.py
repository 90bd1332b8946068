"""The streaming engine on the real kernel: exact loss accounting."""
import json
import os
import shutil
import subprocess
import sys
import uuid

from conftest import REPO, parse_json_lines


def test_overrun_small_ring_accounts_for_every_event(kernel_ok, tmp_path):
    """A reader that stalls (like a stuck `| jq`) makes rbtrace block on
    stdout; a 16 KiB ring then overflows.  Every exec the probe saw must be
    either delivered or counted as dropped, the drops must be reported in
    the stream, and the sequence numbers must show exactly those gaps."""
    n_execs = 600
    # A name no other process has: the count must be exact.
    comm = "ovr" + uuid.uuid4().hex[:12]
    program = tmp_path / comm
    shutil.copy("/bin/true", program)
    r_fd, w_fd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "rbtrace", "exec", "--json",
                             "--ring-size", "16K", "--comm", comm],
                            cwd=REPO, stdout=w_fd, stderr=subprocess.PIPE)
    os.close(w_fd)
    reader = os.fdopen(r_fd, "rb")
    first = json.loads(reader.readline())            # attached
    assert first["type"] == "start" and first["ring_bytes"] == 16384
    # Nobody reads now: the 64 KiB pipe fills, rbtrace blocks, the ring fills.
    for _ in range(n_execs):
        subprocess.run([program])
    proc.send_signal(2)
    rest = reader.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130
    r = parse_json_lines(rest.decode())
    s = r.summary
    assert s["seen"] == n_execs
    assert s["seen"] == s["delivered"] + s["dropped"]
    assert s["submitted"] == s["delivered"] == len(r.events)
    assert s["dropped"] > 0 and s["ringbuf_full"] == s["dropped"]
    assert sum(x["dropped"] for x in r.lost) == s["dropped"]
    seqs = sorted(e["seq"] for e in r.events)
    assert len(set(seqs)) == len(seqs)
    assert seqs[-1] < s["seen"]
    assert s["seen"] - len(seqs) == s["ringbuf_full"]      # the gaps are the drops
    assert f"{s['dropped']} dropped" in proc.stderr.read().decode()
