"""Stop taking work, finish what is running, then go.

A deploy or a scale-down sends SIGTERM; a run cut off mid-way has spent its
tokens for nothing and left its user without an answer. The gate in front of
every resilient agent counts the runs in flight, refuses new ones once a
shutdown starts (:class:`ShuttingDownError`, which a load balancer or the
caller can send elsewhere), waits up to a timeout for the rest, and then
cancels what is still running.

Runs of sync callables execute in threads, which Python cannot cancel: after
the timeout they are reported as ``abandoned`` and finish on their own.

On SIGTERM: with ``graceful_shutdown=True`` the first run on an event loop in
the main thread installs a SIGTERM handler on that loop -- only if nobody else
has claimed SIGTERM (the disposition is still the default), so a server such
as uvicorn that handles signals itself keeps doing so, and you call
``shutdown()`` from its lifespan instead. The handler drains every resilient
agent on that loop, then restores the default disposition and re-raises
SIGTERM, so the process ends exactly as it would have, only after the drain.
A second SIGTERM during the drain ends the process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ShuttingDownError
from bastion._core.events import EventBus, ShutdownStarted, default_bus

__all__ = ["DrainReport", "Drainable", "ShutdownGate", "watch_sigterm"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainReport:
    """How a shutdown went: runs that finished, were cancelled, or were left running in threads."""

    completed: int
    cancelled: int
    abandoned: int

    @property
    def clean(self) -> bool:
        return self.cancelled == 0 and self.abandoned == 0


class ShutdownGate:
    """Admits runs until closed, and knows which ones are still in flight."""

    def __init__(
        self, name: str, *, clock: Clock = SYSTEM_CLOCK, bus: EventBus | None = None
    ) -> None:
        self.name = name
        self._clock = clock
        self._bus = bus
        self._lock = threading.Lock()
        self._closed = False
        self._count = 0
        self._sync_count = 0
        self._tasks: dict[asyncio.Task[object], int] = {}
        self._idle: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        return self._count

    def enter(self) -> asyncio.Task[object] | None:
        """Admit one async run (raises :class:`ShuttingDownError` once closed)."""
        task = asyncio.current_task()
        with self._lock:
            if self._closed:
                raise ShuttingDownError(self.name)
            self._count += 1
            if task is not None:
                self._tasks[task] = self._tasks.get(task, 0) + 1
        return task

    def exit(self, task: asyncio.Task[object] | None) -> None:
        with self._lock:
            self._count -= 1
            if task is not None:
                left = self._tasks[task] - 1
                if left:
                    self._tasks[task] = left
                else:
                    del self._tasks[task]
            self._wake_if_idle()

    def enter_sync(self) -> None:
        """Admit one run in the calling thread."""
        with self._lock:
            if self._closed:
                raise ShuttingDownError(self.name)
            self._count += 1
            self._sync_count += 1

    def exit_sync(self) -> None:
        with self._lock:
            self._count -= 1
            self._sync_count -= 1
            self._wake_if_idle()

    def _wake_if_idle(self) -> None:
        idle = self._idle
        if self._closed and self._count == 0 and idle is not None and not idle.done():
            loop = idle.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_set_done, idle)

    async def drain(self, timeout: float, *, grace: float = 5.0) -> DrainReport:
        """Close the gate, wait up to ``timeout`` seconds for runs in flight, cancel the rest.

        Cancelled runs get ``grace`` more seconds to unwind (their ``finally``
        blocks run); any still going after that, and runs in threads, are
        reported as ``abandoned`` -- the drain itself never outlasts
        ``timeout + grace``.
        """
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        with self._lock:
            self._closed = True
            # A drain started from inside a run must not wait for itself.
            own = self._tasks.get(current, 0) if current is not None else 0
            initial = self._count - own
            if initial > 0 and self._idle is None:
                self._idle = loop.create_future()
            idle = self._idle
        (self._bus or default_bus()).emit(ShutdownStarted(source=self.name, in_flight=initial))
        if initial <= 0 or idle is None:
            return DrainReport(completed=0, cancelled=0, abandoned=0)
        if own or idle.get_loop() is not loop:
            idle = None  # cannot be awaited here; wait for the timeout below
        await self._wait_for(idle, timeout)
        with self._lock:
            victims = [t for t in self._tasks if t is not current and not t.done()]
            threads = self._sync_count
            left = self._count - own
        here = [t for t in victims if t.get_loop() is loop]
        for task in victims:
            if task in here:
                task.cancel()
            else:  # a run on another thread's loop: cancel it there, do not await it
                task.get_loop().call_soon_threadsafe(task.cancel)
        if here:
            await self._wait_for(asyncio.gather(*here, return_exceptions=True), grace)
        unfinished = sum(1 for t in here if not t.done())
        return DrainReport(
            completed=initial - left,
            cancelled=len(victims) - unfinished,
            abandoned=threads + unfinished,
        )

    async def _wait_for(self, future: asyncio.Future[Any] | None, seconds: float) -> None:
        """Wait until ``future`` is done or ``seconds`` pass on the clock, whichever is first."""
        waiter = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            pending = {waiter} if future is None else {waiter, future}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Drainable(Protocol):
    """What the SIGTERM handler needs from a resilient agent."""

    async def shutdown(self, timeout: float | None = ...) -> DrainReport: ...


class _SigtermDrainer:
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.agents: weakref.WeakSet[Drainable] = weakref.WeakSet()
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    def on_signal(self) -> None:
        if self.draining:
            self._die()
            return
        self.draining = True
        self._task = self.loop.create_task(self._drain_then_die())

    async def _drain_then_die(self) -> None:
        try:
            agents = list(self.agents)
            await asyncio.gather(
                *(agent.shutdown(self.timeout) for agent in agents),
                return_exceptions=True,
            )
        finally:
            self._die()

    def _die(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):
            self.loop.remove_signal_handler(signal.SIGTERM)
        _drainers.pop(self.loop, None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


_drainers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SigtermDrainer] = (
    weakref.WeakKeyDictionary()
)


def watch_sigterm(agent: Drainable, *, timeout: float) -> bool:
    """Drain ``agent`` when the process gets SIGTERM; False when that cannot be arranged here."""
    if threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    drainer = _drainers.get(loop)
    if drainer is None:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        drainer = _SigtermDrainer(loop, timeout)
        try:
            loop.add_signal_handler(signal.SIGTERM, drainer.on_signal)
        except (NotImplementedError, RuntimeError, ValueError):
            return False
        _drainers[loop] = drainer
    drainer.timeout = max(drainer.timeout, timeout)
    drainer.agents.add(agent)
    return True
