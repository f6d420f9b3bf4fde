"""Budgets reserve atomically against every cap, on every backend, and never overspend.

Parametrised over memory, SQLite, PostgreSQL and Redis (real servers); the
enforcer's wall clock is a FakeClock, so periods and hold expiry pass without
sleeping.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bastion import BudgetExceededError, EventBus, StoreUnavailableError
from bastion.stores import BudgetConfig, BudgetEnforcer, BudgetExceeded, BudgetStore, CapCharge
from bastion.testing import FakeClock

D = Decimal


def enforcer(store: Any, clock: FakeClock, bus: EventBus | None = None, **options: Any) -> Any:
    return BudgetEnforcer(BudgetConfig(**options), store=store, clock=clock, bus=bus)


async def test_the_store_is_a_budget_store(store: Any) -> None:
    assert isinstance(store, BudgetStore)


async def test_reserve_then_settle_counts_the_real_cost(store: Any, clock: FakeClock) -> None:
    budget = enforcer(store, clock, max_usd_per_user=D("1.00"))
    held = await budget.reserve(D("0.40"), user_id="ann")
    assert held.amount_usd == D("0.4")
    assert await budget.spent(user_id="ann") == {"user": D("0.4")}
    await held.settle(D("0.123456"))
    assert held.state == "settled"
    assert await budget.spent(user_id="ann") == {"user": D("0.123456")}


async def test_a_reservation_that_does_not_fit_is_refused_with_the_numbers(
    store: Any, clock: FakeClock, bus: EventBus
) -> None:
    seen: list[BudgetExceeded] = []
    bus.subscribe(seen.append, BudgetExceeded)
    budget = enforcer(store, clock, bus, max_usd_per_user=D("1"), max_usd_per_month=D("100"))
    await budget.reserve(D("0.75"), user_id="ann")
    with pytest.raises(BudgetExceededError) as caught:
        await budget.reserve(D("0.30"), user_id="ann")
    assert caught.value.cap == "user"
    assert caught.value.limit_usd == D("1")
    assert caught.value.spent_usd == D("0.75")
    assert [(e.cap, e.action, e.requested_usd) for e in seen] == [("user", "refused", D("0.30"))]
    # nothing was held by the refused reservation
    assert await budget.spent(user_id="ann") == {"user": D("0.75"), "month": D("0.75")}


async def test_every_cap_is_checked_at_once(store: Any, clock: FakeClock) -> None:
    budget = enforcer(
        store,
        clock,
        max_usd_per_run=D("0.5"),
        max_usd_per_user=D("2"),
        max_usd_per_tenant=D("3"),
        max_usd_per_month=D("10"),
    )
    await budget.reserve(D("0.5"), run_id="r1", user_id="u", tenant_id="t")
    with pytest.raises(BudgetExceededError) as run_cap:
        await budget.reserve(D("0.01"), run_id="r1", user_id="u", tenant_id="t")
    assert run_cap.value.cap == "run"
    for i in range(3):
        await budget.reserve(D("0.5"), run_id=f"r{i + 2}", user_id="u", tenant_id="t")
    with pytest.raises(BudgetExceededError) as user_cap:
        await budget.reserve(D("0.5"), run_id="r9", user_id="u", tenant_id="t")
    assert user_cap.value.cap == "user"
    for _ in range(2):  # without a run id each reservation is a run of its own
        await budget.reserve(D("0.5"), run_id=None, user_id="v", tenant_id="t")
    with pytest.raises(BudgetExceededError) as tenant_cap:
        await budget.reserve(D("0.5"), user_id="w", tenant_id="t")
    assert tenant_cap.value.cap == "tenant"
    assert (await budget.spent(user_id="u", tenant_id="t"))["month"] == D("3")


async def test_release_gives_the_money_back(store: Any, clock: FakeClock) -> None:
    budget = enforcer(store, clock, max_usd_per_month=D("1"))
    held = await budget.reserve(D("1"))
    await held.release()
    assert held.state == "released"
    assert await budget.spent() == {"month": D("0")}
    await budget.reserve(D("1"))  # the whole cap is free again


async def test_a_forgotten_reservation_expires(store: Any, clock: FakeClock) -> None:
    budget = enforcer(store, clock, max_usd_per_month=D("1"), reservation_ttl=60)
    await budget.reserve(D("1"))  # the process "dies": never settled nor released
    with pytest.raises(BudgetExceededError):
        await budget.reserve(D("0.5"))
    clock.advance(60)
    await budget.reserve(D("1"))


async def test_truncate_reserves_what_is_left_and_throws_when_nothing_is(
    store: Any, clock: FakeClock
) -> None:
    budget = enforcer(store, clock, max_usd_per_run=D("1"), on_exceeded="truncate")
    first = await budget.reserve(D("0.7"), run_id="r")
    second = await budget.reserve(D("0.7"), run_id="r")
    assert (first.amount_usd, first.exceeded) == (D("0.7"), None)
    assert (second.amount_usd, second.requested_usd, second.exceeded) == (D("0.3"), D("0.7"), "run")
    with pytest.raises(BudgetExceededError):
        await budget.reserve(D("0.1"), run_id="r")


async def test_warn_reserves_past_the_cap_and_reports_it(
    store: Any, clock: FakeClock, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BudgetExceeded] = []
    bus.subscribe(seen.append, BudgetExceeded)
    budget = enforcer(store, clock, bus, max_usd_per_tenant=D("1"), on_exceeded="warn")
    await budget.reserve(D("0.8"), tenant_id="t")
    over = await budget.reserve(D("0.8"), tenant_id="t")
    assert (over.amount_usd, over.exceeded) == (D("0.8"), "tenant")
    assert [e.action for e in seen] == ["warned"]
    assert "budget cap 'tenant'" in caplog.text
    assert await budget.spent(tenant_id="t") == {"tenant": D("1.6")}


async def test_settling_more_than_was_reserved_records_it(store: Any, clock: FakeClock) -> None:
    budget = enforcer(store, clock, max_usd_per_user=D("1"))
    held = await budget.reserve(D("0.1"), user_id="u")
    await held.settle(D("0.95"))
    with pytest.raises(BudgetExceededError):
        await budget.reserve(D("0.1"), user_id="u")


async def test_days_and_months_roll_over_in_utc(store: Any) -> None:
    start = datetime(2026, 1, 31, 23, 59, tzinfo=UTC).timestamp()
    clock = FakeClock(wall=start)
    budget = enforcer(store, clock, max_usd_per_user=D("1"), max_usd_per_month=D("1.5"))
    await budget.reserve(D("1"), user_id="u")
    with pytest.raises(BudgetExceededError):
        await budget.reserve(D("0.1"), user_id="u")
    clock.advance(60)  # 2026-02-01 00:00 UTC: a new day and a new month
    await budget.reserve(D("1"), user_id="u")
    assert await budget.spent(user_id="u") == {"user": D("1"), "month": D("1")}


async def test_periods_follow_the_configured_timezone(store: Any) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    start = datetime(2026, 3, 10, 23, 30, tzinfo=tokyo).timestamp()
    clock = FakeClock(wall=start)
    budget = enforcer(store, clock, max_usd_per_user=D("1"), timezone=tokyo)
    await budget.reserve(D("1"), user_id="u")
    clock.advance(1800)  # midnight in Tokyo, still the afternoon of the 10th in UTC
    await budget.reserve(D("1"), user_id="u")


async def test_two_hundred_concurrent_runs_never_spend_more_than_one_dollar(
    store: Any, clock: FakeClock
) -> None:
    budget = enforcer(store, clock, max_usd_per_tenant=D("1"))
    rng = random.Random(200)
    asks = [D(rng.randint(1, 90)) / 1000 for _ in range(200)]  # $0.001 .. $0.090 each

    async def run(ask: Decimal) -> Decimal | None:
        try:
            held = await budget.reserve(ask, tenant_id="acme")
        except BudgetExceededError:
            return None
        await asyncio.sleep(0)
        actual = ask * D(rng.randint(50, 100)) / 100
        await held.settle(actual)
        return actual

    settled = await asyncio.gather(*(run(ask) for ask in asks))
    spent = sum((s for s in settled if s is not None), D(0))
    refused = sum(s is None for s in settled)
    assert spent <= D("1")
    assert refused > 0  # the asks add up to far more than $1
    assert (await budget.spent(tenant_id="acme"))["tenant"] <= D("1")


async def test_concurrent_reservations_never_hold_more_than_the_cap(store: Any) -> None:
    caps = [CapCharge("cap", 1_000_000, 4e9)]
    now = 1.75e9

    async def one(i: int) -> int:
        outcome = await store.reserve(
            f"r{i}", caps, 7_000, mode="all", now=now, hold_until=now + 60
        )
        return int(outcome.granted)

    granted = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(granted) <= 1_000_000
    assert sum(1 for g in granted if g) == 1_000_000 // 7_000
    assert await store.committed(caps, now=now) == (sum(granted),)


async def test_a_retried_reserve_replaces_its_own_hold(store: Any) -> None:
    caps = [CapCharge("cap", 1_000, 4e9)]
    now = 1.75e9
    for _ in range(3):
        outcome = await store.reserve("same", caps, 600, mode="all", now=now, hold_until=now + 9)
        assert outcome.granted == 600
    assert await store.committed(caps, now=now) == (600,)


async def test_scoped_budgets_are_separate(store: Any, clock: FakeClock) -> None:
    a = enforcer(store.scoped("tenant-a"), clock, max_usd_per_month=D("1"))
    b = enforcer(store.scoped("tenant-b"), clock, max_usd_per_month=D("1"))
    await a.reserve(D("1"))
    await b.reserve(D("1"))
    with pytest.raises(BudgetExceededError):
        await a.reserve(D("0.01"))
    assert await b.spent() == {"month": D("1")}


async def test_a_reservation_as_a_context_manager(store: Any, clock: FakeClock) -> None:
    budget = enforcer(store, clock, max_usd_per_month=D("1"))
    async with await budget.reserve(D("0.2")):
        pass  # no real cost reported: the whole reservation counts
    with pytest.raises(ValueError, match="boom"):
        async with await budget.reserve(D("0.5")):
            raise ValueError("boom")
    async with await budget.reserve(D("0.3")) as held:
        await held.settle(D("0.1"))
    assert await budget.spent() == {"month": D("0.3")}


async def test_concurrent_settles_of_one_reservation_count_once(
    store: Any, clock: FakeClock
) -> None:
    budget = enforcer(store, clock, max_usd_per_run=D("1"), max_usd_per_month=D("5"))
    held = await budget.reserve(D("0.3"), run_id="twice")
    outcomes = await asyncio.gather(
        held.settle(D("0.3")), held.settle(D("0.3")), return_exceptions=True
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "RuntimeError"]
    assert held.state == "settled"
    assert await budget.spent(run_id="twice") == {"run": D("0.3"), "month": D("0.3")}


async def test_a_settle_racing_a_release_is_refused_at_once(store: Any, clock: FakeClock) -> None:
    budget = enforcer(store, clock, max_usd_per_month=D("1"))
    held = await budget.reserve(D("0.4"))
    outcomes = await asyncio.gather(held.release(), held.settle(D("0.4")), return_exceptions=True)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], RuntimeError)
    assert "already releas" in str(outcomes[1])  # releasing, or released (memory never waits)
    assert (held.state, await budget.spent()) == ("released", {"month": D("0")})


async def test_a_settle_sent_twice_to_the_store_counts_once(store: Any) -> None:
    caps = [CapCharge("a", 1_000, 4e9), CapCharge("b", 1_000, 4e9)]
    now = 1.75e9
    await store.reserve("r", caps, 600, mode="all", now=now, hold_until=now + 9)
    assert await store.settle("r", caps, 500, now=now) is True
    assert await store.settle("r", caps, 500, now=now) is False  # a retry after a lost reply
    assert await store.committed(caps, now=now) == (500, 500)
    await store.release("r", caps)  # releasing twice is harmless too
    assert await store.committed(caps, now=now) == (500, 500)


async def test_a_settle_without_a_hold_adds_only_when_told_to(store: Any) -> None:
    caps = [CapCharge("c", 1_000, 4e9)]
    now = 1.75e9
    assert await store.settle("never-held", caps, 200, now=now) is False
    assert await store.settle("never-held", caps, 200, now=now, if_held=False) is True
    assert await store.committed(caps, now=now) == (200,)


class _LostReplies:
    """The real store, but the first settle's reply is lost after it ran (a timeout)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.backend = store.backend
        self.lost = 0

    async def reserve(self, *args: Any, **kwargs: Any) -> Any:
        return await self.store.reserve(*args, **kwargs)

    async def settle(self, *args: Any, **kwargs: Any) -> bool:
        added: bool = await self.store.settle(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise StoreUnavailableError(self.backend, operation="settle", reason="no answer")
        return added

    async def release(self, *args: Any, **kwargs: Any) -> None:
        await self.store.release(*args, **kwargs)

    async def committed(self, *args: Any, **kwargs: Any) -> Any:
        return await self.store.committed(*args, **kwargs)


async def test_a_settle_retried_after_a_lost_reply_counts_once(
    store: Any, clock: FakeClock
) -> None:
    budget = enforcer(_LostReplies(store), clock, max_usd_per_month=D("1"))
    held = await budget.reserve(D("0.3"))
    with pytest.raises(StoreUnavailableError):
        await held.settle(D("0.3"))
    assert held.state == "open"
    await held.settle(D("0.3"))
    assert (held.state, await budget.spent()) == ("settled", {"month": D("0.3")})


async def test_a_settle_after_the_hold_expired_still_counts(store: Any, clock: FakeClock) -> None:
    budget = enforcer(store, clock, max_usd_per_month=D("1"), reservation_ttl=10)
    held = await budget.reserve(D("0.3"))
    clock.advance(11)
    await budget.reserve(D("0.1"))  # reclaims the expired hold
    await held.settle(D("0.3"))
    assert await budget.spent() == {"month": D("0.4")}


async def test_a_run_is_remembered_run_ttl_after_its_latest_use(
    store: Any, clock: FakeClock
) -> None:
    budget = enforcer(store, clock, max_usd_per_run=1, run_ttl=100, reservation_ttl=10)
    for _ in range(3):
        held = await budget.reserve(D("0.3"), run_id="long")
        await held.settle(D("0.3"))
        clock.advance(60)
    with pytest.raises(BudgetExceededError):
        await budget.reserve(D("0.3"), run_id="long")
    assert await budget.spent(run_id="long") == {"run": D("0.9")}
