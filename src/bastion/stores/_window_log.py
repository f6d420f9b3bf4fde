"""The exact sliding-window log: the rate-limit algorithm every Python-side backend shares.

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
one cost per limit (its *weight*), and a call is admitted against all of them
or none.

The per-key rules (:func:`decide_in`) are written once and used twice: by
:class:`SlidingWindowLog`, the in-process log behind every
:class:`~bastion.resilience.RateLimiter` by default, and by the SQL store,
which loads one key's log inside a transaction, decides, and writes it back.
The Redis store runs the same rules as one Lua script. Everything here is pure:
it owns no clock and sleeps never; the caller passes ``now``.

This module lives in the state layer (not next to the limiter) so that the
memory store can use it without importing the resilience layer above it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from bastion._core.errors import ConfigurationError
from bastion._core.validate import invalid, positive_number

__all__ = [
    "KeyLog",
    "RateLimitBackend",
    "SlidingWindowLog",
    "WindowDecision",
    "check_costs",
    "check_window_options",
    "decide_in",
    "until",
]

_SWEEP_EVERY = 1024


class WindowDecision(NamedTuple):
    """The answer to "may this call go now?", in the deciding backend's own time.

    ``binding`` is the position of the *binding* limit: the one that refused (the one that
    frees up last when several refused), or the one with the smallest share
    left when the call was admitted. ``reset_after`` is how long until that
    limit holds no weight at all; ``retry_after`` is 0.0 when admitted, else the
    exact wait after which a call of the same cost fits. ``now`` is the time the
    backend decided at, on its own clock (monotonic seconds for the in-process
    log, epoch seconds for shared stores) -- what a test of "never more than the
    limit in any window" must measure admissions by.
    """

    allowed: bool
    binding: int
    limit: float
    remaining: float
    retry_after: float
    reset_after: float
    now: float = 0.0


class RateLimitBackend(Protocol):
    """An in-process log a :class:`~bastion.resilience.RateLimiter` asks synchronously.

    The caller passes its own clock's ``now``: right for one process, where the
    limiter's clock is the only clock. A log shared between processes answers
    :class:`bastion.stores.RateLimitStore` instead, which is async and keeps
    time itself. ``decide`` must be atomic: check every limit and record the
    call against all of them, or against none, as one step.
    """

    @property
    def limits(self) -> tuple[float, ...]:
        """The limits, in the order of the costs passed to :meth:`decide`."""
        ...

    @property
    def window(self) -> float:
        """Length of the window in seconds."""
        ...

    def decide(self, key: str, costs: Sequence[float], now: float) -> WindowDecision:
        """Admit a call costing ``costs[i]`` against ``limits[i]`` at time ``now``, or refuse."""
        ...


class KeyLog:
    """Admitted calls of one key still inside the window, oldest first."""

    __slots__ = ("entries", "last", "sums")

    def __init__(self, width: int) -> None:
        self.entries: deque[tuple[float, tuple[float, ...]]] = deque()
        """(expires_at, costs) of every admitted call with weight in the window."""
        self.sums = [0.0] * width
        """Running sum of the costs still in the window, per limit."""
        self.last = [-math.inf] * width
        """Expiry of the newest entry with weight > 0, per limit."""

    @classmethod
    def of(cls, width: int, entries: Sequence[tuple[float, Sequence[float]]]) -> KeyLog:
        """A log rebuilt from stored ``(expires_at, costs)`` pairs, oldest first."""
        log = cls(width)
        sums, last = log.sums, log.last
        for expires_at, costs in entries:
            log.entries.append((expires_at, tuple(costs)))
            for i, cost in enumerate(costs):
                if cost:
                    sums[i] += cost
                    last[i] = expires_at
        return log

    def expire(self, now: float) -> bool:
        """Drop the entries that have left the window; True when none is left.

        An emptied log restarts from exact zero sums, so the rounding of float
        costs cannot build up over time.
        """
        entries = self.entries
        if not entries:
            return True
        if entries[0][0] > now:
            return False
        sums = self.sums
        while entries and entries[0][0] <= now:
            _, costs = entries.popleft()
            for i, cost in enumerate(costs):
                sums[i] -= cost
        if entries:
            return False
        width = len(sums)
        self.sums = [0.0] * width
        self.last = [-math.inf] * width
        return True

    def record(self, costs: Sequence[float], expires_at: float) -> None:
        """Add an admitted call; a call costing nothing leaves no trace."""
        if any(costs):
            self.entries.append((expires_at, tuple(costs)))
            sums, last = self.sums, self.last
            for i, cost in enumerate(costs):
                if cost:
                    sums[i] += cost
                    last[i] = expires_at

    def admitted(self, limits: tuple[float, ...], now: float) -> WindowDecision:
        """The decision reporting an admission (after :meth:`record`)."""
        sums = self.sums
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
            until(self.last[index], now),
            now,
        )

    def refused(
        self, limits: tuple[float, ...], costs: Sequence[float], now: float
    ) -> WindowDecision:
        """The decision refusing ``costs``, with the exact wait until it fits."""
        sums = self.sums
        index, wait = 0, -1.0
        for i, cost in enumerate(costs):
            excess = sums[i] + cost - limits[i]
            if excess > 0:
                needed = self._wait_for(i, excess, now)
                if needed > wait:
                    index, wait = i, needed
        limit = limits[index]
        return WindowDecision(
            False,
            index,
            limit,
            max(limit - sums[index], 0.0),
            wait,
            until(self.last[index], now),
            now,
        )

    def _wait_for(self, i: int, excess: float, now: float) -> float:
        """Seconds until enough of the oldest weight on limit ``i`` leaves the window."""
        freed = 0.0
        for expires_at, costs in self.entries:
            freed += costs[i]
            if freed >= excess:
                return until(expires_at, now)
        return until(self.last[i], now)


def decide_in(
    log: KeyLog, limits: tuple[float, ...], window: float, costs: Sequence[float], now: float
) -> WindowDecision:
    """Expire, then admit ``costs`` into ``log`` (recording it) or refuse (recording nothing).

    The whole per-key rule; the caller makes it atomic (a lock, a transaction)
    and has checked the costs with :func:`check_costs`.
    """
    log.expire(now)
    sums = log.sums
    for i, cost in enumerate(costs):
        if sums[i] + cost > limits[i]:
            return log.refused(limits, costs, now)
    log.record(costs, now + window)
    return log.admitted(limits, now)


def check_costs(
    costs: Sequence[float], limits: tuple[float, ...], names: tuple[str, ...], window: float
) -> None:
    """Raise :class:`ConfigurationError` for costs that could never be admitted.

    A negative cost, one that is not a number, or one larger than its limit
    could never be admitted, so waiting for it would be a lie.
    """
    if len(costs) != len(limits):
        msg = f"decide() needs one cost per limit ({len(limits)}); got {len(costs)}"
        raise ConfigurationError(msg)
    for i, cost in enumerate(costs):
        if not 0.0 <= cost <= limits[i]:
            name, limit = names[i], limits[i]
            if cost != cost or cost < 0:
                msg = f"a call's cost against {name} must be a number >= 0; got {cost!r}"
            else:
                msg = (
                    f"a call costing {cost:g} can never fit {name}={limit:g} per {window:g}s, "
                    f"however long it waits; raise {name} or split the call"
                )
            raise ConfigurationError(msg)


class SlidingWindowLog:
    """In-memory, thread-safe sliding-window log over one or more limits.

    Idle keys cost nothing: a key whose log empties is dropped when next seen,
    and since keys are kept in order of their newest admission, every 1024
    decisions the ones whose whole log has expired are swept off the front (in
    time proportional to what is dropped). Memory follows the keys active
    within one window.
    """

    __slots__ = ("_decisions", "_empty", "_keys", "_limits", "_lock", "_names", "_window")

    def __init__(
        self,
        *,
        limits: Sequence[float],
        window: float,
        names: Sequence[str] | None = None,
    ) -> None:
        self._limits, self._window, self._names = check_window_options(
            "SlidingWindowLog", limits, window, names
        )
        self._keys: OrderedDict[str, KeyLog] = OrderedDict()
        self._empty = KeyLog(len(self._limits))  # stands in for unknown keys; never written
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
        number, or larger than its limit (see :func:`check_costs`).
        """
        limits = self._limits
        if len(costs) != len(limits):
            check_costs(costs, limits, self._names, self._window)
        for i, cost in enumerate(costs):
            if not 0.0 <= cost <= limits[i]:
                check_costs(costs, limits, self._names, self._window)
        with self._lock:
            self._decisions += 1
            if self._decisions >= _SWEEP_EVERY:
                self._decisions = 0
                self._sweep(now)
            keys = self._keys
            log = keys.get(key)
            if log is None:
                if not any(costs):
                    return self._empty.admitted(limits, now)
                log = keys[key] = KeyLog(len(limits))
            elif log.expire(now):
                # A fresh log after an idle window: drop it so the sweep order stays true.
                del keys[key]
                if not any(costs):
                    return self._empty.admitted(limits, now)
                log = keys[key] = KeyLog(len(limits))
            sums = log.sums
            for i, cost in enumerate(costs):
                if sums[i] + cost > limits[i]:
                    return log.refused(limits, costs, now)
            if any(costs):
                log.record(costs, now + self._window)
                keys.move_to_end(key)
            return log.admitted(limits, now)

    def _sweep(self, now: float) -> None:
        keys = self._keys
        while keys:
            key, log = next(iter(keys.items()))
            if log.entries and log.entries[-1][0] > now:
                return
            del keys[key]


def check_window_options(
    owner: str, limits: Sequence[float], window: float, names: Sequence[str] | None
) -> tuple[tuple[float, ...], float, tuple[str, ...]]:
    """Validate and normalise the options every window algorithm takes."""
    if not limits:
        invalid(f"{owner}.limits", "a sequence of at least one limit", limits)
    for i, limit in enumerate(limits):
        positive_number(limit, f"{owner}.limits[{i}]")
    positive_number(window, f"{owner}.window", unit="seconds")
    if names is not None and len(names) != len(limits):
        invalid(f"{owner}.names", f"one name for each of the {len(limits)} limit(s)", names)
    return (
        tuple(float(limit) for limit in limits),
        float(window),
        tuple(names) if names is not None else tuple(f"limits[{i}]" for i in range(len(limits))),
    )


def until(deadline: float, now: float) -> float:
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
