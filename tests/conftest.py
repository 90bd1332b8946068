"""Test-suite rules shared by unit and kernel tests.

Kernel tests (tests/kernel) load real BPF programs.  When they can't run
(not root, no BCC) they skip locally.  With CI=true the run must prove it
exercised the kernel, whatever options it was given, so the guard below
makes the run fail when:

- a kernel test is skipped while it runs (a skip in a fixture or a test,
  `pytestmark = pytest.mark.skip`, an xfail);
- a kernel test file is skipped while it is collected (a module-level
  `pytest.skip(allow_module_level=True)` or `pytest.importorskip`);
- fewer kernel tests ran than exist in tests/kernel.  What exists is
  counted apart from this run's selection: at the end, a second pytest
  collects tests/kernel alone, with PYTEST_ADDOPTS and the ini file's
  addopts cleared, and the guard compares node ids.  So `-m "not kernel"`,
  `-k`, `--deselect`, `--ignore`, `--lf`, `--co`, `--setup-only`, a path
  that leaves tests/kernel out, `-x` stopping early, and all of these
  through PYTEST_ADDOPTS or the ini file fail alike.  Collecting is cheap
  (no BPF is loaded); parametrized tests count one per parameter set,
  which a static count of `def test_` could not get right.

tests/kernel/conftest.py refuses to run kernel tests under CI=true when
this file was kept from loading (`--confcutdir`); `-p no:rbtrace_ci_guard`
is refused here, and pytest refuses `-p no:<this file>` itself.
`--noconftest` switches every conftest off, this one too; .ci/run clears
PYTEST_ADDOPTS so that CI runs the Makefile's command as written.

The final summary line says how many kernel tests ran.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# `make test` runs pytest under make, which exports its level and job
# server: a workload's own `make -j2` would then print "make[1]: Entering
# directory" and share the outer job server.  The tests' workloads start
# as from a shell.
for _var in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"):
    os.environ.pop(_var, None)
KERNEL_DIR = Path(__file__).resolve().parent / "kernel"
GUARD_NAME = "rbtrace_ci_guard"
# Set (to "<parent pid>:<file>") only for the second pytest that counts
# the kernel tests: it writes what it collected to <file> and checks nothing.
INVENTORY_ENV = "RBTRACE_KERNEL_INVENTORY"


def _is_kernel_path(path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(KERNEL_DIR)
        return True
    except ValueError:
        return False


def _is_kernel_test(item):
    return _is_kernel_path(item.path)


def _inventory_file():
    """The file to write the inventory to, when this pytest is the counter."""
    value = os.environ.get(INVENTORY_ENV, "")
    pid, _, path = value.partition(":")
    if pid.isdigit() and int(pid) == os.getppid() and path:
        return path
    return None


class CiGuard:
    def __init__(self, config):
        self.config = config
        self.inventory_to = _inventory_file()
        self.counts = {"ran": 0, "passed": 0, "failed": 0, "skipped": 0, "refused_skips": 0}
        self.ran = set()                 # node ids of kernel tests that ran
        self.skipped_files = {}          # kernel files skipped at collection: reason
        self.problems = []

    # --- collection -------------------------------------------------------
    def pytest_collectreport(self, report):
        path = self.config.rootpath / report.nodeid.split("::")[0]
        if report.skipped and _is_kernel_path(path):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.skipped_files[report.nodeid] = reason

    def pytest_collection_modifyitems(self, config, items):
        for item in items:
            if _is_kernel_test(item):
                item.add_marker(pytest.mark.kernel)

    def pytest_collection_finish(self, session):
        if self.inventory_to:
            with open(self.inventory_to, "w") as f:
                json.dump({"tests": [i.nodeid for i in session.items if _is_kernel_test(i)],
                           "skipped_files": self.skipped_files}, f)

    # --- running ----------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not _is_kernel_test(item):
            return
        if report.skipped and CI:
            report.outcome = "failed"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            report.longrepr = f"kernel test skipped under CI=true (skips fail in CI): {reason}"
            self.counts["refused_skips"] += 1       # failed, but it did not run
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            if report.outcome == "skipped":
                self.counts["skipped"] += 1
            else:
                self.counts["ran"] += 1
                self.counts[report.outcome] += 1
                self.ran.add(item.nodeid)

    # --- the end ----------------------------------------------------------
    def pytest_sessionfinish(self, session):
        if not CI or self.inventory_to:
            return
        for nodeid, reason in sorted(self.skipped_files.items()):
            self.problems.append(f"kernel test file skipped at collection: {nodeid}: {reason}")
        inventory = self._count_kernel_tests()
        if inventory is not None:
            for nodeid, reason in sorted(inventory["skipped_files"].items()):
                if nodeid not in self.skipped_files:
                    self.problems.append(f"kernel test file skipped at collection: "
                                         f"{nodeid}: {reason}")
            exist = set(inventory["tests"])
            missing = sorted(exist - self.ran)
            if missing:
                shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
                self.problems.append(f"{len(exist) - len(missing)} of {len(exist)} kernel tests "
                                     f"ran; not run: {shown}")
        if self.problems and session.exitstatus in (pytest.ExitCode.OK,
                                                    pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.problems and self.config.pluginmanager.get_plugin("terminalreporter") is None:
            for p in self.problems:
                sys.stderr.write(f"CI=true: {p}\n")

    def _count_kernel_tests(self):
        """Every kernel test there is: tests/kernel collected by a pytest of
        its own, whatever this run selected."""
        with tempfile.TemporaryDirectory(prefix="rbtrace-inventory-") as tmp:
            out = os.path.join(tmp, "inventory.json")
            env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
            env[INVENTORY_ENV] = f"{os.getpid()}:{out}"
            cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q",
                   "-p", "no:cacheprovider", "-o", "addopts=",
                   "--rootdir", str(self.config.rootpath)]
            if self.config.inipath:
                cmd += ["-c", str(self.config.inipath)]
            p = subprocess.run(cmd + [str(KERNEL_DIR)], cwd=self.config.rootpath, env=env,
                               capture_output=True, text=True)
            try:
                with open(out) as f:
                    return json.load(f)
            except (OSError, ValueError):
                tail = (p.stdout + p.stderr).strip().splitlines()[-5:]
                self.problems.append("could not count the kernel tests (collecting "
                                     f"{KERNEL_DIR} failed, rc={p.returncode}): "
                                     + " | ".join(tail))
                return None

    def pytest_terminal_summary(self, terminalreporter):
        # Counted into pytest's own closing line ("..., N kernel tests ran in
        # 12s"), so that the last line of the run says it.
        c = self.counts
        if c["ran"]:
            terminalreporter.stats.setdefault("kernel tests ran", []).extend([None] * c["ran"])
        terminalreporter.write_line(
            f"kernel tests: {c['ran']} ran ({c['passed']} passed, "
            f"{c['failed']} failed), {c['skipped']} skipped, "
            f"{c['refused_skips']} skips refused under CI=true")
        for p in self.problems:
            terminalreporter.write_line(f"CI=true: {p}", red=True, bold=True)
        if self.problems:
            terminalreporter.stats.setdefault("CI guard failures", []).extend(self.problems)


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: loads real BPF programs (needs root)")
    if CI and config.pluginmanager.is_blocked(GUARD_NAME):
        raise pytest.UsageError(f"CI=true: the CI guard (tests/conftest.py) may not be "
                                f"disabled (-p no:{GUARD_NAME})")
    if not config.pluginmanager.has_plugin(GUARD_NAME):
        config.pluginmanager.register(CiGuard(config), GUARD_NAME)


@pytest.fixture
def notices():
    """The core's notices (rbtrace/notice.py) during the test: a list of
    (text, line) as the sink receives them; the previous sink after."""
    from rbtrace import notice
    got = []
    old = notice.set_sink(lambda text, line: got.append((text, line)))
    yield got
    notice.set_sink(old)


@pytest.fixture
def stderr_notices():
    """The command line's sink (cli._notice_to_stderr) during the test."""
    from rbtrace import cli, notice
    old = notice.set_sink(cli._notice_to_stderr)
    yield
    notice.set_sink(old)
