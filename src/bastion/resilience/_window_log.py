"""The exact sliding-window log behind :class:`~bastion.resilience._ratelimit.RateLimiter`.

Why a log and not a token bucket or GCRA: a bucket refills continuously, so a
caller who waits for a full bucket and then bursts gets up to twice the limit
inside one window (the burst plus the refill during the window). A provider
quota or a per-tenant promise of "60 per minute" is broken by that. The log
keeps every admitted call of the last ``window`` seconds and admits a new one
only when the weight already inside the window plus its cost stays within the
limit, so no interval of length ``window`` -- whatever its start -- ever holds
more than the limit. The price is memory proportional to the calls inside one
window, which for rate limits worth having is small.

A call admitted at ``s`` counts until ``s + window``; at that instant it has
left every window that contains the present. Several limits (requests and
tokens) share one log per key because they share the window: an entry carries
one cost per limit, and a call is admitted against all of them or none.

This module is pure: it owns no clock, sleeps never and knows nothing of
asyncio. The caller passes ``now`` (monotonic seconds). That is the seam for
other stores: a Redis or SQL backend answers the same :meth:`decide` question
atomically on the server, and the :class:`RateLimiter` shell does not change.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from bastion._core.errors import ConfigurationError
from bastion._core.validate import invalid, positive_number

__all__ = ["RateLimitBackend", "SlidingWindowLog", "WindowDecision"]

_SWEEP_EVERY = 1024


class WindowDecision(NamedTuple):
    """The answer to "may this call go now?", in the log's own (monotonic) time.

    ``binding`` is the position of the *binding* limit: the one that refused (the one that
    frees up last when several refused), or the one with the smallest share
    left when the call was admitted. ``reset_after`` is how long until that
    limit holds no weight at all; ``retry_after`` is 0.0 when admitted, else the
    exact wait after which a call of the same cost fits.
    """

    allowed: bool
    binding: int
    limit: float
    remaining: float
    retry_after: float
    reset_after: float


class RateLimitBackend(Protocol):
    """What a :class:`RateLimiter` needs from a store of admitted calls.

    ``decide`` must be atomic: check every limit and record the call against
    all of them, or against none, as one step -- whatever other threads or
    processes do at the same time.
    """

    @property
    def limits(self) -> tuple[float, ...]:
        """The limits, in the order of the costs passed to :meth:`decide`."""
        ...

    @property
    def window(self) -> float:
        """Length of the sliding window in seconds."""
        ...

    def decide(self, key: str, costs: Sequence[float], now: float) -> WindowDecision:
        """Admit a call costing ``costs[i]`` against ``limits[i]`` at time ``now``, or refuse."""
        ...


class _KeyLog:
    """Admitted calls of one key still inside the window, oldest first."""

    __slots__ = ("entries", "last", "sums")

    def __init__(self, width: int) -> None:
        self.entries: deque[tuple[float, tuple[float, ...]]] = deque()
        """(expires_at, costs) of every admitted call with weight in the window."""
        self.sums = [0.0] * width
        """Running sum of the costs still in the window, per limit."""
        self.last = [-math.inf] * width
        """Expiry of the newest entry with weight > 0, per limit."""


class SlidingWindowLog:
    """In-memory, thread-safe sliding-window log over one or more limits.

    Idle keys cost nothing: a key whose log empties is dropped when next seen,
    and since keys are kept in order of their newest admission, every 1024
    decisions the ones whose whole log has expired are swept off the front (in
    time proportional to what is dropped). Memory follows the keys active
    within one window.

    A fresh log after an idle window also starts from exact zero sums, so the
    rounding of float costs cannot build up over time.
    """

    __slots__ = ("_decisions", "_empty", "_keys", "_limits", "_lock", "_names", "_window")

    def __init__(
        self,
        *,
        limits: Sequence[float],
        window: float,
        names: Sequence[str] | None = None,
    ) -> None:
        if not limits:
            invalid("SlidingWindowLog.limits", "a sequence of at least one limit", limits)
        for i, limit in enumerate(limits):
            positive_number(limit, f"SlidingWindowLog.limits[{i}]")
        positive_number(window, "SlidingWindowLog.window", unit="seconds")
        if names is not None and len(names) != len(limits):
            invalid(
                "SlidingWindowLog.names", f"one name for each of the {len(limits)} limit(s)", names
            )
        self._limits = tuple(float(limit) for limit in limits)
        self._window = float(window)
        self._names = (
            tuple(names) if names is not None else tuple(f"limits[{i}]" for i in range(len(limits)))
        )
        self._keys: OrderedDict[str, _KeyLog] = OrderedDict()
        self._empty = _KeyLog(len(self._limits))  # stands in for unknown keys; never written
        self._lock = threading.Lock()
        self._decisions = 0

    def __repr__(self) -> str:
        return f"SlidingWindowLog(limits={self._limits!r}, window={self._window!r})"

    def __len__(self) -> int:
        """How many keys currently hold admitted calls (for tests and metrics)."""
        return len(self._keys)

    @property
    def limits(self) -> tuple[float, ...]:
        return self._limits

    @property
    def window(self) -> float:
        return self._window

    def decide(self, key: str, costs: Sequence[float], now: float) -> WindowDecision:
        """Admit the call and record it against every limit, or refuse it and record nothing.

        Raises :class:`ConfigurationError` when a cost is negative, not a
        number, or larger than its limit: such a call could never be admitted,
        so waiting for it would be a lie.
        """
        limits = self._limits
        if len(costs) != len(limits):
            msg = f"decide() needs one cost per limit ({len(limits)}); got {len(costs)}"
            raise ConfigurationError(msg)
        for i, cost in enumerate(costs):
            if not 0.0 <= cost <= limits[i]:
                raise self._bad_cost(i, cost)
        with self._lock:
            self._decisions += 1
            if self._decisions >= _SWEEP_EVERY:
                self._decisions = 0
                self._sweep(now)
            log = self._keys.get(key)
            if log is None:
                return self._admit_fresh(key, costs, now)
            if self._expire(log, now):
                del self._keys[key]
                return self._admit_fresh(key, costs, now)
            sums = log.sums
            for i, cost in enumerate(costs):
                if sums[i] + cost > limits[i]:
                    return self._refuse(log, costs, now)
            return self._admit(key, log, costs, now)

    def _admit_fresh(self, key: str, costs: Sequence[float], now: float) -> WindowDecision:
        if any(costs):
            log = self._keys[key] = _KeyLog(len(self._limits))
            return self._admit(key, log, costs, now)
        return self._admitted(self._empty, now)

    def _admit(self, key: str, log: _KeyLog, costs: Sequence[float], now: float) -> WindowDecision:
        if any(costs):
            expires_at = now + self._window
            log.entries.append((expires_at, tuple(costs)))
            sums, last = log.sums, log.last
            for i, cost in enumerate(costs):
                if cost:
                    sums[i] += cost
                    last[i] = expires_at
            self._keys.move_to_end(key)
        return self._admitted(log, now)

    def _admitted(self, log: _KeyLog, now: float) -> WindowDecision:
        limits, sums = self._limits, log.sums
        index = 0
        if len(limits) > 1:
            share = 2.0
            for i, limit in enumerate(limits):
                left = (limit - sums[i]) / limit
                if left < share:
                    index, share = i, left
        limit = limits[index]
        return WindowDecision(
            True,
            index,
            limit,
            max(limit - sums[index], 0.0),
            0.0,
            _until(log.last[index], now),
        )

    def _refuse(self, log: _KeyLog, costs: Sequence[float], now: float) -> WindowDecision:
        limits, sums = self._limits, log.sums
        index, wait = 0, -1.0
        for i, cost in enumerate(costs):
            excess = sums[i] + cost - limits[i]
            if excess > 0:
                needed = self._wait_for(log, i, excess, now)
                if needed > wait:
                    index, wait = i, needed
        limit = limits[index]
        return WindowDecision(
            False,
            index,
            limit,
            max(limit - sums[index], 0.0),
            wait,
            _until(log.last[index], now),
        )

    def _wait_for(self, log: _KeyLog, i: int, excess: float, now: float) -> float:
        """Seconds until enough of the oldest weight on limit ``i`` leaves the window."""
        freed = 0.0
        for expires_at, costs in log.entries:
            freed += costs[i]
            if freed >= excess:
                return _until(expires_at, now)
        return _until(log.last[i], now)

    def _expire(self, log: _KeyLog, now: float) -> bool:
        """Drop the entries that have left the window; True when none is left."""
        entries = log.entries
        if entries[0][0] > now:
            return False
        sums = log.sums
        while entries and entries[0][0] <= now:
            _, costs = entries.popleft()
            for i, cost in enumerate(costs):
                sums[i] -= cost
        return not entries

    def _sweep(self, now: float) -> None:
        keys = self._keys
        while keys:
            key, log = next(iter(keys.items()))
            if log.entries and log.entries[-1][0] > now:
                return
            del keys[key]

    def _bad_cost(self, i: int, cost: float) -> ConfigurationError:
        name, limit, window = self._names[i], self._limits[i], self._window
        if cost != cost or cost < 0:
            msg = f"a call's cost against {name} must be a number >= 0; got {cost!r}"
        else:
            msg = (
                f"a call costing {cost:g} can never fit {name}={limit:g} per {window:g}s, "
                f"however long it waits; raise {name} or split the call"
            )
        return ConfigurationError(msg)


def _until(deadline: float, now: float) -> float:
    """Seconds from ``now`` to ``deadline`` such that ``now + result >= deadline`` holds in floats.

    A clock advanced by exactly the returned amount must reach the deadline;
    plain subtraction can fall one rounding step short and leave a caller
    waiting again for a sliver of time.
    """
    if deadline <= now:
        return 0.0
    wait = deadline - now
    while now + wait < deadline:
        wait = math.nextafter(wait, math.inf)
    return wait
