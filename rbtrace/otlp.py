"""OTLP export: every event as an OpenTelemetry log record (issue 18, item 3).

`--otlp URL` sends the events, besides whatever the run writes, to an
OpenTelemetry Collector (or anything that speaks OTLP/HTTP with protobuf)
at URL/v1/logs.  The messages are the official ones, from the
opentelemetry-proto package: nothing here writes protobuf by hand.

One event, one log record:
  time_unix_nano           the event's time: ts_ns (CLOCK_MONOTONIC) plus
                           the run's clock offset, exactly JSON's `time`
  observed_time_unix_nano  when rbtrace read it off the ring
  body                     the kind ("exec", "open"...)
  attributes               the event's members, named by the OpenTelemetry
                           semantic conventions where one fits (SEMCONV),
                           rbtrace.<member> for the others; null members
                           are left out
and the resource says where they come from (host.name, os.version...).

Cost.  A storm repeats one event but for seq and ts_ns, so the rest of a
record (its attributes and body) is built once as a LogRecord, serialized,
and kept by the bytes of its members (orjson).  The rest (time, observed
time, rbtrace.seq) is set on one scratch LogRecord and serialized; the
two byte strings are one LogRecord, as protobuf merges concatenated
messages, and the batch's next record is parsed from them
(MergeFromString).  Both were serialized by the official classes.

Delivery.  The main thread builds batches (up to BATCH_EVENTS records,
or what came in BATCH_SECONDS) and gzips them; one background thread
POSTs them in order, retrying 429, 502, 503, 504 and connection errors with
exponential backoff (Retry-After when the collector gives one).  Batches
wait in a bounded queue (QUEUE_EVENTS events, QUEUE_BYTES bytes): a batch
that does not fit is dropped and counted, like a full ring's events.  At
the end the queue is flushed for at most `timeout` seconds; whatever was
not acknowledged by then is counted dropped too, so that always
    events given == sent + dropped.
"""
import collections
import http.client
import os
import socket
import threading
import time
import urllib.parse
import zlib

from rbtrace import __version__, notice

BATCH_EVENTS = 8192        # records per request (about 3 MB of protobuf at most)
BATCH_SECONDS = 1.0        # a batch not full is sent after this long
QUEUE_EVENTS = 1 << 20     # events waiting to be sent, at most
QUEUE_BYTES = 64 << 20     # and their gzipped bytes, at most
RETRY_FIRST = 0.1          # seconds before the first retry, doubled each time
RETRY_MAX = 5.0            # the longest wait between two tries
RETRY_AFTER_MAX = 30.0     # a collector's Retry-After is followed up to this
REQUEST_TIMEOUT = 10.0     # one request's socket timeout, seconds
RETRYABLE = (429, 502, 503, 504)
TEMPLATES_MAX = 4096       # kept records, per run; the cache restarts beyond

# The header's members (every kind's) -> OpenTelemetry semantic-convention
# attributes; uid is user.id, which the conventions type as a string.  A
# kind names its own members' in its spec (Spec.otlp); a member named in
# neither becomes rbtrace.<member>.
SEMCONV = {
    "pid": "process.pid",
    "ppid": "process.parent_pid",
    "tid": "thread.id",
    "comm": "process.command",
    "uid": "user.id",
    "user": "user.name",
    "container_id": "container.id",
    "pod_uid": "k8s.pod.uid",
    "errno": "error.type",
}
# Members that differ from one event to the next of a storm: never part of
# a kept template.  time and ts_ns are the record's time_unix_nano; seq is
# set on each record as rbtrace.seq.
PER_EVENT = ("seq", "time", "ts_ns")
INT64_MAX = (1 << 63) - 1


def kind_attributes(kind: str) -> dict:
    """A kind's own attribute names (Spec.otlp); {} for a type that is no kind."""
    from rbtrace import spec
    if kind not in spec.KINDS:
        return {}
    return spec.load(kind).otlp


def attribute_items(event: dict, kind=None) -> list:
    """(name, value) of the attributes of an event (a decoded event dict,
    as --json writes it), in the event's order, without seq, time and ts_ns
    (set per record) and without null members.  `kind`: the event's kind's
    attribute names (kind_attributes), looked up when not given."""
    if kind is None:
        kind = kind_attributes(event.get("type"))
    items = []
    for name, value in event.items():
        if value is None or name in PER_EVENT:
            continue
        attribute = kind.get(name) or SEMCONV.get(name) or "rbtrace." + name
        if isinstance(attribute, tuple):
            attribute, text = attribute
            value = text.format(value)
        elif name == "uid":
            value = str(value)
        items.append((attribute, value))
    items.extend(kind.get("*", ()))
    return items


def parse_url(url: str) -> tuple:
    """(scheme, host, port, path) of the logs endpoint: URL/v1/logs, or
    URL itself when it already ends with /v1/logs.  ValueError when URL is
    not an http:// or https:// URL with a host."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as e:
        raise ValueError(f"'{url}' is not a URL ({e})") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"'{url}' is not an http:// or https:// URL with a host "
                         f"(e.g. http://localhost:4318)")
    if u.query or u.fragment:
        raise ValueError(f"'{url}': a query or fragment has no place in an OTLP endpoint")
    path = u.path.rstrip("/")
    if not path.endswith("/v1/logs"):
        path += "/v1/logs"
    return u.scheme, u.hostname, port or (443 if u.scheme == "https" else 80), path


def resource_attributes(probe_name: str) -> list:
    """(name, value) of the resource: where the events come from."""
    from rbtrace import fields
    uname = os.uname()
    items = [("service.name", "rbtrace"), ("service.version", __version__),
             ("host.name", socket.gethostname()), ("os.type", "linux"),
             ("os.version", uname.release), ("host.arch", uname.machine),
             ("rbtrace.probe", probe_name)]
    try:
        items.append(("rbtrace.boot_id", fields.boot_id()))
    except OSError:
        pass
    return items


class _Proto:
    """The opentelemetry-proto classes, imported when --otlp is given only."""

    def __init__(self):
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.logs.v1 import logs_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        self.Request = logs_service_pb2.ExportLogsServiceRequest
        self.Response = logs_service_pb2.ExportLogsServiceResponse
        self.LogRecord = logs_pb2.LogRecord
        self.KeyValue = common_pb2.KeyValue
        self.AnyValue = common_pb2.AnyValue
        self.ArrayValue = common_pb2.ArrayValue
        self.KeyValueList = common_pb2.KeyValueList
        self.Resource = resource_pb2.Resource
        self.Scope = common_pb2.InstrumentationScope

    def value(self, v):
        """An AnyValue for a JSON value: an integer beyond int64 (a u64
        tracepoint field) as a string, lists as arrays, objects as kvlists."""
        AnyValue = self.AnyValue
        if isinstance(v, bool):
            return AnyValue(bool_value=v)
        if isinstance(v, int):
            if -INT64_MAX - 1 <= v <= INT64_MAX:
                return AnyValue(int_value=v)
            return AnyValue(string_value=str(v))
        if isinstance(v, float):
            return AnyValue(double_value=v)
        if isinstance(v, str):
            return AnyValue(string_value=v)
        if isinstance(v, (bytes, bytearray)):
            return AnyValue(bytes_value=bytes(v))
        if isinstance(v, (list, tuple)):
            return AnyValue(array_value=self.ArrayValue(values=[self.value(x) for x in v]))
        if isinstance(v, dict):
            return AnyValue(kvlist_value=self.KeyValueList(values=self.attributes(v.items())))
        if v is None:
            return AnyValue()
        return AnyValue(string_value=str(v))

    def attributes(self, items):
        return [self.KeyValue(key=k, value=self.value(v)) for k, v in items]


class Exporter:
    """Sends events to an OTLP/HTTP endpoint.  add() and tick() are called
    by the session's thread, close() once at the end; the counters sent,
    dropped and given are read at any time."""

    def __init__(self, url, probe_name="rbtrace", timeout=5.0, say=notice.say,
                 batch_events=BATCH_EVENTS, batch_seconds=BATCH_SECONDS,
                 queue_events=QUEUE_EVENTS, queue_bytes=QUEUE_BYTES):
        self.url = url
        self.scheme, self.host, self.port, self.path = parse_url(url)
        self.timeout = timeout
        self.say = say
        self.batch_events = batch_events
        self.batch_seconds = batch_seconds
        self.queue_events = queue_events
        self.queue_bytes = queue_bytes
        self.pb = pb = _Proto()
        self._resource = pb.Resource(attributes=pb.attributes(resource_attributes(probe_name)))
        self._scope = pb.Scope(name="rbtrace", version=__version__)
        self._templates = {}
        scratch = pb.LogRecord()
        self._scratch = (scratch, scratch.attributes.add(key="rbtrace.seq").value)
        self.given = 0           # events handed to add()
        self.sent = 0            # events the collector acknowledged
        self.dropped = 0         # events given up on, for whatever reason
        self.rejected = 0        # of those, refused by the collector
        self._lock = threading.Condition()
        self._queue = collections.deque()      # (gzipped request, events)
        self._queued_events = self._queued_bytes = 0
        self._in_flight = 0      # events of the request being sent
        self._closing = None     # the flush deadline (monotonic), once close() began
        self._finished = False   # close() has counted what is left: no change after
        self._said = set()
        self._new_batch()
        self._thread = threading.Thread(target=self._send_loop, name="rbtrace-otlp", daemon=True)
        self._thread.start()

    # --- the session's side ---------------------------------------------------

    def _new_batch(self):
        pb = self.pb
        self._request = pb.Request()
        resource_logs = self._request.resource_logs.add()
        resource_logs.resource.CopyFrom(self._resource)
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.CopyFrom(self._scope)
        self._records = scope_logs.log_records
        self._batch_born = None

    def _template(self, event, key):
        """The serialized LogRecord of an event's members but seq, time
        and ts_ns, kept by `key`."""
        pb = self.pb
        record = pb.LogRecord(body=pb.AnyValue(string_value=event.get("type") or ""),
                              attributes=pb.attributes(attribute_items(event)))
        data = record.SerializeToString()
        if len(self._templates) >= TEMPLATES_MAX:
            self._templates.clear()
        self._templates[key] = data
        return data

    def add(self, events, offset_ns, lines=None):
        """Add decoded events (dicts, as --json writes them) to the batch;
        `offset_ns` turns their ts_ns (CLOCK_MONOTONIC) into Unix time.
        `lines`: their JSON (orjson.dumps of each), when already made."""
        import orjson
        if not events:
            return
        lines = iter(lines) if lines is not None else None
        dumps = orjson.dumps
        templates = self._templates
        records = self._records
        template = self._template
        # What differs from one record of a storm to the next, set on one
        # scratch LogRecord and serialized: a record is the kept bytes and
        # these, one message by protobuf's rule for concatenated messages.
        scratch, seq_value = self._scratch
        scratch.observed_time_unix_nano = time.time_ns()
        tail = scratch.SerializeToString
        self.given += len(events)
        room = self.batch_events - len(records)
        if self._batch_born is None:
            self._batch_born = time.monotonic()
        for e in events:
            # The template's key: the event's JSON after ts_ns, the last of
            # the members that change from one event of a storm to the next
            # (every event starts type, seq, time, ts_ns: Codec.heads).
            line = dumps(e) if lines is None else next(lines)
            key = (e["type"], line[line.find(b",", line.find(b'"ts_ns":')):])
            data = templates.get(key) or template(e, key)
            scratch.time_unix_nano = e["ts_ns"] + offset_ns
            seq_value.int_value = e["seq"]
            records.add().MergeFromString(data + tail())
            room -= 1
            if room == 0:
                self._seal()
                records = self._records
                room = self.batch_events
                self._batch_born = time.monotonic()

    def tick(self):
        """Send the batch once it is BATCH_SECONDS old (called about ten
        times a second by the session)."""
        if len(self._records) and time.monotonic() - self._batch_born >= self.batch_seconds:
            self._seal()

    def _seal(self):
        """Serialize and gzip the batch, and queue it, or drop it when the
        queue is full."""
        n = len(self._records)
        if not n:
            return
        body = self._request.SerializeToString()
        self._new_batch()
        z = zlib.compressobj(1, zlib.DEFLATED, 31)     # 31: the gzip format
        data = z.compress(body) + z.flush()
        with self._lock:
            if (self._queued_events + n > self.queue_events
                    or self._queued_bytes + len(data) > self.queue_bytes):
                self.dropped += n
                full = True
            else:
                self._queue.append((data, n))
                self._queued_events += n
                self._queued_bytes += len(data)
                self._lock.notify()
                full = False
        if full:
            self._say_once("queue", f"OTLP: the queue of events for {self.url} is full "
                                    f"({self._why()}): dropping events, counted as otlp_dropped")

    def _why(self):
        return getattr(self, "_last_error", None) or "the collector is slow"

    def close(self):
        """Send what is left, waiting at most `timeout` seconds; then count
        everything not acknowledged as dropped.  Returns (sent, dropped)."""
        self._seal()
        deadline = time.monotonic() + self.timeout
        with self._lock:
            self._closing = deadline
            self._lock.notify_all()
            while (self._queue or self._in_flight) and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            left = self._queued_events + self._in_flight
            self.dropped += left
            self._queue.clear()
            self._queued_events = self._queued_bytes = self._in_flight = 0
            self._finished = True
            self._lock.notify_all()
        if left:
            self._say_once("deadline", f"OTLP: {left} events not sent to {self.url} within "
                                       f"--otlp-timeout {self.timeout:g}s ({self._why()})")
        self._thread.join(0.05)
        return self.sent, self.dropped

    def _say_once(self, what, text):
        if what not in self._said:
            self._said.add(what)
            self.say(text)

    # --- the sending thread ---------------------------------------------------

    def _send_loop(self):
        conn = None
        while True:
            with self._lock:
                while not self._queue and not self._finished and self._closing is None:
                    self._lock.wait()
                if self._finished or not self._queue:
                    if self._finished or self._closing is not None:
                        break
                    continue
                data, n = self._queue.popleft()
                self._queued_events -= n
                self._queued_bytes -= len(data)
                self._in_flight = n
            conn, outcome, rejected = self._deliver(conn, data)
            if outcome == "gave up":
                break       # the deadline passed: close() counts it with the rest
            with self._lock:
                if not self._finished:
                    if outcome == "sent":
                        self.sent += n - rejected
                        self.dropped += rejected
                        self.rejected += rejected
                    else:
                        self.dropped += n
                        if outcome == "rejected":
                            self.rejected += n
                    self._in_flight = 0
                    self._lock.notify_all()
        if conn is not None:
            conn.close()

    def _remaining(self):
        """Seconds left before the flush deadline, or None before close()."""
        closing = self._closing
        return None if closing is None else closing - time.monotonic()

    def _deliver(self, conn, data):
        """POST one request until it is acknowledged, refused, or the flush
        deadline passes.  (connection, "sent"|"rejected"|"gave up",
        records the collector rejected in a partial success)."""
        wait = RETRY_FIRST
        while True:
            left = self._remaining()
            if self._finished or (left is not None and left <= 0):
                return conn, "gave up", 0
            timeout = REQUEST_TIMEOUT if left is None else max(0.05, min(REQUEST_TIMEOUT, left))
            retry_after = None
            try:
                if conn is None:
                    cls = (http.client.HTTPSConnection if self.scheme == "https"
                           else http.client.HTTPConnection)
                    conn = cls(self.host, self.port, timeout=timeout)
                else:
                    conn.timeout = timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                conn.request("POST", self.path, body=data, headers={
                    "Content-Type": "application/x-protobuf",
                    "Content-Encoding": "gzip",
                    "User-Agent": f"rbtrace/{__version__}"})
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                if status == 200:
                    self._last_error = None
                    return conn, "sent", self._rejected_in(body, resp)
                self._last_error = f"HTTP {status} {resp.reason}"
                if status not in RETRYABLE:
                    self._say_once(f"http{status}", f"OTLP: {self.url} refused a batch: "
                                                    f"{self._last_error}; its events are dropped")
                    return conn, "rejected", 0
                retry_after = _retry_after(resp.getheader("Retry-After"))
                self._say_once(f"http{status}", f"OTLP: {self.url} answered "
                                                f"{self._last_error}; retrying")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                self._last_error = _error_text(e)
                self._say_once("conn", f"OTLP: can't send to {self.url}: {self._last_error}; "
                                       f"retrying")
            pause = min(wait, RETRY_MAX) if retry_after is None else min(retry_after,
                                                                          RETRY_AFTER_MAX)
            wait *= 2
            with self._lock:
                left = self._remaining()
                if left is not None:
                    pause = min(pause, max(0.0, left))
                if not self._finished and pause > 0:
                    self._lock.wait(pause)

    def _rejected_in(self, body, resp):
        """Records the collector says it rejected (a partial success)."""
        if not body or "protobuf" not in (resp.getheader("Content-Type") or ""):
            return 0
        try:
            answer = self.pb.Response.FromString(body)
        except Exception:   # a body that isn't the response: the request was taken
            return 0
        n = answer.partial_success.rejected_log_records
        if n:
            self._say_once("partial", f"OTLP: {self.url} rejected {n} records: "
                                      f"{answer.partial_success.error_message or 'no reason given'}")
        return n


def _retry_after(value):
    """Retry-After in seconds (a number; an HTTP date is not worth parsing
    for a wait this short: None, and the backoff is used)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _error_text(e) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
