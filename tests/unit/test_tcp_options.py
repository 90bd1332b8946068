"""rbtrace tcp's decoding helpers and option checks, without root."""
import ipaddress
import socket
import subprocess
import sys

import pytest

from rbtrace.kinds import tcp


@pytest.mark.parametrize("family, raw, text", [
    (socket.AF_INET, b"\x7f\0\0\x01", "127.0.0.1"),
    (socket.AF_INET, b"", "0.0.0.0"),                    # numpy drops trailing NULs
    (socket.AF_INET, b"\x0a", "10.0.0.0"),
    (socket.AF_INET6, b"\0" * 15 + b"\x01", "::1"),
    (socket.AF_INET6, b"", "::"),
    (socket.AF_INET6, b"\xfe\x80", "fe80::"),
])
def test_address_text(family, raw, text):
    assert tcp.address(family, raw) == text


@pytest.mark.parametrize("text", ["127.0.0.1", "::1", "10.1.2.3", "fe80::1", "::ffff:127.0.0.1"])
def test_addr_filter_words_are_the_bytes_in_memory(text):
    addr = ipaddress.ip_address(text)
    flags = tcp.addr_cflags(addr)
    assert flags["FILTER_ADDR_FAMILY"] == (socket.AF_INET if addr.version == 4 else socket.AF_INET6)
    lo = int(flags["FILTER_ADDR_LO"].rstrip("ULL"), 16)
    hi = int(flags["FILTER_ADDR_HI"].rstrip("ULL"), 16)
    raw = lo.to_bytes(8, "little") + hi.to_bytes(8, "little")
    assert raw == addr.packed.ljust(16, b"\0")


@pytest.mark.parametrize("args, message", [
    (["--addr", "localhost"], "'localhost' is not an IPv4 or IPv6 address"),
    (["--addr", "300.1.1.1"], "is not an IPv4 or IPv6 address"),
    (["--port", "0"], "0 is not in the range 1<=x<=65535"),
    (["--port", "65536"], "65536 is not in the range"),
])
def test_bad_options_are_usage_errors(args, message):
    p = subprocess.run([sys.executable, "-m", "rbtrace", "tcp", *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbtrace: ") and message in lines[0], p.stderr
