"""Health: counters in, a status out, by the documented rules."""

from __future__ import annotations

import pytest

from bastion import ConfigurationError, HealthConfig, HealthStatus, RateLimitError
from bastion.resilience._health import HealthTracker
from bastion.testing import FakeClock


def report(tracker: HealthTracker, circuit: str | None = "closed", *, closing: bool = False):  # type: ignore[no-untyped-def]
    return tracker.report(name="agent", circuit_state=circuit, in_flight=0, shutting_down=closing)


def test_empty_tracker_is_healthy(clock: FakeClock) -> None:
    health = report(HealthTracker(clock=clock))
    assert health.status is HealthStatus.HEALTHY
    assert health.total_runs == 0
    assert health.average_latency_ms is None
    assert health.p50_latency_ms is None
    assert health.last_run_at is None


def test_counters_and_percentiles(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock)
    for ms in range(1, 101):
        tracker.record(ms / 1000)
    tracker.record(0.5, ConnectionError("boom"))
    clock.advance(12)
    health = report(tracker)
    assert health.total_runs == 101
    assert health.total_failures == 1
    assert health.p50_latency_ms == pytest.approx(51)
    assert health.p95_latency_ms == pytest.approx(96)
    assert health.p99_latency_ms == pytest.approx(100)
    assert health.average_latency_ms == pytest.approx((5050 + 500) / 101)
    assert health.last_error == "ConnectionError: boom"
    assert health.uptime_s == 12
    assert health.last_run_at == clock.time() - 12
    assert health.to_dict()["status"] == "healthy"


@pytest.mark.parametrize(
    ("circuit", "closing", "expected"),
    [
        ("open", False, HealthStatus.UNHEALTHY),
        ("forced_open", False, HealthStatus.UNHEALTHY),
        ("half_open", False, HealthStatus.DEGRADED),
        ("closed", True, HealthStatus.UNHEALTHY),
        ("disabled", False, HealthStatus.HEALTHY),
        (None, False, HealthStatus.HEALTHY),
    ],
)
def test_circuit_and_shutdown_rules(
    clock: FakeClock, circuit: str | None, closing: bool, expected: HealthStatus
) -> None:
    assert report(HealthTracker(clock=clock), circuit, closing=closing).status is expected


def test_recent_failure_rate_degrades_only_with_enough_runs(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock)
    for _ in range(4):
        tracker.record(0.01, ConnectionError())
    assert report(tracker).status is HealthStatus.HEALTHY  # 4 runs < min_runs 5
    tracker.record(0.01, ConnectionError())
    assert report(tracker).status is HealthStatus.DEGRADED
    for _ in range(20):
        tracker.record(0.01)
    health = report(tracker)
    assert health.recent_failure_rate == 0
    assert health.status is HealthStatus.HEALTHY
    assert health.total_failures == 5


def test_rejections_and_fallbacks_are_counted_apart(clock: FakeClock) -> None:
    tracker = HealthTracker(clock=clock)
    tracker.record(0.0, RateLimitError("k", retry_after=1, limit=1, remaining=0, window=60))
    tracker.record(0.2, None, fallback=True)
    health = report(tracker)
    assert (health.total_runs, health.total_rejected, health.fallback_runs) == (1, 1, 1)
    assert health.total_failures == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recent_runs": 0},
        {"degraded_failure_rate": 0},
        {"degraded_failure_rate": 1.5},
        {"min_runs": 30},
    ],
)
def test_invalid_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match="HealthConfig"):
        HealthConfig(**kwargs)  # type: ignore[arg-type]
