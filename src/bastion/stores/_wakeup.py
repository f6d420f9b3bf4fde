"""Wake the tasks waiting on a key when something about it changes, from any thread.

A store that learns of a change -- a decision written in this process, a
PostgreSQL notification, a Redis message -- calls :meth:`Notifier.notify`
with the key; every task that entered :meth:`Notifier.watch` for that key
wakes. Waiters register *before* they read the state they wait on, so a
change that lands between the read and the wait is never missed.

A wake-up only says "look again": it may be spurious (a notification for a
key in another schema, a change that was not a decision), and a lost one is
covered by the waiter's own timeout. That keeps the delivery side simple --
no acknowledgements, no queue -- and correctness on the reader's re-read.

Waiters may live on different event loops (a store shared by threads), so
a wake-up is handed to the waiter's own loop thread-safely. Timeouts run on
the caller's clock, so tests drive them with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

from bastion._core.clock import Clock

__all__ = ["Notifier", "Wakeup"]


class Wakeup:
    """One waiter's wake-up: fired by a notification, awaited with a timeout."""

    __slots__ = ("_event", "_loop", "_refresh")

    def __init__(self, refresh: Callable[[float], Awaitable[None]] | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._refresh = refresh

    def fire(self) -> None:
        """Wake the waiter (safe from any thread; harmless once its loop is closed)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float, *, clock: Clock) -> bool:
        """Wait until fired or ``timeout`` seconds pass on ``clock``; whether it was fired.

        A fire that came before this call counts: it is consumed here.
        """
        if self._refresh is not None:
            started = clock.monotonic()
            await self._refresh(timeout)  # re-subscribe after a lost channel, within the wait
            timeout -= clock.monotonic() - started
        event = self._event
        if not event.is_set() and timeout > 0:
            fired = asyncio.ensure_future(event.wait())
            slept = asyncio.ensure_future(clock.sleep(timeout))
            try:
                await asyncio.wait((fired, slept), return_when=asyncio.FIRST_COMPLETED)
            finally:
                fired.cancel()
                slept.cancel()
        woke = event.is_set()
        event.clear()
        return woke


class Notifier:
    """The waiters of one store (shared by its scoped views), by full key."""

    __slots__ = ("_lock", "_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Wakeup]] = {}

    @contextlib.asynccontextmanager
    async def watch(
        self, key: str, *, refresh: Callable[[float], Awaitable[None]] | None = None
    ) -> AsyncIterator[Wakeup]:
        """A wake-up for ``key`` while the block runs; ``refresh(timeout)`` runs before each
        wait, and must take no longer than the wait's ``timeout``."""
        wakeup = Wakeup(refresh)
        with self._lock:
            self._waiters.setdefault(key, set()).add(wakeup)
        try:
            yield wakeup
        finally:
            with self._lock:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(wakeup)
                    if not waiters:
                        del self._waiters[key]

    def notify(self, key: str) -> None:
        """Wake every waiter of ``key`` (none: nothing happens)."""
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for wakeup in waiters:
            wakeup.fire()

    def watched(self) -> int:
        """How many waiters are registered (for tests and health)."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())
