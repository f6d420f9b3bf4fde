"""Property tests: the limiter never holds more than its limit in ANY window, and refuses only
when it must.

A reference model keeps every admitted call and answers from first principles; the limiter's
decisions are checked against it after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bastion import RateLimitConfig, RateLimiter, RateLimitError
from bastion.testing import FakeClock

KEYS = ("a", "b")


@dataclass
class Reference:
    """Every admitted call, per key: (time, request cost, token cost)."""

    max_rpm: float
    max_tpm: float
    window: float
    admitted: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)

    def limits(self) -> tuple[float, float]:
        return (self.max_rpm, self.max_tpm)

    def live(self, key: str, now: float) -> list[tuple[float, float, float]]:
        return [e for e in self.admitted.get(key, []) if e[0] + self.window > now]

    def fits(self, key: str, tokens: float, now: float) -> bool:
        live = self.live(key, now)
        return (
            sum(e[1] for e in live) + 1 <= self.max_rpm
            and sum(e[2] for e in live) + tokens <= self.max_tpm
        )

    def earliest_fit(self, key: str, tokens: float, now: float) -> float:
        """The first instant at or after ``now`` at which the call fits, if nobody else calls."""
        for expiry in sorted({e[0] + self.window for e in self.live(key, now)}):
            if self.fits(key, tokens, expiry):
                return expiry
        return now

    def record(self, key: str, tokens: float, now: float) -> None:
        self.admitted.setdefault(key, []).append((now, 1.0, tokens))

    def check_every_window(self) -> None:
        """No window [t, t + window), for t at any admitted call, holds more than a limit."""
        for log in self.admitted.values():
            for start, _, _ in log:
                inside = [e for e in log if start <= e[0] < start + self.window]
                assert sum(e[1] for e in inside) <= self.max_rpm
                assert sum(e[2] for e in inside) <= self.max_tpm


def check_step(
    ref: Reference, limiter: RateLimiter, clock: FakeClock, key: str, tokens: float
) -> None:
    now = clock.monotonic()
    decision = limiter.try_acquire(key, tokens=tokens)
    assert decision.allowed == ref.fits(key, tokens, now)
    if decision.allowed:
        assert decision.retry_after == 0.0
        ref.record(key, tokens, now)
    else:
        expected = ref.earliest_fit(key, tokens, now)
        assert now + decision.retry_after >= expected
        assert decision.retry_after <= expected - now + 1e-9
    assert 0.0 <= decision.remaining <= decision.limit
    assert decision.limit in ref.limits()


steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=4, allow_nan=False),
        st.sampled_from(KEYS),
        st.integers(min_value=0, max_value=8),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=steps,
    max_rpm=st.integers(min_value=1, max_value=6),
    max_tpm=st.integers(min_value=8, max_value=30),
    window=st.sampled_from([1.0, 2.5, 7.0, 10.0]),
)
def test_no_window_ever_holds_more_than_the_limit(
    steps: list[tuple[float, str, int]], max_rpm: int, max_tpm: int, window: float
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        RateLimitConfig(max_rpm=max_rpm, max_tpm=max_tpm, window=window), clock=clock
    )
    ref = Reference(max_rpm, max_tpm, window)
    for step, key, tokens in steps:
        clock.advance(step)
        check_step(ref, limiter, clock, key, float(tokens))
    ref.check_every_window()


class LimiterMachine(RuleBasedStateMachine):
    """Random interleavings of calls, waits and clock moves against the reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(auto_advance=True)
        self.ref = Reference(max_rpm=4, max_tpm=20, window=5.0)
        self.limiter = RateLimiter(
            RateLimitConfig(max_rpm=4, max_tpm=20, window=5.0, mode="wait", max_wait=3.0),
            clock=self.clock,
        )

    @rule(key=st.sampled_from(KEYS), tokens=st.integers(min_value=0, max_value=12))
    def try_acquire(self, key: str, tokens: int) -> None:
        check_step(self.ref, self.limiter, self.clock, key, float(tokens))

    @rule(key=st.sampled_from(KEYS), tokens=st.integers(min_value=0, max_value=12))
    def acquire_waiting(self, key: str, tokens: int) -> None:
        start = self.clock.monotonic()
        expected = self.ref.earliest_fit(key, tokens, start)
        fits_now = self.ref.fits(key, tokens, start)
        error: RateLimitError | None = None
        try:
            self.limiter.acquire_sync(key, tokens=float(tokens))
        except RateLimitError as exc:
            error = exc
        if error is not None:
            assert expected - start >= 3.0 - 1e-9
            assert error.retry_after > 3.0
            assert self.clock.monotonic() == start
            return
        now = self.clock.monotonic()
        if fits_now:
            assert now == start
        else:
            assert now >= expected
            assert now - start <= 3.0
        assert self.ref.fits(key, tokens, now)
        self.ref.record(key, tokens, now)

    @rule(seconds=st.floats(min_value=0, max_value=6, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def never_over_the_limit(self) -> None:
        self.ref.check_every_window()


LimiterMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_limiter_state_machine = LimiterMachine.TestCase
