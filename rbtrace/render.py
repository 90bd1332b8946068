"""Renderers: JSON lines, plain aligned lines, and the live rich table.

One interface: `events(list)` for decoded events, `count(n, tail)` for the
table, which decodes only what it shows, `lost(record)` for drops seen
since the last report, `tick(stats)` about ten times a second, and
`close(summary)`.  stdout carries data only; people read stderr.
"""
import collections
import shutil
import sys
import time

import orjson

from rbtrace.probes import Column

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


class JsonRenderer:
    """One JSON object per line; every line has a `type`."""

    wants_all = True

    def __init__(self, out, probe):
        self.out = out
        self.probe = probe
        self.dumps = orjson.dumps

    def start(self, info):
        self._write([{"type": "start", "version": JSON_FORMAT_VERSION, **info}])

    def events(self, events):
        self._write(events)

    def lost(self, record):
        self._write([{"type": "lost", **record}])

    def tick(self, stats):
        pass

    def close(self, summary):
        self._write([{"type": "summary", **summary}])

    def _write(self, objs):
        dumps = self.dumps
        self.out.write(b"".join([dumps(o) + b"\n" for o in objs]))
        self.out.flush()


class PlainRenderer:
    """Aligned text lines for pipes and files: no colour, no truncation of
    the last column, flushed with every batch."""

    wants_all = True

    def __init__(self, out, probe):
        self.out = out
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
        self._line([c.header for c in self.columns])
        self.out.flush()

    def _line(self, texts):
        parts = []
        for (value, width, justify), t in zip(self._fmt, texts):
            if width:
                t = t.rjust(width) if justify == "right" else t.ljust(width)
            parts.append(t)
        self.out.write((" ".join(parts).rstrip() + "\n").encode())

    def events(self, events):
        for e in events:
            self._line([fmt[0](e) for fmt in self._fmt])
        self.out.flush()

    def lost(self, record):
        sys.stderr.write(f"rbtrace: {record['dropped']} events dropped "
                         f"(ring full {record['ringbuf_full']}, map full {record['map_full']})\n")

    def tick(self, stats):
        pass

    def close(self, summary):
        self.out.flush()


class TableRenderer:
    """The live table: newest events at the bottom, a status footer, at
    most ten redraws a second whatever the event rate."""

    wants_all = False
    tail = 200            # events decoded per batch: more than any screen shows

    def __init__(self, console, probe, filters: str):
        from rich.live import Live
        self.console = console
        self.probe = probe
        self.columns = probe.columns
        self.filters = filters
        self.rows = collections.deque(maxlen=self.tail)
        self.stats = {}
        self.started = time.monotonic()
        self.live = Live(console=console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self._last_draw = 0.0

    def start(self, info):
        self.live.start()
        self._draw(force=True)

    def count(self, n, tail_events):
        for e in tail_events:
            self.rows.append([c.value(e) for c in self.columns])

    def events(self, events):
        self.count(len(events), events[-self.tail:])

    def lost(self, record):
        pass   # shown in the footer from the running totals

    def tick(self, stats):
        self.stats = stats
        self._draw()

    def close(self, summary):
        self.stats = summary
        self._draw(force=True)
        self.live.stop()

    def _draw(self, force=False):
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.live.update(self._renderable(), refresh=True)

    def _renderable(self):
        from rich.table import Table
        from rich.text import Text
        width, height = self.console.size
        widths = layout(self.columns, width - 1)
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False,
                      padding=(0, 1, 0, 0), expand=False, show_edge=False)
        for c, w in zip(self.columns, widths):
            table.add_column(c.header, width=w, no_wrap=True, justify=c.justify, overflow="crop")
        visible = max(1, height - 3)
        for row in list(self.rows)[-visible:]:
            table.add_row(*[Text(_cut(t, w, c.keep)) for t, w, c in zip(row, widths, self.columns)])
        s = self.stats
        elapsed = time.monotonic() - self.started
        footer = Text(_cut(
            f"{self.probe.name}{' ' + self.filters if self.filters else ''} | "
            f"{elapsed:6.1f}s | {s.get('rate', 0):8.0f}/s | events {s.get('delivered', 0)} | "
            f"dropped {s.get('dropped', 0)} | ring {s.get('ring_fill', 0) * 100:3.0f}% | "
            f"Ctrl-C quits", width - 1, "start"), style="reverse")
        from rich.console import Group
        return Group(table, footer)


def terminal_width(default=120):
    return shutil.get_terminal_size((default, 24)).columns
