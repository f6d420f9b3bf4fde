"""Calling whatever the user hands us: an agent, a coroutine function, or a plain function.

``with_resilience`` and ``Fallback`` accept "any object with a ``run(input,
**kwargs)`` method (sync or async) or any callable". This module turns each of
those into one shape -- a function of ``(*args, **kwargs)`` that returns an
awaitable -- once, when the wrapper is built, so the per-call path never asks
again what kind of thing it is calling.

Sync work called from async code runs in a worker thread of its own (see
the threads module), so a blocking agent never stalls the loop and never
waits for a worker behind hung calls; the caller's context variables go with
it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from bastion._core.errors import ConfigurationError
from bastion.resilience._threads import start_in_thread

__all__ = ["Target", "describe", "is_async_callable", "resolve_target"]


class Target:
    """One resolved callee: how to call it from async code, and from sync code if it is sync."""

    __slots__ = ("fn", "is_async", "name")

    def __init__(self, fn: Callable[..., Any], *, is_async: bool, name: str) -> None:
        self.fn = fn
        self.is_async = is_async
        self.name = name

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        return f"<Target {self.name!r} ({kind})>"

    def bind_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Awaitable[Any]]:
        """A zero-argument function that starts one call and returns its awaitable."""
        fn = self.fn
        if self.is_async:
            return functools.partial(fn, *args, **kwargs)
        return functools.partial(_in_executor, functools.partial(fn, *args, **kwargs))

    def bind_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Any]:
        """A zero-argument function that makes one blocking call."""
        if self.is_async:
            msg = (
                f"{self.name!r} is async and cannot be called from the sync API; "
                "use `await ....run(...)` instead of `run_sync`, or wrap a sync callable"
            )
            raise ConfigurationError(msg)
        return functools.partial(self.fn, *args, **kwargs)


async def _in_executor(call: Callable[[], Any]) -> Any:
    result = await asyncio.wrap_future(start_in_thread(call, name="run"))
    if inspect.isawaitable(result):
        return await result
    return result


def describe(target: object) -> str:
    """A short human name for an agent or callable, for health reports and events."""
    name = getattr(target, "name", None)
    if isinstance(name, str) and name:
        return name
    own = getattr(target, "__name__", None)
    if isinstance(own, str) and own:
        return own
    return type(target).__name__


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine: an ``async def`` function, or an object
    whose class defines ``async def __call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - we want the class's __call__
    return call is not None and inspect.iscoroutinefunction(call)


def resolve_target(target: object, *, name: str | None = None) -> Target:
    """Decide once how ``target`` is called; refuse things that cannot be called at all."""
    if isinstance(target, type):
        msg = (
            f"cannot wrap the class {target.__name__}: pass an instance, "
            f"e.g. with_resilience({target.__name__}(...))"
        )
        raise ConfigurationError(msg)
    run = getattr(target, "run", None)
    if run is not None and callable(run) and not inspect.isfunction(target):
        return Target(run, is_async=is_async_callable(run), name=name or describe(target))
    if callable(target):
        return Target(target, is_async=is_async_callable(target), name=name or describe(target))
    msg = (
        f"cannot wrap {target!r}: pass an object with a run(input, **kwargs) method "
        "(sync or async) or a callable"
    )
    raise ConfigurationError(msg)


def decorate(
    fn: Callable[..., Any],
    call: Callable[..., Awaitable[Any]],
    call_sync: Callable[..., Any],
) -> Callable[..., Any]:
    """Wrap ``fn`` with a primitive's ``call``/``call_sync``, keeping it async or sync as it was.

    Every primitive's decorator form is this one function, so they all tell
    async from sync the same way (including objects with ``async def __call__``).
    """
    if is_async_callable(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await call(fn, *args, **kwargs)

        return async_wrapper

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        return call_sync(fn, *args, **kwargs)

    return sync_wrapper
