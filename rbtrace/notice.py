"""Messages from the core for the user (issue 15): the core never writes
to stderr itself.  It calls say() for a one-line notice or show() for text
to pass on as it is (the compiler's output with --debug); the command line
sets the sink that writes them (cli._notice_to_stderr).  With no sink
(rbtrace used as a library) they are dropped.

The sink is called as sink(text, line): `line` True for a notice, one
line `who: text` to escape and end with a newline; False for raw text."""

_sink = None


def set_sink(sink):
    """Send notices to `sink` (None: drop them); returns the previous one."""
    global _sink
    old, _sink = _sink, sink
    return old


def say(text, who="rbtrace"):
    """One line for the user: `who: text`."""
    if _sink is not None:
        _sink(f"{who}: {text}", True)


def show(text):
    """Text for the user as it is, several lines perhaps."""
    if _sink is not None:
        _sink(text, False)
