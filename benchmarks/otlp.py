#!/usr/bin/env python3
"""What --otlp costs rbtrace per event, against --json to /dev/null, in one run.

The workload is run.py's: benchmarks/storm.c's failing open() storm, named
rbstorm-bench, traced with `rbtrace open --comm rbstorm-bench`.  Three rows,
in turn, each a fresh rbtrace on a storm of the same size:

  json        --json, stdout to /dev/null (run.py's rbtrace-json row)
  otlp        --otlp URL alone, stdout to /dev/null: nothing is written
              there, every event goes to the receiver
  json+otlp   both: every event as a JSON line and as an OTLP record

The receiver is a process of its own (its CPU is not rbtrace's): an HTTP
server on 127.0.0.1 that reads each request, counts its bytes and answers
200 with an empty ExportLogsServiceResponse, without decoding it.  The
cost reported is rbtrace's own CPU (every thread: the sender's too) from
the storm's start to its exit, the final flush included, divided by the
events delivered; run.py's traced_run measures it as for its own rows.

  .venv/bin/python benchmarks/otlp.py [--opens N] [--rate R] [--repeat K]

Prints a markdown table and writes benchmarks/results/otlp-<time>.json.
"""
import argparse
import datetime
import http.server
import json
import os
import re
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench_run  # noqa: E402  (the storm, the traced run, the accounting)

ROWS = ("json", "otlp", "json+otlp")
_OTLP_LINE = re.compile(r"OTLP: (\d+) sent, (\d+) dropped")


def serve():
    """The receiver: print the port, serve until SIGTERM, then print
    {"requests", "bytes"} on stdout."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    reply = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
    counts = {"requests": 0, "bytes": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers["Content-Length"])
            self.rfile.read(n)
            counts["requests"] += 1
            counts["bytes"] += n
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print(json.dumps(counts), flush=True)


class Receiver:
    def __init__(self):
        self.proc = bench_run.spawn([sys.executable, os.path.abspath(__file__), "--serve"],
                                    stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def argv_for(bench, row, url):
    argv = bench.rbtrace + ["open", "--comm", bench_run.COMM]
    if row in ("json", "json+otlp"):
        argv.append("--json")
    if row in ("otlp", "json+otlp"):
        argv += ["--otlp", url, "--otlp-timeout", "30"]
    return argv


def measure(bench, row, n, rate):
    receiver = Receiver() if "otlp" in row else None
    try:
        window = bench_run.OthersWindow()
        facts = bench_run.traced_run(bench, argv_for(bench, row, receiver and receiver.url),
                                     n, rate, stdout="devnull", ready="maps")
    finally:
        got = receiver.close() if receiver else None
    out = {"row": row, "opens": n, "rate": rate, "exit": facts["exit"],
           "storm": facts["storm"], "consumer_cpu_ns": facts["cpu_ns"], **window.close()}
    out.update(bench_run.rbtrace_counts(facts))
    out["cpu_ns_per_event"] = (round(facts["cpu_ns"] / out["delivered"], 1)
                               if out["delivered"] and facts["cpu_ns"] is not None else None)
    if receiver is not None:
        m = _OTLP_LINE.search(facts["stderr"])
        if not m:
            raise bench_run.Failure(f"no OTLP counts from rbtrace: {facts['stderr'][-300:]!r}")
        out["otlp_sent"], out["otlp_dropped"] = int(m.group(1)), int(m.group(2))
        out["receiver"] = got
        out["gzip_bytes_per_event"] = (round(got["bytes"] / out["otlp_sent"], 2)
                                       if out["otlp_sent"] else None)
    return out


def table(rows):
    lines = ["| row | opens | delivered | dropped | OTLP sent | OTLP dropped | rbtrace CPU ms "
             "| CPU ns/event | vs json | gzip B/event |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {}
    for r in rows:
        if r["row"] == "json" and r.get("cpu_ns_per_event"):
            base.setdefault(r["round"], r["cpu_ns_per_event"])
    for r in rows:
        b = base.get(r["round"])
        ratio = f"{r['cpu_ns_per_event'] / b:.2f}x" if b and r.get("cpu_ns_per_event") else ""
        lines.append(f"| {r['row']} | {r['opens']} | {r['delivered']} | {r['dropped']} "
                     f"| {r.get('otlp_sent', '')} | {r.get('otlp_dropped', '')} "
                     f"| {r['consumer_cpu_ns'] / 1e6:.0f} | {r['cpu_ns_per_event']:.0f} | {ratio} "
                     f"| {r.get('gzip_bytes_per_event') or ''} |")
    return "\n".join(lines)


def main():
    if sys.argv[1:] == ["--serve"]:
        serve()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--opens", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=0, help="pace the storm (0: flat out)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", default=",".join(ROWS))
    ap.add_argument("--results", default=bench_run.RESULTS)
    ap.add_argument("--quiet-pct", type=float, default=10.0)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--smoke", action="store_true",
                    help="20,000 opens a row, no waiting for a quiet machine: checks that "
                         "every row runs (tests/kernel/test_bench_smoke.py), measures nothing")
    args = ap.parse_args()
    if args.smoke:
        args.opens, args.quiet_wait, args.quiet_pct = 20_000, 0.0, 100.0
        # A storm of this run's own name, as run.py --smoke: another run's
        # storm is not counted here.
        bench_run.COMM = f"rbsmoke-{os.getpid() % 10**7}"
    if os.geteuid() != 0:
        print("benchmarks/otlp.py needs root", file=sys.stderr)
        return 1
    rows_wanted = [r for r in args.only.split(",") if r]
    for r in rows_wanted:
        if r not in ROWS:
            print(f"no row {r!r}: one of {', '.join(ROWS)}", file=sys.stderr)
            return 2
    bench = bench_run.Bench(argparse.Namespace(against=None))
    loader_opens = bench.loader_opens
    rows = []
    try:
        for k in range(args.repeat):
            for row in rows_wanted:
                busy, hogs = bench_run.quiet_machine(args)
                bench_run.log(f"round {k + 1}: {row} ({args.opens} opens)")
                r = measure(bench, row, args.opens, args.rate)
                r.update(round=k, background_cpu_pct=busy, background_hogs=hogs)
                rows.append(r)
    finally:
        bench_run.kill_all()
        bench.close()
    print(table(rows))
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(args.results, f"otlp-{stamp}.json")
    with open(path, "w") as f:
        json.dump({"command": sys.argv, "when": stamp, "host": os.uname().nodename,
                   "code": bench_run.code_state(), "loader_opens": loader_opens,
                   "rows": rows}, f, indent=1)
    with open(os.path.join(args.results, "otlp-latest.json"), "w") as f:
        json.dump({"path": path, "rows": rows, "loader_opens": loader_opens}, f, indent=1)
    bench_run.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
