"""The end-of-run summary per process and per kind (issue #16, item 4).

Counted per ring segment with numpy, off the record columns: Python work
per segment grows with the distinct processes in it, never with its
events (a storm from one process costs a few numpy calls per batch).
Only exec records, which are rare, are decoded: for the argv.

Per kind: events, and errors by name (a negative "ret" column: its errno;
an exit with a non-zero wait status: "exit N" or the signal's name).
Per process (pid, proc_start_ns): events per kind, errors, its parent
(the header's ppid in its first event), its argv (its last successful
exec), and from its exit event (when exit is traced) its exit code or
signal and lifetime.  At most `keep` processes are kept; the events of
the others are counted together, as "other".
"""
from __future__ import annotations

import collections

from rbtrace import fields

KEEP = 10_000       # processes kept with their own counts; the rest are "other"
SHOWN = 20          # lines of the per-process table on stderr


def value_counts(col) -> list:
    """(value, count) of each distinct value of a numpy column, as Python
    values.  A storm repeats one value: then one compare, not the sort
    np.unique does."""
    import numpy as np
    first = col[0]
    if bool((col == first).all()):
        return [(first.item(), len(col))]
    values, counts = np.unique(col, return_counts=True)
    return list(zip(values.tolist(), counts.tolist()))


def exit_error(status: int):
    """A process end's failure as an error name ("exit 3", "SIGKILL"), or
    None for exit code 0."""
    from rbtrace.fields import exit_code, signal_name
    if status == 0:
        return None
    code = exit_code(status)
    return f"exit {code}" if code is not None else signal_name(status)


class Process:
    __slots__ = ("pid", "start_ns", "ppid", "comm", "argv", "events", "kinds", "errors",
                 "status", "duration_ns", "order")

    def __init__(self, pid, start_ns, ppid, comm, order):
        self.pid, self.start_ns, self.ppid, self.comm = pid, start_ns, ppid, comm
        self.argv = None
        self.events = 0
        self.kinds = collections.Counter()
        self.errors = collections.Counter()
        self.status = None          # the wait status, from its exit event
        self.duration_ns = None
        self.order = order


def _text(raw: bytes) -> str:
    return raw.partition(b"\0")[0].decode("utf-8", "replace")


class ProcessSummary:
    """Counts per process and per kind over every delivered record.
    `ends_traced`: whether a kind that ends processes (Spec.process_end)
    is traced (else a process without an end event is "unknown", not
    "running")."""

    def __init__(self, ends_traced: bool, keep: int = KEEP):
        self.keep = keep
        self.ends_traced = ends_traced
        self.procs = {}                         # (pid, start_ns) -> Process
        self.kinds = {}                         # kind -> [events, Counter of errors]
        self.other_processes = set()            # keys not kept, at most `keep` of them
        self.other_events = 0
        self._other_keys_full = False

    # --- counting ------------------------------------------------------------

    def add(self, spec, records, decode=None):
        """Count one segment of records of the kind `spec` declares.
        `decode(mask)`: the decoded events of records[mask], for a kind
        whose events give argv (spec.process_argv)."""
        n = len(records)
        if not n:
            return
        names = records.dtype.names
        kind = spec.name
        k = self.kinds.get(kind)
        if k is None:
            k = self.kinds[kind] = [0, collections.Counter()]
        k[0] += n
        if "pid" not in names or "proc_start_ns" not in names:
            return                  # no header (not a record of rbtrace's own)
        pid, start = records["pid"], records["proc_start_ns"]
        p0, s0 = pid[0], start[0]
        if bool((pid == p0).all()) and bool((start == s0).all()):
            # A storm from one process: one group, no sort.
            keys = [(int(p0), int(s0))]
            first = [0]
            counts = [n]
            inverse = None
        else:
            import numpy as np
            both = np.empty(n, dtype=[("s", "u8"), ("p", "i8")])
            both["s"] = start
            both["p"] = pid
            uniq, first, inverse, counts = np.unique(both, return_index=True,
                                                     return_inverse=True, return_counts=True)
            keys = list(zip(uniq["p"].tolist(), uniq["s"].tolist()))
            first, counts = first.tolist(), counts.tolist()
        procs = self._groups(keys, first, counts, kind, records)
        # Errors: a negative ret is an errno; an exit's non-zero status.
        errs = None
        if spec.process_end is not None and spec.process_end in names:
            self._exits(procs, inverse, records, records[spec.process_end], k[1])
        elif "ret" in names and records.dtype["ret"].kind == "i":
            ret = records["ret"]
            r0 = ret[0]
            if inverse is None and bool((ret == r0).all()):
                # A storm repeats one result: two numpy calls in all.
                name = fields.errno_name(int(r0))
                if name:
                    k[1][name] += n
                    if procs[0] is not None:
                        procs[0].errors[name] += n
            else:
                bad = ret < 0
                if bool(bad.any()):
                    errs = (ret[bad], None if inverse is None else inverse.reshape(-1)[bad])
        if errs is not None:
            self._errors(k[1], procs, *errs)
        if spec.process_argv and decode is not None and "ret" in names:
            self._execs(records, decode)

    def _groups(self, keys, first, counts, kind, records):
        """The Process of each group (None: counted as other), with its events."""
        procs = []
        table = self.procs
        ppid = records["ppid"]
        comm = records["comm"]
        for key, i, c in zip(keys, first, counts):
            p = table.get(key)
            if p is None:
                if len(table) < self.keep:
                    p = table[key] = Process(key[0], key[1], int(ppid[i]), _text(comm[i]),
                                             len(table))
                else:
                    self._other(key, c)
                    procs.append(None)
                    continue
            p.events += c
            p.kinds[kind] += c
            procs.append(p)
        return procs

    def _other(self, key, count):
        self.other_events += count
        if not self._other_keys_full:
            self.other_processes.add(key)
            # The count of other processes stays exact up to keep more; after
            # that it is a lower bound (said by "at least" on stderr).
            if len(self.other_processes) >= self.keep:
                self._other_keys_full = True

    def _errors(self, kind_errors, procs, ret, group):
        """Count errors (negative ret values) per kind and per process."""
        if group is None:
            for v, c in value_counts(ret):
                name = fields.errno_name(v)
                if not name:            # below -4095: not an error number
                    continue
                kind_errors[name] += c
                if procs[0] is not None:
                    procs[0].errors[name] += c
            return
        import numpy as np
        pairs = np.empty(len(ret), dtype=[("g", "i8"), ("r", "i8")])
        pairs["g"] = group
        pairs["r"] = ret
        uniq, counts = np.unique(pairs, return_counts=True)
        for g, v, c in zip(uniq["g"].tolist(), uniq["r"].tolist(), counts.tolist()):
            name = fields.errno_name(v)
            if not name:
                continue
            kind_errors[name] += c
            if procs[g] is not None:
                procs[g].errors[name] += c

    def _exits(self, procs, inverse, records, status, kind_errors):
        """Exit events: one per process, so a loop over them is one over
        processes.  Its status and lifetime, and a non-zero status as an
        error of the exit kind."""
        status = status.tolist()
        ts = records["ts_ns"].tolist()
        comm = records["comm"]
        groups = [0] * len(status) if inverse is None else inverse.reshape(-1).tolist()
        for i, g in enumerate(groups):
            name = exit_error(status[i])
            p = procs[g]
            if name is not None:
                kind_errors[name] += 1
                if p is not None:
                    p.errors[name] += 1
            if p is not None:
                p.status = status[i]
                p.duration_ns = ts[i] - p.start_ns
                p.comm = _text(comm[i])

    def _execs(self, records, decode):
        """A successful exec gives its process a new argv and comm."""
        ok = records["ret"] == 0
        if not bool(ok.any()):
            return
        for e in decode(ok):
            p = self._find(e)
            if p is not None:
                p.argv = list(e.get("argv") or ())
                p.comm = e.get("comm", p.comm)

    def _find(self, e):
        # The process key's last two parts are start_ns and pid.
        _, start, pid = e["process"].rsplit("-", 2)
        return self.procs.get((int(pid), int(start)))

    # --- the result ----------------------------------------------------------

    def parents(self) -> dict:
        """{process key: its parent's key, or None}: the kept process with
        pid == ppid that started last before it."""
        by_pid = collections.defaultdict(list)
        for key in self.procs:
            by_pid[key[0]].append(key[1])
        out = {}
        for key, p in self.procs.items():
            starts = [s for s in by_pid.get(p.ppid, ()) if s <= p.start_ns]
            out[key] = (p.ppid, max(starts)) if starts else None
        return out

    def state(self, p) -> str:
        if p.status is not None:
            return "exited"
        return "running" if self.ends_traced else "unknown"

    def result(self, boot=None) -> dict:
        """The summary record's members: kinds, processes, processes_other."""
        from rbtrace.fields import exit_code, signal_name
        boot = fields.boot_id() if boot is None else boot

        def name(key):
            return f"{boot}-{key[1]}-{key[0]}"

        parents = self.parents()
        procs = []
        for key, p in self.procs.items():
            parent = parents[key]
            procs.append({
                "process": name(key), "pid": p.pid, "ppid": p.ppid,
                "parent": name(parent) if parent is not None else None,
                "comm": p.comm, "argv": p.argv, "events": p.events,
                "kinds": dict(p.kinds), "errors": dict(p.errors),
                "state": self.state(p),
                "exit_code": exit_code(p.status) if p.status is not None else None,
                "signal": signal_name(p.status) if p.status is not None else None,
                "duration_ns": p.duration_ns,
            })
        return {
            "kinds": {k: {"events": v[0], "errors": dict(v[1])} for k, v in self.kinds.items()},
            "processes": procs,
            "processes_other": {"processes": len(self.other_processes),
                                "events": self.other_events},
        }


# --- stderr ------------------------------------------------------------------

def _state_text(p) -> str:
    from rbtrace.fields import age_text
    if p["state"] != "exited":
        return p["state"]
    how = f"exit {p['exit_code']}" if p["signal"] is None else p["signal"]
    return f"{how} {age_text(p['duration_ns'])}"


def _errors_text(errors: dict, n=2) -> str:
    top = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    # "exit 3" has a space: "exit 3×1" reads as one error counted once.
    return ", ".join(f"{k}×{v}" for k, v in top)


def table_lines(s: dict, tree: bool, shown: int = SHOWN, width: int = 100) -> list:
    """The per-kind line and the per-process table for stderr, or [] when
    one process and one kind were traced.  `tree`: processes in tree order
    (parents before their children, indented), else the top by events."""
    procs = s.get("processes") or []
    kinds = s.get("kinds") or {}
    other = s.get("processes_other") or {}
    if len(procs) + other.get("processes", 0) <= 1 and len(kinds) <= 1:
        return []
    lines = ["rbtrace: per kind: " + "; ".join(
        f"{k} {v['events']}" + (f" (errors: {_errors_text(v['errors'], 5)})" if v["errors"] else "")
        for k, v in kinds.items())]
    if tree:
        children = collections.defaultdict(list)
        keys = {p["process"] for p in procs}
        roots = []
        for p in procs:
            if p["parent"] in keys and p["parent"] != p["process"]:
                children[p["parent"]].append(p)
            else:
                roots.append(p)
        order = []
        stack = [(p, 0) for p in reversed(roots)]
        while stack:
            p, depth = stack.pop()
            order.append((p, depth))
            stack.extend((c, depth + 1) for c in reversed(children[p["process"]]))
        how = "as a tree"
    else:
        order = [(p, 0) for p in sorted(procs, key=lambda p: -p["events"])]
        how = "the most events first"
    lines.append(f"rbtrace: per process ({len(procs)}, {how}):")
    lines.append(f"{'PID':>7} {'PPID':>7} {'EVENTS':>7} {'STATE':<16} {'ERRORS':<22} COMMAND")
    for p, depth in order[:shown]:
        command = " ".join(p["argv"]) if p["argv"] else f"[{p['comm']}]"
        command = ("  " * depth + ("└ " if depth else "")) + fields.escape_str(command)
        if len(command) > width:
            command = command[:width - 1] + "…"
        lines.append(f"{p['pid']:>7} {p['ppid']:>7} {p['events']:>7} {_state_text(p):<16} "
                     f"{_errors_text(p['errors']):<22} {command}".rstrip())
    if len(order) > shown:
        lines.append(f"rbtrace: {len(order) - shown} more processes not shown (all are in "
                     f"the JSON summary)")
    if other.get("processes"):
        # Other processes are told apart up to as many as were kept.
        many = "at least " if other["processes"] >= len(procs) else ""
        lines.append(f"rbtrace: {many}{other['processes']} more processes beyond the first "
                     f"{len(procs)} counted together: {other['events']} events")
    return lines
