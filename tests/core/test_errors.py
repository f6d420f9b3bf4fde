"""Errors carry what a caller needs to act, and say it in words."""

from __future__ import annotations

import pytest

from bastion import (
    BastionError,
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    RateLimitError,
    RejectedError,
    ShuttingDownError,
)
from bastion._core.errors import summarize


def test_hierarchy() -> None:
    assert issubclass(CallTimeoutError, TimeoutError)
    assert issubclass(ConfigurationError, ValueError)
    for rejected in (CircuitOpenError, RateLimitError, BulkheadFullError, ShuttingDownError):
        assert issubclass(rejected, RejectedError)
        assert issubclass(rejected, BastionError)


def test_rate_limit_error_fields_and_message() -> None:
    exc = RateLimitError("user-1", retry_after=1.5, limit=60, remaining=0, window=60, cost=1)
    assert (exc.retry_after, exc.limit, exc.remaining, exc.key) == (1.5, 60, 0, "user-1")
    assert exc.http_status == 429
    assert "60 per 60s" in str(exc)
    assert "retry in 1.5s" in str(exc)


def test_circuit_open_error_says_when_to_come_back() -> None:
    exc = CircuitOpenError("gpt-4o", retry_after=12.0)
    assert exc.retry_after == 12.0
    assert "retry in 12s" in str(exc)
    forced = CircuitOpenError("gpt-4o", retry_after=None, state="forced_open")
    assert "operator" in str(forced)
    assert forced.state == "forced_open"


def test_timeout_error_is_transient_and_names_its_scope() -> None:
    exc = CallTimeoutError("agent", timeout=2.0, scope="total")
    assert exc.transient
    assert "2s (total timeout)" in str(exc)


def test_bulkhead_and_shutdown_messages() -> None:
    full = BulkheadFullError("db", max_concurrent=2, max_queued=0, reason="queue full")
    assert "at most 2" in str(full)
    assert full.http_status == 503
    assert "shutting down" in str(ShuttingDownError("agent"))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("bad"), "ValueError: bad"),
        (KeyError(), "KeyError"),
        (RuntimeError("x" * 500), "RuntimeError: " + "x" * 197 + "..."),
    ],
)
def test_summarize(exc: BaseException, expected: str) -> None:
    assert summarize(exc) == expected
