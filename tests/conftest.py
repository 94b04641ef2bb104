"""Session-wide: count what each tier really ran, and refuse a CI run whose integration tier ran nothing."""

from __future__ import annotations

import os
from collections import Counter

import pytest

TIERS = ("unit", "integration", "e2e")
_outcomes: dict[str, Counter[str]] = {tier: Counter() for tier in TIERS}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # One outcome per test: the call phase, or the setup phase when it skipped or failed there.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for tier in TIERS:
            if tier in report.keywords:
                _outcomes[tier][report.outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("pinserve test tiers")
    for tier in TIERS:
        counts = _outcomes[tier]
        terminalreporter.write_line(
            f"{tier}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    selected_integration = any(item.get_closest_marker("integration") for item in session.items)
    if in_ci and selected_integration and _outcomes["integration"]["passed"] == 0 and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test belongs to a tier: `make test` selects by tier, so an unmarked test would never run."""
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(tier) for tier in TIERS)]
    if untiered:
        raise pytest.UsageError(
            f"{len(untiered)} test(s) carry no tier marker ({', '.join(TIERS)}), so `make test` would skip "
            f"them: {', '.join(untiered[:5])}{' ...' if len(untiered) > 5 else ''}"
        )
