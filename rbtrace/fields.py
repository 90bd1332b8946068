"""Formatters for traced values: pure functions, no root and no BCC needed.

Everything the kernel hands us (file names, argv, comm) is untrusted bytes.
The table and plain renderers show it through escape_text(); the JSON
renderer keeps it exact through json_text().  The other helpers turn numbers
into names (errno, open flags, users, times) and parse the matching CLI
values.
"""
from __future__ import annotations

import base64
import errno
import functools
import os
import signal as signals
import pwd
import re
import time

# --- untrusted text ---------------------------------------------------------

_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}

# Everything but printable ASCII other than backslash: only these characters
# can need escaping, so the slow path visits nothing else.
_ESCAPE_CANDIDATE = re.compile(r"[^ -\[\]-~]")


def _escape_char(match: re.Match) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not valid UTF-8, smuggled through by the
        # surrogateescape error handler; print the byte itself.
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape(text: str) -> str:
    # str.isprintable() is false exactly for the categories C* and Z* other
    # than U+0020 (the tests check this over every code point), which is the
    # guarantee we give, so it is both the fast path and the definition.
    if text.isprintable() and "\\" not in text:
        return text
    return _ESCAPE_CANDIDATE.sub(_escape_char, text)


def escape_text(raw: bytes) -> str:
    r"""Show untrusted bytes as one line of safe, unambiguous text.

    The bytes are decoded as UTF-8 and then:

    * printable characters stay as they are, non-ASCII letters, CJK and
      emoji included;
    * a backslash becomes ``\\``;
    * newline, tab and carriage return become ``\n``, ``\t``, ``\r``;
    * a byte that is not part of valid UTF-8 becomes ``\xNN`` (NN >= 80);
    * any other character whose Unicode category is C* (control, format,
      surrogate, private use, unassigned) or Z* (separator), except the plain
      space U+0020, becomes ``\xNN`` below U+0080, ``\uNNNN`` up to U+FFFF
      and ``\UNNNNNNNN`` above.  Hex digits are lowercase.

    So ESC, BEL, backspace, DEL, C1 controls, bidi overrides and isolates,
    zero-width characters and line/paragraph separators all appear as
    escapes, and the result never contains a character of category C* or Z*
    other than space.  Since a backslash is always escaped, every backslash
    in the result starts an escape and the mapping can be undone: ``\x85``
    is the undecodable byte 0x85, while the decoded character U+0085 (bytes
    C2 85) is ``\u0085``.

    This is about terminal control, not look-alikes: printable characters
    that resemble others, or combining marks, pass unchanged.  Rich markup
    is not touched either; show the result with rich.text.Text, which never
    parses markup.
    """
    return _escape(raw.decode("utf-8", "surrogateescape"))


def escape_str(text: str) -> str:
    """escape_text() for an already decoded str, such as a user name.

    Lone surrogates U+DC80..U+DCFF are taken to be undecodable bytes, as
    Python's file system decoding (os, pwd) produces them, and print as
    ``\\xNN``; other surrogates print as ``\\uNNNN``.
    """
    return _escape(text)


def for_message(value) -> str:
    """User or traced text (a command name, a path, a pattern) as a message
    for people repeats it: escaped as escape_text() does, so that the name
    can't move the cursor, retitle or recolour the terminal, and stays
    unambiguous.  Takes str (surrogate-escaped bytes included), bytes or a
    path object."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        return escape_text(value)
    return _escape(str(value))


def _escape_unprintable(match: re.Match) -> str:
    return "\\" if match.group() == "\\" else _escape_char(match)


def safe_message(text: str) -> str:
    """A whole message line made inert for a terminal, the last guard before
    it is written: every character escape_str() escapes except the
    backslash, so that text already escaped by for_message() is left as it is,
    while a control character that reached the message some other way
    (click's own messages, a compiler's line quoting the user's code) is
    escaped too.  The line stays one line."""
    if text.isprintable():
        return text
    return _ESCAPE_CANDIDATE.sub(_escape_unprintable, text)


# Characters a POSIX shell reads as themselves outside quotes: shlex.quote's
# set.  Other printable text that escape_text() leaves alone (letters beyond
# ASCII, CJK, emoji) is not special to a shell either.
_SHELL_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII)


def shell_word(shown: str) -> str:
    r"""One argument, already made safe by escape_text(), written as a shell
    would read it back: as it is when nothing in it is special to a shell,
    else in single quotes (an embedded ' as '\'').  The empty argument is ''.

    The escapes escape_text() made (\n, \xNN, \\) stay as they are inside
    the quotes, so a line of words still decodes to the exact argv: split
    it with shlex.split(), then undo the backslash escapes of each word.
    """
    # "…" is quoted too: unquoted after a word, it marks an argument that
    # was cut (see the exec table).
    if shown and "\u2026" not in shown and not any(
            c.isascii() for c in _SHELL_UNSAFE.findall(shown)):
        return shown
    return "'" + shown.replace("'", "'\\''") + "'"


def json_text(raw: bytes) -> tuple[str, str | None]:
    """Split untrusted bytes into JSON-safe text plus, if needed, the exact bytes.

    Returns (text, b64).  When raw is valid UTF-8, text is exactly the
    decoded string and b64 is None.  Otherwise text is raw decoded with
    every invalid sequence replaced by U+FFFD and b64 is the standard base64
    (RFC 4648, with padding) of the exact bytes.

    JSON output convention: a string field ``name`` holds text and, only when
    the bytes were not valid UTF-8, a field ``name_b64`` appears beside it.
    The original bytes are therefore base64-decoded ``name_b64`` when it is
    present and ``name`` encoded as UTF-8 otherwise.  Either way the output
    stays valid UTF-8: Python's strict decoder refuses encoded surrogates
    (ED A0 80 and the like), so text never holds a lone surrogate.
    """
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return (raw.decode("utf-8", "replace"),
                base64.b64encode(raw).decode("ascii"))


# --- errno ------------------------------------------------------------------

# Return values from -MAX_ERRNO to -1 are errors (the kernel's IS_ERR_VALUE);
# other negative values are data, e.g. an address.
_MAX_ERRNO = 4095

_ERRNO_NAMES = dict(errno.errorcode)
_ERRNO_NAMES.update({
    # Where Linux has two names for one number, Python keeps whichever it
    # registered last (EDEADLOCK, ENOTSUP); use the kernel's, as strace does.
    errno.EAGAIN: "EAGAIN",
    errno.EDEADLK: "EDEADLK",
    errno.EOPNOTSUPP: "EOPNOTSUPP",
    # Kernel-internal codes from include/linux/errno.h: never returned to
    # user space, but seen at syscall exit when a signal interrupts a call.
    512: "ERESTARTSYS",
    513: "ERESTARTNOINTR",
    514: "ERESTARTNOHAND",
    515: "ENOIOCTLCMD",
    516: "ERESTART_RESTARTBLOCK",
})


def errno_name(ret: int) -> str:
    """Symbolic errno of a negative return value: -2 -> "ENOENT".

    An error number without a name prints as "E<num>" (-999 -> "E999").
    Non-negative values and values below -4095, which are not errors, give "".
    """
    if ret >= 0 or ret < -_MAX_ERRNO:
        return ""
    return _ERRNO_NAMES.get(-ret, f"E{-ret}")


# --- open(2) flags ----------------------------------------------------------

# Numeric values of the Linux generic/x86 ABI, as the kernel sees them.  They
# are spelt out rather than taken from os: glibc defines O_LARGEFILE as 0 on
# 64-bit targets, yet the kernel sets 0o100000 in the flags it passes on.
_O_ACCMODE = 0o3
_ACCESS_MODES = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")

# Display order.  O_SYNC and O_TMPFILE are two bits each and contain O_DSYNC
# and O_DIRECTORY respectively.
_OPEN_FLAGS = (
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("O_ASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
    ("O_SYNC", 0o4000000 | 0o10000),
    ("O_PATH", 0o10000000),
    ("O_TMPFILE", 0o20000000 | 0o200000),
)

# Matching order: wider masks first, so O_SYNC claims the O_DSYNC bit and
# O_TMPFILE the O_DIRECTORY bit before the single-bit names look at them.
_OPEN_FLAGS_WIDEST_FIRST = sorted(_OPEN_FLAGS,
                                  key=lambda item: -bin(item[1]).count("1"))


# Bounded: a run sees few distinct flag values, and the table formats them
# for every event.
@functools.lru_cache(maxsize=1024)
def open_flags(flags: int) -> str:
    """Decode open(2) flags: 0o101 -> "O_WRONLY|O_CREAT".

    The access mode comes first (O_RDONLY, O_WRONLY, O_RDWR, or O_ACCMODE
    for the invalid value 3), then the other flags in a fixed order, then
    any bits without a name as one hex number.  O_SYNC and O_TMPFILE are
    printed instead of the O_DSYNC and O_DIRECTORY bits they include.
    """
    if flags < 0:
        # The syscall argument is a C int: show a sign-extended value as the
        # 32-bit pattern the kernel sees.
        flags &= 0xFFFFFFFF
    rest = flags & ~_O_ACCMODE
    present = set()
    for name, mask in _OPEN_FLAGS_WIDEST_FIRST:
        if rest & mask == mask:
            present.add(name)
            rest &= ~mask
    parts = [_ACCESS_MODES[flags & _O_ACCMODE]]
    parts.extend(name for name, _ in _OPEN_FLAGS if name in present)
    if rest:
        parts.append(hex(rest))
    return "|".join(parts)


_ACCESS_BY_NAME = {name[2:]: value for value, name in enumerate(_ACCESS_MODES)}
_FLAG_BY_NAME = {name[2:]: mask for name, mask in _OPEN_FLAGS}
_FLAG_BY_NAME["FASYNC"] = _FLAG_BY_NAME["ASYNC"]
_FLAG_BY_NAME["NDELAY"] = _FLAG_BY_NAME["NONBLOCK"]


def parse_open_flags(text: str) -> int:
    """Parse flag names such as "O_WRONLY|O_CREAT" or "wronly,creat".

    Names are case-insensitive, the O_ prefix is optional and either | or ,
    separates them; FASYNC and NDELAY are accepted as aliases.  At most one
    access mode may be given; none means O_RDONLY (0).  Raises ValueError
    naming the first unknown flag.
    """
    value = 0
    access = None
    for part in re.split(r"[|,]", text):
        given = part.strip()
        # ASCII only: str.upper() would turn "ſync" into "SYNC".
        key = given.upper() if given.isascii() else given
        if key.startswith("O_"):
            key = key[2:]
        if key in _ACCESS_BY_NAME:
            if access is not None and access != key:
                raise ValueError(
                    f"conflicting access modes O_{access} and O_{key} in '{for_message(text)}'")
            access = key
            value |= _ACCESS_BY_NAME[key]
        elif key in _FLAG_BY_NAME:
            value |= _FLAG_BY_NAME[key]
        elif not given:
            raise ValueError(f"empty open flag name in '{for_message(text)}'")
        else:
            raise ValueError(f"unknown open flag '{for_message(given)}'")
    return value


# --- time -------------------------------------------------------------------

_NS_PER_S = 1_000_000_000


class Clock:
    """Turns bpf_ktime_get_ns() timestamps (CLOCK_MONOTONIC) into wall time.

    Create one at start.  It measures the offset between CLOCK_REALTIME and
    CLOCK_MONOTONIC once, reading REALTIME between two MONOTONIC reads and
    keeping the sample with the narrowest bracket, so the error is at most
    half that bracket (typically tens of nanoseconds).  NTP slewing changes
    both clocks alike and keeps the offset valid; a step of the system
    clock or a suspend during the trace is not followed, which keeps the
    times of one run consistent with each other.
    """

    SAMPLES = 16

    def __init__(self, offset_ns: int | None = None, utc: bool = False):
        """offset_ns fixes the REALTIME - MONOTONIC offset instead of measuring it;
        utc makes hms() show UTC instead of local time."""
        self.offset_ns = self._measure() if offset_ns is None else offset_ns
        self._broken_down = time.gmtime if utc else time.localtime
        # One entry each, keyed by whole second: events arrive in time order,
        # so the date-time prefix is usually the one just formatted.
        self._iso_second = (None, "")
        self._hms_second = (None, "")

    @classmethod
    def _measure(cls) -> int:
        best_width = best_offset = None
        for _ in range(cls.SAMPLES):
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            real = time.clock_gettime_ns(time.CLOCK_REALTIME)
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            width = after - before
            if best_width is None or width < best_width:
                best_width = width
                best_offset = real - (before + after) // 2
        return best_offset

    def wall_ns(self, ts_ns: int) -> int:
        """Nanoseconds since the Unix epoch for a CLOCK_MONOTONIC timestamp."""
        return ts_ns + self.offset_ns

    def iso(self, ts_ns: int) -> str:
        """ISO 8601 UTC with all nine digits: 2026-11-24T07:01:02.123456789Z."""
        second, ns = divmod(ts_ns + self.offset_ns, _NS_PER_S)
        cached, prefix = self._iso_second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._iso_second = (second, prefix)
        return f"{prefix}.{ns:09d}Z"

    def hms(self, ts_ns: int) -> str:
        """Time of day to the millisecond (truncated): 07:01:02.123.

        Local time as date(1) shows it (TZ, else /etc/localtime, as read at
        start), or UTC when the clock was made with utc=True."""
        second, ns = divmod(ts_ns + self.offset_ns, _NS_PER_S)
        cached, prefix = self._hms_second
        if second != cached:
            prefix = time.strftime("%H:%M:%S", self._broken_down(second))
            self._hms_second = (second, prefix)
        return f"{prefix}.{ns // 1_000_000:03d}"


# --- users ------------------------------------------------------------------

# (uid_t)-1 means "no uid" to the kernel (chown's "leave unchanged").
_UID_INVALID = 2**32 - 1


BOOT_ID = "/proc/sys/kernel/random/boot_id"


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot's id, as the kernel gives it (a UUID): the first part of
    every process key.  "0" when unreadable (no /proc)."""
    try:
        with open(BOOT_ID) as f:
            return f.read().strip() or "0"
    except OSError:
        return "0"


def host_name() -> str:
    """The host's name as the kernel has it (/proc/sys/kernel/hostname,
    uname's nodename): "" when unreadable."""
    try:
        with open("/proc/sys/kernel/hostname") as f:
            return f.read().strip()
    except OSError:
        return os.uname().nodename


def identity() -> dict:
    """Where and by what the lines were written, for the start record:
    rbtrace's version, the host, the boot and the kernel (spec.START)."""
    from rbtrace import __version__
    return {"rbtrace_version": __version__, "hostname": host_name(), "boot_id": boot_id(),
            "kernel": os.uname().release}


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """Login name of uid, or the uid as a string if it has none.

    The name comes from the system database and is not escaped.
    """
    # pwd would look up -1 as 4294967295; keep out-of-range values as numbers.
    if not 0 <= uid < _UID_INVALID:
        return str(uid)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
    # pwd decodes bytes that are not UTF-8 as lone surrogates, which no JSON
    # encoder accepts; the name is a convenience beside the exact uid, so
    # such bytes become U+FFFD.
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def parse_uid(text: str) -> int:
    """A uid from a decimal number or a user name; a number always wins.

    Raises ValueError for a negative or out-of-range number or an unknown
    user.
    """
    given = text.strip()
    # [0-9] rather than int() alone, which also takes "٣" or "1_000".
    if re.fullmatch(r"-?[0-9]+", given):
        uid = int(given)
        if uid < 0:
            raise ValueError(f"uid must not be negative: {given}")
        if uid >= _UID_INVALID:
            raise ValueError(f"uid {uid} out of range (must be below {_UID_INVALID})")
        return uid
    try:
        return pwd.getpwnam(given).pw_uid
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        raise ValueError(f"unknown user '{for_message(given)}'") from None


# --- sizes ------------------------------------------------------------------

# re.ASCII: with IGNORECASE alone, "k" would also match the Kelvin sign U+212A.
_SIZE = re.compile(r"(-?[0-9]+)\s*(?:([kmgt])(?:ib)?)?", re.ASCII | re.IGNORECASE)
_SIZE_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}


def parse_size(text: str) -> int:
    """Bytes from "4096", "64K", "16M", "16MiB", "1g": multiples are binary.

    K, M, G and T (any case, optionally followed by "iB") are 2**10, 2**20,
    2**30 and 2**40.  "MB" and the like are refused rather than guessed at,
    since elsewhere they often mean powers of ten.  Raises ValueError for
    anything else and for sizes that are not positive.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid size '{for_message(text)}': expected a whole number of bytes with an"
            f" optional K, M, G or T suffix (binary: 1K = 1024; KiB, MiB, GiB,"
            f" TiB also accepted)")
    unit = match.group(2)
    size = int(match.group(1)) << (_SIZE_SHIFT[unit.lower()] if unit else 0)
    if size <= 0:
        raise ValueError(f"invalid size '{for_message(text)}': must be greater than zero")
    return size


def is_pow2_pages(n: int, page: int) -> bool:
    """True if n bytes are a power-of-two number of whole pages (1, 2, 4 ...).

    That is what a BPF ring buffer's size must be.
    """
    if page <= 0:
        raise ValueError(f"page size must be positive, got {page}")
    if n < page or n % page:
        return False
    pages = n // page
    return pages & (pages - 1) == 0


# --- wait statuses and lifetimes (exit events, the run summary) ------------------

def exit_code(status):
    """WEXITSTATUS, or None when a signal ended the process."""
    return (status >> 8) & 0xFF if status & 0x7F == 0 else None


def signal_name(status):
    """The name of the signal that ended the process (WTERMSIG), or None."""
    number = status & 0x7F
    if number == 0:
        return None
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"SIG{number}"        # a real-time signal: SIGRTMIN+n has no stdlib name


def core_dumped(status):
    """WCOREDUMP."""
    return bool(status & 0x80)


def age_text(ns) -> str:
    """A lifetime, short: 850us, 12.3ms, 4.07s, 5m02s, 3h05m, 2d04h."""
    if ns < 1_000_000:
        return f"{ns // 1000}us"
    # Three significant digits, and a unit up where they would round to
    # 1000 ("1e+03ms"): 999.5ms is "1s", 59.95s is "1m00s".
    if ns < 999_500_000:
        return f"{ns / 1e6:.3g}ms"
    s = ns // 1_000_000_000
    if ns < 59_950_000_000:
        return f"{ns / 1e9:.3g}s"
    s = max(s, 60)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
