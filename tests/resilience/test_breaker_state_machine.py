"""The breaker against a plain reference model, driven by hypothesis through random histories.

The model keeps every outcome in a list and recomputes the totals from scratch
on each call, so it shares no data structure with the breaker's ring buffers
and running sums; it mirrors only the documented rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bastion import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitStateChanged,
    EventBus,
)
from bastion.resilience import Permit
from bastion.testing import FakeClock

SLOW_AFTER = 2.0
OUTCOMES = ("success", "slow_success", "failure", "client_error")


@dataclass
class Model:
    """The documented semantics, written as plainly as possible."""

    config: CircuitBreakerConfig
    state: str = "closed"
    epoch: int = 0
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    consecutive: int = 0
    open_until: float = 0.0
    next_timeout: float = 0.0
    probes: int = 0
    probe_floor: int = 0
    probe_successes: int = 0
    opened: int = 0
    transitions: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.next_timeout = self.config.reset_timeout

    # The window, recomputed from the full history every time.
    def totals(self, now: float) -> tuple[int, int, int]:
        if self.config.window_type == "count":
            recent = [code for _, code in self.outcomes][-int(self.config.window_size) :]
        else:
            buckets = min(max(math.ceil(self.config.window_size), 10), 1000)
            width = self.config.window_size / buckets
            newest = int(now // width)
            recent = [code for t, code in self.outcomes if int(t // width) > newest - buckets]
        return (len(recent), recent.count("failure"), recent.count("slow_success"))

    def move(self, to: str, now: float) -> None:
        if to != self.state:
            self.transitions.append((self.state, to))
        self.state = to
        self.epoch += 1
        self.probe_successes = 0
        if to not in ("open", "half_open"):
            self.probes = 0
            self.probe_floor = self.epoch
        if to == "open":
            self.opened += 1
            self.open_until = now + self.next_timeout
            self.next_timeout = min(
                self.next_timeout * self.config.reset_backoff, self.config.max_reset_timeout
            )
        if to == "closed":
            self.outcomes = []
            self.consecutive = 0
            self.next_timeout = self.config.reset_timeout

    def poll(self, now: float) -> None:
        if self.state == "open" and now >= self.open_until:
            self.move("half_open", now)

    def acquire(self, now: float) -> tuple[int, bool] | float | None:
        """A permit ``(epoch, is_probe)``, or the ``retry_after`` of the refusal."""
        self.poll(now)
        if self.state in ("closed", "disabled"):
            return (self.epoch, False)
        if self.state == "half_open":
            if self.probes < self.config.half_open_max_calls:
                self.probes += 1
                return (self.epoch, True)
            return min(1.0, self.config.reset_timeout)
        if self.state == "open":
            return self.open_until - now
        return None

    def finish(self, permit: tuple[int, bool], outcome: str, now: float) -> None:
        epoch, probe = permit
        if outcome == "slow_success" and self.config.slow_call_duration is None:
            outcome = "success"  # nothing is slow without a slow-call duration
        if probe:
            if epoch < self.probe_floor:
                return
            self.probes -= 1
            if epoch != self.epoch or outcome in ("client_error", "release"):
                return
            slow_fails = self.config.slow_call_rate_threshold is not None
            if outcome == "failure" or (outcome == "slow_success" and slow_fails):
                self.move("open", now)
                return
            self.probe_successes += 1
            if self.probe_successes >= self.config.success_threshold:
                self.move("closed", now)
            return
        if epoch != self.epoch or self.state != "closed":
            return
        if outcome in ("client_error", "release"):
            return
        self.outcomes.append((now, outcome))
        self.consecutive = self.consecutive + 1 if outcome == "failure" else 0
        threshold = self.config.failure_threshold
        if outcome == "failure" and threshold is not None and self.consecutive >= threshold:
            self.move("open", now)
            return
        calls, failures, slow = self.totals(now)
        if calls < self.config.minimum_calls:
            return
        failure_rate = self.config.failure_rate_threshold
        slow_rate = self.config.slow_call_rate_threshold
        if (failure_rate is not None and failures / calls >= failure_rate) or (
            slow_rate is not None and slow / calls >= slow_rate
        ):
            self.move("open", now)

    def retry_after(self, now: float) -> float | None:
        self.poll(now)
        if self.state == "open":
            return self.open_until - now
        if self.state == "forced_open":
            return None
        if self.state == "half_open" and self.probes >= self.config.half_open_max_calls:
            return min(1.0, self.config.reset_timeout)
        return 0.0


@st.composite
def configs(draw: Any) -> CircuitBreakerConfig:
    window_type = draw(st.sampled_from(["count", "time"]))
    window_size = draw(
        st.integers(1, 8) if window_type == "count" else st.sampled_from([5, 10, 20])
    )
    failure_rate = draw(st.sampled_from([None, 0.25, 0.5, 1.0]))
    slow_rate = draw(st.sampled_from([None, 0.5, 1.0]))
    failure_threshold = draw(st.sampled_from([None, 1, 2, 4]))
    if failure_threshold is None and failure_rate is None and slow_rate is None:
        failure_threshold = 3
    reset_timeout = draw(st.sampled_from([0.5, 1.0, 4.0, 10.0]))
    return CircuitBreakerConfig(
        failure_threshold=failure_threshold,
        failure_rate_threshold=failure_rate,
        window_type=window_type,
        window_size=window_size,
        minimum_calls=draw(st.integers(1, min(int(window_size), 6))),
        slow_call_duration=draw(st.sampled_from([None, SLOW_AFTER]))
        if slow_rate is None
        else SLOW_AFTER,
        slow_call_rate_threshold=slow_rate,
        reset_timeout=reset_timeout,
        reset_backoff=draw(st.sampled_from([1.0, 2.0])),
        max_reset_timeout=reset_timeout * draw(st.sampled_from([1, 3, 8])),
        half_open_max_calls=draw(st.integers(1, 3)),
        success_threshold=draw(st.integers(1, 3)),
        call_timeout=None,
    )


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.held: list[tuple[Permit, tuple[int, bool]]] = []

    @initialize(config=configs())
    def start(self, config: CircuitBreakerConfig) -> None:
        self.bus = EventBus()
        self.breaker = CircuitBreaker(config, name="m", clock=self.clock, bus=self.bus)
        self.model = Model(config)
        self.events: list[tuple[str, str]] = []
        self.bus.subscribe(
            lambda e: self.events.append((e.from_state, e.to_state)), CircuitStateChanged
        )

    def now(self) -> float:
        return self.clock.monotonic()

    def acquire_both(self) -> tuple[Permit, tuple[int, bool]] | None:
        expected = self.model.acquire(self.now())
        refusal: CircuitOpenError | None = None
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            refusal = exc
        if refusal is not None:
            assert not isinstance(expected, tuple), f"breaker refused, model admitted {expected}"
            assert refusal.retry_after == expected
            assert refusal.state == self.model.state
            return None
        assert isinstance(expected, tuple), f"breaker admitted, model refused ({expected})"
        assert bool(permit & 1) == expected[1]
        return permit, expected

    def finish_both(self, permit: Permit, modelled: tuple[int, bool], outcome: str) -> None:
        if outcome == "release":
            self.breaker.release(permit)
        elif outcome in ("success", "slow_success"):
            self.breaker.record_success(permit, SLOW_AFTER if outcome == "slow_success" else 0.1)
        else:
            exc = ConnectionError("down") if outcome == "failure" else ValueError("bad input")
            self.breaker.record_failure(permit, exc, 0.1)
        self.model.finish(modelled, outcome, self.now())

    @rule(outcome=st.sampled_from(OUTCOMES))
    def call(self, outcome: str) -> None:
        admitted = self.acquire_both()
        if admitted is not None:
            self.finish_both(*admitted, outcome)

    @rule(outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=2, max_size=10))
    def burst(self, outcomes: list[str]) -> None:
        for outcome in outcomes:
            self.call(outcome)

    @rule()
    def start_long_call(self) -> None:
        admitted = self.acquire_both()
        if admitted is not None:
            self.held.append(admitted)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=st.sampled_from((*OUTCOMES, "release")))
    def finish_long_call(self, data: st.DataObject, outcome: str) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1))
        permit, modelled = self.held.pop(index)
        self.finish_both(permit, modelled, outcome)

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 7.0, 15.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def wait_out_the_cooldown(self) -> None:
        wait = self.model.retry_after(self.now())
        if wait:
            self.clock.advance(wait)

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self.model.move("forced_open", self.now())

    @rule()
    def disable(self) -> None:
        self.breaker.disable()
        self.model.move("disabled", self.now())

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.move("closed", self.now())

    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.now()
        self.model.poll(now)
        metrics = self.breaker.metrics()
        # Same state, same window, same counters.
        assert metrics.state == self.model.state
        assert (metrics.calls, metrics.failures, metrics.slow_calls) == self.model.totals(now)
        assert metrics.consecutive_failures == self.model.consecutive
        assert metrics.opened_count == self.model.opened
        assert metrics.retry_after == self.model.retry_after(now)
        # Probes are bounded.
        assert metrics.probes_in_flight == self.model.probes
        assert 0 <= metrics.probes_in_flight <= self.model.config.half_open_max_calls
        # The same transitions were announced, in order.
        assert self.events == self.model.transitions
        # Open refuses, and so does half-open with every probe slot taken.
        probes_full = self.model.probes >= self.model.config.half_open_max_calls
        if self.model.state in ("open", "forced_open") or (
            self.model.state == "half_open" and probes_full
        ):
            try:
                self.breaker.acquire()
            except CircuitOpenError:
                return
            raise AssertionError(f"a {self.model.state} breaker admitted a call")


BreakerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerStateMachine = BreakerMachine.TestCase
