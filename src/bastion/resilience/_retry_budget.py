"""A cap on how much extra load retries may add, shared by every call of a policy.

Per-call limits (``max_retries=2``) are not enough on their own: when the
callee is down, every call fails, every call retries, and a service that was
sending 100 requests a second starts sending 300 -- exactly when the callee
can least take it. A retry budget looks at all calls together: over a rolling
window, retries may add at most ``ratio`` (20 % by default) on top of the first
attempts, plus a small floor of ``min_per_second`` so that a caller with little
traffic can still retry its occasional blip. In a full outage the load stays
within ``1 + ratio`` times normal; in normal operation nobody notices the budget.

The window is split into ten buckets of ``window / 10`` seconds, so each call
costs O(1) and old traffic drops out in steps of one bucket: the window looks
back between nine and ten tenths of ``window``. Time comes from the injected
clock, and a lock makes the budget safe to share between threads and tasks.
"""

from __future__ import annotations

import threading

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.validate import fraction, non_negative_number, positive_number
from bastion.resilience._windows import RollingCounters

__all__ = ["BUDGET_FLOOR_HINT", "BUDGET_RATIO_HINT", "RetryBudget"]

BUDGET_RATIO_HINT = "0.2 lets retries add 20 % to the first attempts"
BUDGET_FLOOR_HINT = "0 means no floor, 1.0 is the default"

_BUCKETS = 10
_ATTEMPTS, _RETRIES = 0, 1
_EPSILON = 1e-9
"""Slack for float rounding, so ``0.2 * 5`` first attempts really allow one retry."""


class RetryBudget:
    """Shared by every call through one policy: retries may add at most ``ratio`` (default 20 %)
    on top of first attempts over a rolling ``window`` (default 10 s), plus a small floor of
    ``min_per_second`` (default 1.0, i.e. 10 retries per 10 s window) so low-traffic callers can
    still retry.

    A retry is allowed when ``retries_in_window + 1 <= min_per_second * window + ratio *
    first_attempts_in_window``.
    """

    __slots__ = ("_clock", "_counters", "_floor", "_lock", "min_per_second", "ratio", "window")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 1.0,
        window: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ratio = fraction(ratio, "RetryBudget.ratio", allow_zero=True, hint=BUDGET_RATIO_HINT)
        self.min_per_second = non_negative_number(
            min_per_second,
            "RetryBudget.min_per_second",
            unit="retries per second",
            hint=BUDGET_FLOOR_HINT,
        )
        self.window = positive_number(window, "RetryBudget.window", unit="seconds")
        self._clock = clock
        self._floor = self.min_per_second * self.window
        self._counters = RollingCounters(_BUCKETS, self.window / _BUCKETS, 2)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_per_second={self.min_per_second!r}, "
            f"window={self.window!r})"
        )

    def record_attempt(self) -> None:
        """Count one first attempt (a deposit: each one earns ``ratio`` of a retry)."""
        now = self._clock.monotonic()
        counters = self._counters
        with self._lock:
            counters.add(counters.slot(now), _ATTEMPTS)

    def try_spend(self) -> bool:
        """Whether one retry may happen now; if so it is counted (a withdrawal)."""
        now = self._clock.monotonic()
        counters = self._counters
        with self._lock:
            slot = counters.slot(now)
            attempts, retries = counters.totals
            if retries + 1 > self._floor + self.ratio * attempts + _EPSILON:
                return False
            counters.add(slot, _RETRIES)
            return True

    @property
    def available(self) -> float:
        """How many retries could be spent right now (for tests and metrics)."""
        now = self._clock.monotonic()
        counters = self._counters
        with self._lock:
            counters.slot(now)
            attempts, retries = counters.totals
            return max(0.0, self._floor + self.ratio * attempts - retries)
