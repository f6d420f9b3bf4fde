"""Sliding windows of call outcomes, kept as running sums so every call costs O(1).

A circuit breaker judges the callee on its *recent* calls: old failures from
before an incident was fixed must stop counting, and one bad minute must not
be diluted by a good week. Two ways to say "recent" are offered:

- :class:`CountWindow` -- the last ``size`` outcomes, in a ring buffer. Good
  when traffic is steady: the rate always covers the same number of calls.
- :class:`TimeWindow` -- the outcomes of the last ``seconds`` seconds, in
  buckets. Good when traffic is bursty: a quiet hour forgets old failures
  instead of keeping them until enough new calls push them out.

The bucketed time window itself is :class:`RollingCounters`, written once
and shared: the time window counts outcomes in it, and the retry budget
counts first attempts and retries.

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
    "RollingCounters",
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


class RollingCounters:
    """A few integer counters summed over a rolling window of equal time buckets.

    The one bucketed window behind :class:`TimeWindow` and the retry budget.
    Bucket ``k`` holds what was added while ``floor(now / bucket_seconds) == k``;
    the window is the newest bucket and the ``buckets - 1`` before it. When
    time moves on, the buckets that fell out are subtracted from ``totals``
    the next time :meth:`slot` is called, so adding and reading never scan the
    window, and a long idle period costs at most one pass over the buckets,
    once. Pure: ``now`` is passed in, and the owner holds any lock.
    """

    __slots__ = ("_head", "_n", "_rings", "_width", "totals")

    def __init__(self, buckets: int, bucket_seconds: float, fields: int) -> None:
        if buckets < 1 or fields < 1 or not (bucket_seconds > 0 and math.isfinite(bucket_seconds)):
            msg = (
                "rolling counters need buckets >= 1, fields >= 1 and a finite bucket width > 0; "
                f"got buckets={buckets!r}, bucket_seconds={bucket_seconds!r}, fields={fields!r}"
            )
            raise ValueError(msg)
        self._n = buckets
        self._width = float(bucket_seconds)
        self._rings = [[0] * buckets for _ in range(fields)]
        self._head: int | None = None
        self.totals = [0] * fields
        """The sum of each counter over the window, as of the last :meth:`slot` call."""

    def __repr__(self) -> str:
        return (
            f"RollingCounters(buckets={self._n}, bucket_seconds={self._width!r}, "
            f"totals={self.totals!r})"
        )

    def slot(self, now: float) -> int:
        """Drop the buckets that aged out by ``now``; return the ring slot to add to at ``now``."""
        bucket = math.floor(now / self._width)
        head = self._head
        n = self._n
        if head is None:
            self._head = bucket
        elif bucket > head:
            if bucket - head >= n:
                self.clear()
            else:
                totals = self.totals
                for field, ring in enumerate(self._rings):
                    for stale in range(head + 1, bucket + 1):
                        index = stale % n
                        totals[field] -= ring[index]
                        ring[index] = 0
            self._head = bucket
        else:
            # A clock that stepped back (it should not) files the call in the newest bucket.
            bucket = head
        return bucket % n

    def add(self, slot: int, field: int, amount: int = 1) -> None:
        """Add ``amount`` to counter ``field`` in ``slot`` (from :meth:`slot`) and to its total."""
        self._rings[field][slot] += amount
        self.totals[field] += amount

    def clear(self) -> None:
        """Forget everything; the next :meth:`slot` starts a fresh window."""
        for ring in self._rings:
            ring[:] = [0] * self._n
        self.totals[:] = [0] * len(self.totals)
        self._head = None


_CALLS, _FAILURES, _SLOW = 0, 1, 2


class TimeWindow:
    """The outcomes of the last ``seconds`` seconds, in equal buckets expired lazily.

    ``time_window_buckets(seconds)`` buckets of :class:`RollingCounters`
    counting calls, failures and slow calls.
    """

    __slots__ = ("_counters", "_n", "seconds")

    def __init__(self, seconds: float) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            msg = f"a time window needs a finite number of seconds > 0; got {seconds!r}"
            raise ValueError(msg)
        self.seconds = float(seconds)
        self._n = time_window_buckets(seconds)
        self._counters = RollingCounters(self._n, self.seconds / self._n, 3)

    def __repr__(self) -> str:
        calls, failures, slow = self._counters.totals
        return (
            f"TimeWindow(seconds={self.seconds!r}, buckets={self._n}, "
            f"calls={calls}, failures={failures}, slow={slow})"
        )

    def record(self, outcome: int, now: float) -> WindowTotals:
        counters = self._counters
        slot = counters.slot(now)
        counters.add(slot, _CALLS)
        if outcome & FAILURE:
            counters.add(slot, _FAILURES)
        if outcome & SLOW:
            counters.add(slot, _SLOW)
        calls, failures, slow = counters.totals
        return WindowTotals(calls, failures, slow)

    def totals(self, now: float) -> WindowTotals:
        counters = self._counters
        counters.slot(now)
        calls, failures, slow = counters.totals
        return WindowTotals(calls, failures, slow)

    def clear(self) -> None:
        self._counters.clear()
