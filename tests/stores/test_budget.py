"""The budget enforcer's own rules: options, money, failure modes, reservation life cycle."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from bastion import ConfigurationError, EventBus, StoreUnavailableError
from bastion.stores import (
    BudgetConfig,
    BudgetEnforcer,
    MemoryStore,
    RedisStore,
    StoreDegraded,
)
from bastion.stores._budget import usd
from bastion.stores._budget_store import decide_reservation, from_micros, to_micros
from bastion.testing import FakeClock

D = Decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [(D("0.1"), D("0.1")), (3, D(3)), ("2.50", D("2.50")), (0.1, D("0.1")), (0, D(0))],
)
def test_dollar_amounts_are_decimals(value: Any, expected: Decimal) -> None:
    assert usd(value, "x") == expected


@pytest.mark.parametrize("value", [True, -1, "abc", float("nan"), float("inf"), None, [1]])
def test_bad_dollar_amounts_are_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="x must be"):
        usd(value, "x")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "a budget with no cap limits nothing"),
        ({"max_usd_per_run": 0}, "max_usd_per_run must be an amount > 0"),
        ({"max_usd_per_user": "lots"}, "max_usd_per_user must be"),
        ({"max_usd_per_month": 1, "on_exceeded": "ignore"}, "on_exceeded must be one of"),
        ({"max_usd_per_month": 1, "on_store_failure": "x"}, "on_store_failure must be one of"),
        ({"max_usd_per_month": 1, "timezone": "UTC"}, "timezone must be a tzinfo"),
        ({"max_usd_per_month": 1, "reservation_ttl": 0}, "reservation_ttl must be"),
        ({"max_usd_per_month": 1, "run_ttl": -5}, "run_ttl must be"),
    ],
)
def test_config_mistakes_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        BudgetConfig(**options)


def test_caps_become_decimals_and_the_enforcer_checks_its_arguments() -> None:
    config = BudgetConfig(max_usd_per_run=0.3, max_usd_per_month="100")
    assert (config.max_usd_per_run, config.max_usd_per_month) == (D("0.3"), D("100"))
    with pytest.raises(ConfigurationError, match=r"BudgetEnforcer\.config"):
        BudgetEnforcer({"max_usd_per_run": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"BudgetEnforcer\.store"):
        BudgetEnforcer(config, store=object())  # type: ignore[arg-type]
    enforcer = BudgetEnforcer(config)
    assert isinstance(enforcer.store, MemoryStore)
    assert "run=Decimal('0.3')" in repr(enforcer)


def test_money_rounds_against_the_spender() -> None:
    assert to_micros(D("0.0000001")) == 1  # a reservation never rounds down to nothing
    assert to_micros(D("0.9999999"), up=False) == 999_999  # a limit never rounds up
    assert from_micros(1_500_000) == D("1.5")
    assert decide_reservation([0, 900], [1000, 1000], 200, "all") == (0, 1)
    assert decide_reservation([0, 900], [1000, 1000], 200, "partial") == (100, 1)
    assert decide_reservation([0, 900], [1000, 1000], 200, "force") == (200, 1)
    assert decide_reservation([0, 0], [1000, 1000], 200, "all") == (200, -1)


async def test_a_reservation_is_settled_or_released_once(clock: FakeClock) -> None:
    budget = BudgetEnforcer(BudgetConfig(max_usd_per_run=1), clock=clock)
    held = await budget.reserve(D("0.5"), run_id="r")
    assert "state='open'" in repr(held)
    await held.settle(D("0.2"))
    with pytest.raises(RuntimeError, match="already settled"):
        await held.settle(D("0.2"))
    with pytest.raises(RuntimeError, match="already settled"):
        await held.release()
    assert await budget.spent(run_id="r") == {"run": D("0.2")}


async def test_a_run_cap_without_a_run_id_caps_each_reservation(clock: FakeClock) -> None:
    budget = BudgetEnforcer(BudgetConfig(max_usd_per_run=1), clock=clock)
    await budget.reserve(D("1"))
    await budget.reserve(D("1"))
    assert await budget.spent() == {}  # no run named, so no run cap to report


async def test_an_unreachable_store_fails_closed_by_default(bus: EventBus) -> None:
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.5)
    try:
        budget = BudgetEnforcer(BudgetConfig(max_usd_per_month=1), store=store, bus=bus)
        with pytest.raises(StoreUnavailableError, match="unavailable during reserve"):
            await budget.reserve(D("0.1"))
    finally:
        await store.aclose()


async def test_fail_open_lets_calls_through_unchecked_and_never_raises(bus: EventBus) -> None:
    degraded: list[StoreDegraded] = []
    bus.subscribe(degraded.append, StoreDegraded)
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.5)
    try:
        config = BudgetConfig(max_usd_per_month=1, on_store_failure="open")
        budget = BudgetEnforcer(config, store=store, bus=bus, name="spend")
        held = await budget.reserve(D("5"))
        assert (held.checked, held.amount_usd) == (False, D("5"))
        await held.settle(D("4"))  # tried, failed, reported
        other = await budget.reserve(D("1"))
        await other.release()
        assert [e.operation for e in degraded] == ["reserve", "settle", "reserve", "release"]
        assert {e.action for e in degraded} == {"allowed"}
    finally:
        await store.aclose()


async def test_a_failed_settle_under_fail_closed_can_be_retried(clock: FakeClock) -> None:
    down = RedisStore("redis://127.0.0.1:1/0", timeout=0.5)
    try:
        budget = BudgetEnforcer(BudgetConfig(max_usd_per_month=1), clock=clock)
        held = await budget.reserve(D("0.5"))
        budget.store = down
        with pytest.raises(StoreUnavailableError):
            await held.settle(D("0.5"))
        assert held.state == "open"
    finally:
        await down.aclose()
