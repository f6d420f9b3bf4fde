"""Timeouts cancel async work, abandon sync work, and never swallow an outer cancel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from bastion import CallTimedOut, CallTimeoutError, ConfigurationError, Event, EventBus, Timeout
from bastion.resilience._timeout import call_with_timeout, call_with_timeout_sync
from bastion.testing import FakeClock


async def test_slow_call_is_cancelled_and_reported(clock: FakeClock, bus: EventBus) -> None:
    events: list[Event] = []
    bus.subscribe(events.append, CallTimedOut)
    cleaned_up = asyncio.Event()

    async def slow() -> str:
        try:
            await clock.sleep(100)
        finally:
            cleaned_up.set()
        return "late"

    task = asyncio.create_task(call_with_timeout(slow, 5, name="llm", clock=clock, bus=bus))
    await clock.wait_for_sleepers(1)
    clock.advance(5)
    with pytest.raises(CallTimeoutError) as info:
        await task
    assert info.value.timeout == 5
    assert info.value.scope == "attempt"
    assert cleaned_up.is_set()
    assert events == [CallTimedOut(source="llm", timeout=5, scope="attempt")]


async def test_fast_call_returns_and_its_timer_is_cancelled(clock: FakeClock) -> None:
    async def fast() -> str:
        return "ok"

    assert await call_with_timeout(fast, 5, name="x", clock=clock) == "ok"
    clock.advance(10)  # the cancelled timer must not fire into a later await
    await asyncio.sleep(0)
    assert await call_with_timeout(fast, None, name="x", clock=clock) == "ok"


async def test_outer_cancellation_is_not_turned_into_a_timeout(clock: FakeClock) -> None:
    async def slow() -> None:
        await clock.sleep(100)

    task = asyncio.create_task(call_with_timeout(slow, 50, name="x", clock=clock))
    await clock.wait_for_sleepers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_errors_inside_pass_through(clock: FakeClock) -> None:
    async def broken() -> None:
        raise KeyError("inner")

    with pytest.raises(KeyError):
        await call_with_timeout(broken, 5, name="x", clock=clock)


async def test_real_clock_timeout() -> None:
    limit = Timeout(0.01, name="real")
    with pytest.raises(CallTimeoutError):
        await limit.call(asyncio.sleep, 5)
    assert await limit.call(asyncio.sleep, 0, "done") == "done"


def test_sync_call_in_worker_is_abandoned_on_timeout(clock: FakeClock) -> None:
    release = threading.Event()
    finished = threading.Event()

    def blocking() -> str:
        release.wait(5)
        finished.set()
        return "late"

    result: list[BaseException] = []

    def caller() -> None:
        try:
            call_with_timeout_sync(blocking, 3, name="sync", clock=clock)
        except CallTimeoutError as exc:
            result.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    threading.Event().wait(0.01)
    clock.advance(3)
    thread.join(5)
    assert isinstance(result[0], CallTimeoutError)
    assert not finished.is_set()  # the worker still runs: Python cannot stop it
    release.set()
    assert finished.wait(5)


def test_sync_call_that_finishes_returns_its_value_and_errors(clock: FakeClock) -> None:
    assert call_with_timeout_sync(lambda: 42, 3, name="sync", clock=clock) == 42
    assert call_with_timeout_sync(lambda: 7, None, name="sync", clock=clock) == 7

    def broken() -> None:
        raise LookupError("inner")

    with pytest.raises(LookupError):
        call_with_timeout_sync(broken, 3, name="sync", clock=clock)


def test_sync_real_clock_timeout() -> None:
    gate = threading.Event()
    with pytest.raises(CallTimeoutError):
        Timeout(0.01).call_sync(gate.wait, 5)
    gate.set()


async def test_decorator_keeps_async_and_sync(clock: FakeClock) -> None:
    limit = Timeout(1, clock=clock, name="deco")

    @limit
    async def async_fn(x: int) -> int:
        return x + 1

    @limit
    def sync_fn(x: int) -> int:
        return x * 2

    assert asyncio.iscoroutinefunction(async_fn)
    assert await async_fn(1) == 2
    assert sync_fn(4) == 8
    assert repr(limit) == "Timeout(1.0, name='deco')"


async def test_an_object_with_an_async_call_is_cancelled_not_abandoned(clock: FakeClock) -> None:
    class Provider:
        async def __call__(self) -> None:
            await clock.sleep(10)

    limited = Timeout(1, clock=clock, name="provider")(Provider())
    assert asyncio.iscoroutinefunction(limited)
    task = asyncio.create_task(limited())
    await clock.wait_for_sleepers(1)
    clock.advance(1)
    with pytest.raises(CallTimeoutError) as info:
        await task
    assert (info.value.name, info.value.timeout) == ("provider", 1)


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("nan"), float("inf"), None])
def test_invalid_timeouts_are_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="seconds > 0"):
        Timeout(bad)  # type: ignore[arg-type]


async def test_timeout_fired_from_another_thread(clock: FakeClock) -> None:
    async def slow() -> None:
        await asyncio.sleep(10)

    call: Callable[[], Awaitable[None]] = slow
    task = asyncio.create_task(call_with_timeout(call, 1, name="x", clock=clock))
    await asyncio.sleep(0)
    await asyncio.to_thread(clock.advance, 1)
    with pytest.raises(CallTimeoutError):
        await asyncio.wait_for(task, 5)
