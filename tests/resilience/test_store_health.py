"""Store health: StoreDegraded events in, degraded stores and a status out, on a fake clock.

The store that fails here is a real Redis store pointed at a port nobody
listens on: the connection is refused at once, so these tests need no server
and never wait. Killing and restarting real servers is in
``tests/stores/test_store_health.py``.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion import (
    ConfigurationError,
    DegradedStore,
    EventBus,
    HealthConfig,
    HealthStatus,
    RateLimitConfig,
    RateLimiter,
    StoreHealth,
    StoreUnavailableError,
    check_stores,
    with_resilience,
)
from bastion.resilience._health import HealthTracker
from bastion.stores import FailureMode, MemoryStore, StoreDegraded, open_store
from bastion.stores._base import report_degraded
from bastion.testing import FakeClock


@pytest.fixture(autouse=True)
def _quiet_degraded_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Each failure is logged as a warning by design; keep them out of the test output."""
    with caplog.at_level(logging.ERROR, logger="bastion.stores"):
        yield


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def dead_redis() -> AsyncIterator[Any]:
    """A Redis store with no server behind it: every operation is refused at once."""
    store = open_store(f"redis://127.0.0.1:{unused_port()}/0", timeout=0.5)
    yield store
    await store.aclose()


def degrade(
    bus: EventBus,
    *,
    source: str = "api",
    backend: str = "redis",
    operation: str = "rate_limit",
    reason: str = "connection refused",
    mode: FailureMode = "open",
) -> None:
    """What a concern does when its store is down: report it (the concerns' own function)."""
    error = StoreUnavailableError(backend, operation=operation, reason=reason)
    report_degraded(error, source=source, mode=mode, bus=bus)


async def answer(question: str) -> str:
    return f"answer to {question}"


def limited_agent(store: Any, clock: FakeClock, bus: EventBus, **config: Any) -> Any:
    limiter = RateLimiter(
        RateLimitConfig(max_rpm=100, **config), name="api", clock=clock, bus=bus, backend=store
    )
    return with_resilience(
        answer, rate_limit=limiter, clock=clock, bus=bus, graceful_shutdown=False
    )


# -- StoreHealth --------------------------------------------------------------------------------


def test_a_store_stays_degraded_until_quiet_for_the_window(clock: FakeClock, bus: EventBus) -> None:
    health = StoreHealth(bus=bus, clock=clock, degraded_for=30)
    assert health.degraded() == ()
    degrade(bus)
    clock.advance(10)
    degrade(bus, operation="ping", reason="timed out", mode="closed")
    clock.advance(29.5)
    assert health.degraded() == (
        DegradedStore(
            backend="redis",
            source="api",
            operation="ping",  # the latest event speaks for the store
            reason="timed out",
            action="refused",
            events=2,
            seconds_since_first=39.5,
            seconds_since_last=29.5,
        ),
    )
    clock.advance(0.5)  # 30 s without news: recovered
    assert health.degraded() == ()


def test_an_event_after_recovery_starts_a_new_episode(clock: FakeClock, bus: EventBus) -> None:
    health = StoreHealth(bus=bus, clock=clock, degraded_for=5)
    degrade(bus)
    clock.advance(5)
    degrade(bus)  # the old episode ended even though nobody asked in between
    clock.advance(1)
    [store] = health.degraded()
    assert (store.events, store.seconds_since_first) == (1, 1)


def test_one_entry_per_backend_and_source_in_a_stable_order(
    clock: FakeClock, bus: EventBus
) -> None:
    health = StoreHealth(bus=bus, clock=clock)
    degrade(bus, source="budget", backend="postgresql", mode="closed")
    degrade(bus, source="api")
    degrade(bus, source="api", backend="postgresql")
    degrade(bus, source="api")
    seen = [(s.backend, s.source, s.action, s.events) for s in health.degraded()]
    assert seen == [
        ("postgresql", "api", "allowed", 1),
        ("postgresql", "budget", "refused", 1),
        ("redis", "api", "allowed", 2),
    ]


def test_sources_keep_only_the_named_concerns(clock: FakeClock, bus: EventBus) -> None:
    health = StoreHealth(bus=bus, clock=clock, sources=["api", "search"])
    degrade(bus, source="budget")
    assert health.degraded() == ()
    degrade(bus, source="search")
    assert [s.source for s in health.degraded()] == ["search"]


def test_close_unsubscribes_and_keeps_what_was_seen(clock: FakeClock, bus: EventBus) -> None:
    health = StoreHealth(bus=bus, clock=clock)
    assert bus.has_subscribers(StoreDegraded)
    degrade(bus)
    health.close()
    health.close()  # idempotent
    assert health.closed
    assert not bus.has_subscribers(StoreDegraded)
    degrade(bus)  # no longer heard
    [store] = health.degraded()
    assert store.events == 1


def test_store_health_says_what_it_watches(bus: EventBus) -> None:
    health = StoreHealth(bus=bus, degraded_for=12, sources=("search", "api"))
    assert health.degraded_for == 12
    assert repr(health) == "<StoreHealth ['api', 'search'] degraded_for=12s>"
    assert "every source" in repr(StoreHealth(bus=bus))


def test_a_forgotten_store_health_leaves_no_subscription(clock: FakeClock, bus: EventBus) -> None:
    StoreHealth(bus=bus, clock=clock)
    gc.collect()
    assert not bus.has_subscribers(StoreDegraded)
    degrade(bus)  # and emitting is still fine


@pytest.mark.parametrize("degraded_for", [0, -1, float("inf"), "30", True])
def test_degraded_for_must_be_a_positive_duration(degraded_for: Any, bus: EventBus) -> None:
    with pytest.raises(ConfigurationError, match=r"StoreHealth\.degraded_for"):
        StoreHealth(bus=bus, degraded_for=degraded_for)


def test_sources_must_not_be_a_single_string(bus: EventBus) -> None:
    with pytest.raises(ConfigurationError, match=r"\('api',\)"):
        StoreHealth(bus=bus, sources="api")
    assert not bus.has_subscribers(StoreDegraded)


# -- the rules in HealthTracker -----------------------------------------------------------------


def tracker_report(
    tracker: HealthTracker, circuit: str = "closed", *, closing: bool = False
) -> Any:
    return tracker.report(name="agent", circuit_state=circuit, in_flight=0, shutting_down=closing)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_degraded_store_degrades_whatever_the_failure_mode(
    clock: FakeClock, bus: EventBus, mode: FailureMode
) -> None:
    config = HealthConfig(store_degraded_for=10)
    stores = StoreHealth(bus=bus, clock=clock, degraded_for=config.store_degraded_for)
    tracker = HealthTracker(config=config, clock=clock, stores=stores)
    assert tracker_report(tracker).status is HealthStatus.HEALTHY
    degrade(bus, mode=mode)
    report = tracker_report(tracker)
    assert report.status is HealthStatus.DEGRADED
    assert [s.action for s in report.degraded_stores] == [
        "allowed" if mode == "open" else "refused"
    ]
    clock.advance(10)
    report = tracker_report(tracker)
    assert report.status is HealthStatus.HEALTHY
    assert report.degraded_stores == ()


@pytest.mark.parametrize(
    ("circuit", "closing", "expected"),
    [
        ("open", False, HealthStatus.UNHEALTHY),
        ("forced_open", False, HealthStatus.UNHEALTHY),
        ("closed", True, HealthStatus.UNHEALTHY),
        ("half_open", False, HealthStatus.DEGRADED),
        ("closed", False, HealthStatus.DEGRADED),
    ],
)
def test_unhealthy_rules_still_come_first(
    clock: FakeClock, bus: EventBus, circuit: str, closing: bool, expected: HealthStatus
) -> None:
    tracker = HealthTracker(clock=clock, stores=StoreHealth(bus=bus, clock=clock))
    degrade(bus)
    assert tracker_report(tracker, circuit, closing=closing).status is expected


def test_the_report_dict_lists_degraded_stores_as_json(clock: FakeClock, bus: EventBus) -> None:
    tracker = HealthTracker(clock=clock, stores=StoreHealth(bus=bus, clock=clock))
    assert tracker_report(tracker).to_dict()["degraded_stores"] == []
    degrade(bus)
    clock.advance(2)
    data = json.loads(json.dumps(tracker_report(tracker).to_dict()))
    assert data["status"] == "degraded"
    assert data["degraded_stores"] == [
        {
            "backend": "redis",
            "source": "api",
            "operation": "rate_limit",
            "reason": "connection refused",
            "action": "allowed",
            "events": 1,
            "seconds_since_first": 2.0,
            "seconds_since_last": 2.0,
        }
    ]


@pytest.mark.parametrize("value", [0, -5, float("nan"), None])
def test_store_degraded_for_must_be_a_positive_duration(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"HealthConfig\.store_degraded_for"):
        HealthConfig(store_degraded_for=value)


# -- a resilient agent whose limiter counts in a store ------------------------------------------


async def test_fail_open_lets_runs_through_and_reports_the_store(
    dead_redis: Any, clock: FakeClock, bus: EventBus
) -> None:
    agent = limited_agent(dead_redis, clock, bus)
    assert await agent.run("q") == "answer to q"  # unchecked, as declared
    report = agent.health()
    assert report.status == "degraded"
    [store] = report.degraded_stores
    assert (store.backend, store.source, store.operation, store.action) == (
        "redis",
        "api",
        "rate_limit",
        "allowed",
    )
    assert (report.total_runs, report.total_failures) == (1, 0)
    clock.advance(29)
    assert agent.health().status == "degraded"
    clock.advance(1)  # 30 s (the default) without another failure
    assert agent.health().status == "healthy"


async def test_fail_closed_refuses_runs_and_reports_degraded_not_unhealthy(
    dead_redis: Any, clock: FakeClock, bus: EventBus
) -> None:
    agent = limited_agent(dead_redis, clock, bus, on_store_failure="closed")
    with pytest.raises(StoreUnavailableError):
        await agent.run("q")
    report = agent.health()
    assert report.status == "degraded"
    assert [s.action for s in report.degraded_stores] == ["refused"]
    assert report.total_failures == 1
    assert report.last_error is not None
    assert report.last_error.startswith("StoreUnavailableError")


async def test_the_agent_hears_a_shared_limiter_on_its_own_bus(
    dead_redis: Any, clock: FakeClock, bus: EventBus
) -> None:
    limiter_bus = EventBus()
    limiter = RateLimiter(
        RateLimitConfig(max_rpm=100),
        name="shared",
        clock=clock,
        bus=limiter_bus,
        backend=dead_redis,
    )
    agent = with_resilience(
        answer, rate_limit=limiter, clock=clock, bus=bus, graceful_shutdown=False
    )
    await agent.run("q")
    assert [s.source for s in agent.health().degraded_stores] == ["shared"]


async def test_an_agent_reports_only_its_own_parts(clock: FakeClock, bus: EventBus) -> None:
    agent = limited_agent(MemoryStore(clock=clock), clock, bus)
    degrade(bus, source="budget")  # another concern's store, on the same bus
    degrade(bus, source="other-limiter")
    assert await agent.run("q") == "answer to q"
    assert agent.health().status == "healthy"
    assert agent.health().degraded_stores == ()


def test_only_an_agent_with_a_store_backed_part_subscribes(clock: FakeClock, bus: EventBus) -> None:
    store = MemoryStore(clock=clock)
    plain = [
        with_resilience(answer, bus=bus, clock=clock),  # in-process limiter
        with_resilience(answer, bus=bus, clock=clock, rate_limit=False),
        with_resilience(
            answer,
            bus=bus,
            clock=clock,
            health_check=False,
            rate_limit=RateLimiter(name="api", clock=clock, bus=bus, backend=store),
        ),
    ]
    assert not bus.has_subscribers(StoreDegraded)
    watched = limited_agent(store, clock, bus)
    assert bus.has_subscribers(StoreDegraded)
    del watched
    gc.collect()
    assert not bus.has_subscribers(StoreDegraded)  # a dropped agent leaves nothing behind
    assert len(plain) == 3


def test_health_config_sets_the_window(clock: FakeClock, bus: EventBus) -> None:
    limiter = RateLimiter(name="api", clock=clock, bus=bus, backend=MemoryStore(clock=clock))
    agent = with_resilience(
        answer,
        rate_limit=limiter,
        clock=clock,
        bus=bus,
        health_check=HealthConfig(store_degraded_for=5),
    )
    degrade(bus)
    clock.advance(4.5)
    assert agent.health().status == "degraded"
    clock.advance(0.5)
    assert agent.health().status == "healthy"


# -- check_stores -------------------------------------------------------------------------------


async def test_the_probe_reports_each_store_in_order(dead_redis: Any, clock: FakeClock) -> None:
    memory = MemoryStore(clock=clock).scoped("tenant-a")
    results = await check_stores(memory, dead_redis, clock=clock)
    assert [(r.backend, r.scope, r.status, r.ok) for r in results] == [
        ("memory", ("tenant-a",), "ok", True),
        ("redis", (), "unavailable", False),
    ]
    assert results[0].reason is None
    assert results[1].reason is not None
    assert results[1].reason.startswith("ConnectionError")
    assert json.loads(json.dumps(results[0].to_dict())) == {
        "backend": "memory",
        "scope": ["tenant-a"],
        "status": "ok",
        "reason": None,
        "latency_ms": 0.0,  # the fake clock did not move
    }
    assert await check_stores() == ()


async def test_the_probe_reports_a_store_that_breaks_instead_of_raising(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'bastion.db'}")
    await store.ping()
    await store.aclose()  # a closed store is a bug in the caller, yet the probe must answer
    [result] = await check_stores(store)
    assert result.status == "unavailable"
    assert result.reason


async def test_the_probe_refuses_what_is_not_a_store() -> None:
    with pytest.raises(ConfigurationError, match="open_store"):
        await check_stores("redis://localhost:6379/0")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="check_stores"):
        await check_stores(MemoryStore(), timeout=0)
