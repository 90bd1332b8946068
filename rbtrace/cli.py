"""rbtrace's command line: a thin click layer over the engine.

This is the one place where errors become messages and exit codes: the
core raises RbtraceError (with a hint); here it becomes one line on stderr
and Exit.ERROR or Exit.USAGE.  `--debug` (or RBTRACE_DEBUG=1) shows the
traceback instead.
"""
import math
import mmap
import os
import sys

import click

from rbtrace import __version__, fields
from rbtrace.errors import Exit, RbtraceError, UsageError

TASK_COMM_LEN = 16


class SizeType(click.ParamType):
    """A ring size: a power of two and a whole number of pages."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            n = fields.parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if not fields.is_pow2_pages(n, mmap.PAGESIZE):
            self.fail(f"'{fields.for_message(value)}' is not a power of two and a whole number of "
                      f"{mmap.PAGESIZE}-byte pages (try 4M, 16M, 64M)", param, ctx)
        from rbtrace.kernel import RINGBUF_MAX_BYTES
        if n > RINGBUF_MAX_BYTES:
            self.fail(f"'{fields.for_message(value)}' is larger than the largest ring buffer the kernel "
                      f"accepts, {RINGBUF_MAX_BYTES >> 30}G (its size is a 32-bit "
                      f"count of bytes)", param, ctx)
        return n


class FileSizeType(click.ParamType):
    """A number of bytes greater than 0: 4096, 64K, 10M, 1G (binary)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return fields.parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class DurationType(click.ParamType):
    """Seconds: a finite number greater than zero (nan and inf would never
    end, or end at once)."""

    name = "SECONDS"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{fields.for_message(value)}' is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"'{fields.for_message(value)}' is not a number of seconds greater than 0 "
                      f"(finite, e.g. 0.5 or 60)", param, ctx)
        return seconds


class UserType(click.ParamType):
    name = "USER"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return fields.parse_uid(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class OtlpUrlType(click.ParamType):
    """An OTLP/HTTP endpoint: http:// or https://, with a host."""

    name = "URL"

    def convert(self, value, param, ctx):
        from rbtrace.otlp import parse_url
        try:
            parse_url(value)
        except ValueError as e:
            self.fail(fields.for_message(str(e)), param, ctx)
        return value


class CommType(click.ParamType):
    """A process name as the kernel keeps it: at most 15 bytes."""

    name = "COMM"

    def convert(self, value, param, ctx):
        raw = os.fsencode(value)        # argv bytes that are not UTF-8 included
        if not raw or len(raw) >= TASK_COMM_LEN or b"\0" in raw:
            self.fail(f"'{fields.for_message(value)}': a command name is 1 to {TASK_COMM_LEN - 1} bytes "
                      f"(the kernel truncates longer names)", param, ctx)
        return value


class KindsType(click.ParamType):
    """KIND[,KIND...]: kinds rbtrace knows (rbtrace show --kinds)."""

    name = "KINDS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from rbtrace.spec import KINDS
        out = []
        for word in value.split(","):
            word = word.strip()
            if word not in KINDS:
                self.fail(f"unknown kind '{fields.for_message(word)}' (the kinds are "
                          f"{', '.join(KINDS)})", param, ctx)
            if word not in out:
                out.append(word)
        return tuple(out)


def c_string_literal(text) -> str:
    """A C string literal holding exactly these bytes (octal escapes)."""
    raw = text.encode() if isinstance(text, str) else text
    return '"' + "".join(f"\\{b:03o}" for b in raw) + '"'


COMMAND_KEY = "rbtrace.command"


class TraceCommand(click.Command):
    """A probe command: options, its own arguments, then `-- CMD ARGS...`.

    Everything after the first `--` is the command to run and follow, taken
    off before click parses, so that probe commands with arguments of their
    own (tracepoint names, a probe file) can still end with a command."""

    def parse_args(self, ctx, args):
        if "--" in args:
            i = args.index("--")
            args, command = args[:i], args[i + 1:]
            if not command:
                raise click.UsageError("nothing after --: give the command to run "
                                       "(e.g. -- make -j2)", ctx)
            ctx.meta[COMMAND_KEY] = command
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx):
        return super().collect_usage_pieces(ctx) + ["[-- CMD [ARGS]...]"]


def common_options(spec):
    """The options every kind's command has, before its own (spec.options).
    `man` is their text in every kind's man page (rbtrace/mandoc.py); a kind
    words its own with spec.man / adds to it with spec.notes."""
    from rbtrace.spec import Option
    return (
        Option(("--json",), "json_out", is_flag=True,
               help="One JSON object per line (for jq) instead of the table.",
               man="One JSON object per line (see **FIELDS**) instead of the table or plain "
                   "lines."),
        Option(("--table",), "table", is_flag=True,
               help="The live table even with -- CMD: CMD then runs on a terminal of its own.",
               man="The live table, even with a command after **--**, which otherwise gets "
                   "plain lines (the terminal being the command's). The command then runs on a "
                   "pseudo-terminal of its own: key **o** in the table shows its last lines, and "
                   "everything it wrote is written to the terminal when the table closes. Keys "
                   "go to the table, never to the command, which gets no input: an interactive "
                   "command needs plain mode. Needs a terminal on standard input and output; "
                   "not with **--json** or **-o**. See **rbtrace**(8), FOLLOWING A COMMAND."),
        Option(("-c", "--count"), "count", type=click.IntRange(min=1), metavar="N",
               help="Stop after N events.", man="Stop after *N* events (at least 1)."),
        Option(("-d", "--duration"), "duration", type=DurationType(), metavar="SECONDS",
               help="Stop after SECONDS.",
               man="Stop after *SECONDS* (greater than 0), counted from the moment the probes "
                   "are attached."),
        Option(("-p", "--pid"), "pid", type=click.IntRange(1, 2**22), metavar="PID",
               help="Only this process (thread group id).", filter=True, rank=1,
               man="Only this process (thread group id, 1 to 4194304). Checked in the kernel."),
        Option(("--children",), "children", is_flag=True, filter=True, rank=9,
               help="With --pid: also every process it has started or starts, "
                    "followed in the kernel; ends when PID exits.",
               man="With **--pid**: also the processes *PID* has started and still runs, and "
                   "every one started from now on by any of them, followed in the kernel; the "
                   "run ends when *PID* exits. See **rbtrace**(8), FOLLOWING A COMMAND."),
        Option(("-u", "--uid"), "uid", type=UserType(), metavar="USER",
               help="Only this user (name or number).", filter=True, rank=3,
               man="Only this user, a name or a number: the real user id of the calling "
                   "thread. Checked in the kernel."),
        Option(("-n", "--comm"), "comm", type=CommType(), metavar="COMM",
               help="Only processes whose command name is COMM.", filter=True, rank=4,
               man="Only threads whose command name is exactly *COMM* (1 to 15 bytes). "
                   "Checked in the kernel."),
        Option(("--cgroup",), "cgroup", metavar="DIR", filter=True, rank=5,
               help="Only tasks in this cgroup v2 directory or below it.",
               man="Only threads in the cgroup v2 directory *DIR* or in a cgroup below it "
                   "(a path, or one relative to the cgroup v2 mount, which **rbtrace** finds in "
                   "*/proc/self/mountinfo*). Checked in the kernel "
                   "(**bpf_current_task_under_cgroup**), before any event takes room in the "
                   "ring."),
        Option(("--container",), "container", metavar="ID", filter=True, rank=5,
               help="Only tasks of the container whose id starts with ID.",
               man="Only threads of the one container whose id starts with *ID* (hexadecimal, "
                   "as **docker ps** shows it): its cgroup, found by the names of "
                   "**container_id** under the cgroup v2 mount, and the cgroups below it, "
                   "checked in the kernel as for **--cgroup**. When no container or more than "
                   "one matches, **rbtrace** says so and exits with status 2. Not with "
                   "**--cgroup**."),
        # A kind without failed events (tp) keeps -x only to refuse it with
        # the reason, and does not offer it in --help or completion.
        Option(("-x", "--failed"), "failed", is_flag=True, filter=True, rank=8,
               help=spec.failed or "", hidden=spec.failed is None),
        Option(("--ring-size",), "ring_size", type=SizeType(), default=spec.ring,
               show_default=True,
               help="Ring buffer size: a power of two, whole pages (4M, 16M, 64M).",
               man="Ring buffer size: a power of two and a whole number of pages, with an "
                   "optional binary suffix (4M, 16M, 64M)."),
        Option(("--utc",), "utc", is_flag=True,
               help="TIME in UTC instead of local time (JSON time is always UTC).",
               man="Show TIME in UTC instead of local time. JSON always has UTC."),
        Option(("-o", "--output"), "output",
               type=click.Path(dir_okay=False, writable=True), metavar="FILE",
               help="Write events to FILE instead of stdout.",
               man="Write events to *FILE* instead of standard output: JSON with **--json**, "
                   "plain lines otherwise."),
        Option(("--rotate-size",), "rotate_size", type=FileSizeType(), metavar="SIZE",
               help="With -o: rotate FILE before it grows past SIZE (4096, 64K, 10M, 1G).",
               man="With **-o**: before a line would take *FILE* past *SIZE* bytes (a number "
                   "with an optional binary suffix: 4096, 64K, 10M, 1G), rename it *FILE*.1 "
                   "(*FILE*.1 to *FILE*.2 and so on, as **logrotate**(8) numbers them: *FILE*.1 "
                   "is the newest) and go on in a new *FILE*. A file is rotated between two "
                   "lines, never inside one, and each line is in exactly one file. Every file "
                   "begins with a **start** line, its **part** one more than the file before. "
                   "A non-empty *FILE* left by an earlier run is rotated at the start, not "
                   "truncated. **SIGUSR1** reopens *FILE*, with or without this option (see "
                   "**rbtrace**(8), SIGNALS)."),
        Option(("--rotate-keep",), "rotate_keep", type=click.IntRange(min=0), metavar="N",
               help="With --rotate-size: old files kept, FILE.1 to FILE.N (default 5).",
               man="With **--rotate-size**: how many old files to keep, *FILE*.1 to *FILE*.*N* "
                   "(default 5); an older one is removed. 0 keeps none."),
        Option(("--no-cache",), "no_cache", is_flag=True,
               help="Compile the probe even if the compile cache holds it, and store nothing.",
               man="Compile the probe with BCC even when the compile cache holds it, and store "
                   "nothing in the cache (see **rbtrace-cache**(8))."),
        Option(("--debug",), "debug", is_flag=True,
               help="Show tracebacks and compiler output.",
               man="Show tracebacks and the compiler's output, or, for a probe taken from the "
                   "compile cache, a line saying so."),
    ) + otlp_options()


def otlp_options():
    """--otlp and --otlp-timeout (rbtrace/otlp.py)."""
    from rbtrace.spec import Option
    return (
        Option(("--otlp",), "otlp", type=OtlpUrlType(), metavar="URL",
               help="Also send every event to an OpenTelemetry collector: OTLP/HTTP "
                    "(protobuf, gzip) to URL/v1/logs.",
               man="Also send every event, as an OpenTelemetry log record, to *URL*"
                   "**/v1/logs** (*URL* as it is when it ends with **/v1/logs**): OTLP over "
                   "HTTP or HTTPS, protobuf, gzip, in batches, such as an OpenTelemetry "
                   "Collector's otlp receiver takes on port 4318. Combines with **--json** "
                   "and the table, which still get every event; alone, with standard output "
                   "not a terminal, nothing is written there but the events go to *URL*. "
                   "Events the collector does not take are counted (**otlp_dropped**), never "
                   "silently lost. See **rbtrace**(8), OTLP EXPORT."),
        Option(("--otlp-timeout",), "otlp_timeout", type=DurationType(), default=5.0,
               metavar="SECONDS", show_default=True,
               help="At the end, wait at most SECONDS for the OTLP collector to take the "
                    "events not yet sent.",
               man="With **--otlp**: at the end, wait at most *SECONDS* (default 5.0) for the "
                   "collector to take the events not yet sent; those it has not acknowledged "
                   "by then are counted in **otlp_dropped**."),
    )


def _click_option(o) -> click.Option:
    kw = {"help": o.help, "hidden": o.hidden}
    if o.is_flag:
        kw["is_flag"] = True
    else:
        kw.update(type=o.type, metavar=o.metavar, default=o.default,
                  show_default=o.show_default)
    if o.callback is not None:
        kw["callback"] = o.callback
    return click.Option(list(o.flags) + [o.name], **kw)


def _click_argument(a) -> click.Argument:
    kw = {"nargs": a.nargs, "metavar": a.metavar}
    if a.path:
        kw["type"] = click.Path(path_type=str)
    return click.Argument([a.name], **kw)


def kind_command(spec) -> click.Command:
    """The command of a kind, from its spec: the common options, then its own."""
    params = [_click_argument(a) for a in spec.arguments]
    params += [_click_option(o) for o in common_options(spec) + spec.options]

    def callback(**opts):
        if spec.before is not None:
            code = spec.before(opts)
            if code is not None:
                sys.exit(code)
        sys.exit(_run_kind(spec, opts))
    return TraceCommand(spec.name, params=params, callback=callback, help=spec.help)


def trace_command() -> click.Command:
    """`rbtrace trace KIND[,KIND...]`: the common options, and every kind's
    own, each valid only with its kind among KINDS."""
    from click.core import ParameterSource

    from rbtrace import trace
    specs = trace.kind_specs()
    spec = trace.trace_spec(specs)
    _, owners = trace.options_by_owner(specs)
    params = [click.Argument(["kinds"], metavar="KIND[,KIND...]")]
    params += [_click_option(o) for o in common_options(spec) + spec.options]

    def callback(kinds, **opts):
        try:
            names, words = trace.parse_kinds(kinds, specs)
        except ValueError as e:
            raise UsageError(str(e)) from None
        ctx = click.get_current_context()
        for name, of in owners.items():
            given = ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT,
                                                           ParameterSource.DEFAULT_MAP)
            if given and not set(of) & set(names):
                flag = next(o for o in spec.options if o.name == name).flags[-1]
                raise UsageError(f"{flag} is an option of {' and '.join(of)}, which is not "
                                 f"among the kinds traced ({','.join(names)})")
        for name in names:
            if specs[name].before is not None:
                code = specs[name].before(trace.kind_options(specs, name, opts, words))
                if code is not None:
                    sys.exit(code)
        sys.exit(_run_trace(spec, names, words, opts))
    return TraceCommand("trace", params=params, callback=callback, help=spec.help,
                        short_help=spec.summary)


def _run_trace(spec, kinds, words, opts):
    from rbtrace import trace
    from rbtrace.session import load_run

    resolve_cgroup(opts)
    target = _follow_target(opts)
    opts["follow"] = target is not None
    opts["filters_text"] = filters_text(spec, opts, target)
    return _run(trace.make(kinds, opts, words), opts, target, loader=load_run)


def show_command() -> click.Command:
    """`rbtrace show FILE`: a recording replayed (rbtrace/show.py)."""
    from rbtrace import show
    params = [click.Argument(["file"], metavar="FILE")]
    params += [_click_option(o) for o in show.options()]

    def callback(file, **opts):
        sys.exit(_run_show(file, opts))
    return click.Command("show", params=params, callback=callback, help=show.HELP,
                         short_help=show.SUMMARY)


def _run_show(path, opts):
    from rbtrace import notice, show
    from rbtrace.procsum import table_lines
    from rbtrace.render import Output
    replay = show.Replay(opts, path)       # a FILE that can't be read: said before -o is made
    file_out = _open_output(opts)
    try:
        code = replay.run(file_out or Output(1, "standard output"))
    finally:
        if file_out is not None:
            file_out.close()
    s = replay.result
    if not opts.get("json_out"):
        lines = table_lines(s, tree="command" in s or "followed_root" in s)
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")
    for line in replay.notes():
        notice.say(line, who=show.WHO)
    _print_summary(s)
    if replay.output_error is not None:
        raise replay.output_error
    return code


class _Commands(dict):
    """The group's commands: each kind's made from its spec the first time
    it is asked for (`rbtrace exec` imports exec's spec alone)."""

    def __missing__(self, name):
        from rbtrace import spec
        if name == "trace":
            command = self[name] = trace_command()
            return command
        if name == "show":
            command = self[name] = show_command()
            return command
        if name not in spec.KINDS:
            raise KeyError(name)
        command = self[name] = kind_command(spec.load(name))
        return command

    def _names(self):
        from rbtrace.spec import KINDS
        return set(KINDS) | {"trace", "show"} | set(dict.keys(self))

    def __contains__(self, name):
        return name in self._names()

    def __iter__(self):
        return iter(sorted(self._names()))

    def __len__(self):
        return len(self._names())

    def keys(self):
        return list(self)

    def get(self, name, default=None):
        return self[name] if name in self else default


class Rbtrace(click.Group):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=Rbtrace, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rbtrace")
def cli():
    """Trace Linux events with BPF: a live table on a terminal, exact JSON
    lines with --json.  Needs root (or CAP_BPF, CAP_PERFMON and
    CAP_DAC_READ_SEARCH)."""


def _follow_target(opts):
    """What to follow: `-- CMD` (a follow.Command, resolved, not started),
    `--pid P --children` (a follow.RunningProcess), or None."""
    from rbtrace import follow
    command = click.get_current_context().meta.get(COMMAND_KEY)
    if command and opts.get("pid"):
        raise UsageError("--pid can't be combined with a command after --: "
                         "the command's own process tree is followed")
    if opts.get("pid"):
        follow.check_process(opts["pid"])
    if opts.get("tid"):
        follow.check_process(opts["tid"], "--tid", thread=True)
    if command:
        return follow.Command(command)        # 127/126 now, before any probe loads
    if opts.get("children"):
        if not opts.get("pid"):
            raise UsageError("--children needs --pid PID (or a command after --)")
        return follow.RunningProcess(opts["pid"])
    return None


def resolve_cgroup(opts):
    """--cgroup DIR or --container ID: the cgroup v2 directory the kernel
    checks, in opts["cgroup_dir"] (None when neither is given)."""
    from rbtrace import cgroups
    opts["cgroup_dir"] = None
    if opts.get("cgroup") and opts.get("container"):
        raise UsageError("--cgroup and --container can't be combined: give one")
    try:
        if opts.get("cgroup"):
            opts["cgroup_dir"] = cgroups.check_dir(opts["cgroup"])
        elif opts.get("container"):
            opts["cgroup_dir"] = cgroups.find_container(opts["container"])
    except cgroups.NotFound as e:
        flag = "--cgroup" if opts.get("cgroup") else "--container"
        raise UsageError(f"{flag}: {fields.for_message(str(e))}") from None


def filters_text(spec, opts, target) -> str:
    """The run's filters, for the start record and the footer: each option
    that selects (spec.Option.filter), in rank order, then the command."""
    from rbtrace.spec import filters_text as worded
    more = []
    if target is not None and not opts.get("pid"):
        more.append(f"command={os.path.basename(target.argv[0])}")
    return worded(common_options(spec) + spec.options, opts, more)


def _run_kind(spec, opts):
    from rbtrace import codec

    resolve_cgroup(opts)
    target = _follow_target(opts)
    opts["follow"] = target is not None
    opts["filters_text"] = filters_text(spec, opts, target)
    return _run(codec.make(spec, opts), opts, target)


def _open_output(opts):
    """The -o file (an outfile.FileOutput, rotated with --rotate-size), or
    None for standard output."""
    size, keep = opts.get("rotate_size"), opts.get("rotate_keep")
    if not opts.get("output"):
        if size is not None or keep is not None:
            raise UsageError(f"{'--rotate-size' if size is not None else '--rotate-keep'} "
                             f"rotates the file of -o FILE: give -o FILE too")
        return None
    if keep is not None and size is None:
        raise UsageError("--rotate-keep needs --rotate-size SIZE (when to rotate)")
    from rbtrace.outfile import FileOutput
    out = FileOutput(opts["output"], size, 5 if keep is None else keep)
    if size is not None and not out.regular():
        out.close()
        raise UsageError(f"--rotate-size rotates a regular file, and "
                         f"{fields.for_message(opts['output'])} is not one")
    return out


def _run(probe, opts, target, loader=None):
    from rbtrace.render import JsonRenderer, Output, PlainRenderer, TableRenderer
    from rbtrace.session import Session, load
    loader = loader or load
    _check_otlp_options(opts)

    if opts.get("table"):
        _check_table(opts)
    file_out = _open_output(opts)
    out = file_out or Output(1, "standard output")
    terminal = None
    exporter = None
    try:
        if opts.get("json_out"):
            renderer = JsonRenderer(out, probe)
        # --otlp alone: the events go to the collector; a pipe or a log
        # (a DaemonSet's stdout) does not get them all again as text.
        elif opts.get("otlp") and file_out is None and not os.isatty(out.fd):
            from rbtrace.render import NullRenderer
            renderer = NullRenderer(probe)
        # With `-- CMD` the terminal is CMD's (its output, its keys): plain
        # lines then, as strace prints them, and -o keeps the two apart;
        # unless --table gives CMD a terminal of its own (cmdpty.py).
        elif opts.get("table") or (file_out is None and os.isatty(out.fd)
                                   and not getattr(target, "waits_for_end", False)):
            from rich.console import Console
            if getattr(target, "waits_for_end", False):
                from rbtrace.cmdpty import CommandPty
                terminal = target.terminal = CommandPty()
            keys = sys.stdin.fileno() if sys.stdin.isatty() else None
            renderer = TableRenderer(Console(), probe, opts["filters_text"], keys_fd=keys,
                                     command_output=terminal)
        else:
            renderer = PlainRenderer(out, probe)
        if (opts.get("otlp") or not getattr(renderer, "wants_bytes", False)
                or not getattr(probe, "rows", False)):
            # Decoded with numpy from the first record on (--otlp decodes
            # every event): imported before the probes are attached, not
            # while their events wait in the ring.  (JSON of a kind that
            # decodes without it starts without it, and the session imports
            # it once the first lines are out.)
            import numpy  # noqa: F401
        if opts.get("otlp"):
            exporter = _exporter(probe, opts)
        if target is not None:
            target.start()                    # CMD forked, held until attached
        try:
            loaded, ring = loader(probe, opts["ring_size"], use_cache=not opts.get("no_cache"),
                                debug=opts.get("debug"))
            session = Session(probe, renderer, loaded, ring, count=opts.get("count"),
                              duration=opts.get("duration"), follow=target, exporter=exporter)
            code = session.run()
        except BaseException:
            if target is not None:
                target.abandon()
            raise
    finally:
        if file_out is not None:
            file_out.close()
        if target is not None:
            target.close()
        if terminal is not None:
            terminal.close()          # what is left read, the pty hung up
            terminal.replay()         # all CMD wrote, on the terminal the table has left
    # The summary reaches stderr even when the output failed; then one line
    # says which file and why (main), and the exit status is Exit.OUTPUT.
    if not opts.get("json_out"):
        # Per kind and per process, before the one line (which stays last).
        from rbtrace.procsum import table_lines
        lines = table_lines(session.summary, tree=target is not None)
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")
    _print_summary(session.summary)
    if session.output_error is not None:
        raise session.output_error
    if session.command_error is not None:
        raise session.command_error
    return code


def _check_table(opts):
    """--table: the table is drawn on standard output and reads its keys
    on standard input, so both must be a terminal.  A run that asked for
    it and can't have it stops, rather than printing something else."""
    if opts.get("json_out"):
        raise UsageError("--table and --json can't be combined: give one")
    if opts.get("output"):
        raise UsageError("--table and -o can't be combined: the table is drawn on the terminal")
    if not (os.isatty(0) and os.isatty(1)):
        which = "standard input" if not os.isatty(0) else "standard output"
        raise UsageError(f"--table needs a terminal on standard input and output, and "
                         f"{which} is not one (leave --table out for plain lines)")


def _check_otlp_options(opts):
    """--otlp-timeout means nothing without --otlp: say so rather than ignore it."""
    from click.core import ParameterSource
    ctx = click.get_current_context(silent=True)
    if ctx is None or opts.get("otlp"):
        return
    if ctx.get_parameter_source("otlp_timeout") not in (None, ParameterSource.DEFAULT,
                                                         ParameterSource.DEFAULT_MAP):
        raise UsageError("--otlp-timeout needs --otlp URL")


def _exporter(probe, opts):
    try:
        from rbtrace.otlp import Exporter
        return Exporter(opts["otlp"], probe.name, timeout=opts.get("otlp_timeout") or 5.0)
    except ImportError as e:
        raise RbtraceError(f"--otlp needs the opentelemetry-proto package: {e}",
                           hint="pip install opentelemetry-proto") from None


def _print_traceback():
    import traceback    # only with --debug: its import costs every start 4 ms
    traceback.print_exc()


def _print_summary(s):
    line = (f"rbtrace {s['probe']}: {s['delivered']} events delivered, {s['dropped']} dropped")
    if s["dropped"]:
        line += f" (ring full {s['ringbuf_full']}, state map full {s['map_full']}; try a larger --ring-size)"
    if s.get("not_delivered_count_reached"):
        line += f", {s['not_delivered_count_reached']} more not shown after --count"
    if s.get("missed_by_kernel"):
        line += f", {s['missed_by_kernel']} probe runs skipped by the kernel (events may be lost)"
    if s.get("stopped_by") == "output error" and s.get("not_delivered_output_closed"):
        line += f", {s['not_delivered_output_closed']} not written after the output failed"
    if s.get("not_followed"):
        line += f", {s['not_followed']} child processes not followed (their events are lost)"
    if s.get("discarded"):
        line += f", {s['discarded']} records discarded by the probe"
    line += f", {s['duration_s']:.1f}s"
    if s.get("top_errors"):
        line += "; top errors: " + ", ".join(f"{k} {v}" for k, v in s["top_errors"].items())
    command = s.get("command")
    if command:
        name = fields.for_message(os.path.basename(command["argv"][0]))
        if command["status"] is None:
            how = "was not started"
        elif command["signal"]:
            how = f"killed by {command['signal']} ({command['status']})"
        else:
            how = f"exited with status {command['status']}"
        line += f"; {name} {how}"
    if s.get("followed_running"):
        line += f"; {s['followed_running']} followed processes still running, no longer traced"
    if "otlp_sent" in s:
        line += f"; OTLP: {s['otlp_sent']} sent, {s['otlp_dropped']} dropped"
    sys.stderr.write(line + "\n")




@cli.command("cache")
@click.argument("action", type=click.Choice(["list", "clear"]), default="list")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def cache_cmd(action, debug):
    """List or clear the compile cache (compiled probes kept between runs,
    and the kernel type trees made from BTF)."""
    from rbtrace import btftree, cache
    try:
        d = cache.open_dir(create=False)
        btf = cache.open_subdir("btf", create=False)
    except cache.Unsafe as e:
        raise RbtraceError(f"the compile cache can't be used: {e}",
                           hint="fix its owner and mode (0700), or set RBTRACE_CACHE_DIR")
    trees = btftree.trees(btf)
    if action == "clear":
        n = cache.clear(d) if d.exists() else 0
        t = btftree.clear_trees(btf)
        cache.say(f"removed {n} compiled probe{'s' if n != 1 else ''} from {d}"
                  + (f" and {t} kernel type tree{'s' if t != 1 else ''} from {btf}" if t else ""))
        return
    if trees:
        size = sum(btftree.tree_bytes(t) for t in trees)
        cache.say(f"{len(trees)} kernel type tree{'s' if len(trees) != 1 else ''} from BTF in "
                  f"{btf} ({size / 1e6:.1f} MB)")
    if not d.exists():
        cache.say(f"the compile cache {d} is empty")
        return
    rows = cache.entries(d)
    out = [f"{'KEY':<16}  {'PROBE':<16}  {'BYTES':>8}  {'CREATED':<19}  STATE"]
    for path, doc, problem in rows:
        size = path.stat().st_size if path.exists() else 0
        if doc is None:
            probe, created, state = "?", "?", f"refused: {problem}"
        else:
            import time
            probe = doc["payload"].get("source", "?")
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc.get("created", 0)))
            state = "ok"
        out.append(f"{path.name[:16]:<16}  {fields.for_message(probe)[:16]:<16}  {size:>8}  "
                   f"{created:<19}  {state}")
    from rbtrace.render import Output
    Output(1, "standard output").write_all(("\n".join(out) + "\n").encode())
    cache.say(f"{len(rows)} compiled probe{'s' if len(rows) != 1 else ''} in {d}")


@cli.command("schema")
@click.argument("kind", required=False, metavar="[KIND]")
def schema_cmd(kind):
    """The JSON schema of the lines --json writes: start, event, lost and
    summary lines, of every kind, or of KIND alone."""
    from rbtrace import spec
    from rbtrace.render import Output
    if kind is None:
        specs = spec.declared()
    elif kind not in spec.KINDS:
        raise UsageError(f"no kind '{fields.for_message(kind)}': one of "
                         f"{', '.join(spec.KINDS)}")
    else:
        specs = [spec.load(kind)]
    Output(1, "standard output").write_all(spec.schema_json(specs, kind is not None).encode())


@cli.command("doctor")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def doctor_cmd(debug):
    """Check what rbtrace needs, one line per check; non-zero if one is missing."""
    from rbtrace.doctor import run_checks
    sys.exit(run_checks(sys.stdout))


def _debug_requested(argv):
    return "--debug" in argv or os.environ.get("RBTRACE_DEBUG") == "1"


def _on_usr1(signum, frame):
    """SIGUSR1 reopens the -o file, as nginx does after logrotate has moved
    it (rbtrace.outfile, imported only when there is one).  Without one it
    is ignored, and said to be, rather than ending rbtrace."""
    outfile = sys.modules.get("rbtrace.outfile")
    if outfile is not None and outfile.request_reopen():
        return
    try:                     # os.write: the handler may interrupt a write to sys.stderr
        os.write(2, b"rbtrace: SIGUSR1 ignored: it reopens the file of -o FILE, "
                    b"and there is none\n")
    except OSError:
        pass


def _hold_standard_fds():
    """A standard fd the caller closed (`>&-`) is held by /dev/null opened
    read-only and close-on-exec: rbtrace's own files (the -o file, BPF
    maps) then never land on fd 0-2, where CMD would inherit them; CMD
    still finds it closed; and a write to it fails with EBADF, as it
    would on the closed fd, so a closed stdout is a write error."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if held != fd:
                os.dup2(held, fd, inheritable=False)
                os.close(held)
    # Python starts with None for a closed stdout or stderr.
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


def _notice_to_stderr(text, line):
    """The core's notices (rbtrace/notice.py) on stderr: a notice as one
    line made inert for a terminal, other text (--debug) as it is."""
    if line:
        text = fields.safe_message(text) + "\n"
    sys.stderr.write(text)
    sys.stderr.flush()


def main(argv=None):
    import signal

    # rbtrace does no linear algebra: numpy's OpenBLAS then starts no pool
    # of threads when it is imported.  Such a thread, started before a
    # `-- CMD` run blocks its stop signals (follow.SignalFd), would take
    # them instead, and CMD would never get them.  (CMD gets the
    # environment rbtrace was started with: follow.initial_environment.)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from rbtrace import notice
    notice.set_sink(_notice_to_stderr)
    # SIGUSR1 reopens the -o file (after logrotate): never the default,
    # which would end rbtrace.
    signal.signal(signal.SIGUSR1, _on_usr1)
    argv = sys.argv[1:] if argv is None else argv
    _hold_standard_fds()
    debug = _debug_requested(argv)
    if not argv and "_RBTRACE_COMPLETE" not in os.environ:
        # `rbtrace` alone names no command: the help, as --help prints it,
        # but on stderr (stdout is for data) and with the usage-error status,
        # as click does for a group (whose 8.1 printed it to stdout, exit 0).
        # (Shell completion also comes without arguments: click answers it.)
        ctx = click.Context(cli, info_name="rbtrace", **cli.context_settings)
        sys.stderr.write(cli.get_help(ctx) + "\n")
        sys.exit(int(Exit.USAGE))
    try:
        cli.main(args=argv, prog_name="rbtrace", standalone_mode=False)
        code = Exit.OK
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else Exit.ERROR
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        # One line: click's own message, and where to look.
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx else ""
        sys.stderr.write(fields.safe_message(f"rbtrace: {e.format_message()}{where}") + "\n")
        code = Exit.USAGE
    except click.exceptions.Abort:
        code = Exit.INTERRUPTED
    except KeyboardInterrupt:
        code = Exit.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head -1`): not an error of ours.
        _silence_stdout()
        code = Exit.OK
    except RbtraceError as e:
        if debug:
            _print_traceback()
        sys.stderr.write(fields.safe_message(f"rbtrace: {e}") + "\n")
        code = e.exit_code
    except Exception as e:  # a bug: say so in one line, traceback with --debug
        if debug:
            _print_traceback()
        sys.stderr.write(fields.safe_message(f"rbtrace: internal error: {type(e).__name__}: {e} "
                                             f"(run with --debug for the traceback)") + "\n")
        code = Exit.ERROR
    sys.exit(int(code))


def _silence_stdout():
    """Point fd 1 at /dev/null so interpreter shutdown doesn't complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
