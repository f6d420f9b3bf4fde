"""The bulkhead: a cap on calls in flight, a bounded FIFO queue, shared by tasks and threads."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import threading
from typing import Any

import pytest

from bastion import (
    SYSTEM_CLOCK,
    Bulkhead,
    BulkheadConfig,
    BulkheadFullError,
    CallRejected,
    ConfigurationError,
    EventBus,
)
from bastion.testing import FakeClock


def bulkhead(clock: FakeClock, bus: EventBus | None = None, **options: Any) -> Bulkhead:
    return Bulkhead(BulkheadConfig(**options), name="bh", clock=clock, bus=bus)


class Gauge:
    """Counts calls inside a section from any thread and remembers the peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.total = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


async def queue_up(bh: Bulkhead, count: int) -> asyncio.Task[None]:
    """Start an acquire and return once it sits in the queue."""
    task = asyncio.create_task(bh.acquire())
    for _ in range(100):
        if bh.queued >= count:
            return task
        await asyncio.sleep(0)
    raise AssertionError(f"expected {count} waiter(s), found {bh.queued}")


def wait_until(condition: Any) -> None:
    """Spin (yielding the CPU, never sleeping) until another thread makes ``condition()`` true."""
    for _ in range(10_000_000):
        if condition():
            return
        os.sched_yield()
    raise AssertionError("condition never became true")


# --- the cap --------------------------------------------------------------------------------------


async def test_hundreds_of_tasks_never_exceed_max_concurrent(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=7, max_queued=500)
    gauge = Gauge()

    async def work() -> None:
        async with bh:
            gauge.enter()
            for _ in range(3):
                await asyncio.sleep(0)
            gauge.leave()

    await asyncio.gather(*(work() for _ in range(300)))
    assert gauge.total == 300
    assert gauge.peak == 7
    assert (bh.in_flight, bh.queued) == (0, 0)


def test_eight_threads_never_exceed_max_concurrent(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=3, max_queued=8)
    gauge = Gauge()
    start = threading.Barrier(8)

    def work() -> None:
        gauge.enter()
        sum(range(200))
        gauge.leave()

    def worker() -> None:
        start.wait()
        for _ in range(200):
            bh.call_sync(work)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gauge.total == 1600
    assert 1 <= gauge.peak <= 3
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_free_slots_are_taken_without_suspending(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=2)
    first = bh.acquire()
    with pytest.raises(StopIteration):
        first.send(None)  # finished on the first step: no await on the fast path
    await bh.acquire()
    assert bh.in_flight == 2
    bh.release()
    bh.release()
    assert bh.in_flight == 0


# --- queueing -------------------------------------------------------------------------------------


async def test_waiters_get_slots_in_fifo_order(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=10)
    await bh.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with bh:
            order.append(n)

    tasks = []
    for n in range(6):
        tasks.append(asyncio.create_task(waiter(n)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert bh.queued == n + 1
    bh.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_a_newcomer_does_not_overtake_the_queue(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=2)
    await bh.acquire()
    queued = await queue_up(bh, 1)
    bh.release()  # the slot goes to the waiter, even before it has run again
    assert bh.in_flight == 1
    late = await queue_up(bh, 1)
    await queued
    assert bh.queued == 1
    bh.release()
    await late
    assert bh.in_flight == 1


async def test_full_queue_rejects_at_once(clock: FakeClock, bus: EventBus) -> None:
    seen: list[CallRejected] = []
    bus.subscribe(seen.append, CallRejected)
    bh = bulkhead(clock, bus, max_concurrent=1, max_queued=1)
    await bh.acquire()
    waiting = await queue_up(bh, 1)
    with pytest.raises(BulkheadFullError) as info:
        await bh.acquire()
    err = info.value
    assert (err.name, err.max_concurrent, err.max_queued, err.reason) == ("bh", 1, 1, "queue_full")
    assert err.http_status == 503
    assert seen == [CallRejected(source="bh", reason="bulkhead_full")]
    assert clock.sleeps == []
    bh.release()
    await waiting
    bh.release()
    assert bh.in_flight == 0


def test_no_queue_means_immediate_rejection_for_threads_too(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1)
    with bh.sync_slot():
        with pytest.raises(BulkheadFullError, match="queue_full"):
            bh.acquire_sync()
        assert bh.in_flight == 1
    assert bh.in_flight == 0


async def test_max_wait_expires_on_the_injected_clock(clock: FakeClock, bus: EventBus) -> None:
    seen: list[CallRejected] = []
    bus.subscribe(seen.append, CallRejected)
    bh = bulkhead(clock, bus, max_concurrent=1, max_queued=3, max_wait=5)
    await bh.acquire()
    waiting = await queue_up(bh, 1)
    clock.advance(4.9)
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.advance(0.1)
    with pytest.raises(BulkheadFullError) as info:
        await waiting
    assert info.value.reason == "max_wait"
    assert seen == [CallRejected(source="bh", reason="bulkhead_full")]
    assert (bh.in_flight, bh.queued) == (1, 0)
    bh.release()
    assert bh.in_flight == 0


def test_max_wait_expires_for_a_blocked_thread(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=1, max_wait=2)
    bh.acquire_sync()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            bh.acquire_sync()
        except BulkheadFullError as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    wait_until(lambda: bh.queued == 1)

    def advanced_until_done() -> bool:  # the timer is armed just after queueing: keep moving
        clock.advance(2)
        return not thread.is_alive()

    wait_until(advanced_until_done)
    thread.join()
    assert [getattr(e, "reason", None) for e in errors] == ["max_wait"]
    assert (bh.in_flight, bh.queued) == (1, 0)


async def test_a_slot_given_as_max_wait_ends_is_kept(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=1, max_wait=5)
    await bh.acquire()
    waiting = await queue_up(bh, 1)
    bh.release()  # granted first ...
    clock.advance(5)  # ... so the timer firing in the same instant changes nothing
    await waiting
    assert (bh.in_flight, bh.queued) == (1, 0)


# --- cancellation -------------------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_the_queue(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=2)
    await bh.acquire()
    waiting = await queue_up(bh, 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (bh.in_flight, bh.queued) == (1, 0)
    bh.release()
    assert bh.in_flight == 0
    clock.advance(10)  # its timer was cancelled too: nothing fires
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on(
    clock: FakeClock,
) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=2)
    await bh.acquire()
    doomed = await queue_up(bh, 1)
    next_in_line = await queue_up(bh, 2)
    bh.release()  # the slot goes to `doomed` ...
    doomed.cancel()  # ... which is cancelled before it could run again
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await next_in_line
    assert (bh.in_flight, bh.queued) == (1, 0)
    bh.release()
    assert bh.in_flight == 0


async def test_a_slot_handed_to_the_last_cancelled_waiter_returns_to_the_pool(
    clock: FakeClock,
) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=1)
    await bh.acquire()
    doomed = await queue_up(bh, 1)
    bh.release()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert (bh.in_flight, bh.queued) == (0, 0)
    await bh.acquire()
    assert bh.in_flight == 1


async def test_release_from_another_thread_wakes_the_loop(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=1)
    await bh.acquire()
    waiting = await queue_up(bh, 1)
    await asyncio.to_thread(bh.release)
    await waiting
    assert bh.in_flight == 1


async def test_a_waiter_whose_loop_is_gone_is_skipped(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=2)
    await bh.acquire()

    def orphan() -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, _context: None)  # "task destroyed" is expected
        task = loop.create_task(bh.acquire())
        loop.run_until_complete(asyncio.sleep(0))  # queued, then the loop goes away
        loop.close()
        assert not task.done()

    await asyncio.to_thread(orphan)
    survivor = await queue_up(bh, 2)
    bh.release()
    await survivor
    assert (bh.in_flight, bh.queued) == (1, 0)
    gc.collect()  # the orphan's coroutine is closed now: it must not hand back a slot
    assert (bh.in_flight, bh.queued) == (1, 0)


# --- tasks and threads together -------------------------------------------------------------------


async def test_sync_and_async_callers_share_slots_in_order(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1, max_queued=2)
    await bh.acquire()
    got_slot = threading.Event()
    may_release = threading.Event()

    def thread_caller() -> None:
        with bh.sync_slot():
            got_slot.set()
            may_release.wait()

    thread = asyncio.create_task(asyncio.to_thread(thread_caller))
    await asyncio.to_thread(wait_until, lambda: bh.queued == 1)
    bh.release()  # from the loop to the blocked thread
    assert await asyncio.to_thread(got_slot.wait, 30)
    task_waiter = await queue_up(bh, 1)
    may_release.set()  # the thread's release wakes the task on this loop
    await thread
    await task_waiter
    assert (bh.in_flight, bh.queued) == (1, 0)
    bh.release()


async def test_mixed_threads_and_tasks_never_exceed_the_cap(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=3, max_queued=200)
    gauge = Gauge()

    def sync_work() -> None:
        gauge.enter()
        sum(range(100))
        gauge.leave()

    def thread_worker() -> None:
        for _ in range(100):
            bh.call_sync(sync_work)

    async def async_work() -> None:
        gauge.enter()
        await asyncio.sleep(0)
        gauge.leave()

    await asyncio.gather(
        *(asyncio.to_thread(thread_worker) for _ in range(4)),
        *(bh.call(async_work) for _ in range(150)),
    )
    assert gauge.total == 550
    assert gauge.peak <= 3
    assert (bh.in_flight, bh.queued) == (0, 0)


async def test_the_real_clock_arms_and_disarms_the_max_wait_timer() -> None:
    bh = Bulkhead(BulkheadConfig(max_concurrent=1, max_queued=2, max_wait=30), clock=SYSTEM_CLOCK)
    await bh.acquire()
    task_waiter = await queue_up(bh, 1)
    bh.release()
    await task_waiter  # granted long before its 30 s timer
    got_slot = threading.Event()

    def thread_caller() -> None:
        bh.acquire_sync()
        got_slot.set()

    thread = asyncio.create_task(asyncio.to_thread(thread_caller))
    await asyncio.to_thread(wait_until, lambda: bh.queued == 1)
    bh.release()
    await thread
    assert got_slot.is_set()
    assert (bh.in_flight, bh.queued) == (1, 0)


# --- call, decorator, context managers ------------------------------------------------------------


async def test_decorator_keeps_async_functions_async(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1)

    @bh
    async def echo(x: int) -> int:
        assert bh.in_flight == 1
        return x

    assert await echo(3) == 3
    assert echo.__name__ == "echo"
    assert bh.in_flight == 0


def test_decorator_keeps_sync_functions_sync(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1)

    @bh
    def fail() -> None:
        assert bh.in_flight == 1
        raise KeyError("boom")

    with pytest.raises(KeyError):
        fail()
    assert bh.in_flight == 0
    assert bh.call_sync(len, "abc") == 3


async def test_an_object_with_an_async_call_holds_its_slot_until_it_finishes(
    clock: FakeClock,
) -> None:
    bh = bulkhead(clock, max_concurrent=1)
    inside: list[int] = []

    class Provider:
        async def __call__(self, prompt: str) -> str:
            inside.append(bh.in_flight)
            return prompt.upper()

    complete = bh(Provider())
    assert await complete("hi") == "HI"
    assert inside == [1]
    assert bh.in_flight == 0


def test_call_sync_refuses_a_function_that_returns_a_coroutine(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1)

    async def fetch() -> str:
        return "never awaited"

    with pytest.raises(ConfigurationError, match=r"returned an awaitable.*await bulkhead\.call"):
        bh.call_sync(fetch)
    assert bh.in_flight == 0


@pytest.mark.parametrize("config", [4, {"max_concurrent": 4}])
def test_a_config_of_the_wrong_type_is_refused(config: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"Bulkhead\.config must be a BulkheadConfig"):
        Bulkhead(config)


async def test_call_releases_on_error(clock: FakeClock) -> None:
    bh = bulkhead(clock, max_concurrent=1)

    async def boom() -> None:
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        await bh.call(boom)
    assert bh.in_flight == 0


def test_releasing_more_than_acquired_is_an_error(clock: FakeClock) -> None:
    bh = bulkhead(clock)
    with pytest.raises(RuntimeError, match="released more slots"):
        bh.release()
    assert "in_flight=0" in repr(bh)


# --- validation -----------------------------------------------------------------------------------


def test_defaults() -> None:
    config = BulkheadConfig()
    assert (config.max_concurrent, config.max_queued, config.max_wait) == (10, 0, 5.0)
    assert Bulkhead().config == config


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 2.5}, "max_concurrent"),
        ({"max_concurrent": True}, "max_concurrent"),
        ({"max_queued": -1}, "max_queued"),
        ({"max_queued": None}, "max_queued"),
        ({"max_wait": 0}, "max_wait"),
        ({"max_wait": -2}, "max_wait"),
        ({"max_wait": math.inf}, "max_wait"),
        ({"max_wait": math.nan}, "max_wait"),
        ({"max_wait": "5"}, "max_wait"),
    ],
)
def test_every_option_is_validated(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigurationError, match=option) as info:
        BulkheadConfig(**options)
    assert isinstance(info.value, ValueError)
