"""The engine: drain a loaded probe's ring in batches, render, account.

load() compiles (or takes from the cache), loads and attaches a probe and
maps its ring; Session runs the loop over what it is given, so that the
loop is tested without the kernel (tests/unit/test_session_loop.py).

Loss accounting is exact: the probe counts every ring reservation that
failed and every entry it could not store; user space counts what it
delivered.  At the end the probe is detached first, the ring drained, and
then the counters read, so  submitted == delivered (+ cut by --count)  and
seen == submitted + dropped.
"""
import collections
import math
import os
import select
import signal
import sys
import threading
import time

from rbtrace.errors import Exit, OutputError

STATS_INTERVAL = 0.1      # footer / lost-record cadence, seconds

# Signals whose default action would end rbtrace with nothing drained or
# summarised: each stops the run the same way (drain, summary, exit 128 +
# the signal), and with `-- CMD` is first passed on to CMD (follow.SignalFd).
# SIGALRM is here because a pending alarm(2) survives exec: one set by
# whatever started rbtrace ends it as a SIGTERM would.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM)


def stop_signals():
    """STOP_SIGNALS less a SIGHUP ignored when rbtrace started: under
    nohup(1) a hang-up stays ignored, as a shell leaves it."""
    return tuple(s for s in STOP_SIGNALS
                 if not (s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN))
BATCH_WAIT = 0.002        # seconds a small batch may wait to grow
NUMPY_IDLE_S = 0.05       # no event this long after attaching: import numpy then


def keep_freed_memory(mmap_max=8 << 20, trim_max=16 << 20):
    """Keep the blocks a batch frees for the next batch, with fixed glibc
    thresholds.  A storm's batch allocates blocks of hundreds of KiB to a
    few MiB (numpy columns, the JSON lines), frees them, and the next batch
    allocates them again.  glibc gives a freed block over its mmap threshold
    (128 KiB at first) back to the kernel, and the next batch page-faults it
    in again, unless an earlier free happened to raise that threshold: which
    one depends on everything the process allocated before, so the same
    decoding cost 0.2 s of system time and 200,000 page faults per million
    open events in one build and nothing in another (measured on
    `rbtrace open --json` under benchmarks/storm.c).  At most `trim_max`
    bytes freed stay in the heap.  Not glibc (no mallopt): nothing done."""
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, mmap_max)
    mallopt(M_TRIM_THRESHOLD, trim_max)


class Tally:
    """Top commands, files and errors over every delivered event, counted
    per batch with numpy so the table need not decode what it doesn't show.
    Keys come from the probe's `tally` = ((name, column), ...); a column
    named "ret" counts errno names of negative values."""

    def __init__(self, spec):
        self.spec = spec
        self.counts = {name: collections.Counter() for name, _ in spec}

    def add(self, records):
        from rbtrace import fields
        from rbtrace.codec import cstr
        from rbtrace.procsum import value_counts
        names = records.dtype.names
        for name, column in self.spec:
            if column not in names:
                continue
            col = records[column]
            if column == "ret":
                col = col[col < 0]
            if not len(col):
                continue
            counter = self.counts[name]
            if column == "path":
                self._add_paths(counter, col, records["path_len"])
                continue
            for v, c in value_counts(col):
                key = fields.errno_name(v) if column == "ret" else cstr(v)
                counter[key] += c

    @staticmethod
    def _add_paths(counter, col, lengths):
        """Count paths: the bytes before path_len.  The rest of a ring slot
        is whatever the ring held before, so the column as numpy has it would
        tell one path from itself.  Counted only for the live table: a copy
        of the used bytes, and one comparison when a storm repeats a path."""
        import numpy as np
        lengths = lengths.astype(np.int64)
        width = int(lengths.max()) if len(lengths) else 0
        if width == 0:
            return
        used = col.astype(f"S{width}")             # the first `width` bytes of each
        grid = used.view(np.uint8).reshape(len(used), width)
        grid[np.arange(width) >= lengths[:, None]] = 0
        if bool((grid == grid[0]).all()):
            pairs = [(used[0].tobytes().rstrip(b"\0"), len(used))]
        else:
            pairs = collections.Counter(used.tolist()).items()
        for key, c in pairs:
            if key:                                  # an unreadable path is no file
                counter[key] += c

    def top(self, name, n=5):
        return self.counts[name].most_common(n)


def kind_specs(probe) -> tuple:
    """The specs of the kinds a run traces: a trace.TraceCodec's codecs',
    or the one codec's (none for a codec without one)."""
    codecs = getattr(probe, "codecs", None) or [probe]
    return tuple(c.spec for c in codecs if getattr(c, "spec", None) is not None)


def load(probe, ring_bytes, use_cache=True, debug=False):
    """(LoadedProbe, RingConsumer): `probe` compiled, or taken from the
    compile cache unless `use_cache` is False, loaded and attached, and
    its ring of `ring_bytes` mapped, for Session.  Session.run closes both."""
    from rbtrace.bpf import LoadedProbe
    from rbtrace.ringbuf import RingConsumer
    loaded = LoadedProbe(probe.source_path(), dict(probe.cflags()), probe.event_structs,
                         debug=debug, tracepoints=probe.tracepoints,
                         cost_hint=probe.cost_hint,
                         ring_bytes=ring_bytes, use_cache=use_cache,
                         kernel_types=probe.kernel_types,
                         config=probe.run_config())
    return loaded, RingConsumer(loaded.ring_fd, ring_bytes, loaded.event_types)


def load_run(probe, ring_bytes, use_cache=True, debug=False):
    """(bpf.LoadedRun, RingConsumer) for `rbtrace trace`: the probes of
    `probe` (a trace.TraceCodec), each compiled or taken from the cache on
    its own, loaded into one run that shares one ring, and that ring mapped."""
    from rbtrace.bpf import LoadedRun
    from rbtrace.ringbuf import RingConsumer
    loaded = LoadedRun(probe.probe_args(), ring_bytes, use_cache=use_cache, debug=debug)
    try:
        return loaded, RingConsumer(loaded.ring_fd, ring_bytes, loaded.event_types)
    except BaseException:
        loaded.close()
        raise


class Session:
    """The loop over one loaded probe.  `loaded`: a bpf.LoadedProbe, or
    anything with its counters(), prog_misses(), follow(), followed_pids(),
    detach() and close(); `ring`: a ringbuf.RingConsumer over its ring (or
    one alike).  Session.run owns both: it detaches and closes them.
    `follow`: a follow.Command or follow.RunningProcess, or None."""

    def __init__(self, probe, renderer, loaded, ring, count=None, duration=None, follow=None,
                 exporter=None):
        self.probe = probe
        self.exporter = exporter    # otlp.Exporter (--otlp): every event goes there too
        self.loaded = loaded
        self.ring = ring
        self.follow = follow        # follow.Command or follow.RunningProcess
        self.command_error = None
        self.output_error = None    # OutputError: writing the output failed
        self._followed_running = 0
        self.renderer = renderer
        self.count = count
        self.duration = duration
        self.delivered = 0
        self.stop_reason = None
        self._reported = {}         # losses already reported, by kind
        # What only the live table's summary view shows costs more per
        # event than the other modes can spend (see open's SPEC.table_tally).
        self.tally = Tally(probe.tally + (probe.table_tally
                                          if getattr(renderer, "shows_tally", False) else ()))
        from rbtrace.procsum import ProcessSummary
        self.procs = ProcessSummary(ends_traced=any(s.process_end for s in kind_specs(probe)))
        # Importing numpy takes longer than loading a cached probe.  JSON
        # lines of a kind whose codec decodes without it (Codec.rows) are
        # written from the first records on; a thread imports it once the
        # first events are out (or after NUMPY_IDLE_S without any), and the
        # records written before are counted (tally, procsum) once it is there.
        self._early = []            # (event type, [payload bytes]) written before numpy
        self._numpy_ready = None    # threading.Event while numpy is being imported
        self._rows = (getattr(renderer, "wants_bytes", False) and getattr(probe, "rows", False)
                      and "numpy" not in sys.modules and exporter is None)

    def _on_signal(self, signum, frame):
        self.stop_reason = self.stop_reason or signum

    def _on_command_signals(self):
        """A stop signal while following `-- CMD` (see follow.SignalFd):
        CMD's to decide, as a shell leaves them to its foreground job;
        rbtrace goes on until CMD exits.  Once it has, they stop rbtrace."""
        for signum, from_kernel in self._sigfd.read():
            if not self.follow.forward(signum, from_kernel):
                self.stop_reason = self.stop_reason or signum

    def _import_numpy(self):
        """Import numpy in a thread; the loop decodes without it until then.
        Meanwhile the GIL changes hands every 0.1 ms instead of 5: the loop
        (woken by the ring, a signal) waits for it no longer than that."""
        ready = self._numpy_ready = threading.Event()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.0001))

        def work():
            # Signals are the main thread's: blocked here, and so in every
            # thread numpy's libraries start from here, where one would be
            # delivered and lost to the session (follow.SignalFd reads the
            # stop signals blocked in the main thread; a thread that does
            # not block them takes them instead).
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                import numpy  # noqa: F401
            except BaseException:     # the main thread's own import says why
                pass
            finally:
                sys.setswitchinterval(interval)
                ready.set()
        self._numpy_thread = threading.Thread(target=work, name="rbtrace-numpy", daemon=True)
        self._numpy_thread.start()

    def _with_numpy(self):
        """From now on numpy decodes: count what was written without it."""
        if self._numpy_ready is not None:
            self._numpy_thread.join()
            self._numpy_ready = None
        self._rows = False
        early, self._early = self._early, []
        if not early:
            return
        import numpy as np
        for et, payloads in early:
            # The records as one buffer, laid out as numpy reads them.
            buf = b"".join(payloads)
            records = np.frombuffer(buf, dtype=et.dtype, count=len(payloads))
            offsets = np.arange(len(payloads), dtype=np.int64) * et.size
            self.tally.add(records)
            self._count_processes(et, records, offsets, memoryview(buf))

    def run(self) -> int:
        keep_freed_memory()
        loaded, ring = self.loaded, self.ring
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signals = stop_signals()
        self._pidfd = self._sigfd = None
        if self.follow is not None and self.follow.waits_for_end:
            # Blocked before any handler is in place: no stop signal can end
            # the run between here and CMD's release, letting CMD go untraced;
            # each waits in the fd and is forwarded once CMD runs.
            from rbtrace.follow import SignalFd
            self._sigfd = SignalFd(signals)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in signals}
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        poller = select.epoll()
        poller.register(ring.fd, select.EPOLLIN)
        poller.register(wake_r, select.EPOLLIN)
        self._wake_r = wake_r
        self._inputs = set(self.renderer.input_fds())
        for fd in self._inputs:
            poller.register(fd, select.EPOLLIN)
        # A pipe on stdout reports EPOLLERR once its reader is gone (`| head
        # -1`): stop then, even if no event ever comes to fail a write.
        self._out_fd = self.renderer.output_fd()
        if self._out_fd is not None:
            try:
                poller.register(self._out_fd, 0)
            except OSError:       # a regular file or tty can't be polled that way
                self._out_fd = None
        if self.follow is not None:
            self._seed(loaded)
            self._pidfd = self.follow.pidfd
            poller.register(self._pidfd, select.EPOLLIN)
        if self._sigfd is not None:
            poller.register(self._sigfd.fd, select.EPOLLIN)
        self.started = time.monotonic()
        try:
            try:
                from rbtrace.fields import identity
                me = identity()
                self.renderer.start({"probe": self.probe.name,
                                     "rbtrace_version": me["rbtrace_version"],
                                     "hostname": me["hostname"], "boot_id": me["boot_id"],
                                     "kernel": me["kernel"], "ring_bytes": ring.size,
                                     "filters": self.probe.options.get("filters_text", "")})
            except OutputError as e:
                self._output_failed(e)
            if self.follow is not None:
                if self.output_error is None:
                    self._release()
                else:
                    self.follow.abandon()   # never ran; it must not run untraced
            self._loop(loaded, ring, poller)
            followed = {}
            if self.follow is not None:
                # q in the table of a command on a terminal of its own
                # closes that terminal: CMD is hung up as by a closed window.
                if self.output_error is not None or (
                        self.stop_reason == "quit" and self._own_terminal()):
                    self._hang_up(loaded)
                # Followed processes still alive now, taken while the exit
                # hook keeps the map exact; those still running when rbtrace
                # ends are counted then (followed_running).
                followed = self._followed_alive(loaded)
            # Stop the producers, then deliver everything already in the ring.
            loaded.detach()
            if self.stop_reason not in ("count", "output closed", "output error"):
                self._drain_after_detach(loaded, ring)
            if self.follow is not None and self.follow.waits_for_end and not self.follow.exited():
                self._wait_for_command(poller)
            if self.follow is not None:
                self._followed_running = self._still_running(followed)
            self._with_numpy()
            if self.exporter is not None:
                self.exporter.close()       # at most --otlp-timeout; the rest is dropped
            summary = self._summary(loaded)
            if (self._own_terminal() and hasattr(self.renderer, "ended")
                    and self.output_error is None and not self._quit_asked
                    and self.stop_reason != "quit" and not isinstance(self.stop_reason, int)):
                self._linger(poller, summary)
        finally:
            # Our handlers stay until BCC has cleaned up: a SIGINT landing in
            # the middle of its cleanup made it free a module twice (-11).
            try:
                poller.close()
                ring.close()
                loaded.close()
            finally:
                if self._sigfd is not None:
                    self._sigfd.close()     # what is still waiting goes to _on_signal
                signal.set_wakeup_fd(old_wakeup)
                for s, h in old_handlers.items():
                    signal.signal(s, h)
                os.close(wake_r)
                os.close(wake_w)
                if self._numpy_ready is not None:     # not left importing at exit
                    self._numpy_thread.join()
        self.summary = summary
        try:
            self.renderer.close(summary)
        except OutputError as e:
            self._output_failed(e)
        if self.output_error is not None:
            return Exit.OUTPUT
        if self.command_error is not None:
            return self.command_error.exit_code
        if self.follow is not None and self.follow.waits_for_end:
            return summary["command"]["status"]
        if isinstance(self.stop_reason, int):       # a stop signal: as a shell reports it
            return 128 + self.stop_reason
        return Exit.OK

    def _own_terminal(self):
        """Whether CMD runs on a terminal of its own (--table -- CMD)."""
        return getattr(self.follow, "terminal", None) is not None

    def _seed(self, loaded):
        """Put the followed roots in the kernel's map, and for a running
        process the descendants it already has.  Probes are attached, so a
        fork from now on is followed by the kernel; a child forked while
        its parent was not yet in the map is found by scanning again."""
        from rbtrace.follow import descendants
        roots = self.follow.roots()
        loaded.follow(roots)
        if self.follow.released:            # already running: --pid --children
            seen = set()
            while True:
                new = descendants(roots) - seen
                if not new:
                    break
                loaded.follow(new)
                seen |= new

    def _release(self):
        from rbtrace.errors import CommandError
        try:
            self.follow.release()
        except CommandError as e:           # exec failed: its event is still shown
            self.command_error = e

    def _output_failed(self, error):
        """A write to the output failed: stop, and write nothing more.  The
        first error is the one reported."""
        self.output_error = self.output_error or error
        self.stop_reason = "output error"
        self.renderer.output_failed()

    def _hang_up(self, loaded):
        """The output failed while `-- CMD` was traced: CMD must not go on
        untraced.  As a shell does with its jobs when its terminal hangs up,
        send SIGHUP, then SIGCONT (for a stopped one), to every followed
        process; rbtrace then waits for CMD as usual.  The probes are still
        attached, so a child forked meanwhile is in the map too: repeat
        until no new one appears.  Not for --pid --children: that process
        was running before rbtrace, and goes on as it did."""
        if not (self.follow.waits_for_end and self.follow.released) or self.follow.exited():
            return
        signalled = set()
        while True:
            new = sorted(loaded.followed_pids() - signalled)
            if not new:
                break
            for i in range(0, len(new), 256):        # a few pidfds open at a time
                # A pidfd, and the pid still in the map after it was opened:
                # the followed process, not a new one that took its pid.
                pidfds = {}
                for pid in new[i:i + 256]:
                    try:
                        pidfds[pid] = os.pidfd_open(pid)
                    except OSError:
                        pass                # gone already
                in_map = loaded.followed_pids()
                for pid, pidfd in pidfds.items():
                    try:
                        if pid in in_map:
                            for sig in (signal.SIGHUP, signal.SIGCONT):
                                signal.pidfd_send_signal(pidfd, sig)
                    except ProcessLookupError:
                        pass
                    finally:
                        os.close(pidfd)
            signalled.update(new)
        self._hung_up = signalled

    _hung_up = ()
    _quit_asked = False         # q while waiting for CMD after tracing stopped

    def _followed_alive(self, loaded):
        """{pid: start time} of the followed processes alive now."""
        from rbtrace.follow import start_times
        alive = start_times(loaded.followed_pids())
        # Only those still in the map after their start time was read: the
        # same processes, not a new one that took a pid meanwhile.
        in_map = loaded.followed_pids()
        return {pid: t for pid, t in alive.items() if pid in in_map}

    def _still_running(self, followed):
        """How many of `followed` (from _followed_alive) still run now.
        Processes just sent SIGHUP by _hang_up get a moment to die of it."""
        from rbtrace.follow import start_times
        tries = 100 if self._hung_up else 1
        while True:
            now = start_times(followed)
            running = sum(1 for pid, t in now.items() if followed[pid] == t)
            tries -= 1
            if not running or not tries:
                return running
            time.sleep(0.01)

    def _wait_for_command(self, poller):
        """Tracing stopped early (--count, --duration, closed output): the
        exit status is still CMD's, so wait for it, still forwarding signals
        (and reading CMD's terminal, whose output must not fill up)."""
        while not self.follow.exited():
            for fd, _ in poller.poll(1.0):
                if fd == self._sigfd.fd:
                    self._on_command_signals()
                elif fd == self._pidfd:
                    self.follow.reap()
                elif fd in self._inputs:
                    # q in the table while CMD runs on a terminal of its
                    # own: that terminal hung up.  (Not _hang_up: with the
                    # probes detached the map no longer drops pids that exit.)
                    if self._on_input(poller, fd) == "quit" and self._own_terminal():
                        self.follow.hang_up()
                        self._quit_asked = True     # and the table does not stay
                elif fd == self._wake_r:
                    self._drain_wakeups()

    def _on_input(self, poller, fd):
        """The renderer's input fd is readable (keys, CMD's terminal): its
        answer, "quit" for q.  One that has reached its end ("eof") is
        polled no more: it would be readable for ever."""
        what = self.renderer.on_input(fd)
        if what == "eof":
            self._inputs.discard(fd)
            poller.unregister(fd)
        return what

    def _linger(self, poller, summary):
        """The table of a command run on a terminal of its own (--table --
        CMD) stays once the run has ended, the command's exit status in its
        footer, until q (or a stop signal): what it shows is what the user
        came for.  The probes are detached: nothing is counted any more;
        the command's terminal is still read (its background children)."""
        for fd in (self.ring.fd, self._pidfd):
            try:
                poller.unregister(fd)
            except (OSError, ValueError, TypeError):
                pass
        self.renderer.ended(summary)
        while True:
            for fd, _ in poller.poll(0.2):
                if fd in self._inputs:
                    if self._on_input(poller, fd) == "quit":
                        return
                elif fd == self._wake_r:
                    self._drain_wakeups()
                elif self._sigfd is not None and fd == self._sigfd.fd:
                    if self._sigfd.read():
                        return
            self.renderer.tick(self.renderer.stats)

    def _loop(self, loaded, ring, poller):
        next_stats = 0.0
        batch_bytes = ring.size // 64       # "little is waiting" below this
        deadline = self.started + self.duration if self.duration else None
        while self.stop_reason is None:
            now = time.monotonic()
            if deadline and now >= deadline:
                self.stop_reason = "duration"
                break
            if self._rows and self._numpy_ready is None and (
                    self.delivered or now >= self.started + NUMPY_IDLE_S):
                self._import_numpy()       # the first events are out, or none came
            timeout = 0.0          # data waiting: only look at keys and signals
            if ring.pending() == 0:
                timeout = max(0.0, next_stats - now)
                if deadline:
                    timeout = min(timeout, deadline - now)
                if self._rows and self._numpy_ready is None:
                    timeout = min(timeout, max(0.0, self.started + NUMPY_IDLE_S - now))
            for fd, ev in poller.poll(timeout):
                if fd == self._wake_r:
                    self._drain_wakeups()
                elif fd in self._inputs:
                    if self._on_input(poller, fd) == "quit":
                        self.stop_reason = "quit"
                elif fd == self._out_fd and ev & (select.EPOLLERR | select.EPOLLHUP):
                    self.stop_reason = "output closed"
                    self.renderer.output_gone()
                elif self._sigfd is not None and fd == self._sigfd.fd:
                    self._on_command_signals()
                elif fd == self._pidfd:
                    self.follow.reap()
                    self.stop_reason = self.stop_reason or self.follow.end_reason
            if self.stop_reason is None:
                self._drain(ring, deadline=deadline or math.inf)
                # Under a storm the ring always holds something, and draining
                # it as soon as it does makes batches of a few dozen records
                # whose fixed cost (numpy calls, one write) dominates.  When
                # little is waiting, let a batch build up for a moment; the
                # ring has room for far more than BATCH_WAIT of any rate.
                if 0 < ring.pending() < batch_bytes:
                    time.sleep(BATCH_WAIT)
            now = time.monotonic()
            if now >= next_stats:
                self._report(loaded, ring, now)
                next_stats = now + STATS_INTERVAL

    def _drain_wakeups(self):
        """Empty the signal wake-up pipe: a signal that does not stop the
        run (SIGUSR1, SIGWINCH) leaves its byte there, and a pipe left
        readable would make every poll return at once (a busy loop)."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _drain_after_detach(self, loaded, ring):
        """Drain until every submitted record is delivered.  A program that
        was running on another CPU when it was detached may still submit
        for a moment; wait for it (bounded) rather than lose it.  It counts
        a record only after committing it, so a record it has reserved but
        not yet committed shows in the ring (pending), not in the counter."""
        for _ in range(200):
            self._drain(ring)
            if ((loaded.counters()[0] == self.delivered and ring.pending() == 0)
                    or self.stop_reason in ("count", "output closed", "output error")):
                return
            time.sleep(0.001)

    def _drain(self, ring, deadline=None):
        """Deliver what the ring holds.  With a `deadline` (the main loop),
        stop early once it has passed or a stop was asked for: what is left
        is delivered after detaching (_drain_after_detach), not lost."""
        try:
            self._drain_segments(ring, deadline)
        except OutputError as e:
            self._output_failed(e)
        except BrokenPipeError:
            # The reader went away: nothing more can be delivered.  Stop, and
            # keep the interpreter from complaining when it flushes stdout.
            self.stop_reason = "output closed"
            self.renderer.output_gone()

    def _drain_segments(self, ring, deadline=None):
        if self._rows:
            if self._numpy_ready is None or not self._numpy_ready.is_set():
                self._drain_payloads(ring, deadline)
                return
            self._with_numpy()
        for et, records, offsets, data in ring.segments():
            if deadline is not None and (self.stop_reason is not None
                                         or time.monotonic() >= deadline):
                break       # this segment stays in the ring, unconsumed
            n = len(records)
            if self.count is not None and self.delivered + n >= self.count:
                keep = self.count - self.delivered
                records, offsets = records[:keep], offsets[:keep]
                n = keep
                self.stop_reason = "count"
            try:
                if self.exporter is not None:
                    self._export_and_render(et, records, offsets, data, n)
                else:
                    self._render(et, records, offsets, data, n)
            except OutputError as e:
                # One line per event, and only whole lines are kept: the
                # first lines_kept events are out, the others are not.
                self.tally.add(records[:e.lines_kept])
                self._count_processes(et, records[:e.lines_kept], offsets[:e.lines_kept], data)
                self.delivered += e.lines_kept
                raise
            self.tally.add(records)
            self._count_processes(et, records, offsets, data)
            self.delivered += n
            if self.stop_reason == "count":
                break

    def _export_and_render(self, et, records, offsets, data, n):
        """--otlp: the segment decoded once, for the exporter and the
        renderer; with --json each line made once, for both (the lines of
        decode()'s events are json_lines(), byte for byte)."""
        import orjson
        events = self.probe.decode(et, records, offsets, data)
        offset, renderer = self._clock_offset(et), self.renderer
        if renderer.wants_bytes:
            dumps = orjson.dumps
            lines = [dumps(e) for e in events]
            self.exporter.add(events, offset, lines)
            if lines:
                renderer.write_lines(b"\n".join(lines) + b"\n")
            return
        self.exporter.add(events, offset)
        self._render(et, records, offsets, data, n, events)

    def _render(self, et, records, offsets, data, n, events=None):
        """One segment to the renderer, in the form it takes; `events`: the
        segment already decoded (for --otlp), else decoded here if need be."""
        probe, renderer = self.probe, self.renderer
        if renderer.wants_bytes and hasattr(probe, "json_lines"):
            renderer.write_lines(probe.json_lines(et, records, offsets, data))
        elif hasattr(renderer, "keep"):
            # The live table keeps records, decoded when shown or searched.
            renderer.keep(et, records)
        elif renderer.wants_all:
            renderer.events(probe.decode(et, records, offsets, data) if events is None else events)
        else:
            tail = renderer.tail
            renderer.count(n, probe.decode(et, records[-tail:], offsets[-tail:], data)
                           if events is None else events[-tail:])

    def _codec(self, et):
        """The codec that decodes event type `et` (a trace's, or the one)."""
        return self.probe.codec_for(et) if hasattr(self.probe, "codec_for") else self.probe

    def _clock_offset(self, et):
        """REALTIME - MONOTONIC of the codec that decodes `et`: what makes
        its events' `time`."""
        return self._codec(et).clock.offset_ns

    def _drain_payloads(self, ring, deadline=None):
        """_drain_segments() before numpy is imported: records copied out of
        the ring (RingConsumer.payloads) and their JSON lines made without
        numpy (Codec.rows_json_lines), until numpy is there."""
        probe, renderer, ready = self.probe, self.renderer, self._numpy_ready
        runs = ring.payloads()
        while True:
            # Checked before the next run is taken: it is consumed as it comes.
            if deadline is not None and (self.stop_reason is not None
                                         or time.monotonic() >= deadline):
                break       # what is left stays in the ring
            run = next(runs, None)
            if run is None:
                break
            et, payloads = run
            n = len(payloads)
            if self.count is not None and self.delivered + n >= self.count:
                n = self.count - self.delivered
                payloads = payloads[:n]
                self.stop_reason = "count"
            try:
                renderer.write_lines(probe.rows_json_lines(et, payloads))
            except OutputError as e:
                self._early.append((et, payloads[:e.lines_kept]))
                self.delivered += e.lines_kept
                raise
            self._early.append((et, payloads))
            self.delivered += n
            # One run, then the loop starts the import; once it is done, the
            # rest goes the numpy way.
            if self.stop_reason == "count" or ready is None or ready.is_set():
                break

    def _count_processes(self, et, records, offsets, data):
        """The per-process and per-kind counts of the summary (procsum)."""
        codec = self._codec(et)
        spec = getattr(codec, "spec", None)
        if spec is None:
            return

        def decode(mask):
            return codec.decode(et, records[mask], offsets[mask], data)

        self.procs.add(spec, records, decode)

    LOSS_KINDS = ("ringbuf_full", "map_full", "missed_by_kernel", "not_followed")

    @property
    def _loss_kinds(self):
        return self.LOSS_KINDS + (("otlp_dropped",) if self.exporter is not None else ())

    def _losses(self, loaded):
        submitted, ringbuf_full, map_full, not_followed = loaded.counters()
        losses = {"ringbuf_full": ringbuf_full, "map_full": map_full,
                  "missed_by_kernel": loaded.prog_misses(),
                  "not_followed": not_followed}
        if self.exporter is not None:
            losses["otlp_dropped"] = self.exporter.dropped
        return submitted, losses

    def _report_lost(self, losses):
        """A `lost` record with the losses since the last one, if any.
        `dropped` counts events the probe saw but could not deliver;
        `missed_by_kernel` counts probe runs the kernel skipped."""
        kinds = self._loss_kinds
        if all(losses[k] == self._reported.get(k, 0) for k in kinds):
            return
        delta = {k: losses[k] - self._reported.get(k, 0) for k in kinds}
        self._reported = dict(losses)
        otlp = delta.pop("otlp_dropped", None)
        record = {"dropped": delta["ringbuf_full"] + delta["map_full"], **delta,
                  "total_dropped": losses["ringbuf_full"] + losses["map_full"],
                  "total_missed_by_kernel": losses["missed_by_kernel"]}
        if otlp is not None:
            record["otlp_dropped"] = otlp
            record["total_otlp_dropped"] = losses["otlp_dropped"]
        try:
            self.renderer.lost(record)
        except OutputError as e:
            self._output_failed(e)

    def _report(self, loaded, ring, now):
        _, losses = self._losses(loaded)
        self._report_lost(losses)
        elapsed = now - self.started
        if self.exporter is not None:
            self.exporter.tick()
        try:            # a stream's tick may reopen its file (SIGUSR1) and write
            self.renderer.tick({"delivered": self.delivered,
                                "dropped": losses["ringbuf_full"] + losses["map_full"],
                                "otlp_dropped": losses.get("otlp_dropped", 0),
                                "missed_by_kernel": losses["missed_by_kernel"],
                                "rate": self.delivered / elapsed if elapsed > 0 else 0,
                                "ring_fill": ring.fill(), "tally": self.tally,
                                "procs": self.procs})
        except OutputError as e:
            self._output_failed(e)

    def _summary(self, loaded):
        submitted, losses = self._losses(loaded)
        self._report_lost(losses)
        ringbuf_full, map_full = losses["ringbuf_full"], losses["map_full"]
        stop = self.stop_reason
        if isinstance(stop, int):
            stop = signal.Signals(stop).name
        summary = {
            "probe": self.probe.name,
            "seen": submitted + ringbuf_full + map_full,
            "submitted": submitted,
            "delivered": self.delivered,
            "not_delivered_count_reached": submitted - self.delivered if self.stop_reason == "count" else 0,
            "not_delivered_output_closed": (submitted - self.delivered
                                            if self.stop_reason in ("output closed", "output error")
                                            else 0),
            "dropped": ringbuf_full + map_full,
            "ringbuf_full": ringbuf_full,
            "map_full": map_full,
            "missed_by_kernel": losses["missed_by_kernel"],
            "not_followed": losses["not_followed"],
            "discarded": self.ring.discarded if self.ring is not None else 0,
            "duration_s": round(time.monotonic() - self.started, 3),
            "stopped_by": stop or "end",
            "top_errors": dict(self.tally.top("errors")) if "errors" in self.tally.counts else {},
        }
        if self.follow is not None:
            summary.update(self.follow.summary())
            if not self.follow.released:    # abandoned before it could exec
                summary["command"].update(status=None, signal=None)
            summary["followed_running"] = self._followed_running
        if self.exporter is not None:
            # Every event given to the exporter is one or the other.
            summary["otlp_sent"] = self.exporter.sent
            summary["otlp_dropped"] = self.exporter.dropped
        summary.update(self.procs.result())
        return summary
