"""Cap how many calls run at once, so one slow dependency cannot take every worker.

When a provider slows down, calls to it pile up; without a cap they hold every
connection, thread and task the process has, and calls to healthy
dependencies starve too. A bulkhead gives each dependency a fixed number of
slots. A call that finds them busy may wait in a short FIFO queue (bounded by
``max_queued`` and ``max_wait``); past that it is refused at once with
:class:`BulkheadFullError`, which is cheap and tells the caller to shed load.

One bulkhead serves asyncio tasks and threads at the same time: its state is
guarded by a ``threading.Lock`` and a freed slot is handed directly to the
oldest waiter, whichever kind it is (an asyncio future woken on its own loop,
or a thread's event), so a newcomer can never overtake the queue. The slot
changes hands under the lock: a waiter that is cancelled or times out at the
very moment it receives a slot passes it on, so slots are never lost.

Acquiring a free slot never suspends and costs one lock round trip. The
``max_wait`` timer is scheduled on the injected clock only when a call has to
queue.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from bastion._core.clock import SYSTEM_CLOCK, Clock, SystemClock
from bastion._core.errors import BulkheadFullError
from bastion._core.events import CallRejected, EventBus, default_bus
from bastion._core.validate import awaitable_returned, instance_of, positive_number, whole_number
from bastion.resilience._invoke import decorate

__all__ = ["Bulkhead", "BulkheadConfig"]

P = ParamSpec("P")
T = TypeVar("T")

_WAITING = 0
_GRANTED = 1
_GAVE_UP = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadConfig:
    """How many calls may run at once, and how many may wait, for how long."""

    max_concurrent: int = 10
    max_queued: int = 0
    max_wait: float = 5.0

    def __post_init__(self) -> None:
        whole_number(self.max_concurrent, "BulkheadConfig.max_concurrent")
        whole_number(
            self.max_queued,
            "BulkheadConfig.max_queued",
            minimum=0,
            hint="0 refuses at once when every slot is busy",
        )
        positive_number(
            self.max_wait,
            "BulkheadConfig.max_wait",
            unit="seconds",
            hint="use max_queued=0 to refuse at once instead of waiting",
        )


class _Waiter:
    """One queued call. ``state`` moves once, under the bulkhead's lock, away from _WAITING."""

    __slots__ = ("event", "future", "loop", "state", "thread")

    def __init__(
        self,
        *,
        future: asyncio.Future[bool] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        event: threading.Event | None = None,
    ) -> None:
        self.future = future
        self.loop = loop
        self.event = event
        self.thread = threading.get_ident()
        self.state = _WAITING

    def wake(self, granted: bool) -> bool:
        """Tell the waiter its fate; False when it can no longer hear it (its loop closed)."""
        if self.event is not None:
            self.event.set()
            return True
        future, loop = self.future, self.loop
        assert future is not None
        assert loop is not None
        if threading.get_ident() == self.thread and _running_loop() is loop:
            _settle(future, granted)
            return True
        try:
            loop.call_soon_threadsafe(_settle, future, granted)
        except RuntimeError:
            return False
        return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(future: asyncio.Future[bool], granted: bool) -> None:
    if not future.done():
        future.set_result(granted)


class _SyncSlot:
    """``with bulkhead.sync_slot():`` -- holds one slot for the block, from a thread."""

    __slots__ = ("_bulkhead",)

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead

    def __enter__(self) -> None:
        self._bulkhead.acquire_sync()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bulkhead.release()


class Bulkhead:
    """At most ``max_concurrent`` calls in flight; up to ``max_queued`` more wait, FIFO.

    >>> pool = Bulkhead(BulkheadConfig(max_concurrent=4, max_queued=16), name="llm")
    >>> @pool
    ... async def complete(prompt: str) -> str: ...
    """

    __slots__ = (
        "_bus",
        "_in_flight",
        "_lock",
        "_max_concurrent",
        "_max_queued",
        "_sync_slot",
        "_waiters",
        "clock",
        "config",
        "name",
    )

    def __init__(
        self,
        config: BulkheadConfig | None = None,
        *,
        name: str = "bulkhead",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        self.config = instance_of(config, BulkheadConfig, "Bulkhead.config")
        self.name = name
        self.clock = clock
        self._bus = bus
        self._max_concurrent = self.config.max_concurrent
        self._max_queued = self.config.max_queued
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._sync_slot = _SyncSlot(self)

    def __repr__(self) -> str:
        return (
            f"Bulkhead(name={self.name!r}, max_concurrent={self._max_concurrent}, "
            f"in_flight={self._in_flight}, queued={len(self._waiters)})"
        )

    @property
    def in_flight(self) -> int:
        """Slots taken now, including ones handed to a waiter that has not resumed yet."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot; queue for one when all are busy, or raise :class:`BulkheadFullError`."""
        with self._lock:
            if self._in_flight < self._max_concurrent and not self._waiters:
                self._in_flight += 1
                return
            waiter = None
            if len(self._waiters) < self._max_queued:
                loop = asyncio.get_running_loop()
                waiter = _Waiter(future=loop.create_future(), loop=loop)
                self._waiters.append(waiter)
        if waiter is None:
            raise self._rejected("queue_full")
        await self._wait_async(waiter)

    def acquire_sync(self) -> None:
        """Take a slot from a thread; block in the queue when all are busy, or raise."""
        with self._lock:
            if self._in_flight < self._max_concurrent and not self._waiters:
                self._in_flight += 1
                return
            waiter = None
            if len(self._waiters) < self._max_queued:
                waiter = _Waiter(event=threading.Event())
                self._waiters.append(waiter)
        if waiter is None:
            raise self._rejected("queue_full")
        self._wait_sync(waiter)

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if there is one, else to the pool."""
        while True:
            with self._lock:
                if self._waiters:
                    waiter = self._waiters.popleft()
                    waiter.state = _GRANTED
                else:
                    if self._in_flight <= 0:
                        msg = (
                            f"bulkhead {self.name!r} released more slots than were acquired; "
                            "pair every release() with one acquire()"
                        )
                        raise RuntimeError(msg)
                    self._in_flight -= 1
                    return
            if waiter.wake(True):
                return
            # The waiter's event loop is gone, so it will never run: the slot is still ours
            # to hand on, and the waiter must not give it back again if it is ever closed.
            with self._lock:
                waiter.state = _GAVE_UP

    def sync_slot(self) -> _SyncSlot:
        """A context manager holding one slot, for threads: ``with bulkhead.sync_slot(): ...``."""
        return self._sync_slot

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` while holding a slot."""
        await self.acquire()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.release()

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` while holding a slot."""
        self.acquire_sync()
        try:
            result = fn(*args, **kwargs)
        finally:
            self.release()
        if hasattr(result, "__await__"):
            raise awaitable_returned(
                result, "Bulkhead.call_sync", instead="await bulkhead.call(...)"
            )
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        return decorate(fn, self.call, self.call_sync)

    async def _wait_async(self, waiter: _Waiter) -> None:
        future = waiter.future
        assert future is not None
        timer = self.clock.call_later(self.config.max_wait, functools.partial(self._expire, waiter))
        try:
            granted = await future
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            timer.cancel()
        if not granted:
            raise self._rejected("max_wait")

    def _wait_sync(self, waiter: _Waiter) -> None:
        event = waiter.event
        assert event is not None
        try:
            if isinstance(self.clock, SystemClock):
                # A real timeout needs no timer thread, and works in a thread that runs a loop.
                if not event.wait(self.config.max_wait):
                    self._expire(waiter)
            else:
                timer = self.clock.call_later(
                    self.config.max_wait, functools.partial(self._expire, waiter)
                )
                try:
                    event.wait()
                finally:
                    timer.cancel()
        except BaseException:
            self._abandon(waiter)
            raise
        if waiter.state != _GRANTED:
            raise self._rejected("max_wait")

    def _expire(self, waiter: _Waiter) -> None:
        """The waiter's ``max_wait`` ran out: take it off the queue unless it got a slot."""
        with self._lock:
            if waiter.state != _WAITING:
                return
            waiter.state = _GAVE_UP
            self._waiters.remove(waiter)
        waiter.wake(False)

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiter stopped waiting (cancelled): leave the queue, or pass on a slot it got."""
        with self._lock:
            granted = waiter.state == _GRANTED
            if waiter.state == _WAITING:
                waiter.state = _GAVE_UP
                self._waiters.remove(waiter)
        if granted:
            self.release()

    def _rejected(self, reason: str) -> BulkheadFullError:
        bus = self._bus if self._bus is not None else default_bus()
        bus.emit(CallRejected(source=self.name, reason="bulkhead_full"))
        return BulkheadFullError(
            self.name,
            max_concurrent=self._max_concurrent,
            max_queued=self._max_queued,
            reason=reason,
        )
