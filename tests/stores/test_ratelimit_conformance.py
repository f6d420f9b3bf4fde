"""Every backend decides rate limits exactly like the in-process reference, atomically.

Parametrised over memory, SQLite, PostgreSQL and Redis (real servers). Time
is a FakeClock the stores are given, so windows pass without sleeping.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from bastion import (
    CallRejected,
    ConfigurationError,
    EventBus,
    RateLimitConfig,
    RateLimiter,
    RateLimitError,
)
from bastion.stores import FixedWindowCounter, RateLimitStore, SlidingWindowLog, WindowSpec
from bastion.testing import FakeClock


def spec(*limits: float, window: float = 60, algorithm: Any = "sliding", name: str = "t") -> Any:
    return WindowSpec(limits=limits, window=window, algorithm=algorithm, name=name)


async def test_the_store_is_a_rate_limit_store(store: Any) -> None:
    assert isinstance(store, RateLimitStore)
    assert store.backend in ("memory", "sqlite", "postgresql", "redis")


async def test_admits_up_to_the_limit_then_says_exactly_when(store: Any, clock: FakeClock) -> None:
    s = spec(3, window=10)
    verdicts = []
    for _ in range(3):
        verdicts.append(await store.rate_limit("k", (1.0,), s))
        clock.advance(1)
    assert [v.allowed for v in verdicts] == [True, True, True]
    assert [v.remaining for v in verdicts] == [2.0, 1.0, 0.0]
    refused = await store.rate_limit("k", (1.0,), s)
    assert not refused.allowed
    assert refused.remaining == 0.0
    assert refused.retry_after == pytest.approx(7.0)  # the first call leaves at t=10
    assert refused.reset_after == pytest.approx(9.0)  # the last one at t=12
    clock.advance(refused.retry_after)
    assert (await store.rate_limit("k", (1.0,), s)).allowed
    assert not (await store.rate_limit("k", (1.0,), s)).allowed


async def test_weighted_costs_count_against_every_limit_or_none(
    store: Any, clock: FakeClock
) -> None:
    s = spec(5, 100, window=60)
    assert (await store.rate_limit("k", (1.0, 60.0), s)).allowed
    too_many_tokens = await store.rate_limit("k", (1.0, 50.0), s)
    assert not too_many_tokens.allowed
    assert too_many_tokens.binding == 1
    assert too_many_tokens.remaining == 40.0
    # the refused call used up no request: four more fit on requests
    for _ in range(4):
        assert (await store.rate_limit("k", (1.0, 10.0), s)).allowed
    refused = await store.rate_limit("k", (1.0, 0.0), s)
    assert not refused.allowed
    assert refused.binding == 0


async def test_fixed_windows_restart_at_their_boundary(store: Any, clock: FakeClock) -> None:
    s = spec(2, window=10, algorithm="fixed")
    first = await store.rate_limit("k", (1.0,), s)
    assert first.allowed
    assert (await store.rate_limit("k", (1.0,), s)).allowed
    refused = await store.rate_limit("k", (1.0,), s)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(refused.reset_after)
    assert 0 < refused.retry_after <= 10
    clock.advance(refused.retry_after)
    assert (await store.rate_limit("k", (1.0,), s)).allowed
    assert (await store.rate_limit("k", (1.0,), s)).remaining == 0.0


@pytest.mark.parametrize("algorithm", ["sliding", "fixed"])
async def test_decisions_match_the_in_process_reference(
    store: Any, clock: FakeClock, algorithm: str
) -> None:
    """A seeded random walk of costs and pauses: every backend answers like the reference."""
    rng = random.Random(f"{algorithm}-conformance")
    limits = (7.0, 50.0)
    s = spec(*limits, window=5, algorithm=algorithm)
    reference = (SlidingWindowLog if algorithm == "sliding" else FixedWindowCounter)(
        limits=limits, window=5
    )
    for step in range(120):
        costs = (float(rng.choice([0, 1, 1, 1, 2])), float(rng.randint(0, 12)))
        got = await store.rate_limit("walk", costs, s)
        # the memory store keeps monotonic time, the shared ones wall time
        now = clock.monotonic() if store.backend == "memory" else clock.time()
        want = reference.decide("walk", costs, now)
        assert (got.allowed, got.binding) == (want.allowed, want.binding), step
        assert got.remaining == pytest.approx(want.remaining, abs=1e-6), step
        assert got.retry_after == pytest.approx(want.retry_after, abs=1e-6), step
        assert got.reset_after == pytest.approx(want.reset_after, abs=1e-6), step
        clock.advance(rng.choice([0.0, 0.0, 0.1, 0.5, 1.3, 2.0]))


async def test_concurrent_callers_never_over_admit(store: Any) -> None:
    s = spec(30, window=60)
    verdicts = await asyncio.gather(*(store.rate_limit("hot", (1.0,), s) for _ in range(100)))
    assert sum(v.allowed for v in verdicts) == 30


async def test_scoped_views_never_see_each_others_keys(store: Any) -> None:
    s = spec(1, window=60)
    views = [
        store,
        store.scoped("a"),
        store.scoped("b"),
        store.scoped("a").scoped("b"),
        store.scoped("a/b"),
        store.scoped("a:b"),
        store.scoped("a/"),
    ]
    for view in views:
        assert (await view.rate_limit("b:k", (1.0,), s)).allowed, view.scope
        assert (await view.rate_limit("k", (1.0,), s)).allowed, view.scope
    for view in views:
        assert not (await view.rate_limit("b:k", (1.0,), s)).allowed, view.scope
    assert store.scoped("a").scope == (*store.scope, "a")


async def test_differently_named_limiters_do_not_share(store: Any) -> None:
    assert (await store.rate_limit("k", (1.0,), spec(1, name="one"))).allowed
    assert (await store.rate_limit("k", (1.0,), spec(1, name="two"))).allowed
    assert not (await store.rate_limit("k", (1.0,), spec(1, name="one"))).allowed


async def test_impossible_costs_are_configuration_errors(store: Any) -> None:
    with pytest.raises(ConfigurationError, match="never fit"):
        await store.rate_limit("k", (2.0,), spec(1))
    with pytest.raises(ConfigurationError, match="one cost per limit"):
        await store.rate_limit("k", (1.0, 1.0), spec(1))


async def test_a_rate_limiter_runs_unchanged_on_the_store(
    store: Any, clock: FakeClock, bus: EventBus
) -> None:
    rejected: list[CallRejected] = []
    bus.subscribe(rejected.append, CallRejected)
    config = RateLimitConfig(max_rpm=2, window=30)
    a = RateLimiter(config, name="api", clock=clock, bus=bus, backend=store)
    b = RateLimiter(config, name="api", clock=clock, bus=bus, backend=store)
    assert a.backend is store
    assert (await a.acquire("u")).remaining == 1.0
    assert (await b.check("u")).allowed
    with pytest.raises(RateLimitError) as caught:
        await a.acquire("u")
    assert caught.value.retry_after == pytest.approx(30.0)
    assert not (await b.check("u")).allowed
    assert [event.reason for event in rejected] == ["rate_limited", "rate_limited"]


async def test_wait_mode_waits_for_room_on_a_store(make_store: Any) -> None:
    clock = FakeClock(auto_advance=True)
    store = make_store(clock=clock)
    config = RateLimitConfig(max_rpm=2, window=5, mode="wait", max_wait=60)
    limiter = RateLimiter(config, clock=clock, backend=store)
    for _ in range(5):
        await limiter.acquire("w")
    assert clock.sleeps == [pytest.approx(5.0), pytest.approx(5.0)]


async def test_the_sync_api_refuses_a_store_with_a_pointer_to_the_async_one(store: Any) -> None:
    limiter = RateLimiter(RateLimitConfig(max_rpm=1), backend=store)
    with pytest.raises(ConfigurationError, match=r"await limiter\.check"):
        limiter.try_acquire()
    with pytest.raises(ConfigurationError, match=r"await limiter\.acquire"):
        limiter.acquire_sync()
