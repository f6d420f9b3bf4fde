"""The fixed-window counter and the window spec, in process (the shared rules, unit-tested)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ConfigurationError, RateLimitConfig, RateLimiter
from bastion.stores import FixedWindowCounter, SlidingWindowLog, WindowSpec
from bastion.stores._fixed_window import window_index
from bastion.testing import FakeClock


def test_a_fixed_window_admits_the_limit_per_window_and_says_when_it_ends() -> None:
    counter = FixedWindowCounter(limits=(2, 10), window=10)
    assert counter.decide("k", (1.0, 4.0), 3.0).allowed
    second = counter.decide("k", (1.0, 4.0), 4.0)
    assert (second.allowed, second.binding, second.remaining, second.reset_after) == (
        True,
        0,
        0.0,
        6.0,
    )
    refused = counter.decide("k", (1.0, 0.0), 9.5)
    assert (refused.allowed, refused.retry_after, refused.reset_after) == (False, 0.5, 0.5)
    assert counter.decide("k", (1.0, 0.0), 10.0).allowed  # a new window
    assert counter.decide("other", (0.0, 0.0), 10.0).reset_after == 0.0


def test_window_index_agrees_with_the_window_ends_it_reports() -> None:
    window = 0.1
    for k in range(1, 2000):
        end = k * window
        assert window_index(end, window) == k
        assert window_index(end - 1e-9, window) == k - 1


def test_stale_keys_are_swept() -> None:
    counter = FixedWindowCounter(limits=(5,), window=10)
    for i in range(2000):
        counter.decide(f"user-{i}", (1.0,), 1.0)
    assert len(counter) == 2000
    for _ in range(1024):
        counter.decide("busy", (1.0,), 25.0)  # refusals after five, but each is a decision
    assert len(counter) == 1
    assert repr(counter) == "FixedWindowCounter(limits=(5.0,), window=10.0)"
    assert counter.limits == (5.0,)
    assert counter.window == 10.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"limits": (), "window": 1}, "limits must be"),
        ({"limits": (0,), "window": 1}, r"limits\[0\] must be"),
        ({"limits": (1,), "window": -1}, "window must be"),
        ({"limits": (1,), "window": 1, "names": ("a", "b")}, "names must be"),
    ],
)
def test_the_counter_validates_its_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FixedWindowCounter(**options)


def test_a_spec_validates_and_builds_its_local_algorithm() -> None:
    spec = WindowSpec(limits=(3, 100), window=60, algorithm="fixed", name="a:b")
    assert spec.limits == (3.0, 100.0)
    assert spec.names == ("limits[0]", "limits[1]")
    assert spec.tag == "a%3Ab:fixed:60.0:3.0/100.0"
    assert isinstance(spec.local(), FixedWindowCounter)
    assert isinstance(WindowSpec(limits=(1,), window=1).local(), SlidingWindowLog)
    with pytest.raises(ConfigurationError, match=r"WindowSpec\.algorithm must be one of"):
        WindowSpec(limits=(1,), window=1, algorithm="bucket")  # type: ignore[arg-type]


def test_a_limiter_can_count_in_fixed_windows(clock: FakeClock) -> None:
    limiter = RateLimiter(RateLimitConfig(max_rpm=2, window=60, algorithm="fixed"), clock=clock)
    assert isinstance(limiter.backend, FixedWindowCounter)
    assert limiter.try_acquire().allowed
    assert limiter.try_acquire().allowed
    refused = limiter.try_acquire()
    assert not refused.allowed
    clock.advance(refused.retry_after)
    assert limiter.try_acquire().allowed


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"algorithm": "leaky"}, "RateLimitConfig.algorithm must be one of"),
        ({"on_store_failure": "maybe"}, "RateLimitConfig.on_store_failure must be one of"),
    ],
)
def test_the_new_limiter_options_are_validated(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RateLimitConfig(**options)


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    window=st.sampled_from([0.5, 1.0, 3.0, 60.0]),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=2.5), st.integers(min_value=0, max_value=3)),
        max_size=60,
    ),
)
def test_no_fixed_window_ever_holds_more_than_the_limit(
    limit: int, window: float, steps: list[tuple[float, int]]
) -> None:
    counter = FixedWindowCounter(limits=(limit,), window=window)
    now = 1000.0
    per_window: dict[int, float] = {}
    for pause, cost in steps:
        now += pause
        cost = min(cost, limit)
        verdict = counter.decide("k", (float(cost),), now)
        index = window_index(now, window)
        if verdict.allowed:
            per_window[index] = per_window.get(index, 0.0) + cost
            assert verdict.remaining == limit - per_window[index]
        else:
            # refused only when it really does not fit, and told to wait for the next window
            assert per_window.get(index, 0.0) + cost > limit
            assert window_index(now + verdict.retry_after, window) == index + 1
        assert per_window.get(index, 0.0) <= limit
