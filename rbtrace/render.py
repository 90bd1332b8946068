"""Renderers: JSON lines, plain aligned lines, and the live rich table.

One interface: `events(list)` for decoded events, `keep(event_type,
records)` for the table, which keeps ring records and decodes only what
it shows or searches (`count(n, tail)` for a renderer handed decoded
events of a batch's tail), `lost(record)` for drops seen since the last
report, `tick(stats)` about ten times a second (stats["procs"]: the
session's ProcessSummary, for the tree view), and `close(summary)`.
stdout carries data only; people read stderr.
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


def _cut(text: str, width: int, keep: str = "start") -> str:
    """`text` in at most `width` terminal cells: as it is when it fits, else
    cut with "…" where text is missing (at the end, or at the start when
    keep == "end", as for a path).  Cells, not characters: CJK and emoji
    take two; a grapheme (a letter and its combining marks) is never split,
    so the result may be a cell shorter than `width`."""
    from rich.cells import cell_len, split_graphemes
    if cell_len(text) <= width:
        return text
    if width <= 0:
        return ""
    room = width - 1                  # "…" takes one cell
    spans, _ = split_graphemes(text)
    used = 0
    if keep == "end":
        start = len(text)
        for lo, hi, cells in reversed(spans):
            if used + cells > room:
                break
            used += cells
            start = lo
        return "…" + text[start:]
    end = 0
    for lo, hi, cells in spans:
        if used + cells > room:
            break
        used += cells
        end = hi
    return text[:end] + "…"


def _pad(text: str, width: int, justify: str) -> str:
    """`text` (at most `width` cells) padded with spaces to exactly `width` cells."""
    from rich.cells import cell_len
    gap = " " * (width - cell_len(text))
    return gap + text if justify == "right" else text + gap


GAP = 1                               # cells between two columns


def layout(columns, total_width: int, content=None) -> list:
    """Column widths, in cells, for a table of `total_width` cells; None for
    a column left out.  Separated by GAP, the columns shown fill at most
    `total_width`.

    `content` gives, per column, the widest value to be shown (cells): a
    `whole` column (numbers, error names, times) is never cut, so it is as
    wide as its widest value and its header, or left out altogether.  When
    even the least each column needs does not fit, columns are left out
    whole, highest `priority` number first.  Then the room left goes, in
    turn: to the flexible columns (width 0: the path, the arguments) up to
    a third of the terminal between them; to the cut text columns up to
    their own width, the most important first; and the rest to the
    flexible columns, shared evenly.
    """
    n = len(columns)
    content = content or [0] * n
    need = []
    for c, seen in zip(columns, content):
        if c.whole:
            need.append(max(c.width, len(c.header), seen))
        elif c.width:
            need.append(min(c.min_width, c.width))
        else:
            need.append(c.min_width)
    kept = set(range(n))

    def total():
        return sum(need[i] for i in kept) + GAP * (len(kept) - 1)

    by_drop_order = sorted(range(n), key=lambda i: (-columns[i].priority, -i))
    for i in by_drop_order:
        if len(kept) <= 1 or total() <= total_width:
            break
        kept.discard(i)
    widths = [need[i] if i in kept else None for i in range(n)]
    if not kept:
        return widths
    room = total_width - total()
    if room < 0:                      # one column, still too wide
        (only,) = kept
        if columns[only].whole:
            widths[only] = None
            return widths
        widths[only] = max(0, total_width)
        return widths
    flex = [i for i in sorted(kept, key=lambda i: (columns[i].priority, i)) if not columns[i].width]
    fixed = [i for i in sorted(kept, key=lambda i: (columns[i].priority, i))
             if columns[i].width and not columns[i].whole]
    # 1. the flexible columns, up to a third of the terminal between them
    if flex:
        target = total_width // (3 * len(flex))
        for i in flex:
            grow = min(room, max(0, target - widths[i]))
            widths[i] += grow
            room -= grow
    # 2. cut text columns up to their own width, the most important first
    for i in fixed:
        grow = min(room, columns[i].width - widths[i])
        widths[i] += grow
        room -= grow
    # 3. the rest to the flexible columns
    if flex:
        share, extra = divmod(room, len(flex))
        for k, i in enumerate(flex):
            widths[i] += share + (1 if k < extra else 0)
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

    def begin(self, header):
        """The run's first line: `header(part)` makes it, the start line; a
        file output (rbtrace.outfile) makes one for every file it begins,
        numbered by `part`.  Here it is the only one, and has no number."""
        self.write_all(header(None))

    def tick(self):
        """About ten times a second, from the main loop (between writes)."""

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

    def _begin(self, header):
        if self.closed:
            return
        if isinstance(self.out, Output):
            self.out.begin(header)
        else:
            write_all(self.out, header(None))

    def tick(self, stats):
        if not self.closed and isinstance(self.out, Output):
            self.out.tick()


class JsonRenderer(StreamRenderer):
    """One JSON object per line; every line has a `type`."""

    wants_bytes = True

    def write_lines(self, data: bytes):
        self._emit(data)

    def __init__(self, out, probe):
        super().__init__(out, probe)
        self.dumps = orjson.dumps

    def start(self, info):
        # `part` numbers the files of -o (rbtrace.outfile); None elsewhere.
        self._begin(lambda part: self.dumps({"type": "start", "version": JSON_FORMAT_VERSION,
                                             **info, **({} if part is None else {"part": part})})
                    + b"\n")

    def events(self, events):
        self._write(events)

    def lost(self, record):
        self._write([{"type": "lost", **record}])

    def close(self, summary):
        self._write([{"type": "summary", **summary}])

    def _write(self, objs):
        dumps = self.dumps
        self._emit(b"".join([dumps(o) + b"\n" for o in objs]))


def lost_line(record) -> str:
    """A lost record for people (stderr), when no JSON stream carries it."""
    parts = []
    otlp = record.get("otlp_dropped", 0)
    if record["dropped"] or not otlp:
        parts.append(f"{record['dropped']} events dropped "
                     f"(ring full {record['ringbuf_full']}, map full {record['map_full']})")
    if record["missed_by_kernel"]:
        parts.append(f"{record['missed_by_kernel']} probe runs skipped by the kernel")
    if otlp:
        parts.append(f"{otlp} events not exported to OTLP")
    return "rbtrace: " + ", ".join(parts)


class NullRenderer(StreamRenderer):
    """Nothing on standard output: --otlp alone, when stdout is not a
    terminal; the events go to the collector only.  Losses are said on
    stderr, as with plain lines."""

    def __init__(self, probe):
        super().__init__(None, probe)

    def output_fd(self):
        return None

    def start(self, info):
        pass

    def events(self, events):
        pass

    def lost(self, record):
        sys.stderr.write(lost_line(record) + "\n")

    def close(self, summary):
        pass


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
        line = self._line([c.header for c in self.columns]).encode()
        self._begin(lambda part: line)

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
        sys.stderr.write(lost_line(record) + "\n")

    def close(self, summary):
        if not self.closed:
            self.out.flush()


class TableRenderer:
    """The live table: newest events at the bottom, a status footer, at
    most ten redraws a second whatever the event rate.

    Keys (read from the terminal in cbreak mode): q quits, space pauses the
    view (counting goes on), the arrows, PgUp/PgDn, j/k, Home/End scroll a
    paused view, s switches to the summary view, t to the process tree
    (treeview.py), / edits a text filter on the rows (Enter applies, Esc
    clears, Backspace deletes), or in the tree a search.

    What is kept for scrolling back, the filter, the search and a
    process's events is the newest `history` events as ring records
    (history.py), decoded only when shown or searched.

    Every line is laid out here, cell by cell (see layout and _cut), and
    handed to rich as Text that fits: rich never crops or wraps it again.
    """

    tail = 200            # events decoded per batch, when handed decoded events
    shows_tally = True    # the summary view: the session counts table_tally too
    history = 20000       # events kept for the filter, the search and scrolling back
    wants_bytes = False
    wants_all = False     # the session hands over records (keep), not events
    KEYS = "q quit  space pause  ↑↓ scroll  s summary  t tree  / filter"
    OUTPUT_KEYS = "q quit  o log  t tree  s summary"
    TREE_KEYS = "q quit  space pause  ↑↓ select  Enter expand  t log  / search  n next"
    EXPAND = {"\r": None, "\n": None, "\x1b[C": True, "\x1bOC": True,
              "\x1b[D": False, "\x1bOD": False}

    # Escape sequences of the keys that scroll: arrows, PgUp/PgDn, Home/End
    # (both the CSI and the SS3 forms terminals send).
    SCROLL = {"\x1b[A": 1, "\x1bOA": 1, "\x1b[B": -1, "\x1bOB": -1, "k": 1, "j": -1,
              "\x1b[5~": "page", "\x1b[6~": "-page", "\x1b[H": "top", "\x1bOH": "top",
              "\x1b[1~": "top", "\x1b[F": "end", "\x1bOF": "end", "\x1b[4~": "end"}

    def __init__(self, console, probe, filters: str, keys_fd=None, command_output=None):
        from rich.live import Live
        self.console = console
        self.probe = probe
        self.columns = probe.columns
        self.filters = fields.escape_str(filters)
        from rbtrace.history import History
        from rbtrace.treeview import TreeView
        self.hist = History(self.history)
        self.tree = TreeView(probe)
        self._details = getattr(probe, "details", None)
        if self._details is None:
            from rbtrace.trace import details_text
            own = tuple(c for c in self.columns if c.header not in ("TIME", "PID", "COMM"))
            self._details = lambda e: details_text(own, e)
        self.stats = {}
        self.started = time.monotonic()
        self.live = Live(console=console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self._last_draw = 0.0
        self._rate = (time.monotonic(), 0, 0.0)     # when, delivered, events/s
        self.paused_rows = None                    # the log's rows, while paused
        self.paused_view = None                    # the history, while paused
        self.scroll = 0                            # rows above the newest, when paused
        self._page = 10                            # rows on screen at the last frame
        self.view = "stream"
        self.text_filter = ""
        self.matched = collections.deque(maxlen=self.history)   # rows passing the filter
        self._scanned = 0                          # events looked at by the filter
        self.editing = None                        # filter text being typed
        self.keys_fd = keys_fd
        self._tty_saved = None
        # --table -- CMD: CMD's terminal (a cmdpty.CommandPty), read here;
        # key o shows its last lines.
        self.cmd_out = command_output
        if command_output is not None:
            self.KEYS += "  o output"
            self.TREE_KEYS += "  o output"
        self.ended_summary = None                  # the run's summary, once it has ended

    def input_fds(self):
        fds = [self.keys_fd] if self.keys_fd is not None else []
        if self.cmd_out is not None and self.cmd_out.open:
            fds.append(self.cmd_out.fd)
        return fds

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

    @staticmethod
    def _keys(data):
        """Split terminal input into keys: an escape sequence is one key, a
        lone ESC is Esc."""
        i = 0
        while i < len(data):
            ch = data[i]
            if ch == "\x1b" and i + 1 < len(data) and data[i + 1] in "[O":
                j = i + 2
                while j < len(data) and not ("@" <= data[j] <= "~"):
                    j += 1
                yield data[i:j + 1]
                i = j + 1
            else:
                yield ch
                i += 1

    def on_input(self, fd):
        if self.cmd_out is not None and fd == self.cmd_out.fd:
            more = self.cmd_out.read()       # what CMD wrote: kept, drawn at most 10/s
            self._draw()
            return None if more else "eof"
        try:
            data = os.read(fd, 64).decode(errors="replace")
        except OSError:
            return None
        for key in self._keys(data):
            if self.editing is not None:
                if key in ("\r", "\n"):
                    self._apply(self.editing)
                elif key == "\x1b":
                    self._apply("")
                elif key in ("\x7f", "\b"):
                    self.editing = self.editing[:-1]
                elif len(key) == 1 and key.isprintable():
                    self.editing += key
            elif key == "q":
                return "quit"
            elif key == " ":
                if self.paused_rows is None:
                    self._pause()
                else:
                    self._resume()
            elif self.view == "tree" and key in self.SCROLL:
                self.tree.move(self._tree_lines(), self.SCROLL[key], self._page)
            elif self.view == "tree" and key in self.EXPAND:
                self.tree.toggle(self._tree_lines(), self.EXPAND[key])
            elif self.view == "tree" and key == "n":
                self.tree.next_hit()
            elif key in self.SCROLL:
                self._scroll(self.SCROLL[key])
            elif key == "s":
                self.view = "summary" if self.view != "summary" else "stream"
            elif key == "t":
                self.view = "tree" if self.view != "tree" else "stream"
                self.tree.refresh()
            elif key == "o" and self.cmd_out is not None:
                self.view = "output" if self.view != "output" else "stream"
            elif key == "/":
                self.editing = self.tree.search if self.view == "tree" else self.text_filter
        self._draw(force=True)
        return None

    def _pause(self):
        """Freeze what is shown: the log's rows, the history, the tree's
        processes.  Counting goes on."""
        self._scan_filter()
        self.paused_view = self.hist.view()
        self.paused_rows = (list(self.matched) if self.text_filter
                            else _Rows(self.paused_view, self._row))
        procs = self.stats.get("procs")
        self.tree.frozen_order = list(self.tree.order(procs, True)) if procs is not None else None
        self.scroll = 0

    def _resume(self):
        self.paused_rows, self.paused_view, self.scroll = None, None, 0
        self.tree.frozen_order = None
        self.tree.refresh()

    def _view(self):
        return self.paused_view if self.paused_view is not None else self.hist.view()

    def _tree_lines(self):
        return self.tree.lines(self.stats.get("procs"), self._view())

    def _apply(self, text):
        """Enter (or Esc: "") on the text typed after /: the log's filter,
        or in the tree a search."""
        if self.view != "tree":
            self._set_filter(text)
            return
        self.editing = None
        # The footer says how many were found, and which one is selected.
        self.tree.find(text, self.stats.get("procs"), self._view(), self._event_matches)

    def _scroll(self, how):
        """Scroll the view back (positive) or forward; pauses it first, so
        that what is read stays put while counting goes on."""
        if self.paused_rows is None:
            self._pause()
        step = {"page": self._page, "-page": -self._page,
                "top": len(self.paused_rows), "end": -len(self.paused_rows)}.get(how, how)
        top = max(0, len(self.paused_rows) - self._page)
        self.scroll = min(top, max(0, self.scroll + step))

    def _set_filter(self, text):
        self.text_filter, self.editing = text, None
        self.matched = collections.deque(maxlen=self.history)
        self._scanned = 0
        self._scan_filter(self.paused_view)
        if self.paused_rows is not None:
            self.paused_rows = (list(self.matched) if self.text_filter
                                else _Rows(self.paused_view, self._row))
            self.scroll = 0

    def _scan_filter(self, view=None):
        """Rows of the events kept since the last look that pass the filter."""
        if not self.text_filter:
            return
        view = view or self.hist.view()
        want = self.text_filter.lower()
        for _, e in view.search(lambda e: self._event_matches(e, want), lo=self._scanned):
            self.matched.append(self._row(e))
        self._scanned = view.hi

    def _row(self, e):
        return [c.value(e) for c in self.columns]

    def _event_matches(self, e, want):
        """Whether a cell of the event's row contains `want` (lower case)."""
        return any(want in cell.lower() for cell in self._row(e))

    def _matches(self, row):
        want = self.text_filter.lower()
        return any(want in cell.lower() for cell in row)

    def _event_text(self, e):
        return f"{self.probe.clock.hms(e['ts_ns'])} {e.get('type', '')} {self._details(e)}"

    def keep(self, event_type, records):
        """A ring segment, as records: kept as they are (history.py)."""
        self.hist.add_records(event_type, records, self.probe.decode)

    def count(self, n, tail_events):
        self.hist.add_events(tail_events)

    def events(self, events):
        self.hist.add_events(events)

    def lost(self, record):
        pass   # shown in the footer from the running totals

    def tick(self, stats):
        self.stats = stats
        self._draw()

    def ended(self, summary):
        """The run has ended (--table -- CMD) and the table stays until q:
        the final counts, and the command's status in the footer."""
        self.ended_summary = summary
        self.stats = {**self.stats, **summary}
        self._draw(force=True)

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
        state = ""
        if self.ended_summary is not None:
            elapsed = self.ended_summary.get("duration_s", elapsed)
            state = f"ENDED{self._command_state()} | "
        if self.paused_rows is not None:
            state += f"PAUSED{f' -{self.scroll}' if self.scroll else ''} | "
        if self.editing is not None:
            what = "search" if self.view == "tree" else "filter"
            keys = f"{what}: {fields.escape_str(self.editing)}_  (Enter apply, Esc clear)"
        elif self.view == "output":
            keys = self.OUTPUT_KEYS
        elif self.view == "tree":
            t = self.tree
            keys = ((f"search '{fields.escape_str(t.search)}' "
                     + (f"{t.hit + 1}/{len(t.hits)}" if t.hits else "not found") + " | ")
                    if t.search else "") + self.TREE_KEYS
        else:
            keys = (f"filter '{fields.escape_str(self.text_filter)}' | " if self.text_filter else "") + self.KEYS
        # The counts first: on a narrow terminal the filters are what is cut.
        line1 = (f"{state}{self.probe.name} | events {s.get('delivered', 0)} | "
                 f"dropped {s.get('dropped', 0)}"
                 + (f" | kernel-skipped {s['missed_by_kernel']}" if s.get("missed_by_kernel") else "")
                 + (f" | otlp-dropped {s['otlp_dropped']}" if s.get("otlp_dropped") else "")
                 + f" | {self._recent_rate():.0f}/s | ring {s.get('ring_fill', 0) * 100:.0f}% | "
                 f"{elapsed:.0f}s{' | ' + self.filters if self.filters else ''}")
        style = "bold red reverse" if s.get("dropped") or s.get("otlp_dropped") else "reverse"
        return [Text(_cut(line1, width), style=style, no_wrap=True),
                Text(_cut(keys, width), style="dim", no_wrap=True)]

    def _command_state(self):
        """': sh exit 5' (or ': sh SIGKILL') for the footer of an ended run."""
        command = (self.ended_summary or {}).get("command")
        if not command or command.get("status") is None:
            return ""
        name = fields.for_message(os.path.basename(command["argv"][0]))
        how = command["signal"] or f"exit {command['status']}"
        return f": {name} {how}"

    def _output_lines(self, width, height):
        """The output view: what the command wrote, its last rows that fit
        under a header line, escape sequences taken out (cmdpty.clean_line)."""
        from rich.text import Text
        out = self.cmd_out
        head = f"OUTPUT of the command: {out.bytes} bytes, all written here when the table closes"
        lines = [Text(_cut(head, width), style="bold", no_wrap=True)]
        lines += [Text(row, no_wrap=True) for row in out.lines.tail(width, height - 1)]
        return lines[:height]

    def _summary_lines(self, width, height):
        """The summary view: one column per tally (top commands, errors,
        files), each "COUNT KEY", counted over every delivered event."""
        from rich.text import Text
        tally = self.stats.get("tally")
        if tally is None:
            return []
        names = [name for name, _ in tally.spec]
        col_w = max(10, (width - GAP * (len(names) - 1)) // max(1, len(names)))
        tops = [tally.top(name, max(1, height - 1)) for name in names]
        lines = [Text(" ".join(_pad(_cut(f"top {name}", col_w), col_w, "left") for name in names)
                      .rstrip(), style="bold", no_wrap=True)]
        digits = [len(str(t[0][1])) if t else 1 for t in tops]
        for i in range(max((len(t) for t in tops), default=0)):
            cells = []
            for name, t, d in zip(names, tops, digits):
                text = ""
                if i < len(t):
                    key, n = t[i]
                    key = fields.escape_text(key) if isinstance(key, bytes) else fields.escape_str(key)
                    # The count whole; a file keeps the end of its path.
                    text = f"{n:>{d}} " + _cut(key, col_w - d - 1, "end" if name == "files" else "start")
                cells.append(_pad(text, col_w, "left"))
            lines.append(Text(" ".join(cells).rstrip(), no_wrap=True))
        return [Text(_cut(ln.plain, width)) if ln.cell_len > width else ln for ln in lines]

    def _table_lines(self, rows, width):
        """The header and one line per row, each at most `width` cells."""
        from rich.cells import cell_len
        from rich.text import Text
        content = [max((cell_len(r[i]) for r in rows), default=0) if c.whole else 0
                   for i, c in enumerate(self.columns)]
        widths = layout(self.columns, width, content)
        shown = [(i, c, w) for i, (c, w) in enumerate(zip(self.columns, widths)) if w is not None]

        def line(texts):
            return (" " * GAP).join(
                _pad(_cut(texts[i], w, c.keep), w, c.justify) for i, c, w in shown).rstrip()

        out = [Text(line([c.header for c in self.columns]), style="bold", no_wrap=True)]
        out.extend(Text(line(r), no_wrap=True) for r in rows)
        return out

    def _renderable(self):
        from rich.console import Group
        from rich.text import Text
        # The terminal's size now, not $COLUMNS/$LINES (which rich prefers
        # and which go stale on resize).
        try:
            width, height = os.get_terminal_size(self.console.file.fileno())
            self.console.size = (width, height)
        except (OSError, ValueError, AttributeError):
            width, height = self.console.size
        if self.cmd_out is not None:
            self.cmd_out.resize(width, height)     # CMD's terminal follows the real one
        width -= 1            # never the last cell: some terminals wrap there
        footer = self._footer(width)
        room = max(0, height - len(footer))
        if self.view == "summary":
            body = self._summary_lines(width, room)[:room]
        elif self.view == "output":
            body = self._output_lines(width, room)
        elif self.view == "tree":
            self._page = max(1, room - 1)
            header, lines = self.tree.render(self.stats.get("procs"), self._view(), width, room,
                                             self._event_text)
            body = ([Text(header, style="bold", no_wrap=True)]
                    + [Text(t, style=st, no_wrap=True) for t, st in lines])[:room]
            if self.stats.get("procs") is None:
                body.append(Text(_cut("(no process counts in this mode)", width)))
        else:
            visible = max(0, room - 1)                  # the header takes a line
            self._page = max(1, visible)
            if self.paused_rows is not None:
                rows = self.paused_rows
                top = max(0, len(rows) - self.scroll - visible)
                shown = rows[top:len(rows) - self.scroll] if visible else []
            elif self.text_filter:
                self._scan_filter()
                shown = list(self.matched)[-visible:] if visible else []
            else:
                view = self.hist.view()
                shown = [self._row(e) for e in view.events(view.hi - visible, view.hi)] if visible else []
            body = self._table_lines(shown, width)[:room]
        # Blank lines keep the footer at the bottom.
        body += [Text("")] * (room - len(body))
        return Group(*body, *footer)


class _Rows:
    """The rows of a frozen history, made when looked at: len() and slices."""

    def __init__(self, view, row):
        self.view, self.row = view, row

    def __len__(self):
        return len(self.view)

    def __getitem__(self, part):
        lo, hi, _ = part.indices(len(self.view))
        base = self.view.lo
        return [self.row(e) for e in self.view.events(base + lo, base + hi)]
