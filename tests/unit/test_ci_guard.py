"""Under CI=true no run may pass without running every kernel test.

Each case runs pytest in a subprocess on a small synthetic tree: the real
tests/conftest.py and tests/kernel/conftest.py, copied, over a fake
tests/kernel of plain tests (no BPF), so it is cheap.  Every way of
leaving kernel tests out must end in a non-zero exit that says why.  The
runs are independent, so they are all started together the first time a
test asks for one.
"""
import concurrent.futures
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
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
KERNEL_B = "def test_b():\n    pass\n"
UNIT = "def test_unit():\n    pass\n"
ALL_KERNEL = 5       # test_one, test_param x3, test_b


@dataclass(frozen=True)
class Run:
    args: tuple = ()
    addopts: str = None
    ci: bool = True
    kernel_b: str = KERNEL_B
    unit: str = UNIT
    inventory_env: bool = False     # RBTRACE_KERNEL_INVENTORY left in the environment


def tree(root, run):
    (root / "tests" / "kernel").mkdir(parents=True)
    (root / "tests" / "unit").mkdir()
    shutil.copy(TESTS / "conftest.py", root / "tests" / "conftest.py")
    shutil.copy(TESTS / "kernel" / "conftest.py", root / "tests" / "kernel" / "conftest.py")
    (root / "tests" / "kernel" / "test_a.py").write_text(KERNEL_A)
    (root / "tests" / "kernel" / "test_b.py").write_text(textwrap.dedent(run.kernel_b))
    (root / "tests" / "unit" / "test_u.py").write_text(textwrap.dedent(run.unit))
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\naddopts = -ra\n")
    return root


def pytest_in(root, run, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if run.ci:
        env["CI"] = "true"
    if run.addopts is not None:
        env["PYTEST_ADDOPTS"] = run.addopts
    env.update(extra_env or {})
    args = [a.format(root=root) for a in run.args]
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


# --- the cases ------------------------------------------------------------

FULL = Run()

LEFT_OUT = [      # (run, kernel tests that ran)
    (Run(args=("-m", "not kernel")), 0),
    (Run(args=("--ignore=tests/kernel",)), 0),
    (Run(addopts="--ignore=tests/kernel"), 0),
    (Run(addopts="-m 'not kernel'"), 0),
    (Run(args=("--deselect", "tests/kernel/test_a.py::test_one")), ALL_KERNEL - 1),
    (Run(addopts="--deselect tests/kernel/test_a.py::test_param[2]"), ALL_KERNEL - 1),
    (Run(args=("-k", "not test_param")), ALL_KERNEL - 3),
    (Run(args=("tests/unit",)), 0),
    (Run(args=("tests/kernel/test_b.py",)), 1),
    (Run(args=("--co",)), 0),
    (Run(args=("--setup-only",)), 0),
    (Run(args=("-o", "addopts=-m 'not kernel'")), 0),
    # -x stopping at a failed unit test, before the kernel tests
    (Run(args=("-x", "tests/unit", "tests/kernel"), unit="def test_unit():\n    assert False\n"),
     0),
]

LOCAL = [Run(args=a, ci=False) for a in (("-m", "not kernel"), ("tests/unit",),
                                         ("-k", "not test_param"))]

MODULE_SKIPS = [
    ("import pytest\npytest.skip('no BCC here', allow_module_level=True)\n", "no BCC here"),
    ("import pytest\nbcc = pytest.importorskip('rbtrace_no_such_module')\n",
     "rbtrace_no_such_module"),
]
MODULE_SKIP_RUNS = [(Run(kernel_b=src), Run(kernel_b=src, args=("tests/unit",)), reason)
                    for src, reason in MODULE_SKIPS]

RUNTIME_SKIPS = [
    "import pytest\npytestmark = pytest.mark.skip('not today')\ndef test_b():\n    pass\n",
    "import pytest\n@pytest.fixture\ndef needs():\n    pytest.skip('not root')\n"
    "def test_b(needs):\n    pass\n",
    "import pytest\ndef test_b():\n    pytest.skip('not root')\n",
]
RUNTIME_SKIP_RUNS = [(Run(kernel_b=src), Run(kernel_b=src, ci=False)) for src in RUNTIME_SKIPS]

GUARD_OFF = [
    (Run(args=("--confcutdir=tests/kernel",)),
     "CI=true: the CI guard in tests/conftest.py is not loaded"),
    (Run(args=("-p", "no:rbtrace_ci_guard", "--ignore=tests/kernel")),
     "CI=true: the CI guard (tests/conftest.py) may not be disabled"),
    # pytest itself refuses this one.
    (Run(args=("-p", "no:{root}/tests/conftest.py")), "conftest.py files are not plugins"),
]

# A variable left in the environment does not switch the guard off: the
# counter's own mode is keyed to its parent's pid.
INHERITED = Run(addopts="--ignore=tests/kernel", inventory_env=True)

ALL_RUNS = ([FULL, INHERITED] + [r for r, _ in LEFT_OUT] + LOCAL
            + [r for pair in MODULE_SKIP_RUNS for r in pair[:2]]
            + [r for pair in RUNTIME_SKIP_RUNS for r in pair]
            + [r for r, _ in GUARD_OFF])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ci-guard")

    def one(i, run):
        env = {"RBTRACE_KERNEL_INVENTORY": f"1:{base}/x.json"} if run.inventory_env else None
        return pytest_in(tree(base / str(i), run), run, env)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {run: pool.submit(one, i, run) for i, run in enumerate(dict.fromkeys(ALL_RUNS))}
        return {run: f.result() for run, f in futures.items()}


# --- the tests ------------------------------------------------------------

def test_a_full_run_passes_and_counts_every_kernel_test(runs):
    rc, out = runs[FULL]
    assert rc == 0, out
    assert f"kernel tests: {ALL_KERNEL} ran ({ALL_KERNEL} passed, 0 failed)" in out
    assert "CI=true:" not in out


@pytest.mark.parametrize("run, ran", LEFT_OUT)
def test_kernel_tests_left_out_fail_the_run(runs, run, ran):
    rc, out = runs[run]
    assert rc != 0, out
    assert f"CI=true: {ran} of {ALL_KERNEL} kernel tests ran; not run: " in out, out


@pytest.mark.parametrize("run", LOCAL)
def test_without_ci_a_selection_is_the_developers_choice(runs, run):
    rc, out = runs[run]
    assert rc == 0 and "CI=true:" not in out, out


@pytest.mark.parametrize("run, selected, reason", MODULE_SKIP_RUNS)
def test_a_kernel_file_skipped_at_collection_fails_the_run(runs, run, selected, reason):
    rc, out = runs[run]
    assert rc == 1, out
    assert "CI=true: kernel test file skipped at collection: tests/kernel/test_b.py: " in out, out
    assert reason in out
    # Left out of the selection as well, it is still found by the count.
    rc, out = runs[selected]
    assert rc == 1 and "kernel test file skipped at collection: tests/kernel/test_b.py" in out, out


@pytest.mark.parametrize("run, local", RUNTIME_SKIP_RUNS)
def test_a_kernel_test_skipped_while_running_fails(runs, run, local):
    rc, out = runs[run]
    assert rc == 1, out
    assert "kernel test skipped under CI=true (skips fail in CI)" in out, out
    rc, out = runs[local]
    assert rc == 0 and "1 skipped" in out, out


@pytest.mark.parametrize("run, message", GUARD_OFF)
def test_keeping_the_guard_from_loading_is_refused(runs, run, message):
    rc, out = runs[run]
    assert rc != 0, out
    assert message in out, out


def test_the_counting_pytest_ignores_an_inherited_inventory_request(runs):
    rc, out = runs[INHERITED]
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
