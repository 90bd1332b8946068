"""Bad input never reaches the kernel: one line on stderr, exit 2, empty
stdout.  These run without root: validation happens before anything loads."""
import subprocess
import sys

import pytest

from rbtrace import __version__
from rbtrace.cli import c_string_literal


def run(*args):
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True, timeout=60)


@pytest.mark.parametrize("args, needle", [
    (["exec", "--count", "0"], "--count"),
    (["exec", "--count", "-3"], "--count"),
    (["exec", "--count", "many"], "--count"),
    (["exec", "--duration", "0"], "--duration"),
    (["exec", "--duration", "-1"], "--duration"),
    (["exec", "--ring-size", "3M"], "power of two"),
    (["exec", "--ring-size", "1000"], "power of two"),
    (["exec", "--ring-size", "lots"], "--ring-size"),
    (["exec", "--uid", "no-such-user-xyz"], "unknown user"),
    (["exec", "--uid", "-5"], "--uid"),
    (["exec", "--comm", "a-name-longer-than-15"], "15 bytes"),
    (["exec", "--pid", "0"], "--pid"),
    (["exec", "--max-args", "0"], "--max-args"),
    (["exec", "--no-such-option"], "no-such-option"),
    (["no-such-command"], "no-such-command"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    p = run(*args)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert p.stdout == b""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rbtrace: ") and needle in err
    assert "Traceback" not in err


def test_version():
    p = run("--version")
    assert p.returncode == 0
    assert __version__ in p.stdout.decode()


def test_help_lists_commands():
    out = run("--help").stdout.decode()
    for cmd in ("exec", "doctor"):
        assert cmd in out


def test_comm_literal_is_exact_bytes_for_c():
    lit = c_string_literal('a"\\b')
    assert lit == '"\\141\\042\\134\\142"'
