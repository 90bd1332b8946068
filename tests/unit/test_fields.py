"""Unit tests for rbtrace.fields: escaping, JSON text, names, times, sizes."""
import base64
import calendar
import datetime
import errno
import io
import json
import os
import pwd
import random
import re
import time
import unicodedata

import orjson
import pytest
from rich.console import Console
from rich.text import Text

from rbtrace.fields import (
    Clock,
    errno_name,
    escape_str,
    escape_text,
    is_pow2_pages,
    json_text,
    open_flags,
    parse_open_flags,
    parse_size,
    parse_uid,
    user_name,
)

# --- helpers ----------------------------------------------------------------

_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(.))", re.S)
_SIMPLE = {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}


def unescape(text):
    """Invert escape_text(): proves the scheme is unambiguous."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode("utf-8")
        if m[1]:
            # Below 0x80 the byte is the character; above, a raw byte.
            out.append(int(m[1], 16))
        elif m[2] or m[3]:
            out += chr(int(m[2] or m[3], 16)).encode("utf-8")
        else:
            out += _SIMPLE[m[4]]
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return bytes(out)


def assert_safe(text):
    for ch in text:
        assert ch == " " or unicodedata.category(ch)[0] not in "CZ", (
            f"U+{ord(ch):04X} ({unicodedata.category(ch)}) in {text!r}")


def check_escape(raw):
    out = escape_text(raw)
    assert_safe(out)
    assert unescape(out) == raw
    return out


# Code points that make terminals or text layout misbehave, with neighbours.
DANGEROUS_RANGES = [
    range(0x0000, 0x0300),     # C0, DEL, C1, NBSP, soft hyphen, Latin
    range(0x034F, 0x0350),     # combining grapheme joiner
    range(0x0600, 0x0620),     # Arabic number signs, ALM U+061C
    range(0x115F, 0x1161),     # Hangul fillers
    range(0x1680, 0x1681),     # Ogham space mark
    range(0x180B, 0x1810),     # Mongolian vowel separator
    range(0x2000, 0x2070),     # spaces, ZW*, LRM/RLM, U+2028/9, bidi, invisibles
    range(0x3000, 0x3001),     # ideographic space
    range(0xD800, 0xE000),     # surrogates (only reachable as invalid UTF-8)
    range(0xE000, 0xE010),     # private use
    range(0xFE00, 0xFE10),     # variation selectors
    range(0xFEFF, 0xFF00),     # BOM / ZWNBSP
    range(0xFFF0, 0x10000),    # specials, interlinear annotation, noncharacters
    range(0x1D173, 0x1D17B),   # musical format controls
    range(0xE0000, 0xE0080),   # tag characters
    range(0xF0000, 0xF0010),   # supplementary private use
    range(0x10FFF0, 0x110000),
]


# --- escape_text ------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (b"", ""),
    (b"/usr/bin/ls", "/usr/bin/ls"),
    (b"a b", "a b"),
    ("caf\u00e9 \u65e5\u672c \U0001f600".encode(), "caf\u00e9 \u65e5\u672c \U0001f600"),
    (b"a\\b", "a\\\\b"),
    (b"l1\nl2\tx\r", "l1\\nl2\\tx\\r"),
    (b"\x1b[31mred", "\\x1b[31mred"),
    (b"\x07\x08\x00\x7f", "\\x07\\x08\\x00\\x7f"),
    (b"\x9b\xff\x80", "\\x9b\\xff\\x80"),                # invalid UTF-8 bytes
    ("\u009b".encode(), "\\u009b"),                      # C1 character U+009B
    ("\u00a0\u00ad".encode(), "\\u00a0\\u00ad"),         # NBSP, soft hyphen
    ("\u202eevil\u202c".encode(), "\\u202eevil\\u202c"),
    ("\u2066\u2069\u200e\u200f\u061c".encode(), "\\u2066\\u2069\\u200e\\u200f\\u061c"),
    ("\u200b\ufeff\u2028\u2029".encode(), "\\u200b\\ufeff\\u2028\\u2029"),
    ("\U000e0041\U000f0000".encode(), "\\U000e0041\\U000f0000"),
    ("\u0378".encode(), "\\u0378"),                      # unassigned
    (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),                # encoded surrogate
    (b"\xc0\xaf", "\\xc0\\xaf"),                         # overlong "/"
    (b"ok\xe2\x82", "ok\\xe2\\x82"),                     # truncated sequence
    (b"[link=http://x]x[/link]", "[link=http://x]x[/link]"),
])
def test_escape_text_examples(raw, expected):
    assert escape_text(raw) == expected
    assert unescape(expected) == raw


def test_escape_text_every_single_byte():
    for b in range(256):
        out = check_escape(bytes([b]))
        if 0x20 <= b <= 0x7E and b != 0x5C:
            assert out == chr(b)
        else:
            assert out.startswith("\\")
        assert "\x1b" not in out and "\x07" not in out


def test_escape_text_every_byte_pair():
    for a in range(256):
        for b in range(0x80, 0x100):
            check_escape(bytes([a, b, a]))


def test_escape_text_dangerous_code_points():
    for block in DANGEROUS_RANGES:
        for cp in block:
            char = chr(cp)
            raw = char.encode("utf-8", "surrogatepass")
            out = check_escape(raw)
            check_escape(b"a" + raw + b"b")
            if cp == 0x5C:
                assert out == "\\\\"
            elif cp == 0x20 or unicodedata.category(char)[0] not in "CZ":
                assert out == char
            else:
                assert out.startswith("\\"), hex(cp)


def test_escape_text_random_bytes():
    rng = random.Random(20261124)
    alphabet = [b"\x1b", b"\\", b"\n", b"\xc2\x9b", b"\xe2\x80\xae", b"\xf0\x9f\x98\x80",
                b"\xed\xb2\x80", b"\xff", b"x", b" ", b"\xe6\x97\xa5"]
    for _ in range(3000):
        check_escape(bytes(rng.randrange(256) for _ in range(rng.randrange(24))))
        check_escape(b"".join(rng.choice(alphabet) for _ in range(rng.randrange(12))))


def test_escape_backslash_is_unambiguous():
    literal = escape_text(b"\\x1b")
    assert literal == "\\\\x1b"
    assert escape_text(b"\x1b") == "\\x1b"
    assert literal != escape_text(b"\x1b")
    # The undecodable byte 0x85 and the decoded character U+0085 differ too.
    assert escape_text(b"\x85") == "\\x85"
    assert escape_text("\u0085".encode()) == "\\u0085"
    assert escape_text(b"\\u0085") == "\\\\u0085"


def test_isprintable_matches_the_promised_categories():
    # The fast path relies on str.isprintable() being false exactly for the
    # categories C* and Z* other than space, in this Python's Unicode data.
    for cp in range(0x110000):
        char = chr(cp)
        promised = char == " " or unicodedata.category(char)[0] not in "CZ"
        assert char.isprintable() == promised, hex(cp)


def test_escape_str():
    assert escape_str("alice") == "alice"
    assert escape_str("a\x1bb\u202e") == "a\\x1bb\\u202e"
    assert escape_str("a\\n") == "a\\\\n"
    # Surrogate-escaped bytes, as pwd and os hand out, print as the bytes.
    decoded = os.fsdecode(b"user\xff\x1b")
    assert escape_str(decoded) == escape_text(b"user\xff\x1b") == "user\\xff\\x1b"
    assert escape_str("\ud800\udfff") == "\\ud800\\udfff"


def _render(renderable):
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system=None, width=200).print(renderable)
    return buf.getvalue()


def test_rich_text_shows_markup_literally():
    raw = b"[link=http://x]x[/link] [/bold] [bold red]y"
    out = _render(Text(escape_text(raw)))
    assert out == "[link=http://x]x[/link] [/bold] [bold red]y\n"
    # The same string as console markup is interpreted, which is the danger.
    assert _render("[link=http://x]x[/link]") == "x\n"


@pytest.mark.parametrize("raw", [
    b"\x1b[31mred\x1b[0m",
    b"\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\",
    b"\x1b]0;title\x07",
    b"\x1bP+q\x1b\\",
    b"\x9b31m\x9d0;t\x9c",
    "\u009b31m\u009d0;t\u009c".encode(),
    b"a\x08\x08b\rc\nd\x7f",
    "x\u202eevil\u2066\u2028y".encode(),
    b"[link=http://x]\x1b[5mx[/link]",
])
def test_rich_output_of_hostile_text_has_no_control_sequences(raw):
    out = _render(Text(escape_text(raw)))
    assert out.endswith("\n")
    body = out[:-1]
    assert "\n" not in body
    assert_safe(body)
    for bad in ("\x1b", "\x07", "\x9b", "\x9d", "\x9c", "\u202e"):
        assert bad not in body


# --- json_text --------------------------------------------------------------

def _json_roundtrip(raw):
    text, b64 = json_text(raw)
    record = {"filename": text}
    if b64 is not None:
        record["filename_b64"] = b64
    line = orjson.dumps(record)
    line.decode("utf-8")  # strict: the output is valid UTF-8
    back = orjson.loads(line)
    if "filename_b64" in back:
        return base64.b64decode(back["filename_b64"], validate=True)
    return back["filename"].encode("utf-8")


@pytest.mark.parametrize("raw", [
    b"",
    b"/etc/passwd",
    "\u65e5\u672c\u202e\u2028\U0001f600".encode(),
    b"\x1b[31m\x00\x7f",
    "\u009b".encode(),
])
def test_json_text_valid_utf8_is_exact(raw):
    text, b64 = json_text(raw)
    assert b64 is None
    assert text.encode("utf-8") == raw
    assert _json_roundtrip(raw) == raw


@pytest.mark.parametrize("raw, text", [
    (b"\xff", "\ufffd"),
    (b"a\x80b", "a\ufffdb"),
    (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),   # encoded surrogate is invalid
    (b"\xc0\xaf", "\ufffd\ufffd"),
    (b"ok\xe2\x82", "ok\ufffd"),
])
def test_json_text_invalid_utf8_keeps_bytes_in_b64(raw, text):
    got_text, b64 = json_text(raw)
    assert got_text == text
    assert base64.b64decode(b64, validate=True) == raw
    assert _json_roundtrip(raw) == raw


def test_json_text_never_yields_surrogates():
    rng = random.Random(7)
    for cp in range(0xD800, 0xE000, 7):
        raw = chr(cp).encode("utf-8", "surrogatepass")
        text, b64 = json_text(raw)
        assert b64 is not None
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    for _ in range(2000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(16)))
        assert _json_roundtrip(raw) == raw
        text, _ = json_text(raw)
        json.dumps(text, ensure_ascii=False).encode("utf-8")


def test_json_text_every_single_byte():
    for b in range(256):
        raw = bytes([b])
        assert _json_roundtrip(raw) == raw
        assert (json_text(raw)[1] is None) == (b < 0x80)


# --- errno_name -------------------------------------------------------------

@pytest.mark.parametrize("ret, name", [
    (-1, "EPERM"),
    (-2, "ENOENT"),
    (-13, "EACCES"),
    (-11, "EAGAIN"),
    (-35, "EDEADLK"),
    (-95, "EOPNOTSUPP"),
    (-512, "ERESTARTSYS"),
    (-516, "ERESTART_RESTARTBLOCK"),
    (-999, "E999"),
    (-4095, "E4095"),
    (0, ""),
    (3, ""),
    (-4096, ""),
    (-(2**47), ""),
])
def test_errno_name(ret, name):
    assert errno_name(ret) == name


def test_errno_name_agrees_with_stdlib():
    for code in errno.errorcode:
        name = errno_name(-code)
        assert getattr(errno, name) == code


# --- open flags -------------------------------------------------------------

# Values from the Linux generic/x86 ABI (include/uapi/asm-generic/fcntl.h).
ABI_FLAGS = [
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
    ("O_SYNC", 0o4010000),
    ("O_PATH", 0o10000000),
    ("O_TMPFILE", 0o20200000),
]


@pytest.mark.parametrize("name, value", ABI_FLAGS)
def test_open_flags_each_flag(name, value):
    assert open_flags(value) == f"O_RDONLY|{name}"
    assert parse_open_flags(name) == value
    os_value = getattr(os, name, 0)
    # glibc's O_LARGEFILE is 0 on 64-bit; the kernel still sets 0o100000.
    if os_value:
        assert os_value == value


@pytest.mark.parametrize("name, mode", [
    ("O_RDONLY", 0), ("O_WRONLY", 1), ("O_RDWR", 2), ("O_ACCMODE", 3)])
def test_open_flags_access_modes(name, mode):
    assert getattr(os, name) == mode
    assert open_flags(mode) == name
    assert parse_open_flags(name) == mode


@pytest.mark.parametrize("flags, text", [
    (0, "O_RDONLY"),
    (0o101, "O_WRONLY|O_CREAT"),
    (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
     "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"),
    (0o2400000 | 0o200000 | 0o4000, "O_RDONLY|O_NONBLOCK|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC"),
    (0o4010001, "O_WRONLY|O_SYNC"),
    (0o10001, "O_WRONLY|O_DSYNC"),
    (0o4000001, "O_WRONLY|0x100000"),          # __O_SYNC without O_DSYNC
    (0o20200002, "O_RDWR|O_TMPFILE"),
    (0o20200302, "O_RDWR|O_CREAT|O_EXCL|O_TMPFILE"),
    (0o20000002, "O_RDWR|0x400000"),           # __O_TMPFILE without O_DIRECTORY
    (0o10000000 | 0o2000000, "O_RDONLY|O_CLOEXEC|O_PATH"),
    (0o101 | 0x40000000, "O_WRONLY|O_CREAT|0x40000000"),
    (0x80000000 | 0x10000000, "O_RDONLY|0x90000000"),
    (1 << 40, "O_RDONLY|0x10000000000"),
])
def test_open_flags_examples(flags, text):
    assert open_flags(flags) == text


def test_open_flags_fixed_order_with_every_flag():
    every = 0
    for _, value in ABI_FLAGS:
        every |= value
    assert open_flags(every | 2) == (
        "O_RDWR|O_CREAT|O_EXCL|O_NOCTTY|O_TRUNC|O_APPEND|O_NONBLOCK|O_ASYNC"
        "|O_DIRECT|O_LARGEFILE|O_NOFOLLOW|O_NOATIME|O_CLOEXEC|O_SYNC|O_PATH"
        "|O_TMPFILE")


def test_open_flags_negative_is_a_c_int():
    assert open_flags(-1) == open_flags(0xFFFFFFFF)
    assert open_flags(-1).startswith("O_ACCMODE|O_CREAT|")
    # Left over: bits 2-5 (0o74) and everything above __O_TMPFILE.
    assert open_flags(-1).endswith("|O_TMPFILE|0xff80003c")


def test_open_flags_round_trip():
    rng = random.Random(42)
    for _ in range(5000):
        flags = rng.randrange(3)
        for _, value in rng.sample(ABI_FLAGS, rng.randrange(len(ABI_FLAGS) + 1)):
            flags |= value
        text = open_flags(flags)
        assert "0x" not in text
        assert parse_open_flags(text) == flags


@pytest.mark.parametrize("text, value", [
    ("O_WRONLY|O_CREAT", 0o101),
    ("wronly,creat", 0o101),
    (" o_rdwr | O_Cloexec ", 0o2000002),
    ("creat", 0o100),
    ("rdonly", 0),
    ("wronly|wronly|trunc", 0o1001),
    ("fasync", 0o20000),
    ("O_NDELAY", 0o4000),
    ("sync", 0o4010000),
    ("dsync,sync", 0o4010000),
    ("tmpfile|rdwr", 0o20200002),
])
def test_parse_open_flags(text, value):
    assert parse_open_flags(text) == value


@pytest.mark.parametrize("text, message", [
    ("O_BOGUS", "unknown open flag 'O_BOGUS'"),
    ("wronly|creat|nope", "unknown open flag 'nope'"),
    ("O_", "unknown open flag 'O_'"),
    ("\u017fync", "unknown open flag '\u017fync'"),     # long s: upper() is "SYNC"
    ("0x41", "unknown open flag '0x41'"),
    ("", "empty open flag name"),
    ("wronly||creat", "empty open flag name"),
    ("rdonly|wronly", "conflicting access modes O_RDONLY and O_WRONLY"),
])
def test_parse_open_flags_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_open_flags(text)


# --- Clock ------------------------------------------------------------------

@pytest.fixture
def set_tz(monkeypatch):
    def set_tz(name):
        monkeypatch.setenv("TZ", name)
        time.tzset()
    yield set_tz
    monkeypatch.undo()
    time.tzset()


_EPOCH_S = calendar.timegm((2026, 11, 24, 7, 1, 2))


def test_clock_measures_realtime_minus_monotonic():
    clock = Clock()
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    assert abs(clock.wall_ns(mono) - real) < 5_000_000
    assert clock.wall_ns(mono) == mono + clock.offset_ns


def test_clock_iso_format():
    clock = Clock(offset_ns=_EPOCH_S * 10**9)
    assert clock.iso(123456789) == "2026-11-24T07:01:02.123456789Z"
    assert clock.iso(0) == "2026-11-24T07:01:02.000000000Z"
    assert clock.iso(999_999_999) == "2026-11-24T07:01:02.999999999Z"
    assert clock.iso(1_000_000_000) == "2026-11-24T07:01:03.000000000Z"
    assert clock.iso(-1) == "2026-11-24T07:01:01.999999999Z"
    assert clock.wall_ns(5) == _EPOCH_S * 10**9 + 5


def test_clock_iso_cache_follows_time_both_ways():
    clock = Clock(offset_ns=_EPOCH_S * 10**9)
    rng = random.Random(3)
    stamps = sorted(rng.randrange(-10**12, 10**12) for _ in range(500))
    stamps += stamps[::-1] + [rng.randrange(10**15) for _ in range(200)]
    for ts in stamps:
        second, ns = divmod(ts + clock.offset_ns, 10**9)
        expected = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
        assert clock.iso(ts) == expected.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def test_clock_iso_now_is_close_to_system_time():
    clock = Clock()
    stamp = clock.iso(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    parsed = datetime.datetime.strptime(stamp[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - parsed).total_seconds()) < 1


def test_clock_hms_local_time(set_tz):
    set_tz("UTC")
    clock = Clock(offset_ns=_EPOCH_S * 10**9)
    assert clock.hms(123456789) == "07:01:02.123"
    assert clock.hms(999_999_999) == "07:01:02.999"     # truncated, never :03.000
    assert clock.hms(1_000_000_000) == "07:01:03.000"
    set_tz("XST-5:30")                                   # POSIX TZ: UTC+5:30
    clock = Clock(offset_ns=_EPOCH_S * 10**9)
    assert clock.hms(123456789) == "12:31:02.123"


# --- users ------------------------------------------------------------------

def _unused_uid():
    for uid in range(3_999_999_000, 3_999_999_100):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("no unused uid found")


def test_user_name():
    me = os.getuid()
    try:
        expected = pwd.getpwuid(me).pw_name
    except KeyError:
        expected = str(me)
    assert user_name(me) == expected
    assert user_name(0) == pwd.getpwuid(0).pw_name
    unused = _unused_uid()
    assert user_name(unused) == str(unused)
    assert user_name(-1) == "-1"
    assert user_name(2**32 - 1) == "4294967295"
    assert user_name(2**70) == str(2**70)
    assert user_name.cache_info().maxsize is not None


def test_parse_uid_numbers_and_names():
    assert parse_uid("0") == 0
    assert parse_uid(" 1000 ") == 1000
    assert parse_uid(str(2**32 - 2)) == 2**32 - 2
    root = pwd.getpwuid(0).pw_name
    assert parse_uid(root) == 0


@pytest.mark.parametrize("text, message", [
    ("-1", "must not be negative"),
    ("4294967295", "out of range"),
    ("99999999999", "out of range"),
    ("no_such_user_rbtrace", "unknown user 'no_such_user_rbtrace'"),
    ("\u0663", "unknown user"),          # int() would read Arabic-Indic 3
    ("1_000", "unknown user"),
    ("", "unknown user ''"),
    ("a\0b", "unknown user"),
])
def test_parse_uid_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_uid(text)


# --- sizes ------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("4096", 4096),
    ("1", 1),
    ("64K", 64 << 10),
    ("64k", 64 << 10),
    ("16M", 16 << 20),
    ("16m", 16 << 20),
    ("16MiB", 16 << 20),
    ("16mib", 16 << 20),
    ("1G", 1 << 30),
    ("2T", 2 << 40),
    (" 8 K ", 8 << 10),
    ("0064K", 64 << 10),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, message", [
    ("", "invalid size ''"),
    ("abc", "invalid size 'abc'"),
    ("K", "invalid size"),
    ("1.5M", "invalid size"),
    ("16MB", "invalid size"),
    ("16KiBB", "invalid size"),
    ("16P", "invalid size"),
    ("4\u212a", "invalid size"),          # Kelvin sign, matches k under re.I
    ("\u0664K", "invalid size"),           # Arabic-Indic 4
    ("1e6", "invalid size"),
    ("0", "must be greater than zero"),
    ("0K", "must be greater than zero"),
    ("-4K", "must be greater than zero"),
    ("-1", "must be greater than zero"),
])
def test_parse_size_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_size(text)


@pytest.mark.parametrize("n, page, ok", [
    (4096, 4096, True),
    (8192, 4096, True),
    (16 << 20, 4096, True),
    (12288, 4096, False),
    (4097, 4096, False),
    (2048, 4096, False),
    (0, 4096, False),
    (-4096, 4096, False),
    (65536, 65536, True),
    (3 * 65536, 65536, False),
])
def test_is_pow2_pages(n, page, ok):
    assert is_pow2_pages(n, page) is ok


def test_is_pow2_pages_rejects_bad_page():
    with pytest.raises(ValueError, match="page size"):
        is_pow2_pages(4096, 0)
