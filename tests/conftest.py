"""Fixtures shared by the whole suite, and the rule that CI never skips silently."""

from __future__ import annotations

import os

import pytest

from bastion._core.events import EventBus
from bastion.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test advances it."""
    return FakeClock()


@pytest.fixture
def auto_clock() -> FakeClock:
    """A clock whose sleeps return at once after moving time forward."""
    return FakeClock(auto_advance=True)


@pytest.fixture
def bus() -> EventBus:
    """A private event bus, so tests never see each other's events."""
    return EventBus()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test fails the run: CI must prove everything it claims."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            print(f"\nCI forbids skips: {report.nodeid}: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
