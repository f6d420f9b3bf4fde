"""The shutdown gate: refuse new runs, let running ones finish, cancel stragglers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bastion import Event, EventBus, ShutdownStarted, ShuttingDownError
from bastion.resilience._shutdown import ShutdownGate
from bastion.testing import FakeClock


async def run_through(gate: ShutdownGate, work: asyncio.Future[str]) -> str:
    task = gate.enter()
    try:
        return await work
    finally:
        gate.exit(task)


async def test_drain_waits_for_runs_in_flight(clock: FakeClock, bus: EventBus) -> None:
    events: list[Event] = []
    bus.subscribe(events.append, ShutdownStarted)
    gate = ShutdownGate("agent", clock=clock, bus=bus)
    loop = asyncio.get_running_loop()
    work = [loop.create_future() for _ in range(3)]
    runs = [asyncio.create_task(run_through(gate, w)) for w in work]
    await asyncio.sleep(0)
    assert gate.in_flight == 3
    drain = asyncio.create_task(gate.drain(30))
    await asyncio.sleep(0)
    assert gate.closed
    with pytest.raises(ShuttingDownError):
        gate.enter()
    for w in work:
        w.set_result("done")
    report = await drain
    assert [await r for r in runs] == ["done"] * 3
    assert (report.completed, report.cancelled, report.abandoned) == (3, 0, 0)
    assert report.clean
    assert events == [ShutdownStarted(source="agent", in_flight=3)]


async def test_stragglers_are_cancelled_after_the_timeout(clock: FakeClock) -> None:
    gate = ShutdownGate("agent", clock=clock)
    loop = asyncio.get_running_loop()
    quick, stuck = loop.create_future(), loop.create_future()
    runs = [asyncio.create_task(run_through(gate, w)) for w in (quick, stuck)]
    await asyncio.sleep(0)
    drain = asyncio.create_task(gate.drain(10))
    quick.set_result("ok")
    await clock.wait_for_sleepers(1)
    clock.advance(10)
    report = await drain
    assert (report.completed, report.cancelled) == (1, 1)
    assert not report.clean
    assert await runs[0] == "ok"
    with pytest.raises(asyncio.CancelledError):
        await runs[1]
    assert gate.in_flight == 0


async def test_drain_with_nothing_in_flight_returns_at_once(clock: FakeClock) -> None:
    report = await ShutdownGate("a", clock=clock).drain(10)
    assert (report.completed, report.cancelled, report.abandoned) == (0, 0, 0)


async def test_sync_runs_are_waited_for_then_reported_abandoned(clock: FakeClock) -> None:
    gate = ShutdownGate("agent", clock=clock)
    release = threading.Event()
    entered = threading.Event()

    def worker() -> None:
        gate.enter_sync()
        entered.set()
        release.wait(5)
        gate.exit_sync()

    thread = threading.Thread(target=worker)
    thread.start()
    entered.wait(5)
    drain = asyncio.create_task(gate.drain(5))
    await clock.wait_for_sleepers(1)
    clock.advance(5)
    report = await drain
    assert report.abandoned == 1
    with pytest.raises(ShuttingDownError):
        gate.enter_sync()
    release.set()
    thread.join(5)
    assert gate.in_flight == 0


async def test_sync_run_finishing_wakes_the_drain(clock: FakeClock) -> None:
    gate = ShutdownGate("agent", clock=clock)
    gate.enter_sync()
    drain = asyncio.create_task(gate.drain(60))
    await clock.wait_for_sleepers(1)
    await asyncio.to_thread(gate.exit_sync)
    report = await asyncio.wait_for(drain, 5)
    assert (report.completed, report.abandoned) == (1, 0)


async def test_drain_from_inside_a_run_does_not_wait_for_itself(clock: FakeClock) -> None:
    gate = ShutdownGate("agent", clock=clock)
    task = gate.enter()
    report = await gate.drain(5)
    gate.exit(task)
    assert (report.completed, report.cancelled) == (0, 0)


async def test_drain_never_outlasts_timeout_plus_grace(clock: FakeClock) -> None:
    gate = ShutdownGate("agent", clock=clock)
    unwound = asyncio.Event()

    async def stubborn() -> None:
        task = gate.enter()
        try:
            await asyncio.Event().wait()
        finally:
            try:
                await clock.sleep(100)  # cleanup that takes far longer than the grace
            finally:
                unwound.set()
                gate.exit(task)

    run = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    drain = asyncio.create_task(gate.drain(1, grace=2))
    await clock.wait_for_sleepers(1)
    clock.advance(1)  # the timeout: the run is cancelled and starts its long cleanup
    await clock.wait_for_sleepers(2)
    clock.advance(2)  # the grace runs out
    report = await drain
    assert (report.completed, report.cancelled, report.abandoned) == (0, 0, 1)
    clock.advance(100)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 5)
    assert unwound.is_set()
