"""Suite-wide rules.

With ``KVBENCH_NO_SKIPS=1`` (set by scripts/test.sh, the README's test command, and so by CI) a skipped
test or module is reported as a failure: a machine without vLLM, transformers or Chromium must not pass
green by skipping the integration tests that need them. Plain ``pytest`` keeps ordinary skips.
"""

from __future__ import annotations

import os

import pytest

NO_SKIPS = os.environ.get("KVBENCH_NO_SKIPS", "") not in ("", "0")


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, and KVBENCH_NO_SKIPS=1 forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped:
        _as_failure(report)
