"""Time as a dependency.

Every primitive that waits or measures takes a ``clock=``. Production code uses
:data:`SYSTEM_CLOCK`; tests pass :class:`bastion.testing.FakeClock` so that a
30-second breaker cooldown or a five-attempt backoff runs in microseconds and
gives the same answer every time.

``monotonic()`` measures durations and deadlines (it never jumps); ``time()`` is
wall-clock seconds since the epoch and is used only where a calendar matters
(HTTP dates in ``Retry-After``, day and month boundaries of budgets).
"""

from __future__ import annotations

import asyncio
import threading
import time as _time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Cancellable", "Clock", "SystemClock"]


class Cancellable(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """What a primitive needs from time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the current task for ``seconds``."""
        ...

    def sleep_sync(self, seconds: float) -> None:
        """Block the current thread for ``seconds`` (used by the sync shells only)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        """Run ``callback()`` once ``delay`` seconds have passed on this clock.

        Timeouts are built on this, so a fake clock can fire them. Inside a
        running event loop the callback runs on that loop's thread.
        """
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and real sleeps."""

    __slots__ = ()

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def sleep_sync(self, seconds: float) -> None:
        _time.sleep(max(seconds, 0.0))

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            timer = threading.Timer(max(delay, 0.0), callback)
            timer.daemon = True
            timer.start()
            return timer
        return loop.call_later(max(delay, 0.0), callback)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
"""The process-wide real clock; the default of every ``clock=`` parameter."""
