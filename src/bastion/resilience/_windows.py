"""Sliding windows of call outcomes, kept as running sums so every call costs O(1).

A circuit breaker judges the callee on its *recent* calls: old failures from
before an incident was fixed must stop counting, and one bad minute must not
be diluted by a good week. Two ways to say "recent" are offered:

- :class:`CountWindow` -- the last ``size`` outcomes, in a ring buffer. Good
  when traffic is steady: the rate always covers the same number of calls.
- :class:`TimeWindow` -- the outcomes of the last ``seconds`` seconds, in
  buckets. Good when traffic is bursty: a quiet hour forgets old failures
  instead of keeping them until enough new calls push them out.

Both keep running totals next to their storage, so recording an outcome and
reading the totals never scans the window. The classes are pure: time is
passed in as ``now`` (seconds on a monotonic clock), never read, and they
hold no lock -- the breaker that owns one serialises access.

An outcome is a small int of bit flags: :data:`FAILURE` for a counted
failure, :data:`SLOW` for a successful call that took too long, ``0``
(:data:`SUCCESS`) for a plain success.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

__all__ = [
    "FAILURE",
    "SLOW",
    "SUCCESS",
    "CountWindow",
    "OutcomeWindow",
    "TimeWindow",
    "WindowTotals",
    "time_window_buckets",
]

SUCCESS = 0
"""A call that succeeded in good time."""
FAILURE = 1
"""A call whose error counts against the callee."""
SLOW = 2
"""A call that succeeded but took at least the slow-call duration."""

_MIN_BUCKETS = 10
_MAX_BUCKETS = 1000


class WindowTotals(NamedTuple):
    """How many calls the window holds, and how many of them failed or were slow."""

    calls: int
    failures: int
    slow: int


class OutcomeWindow(Protocol):
    """What a breaker needs from a window; both kinds below provide it."""

    def record(self, outcome: int, now: float) -> WindowTotals:
        """Add one outcome at time ``now`` and return the totals that include it."""
        ...

    def totals(self, now: float) -> WindowTotals:
        """The totals as of ``now`` (a time window first drops what has aged out)."""
        ...

    def clear(self) -> None:
        """Forget every outcome."""
        ...


class CountWindow:
    """The last ``size`` outcomes; the oldest drops out when a new one arrives."""

    __slots__ = ("_failures", "_next", "_ring", "_size", "_slow", "calls")

    def __init__(self, size: int) -> None:
        if size < 1:
            msg = f"a count window needs size >= 1; got {size!r}"
            raise ValueError(msg)
        self._size = size
        self._ring = bytearray(size)
        self._next = 0
        self.calls = 0
        self._failures = 0
        self._slow = 0

    def __repr__(self) -> str:
        return f"CountWindow(size={self._size}, totals={self.totals(0.0)})"

    def record(self, outcome: int, now: float) -> WindowTotals:
        index = self._next
        if self.calls == self._size:
            old = self._ring[index]
            self._failures -= old & FAILURE
            self._slow -= (old & SLOW) >> 1
        else:
            self.calls += 1
        self._ring[index] = outcome
        self._failures += outcome & FAILURE
        self._slow += (outcome & SLOW) >> 1
        index += 1
        self._next = 0 if index == self._size else index
        return WindowTotals(self.calls, self._failures, self._slow)

    def totals(self, now: float) -> WindowTotals:
        return WindowTotals(self.calls, self._failures, self._slow)

    def clear(self) -> None:
        self._ring = bytearray(self._size)
        self._next = 0
        self.calls = 0
        self._failures = 0
        self._slow = 0


def time_window_buckets(seconds: float) -> int:
    """How many buckets a time window of ``seconds`` is cut into.

    One per second, but at least 10 (so a short window is not all-or-nothing)
    and at most 1000 (so a day-long window stays small); a bucket is therefore
    ``seconds / buckets`` long, and the window covers between
    ``seconds - bucket`` and ``seconds`` of history.
    """
    return min(max(math.ceil(seconds), _MIN_BUCKETS), _MAX_BUCKETS)


class TimeWindow:
    """The outcomes of the last ``seconds`` seconds, in equal buckets expired lazily.

    Bucket ``k`` holds the calls made while ``floor(now / width) == k``. The
    window holds the newest bucket and the ones before it, ``buckets`` in all;
    when time moves on, the buckets that fell out are subtracted from the
    running totals the next time the window is touched. A long idle period
    costs at most one pass over the buckets, once.
    """

    __slots__ = (
        "_buckets",
        "_failures",
        "_head",
        "_n",
        "_ring_calls",
        "_ring_failures",
        "_ring_slow",
        "_slow",
        "_width",
        "calls",
        "seconds",
    )

    def __init__(self, seconds: float) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            msg = f"a time window needs a finite number of seconds > 0; got {seconds!r}"
            raise ValueError(msg)
        self.seconds = float(seconds)
        self._n = time_window_buckets(seconds)
        self._width = self.seconds / self._n
        self._ring_calls = [0] * self._n
        self._ring_failures = [0] * self._n
        self._ring_slow = [0] * self._n
        self._head: int | None = None
        self.calls = 0
        self._failures = 0
        self._slow = 0

    def __repr__(self) -> str:
        return (
            f"TimeWindow(seconds={self.seconds!r}, buckets={self._n}, "
            f"calls={self.calls}, failures={self._failures}, slow={self._slow})"
        )

    def record(self, outcome: int, now: float) -> WindowTotals:
        slot = self._advance(now)
        self._ring_calls[slot] += 1
        self.calls += 1
        if outcome:
            failed = outcome & FAILURE
            slow = (outcome & SLOW) >> 1
            self._ring_failures[slot] += failed
            self._ring_slow[slot] += slow
            self._failures += failed
            self._slow += slow
        return WindowTotals(self.calls, self._failures, self._slow)

    def totals(self, now: float) -> WindowTotals:
        self._advance(now)
        return WindowTotals(self.calls, self._failures, self._slow)

    def clear(self) -> None:
        self._ring_calls = [0] * self._n
        self._ring_failures = [0] * self._n
        self._ring_slow = [0] * self._n
        self._head = None
        self.calls = 0
        self._failures = 0
        self._slow = 0

    def _advance(self, now: float) -> int:
        """Drop the buckets that aged out by ``now``; return the ring slot of ``now``."""
        bucket = int(now // self._width)
        head = self._head
        n = self._n
        if head is None:
            self._head = bucket
        elif bucket > head:
            if bucket - head >= n:
                self.clear()
            else:
                for stale in range(head + 1, bucket + 1):
                    slot = stale % n
                    self.calls -= self._ring_calls[slot]
                    self._failures -= self._ring_failures[slot]
                    self._slow -= self._ring_slow[slot]
                    self._ring_calls[slot] = 0
                    self._ring_failures[slot] = 0
                    self._ring_slow[slot] = 0
            self._head = bucket
        else:
            # A clock that stepped back (it should not) files the call in the newest bucket.
            bucket = head
        return bucket % n
