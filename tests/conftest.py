"""Test-suite rules shared by unit and kernel tests.

Kernel tests (tests/kernel) load real BPF programs.  When they can't run
(not root, no BCC) they skip locally, but with CI=true a skip is turned
into a failure: CI can never pass without exercising the kernel.  The
final summary line says how many kernel tests ran.
"""
import os

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_kernel = {"ran": 0, "passed": 0, "failed": 0, "skipped": 0, "refused_skips": 0}


def _is_kernel_test(item):
    return "tests/kernel/" in str(item.fspath).replace(os.sep, "/")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_kernel_test(item):
            item.add_marker(pytest.mark.kernel)


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: loads real BPF programs (needs root)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not _is_kernel_test(item):
        return
    if report.skipped and CI:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"kernel test skipped under CI=true (skips fail in CI): {reason}"
        _kernel["refused_skips"] += 1       # failed, but it did not run
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.outcome == "skipped":
            _kernel["skipped"] += 1
        else:
            _kernel["ran"] += 1
            _kernel[report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    # Counted into pytest's own closing line ("..., N kernel tests ran in
    # 12s"), so that the last line of the run says it.
    if _kernel["ran"]:
        terminalreporter.stats.setdefault("kernel tests ran", []).extend([None] * _kernel["ran"])
    terminalreporter.write_line(
        f"kernel tests: {_kernel['ran']} ran ({_kernel['passed']} passed, "
        f"{_kernel['failed']} failed), {_kernel['skipped']} skipped, "
        f"{_kernel['refused_skips']} skips refused under CI=true")
