"""Under CI=true no run may pass without running every kernel test.

Each case runs pytest in a subprocess on a small synthetic tree: the real
tests/conftest.py and tests/kernel/conftest.py, copied, over a fake
tests/kernel of plain tests (no BPF), so it is cheap.  Every way of
leaving kernel tests out must end in a non-zero exit that says why.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent

KERNEL_A = """
import pytest

def test_one():
    pass

@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(n):
    assert n
"""
KERNEL_B = """
def test_b():
    pass
"""
UNIT = """
def test_unit():
    pass
"""
ALL_KERNEL = 5       # test_one, test_param x3, test_b


def tree(tmp_path, kernel_b=KERNEL_B, unit=UNIT):
    root = tmp_path / "repo"
    (root / "tests" / "kernel").mkdir(parents=True)
    (root / "tests" / "unit").mkdir()
    shutil.copy(TESTS / "conftest.py", root / "tests" / "conftest.py")
    shutil.copy(TESTS / "kernel" / "conftest.py", root / "tests" / "kernel" / "conftest.py")
    (root / "tests" / "kernel" / "test_a.py").write_text(KERNEL_A)
    (root / "tests" / "kernel" / "test_b.py").write_text(textwrap.dedent(kernel_b))
    (root / "tests" / "unit" / "test_u.py").write_text(textwrap.dedent(unit))
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\naddopts = -ra\n")
    return root


def pytest_in(root, *args, ci=True, addopts=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci:
        env["CI"] = "true"
    if addopts is not None:
        env["PYTEST_ADDOPTS"] = addopts
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                       cwd=root, env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def test_a_full_run_passes_and_counts_every_kernel_test(tmp_path):
    rc, out = pytest_in(tree(tmp_path))
    assert rc == 0, out
    assert f"kernel tests: {ALL_KERNEL} ran ({ALL_KERNEL} passed, 0 failed)" in out
    assert "CI=true:" not in out


@pytest.mark.parametrize("args, addopts, ran", [
    (["-m", "not kernel"], None, 0),
    (["--ignore=tests/kernel"], None, 0),
    ([], "--ignore=tests/kernel", 0),
    ([], "-m 'not kernel'", 0),
    (["--deselect", "tests/kernel/test_a.py::test_one"], None, ALL_KERNEL - 1),
    ([], "--deselect tests/kernel/test_a.py::test_param[2]", ALL_KERNEL - 1),
    (["-k", "not test_param"], None, ALL_KERNEL - 3),
    (["tests/unit"], None, 0),
    (["tests/kernel/test_b.py"], None, 1),
    (["--co"], None, 0),
    (["--setup-only"], None, 0),
    (["-o", "addopts=-m 'not kernel'"], None, 0),
])
def test_kernel_tests_left_out_fail_the_run(tmp_path, args, addopts, ran):
    root = tree(tmp_path)
    rc, out = pytest_in(root, *args, addopts=addopts)
    assert rc != 0, out
    assert f"CI=true: {ran} of {ALL_KERNEL} kernel tests ran; not run: " in out, out


def test_without_ci_a_selection_is_the_developers_choice(tmp_path):
    root = tree(tmp_path)
    for args in (["-m", "not kernel"], ["tests/unit"], ["-k", "not test_param"]):
        rc, out = pytest_in(root, *args, ci=False)
        assert rc == 0 and "CI=true:" not in out, out


def test_stopping_early_is_counted_too(tmp_path):
    root = tree(tmp_path, unit="def test_unit():\n    assert False\n")
    rc, out = pytest_in(root, "-x", "tests/unit", "tests/kernel")
    assert rc == 1
    assert f"CI=true: 0 of {ALL_KERNEL} kernel tests ran" in out, out


@pytest.mark.parametrize("kernel_b, reason", [
    ("import pytest\npytest.skip('no BCC here', allow_module_level=True)\n", "no BCC here"),
    ("import pytest\nbcc = pytest.importorskip('rbtrace_no_such_module')\n",
     "rbtrace_no_such_module"),
])
def test_a_kernel_file_skipped_at_collection_fails_the_run(tmp_path, kernel_b, reason):
    root = tree(tmp_path, kernel_b=kernel_b)
    rc, out = pytest_in(root)
    assert rc == 1, out
    assert "CI=true: kernel test file skipped at collection: tests/kernel/test_b.py: " in out, out
    assert reason in out
    # Left out of the selection as well, it is still found by the count.
    rc, out = pytest_in(root, "tests/unit")
    assert rc == 1 and "kernel test file skipped at collection: tests/kernel/test_b.py" in out, out


@pytest.mark.parametrize("kernel_b", [
    "import pytest\npytestmark = pytest.mark.skip('not today')\ndef test_b():\n    pass\n",
    "import pytest\n@pytest.fixture\ndef needs():\n    pytest.skip('not root')\n"
    "def test_b(needs):\n    pass\n",
    "import pytest\ndef test_b():\n    pytest.skip('not root')\n",
])
def test_a_kernel_test_skipped_while_running_fails(tmp_path, kernel_b):
    rc, out = pytest_in(tree(tmp_path, kernel_b=kernel_b))
    assert rc == 1, out
    assert "kernel test skipped under CI=true (skips fail in CI)" in out, out
    rc, out = pytest_in(tree(tmp_path / "local", kernel_b=kernel_b), ci=False)
    assert rc == 0 and "1 skipped" in out, out


@pytest.mark.parametrize("args, message", [
    (["--confcutdir=tests/kernel"], "CI=true: the CI guard in tests/conftest.py is not loaded"),
    (["-p", "no:rbtrace_ci_guard", "--ignore=tests/kernel"],
     "CI=true: the CI guard (tests/conftest.py) may not be disabled"),
    # pytest itself refuses this one.
    (["-p", "no:{root}/tests/conftest.py"], "conftest.py files are not plugins"),
])
def test_keeping_the_guard_from_loading_is_refused(tmp_path, args, message):
    root = tree(tmp_path)
    args = [a.format(root=root) for a in args]
    rc, out = pytest_in(root, *args)
    assert rc != 0, out
    assert message in out, out


def test_the_counting_pytest_ignores_an_inherited_inventory_request(tmp_path):
    """The counter's own mode is keyed to its parent's pid: a variable
    left in the environment does not switch the guard off."""
    root = tree(tmp_path)
    env_addopts = "--ignore=tests/kernel"
    os.environ["RBTRACE_KERNEL_INVENTORY"] = f"1:{tmp_path}/x.json"
    try:
        rc, out = pytest_in(root, addopts=env_addopts)
    finally:
        del os.environ["RBTRACE_KERNEL_INVENTORY"]
    assert rc != 0 and f"0 of {ALL_KERNEL} kernel tests ran" in out, out


def test_ci_run_sets_ci_and_runs_make_test_only(tmp_path):
    """.ci/run with a `make` that records how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    make = bin_dir / "make"
    make.write_text(f'#!/bin/sh\necho "$* CI=$CI ADDOPTS=${{PYTEST_ADDOPTS-unset}}" >> {record}\n')
    make.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTEST_ADDOPTS="--noconftest")
    p = subprocess.run([str(TESTS.parent / ".ci" / "run")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert record.read_text() == "test CI=true ADDOPTS=unset\n"
