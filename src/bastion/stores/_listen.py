"""Keep one subscription to a store's change channel open, reopening it when it is lost.

PostgreSQL ``LISTEN`` and Redis pub/sub differ in how a subscription is
opened and how one knows it still works, but not in what a store needs from
them: one per store, opened on the first wait, reopened by a later wait after
the server dropped it, tied to the event loop it runs on, and never a reason
for a wait to fail. That shared part is :class:`Listener`; each backend says
only how to open, check and drop its own kind.

Listening is an accelerator, never a dependency: when the subscription
cannot be opened, waiters still find a change on their next poll, so a
failure is logged once per outage rather than raised. Nor may it slow a wait
down during an outage: one waiter at a time tries to reopen (the others go on
polling), within what is left of its wait, and after a failure nobody tries
again before a backoff (1 s, doubling to 30 s) has passed.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import summarize
from bastion.stores._wakeup import Notifier, Wakeup

__all__ = ["Listener"]

_log = logging.getLogger("bastion.stores")


class Listener(abc.ABC):
    """One subscription to ``channel`` that forwards each changed key to ``notifier``."""

    __slots__ = (
        "_backoff",
        "_channel",
        "_clock",
        "_closed",
        "_failing",
        "_lock",
        "_lock_loop",
        "_notifier",
        "_retry_at",
        "_timeout",
    )

    backend = ""
    """The backend's name, for the log lines."""

    def __init__(
        self, *, channel: str, notifier: Notifier, timeout: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._channel = channel
        self._notifier = notifier
        self._timeout = timeout
        self._clock = clock
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._failing = False
        self._closed = False
        self._backoff = 0.0
        self._retry_at = float("-inf")

    @property
    def channel(self) -> str:
        """The channel changes are announced on."""
        return self._channel

    def listening(self) -> bool:
        """Whether the subscription is open on the running event loop."""
        return self._alive(asyncio.get_running_loop())

    async def ensure(self, budget: float | None = None) -> None:
        """Subscribe, unless already subscribed on this event loop; never raises.

        Returns at once when another waiter is already subscribing, when the
        backoff after a failure has not passed, or once the store is closed;
        otherwise takes at most ``budget`` seconds (and the listener's timeout).
        """
        loop = asyncio.get_running_loop()
        if self._closed or self._alive(loop) or self._clock.monotonic() < self._retry_at:
            return
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        if self._lock.locked():
            return  # someone is subscribing; this waiter polls meanwhile
        limit = self._timeout if budget is None else min(self._timeout, budget)
        if limit <= 0:
            return
        async with self._lock:
            if self._closed or self._alive(loop):
                return
            await self._drop()
            try:
                async with asyncio.timeout(limit):
                    await self._open()
            except BaseException as exc:
                await self._drop()  # never leave a half-open subscription behind
                if not isinstance(exc, Exception):
                    raise  # cancelled: the caller's business
                if isinstance(exc, TimeoutError) and limit < self._timeout:
                    return  # the waiter ran out of time, not the server: no verdict
                self._backoff = min(max(2 * self._backoff, 1.0), 30.0)
                self._retry_at = self._clock.monotonic() + self._backoff
                if not self._failing:
                    _log.warning(
                        "%s: cannot subscribe to %s (%s); waiters poll instead",
                        self.backend,
                        self._channel,
                        summarize(exc),
                    )
                self._failing = True
                return
            if self._failing:
                _log.info("%s: subscribed to %s again", self.backend, self._channel)
            self._failing = False
            self._backoff = 0.0

    @contextlib.asynccontextmanager
    async def watch(self, key: str) -> AsyncIterator[Wakeup]:
        """A wake-up for ``key``, subscribed before the caller reads (and again before each
        wait, should the subscription have been lost)."""
        await self.ensure()
        async with self._notifier.watch(key, refresh=self.ensure) as wakeup:
            yield wakeup

    def heard(self, key: str) -> None:
        """Hand a changed key to the waiters (called by the subclass as messages arrive)."""
        self._notifier.notify(key)

    async def close(self) -> None:
        """Stop listening for good (the store is closing); a later ensure does nothing."""
        self._closed = True
        lock = self._lock
        if lock is not None and self._lock_loop is asyncio.get_running_loop():
            async with lock:  # an open in progress finishes first, then is dropped
                await self._drop()
        else:
            await self._drop()

    @abc.abstractmethod
    def _alive(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether the subscription is open and belongs to ``loop``."""

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open the subscription (bounded by the caller's timeout)."""

    @abc.abstractmethod
    async def _drop(self) -> None:
        """Forget the subscription, releasing what it holds (never raises)."""
