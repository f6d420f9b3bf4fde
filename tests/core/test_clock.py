"""The fake clock is what every other test stands on, so it is tested first."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bastion import SYSTEM_CLOCK, Clock, SystemClock
from bastion.testing import FakeClock


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(FakeClock(), Clock)


def test_system_clock_reads_real_time() -> None:
    first = SYSTEM_CLOCK.monotonic()
    assert SYSTEM_CLOCK.monotonic() >= first
    assert SYSTEM_CLOCK.time() > 1_600_000_000
    assert repr(SystemClock()) == "SystemClock()"


async def test_system_clock_call_later_runs_on_the_loop() -> None:
    fired = asyncio.Event()
    SYSTEM_CLOCK.call_later(0, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    assert fired.is_set()


def test_system_clock_call_later_without_a_loop_uses_a_timer_thread() -> None:
    fired = threading.Event()
    handle = SYSTEM_CLOCK.call_later(0, fired.set)
    assert fired.wait(5)
    handle.cancel()


def test_fake_clock_moves_only_when_advanced() -> None:
    clock = FakeClock(start=10.0, wall=1000.0)
    assert clock.monotonic() == 10.0
    assert clock.time() == 1000.0
    clock.advance(2.5)
    assert clock.monotonic() == 12.5
    assert clock.time() == 1002.5


def test_fake_clock_refuses_to_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(-1)


async def test_sleep_waits_for_advance(clock: FakeClock) -> None:
    done: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(5)
        done.append(clock.monotonic())

    task = asyncio.create_task(sleeper())
    await clock.wait_for_sleepers(1)
    clock.advance(4.9)
    await asyncio.sleep(0)
    assert done == []
    clock.advance(0.1)
    await task
    assert done == [5.0]
    assert clock.sleeps == [5]


async def test_sleepers_wake_in_deadline_order(clock: FakeClock) -> None:
    order: list[int] = []

    async def sleeper(n: int, seconds: float) -> None:
        await clock.sleep(seconds)
        order.append(n)

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in ((1, 3), (2, 1), (3, 2))]
    await clock.wait_for_sleepers(3)
    for _ in range(3):
        clock.advance(1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [2, 3, 1]


async def test_cancelled_sleeper_leaves_no_trace(clock: FakeClock) -> None:
    task = asyncio.create_task(clock.sleep(10))
    await clock.wait_for_sleepers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending_sleepers == 0


async def test_auto_advance_returns_at_once_and_moves_time(auto_clock: FakeClock) -> None:
    await auto_clock.sleep(3)
    await auto_clock.sleep(0)
    auto_clock.sleep_sync(2)
    assert auto_clock.monotonic() == 5
    assert auto_clock.sleeps == [3, 0, 2]


def test_sync_sleep_waits_for_another_thread_to_advance(clock: FakeClock) -> None:
    woke = threading.Event()

    def sleeper() -> None:
        clock.sleep_sync(7)
        woke.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    while clock.pending_sleepers == 0:
        threading.Event().wait(0.001)
    clock.advance(6)
    assert not woke.wait(0.01)
    clock.advance(1)
    thread.join(5)
    assert woke.is_set()


async def test_advance_from_another_thread_wakes_async_sleepers(clock: FakeClock) -> None:
    task = asyncio.create_task(clock.sleep(1))
    await clock.wait_for_sleepers(1)
    await asyncio.to_thread(clock.advance, 1)
    await asyncio.wait_for(task, 5)
    assert task.done()


def test_call_later_fires_on_advance_and_can_be_cancelled(clock: FakeClock) -> None:
    fired: list[str] = []
    clock.call_later(2, lambda: fired.append("a"))
    cancelled = clock.call_later(1, lambda: fired.append("b"))
    cancelled.cancel()
    clock.advance(1.5)
    assert fired == []
    clock.advance(0.5)
    assert fired == ["a"]
    clock.call_later(0, lambda: fired.append("now"))
    assert fired == ["a", "now"]


async def test_wait_for_sleepers_reports_when_nobody_sleeps(clock: FakeClock) -> None:
    with pytest.raises(AssertionError, match="expected 1 sleeper"):
        await clock.wait_for_sleepers(1, max_yields=3)
