"""Stop waiting on a call that takes too long.

Async calls are cancelled where they wait: the running coroutine receives
``CancelledError`` at its current ``await`` (so its ``finally`` blocks and
context managers run), and the caller gets :class:`CallTimeoutError`. A
cancellation that comes from outside (the caller's own task being cancelled)
is never turned into a timeout.

Sync callables cannot be interrupted in Python. With a timeout they run in a
worker thread of a shared pool (64 threads, named ``bastion-timeout-N``); when
the timeout fires, the *caller* stops waiting and gets
:class:`CallTimeoutError` at once, while the thread runs the function to its
end in the background and its result or error is discarded. A function that
never returns keeps its thread busy for good, so give blocking I/O its own
socket timeout as well. Without a timeout (``None``) a sync callable runs in
the caller's thread, with no pool involved.

The expiry is scheduled on the injected clock, so a fake clock fires it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar, overload

from bastion._core.clock import SYSTEM_CLOCK, Clock, SystemClock
from bastion._core.errors import CallTimeoutError, ConfigurationError
from bastion._core.events import CallTimedOut, EventBus, default_bus

__all__ = ["Timeout", "call_with_timeout", "call_with_timeout_sync"]

P = ParamSpec("P")
T = TypeVar("T")

_POOL_SIZE = 64
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _sync_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="bastion-timeout")
    return _pool


def check_timeout(value: float | None, option: str) -> float | None:
    """Validate a timeout option, naming it in the error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        msg = f"{option} must be a number of seconds > 0, or None for no timeout; got {value!r}"
        raise ConfigurationError(msg)
    return float(value)


async def call_with_timeout(
    fn: Callable[[], Awaitable[T]],
    seconds: float | None,
    *,
    name: str,
    clock: Clock = SYSTEM_CLOCK,
    scope: str = "attempt",
    bus: EventBus | None = None,
) -> T:
    """Await ``fn()``; cancel it and raise :class:`CallTimeoutError` after ``seconds`` seconds."""
    if seconds is None:
        return await fn()
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - only outside a task, which asyncio itself forbids
        msg = "call_with_timeout must run inside an asyncio task"
        raise RuntimeError(msg)
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        if threading.get_ident() != loop_thread:
            loop.call_soon_threadsafe(expire)
            return
        if not task.done():
            expired = True
            task.cancel()

    handle = clock.call_later(seconds, expire)
    try:
        return await fn()
    except asyncio.CancelledError as exc:
        if expired and task.uncancel() <= cancelling:
            _emit_timeout(bus, name, seconds, scope)
            raise CallTimeoutError(name, timeout=seconds, scope=scope) from exc
        raise
    finally:
        handle.cancel()


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
    ctx = contextvars.copy_context()
    future: Future[T] = _sync_pool().submit(ctx.run, fn)
    if isinstance(clock, SystemClock):
        finished = _wait(future, seconds)
    else:
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        handle = clock.call_later(seconds, done.set)
        done.wait()
        handle.cancel()
        finished = future.done()
    if finished:
        return future.result()
    future.cancel()
    _emit_timeout(bus, name, seconds, scope)
    raise CallTimeoutError(name, timeout=seconds, scope=scope)


def _wait(future: Future[Any], timeout: float) -> bool:
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    return done.wait(timeout)


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
        checked = check_timeout(seconds, "Timeout(seconds)")
        assert checked is not None
        self.seconds = checked
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
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call_sync(fn, *args, **kwargs)

        return sync_wrapper
