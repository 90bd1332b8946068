"""Renderers: JSON lines, plain aligned lines, and the live rich table.

One interface: `events(list)` for decoded events, `count(n, tail)` for the
table, which decodes only what it shows, `lost(record)` for drops seen
since the last report, `tick(stats)` about ten times a second, and
`close(summary)`.  stdout carries data only; people read stderr.
"""
import collections
import os
import select
import stat
import sys
import time

import orjson

from rbtrace import fields
from rbtrace.errors import OutputError

JSON_FORMAT_VERSION = 1


def _cut(text: str, width: int, keep: str) -> str:
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    if keep == "end":
        return "…" + text[-(width - 1):]
    return text[:width - 1] + "…"


def layout(columns, total_width: int) -> list:
    """Widths that fit `total_width`: fixed columns first, the rest shared."""
    gaps = len(columns) - 1
    fixed = sum(c.width for c in columns if c.width)
    flex = [c for c in columns if not c.width]
    room = max(0, total_width - fixed - gaps)
    share = room // len(flex) if flex else 0
    widths = []
    extra = room - share * len(flex)
    for c in columns:
        if c.width:
            widths.append(c.width)
        else:
            w = max(c.min_width, share + extra)
            extra = 0
            widths.append(w)
    return widths


def write_all(out, data: bytes):
    """Write every byte, then flush.  A signal arriving while a write is
    blocked on a full pipe makes BufferedWriter.write return a short count
    (PEP 475 retries only from the start): loop, or a JSON line is cut."""
    if isinstance(out, Output):
        out.write_all(data)
        return
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n:] if n else view
    out.flush()


class Output:
    """Where the stream renderers' lines go: a file descriptor, written with
    os.write and no Python buffer in between, so that a failed write leaves
    nothing behind to fail again at exit, and the bytes written are known.

    Every write_all() holds whole lines.  A write that fails (ENOSPC on a
    full file system, EIO, EBADF...) raises OutputError naming the file;
    when part of the data went out first, a regular file is truncated back
    to its last whole line, so the output never ends with half a JSON line.
    EPIPE (the reader went away, `| head -1`) is not an error of ours and
    stays a BrokenPipeError for the session to stop quietly."""

    def __init__(self, fd: int, name: str):
        self.fd = fd
        self.name = name          # for messages: the path as given, or "standard output"

    def fileno(self):
        return self.fd

    def write(self, data):        # the file-object interface, for tests and tools
        self.write_all(bytes(data))
        return len(data)

    def flush(self):
        pass

    def write_all(self, data: bytes):
        view = memoryview(data)
        done = 0
        while done < len(data):
            try:
                # A signal after some bytes returns a short count; one before
                # any is retried by Python (PEP 475).  Both just loop.
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                # An O_NONBLOCK pipe or socket inherited as stdout: wait.
                poller = select.poll()
                poller.register(self.fd, select.POLLOUT)
                poller.poll()
            except BrokenPipeError:
                raise
            except OSError as e:
                kept = self._keep_whole_lines(data, done)
                raise OutputError(fields.escape_str(self.name), e,
                                  lines_kept=data.count(b"\n", 0, kept)) from e

    def _keep_whole_lines(self, data: bytes, done: int) -> int:
        """Bytes of `data` left in the output: `done` cut back to its last
        newline, by truncating a regular file (other outputs can't take
        back what was written: a partial line is left there as it is)."""
        kept = data.rfind(b"\n", 0, done) + 1
        if kept == done:
            return kept
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                return done
            end = os.lseek(self.fd, 0, os.SEEK_CUR)
            os.ftruncate(self.fd, end - (done - kept))
            os.lseek(self.fd, end - (done - kept), os.SEEK_SET)
        except OSError:
            return done
        return kept


class StreamRenderer:
    """Writes to a byte stream (stdout, a pipe, a file).

    After a write has failed (OutputError) or the reader has gone, nothing
    more is written: the summary then goes to stderr alone."""

    wants_all = True
    wants_bytes = False      # takes ready JSON lines from Probe.json_lines

    def __init__(self, out, probe):
        self.out = out
        self.probe = probe

    def input_fds(self):
        return []

    def output_fd(self):
        try:
            return self.out.fileno()
        except (AttributeError, OSError, ValueError):
            return None

    def output_gone(self):
        """The reader closed the pipe: point fd 1 at /dev/null so the final
        flush at interpreter exit doesn't print 'Exception ignored'."""
        fd = self.output_fd()
        if fd is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        self.closed = True

    def output_failed(self):
        """A write failed: write nothing more."""
        self.closed = True

    closed = False

    def _emit(self, data: bytes):
        if not self.closed:
            write_all(self.out, data)

    def tick(self, stats):
        pass


class JsonRenderer(StreamRenderer):
    """One JSON object per line; every line has a `type`."""

    wants_bytes = True

    def write_lines(self, data: bytes):
        self._emit(data)

    def __init__(self, out, probe):
        super().__init__(out, probe)
        self.dumps = orjson.dumps

    def start(self, info):
        self._write([{"type": "start", "version": JSON_FORMAT_VERSION, **info}])

    def events(self, events):
        self._write(events)

    def lost(self, record):
        self._write([{"type": "lost", **record}])

    def close(self, summary):
        self._write([{"type": "summary", **summary}])

    def _write(self, objs):
        dumps = self.dumps
        self._emit(b"".join([dumps(o) + b"\n" for o in objs]))


class PlainRenderer(StreamRenderer):
    """Aligned text lines for pipes and files: no colour, no truncation of
    the last column, flushed with every batch."""

    def __init__(self, out, probe):
        super().__init__(out, probe)
        self.columns = probe.columns
        cols = self.columns
        self._fmt = []
        for i, c in enumerate(cols):
            last = i == len(cols) - 1
            if c.width and not last:
                self._fmt.append((c.value, c.width, c.justify))
            else:
                self._fmt.append((c.value, 0, c.justify))

    def start(self, info):
        self._emit(self._line([c.header for c in self.columns]).encode())

    def _line(self, texts):
        parts = []
        for (value, width, justify), t in zip(self._fmt, texts):
            if width:
                t = t.rjust(width) if justify == "right" else t.ljust(width)
            parts.append(t)
        return " ".join(parts).rstrip() + "\n"

    def events(self, events):
        lines = [self._line([fmt[0](e) for fmt in self._fmt]) for e in events]
        self._emit("".join(lines).encode())

    def lost(self, record):
        line = (f"rbtrace: {record['dropped']} events dropped "
                f"(ring full {record['ringbuf_full']}, map full {record['map_full']})")
        if record["missed_by_kernel"]:
            line += f", {record['missed_by_kernel']} probe runs skipped by the kernel"
        sys.stderr.write(line + "\n")

    def close(self, summary):
        if not self.closed:
            self.out.flush()


class TableRenderer:
    """The live table: newest events at the bottom, a status footer, at
    most ten redraws a second whatever the event rate.

    Keys (read from the terminal in cbreak mode): q quits, space pauses the
    view (counting goes on), s switches to the summary view, / edits a text
    filter on the rows (Enter applies, Esc clears).
    """

    tail = 200            # events decoded per batch: more than any screen shows
    wants_bytes = False
    KEYS = "q quit  space pause  s summary  / filter"

    def __init__(self, console, probe, filters: str, keys_fd=None):
        from rich.live import Live
        self.console = console
        self.probe = probe
        self.columns = probe.columns
        self.filters = fields.escape_str(filters)
        self.rows = collections.deque(maxlen=self.tail)
        self.stats = {}
        self.started = time.monotonic()
        self.live = Live(console=console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self._last_draw = 0.0
        self._rate = (time.monotonic(), 0, 0.0)     # when, delivered, events/s
        self.paused_rows = None
        self.view = "stream"
        self.text_filter = ""
        self.matched = collections.deque(maxlen=self.tail)   # rows passing the filter
        self.editing = None                        # filter text being typed
        self.keys_fd = keys_fd
        self._tty_saved = None

    @property
    def wants_all(self):
        # With a text filter, every event is a candidate row.
        return bool(self.text_filter)

    def input_fds(self):
        return [self.keys_fd] if self.keys_fd is not None else []

    def output_fd(self):
        return None

    def start(self, info):
        if self.keys_fd is not None:
            import termios
            import tty
            self._tty_saved = termios.tcgetattr(self.keys_fd)
            tty.setcbreak(self.keys_fd)
        self.live.start()
        self._draw(force=True)

    def on_input(self, fd):
        try:
            data = os.read(fd, 64).decode(errors="replace")
        except OSError:
            return None
        for ch in data:
            if self.editing is not None:
                if ch in "\r\n":
                    self._set_filter(self.editing)
                elif ch == "\x1b":
                    self._set_filter("")
                elif ch in "\x7f\b":
                    self.editing = self.editing[:-1]
                elif ch.isprintable():
                    self.editing += ch
            elif ch == "q":
                return "quit"
            elif ch == " ":
                live = self.matched if self.text_filter else self.rows
                self.paused_rows = None if self.paused_rows is not None else list(live)
            elif ch == "s":
                self.view = "summary" if self.view == "stream" else "stream"
            elif ch == "/":
                self.editing = self.text_filter
        self._draw(force=True)
        return None

    def _set_filter(self, text):
        self.text_filter, self.editing = text, None
        self.matched = collections.deque((r for r in self.rows if self._matches(r)),
                                         maxlen=self.tail)

    def _matches(self, row):
        want = self.text_filter.lower()
        return any(want in cell.lower() for cell in row)

    def count(self, n, tail_events):
        for e in tail_events:
            row = [c.value(e) for c in self.columns]
            self.rows.append(row)
            if self.text_filter and self._matches(row):
                self.matched.append(row)

    def events(self, events):
        self.count(len(events), events)

    def lost(self, record):
        pass   # shown in the footer from the running totals

    def tick(self, stats):
        self.stats = stats
        self._draw()

    def close(self, summary):
        self.stats = {**self.stats, **summary}
        self._draw(force=True)
        self.live.stop()
        if self._tty_saved is not None:
            import termios
            termios.tcsetattr(self.keys_fd, termios.TCSADRAIN, self._tty_saved)

    def _draw(self, force=False):
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        # A frame costs tens of ms; while the ring is filling up, draining
        # comes first (the frame is only put off, at most one second).
        if not force and self.stats.get("ring_fill", 0) > 0.25 and now - self._last_draw < 1.0:
            return
        self._last_draw = now
        self.live.update(self._renderable(), refresh=True)

    def _recent_rate(self):
        """Events per second over the last second or so."""
        now = time.monotonic()
        when, count, rate = self._rate
        delivered = self.stats.get("delivered", 0)
        if now - when >= 1.0:
            rate = (delivered - count) / (now - when)
            self._rate = (now, delivered, rate)
        return rate

    def _footer(self, width):
        from rich.text import Text
        s = self.stats
        elapsed = time.monotonic() - self.started
        state = "PAUSED | " if self.paused_rows is not None else ""
        if self.editing is not None:
            keys = f"filter: {fields.escape_str(self.editing)}_  (Enter apply, Esc clear)"
        else:
            keys = (f"filter '{fields.escape_str(self.text_filter)}' | " if self.text_filter else "") + self.KEYS
        line1 = (f"{state}{self.probe.name}{' ' + self.filters if self.filters else ''} | "
                 f"{elapsed:.0f}s | {self._recent_rate():.0f}/s | events {s.get('delivered', 0)} | "
                 f"dropped {s.get('dropped', 0)}"
                 + (f" | kernel-skipped {s['missed_by_kernel']}" if s.get("missed_by_kernel") else "")
                 + f" | ring {s.get('ring_fill', 0) * 100:.0f}%")
        style = "bold red reverse" if s.get("dropped") else "reverse"
        return [Text(_cut(line1, width, "start"), style=style),
                Text(_cut(keys, width, "start"), style="dim")]

    def _summary_view(self, width, height):
        from rich.table import Table
        from rich.text import Text
        tally = self.stats.get("tally")
        grid = Table.grid(padding=(0, 2))
        if tally is None:
            return grid
        names = [name for name, _ in tally.spec]
        col_w = max(10, (width - 2 * len(names)) // max(1, len(names)))
        for name in names:
            grid.add_column(width=col_w, no_wrap=True)
        tops = [tally.top(name, max(1, height - 4)) for name in names]
        grid.add_row(*[Text(f"top {name}", style="bold") for name in names])
        for i in range(max((len(t) for t in tops), default=0)):
            cells = []
            for t in tops:
                if i < len(t):
                    key, n = t[i]
                    key = fields.escape_text(key) if isinstance(key, bytes) else fields.escape_str(key)
                    cells.append(Text(_cut(f"{n:>8} {key}", col_w, "start")))
                else:
                    cells.append(Text(""))
            grid.add_row(*cells)
        return grid

    def _renderable(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
        # The terminal's size now, not $COLUMNS/$LINES (which rich prefers
        # and which go stale on resize).
        try:
            width, height = os.get_terminal_size(self.console.file.fileno())
            self.console.size = (width, height)
        except (OSError, ValueError, AttributeError):
            width, height = self.console.size
        width -= 1
        footer = self._footer(width)
        if self.view == "summary":
            return Group(self._summary_view(width, height - len(footer)), *footer)
        widths = layout(self.columns, width)
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False,
                      padding=(0, 1, 0, 0), expand=False, show_edge=False)
        for c, w in zip(self.columns, widths):
            table.add_column(c.header, width=w, no_wrap=True, justify=c.justify, overflow="crop")
        visible = max(1, height - 1 - len(footer))
        if self.paused_rows is not None:
            rows = self.paused_rows
        else:
            rows = self.matched if self.text_filter else self.rows
        shown = list(rows)[-visible:]
        for row in shown:
            table.add_row(*[Text(_cut(t, w, c.keep)) for t, w, c in zip(row, widths, self.columns)])
        for _ in range(visible - len(shown)):       # keep the footer at the bottom
            table.add_row(*[""] * len(self.columns))
        return Group(table, *footer)
