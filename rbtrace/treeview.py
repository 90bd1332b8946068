"""The live table's process view (key t): processes as a tree, parent to
child, each with its argv, state, lifetime and counts, and under an
expanded one its events kept in the history.

Everything counted comes from the session's ProcessSummary (procsum.py),
which counts with numpy per ring segment; the tree's order is rebuilt
only when the set of processes has changed, and a row's text only for
the rows on screen.  A process's events are found in the history by its
key (pid, start time), with one numpy compare over the keys kept.
"""
from __future__ import annotations

import time

from rbtrace import fields
from rbtrace.spec import Column

# Guides, two cells each, as pstree draws them.
TEE, ELBOW, PIPE, BLANK = "├─", "└─", "│ ", "  "

UNSEEN = -1                 # the start of a parent known only by its pid
EVENTS_SHOWN = 20_000       # event lines under one expanded process, at most
PANE = 3                    # lines of the selected event's whole text
WIDE_EVENTS = 60            # cells an event line needs under the command


def argv_text(p) -> str:
    """A process's command: its argv as a shell would read it, else [comm]."""
    if p.argv:
        return " ".join(fields.shell_word(fields.escape_str(a)) for a in p.argv)
    return f"[{fields.escape_str(p.comm)}]"


def state_text(p, ends_traced: bool) -> str:
    if p.status is None:
        return "running" if ends_traced else "?"
    code = fields.exit_code(p.status)
    return f"exit {code}" if code is not None else (fields.signal_name(p.status) or "killed")


def life_text(p, now_ns: int, ends_traced: bool) -> str:
    if p.duration_ns is not None:
        return fields.age_text(max(0, p.duration_ns))
    if not ends_traced:
        return ""
    return fields.age_text(max(0, now_ns - p.start_ns))


def tree_order(procsum) -> list:
    """[(key, guides of its row, guides under it)] of every kept process,
    parents before children, each level in the order processes started.
    Processes whose parent has no event of its own (a shell
    waiting for them) but that share it go under a row of that parent,
    keyed (ppid, UNSEEN)."""
    parents = procsum.parents()
    procs = procsum.procs
    children = {}
    roots = []
    orphans = {}
    for key in procs:                       # insertion order: first seen first
        parent = parents.get(key)
        if parent is not None and parent != key and parent in procs:
            children.setdefault(parent, []).append(key)
        else:
            roots.append(key)
            if parent is None and procs[key].ppid:
                orphans.setdefault(procs[key].ppid, []).append(key)
    # Siblings in the order they started (the ring's order of first events
    # can differ between CPUs).
    for kids in children.values():
        kids.sort(key=lambda k: k[1])
    roots.sort(key=lambda k: k[1])
    for ppid, keys in orphans.items():
        if len(keys) < 2:
            continue
        keys = sorted(keys, key=lambda k: k[1])
        unseen = (ppid, UNSEEN)
        gone = set(keys)
        at = roots.index(keys[0])
        roots = roots[:at] + [unseen] + [k for k in roots[at:] if k not in gone]
        children[unseen] = keys
    out = []
    # Iterative depth-first walk: a deep tree must not hit the recursion limit.
    stack = [(key, "", None) for key in reversed(roots)]
    while stack:
        key, lead, last = stack.pop()
        if last is None:                    # a root: no connector
            row, under = "", ""
        else:
            row, under = lead + (ELBOW if last else TEE), lead + (BLANK if last else PIPE)
        out.append((key, row, under))
        kids = children.get(key, ())
        for i in range(len(kids) - 1, -1, -1):
            stack.append((kids[i], under, i == len(kids) - 1))
    return out


class Line:
    """One line of the tree view: a process ("p", its key) or one of its
    events ("e", the event's number in the history)."""
    __slots__ = ("kind", "key", "number", "guides")

    def __init__(self, kind, key, number, guides):
        self.kind, self.key, self.number, self.guides = kind, key, number, guides

    @property
    def ident(self):
        return (self.kind, self.key if self.kind == "p" else self.number)


class Lines:
    """Every line of the tree, without an object per event: the process
    lines, and after each expanded process the numbers of its events (a
    numpy column); a Line is made when one is looked at."""

    def __init__(self, plines, at, blocks):
        self.plines, self.at = plines, at
        # blocks: (index in plines of the process, key, numbers, guides), in order
        self.blocks = blocks
        self.parts = []             # (first line, "p", lo, hi) or (first line, "e", block)
        line = done = 0
        for i, key, numbers, guides in blocks:
            if i + 1 > done:
                self.parts.append((line, "p", done, i + 1))
                line += i + 1 - done
                done = i + 1
            if len(numbers):
                self.parts.append((line, "e", (key, numbers, guides)))
                line += len(numbers)
        if done < len(plines):
            self.parts.append((line, "p", done, len(plines)))
            line += len(plines) - done
        self.firsts = [p[0] for p in self.parts]
        self.n = line

    def __len__(self):
        return self.n

    def __bool__(self):
        return self.n > 0

    def _line(self, i):
        import bisect
        part = self.parts[bisect.bisect_right(self.firsts, i) - 1]
        if part[1] == "p":
            return self.plines[part[2] + i - part[0]]
        key, numbers, guides = part[2]
        return Line("e", key, int(numbers[i - part[0]]), guides)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._line(j) for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self._line(i)

    def find(self, ident):
        """The index of the line `ident` (Line.ident), or None."""
        import numpy as np
        kind, what = ident
        for first, *rest in self.parts:
            if rest[0] == "p" and kind == "p":
                j = self.at.get(what)
                if j is not None and rest[1] <= j < rest[2]:
                    return first + j - rest[1]
            elif rest[0] == "e" and kind == "e":
                numbers = rest[1][1]
                k = int(np.searchsorted(numbers, what))
                if k < len(numbers) and numbers[k] == what:
                    return first + k
        return None

    def last_process(self):
        return self.find(("p", self.plines[-1].key)) if self.plines else max(0, self.n - 1)


class TreeView:
    """State of the process view: the expanded processes, the selected
    line, the first line on screen, a search and its hits."""

    def __init__(self, probe):
        self.probe = probe
        specs = [getattr(c, "spec", None) for c in (getattr(probe, "codecs", None) or [probe])]
        self.columns = [
            Column("PID", None, width=7, justify="right", whole=True, priority=1),
            Column("STATE", None, width=7, whole=True, priority=3),
            Column("LIFE", None, width=6, whole=True, justify="right", priority=4),
        ]
        self.counted = []                   # (header, kind) of the count columns
        for s in specs:
            if s is not None and s.tree_count:
                self.counted.append((s.tree_count, s.name))
        for header, _ in self.counted:
            self.columns.append(Column(header, None, width=len(header), justify="right",
                                       whole=True, priority=5))
        self.columns.append(Column("ERR", None, width=3, justify="right", whole=True, priority=5))
        self.columns.append(Column("COMMAND", None, min_width=12, priority=2))
        self.expanded = set()
        self.selected = None                # Line.ident of the selected line
        self.follow = True                  # the selection stays on the newest process
        self.top = 0
        self.frozen_order = None            # the processes' order while paused
        self.search = ""
        self.hits = []                      # Line.ident of each search hit
        self.hit = -1
        self._order_for = None
        self._order = []

    # --- the lines -------------------------------------------------------------

    def order(self, procsum, force=False):
        """tree_order, rebuilt when processes were added, but not more often
        than keeps its cost near 5% of the time (at 10,000 processes a
        rebuild takes tens of ms: new ones then show within a second)."""
        n = len(procsum.procs)
        now = time.monotonic()
        if self._order_for != n and (force or now >= self._next_build):
            self._order = tree_order(procsum)
            self._order_for = n
            self._proc_lines = [Line("p", key, None, row) for key, row, _ in self._order]
            self._at = {key: i for i, (key, _, _) in enumerate(self._order)}
            self._next_build = now + 20 * (time.monotonic() - now)
        return self._order

    _next_build = 0.0

    def refresh(self):
        """The next frame shows every process counted (a key was pressed)."""
        self._next_build = 0.0
    _proc_lines = ()
    _at = {}

    def lines(self, procsum, view) -> Lines:
        """Every line of the tree: the processes now (or as a pause froze
        them), and under each expanded one its events in `view`."""
        if procsum is None:
            return Lines([], {}, [])
        if self.frozen_order is not None:
            if self._frozen[0] is not self.frozen_order:
                order = self.frozen_order
                self._frozen = (order, [Line("p", key, None, row) for key, row, _ in order],
                                {key: i for i, (key, _, _) in enumerate(order)})
            order, plines, at = self._frozen
        else:
            order = self.order(procsum)
            plines, at = self._proc_lines, self._at
        blocks = []
        if view is not None:
            for i, key in sorted((at[key], key) for key in self.expanded
                                 if key in at and key[1] != UNSEEN):
                blocks.append((i, key, view.of_process(key)[-EVENTS_SHOWN:], order[i][2] + "· "))
        return Lines(plines, at, blocks)

    _frozen = (None, None, None)

    def index(self, lines) -> int:
        """The selected line's index in `lines` (the last process when
        following or when the selection is gone)."""
        if not lines:
            return 0
        if not self.follow and self.selected is not None:
            i = lines.find(self.selected)
            if i is not None:
                return i
        i = lines.last_process()
        self.selected = lines[i].ident
        return i

    # --- keys ----------------------------------------------------------------

    def move(self, lines, how, page):
        if not lines:
            return
        i = self.index(lines)
        step = {"page": -page, "-page": page, "top": -len(lines), "end": len(lines)}.get(how)
        if step is None:
            step = -how                     # +1 is up: back, as in the log
        j = min(len(lines) - 1, max(0, i + step))
        self.selected = lines[j].ident
        self.follow = how == "end"

    def toggle(self, lines, want=None):
        """Expand or collapse the selected process (want: True expand, False
        collapse, None toggle); on an event line, act on its process."""
        if not lines:
            return
        ln = lines[self.index(lines)]
        key = ln.key
        if ln.kind == "e" and want is not False:
            return
        self.follow = False
        if want is None:
            want = key not in self.expanded
        if want:
            self.expanded.add(key)
        else:
            self.expanded.discard(key)
            self.selected = ("p", key)

    def find(self, text, procsum, view, match_event):
        """Search: processes whose command or comm contains `text` (any
        case), and events kept that `match_event(event, text)`.  Selects
        the first hit, expanding its process for an event."""
        self.search = text
        self.hits, self.hit = [], -1
        if not text or procsum is None:
            return 0
        want = text.lower()
        by_process = {}
        if view is not None:
            for n, e in view.search(lambda e: match_event(e, want)):
                key = (int(view.pids[n - view.lo]), int(view.starts[n - view.lo]))
                by_process.setdefault(key, []).append(n)
        order = self.frozen_order if self.frozen_order is not None else self.order(procsum, True)
        for key, _, _ in order:
            p = procsum.procs.get(key)
            if p is None:
                continue
            if key in by_process:
                self.hits.extend(("e", n) for n in by_process[key])
            elif want in argv_text(p).lower() or want in fields.escape_str(p.comm).lower():
                self.hits.append(("p", key))
        self._hit_keys = {n: key for key, ns in by_process.items() for n in ns}
        if self.hits:
            self.next_hit()
        return len(self.hits)

    _hit_keys = {}

    def next_hit(self):
        if not self.hits:
            return
        self.hit = (self.hit + 1) % len(self.hits)
        ident = self.hits[self.hit]
        if ident[0] == "e":
            self.expanded.add(self._hit_keys[ident[1]])
        self.selected = ident
        self.follow = False

    # --- drawing -------------------------------------------------------------

    def process_cells(self, p, guides, now_ns, ends_traced):
        cells = [str(p.pid), state_text(p, ends_traced), life_text(p, now_ns, ends_traced)]
        cells += [str(p.kinds.get(kind, 0)) for _, kind in self.counted]
        cells.append(str(sum(p.errors.values())))
        cells.append(guides + argv_text(p))
        return cells

    def render(self, procsum, view, width, height, event_text):
        """(header line, [(text, style)] of the lines on screen) at most
        `width` cells each, `height` lines in all with the header.  When an
        event is selected, the last lines are its whole text, wrapped (a
        narrow terminal cuts the event lines)."""
        from rich.cells import chop_cells

        from rbtrace.render import GAP, _cut, _pad, layout
        lines = self.lines(procsum, view)
        sel = self.index(lines) if lines else 0
        pane = []
        if lines and lines[sel].kind == "e" and view is not None and height >= 8 and width >= 10:
            e = view.event(lines[sel].number)
            if e is not None:
                parts = chop_cells(event_text(e), width)
                pane = parts[:PANE]
                if len(parts) > PANE:
                    pane[-1] = _cut(pane[-1] + "…", width)
                pane = [("─" * width, "dim")] + [(t, "") for t in pane]
        visible = max(1, height - 1 - len(pane))
        # The selection stays on screen; otherwise the view stays put.
        if sel < self.top:
            self.top = sel
        elif sel >= self.top + visible:
            self.top = sel - visible + 1
        self.top = max(0, min(self.top, max(0, len(lines) - visible)))
        shown = lines[self.top:self.top + visible]
        now_ns = time.monotonic_ns()
        ends = procsum.ends_traced if procsum is not None else False
        rows = []
        for ln in shown:
            if ln.kind == "p":
                p = procsum.procs.get(ln.key)
                rows.append(self.process_cells(p, ln.guides, now_ns, ends) if p else
                            [str(ln.key[0])] + [""] * (len(self.columns) - 2)
                            + [ln.guides + "(no events: the parent of these)"])
            else:
                rows.append(None)
        # A count column once its kind has an event (a replay knows every kind).
        seen = procsum.kinds if procsum is not None else {}
        use = [i for i in range(len(self.columns))
               if not 3 <= i < 3 + len(self.counted) or self.counted[i - 3][1] in seen]
        content = [max((len(r[i]) for r in rows if r), default=0) if self.columns[i].whole else 0
                   for i in use]
        widths = layout([self.columns[i] for i in use], width, content)
        cols = [(i, self.columns[i], w) for i, w in zip(use, widths) if w is not None]
        # Events go under the command, with its guides, when that leaves
        # room for them; else from the second column on.
        indent = sum(w + GAP for i, c, w in cols if c.header != "COMMAND")
        wide = width - indent >= WIDE_EVENTS
        if not wide:
            indent = (cols[0][2] + GAP) if len(cols) > 1 else 0

        def fmt(texts):
            return (" " * GAP).join(_pad(_cut(texts[i], w, c.keep), w, c.justify)
                                    for i, c, w in cols).rstrip()

        header = fmt([c.header for c in self.columns])
        out = []
        events = {}
        numbers = [ln.number for ln in shown if ln.kind == "e"]
        if numbers and view is not None:
            lo, hi = min(numbers), max(numbers) + 1
            if hi - lo <= 4 * visible:
                events = dict(zip(range(lo, hi), view.events(lo, hi)))
            else:
                events = {n: view.event(n) for n in numbers}
        for ln, cells in zip(shown, rows):
            style = "reverse" if ln.ident == self.selected else ""
            if ln.kind == "p":
                text = fmt(cells) if cells else ""
                if ln.key in self.expanded:
                    style = (style + " bold").strip()
            else:
                e = events.get(ln.number)
                body = event_text(e) if e is not None else "(no longer kept)"
                text = " " * indent + (ln.guides if wide else "· ") + body
            out.append((_cut(text, width), style))
        out += [("", "")] * (visible - len(out))
        return header, out + pane
