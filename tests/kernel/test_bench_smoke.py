"""`make bench` runs end to end: the benchmark driver on a tiny storm.

benchmarks/run.py --smoke runs every variant (rbtrace, both BCC baselines,
bpftrace, strace), the latency pass and the extras, each on a storm of a
few thousand opens.  The numbers mean nothing here; what is checked is that
every row is there and its accounting holds: each traced variant saw
exactly the storm's opens (plus the loader's), and delivered + dropped ==
seen.  benchmarks/startup.py runs one pair per variant, and its fields are
checked for sane values, not for speed.  A baseline that crashes (as
bcc_baseline.py did when LoadedProbe.counters() grew a fourth counter)
fails this test.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import run as bench  # noqa: E402  (the driver: its variant list)
import startup  # noqa: E402  (start-up against bpftrace: its variants)

TRACED = [v for v in bench.VARIANTS if v != "untraced"]
# The latency pass skips these: nothing to time, or (trace) not a storm of
# one kind.
LATENCY = [v for v in bench.VARIANTS if v not in ("untraced", "rbtrace-nomatch", "rbtrace-trace")]


def _check_row(row, loader_opens, where):
    name = row["variant"]
    assert "error" not in row, (where, row)
    assert row["storm"]["n"] == row["opens"], (where, row["storm"])
    if name == "untraced":
        assert row["ns_per_open"] > 0
        return
    # rbtrace exits 130 on SIGINT, as documented; the others 0.
    assert row["exit"] == (130 if name.startswith("rbtrace") else 0), (where, name, row["exit"])
    seen = 0 if name == "rbtrace-nomatch" else row["storm"]["n"] + loader_opens
    if name == "rbtrace-trace":
        seen += 1           # the storm's own exec, in the same ring
    assert row["seen"] == seen, (where, name, row["seen"], seen)
    assert row["delivered"] + row["dropped"] == row["seen"], (where, name, row)
    if name.startswith("bcc-"):
        d = row["detail"]
        # Everything the probe submitted came out: drained after the detach.
        assert d["submitted"] == d["delivered"] + d["perf_lost"], (where, d)
        assert d["transport"] == name.split("-")[1]
    if name == "bpftrace":
        # bpftrace's own lost_events records are a part of what never came
        # out (not always all of it: seen 14,123 missing with 14,101 reported
        # lost, on a loaded machine), never more.
        assert 0 <= row["bpftrace_lost_events"] <= row["dropped"], (where, row)
    if name == "strace":
        assert row["dropped"] == 0


def test_make_bench_runs_every_row(tmp_path, kernel_ok):
    results = tmp_path / "results"
    # --against HEAD: the rbtrace rows run again by the code of a git
    # revision (`make bench BENCH_BASE=REV`), here the checkout's own.
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--smoke",
                        "--against", "HEAD", "--results", str(results)], cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
    said = [ln for ln in p.stderr.splitlines() if "waiting:" not in ln and "warning:" not in ln]
    assert p.returncode == 0, "\n".join(said[-40:])
    assert "Traceback" not in p.stderr, "\n".join(said[-40:])
    with open(results / "latest.json") as f:
        result = json.load(f)
    assert "error" not in result, result.get("error")
    assert result["options"]["smoke"] is True
    loader_opens = result["loader_opens"]
    assert loader_opens >= 1

    assert len(result["rounds"]) == 1
    rnd = result["rounds"][0]
    twins = [v + bench.AGAINST for v in ("rbtrace-json", "rbtrace-table")]
    assert [v for v in rnd if v not in twins] == list(bench.VARIANTS)
    assert [v for v in rnd if v in twins] == twins
    assert list(rnd).index(twins[0]) == list(rnd).index("rbtrace-json") + 1
    for row in rnd.values():
        _check_row(row, loader_opens, "main")
    for v in ("rbtrace-json", "rbtrace-table"):
        assert re.search(rf"^{v} against HEAD: consumer CPU ns/event this/REV \d+/\d+; "
                         rf"median ratio [0-9.]+ over 1 pair", p.stdout, re.M), p.stdout
    assert rnd["strace"]["opens"] == result["options"]["strace_opens"]
    assert rnd["rbtrace-json"]["opens"] == result["options"]["opens"]

    assert [r["variant"] for r in result["latency"]] == LATENCY
    for row in result["latency"]:
        _check_row(row, loader_opens, "latency")
        assert row["opens"] == result["options"]["latency_opens"]
        # Every tracer's output went through a pipe or pty: timed.
        assert row["latency"]["samples"] >= 1, row["variant"]

    extras = result["extras"]
    assert [s["probe"] for s in extras["startup"]] == ["exec", "open"]
    assert all(s["runs"] == 1 and s["min_s"] > 0 for s in extras["startup"])
    [sustain] = extras["sustain"]
    assert sustain["seen"] == sustain["opens"] + loader_opens
    assert sustain["delivered"] + sustain["dropped"] == sustain["seen"]

    # The printed report: one row per variant in the main table, the
    # extras' tables, and the targets computed from them.
    # (run.py's own tables: startup.py's, further down, name bpftrace too.)
    rows = re.findall(r"^\| ([a-z-]+)[ (|]", result["tables_markdown"], re.M)
    assert [r for r in rows if r in bench.VARIANTS] == list(bench.VARIANTS), p.stdout
    assert "| rbtrace exec --json |" in p.stdout and "| rbtrace open --json |" in p.stdout
    for target in ("(a) rbtrace-json", "(b) rbtrace-json", "(c) rbtrace-json"):
        assert target in p.stdout, p.stdout
    # (d): trace exec,open against open, the round's two rows side by side.
    t, j = rnd["rbtrace-trace"], rnd["rbtrace-json"]
    assert re.search(rf"^\(d\) rbtrace-trace \(trace exec,open\) vs rbtrace-json \(open\): "
                     rf"delivered {t['delivered']:,} of {t['storm']['n'] + loader_opens + 1:,} .*"
                     rf"trace/open {t['cpu_ns_per_event']:.0f}/{j['cpu_ns_per_event']:.0f}, "
                     rf"median ratio [0-9.]+ over 1 round\(s\)", p.stdout, re.M), p.stdout
    assert p.stdout.startswith(result["tables_markdown"]), p.stdout
    # Then benchmarks/timing.py's table (reaction times, burst, soak), every
    # row, with exact accounting in the soak.
    timing = p.stdout[len(result["tables_markdown"]):]
    for row in ("| first event on a pipe |", "| exit after the reader goes |", "| burst of ",
                "| soak "):
        assert row in timing, timing
    assert "NOT EXACT" not in timing, timing

    # Then benchmarks/startup.py, one pair per variant: rbtrace and bpftrace
    # each reached a first event and were measured, and the ratios follow.
    with open(results / "startup-latest.json") as f:
        st = json.load(f)
    _check_startup(st, with_bpftrace=True)
    assert timing.endswith(st["tables_markdown"] + "\n"), timing
    for variant in startup.VARIANTS:
        probe, cache = startup.VARIANTS[variant][:2]
        assert f"| `rbtrace {probe} --json`, {cache} cache |" in st["tables_markdown"]


def _check_startup(st, with_bpftrace):
    assert "error" not in st, st.get("error")
    assert st["options"]["repeat"] == 1 and st["bpftrace"] is with_bpftrace
    variants = st["options"]["only"].split(",")
    assert [p["variant"] for p in st["pairs"]] == variants
    for pair in st["pairs"]:
        assert "error" not in pair, pair
        probe = startup.VARIANTS[pair["variant"]][0]
        rb, bt = pair["rbtrace"], pair["bpftrace"]
        for run in (rb, bt) if with_bpftrace else (rb,):
            assert run["first_event_s"] > 0 and run["cpu_s"] > 0, pair
            assert 0 < run["rss_kib"] <= run["hwm_kib"], pair
        # Stopped by SIGINT: rbtrace exits 130 (documented), bpftrace 0.
        assert rb["exit"] == 130, pair
        assert rb["ring_bytes"] > 0, pair
        first = json.loads(rb["first_event"])
        assert first["type"] == probe and first["pid"] > 0, first
        if with_bpftrace:
            assert bt["exit"] == 0, pair
            assert not bt["first_event"].startswith("Attaching"), pair
            assert pair["ratio"]["first_event"] == pytest.approx(
                rb["first_event_s"] / bt["first_event_s"], rel=0.01)
            assert pair["ratio"]["rss"] == pytest.approx(rb["rss_kib"] / bt["rss_kib"], rel=0.01)
        else:
            assert bt is None and "ratio" not in pair
        if probe == "exec":
            # The background loop's own exec came out whole (the first event
            # may be another process's on a shared machine).
            own = json.loads(rb["own_event"])
            assert (own["type"], own["filename"], own["argv"]) == \
                ("exec", "/bin/true", ["/bin/true", pair["marker"]]), own
            if with_bpftrace:
                assert bt["own_event"] == pair["marker"], pair


def test_startup_without_bpftrace(tmp_path, kernel_ok):
    """No bpftrace: one line on stderr says so, rbtrace is measured alone."""
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "startup.py"),
                        "--repeat", "1", "--quiet-wait", "0", "--only", "exec-warm",
                        "--bpftrace", str(tmp_path / "no-bpftrace"), "--results", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr
    said = [ln for ln in p.stderr.splitlines() if "not installed" in ln]
    assert len(said) == 1 and "no-bpftrace" in said[0], p.stderr
    with open(tmp_path / "startup-latest.json") as f:
        st = json.load(f)
    _check_startup(st, with_bpftrace=False)
    assert "rbtrace alone" in p.stdout and "rbtrace / bpftrace" not in p.stdout, p.stdout


def test_otlp_bench_runs_every_row(tmp_path, kernel_ok):
    """benchmarks/otlp.py (--otlp against --json, issue 18): each row runs
    and accounts for every open, and every event delivered is either sent
    to its receiver or counted dropped."""
    import otlp as otlp_bench     # benchmarks/otlp.py
    results = tmp_path / "results"
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "otlp.py"), "--smoke",
                        "--results", str(results)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    with open(results / "otlp-latest.json") as f:
        result = json.load(f)
    rows = result["rows"]
    assert [r["row"] for r in rows] == list(otlp_bench.ROWS)
    for r in rows:
        assert r["exit"] == 130, r
        assert r["seen"] == r["storm"]["n"] + result["loader_opens"], r
        assert r["delivered"] + r["dropped"] == r["seen"], r
        assert r["cpu_ns_per_event"] and r["cpu_ns_per_event"] > 0, r
        if "otlp" in r["row"]:
            assert r["otlp_sent"] + r["otlp_dropped"] == r["delivered"], r
            assert r["otlp_sent"] > 0 and r["receiver"]["requests"] >= 1, r
    for row in otlp_bench.ROWS:
        assert f"| {row} |" in p.stdout, p.stdout
