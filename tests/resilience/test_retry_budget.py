"""The retry budget: retries may add at most a fraction of the first attempts, plus a floor."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ConfigurationError, RetryBudget
from bastion.testing import FakeClock


def spend_all(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
    return spent


def test_defaults_allow_ten_retries_per_window_without_traffic(clock: FakeClock) -> None:
    budget = RetryBudget(clock=clock)

    assert (budget.ratio, budget.min_per_second, budget.window) == (0.2, 1.0, 10.0)
    assert budget.available == 10.0
    assert spend_all(budget) == 10
    assert budget.available == 0.0
    assert budget.try_spend() is False


def test_each_first_attempt_earns_ratio_of_a_retry(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, clock=clock)
    for _ in range(50):
        budget.record_attempt()

    assert budget.available == pytest.approx(10.0)
    assert spend_all(budget) == 10


@pytest.mark.parametrize(("attempts", "retries"), [(4, 0), (5, 1), (14, 2), (15, 3), (35, 7)])
def test_float_rounding_never_costs_a_retry(clock: FakeClock, attempts: int, retries: int) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, clock=clock)
    for _ in range(attempts):
        budget.record_attempt()

    assert spend_all(budget) == retries


def test_zero_ratio_and_zero_floor_never_allow_a_retry(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    for _ in range(100):
        budget.record_attempt()

    assert budget.try_spend() is False
    assert budget.available == 0.0


def test_spent_retries_come_back_once_they_leave_the_window(clock: FakeClock) -> None:
    budget = RetryBudget(clock=clock)
    assert spend_all(budget) == 10

    clock.advance(9.5)
    assert budget.try_spend() is False  # still inside the 10 s window

    clock.advance(0.5)
    assert budget.available == 10.0
    assert spend_all(budget) == 10


def test_old_buckets_drop_out_one_tenth_of_the_window_at_a_time(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0, clock=clock)
    budget.record_attempt()  # bucket [0, 1)
    clock.advance(5.0)
    budget.record_attempt()  # bucket [5, 6)
    budget.record_attempt()

    clock.advance(4.9)  # t = 9.9: both buckets still in the window
    assert budget.available == 3.0

    clock.advance(0.1)  # t = 10.0: the first bucket left
    assert budget.available == 2.0

    clock.advance(5.0)  # t = 15.0: the second one too
    assert budget.available == 0.0


def test_a_long_pause_resets_everything(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, clock=clock)
    for _ in range(10):
        budget.record_attempt()
    assert budget.try_spend() is True

    clock.advance(1_000.0)

    assert budget.available == 0.0
    budget.record_attempt()
    budget.record_attempt()
    assert budget.available == 1.0


def test_a_budget_created_late_on_the_clock_works_the_same() -> None:
    clock = FakeClock(start=1_234_567.89)
    budget = RetryBudget(clock=clock)

    assert spend_all(budget) == 10
    clock.advance(10.0)
    assert budget.available == 10.0


Op = tuple[str, float]

ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("attempt"), st.just(0.0)),
        st.tuples(st.just("spend"), st.just(0.0)),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=4.0)),
    ),
    max_size=120,
)


@settings(max_examples=100, deadline=None)
@given(
    ops=ops_strategy,
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    min_per_second=st.sampled_from([0.0, 0.1, 1.0]),
    window=st.sampled_from([1.0, 5.0, 10.0]),
)
def test_budget_matches_a_model_that_keeps_every_event(
    ops: list[Op], ratio: float, min_per_second: float, window: float
) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=min_per_second, window=window, clock=clock)
    width = window / 10
    events: list[tuple[int, str]] = []  # (bucket number, kind), never forgotten

    def in_window() -> tuple[int, int]:
        current = math.floor(clock.monotonic() / width)
        live = [kind for bucket, kind in events if bucket > current - 10]
        return live.count("attempt"), live.count("retry")

    for op, amount in ops:
        bucket = math.floor(clock.monotonic() / width)
        if op == "advance":
            clock.advance(amount)
        elif op == "attempt":
            budget.record_attempt()
            events.append((bucket, "attempt"))
        else:
            attempts, retries = in_window()
            allowed = retries + 1 <= min_per_second * window + ratio * attempts + 1e-9
            assert budget.try_spend() is allowed
            if allowed:
                events.append((bucket, "retry"))
        attempts, retries = in_window()
        assert budget.available == pytest.approx(
            max(0.0, min_per_second * window + ratio * attempts - retries)
        )


def test_concurrent_threads_never_overspend(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=10.0, window=10.0, clock=clock)
    granted: list[int] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = 0
        for _ in range(200):
            budget.record_attempt()
            if budget.try_spend():
                mine += 1
        granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    total = sum(granted)
    # 1600 first attempts allow 100 + 0.5 * 1600 = 900 retries, and every grant was counted.
    assert total <= 900
    assert budget.available == pytest.approx(900 - total)
    assert spend_all(budget) == 900 - total


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": math.nan}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"min_per_second": -1.0}, "min_per_second"),
        ({"min_per_second": math.nan}, "min_per_second"),
        ({"min_per_second": math.inf}, "min_per_second"),
        ({"window": 0.0}, "window"),
        ({"window": -5.0}, "window"),
        ({"window": math.nan}, "window"),
        ({"window": "10"}, "window"),
    ],
)
def test_invalid_options_name_the_option_and_the_value(
    kwargs: dict[str, object], option: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"RetryBudget\.{option} must be ") as info:
        RetryBudget(**kwargs)  # type: ignore[arg-type]

    assert repr(next(iter(kwargs.values()))) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_repr_shows_the_options(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.3, min_per_second=2.0, window=5.0, clock=clock)

    assert repr(budget) == "RetryBudget(ratio=0.3, min_per_second=2.0, window=5.0)"
