"""The fixed-window counter: the cheap rate-limit algorithm, for when its one flaw is acceptable.

Time is cut into windows ``[k * window, (k + 1) * window)``; each key counts
what it admitted in the current one, and the count restarts at zero when the
next window begins. It stores one number per limit per key instead of one
entry per call, so it is the cheapest to keep in a shared store.

Its flaw is the boundary: a caller can spend the whole limit at the end of one
window and again at the start of the next, so an interval of ``window``
seconds that straddles the boundary can hold up to twice the limit. Each fixed
window never holds more than the limit -- that is its promise, and the only
one. Choose it (``RateLimitConfig(algorithm="fixed")``) when a burst of twice
the limit across a boundary is harmless; keep the default sliding log when a
quota must hold in *every* interval.

Like the log, the per-key rule (:func:`decide_fixed`) is written once and used
by the in-process :class:`FixedWindowCounter` and by the SQL store; the Redis
store runs it as one Lua script. Pure: the caller passes ``now``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

from bastion.stores._window_log import (
    WindowDecision,
    check_costs,
    check_window_options,
    until,
)

__all__ = ["FixedWindowCounter", "WindowCount", "decide_fixed", "window_index"]

_SWEEP_EVERY = 1024


class WindowCount:
    """What one key admitted in its current window."""

    __slots__ = ("index", "sums")

    def __init__(self, width: int, index: int = -(2**62), sums: Sequence[float] = ()) -> None:
        self.index = index
        """Number of the window the sums belong to (``window_index(now, window)``)."""
        self.sums = list(sums) if sums else [0.0] * width
        """Weight admitted in that window, per limit."""


def window_index(now: float, window: float) -> int:
    """The number ``k`` of the window ``[k * window, (k + 1) * window)`` holding ``now``.

    Checked against the same products :func:`decide_fixed` computes the window
    end from, so a caller who waits exactly ``retry_after`` lands in the next
    window even when the division rounds the other way.
    """
    index = math.floor(now / window)
    if (index + 1) * window <= now:
        index += 1
    elif index * window > now:
        index -= 1
    return index


def decide_fixed(
    count: WindowCount,
    limits: tuple[float, ...],
    window: float,
    costs: Sequence[float],
    now: float,
) -> WindowDecision:
    """Admit ``costs`` into the current window of ``count`` (recording it), or refuse.

    The caller makes it atomic and has checked the costs. A refusal waits for
    the next window, when every limit starts from zero.
    """
    index = window_index(now, window)
    sums = count.sums
    if index != count.index:
        count.index = index
        sums = count.sums = [0.0] * len(limits)
    left = until((index + 1) * window, now)
    for i, cost in enumerate(costs):
        if sums[i] + cost > limits[i]:
            return WindowDecision(False, i, limits[i], limits[i] - sums[i], left, left, now)
    for i, cost in enumerate(costs):
        sums[i] += cost
    binding = 0
    if len(limits) > 1:
        share = 2.0
        for i, limit in enumerate(limits):
            free = (limit - sums[i]) / limit
            if free < share:
                binding, share = i, free
    limit = limits[binding]
    reset_after = left if sums[binding] > 0 else 0.0
    return WindowDecision(
        True, binding, limit, max(limit - sums[binding], 0.0), 0.0, reset_after, now
    )


class FixedWindowCounter:
    """In-memory, thread-safe fixed-window counter over one or more limits.

    Keys are kept in order of their latest admission; every 1024 decisions the
    ones whose window has passed are swept off the front, so memory follows the
    keys active in the current window.
    """

    __slots__ = ("_decisions", "_keys", "_limits", "_lock", "_names", "_window")

    def __init__(
        self,
        *,
        limits: Sequence[float],
        window: float,
        names: Sequence[str] | None = None,
    ) -> None:
        self._limits, self._window, self._names = check_window_options(
            "FixedWindowCounter", limits, window, names
        )
        self._keys: OrderedDict[str, WindowCount] = OrderedDict()
        self._lock = threading.Lock()
        self._decisions = 0

    def __repr__(self) -> str:
        return f"FixedWindowCounter(limits={self._limits!r}, window={self._window!r})"

    def __len__(self) -> int:
        """How many keys hold a count (for tests and metrics)."""
        return len(self._keys)

    @property
    def limits(self) -> tuple[float, ...]:
        return self._limits

    @property
    def window(self) -> float:
        return self._window

    def decide(self, key: str, costs: Sequence[float], now: float) -> WindowDecision:
        """Admit the call into the current window against every limit, or refuse it."""
        limits = self._limits
        check_costs(costs, limits, self._names, self._window)
        with self._lock:
            self._decisions += 1
            if self._decisions >= _SWEEP_EVERY:
                self._decisions = 0
                self._sweep(now)
            keys = self._keys
            count = keys.get(key)
            if count is None:
                count = keys[key] = WindowCount(len(limits))
            verdict = decide_fixed(count, limits, self._window, costs, now)
            if verdict.allowed:
                keys.move_to_end(key)
            return verdict

    def _sweep(self, now: float) -> None:
        current = window_index(now, self._window)
        keys = self._keys
        while keys:
            key, count = next(iter(keys.items()))
            if count.index >= current:
                return
            del keys[key]
