"""Store health on real servers: kill one, watch health say so, restart it, watch it recover.

Throwaway Redis and PostgreSQL servers (the helpers of ``test_faults``) are
killed, frozen and restarted; the shared test servers are only probed. Time
that health rules count runs on a fake clock, advanced instead of slept; the
only real waits are the stores' own timeouts, which is what is under test.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bastion import (
    EventBus,
    HealthConfig,
    RateLimitConfig,
    RateLimiter,
    StoreHealth,
    StoreUnavailableError,
    check_stores,
    with_resilience,
)
from bastion.stores import BudgetConfig, BudgetEnforcer, FailureMode, StoreDegraded, open_store
from bastion.testing import FakeClock

from . import test_faults
from .conftest import POSTGRES_URL, RUN
from .test_faults import PostgresServer, RedisServer, eventually

# The throwaway servers that test_faults starts, kills and restarts.
redis_server = test_faults.redis_server
postgres_server = test_faults.postgres_server

TIMEOUT = 0.5  # each store operation's own bound
DEGRADED_FOR = 30.0


@pytest.fixture(autouse=True)
def _quiet_degraded_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Each failure is logged as a warning by design; keep them out of the test output."""
    with caplog.at_level(logging.ERROR, logger="bastion.stores"):
        yield


async def answer(question: str) -> str:
    return f"answer to {question}"


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_agent_health_follows_a_killed_redis(
    redis_server: RedisServer, clock: FakeClock, bus: EventBus, mode: FailureMode
) -> None:
    events: list[StoreDegraded] = []
    bus.subscribe(events.append, StoreDegraded)
    store = open_store(redis_server.url, timeout=TIMEOUT)
    limiter = RateLimiter(
        RateLimitConfig(max_rpm=1000, on_store_failure=mode),
        name="api",
        clock=clock,
        bus=bus,
        backend=store,
    )
    agent = with_resilience(
        answer,
        rate_limit=limiter,
        health_check=HealthConfig(store_degraded_for=DEGRADED_FOR),
        clock=clock,
        bus=bus,
        graceful_shutdown=False,
    )
    try:
        assert await agent.run("before") == "answer to before"
        assert agent.health().status == "healthy"

        redis_server.kill()
        started = time.monotonic()
        if mode == "open":
            assert await agent.run("during") == "answer to during"  # through, unchecked
        else:
            with pytest.raises(StoreUnavailableError):
                await agent.run("during")  # refused with the typed error
        report = agent.health()
        assert time.monotonic() - started < TIMEOUT + 0.5  # within the store's timeout
        assert report.status == "degraded"
        [down] = report.degraded_stores
        assert (down.backend, down.source, down.operation) == ("redis", "api", "rate_limit")
        assert down.action == ("allowed" if mode == "open" else "refused")

        redis_server.start()
        await eventually(store.ping)  # a connection the old server dropped may fail once
        seen = len(events)
        assert await agent.run("after") == "answer to after"
        assert len(events) == seen  # the store answered this run
        assert agent.health().status == "degraded"  # recovery is by time alone
        clock.advance(DEGRADED_FOR)
        report = agent.health()
        assert report.status == "healthy"
        assert report.degraded_stores == ()
    finally:
        await store.aclose()


@pytest.mark.postgresql
async def test_a_process_wide_view_sees_a_budget_on_a_crashed_postgres(
    postgres_server: PostgresServer, clock: FakeClock, bus: EventBus
) -> None:
    from bastion.stores._sql import upgrade

    await upgrade(postgres_server.url)
    store = open_store(postgres_server.url, timeout=TIMEOUT)
    everything = StoreHealth(bus=bus, clock=clock)  # what a gateway watches: every concern
    budget = BudgetEnforcer(BudgetConfig(max_usd_per_month=Decimal(5)), store=store, bus=bus)
    try:
        held = await budget.reserve(Decimal("0.1"))
        await held.release()
        assert everything.degraded() == ()

        postgres_server.crash()
        with pytest.raises(StoreUnavailableError):
            await budget.reserve(Decimal("0.1"))  # budgets fail closed by default
        [down] = everything.degraded()
        assert (down.backend, down.source, down.action) == ("postgresql", "budget", "refused")
        assert [c.status for c in await check_stores(store)] == ["unavailable"]

        postgres_server.start()
        await eventually(store.ping)
        assert [c.status for c in await check_stores(store)] == ["ok"]
        clock.advance(DEGRADED_FOR)
        assert everything.degraded() == ()
    finally:
        everything.close()
        await store.aclose()


@pytest.mark.redis
@pytest.mark.postgresql
@pytest.mark.sqlite
@pytest.mark.memory
async def test_the_probe_tells_live_stores_from_a_dead_one(
    redis_url: str, postgres_schema: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    stores: list[Any] = [
        open_store("memory://"),
        open_store(f"sqlite:///{tmp_path / 'bastion.db'}", timeout=TIMEOUT),
        open_store(redis_url, namespace=f"bastion-test-{RUN}", timeout=TIMEOUT),
        open_store(POSTGRES_URL, schema=postgres_schema, timeout=TIMEOUT),
        open_store(redis_server.url, timeout=TIMEOUT),
    ]
    try:
        assert all(c.ok for c in await check_stores(*stores))
        redis_server.kill()
        started = time.monotonic()
        results = await check_stores(*stores, timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT + 0.5
        assert [(c.backend, c.status) for c in results] == [
            ("memory", "ok"),
            ("sqlite", "ok"),
            ("redis", "ok"),
            ("postgresql", "ok"),
            ("redis", "unavailable"),
        ]
        assert results[-1].reason is not None
        assert all(c.latency_ms >= 0 for c in results)
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.redis
async def test_the_probe_bound_cuts_a_frozen_server_short(redis_server: RedisServer) -> None:
    # The store would wait 5 s; the probe answers after its own 0.3 s.
    store = open_store(redis_server.url, timeout=5.0)
    try:
        assert [c.status for c in await check_stores(store)] == ["ok"]
        redis_server.freeze()
        started = time.monotonic()
        [result] = await check_stores(store, timeout=0.3)
        assert time.monotonic() - started < 0.3 + 0.5
        assert (result.status, result.reason) == ("unavailable", "no answer within 0.3s")
        assert result.latency_ms >= 300
        redis_server.thaw()
        await eventually(store.ping)
        assert [c.status for c in await check_stores(store)] == ["ok"]
    finally:
        redis_server.thaw()
        await store.aclose()
