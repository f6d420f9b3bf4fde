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

import math
import threading

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError

__all__ = ["RetryBudget"]

_BUCKETS = 10
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

    __slots__ = (
        "_attempts",
        "_clock",
        "_epoch",
        "_floor",
        "_lock",
        "_retries",
        "_total_attempts",
        "_total_retries",
        "_width",
        "min_per_second",
        "ratio",
        "window",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 1.0,
        window: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ratio = check_ratio(ratio, "RetryBudget(ratio)")
        self.min_per_second = check_rate(min_per_second, "RetryBudget(min_per_second)")
        self.window = check_window(window, "RetryBudget(window)")
        self._clock = clock
        self._floor = self.min_per_second * self.window
        self._width = self.window / _BUCKETS
        self._attempts = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._total_attempts = 0
        self._total_retries = 0
        self._epoch = self._epoch_at(clock.monotonic())
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_per_second={self.min_per_second!r}, "
            f"window={self.window!r})"
        )

    def record_attempt(self) -> None:
        """Count one first attempt (a deposit: each one earns ``ratio`` of a retry)."""
        now = self._clock.monotonic()
        with self._lock:
            index = self._roll(now)
            self._attempts[index] += 1
            self._total_attempts += 1

    def try_spend(self) -> bool:
        """Whether one retry may happen now; if so it is counted (a withdrawal)."""
        now = self._clock.monotonic()
        with self._lock:
            index = self._roll(now)
            allowance = self._floor + self.ratio * self._total_attempts
            if self._total_retries + 1 > allowance + _EPSILON:
                return False
            self._retries[index] += 1
            self._total_retries += 1
            return True

    @property
    def available(self) -> float:
        """How many retries could be spent right now (for tests and metrics)."""
        now = self._clock.monotonic()
        with self._lock:
            self._roll(now)
            allowance = self._floor + self.ratio * self._total_attempts
            return max(0.0, allowance - self._total_retries)

    def _epoch_at(self, now: float) -> int:
        return math.floor(now / self._width)

    def _roll(self, now: float) -> int:
        """Drop the buckets that left the window; return the index of the current bucket.

        Must be called with the lock held. Costs at most one pass over the buckets.
        """
        epoch = self._epoch_at(now)
        if epoch > self._epoch:
            if epoch - self._epoch >= _BUCKETS:
                self._attempts = [0] * _BUCKETS
                self._retries = [0] * _BUCKETS
                self._total_attempts = 0
                self._total_retries = 0
            else:
                for stale in range(self._epoch + 1, epoch + 1):
                    slot = stale % _BUCKETS
                    self._total_attempts -= self._attempts[slot]
                    self._total_retries -= self._retries[slot]
                    self._attempts[slot] = 0
                    self._retries[slot] = 0
            self._epoch = epoch
        return self._epoch % _BUCKETS


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_ratio(value: float, option: str, *, also: str = "") -> float:
    """Validate a budget ratio (a fraction in [0, 1]), naming ``option`` in the error.

    ``also`` adds another accepted value to the fix, e.g. ``" or None to turn it off"``.
    """
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        msg = (
            f"{option} must be a fraction between 0 and 1 (0.2 lets retries add 20 % to the "
            f"first attempts){also}; got {value!r}"
        )
        raise ConfigurationError(msg)
    return float(value)


def check_rate(value: float, option: str) -> float:
    """Validate the budget's floor of retries per second, naming ``option`` in the error."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        msg = (
            f"{option} must be a finite number of retries per second >= 0 (0 means no floor, "
            f"1.0 is the default); got {value!r}"
        )
        raise ConfigurationError(msg)
    return float(value)


def check_window(value: float, option: str) -> float:
    """Validate the budget's window length, naming ``option`` in the error."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        msg = f"{option} must be a finite number of seconds > 0, e.g. 10.0; got {value!r}"
        raise ConfigurationError(msg)
    return float(value)
