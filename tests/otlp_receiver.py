"""A local OTLP/HTTP logs receiver for the tests of --otlp (issue 18).

It listens on 127.0.0.1 (a free port), runs in a thread of the test, and
decodes every request as a collector would: gunzip (Content-Encoding:
gzip), then the official ExportLogsServiceRequest.  What it keeps: the
records, each as (time_unix_nano, body, {attribute: python value}), the
resource attributes, and the requests.  `answer` decides the status of
each request (200 by default); a request answered otherwise is not kept,
as a collector that refused it would not have it.
"""
import gzip
import http.server
import threading
import time


def value_of(any_value):
    """A python value for an OTLP AnyValue."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    v = getattr(any_value, kind)
    if kind == "array_value":
        return [value_of(x) for x in v.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.values}
    return v


class Receiver:
    def __init__(self, answer=None):
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        self.Request = logs_service_pb2.ExportLogsServiceRequest
        self.Response = logs_service_pb2.ExportLogsServiceResponse
        self.answer = answer or (lambda receiver: 200)
        self.retry_after = "0.2"     # the Retry-After of a 429 or 503
        self.times = []              # when each request came (monotonic)
        self.records = []
        self.resources = []
        self.requests = []          # (path, headers dict, status answered)
        self.refused = 0            # requests answered with an error
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.answer(receiver)
                with receiver.lock:
                    receiver.times.append(time.monotonic())
                    receiver.requests.append((self.path, dict(self.headers), status))
                    if status == 200:
                        receiver._keep(self.headers, body)
                    else:
                        receiver.refused += 1
                reply = receiver.Response().SerializeToString() if status == 200 else b""
                self.send_response(status)
                if status in (429, 503):
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _keep(self, headers, body):
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = self.Request.FromString(body)
        for rl in request.resource_logs:
            self.resources.append({kv.key: value_of(kv.value) for kv in rl.resource.attributes})
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    self.records.append((r.time_unix_nano, value_of(r.body),
                                         {kv.key: value_of(kv.value) for kv in r.attributes}))

    def events(self, body=None):
        with self.lock:
            return [attrs for _, b, attrs in self.records if body is None or b == body]

    def wait_for(self, n, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.records) >= n:
                return True
            time.sleep(0.02)
        return False

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
