"""A clock that only moves when a test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~bastion.Clock` whose time moves only through :meth:`advance`.

    Sleepers wait until ``advance`` carries the clock past their deadline, so a
    test decides exactly when a backoff ends or a breaker's cooldown expires.

    With ``auto_advance=True`` every sleep returns at once after moving the
    clock forward by its duration: handy when the test only cares about what
    was slept (see :attr:`sleeps`), not about interleaving. Two tasks sleeping
    at the same time then both move the clock, so elapsed time is the sum of
    their sleeps rather than the longest one.

    Safe to advance from another thread than the sleepers'.
    """

    def __init__(
        self,
        start: float = 0.0,
        *,
        wall: float = 1_750_000_000.0,
        auto_advance: bool = False,
    ) -> None:
        self._now = float(start)
        self._wall_offset = float(wall) - float(start)
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        """Every duration passed to ``sleep``/``sleep_sync``, in call order."""
        self._lock = threading.Condition()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._sync_sleepers = 0
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, auto_advance={self.auto_advance!r})"

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    @property
    def pending_sleepers(self) -> int:
        """How many sleeps (async and sync) are waiting for the clock to move."""
        with self._lock:
            live = sum(1 for _, _, fut in self._sleepers if not fut.done())
            return live + self._sync_sleepers

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            msg = f"a clock cannot go backwards: advance({seconds!r}) needs seconds >= 0"
            raise ValueError(msg)
        with self._lock:
            self._now += seconds
            due: list[asyncio.Future[None]] = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers)[2])
            timers: list[_FakeTimer] = []
            while self._timers and self._timers[0][0] <= self._now:
                timers.append(heapq.heappop(self._timers)[2])
            self._lock.notify_all()
        for timer in timers:
            timer.fire()
        for fut in due:
            _resolve(fut)

    def call_later(self, delay: float, callback: Callable[[], object]) -> _FakeTimer:
        """Schedule ``callback`` for when :meth:`advance` reaches ``now + delay``."""
        timer = _FakeTimer(callback)
        with self._lock:
            heapq.heappush(self._timers, (self._now + max(delay, 0.0), next(self._seq), timer))
        if delay <= 0:
            self.advance(0.0)
        return timer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if self.auto_advance:
            self.advance(seconds)
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
            with self._lock:
                self._sleepers = [s for s in self._sleepers if s[2] is not fut]
                heapq.heapify(self._sleepers)

    def sleep_sync(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            return
        if self.auto_advance:
            self.advance(seconds)
            return
        with self._lock:
            deadline = self._now + seconds
            self._sync_sleepers += 1
            try:
                while self._now < deadline:
                    self._lock.wait()
            finally:
                self._sync_sleepers -= 1

    async def wait_for_sleepers(self, count: int = 1, *, max_yields: int = 10_000) -> None:
        """Yield to the loop until at least ``count`` sleepers are waiting.

        Lets a test start a task, wait until it is parked in a sleep, then
        :meth:`advance` -- without any real waiting.
        """
        for _ in range(max_yields):
            if self.pending_sleepers >= count:
                return
            await asyncio.sleep(0)
        msg = (
            f"expected {count} sleeper(s), found {self.pending_sleepers} after {max_yields} yields"
        )
        raise AssertionError(msg)


class _FakeTimer:
    __slots__ = ("_callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback: Callable[[], object] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._callback = None

    def fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None and not self.cancelled:
            callback()


def _resolve(fut: asyncio.Future[None]) -> None:
    loop = fut.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        if not fut.done():
            fut.set_result(None)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_set_if_pending, fut)


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
