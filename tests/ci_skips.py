"""Under ``CI=true`` a skip is a failure, except for the tests marked ``cuda``.

A green CI must mean the browser, S3, full-disk and real-data tests ran: a test that skips
for a missing part (Chromium, ``weed``, a mountable tmpfs, the real Fashion-MNIST) fails the
run there, naming the part. Only hardware CI cannot have, a GPU, may skip, with its reason.
``tests/conftest.py`` installs these hooks; outside CI a skip stays a skip.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

__all__ = ["in_ci", "pytest_make_collect_report", "pytest_runtest_makereport"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _fail_skip(report: pytest.CollectReport | pytest.TestReport, node: pytest.Item | pytest.Collector) -> None:
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail") or node.get_closest_marker("cuda"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where only the CUDA tests may skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    _fail_skip(outcome.get_result(), item)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_skip(outcome.get_result(), collector)  # a module or a conftest that skips as a whole
