"""CostTracker: per-model sums in Decimal, a budget that raises or warns, thread safety."""

from __future__ import annotations

import threading
import warnings
from decimal import Decimal

import pytest

from bastion import BudgetExceededError, ConfigurationError, EventBus
from bastion._core.usage import Usage
from bastion.models import (
    BudgetExceeded,
    BudgetWarning,
    Completion,
    CostTracker,
    ModelSpend,
    PricingTable,
    UnknownModelError,
)

PRICES = PricingTable.from_dict(
    {
        "big": {"input": 10, "output": 30, "cached_input": 1},
        "small": {"input": "0.5", "output": "1.5"},
    }
)
MILLION_IN = Usage(input_tokens=1_000_000)


def completion(model: str, usage: Usage) -> Completion:
    return Completion(text="ok", model=model, finish_reason="stop", usage=usage)


def test_records_completions_and_model_usage_pairs() -> None:
    tracker = CostTracker(pricing=PRICES)
    first = tracker.record(completion("big", Usage(input_tokens=1000, output_tokens=100)))
    second = tracker.record("small", Usage(input_tokens=2000, output_tokens=1000))
    assert first == Decimal("0.013")  # 1000 * 10 + 100 * 30, per million
    assert second == Decimal("0.0025")
    assert tracker.total_cost() == Decimal("0.0155")
    assert tracker.total_usage() == Usage(input_tokens=3000, output_tokens=1100)


def test_breakdown_is_per_model() -> None:
    tracker = CostTracker(pricing=PRICES)
    tracker.record("big", Usage(input_tokens=100, cached_tokens=50, output_tokens=10))
    tracker.record("big", Usage(input_tokens=100, output_tokens=10))
    tracker.record("small", Usage(output_tokens=1_000_000))
    breakdown = tracker.breakdown()
    assert breakdown["big"] == ModelSpend(
        model="big",
        calls=2,
        usage=Usage(input_tokens=200, cached_tokens=50, output_tokens=20),
        cost_usd=Decimal("0.00215"),  # 150 * 10 + 50 * 1 + 20 * 30, per million
    )
    assert breakdown["small"].cost_usd == Decimal("1.5")
    assert sum(spend.cost_usd for spend in breakdown.values()) == tracker.total_cost()


def test_uses_the_default_table_without_one() -> None:
    tracker = CostTracker()
    assert tracker.record("gpt-4o-mini", Usage(input_tokens=1_000_000)) == Decimal("0.15")


def test_unknown_models_are_refused_not_free() -> None:
    tracker = CostTracker(pricing=PRICES)
    with pytest.raises(UnknownModelError):
        tracker.record("mystery", MILLION_IN)
    assert tracker.total_cost() == 0
    assert tracker.breakdown() == {}


def test_raise_mode_records_the_spend_then_raises(bus: EventBus) -> None:
    events: list[BudgetExceeded] = []
    bus.subscribe(events.append, BudgetExceeded)
    tracker = CostTracker(budget="15", pricing=PRICES, bus=bus, name="run-7")
    tracker.record("big", MILLION_IN)  # $10: within budget
    assert tracker.remaining() == Decimal(5)
    with pytest.raises(BudgetExceededError) as caught:
        tracker.record("big", MILLION_IN)  # $20
    assert caught.value.cap == "tracker"
    assert caught.value.limit_usd == Decimal(15)
    assert caught.value.spent_usd == Decimal(20)
    assert tracker.total_cost() == Decimal(20)  # the money was spent all the same
    with pytest.raises(BudgetExceededError):
        tracker.record("small", MILLION_IN)  # still over: every record says so
    assert [(e.source, e.spent_usd, e.action) for e in events] == [
        ("run-7", Decimal(20), "raise"),
        ("run-7", Decimal("20.5"), "raise"),
    ]


def test_spending_exactly_the_budget_is_allowed() -> None:
    tracker = CostTracker(budget=10, pricing=PRICES)
    tracker.record("big", MILLION_IN)
    assert tracker.remaining() == 0


def test_warn_mode_warns_once_per_crossing(bus: EventBus) -> None:
    events: list[BudgetExceeded] = []
    bus.subscribe(events.append, BudgetExceeded)
    tracker = CostTracker(budget=Decimal(5), on_budget_exceeded="warn", pricing=PRICES, bus=bus)
    with pytest.warns(BudgetWarning, match=r"over its budget: \$10 spent of \$5"):
        tracker.record("big", MILLION_IN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.record("big", MILLION_IN)  # already over: no second warning
    assert tracker.total_cost() == Decimal(20)
    assert [e.action for e in events] == ["warn"]
    tracker.reset()
    assert tracker.total_cost() == 0
    with pytest.warns(BudgetWarning):
        tracker.record("big", MILLION_IN)  # a new crossing after a reset


def test_no_budget_never_complains() -> None:
    tracker = CostTracker(pricing=PRICES)
    for _ in range(3):
        tracker.record("big", MILLION_IN)
    assert tracker.remaining() is None
    assert tracker.budget is None
    assert "no budget" in repr(tracker)


def test_reset_forgets_everything() -> None:
    tracker = CostTracker(budget=1, pricing=PRICES)
    tracker.record("small", MILLION_IN)
    tracker.reset()
    assert tracker.total_cost() == 0
    assert tracker.breakdown() == {}
    assert tracker.total_usage() == Usage()


@pytest.mark.parametrize("budget", [-1, "lots", float("inf"), True, [5]])
def test_bad_budgets_are_configuration_errors(budget: object) -> None:
    with pytest.raises(ConfigurationError, match=r"CostTracker\.budget must be"):
        CostTracker(budget=budget)  # type: ignore[arg-type]


def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="on_budget_exceeded"):
        CostTracker(on_budget_exceeded="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"CostTracker\.pricing"):
        CostTracker(pricing={"gpt-4o": {}})  # type: ignore[arg-type]


def test_record_refuses_mixed_arguments() -> None:
    tracker = CostTracker(pricing=PRICES)
    with pytest.raises(TypeError, match="takes no usage"):
        tracker.record(completion("big", MILLION_IN), MILLION_IN)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="a model name and a Usage"):
        tracker.record("big")  # type: ignore[call-overload]


def test_concurrent_records_lose_nothing() -> None:
    tracker = CostTracker(pricing=PRICES)
    usage = Usage(input_tokens=1000, output_tokens=100)
    per_thread = 500
    start = threading.Barrier(4)

    def work(model: str) -> None:
        start.wait()
        for _ in range(per_thread):
            tracker.record(model, usage)

    threads = [threading.Thread(target=work, args=(m,)) for m in ("big", "big", "small", "small")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    breakdown = tracker.breakdown()
    assert breakdown["big"].calls == breakdown["small"].calls == 2 * per_thread
    expected = 2 * per_thread * (PRICES.cost("big", usage) + PRICES.cost("small", usage))
    assert tracker.total_cost() == expected
