"""The circuit breaker: trip rules, cooldown with memory, probes, operator controls, shells."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import sys
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import (
    BulkheadFullError,
    CallRejected,
    CallTimeoutError,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    CircuitOpenError,
    CircuitState,
    CircuitStateChanged,
    ConfigurationError,
    EventBus,
    counts_against_callee,
)
from bastion.resilience import CircuitMetrics
from bastion.resilience._windows import (
    FAILURE,
    SLOW,
    SUCCESS,
    CountWindow,
    RollingCounters,
    TimeWindow,
    WindowTotals,
    time_window_buckets,
)
from bastion.testing import FakeClock


class StatusError(Exception):
    """Shaped like an SDK error that carries the HTTP status."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def make(clock: FakeClock, bus: EventBus | None = None, **options: Any) -> CircuitBreaker:
    options.setdefault("call_timeout", None)
    return CircuitBreaker(CircuitBreakerConfig(**options), name="svc", clock=clock, bus=bus)


def fail(breaker: CircuitBreaker, exc: BaseException | None = None) -> None:
    permit = breaker.acquire()
    breaker.record_failure(permit, exc if exc is not None else ConnectionError("down"), 0.1)


def succeed(breaker: CircuitBreaker, duration: float = 0.1) -> None:
    permit = breaker.acquire()
    breaker.record_success(permit, duration)


def transitions(bus: EventBus) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    bus.subscribe(lambda e: seen.append((e.from_state, e.to_state, e.reason)), CircuitStateChanged)
    return seen


# -- configuration ------------------------------------------------------------------------------


def test_defaults_are_documented_values() -> None:
    config = CircuitBreakerConfig()
    assert (config.failure_threshold, config.failure_rate_threshold) == (5, None)
    assert (config.window_type, config.window_size, config.minimum_calls) == ("count", 100, 10)
    assert (config.reset_timeout, config.reset_backoff, config.max_reset_timeout) == (
        30.0,
        1.0,
        300.0,
    )
    assert (config.half_open_max_calls, config.success_threshold) == (1, 1)
    assert config.call_timeout == 60.0
    assert CircuitBreaker().state is CircuitState.CLOSED


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": True}, "failure_threshold"),
        ({"failure_threshold": 2.5}, "failure_threshold"),
        ({"failure_rate_threshold": 0.0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"failure_rate_threshold": float("nan")}, "failure_rate_threshold"),
        ({"failure_rate_threshold": "0.5"}, "failure_rate_threshold"),
        ({"window_type": "sliding"}, "window_type"),
        ({"window_size": 0}, "window_size"),
        ({"window_size": -5}, "window_size"),
        ({"window_size": 10.5}, "window_size"),
        ({"window_size": float("inf"), "window_type": "time"}, "window_size"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_rate_threshold": 0.5}, "slow_call_duration"),
        ({"slow_call_rate_threshold": 2, "slow_call_duration": 1.0}, "slow_call_rate_threshold"),
        ({"reset_timeout": 0}, "reset_timeout"),
        ({"reset_timeout": float("inf")}, "reset_timeout"),
        ({"reset_backoff": 0.5}, "reset_backoff"),
        ({"reset_backoff": float("nan")}, "reset_backoff"),
        ({"max_reset_timeout": 10, "reset_timeout": 20}, "max_reset_timeout"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"success_threshold": -1}, "success_threshold"),
        ({"record_failure": "yes"}, "record_failure"),
        ({"call_timeout": 0}, "call_timeout"),
        ({"failure_threshold": None}, "failure_threshold"),
        (
            {"failure_rate_threshold": 0.5, "window_size": 5, "minimum_calls": 10},
            "minimum_calls",
        ),
    ],
)
def test_invalid_options_name_the_option_and_value(options: dict[str, Any], option: str) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"CircuitBreakerConfig\.{option} must be"
    ) as info:
        CircuitBreakerConfig(**options)
    assert "got" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_small_count_window_is_fine_without_rate_rules() -> None:
    config = CircuitBreakerConfig(window_size=3, minimum_calls=10)
    assert config.window_size == 3


def test_config_is_frozen() -> None:
    config = CircuitBreakerConfig()
    with pytest.raises(AttributeError):
        config.failure_threshold = 3  # type: ignore[misc]


def test_a_count_window_size_is_reported_as_calls_not_seconds() -> None:
    with pytest.raises(ConfigurationError) as info:
        CircuitBreakerConfig(window_size=0)
    assert str(info.value) == (
        "CircuitBreakerConfig.window_size must be a whole number >= 1 "
        '(calls, for window_type="count"); got 0'
    )
    with pytest.raises(ConfigurationError, match="number of seconds > 0"):
        CircuitBreakerConfig(window_size=0, window_type="time")
    assert CircuitBreakerConfig(window_size=50.0).window_size == 50.0  # a whole float is fine


@pytest.mark.parametrize("config", [5, {"failure_threshold": 5}, "strict"])
def test_a_config_of_the_wrong_type_is_refused_at_construction(config: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"CircuitBreaker\.config must be a Circuit"):
        CircuitBreaker(config)
    with pytest.raises(ConfigurationError, match=r"CircuitBreakerRegistry\.config must be a"):
        CircuitBreakerRegistry(config)


# -- closed: the trip rules ---------------------------------------------------------------------


def test_consecutive_failures_open_it(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(clock, bus, failure_threshold=3)
    fail(breaker)
    fail(breaker)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().consecutive_failures == 2
    fail(breaker)
    assert breaker.state is CircuitState.OPEN
    assert seen == [("closed", "open", "consecutive_failures")]


def test_a_success_restarts_the_failure_run(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)
    for _ in range(5):
        fail(breaker)
        fail(breaker)
        succeed(breaker)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().consecutive_failures == 0


def test_failure_rate_waits_for_minimum_calls(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(
        clock,
        bus,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_size=10,
        minimum_calls=4,
    )
    fail(breaker)
    fail(breaker)
    fail(breaker)
    assert breaker.state is CircuitState.CLOSED  # 3/3 failed, but only 3 calls
    succeed(breaker)  # 3/4 = 0.75 >= 0.5: the rule now has enough calls
    assert breaker.state is CircuitState.OPEN
    assert seen == [("closed", "open", "failure_rate")]


def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    breaker = make(
        clock, failure_threshold=None, failure_rate_threshold=0.5, window_size=10, minimum_calls=4
    )
    for _ in range(20):
        succeed(breaker)
        succeed(breaker)
        fail(breaker)
    metrics = breaker.metrics()
    assert metrics.state is CircuitState.CLOSED
    assert (metrics.calls, metrics.failures) == (10, 4)  # the last ten: F S S F S S F S S F
    assert metrics.failure_rate == pytest.approx(0.4)


def test_count_window_forgets_the_oldest_outcomes(clock: FakeClock) -> None:
    breaker = make(
        clock, failure_threshold=None, failure_rate_threshold=0.6, window_size=5, minimum_calls=5
    )
    fail(breaker)
    fail(breaker)
    for _ in range(3):
        succeed(breaker)
    assert breaker.metrics().failures == 2
    for _ in range(2):
        succeed(breaker)  # the two failures slide out
    assert (breaker.metrics().calls, breaker.metrics().failures) == (5, 0)
    fail(breaker)
    fail(breaker)
    assert breaker.state is CircuitState.CLOSED  # 2/5 < 0.6
    fail(breaker)
    assert breaker.state is CircuitState.OPEN  # 3/5 >= 0.6


def test_time_window_forgets_old_failures(clock: FakeClock) -> None:
    breaker = make(
        clock,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_type="time",
        window_size=10,
        minimum_calls=4,
    )
    fail(breaker)
    fail(breaker)
    fail(breaker)
    assert breaker.metrics().failures == 3
    clock.advance(11)
    assert breaker.metrics().calls == 0
    fail(breaker)
    succeed(breaker)
    succeed(breaker)
    assert breaker.state is CircuitState.CLOSED  # 1/3: too few calls, old ones expired
    succeed(breaker)
    fail(breaker)
    assert breaker.state is CircuitState.CLOSED  # 2/5 < 0.5
    fail(breaker)
    assert breaker.state is CircuitState.OPEN  # 3/6 >= 0.5


def test_slow_call_rate_opens_it(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(
        clock,
        bus,
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
        window_size=10,
        minimum_calls=4,
    )
    succeed(breaker, duration=0.5)
    succeed(breaker, duration=2.0)
    succeed(breaker, duration=3.0)
    assert breaker.metrics().slow_calls == 2
    assert breaker.state is CircuitState.CLOSED
    succeed(breaker, duration=0.1)  # 2/4 slow
    assert breaker.state is CircuitState.OPEN
    assert seen == [("closed", "open", "slow_call_rate")]


def test_slow_calls_are_counted_without_a_rate_rule(clock: FakeClock) -> None:
    breaker = make(clock, slow_call_duration=1.0)
    for _ in range(30):
        succeed(breaker, duration=5.0)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.slow_calls, metrics.slow_call_rate) == ("closed", 30, 1.0)


def test_a_slow_failure_is_only_a_failure(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=10, slow_call_duration=1.0)
    permit = breaker.acquire()
    breaker.record_failure(permit, ConnectionError("down"), 9.0)
    metrics = breaker.metrics()
    assert (metrics.failures, metrics.slow_calls) == (1, 0)


# -- open ---------------------------------------------------------------------------------------


def test_open_refuses_with_time_until_half_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=30)
    fail(breaker)
    clock.advance(12)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(18)
    assert info.value.state == "open"
    assert info.value.name == "svc"
    assert breaker.retry_after() == pytest.approx(18)


def test_open_moves_to_half_open_lazily(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(clock, bus, failure_threshold=1, reset_timeout=30)
    fail(breaker)
    clock.advance(29.999)
    assert breaker.state is CircuitState.OPEN
    clock.advance(0.001)
    assert seen == [("closed", "open", "consecutive_failures")]  # no timer fired anything
    assert breaker.state is CircuitState.HALF_OPEN
    assert seen[-1] == ("open", "half_open", "reset_timeout_elapsed")


def test_acquire_itself_performs_the_lazy_move(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(clock, bus, failure_threshold=1, reset_timeout=5)
    fail(breaker)
    clock.advance(5)
    permit = breaker.acquire()
    assert permit & 1  # a probe
    assert seen[-1] == ("open", "half_open", "reset_timeout_elapsed")


def test_retry_after_also_performs_the_lazy_move(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(clock, bus, failure_threshold=1, reset_timeout=5)
    fail(breaker)
    clock.advance(6)
    assert breaker.retry_after() == 0.0
    assert seen[-1] == ("open", "half_open", "reset_timeout_elapsed")


def test_rejections_are_published(clock: FakeClock, bus: EventBus) -> None:
    rejected: list[CallRejected] = []
    bus.subscribe(rejected.append, CallRejected)
    breaker = make(clock, bus, failure_threshold=1, reset_timeout=10)
    fail(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    assert rejected == [CallRejected(source="svc", reason="circuit_open", retry_after=10.0)]


# -- half-open ----------------------------------------------------------------------------------


def test_half_open_admits_at_most_max_probes(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=0.5, half_open_max_calls=2)
    fail(breaker)
    clock.advance(0.5)
    first, second = breaker.acquire(), breaker.acquire()
    assert first & 1
    assert second & 1
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.state == "half_open"
    assert info.value.retry_after == 0.5  # min(1.0, reset_timeout)
    assert breaker.metrics().probes_in_flight == 2
    assert breaker.retry_after() == 0.5


def test_half_open_full_retry_after_is_one_second(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=30)
    fail(breaker)
    clock.advance(30)
    breaker.acquire()
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 1.0


def test_success_threshold_probes_close_it_with_a_clean_window(
    clock: FakeClock, bus: EventBus
) -> None:
    seen = transitions(bus)
    breaker = make(clock, bus, failure_threshold=2, reset_timeout=1, success_threshold=2)
    fail(breaker)
    fail(breaker)
    clock.advance(1)
    succeed(breaker)
    assert breaker.state is CircuitState.HALF_OPEN
    succeed(breaker)
    metrics = breaker.metrics()
    assert metrics.state is CircuitState.CLOSED
    assert (metrics.calls, metrics.failures, metrics.consecutive_failures) == (0, 0, 0)
    assert metrics.consecutive_opens == 0
    assert metrics.opened_count == 1
    assert seen[-1] == ("half_open", "closed", "probes_succeeded")


def test_probe_failure_reopens_with_backoff_up_to_the_cap(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(
        clock, bus, failure_threshold=1, reset_timeout=10, reset_backoff=2, max_reset_timeout=35
    )
    fail(breaker)
    waits = []
    for _ in range(4):
        waits.append(breaker.retry_after())
        clock.advance(breaker.retry_after() or 0.0)
        fail(breaker)  # the probe fails
    waits.append(breaker.retry_after())
    assert waits == [10, 20, 35, 35, 35]
    assert breaker.metrics().consecutive_opens == 5
    assert seen[-1] == ("half_open", "open", "probe_failed")


def test_closing_forgets_the_backoff(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=10, reset_backoff=3)
    fail(breaker)
    clock.advance(10)
    fail(breaker)
    assert breaker.retry_after() == 30
    clock.advance(30)
    succeed(breaker)
    assert breaker.state is CircuitState.CLOSED
    fail(breaker)
    assert breaker.retry_after() == 10
    assert breaker.metrics().opened_count == 3


def test_an_ignored_error_frees_the_probe_slot(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.advance(1)
    permit = breaker.acquire()
    breaker.record_failure(permit, ValueError("bad prompt"), 0.1)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.metrics().probes_in_flight == 0
    succeed(breaker)
    assert breaker.state is CircuitState.CLOSED


def test_release_frees_the_probe_slot(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.advance(1)
    permit = breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    breaker.release(permit)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.acquire() & 1


def test_a_slow_probe_is_a_failed_probe_when_the_slow_rule_is_on(clock: FakeClock) -> None:
    breaker = make(
        clock,
        failure_threshold=1,
        reset_timeout=1,
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
        minimum_calls=5,
    )
    fail(breaker)
    clock.advance(1)
    succeed(breaker, duration=2.5)
    assert breaker.state is CircuitState.OPEN


def test_a_slow_probe_succeeds_when_only_the_duration_is_set(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1, slow_call_duration=2.0)
    fail(breaker)
    clock.advance(1)
    succeed(breaker, duration=2.5)
    assert breaker.state is CircuitState.CLOSED


# -- epochs: late verdicts ----------------------------------------------------------------------


def test_a_late_failure_from_before_the_trip_is_ignored(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, reset_timeout=10, reset_backoff=2)
    slow_call = breaker.acquire()
    fail(breaker)
    fail(breaker)
    clock.advance(10)
    probe = breaker.acquire()
    breaker.record_failure(slow_call, ConnectionError("late"), 30.0)
    assert breaker.state is CircuitState.HALF_OPEN  # not re-opened by the old call
    breaker.record_success(probe, 0.1)
    assert breaker.state is CircuitState.CLOSED


def test_a_late_success_does_not_count_as_a_probe(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    slow_call = breaker.acquire()
    fail(breaker)
    clock.advance(1)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.record_success(slow_call, 5.0)
    assert breaker.state is CircuitState.HALF_OPEN


def test_a_late_failure_after_reset_does_not_count(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    old = breaker.acquire()
    breaker.reset()
    breaker.record_failure(old, ConnectionError("late"), 1.0)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().calls == 0


def test_a_stale_probe_still_holds_its_slot_until_it_ends(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1, half_open_max_calls=2)
    fail(breaker)
    clock.advance(1)
    lingering = breaker.acquire()
    fail(breaker)  # the other probe fails: open again
    clock.advance(1)
    assert breaker.acquire() & 1
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # the lingering probe still occupies the callee
    breaker.record_success(lingering, 0.1)  # its verdict is too late to count...
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.acquire() & 1  # ...but its slot is free again


# -- operator controls --------------------------------------------------------------------------


def test_force_open_rejects_everything_until_reset(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(clock, bus)
    breaker.force_open()
    clock.advance(10_000)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert (info.value.state, info.value.retry_after) == ("forced_open", None)
    assert "reset()" in str(info.value)
    assert breaker.state is CircuitState.FORCED_OPEN
    assert breaker.retry_after() is None
    breaker.reset()
    succeed(breaker)
    assert seen == [("closed", "forced_open", "forced_open"), ("forced_open", "closed", "reset")]


def test_disabled_admits_everything_and_records_nothing(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    breaker.disable()
    for _ in range(50):
        fail(breaker)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.calls, metrics.failures) == ("disabled", 0, 0)
    assert metrics.retry_after == 0.0
    breaker.reset()
    fail(breaker)
    assert breaker.state is CircuitState.OPEN


def test_reset_closes_an_open_breaker_with_a_clean_slate(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=10, reset_backoff=2)
    fail(breaker)
    clock.advance(10)
    fail(breaker)
    breaker.reset()
    metrics = breaker.metrics()
    assert (metrics.state, metrics.calls, metrics.consecutive_opens) == ("closed", 0, 0)
    fail(breaker)
    assert breaker.retry_after() == 10


def test_operator_actions_that_change_nothing_emit_nothing(clock: FakeClock, bus: EventBus) -> None:
    seen = transitions(bus)
    breaker = make(clock, bus)
    breaker.reset()
    breaker.disable()
    breaker.disable()
    assert seen == [("closed", "disabled", "disabled")]


# -- which errors count -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        CallTimeoutError("svc", timeout=1.0),
        ConnectionError("refused"),
        TimeoutError(),
        StatusError(500),
        StatusError(503),
        StatusError(529),
        StatusError(429),
        StatusError(408),
        RuntimeError("unknown"),
    ],
    ids=repr,
)
def test_callee_failures_count(clock: FakeClock, exc: BaseException) -> None:
    assert counts_against_callee(exc)
    breaker = make(clock, failure_threshold=1)
    fail(breaker, exc)
    assert breaker.state is CircuitState.OPEN


@pytest.mark.parametrize(
    "exc",
    [
        StatusError(400),
        StatusError(404),
        StatusError(422),
        ValueError("bad input"),
        TypeError("wrong call"),
        KeyError("k"),
        ConfigurationError("bad option"),
        BulkheadFullError("inner", max_concurrent=1, max_queued=0, reason="full"),
        CircuitOpenError("inner", retry_after=1.0),
    ],
    ids=repr,
)
def test_caller_errors_and_local_refusals_do_not_count(
    clock: FakeClock, exc: BaseException
) -> None:
    assert not counts_against_callee(exc)
    breaker = make(clock, failure_threshold=1)
    fail(breaker)
    breaker.reset()
    fail(breaker, exc)
    succeed(breaker)
    fail(breaker, exc)
    metrics = breaker.metrics()
    assert metrics.state is CircuitState.CLOSED
    assert (metrics.calls, metrics.failures) == (1, 0)


def test_an_ignored_error_does_not_restart_the_failure_run(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    fail(breaker)
    fail(breaker, ValueError("caller's fault"))
    fail(breaker)
    assert breaker.state is CircuitState.OPEN


def test_a_custom_rule_decides_what_counts(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, record_failure=lambda exc: isinstance(exc, KeyError))
    fail(breaker, ConnectionError("ignored by this rule"))
    assert breaker.state is CircuitState.CLOSED
    fail(breaker, KeyError("counted"))
    assert breaker.state is CircuitState.OPEN


def test_a_failing_rule_frees_the_probe_and_propagates(clock: FakeClock) -> None:
    calls: list[BaseException] = []

    def rule(exc: BaseException) -> bool:
        calls.append(exc)
        if len(calls) > 1:
            raise LookupError("rule is broken")
        return True

    breaker = make(clock, failure_threshold=1, reset_timeout=1, record_failure=rule)
    fail(breaker)
    clock.advance(1)
    permit = breaker.acquire()
    with pytest.raises(LookupError, match="rule is broken"):
        breaker.record_failure(permit, ConnectionError("down"), 0.1)
    assert breaker.metrics().probes_in_flight == 0


# -- events and listeners -----------------------------------------------------------------------


def test_listeners_and_bus_see_the_same_events_in_order(clock: FakeClock, bus: EventBus) -> None:
    on_bus: list[CircuitStateChanged] = []
    bus.subscribe(on_bus.append, CircuitStateChanged)
    breaker = make(clock, bus, failure_threshold=1, reset_timeout=1)
    heard: list[CircuitStateChanged] = []
    breaker.add_listener(heard.append)
    fail(breaker)
    clock.advance(1)
    succeed(breaker)
    assert [(e.from_state, e.to_state) for e in heard] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert heard == on_bus
    assert {e.source for e in heard} == {"svc"}


def test_listeners_run_after_the_lock_is_released(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    states_seen: list[CircuitState] = []
    breaker.add_listener(lambda _event: states_seen.append(breaker.state))
    fail(breaker)
    assert states_seen == [CircuitState.OPEN]


def test_a_listener_that_acts_keeps_events_in_order(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    heard: list[tuple[str, str]] = []

    def react(event: CircuitStateChanged) -> None:
        heard.append((event.from_state, event.to_state))
        if event.to_state == "open":
            breaker.reset()

    breaker.add_listener(react)
    fail(breaker)
    assert heard == [("closed", "open"), ("open", "closed")]
    assert breaker.state is CircuitState.CLOSED


def test_a_failing_listener_is_logged_and_harmless(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(clock, failure_threshold=1)
    heard: list[CircuitStateChanged] = []

    def broken(_event: CircuitStateChanged) -> None:
        raise RuntimeError("exporter down")

    breaker.add_listener(broken)
    breaker.add_listener(heard.append)
    with caplog.at_level(logging.ERROR, logger="bastion.resilience.breaker"):
        fail(breaker)
    assert breaker.state is CircuitState.OPEN
    assert len(heard) == 1
    assert "listener" in caplog.text
    assert "exporter down" in caplog.text


def test_a_blocked_listener_does_not_block_other_threads(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=10)
    in_listener, release = threading.Event(), threading.Event()
    heard: list[str] = []

    def slow(event: CircuitStateChanged) -> None:
        if event.to_state == "open":
            in_listener.set()
            release.wait(timeout=30)

    breaker.add_listener(slow)
    breaker.add_listener(lambda event: heard.append(event.to_state))
    tripper = threading.Thread(target=fail, args=(breaker,))
    tripper.start()
    try:
        assert in_listener.wait(timeout=30)
        outcome: list[object] = []
        finished = threading.Event()

        def use_the_breaker() -> None:
            try:
                breaker.acquire()
            except CircuitOpenError as exc:
                outcome.append(exc.state)
            breaker.reset()  # a transition of its own, while the tripper is still delivering
            succeed(breaker)
            fail(breaker, ValueError("caller's fault"))
            outcome.append(breaker.metrics().calls)
            finished.set()

        other = threading.Thread(target=use_the_breaker)
        other.start()
        assert finished.wait(timeout=30), "another thread waited on a slow listener"
        other.join(timeout=30)
        assert outcome == ["open", 1]
        assert heard == []  # the slow listener still holds the first event
    finally:
        release.set()
        tripper.join(timeout=30)
    assert heard == ["open", "closed"]  # delivered by the tripper, in transition order


def test_every_refusal_emits_call_rejected_with_its_reason(clock: FakeClock, bus: EventBus) -> None:
    rejected: list[CallRejected] = []
    bus.subscribe(rejected.append, CallRejected)
    breaker = make(clock, bus, failure_threshold=1, reset_timeout=10)
    fail(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(10)
    probe = breaker.acquire()  # half-open: the one probe slot is taken
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    breaker.release(probe)
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    assert [(e.source, e.reason, e.retry_after) for e in rejected] == [
        ("svc", "circuit_open", 10.0),
        ("svc", "circuit_half_open", 1.0),
        ("svc", "circuit_forced_open", None),
    ]


def test_a_removed_listener_hears_nothing(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    heard: list[CircuitStateChanged] = []
    remove = breaker.add_listener(heard.append)
    remove()
    fail(breaker)
    assert heard == []


def test_events_go_to_the_default_bus_without_bus(clock: FakeClock) -> None:
    from bastion._core.events import default_bus

    seen: list[CircuitStateChanged] = []
    unsubscribe = default_bus().subscribe(seen.append, CircuitStateChanged)
    try:
        breaker = CircuitBreaker(
            CircuitBreakerConfig(failure_threshold=1), name="default-bus", clock=clock
        )
        fail(breaker)
    finally:
        unsubscribe()
    assert [(e.source, e.to_state) for e in seen] == [("default-bus", "open")]


# -- metrics and repr ---------------------------------------------------------------------------


def test_metrics_snapshot(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3, slow_call_duration=1.0, reset_timeout=7)
    succeed(breaker, duration=2.0)
    fail(breaker)
    assert breaker.metrics() == CircuitMetrics(
        state=CircuitState.CLOSED,
        calls=2,
        failures=1,
        slow_calls=1,
        failure_rate=0.5,
        slow_call_rate=0.5,
        consecutive_failures=1,
        opened_count=0,
        consecutive_opens=0,
        probes_in_flight=0,
        retry_after=0.0,
    )
    fail(breaker)
    fail(breaker)
    clock.advance(2)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.opened_count, metrics.retry_after) == ("open", 1, 5.0)


def test_repr_names_breaker_and_state(clock: FakeClock) -> None:
    breaker = make(clock)
    assert repr(breaker) == "CircuitBreaker(name='svc', state='closed')"
    assert isinstance(breaker.acquire(), int)


# -- shells: call, call_sync, decorator ---------------------------------------------------------


async def test_call_records_success_and_failure(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)

    async def ok(x: int) -> int:
        return x * 2

    async def down() -> None:
        raise ConnectionError("down")

    assert await breaker.call(ok, 21) == 42
    with pytest.raises(ConnectionError):
        await breaker.call(down)
    with pytest.raises(ConnectionError):
        await breaker.call(down)
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok, 1)
    assert breaker.metrics().calls == 3


async def test_call_times_out_and_counts_it(clock: FakeClock, bus: EventBus) -> None:
    breaker = make(clock, bus, failure_threshold=1, call_timeout=5.0)

    async def hangs() -> str:
        await clock.sleep(100)
        return "never"

    task = asyncio.create_task(breaker.call(hangs))
    await clock.wait_for_sleepers()
    clock.advance(5)
    with pytest.raises(CallTimeoutError):
        await task
    assert breaker.state is CircuitState.OPEN


async def test_duration_comes_from_the_clock(auto_clock: FakeClock) -> None:
    breaker = make(auto_clock, slow_call_duration=2.0)

    async def slow() -> str:
        await auto_clock.sleep(3)
        return "late"

    assert await breaker.call(slow) == "late"
    assert breaker.metrics().slow_calls == 1


async def test_a_cancelled_probe_frees_its_slot(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.advance(1)

    async def hangs() -> None:
        await clock.sleep(100)

    task = asyncio.create_task(breaker.call(hangs))
    await clock.wait_for_sleepers()
    assert breaker.metrics().probes_in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    metrics = breaker.metrics()
    assert (metrics.state, metrics.probes_in_flight) == ("half_open", 0)


def test_call_sync_inline_and_through_the_timeout_pool(clock: FakeClock) -> None:
    inline = make(clock, failure_threshold=1)
    threads: list[str] = []

    def where() -> str:
        threads.append(threading.current_thread().name)
        return "ok"

    assert inline.call_sync(where) == "ok"
    pooled = CircuitBreaker(CircuitBreakerConfig(call_timeout=30), name="pooled", clock=clock)
    assert pooled.call_sync(where) == "ok"
    assert threads[0] == threading.current_thread().name
    assert threads[1] == "bastion-pooled"

    def down() -> None:
        raise StatusError(502)

    with pytest.raises(StatusError):
        inline.call_sync(down)
    with pytest.raises(CircuitOpenError):
        inline.call_sync(where)


def test_call_sync_releases_on_base_exceptions(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.advance(1)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call_sync(interrupted)
    assert breaker.metrics().probes_in_flight == 0
    assert breaker.state is CircuitState.HALF_OPEN


async def test_an_object_with_an_async_call_is_judged_when_awaited(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    class Provider:
        async def __call__(self, prompt: str) -> str:
            raise ConnectionError("down")

    complete = breaker(Provider())
    with pytest.raises(ConnectionError):
        await complete("hi")
    assert breaker.state is CircuitState.OPEN  # not a success recorded when the coroutine was made


def test_call_sync_refuses_a_function_that_returns_a_coroutine(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.advance(1)  # half-open: a success would close it

    async def fetch() -> int:
        return 1

    with pytest.raises(ConfigurationError, match=r"returned an awaitable.*await breaker\.call"):
        breaker.call_sync(fetch)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.probes_in_flight) == ("half_open", 0)


async def test_decorator_keeps_sync_and_async(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)

    @breaker
    async def afetch(x: int) -> int:
        return x + 1

    @breaker
    def fetch(x: int) -> int:
        return x + 2

    assert inspect.iscoroutinefunction(afetch)
    assert not inspect.iscoroutinefunction(fetch)
    assert afetch.__name__ == "afetch"
    assert await afetch(1) == 2
    assert fetch(1) == 3
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        fetch(1)
    with pytest.raises(CircuitOpenError):
        await afetch(1)


# -- concurrency --------------------------------------------------------------------------------


@pytest.fixture
def busy_switching() -> Any:
    """Switch threads far more often than usual, so races get a chance to happen."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def run_threads(count: int, target: Any) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.usefixtures("busy_switching")
def test_threads_hammering_a_closed_breaker_lose_no_counts(clock: FakeClock) -> None:
    breaker = make(
        clock,
        failure_threshold=None,
        failure_rate_threshold=1.0,
        window_size=20_000,
        minimum_calls=10,
    )

    def work(_index: int) -> None:
        for i in range(2000):
            permit = breaker.acquire()
            if i % 3 == 0:
                breaker.record_failure(permit, ConnectionError("down"), 0.0)
            else:
                breaker.record_success(permit, 0.0)

    run_threads(8, work)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.calls, metrics.failures) == ("closed", 16_000, 8 * 667)


@pytest.mark.usefixtures("busy_switching")
def test_threads_never_exceed_the_probe_limit(clock: FakeClock) -> None:
    breaker = make(
        clock, failure_threshold=3, reset_timeout=1.0, half_open_max_calls=2, success_threshold=2
    )
    guard = threading.Lock()
    in_flight: dict[int, int] = {}
    peak = 0
    admitted = rejected = 0

    def work(index: int) -> None:
        nonlocal peak, admitted, rejected
        rng = random.Random(index)
        for _ in range(2000):
            try:
                permit = breaker.acquire()
            except CircuitOpenError:
                with guard:
                    rejected += 1
                clock.advance(0.05)
                continue
            with guard:
                admitted += 1
                if permit & 1:
                    in_flight[permit] = in_flight.get(permit, 0) + 1
                    peak = max(peak, in_flight[permit])
            assert breaker.metrics().probes_in_flight <= 2
            roll = rng.random()
            if permit & 1:
                with guard:
                    in_flight[permit] -= 1
            if roll < 0.4:
                breaker.record_failure(permit, ConnectionError("down"), 0.0)
            elif roll < 0.5:
                breaker.release(permit)
            else:
                breaker.record_success(permit, 0.0)

    run_threads(8, work)
    assert admitted + rejected == 16_000
    assert 1 <= peak <= 2
    assert breaker.metrics().probes_in_flight == 0
    assert breaker.metrics().opened_count >= 1


@pytest.mark.usefixtures("busy_switching")
def test_threads_against_a_dead_callee_keep_total_probes_bounded(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=0.5, half_open_max_calls=3)
    guard = threading.Lock()
    outstanding = peak = 0

    def work(_index: int) -> None:
        nonlocal outstanding, peak
        for _ in range(2000):
            try:
                permit = breaker.acquire()
            except CircuitOpenError:
                clock.advance(0.01)
                continue
            if permit & 1:
                with guard:
                    outstanding += 1
                    peak = max(peak, outstanding)
                with guard:
                    outstanding -= 1
            breaker.record_failure(permit, ConnectionError("down"), 0.0)

    run_threads(8, work)
    assert 1 <= peak <= 3  # never closes, so every probe since the start counts
    assert breaker.state in (CircuitState.OPEN, CircuitState.HALF_OPEN)
    assert breaker.metrics().probes_in_flight == 0


async def test_hundreds_of_tasks_get_exactly_the_probe_limit(clock: FakeClock) -> None:
    breaker = make(
        clock, failure_threshold=1, reset_timeout=1, half_open_max_calls=3, success_threshold=3
    )
    fail(breaker)
    clock.advance(1)
    running = peak = 0

    async def probe() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await clock.sleep(1)
        running -= 1
        return "ok"

    async def attempt() -> str:
        try:
            return await breaker.call(probe)
        except CircuitOpenError:
            return "rejected"

    tasks = [asyncio.create_task(attempt()) for _ in range(300)]
    await clock.wait_for_sleepers(3)
    for _ in range(10):
        await asyncio.sleep(0)
    clock.advance(1)
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 3
    assert results.count("rejected") == 297
    assert peak == 3
    assert breaker.state is CircuitState.CLOSED

    async def quick() -> str:
        return "ok"

    closed_results = await asyncio.gather(*(breaker.call(quick) for _ in range(300)))
    assert closed_results == ["ok"] * 300


async def test_hundreds_of_tasks_with_mixed_outcomes_keep_invariants(
    auto_clock: FakeClock,
) -> None:
    breaker = make(
        auto_clock,
        failure_threshold=5,
        failure_rate_threshold=0.5,
        window_size=50,
        minimum_calls=20,
        reset_timeout=0.5,
        half_open_max_calls=2,
    )
    rng = random.Random(7)
    outcomes = {"ok": 0, "failed": 0, "rejected": 0}
    peak = running_probes = 0

    async def worker() -> None:
        nonlocal peak, running_probes
        for _ in range(20):
            try:
                permit = breaker.acquire()
            except CircuitOpenError:
                outcomes["rejected"] += 1
                await auto_clock.sleep(0.1)
                continue
            probe = bool(permit & 1)
            running_probes += probe
            peak = max(peak, running_probes)
            await asyncio.sleep(0)
            running_probes -= probe
            if rng.random() < 0.5:
                outcomes["failed"] += 1
                breaker.record_failure(permit, ConnectionError("down"), 0.0)
            else:
                outcomes["ok"] += 1
                breaker.record_success(permit, 0.0)

    await asyncio.gather(*(worker() for _ in range(200)))
    assert sum(outcomes.values()) == 4000
    assert peak <= 2
    assert outcomes["rejected"] > 0
    assert breaker.metrics().probes_in_flight == 0


# -- the windows on their own -------------------------------------------------------------------


def test_count_window_keeps_running_sums_as_it_wraps() -> None:
    window = CountWindow(3)
    assert window.record(SLOW, 0.0) == WindowTotals(1, 0, 1)
    assert window.record(FAILURE, 0.0) == WindowTotals(2, 1, 1)
    assert window.record(SUCCESS, 0.0) == WindowTotals(3, 1, 1)
    assert window.record(SUCCESS, 0.0) == WindowTotals(3, 1, 0)  # the slow call left
    assert window.record(SUCCESS, 0.0) == WindowTotals(3, 0, 0)  # and the failure
    assert repr(window) == "CountWindow(size=3, totals=WindowTotals(calls=3, failures=0, slow=0))"
    window.clear()
    assert window.totals(0.0) == WindowTotals(0, 0, 0)
    assert "buckets=10" in repr(TimeWindow(5))
    with pytest.raises(ValueError, match="size >= 1"):
        CountWindow(0)


def test_time_window_buckets_follow_the_documented_rule() -> None:
    assert time_window_buckets(0.5) == 10
    assert time_window_buckets(60) == 60
    assert time_window_buckets(60.5) == 61
    assert time_window_buckets(86_400) == 1000
    with pytest.raises(ValueError, match="seconds > 0"):
        TimeWindow(0)


def test_time_window_expires_bucket_by_bucket() -> None:
    window = TimeWindow(10)  # ten 1-second buckets
    window.record(FAILURE, 0.2)
    window.record(SLOW, 4.5)
    window.record(SUCCESS, 9.9)
    assert window.totals(9.99) == WindowTotals(3, 1, 1)
    assert window.totals(10.0) == WindowTotals(2, 0, 1)  # bucket 0 aged out
    assert window.totals(14.99) == WindowTotals(1, 0, 0)
    assert window.totals(1000.0) == WindowTotals(0, 0, 0)  # a long idle clears everything
    assert window.record(FAILURE, 1000.5) == WindowTotals(1, 1, 0)


def test_rolling_counters_keep_several_totals_over_one_bucketed_window() -> None:
    counters = RollingCounters(5, 0.2, 2)  # one second in five buckets
    counters.add(counters.slot(0.0), 0)
    counters.add(counters.slot(0.5), 1, 3)
    assert counters.totals == [1, 3]
    counters.slot(1.0)  # the bucket of t=0 has left; the one of t=0.5 has not
    assert counters.totals == [0, 3]
    counters.slot(1.0 + 0.5)
    assert counters.totals == [0, 0]
    counters.add(counters.slot(7.0), 0)
    counters.clear()
    assert counters.totals == [0, 0]
    assert "buckets=5" in repr(counters)
    with pytest.raises(ValueError, match="buckets >= 1"):
        RollingCounters(0, 1.0, 1)


def test_time_window_files_a_backward_step_in_the_newest_bucket() -> None:
    window = TimeWindow(10)
    window.record(SUCCESS, 5.0)
    assert window.record(FAILURE, 3.0) == WindowTotals(2, 1, 0)
    assert window.totals(14.99) == WindowTotals(2, 1, 0)
    assert window.totals(15.0) == WindowTotals(0, 0, 0)


@given(
    size=st.integers(1, 12),
    events=st.lists(
        st.tuples(st.sampled_from([SUCCESS, FAILURE, SLOW]), st.sampled_from([0, 0.25, 1, 3])),
        max_size=60,
    ),
)
def test_windows_agree_with_a_recount(size: int, events: list[tuple[int, float]]) -> None:
    count, timed = CountWindow(size), TimeWindow(size)
    width = size / time_window_buckets(size)
    now = 0.0
    history: list[tuple[float, int]] = []
    for outcome, step in events:
        now += step
        history.append((now, outcome))
        count.record(outcome, now)
        timed.record(outcome, now)
        last = [o for _, o in history[-size:]]
        assert count.totals(now) == (len(last), last.count(FAILURE), last.count(SLOW))
        head = math.floor(now / width)
        recent = [o for t, o in history if math.floor(t / width) > head - time_window_buckets(size)]
        assert timed.totals(now) == (len(recent), recent.count(FAILURE), recent.count(SLOW))
