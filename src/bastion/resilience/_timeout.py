"""Stop waiting on a call that takes too long.

Async calls are cancelled where they wait: the running coroutine receives
``CancelledError`` at its current ``await`` (so its ``finally`` blocks and
context managers run), and the caller gets :class:`CallTimeoutError`. A
cancellation that comes from outside (the caller's own task being cancelled)
is never turned into a timeout.

Sync callables cannot be interrupted in Python. With a timeout each call runs
in a short-lived worker thread of its own (a daemon thread named
``bastion-<name>``); when the timeout fires, the *caller* stops waiting and
gets :class:`CallTimeoutError` at once, while the thread runs the function to
its end in the background and its result or error is discarded. A thread per
call costs tens of microseconds -- nothing next to a model call -- and means a
hung callee can never starve the others of workers, as a shared pool would.
Give blocking I/O its own socket timeout as well, or a hung call keeps its
thread. Without a timeout (``None``) a sync callable runs in the caller's
thread.

The expiry is scheduled on the injected clock, so a fake clock fires it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from bastion._core.clock import SYSTEM_CLOCK, Cancellable, Clock, SystemClock
from bastion._core.errors import CallTimeoutError
from bastion._core.events import CallTimedOut, EventBus, default_bus
from bastion._core.validate import optional_positive_number, positive_number
from bastion.resilience._invoke import decorate
from bastion.resilience._threads import start_in_thread

__all__ = ["Timeout", "call_with_timeout", "call_with_timeout_sync"]

P = ParamSpec("P")
T = TypeVar("T")


def check_timeout(value: float | None, option: str) -> float | None:
    """Validate a timeout option, naming it in the error."""
    return optional_positive_number(value, option, unit="seconds", none="for no timeout")


async def call_with_timeout(
    fn: Callable[[], Awaitable[T]],
    seconds: float | None,
    *,
    name: str,
    clock: Clock = SYSTEM_CLOCK,
    scope: str = "attempt",
    bus: EventBus | None = None,
    task: asyncio.Task[Any] | None = None,
) -> T:
    """Await ``fn()``; cancel it and raise :class:`CallTimeoutError` after ``seconds`` seconds.

    ``task`` is the current task when the caller already has it (saves a lookup).
    """
    if seconds is None:
        return await fn()
    if task is None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio itself forbids awaiting outside a task
            msg = "call_with_timeout must run inside an asyncio task"
            raise RuntimeError(msg)
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        if not task.done():
            expired = True
            task.cancel()

    if type(clock) is SystemClock:
        handle: Cancellable = task.get_loop().call_later(seconds, expire)
    else:
        handle = clock.call_later(seconds, _on_loop(task.get_loop(), expire))
    try:
        return await fn()
    except asyncio.CancelledError as exc:
        if expired and task.uncancel() <= cancelling:
            _emit_timeout(bus, name, seconds, scope)
            raise CallTimeoutError(name, timeout=seconds, scope=scope) from exc
        raise
    finally:
        handle.cancel()


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[[], None]:
    """``callback`` made safe to fire from any thread (a fake clock may advance from another)."""
    owner = threading.get_ident()

    def fire() -> None:
        if threading.get_ident() == owner:
            callback()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(callback)

    return fire


def call_with_timeout_sync(
    fn: Callable[[], T],
    seconds: float | None,
    *,
    name: str,
    clock: Clock = SYSTEM_CLOCK,
    scope: str = "attempt",
    bus: EventBus | None = None,
) -> T:
    """Run ``fn()`` in a worker thread and stop waiting for it after ``seconds`` seconds."""
    if seconds is None:
        return fn()
    future = start_in_thread(fn, name=name)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    if type(clock) is SystemClock:
        finished = done.wait(seconds)
    else:
        handle = clock.call_later(seconds, done.set)
        done.wait()
        handle.cancel()
        finished = future.done()
    if finished:
        return future.result()
    _emit_timeout(bus, name, seconds, scope)
    raise CallTimeoutError(name, timeout=seconds, scope=scope, cancelled=False)


def _emit_timeout(bus: EventBus | None, name: str, timeout: float, scope: str) -> None:
    (bus or default_bus()).emit(CallTimedOut(source=name, timeout=timeout, scope=scope))


class Timeout:
    """A reusable time limit for calls; also a decorator for sync and async functions.

    >>> limit = Timeout(2.5, name="search")
    >>> @limit
    ... async def search(q: str) -> list[str]: ...
    """

    __slots__ = ("_bus", "clock", "name", "scope", "seconds")

    def __init__(
        self,
        seconds: float,
        *,
        name: str = "timeout",
        scope: str = "attempt",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        self.seconds = positive_number(seconds, "Timeout.seconds", unit="seconds")
        self.name = name
        self.scope = scope
        self.clock = clock
        self._bus = bus

    def __repr__(self) -> str:
        return f"Timeout({self.seconds!r}, name={self.name!r})"

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` within the limit."""
        return await call_with_timeout(
            functools.partial(fn, *args, **kwargs),
            self.seconds,
            name=self.name,
            clock=self.clock,
            scope=self.scope,
            bus=self._bus,
        )

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker thread and wait at most the limit."""
        return call_with_timeout_sync(
            functools.partial(fn, *args, **kwargs),
            self.seconds,
            name=self.name,
            clock=self.clock,
            scope=self.scope,
            bus=self._bus,
        )

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        return decorate(fn, self.call, self.call_sync)
