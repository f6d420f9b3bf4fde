"""Keep one subscription to a store's change channel open, reopening it when it is lost.

PostgreSQL ``LISTEN`` and Redis pub/sub differ in how a subscription is
opened and how one knows it still works, but not in what a store needs from
them: one per store, opened on the first wait, reopened by a later wait after
the server dropped it, tied to the event loop it runs on, and never a reason
for a wait to fail. That shared part is :class:`Listener`; each backend says
only how to open, check and drop its own kind.

Listening is an accelerator, never a dependency: when the subscription
cannot be opened, waiters still find a change on their next poll, so a
failure is logged once per outage rather than raised.
"""

from __future__ import annotations

import abc
import asyncio
import logging

from bastion._core.errors import summarize
from bastion.stores._wakeup import Notifier

__all__ = ["Listener"]

_log = logging.getLogger("bastion.stores")


class Listener(abc.ABC):
    """One subscription to ``channel`` that forwards each changed key to ``notifier``."""

    __slots__ = ("_channel", "_failing", "_lock", "_lock_loop", "_notifier", "_timeout")

    backend = ""
    """The backend's name, for the log lines."""

    def __init__(self, *, channel: str, notifier: Notifier, timeout: float) -> None:
        self._channel = channel
        self._notifier = notifier
        self._timeout = timeout
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    @property
    def channel(self) -> str:
        """The channel changes are announced on."""
        return self._channel

    def listening(self) -> bool:
        """Whether the subscription is open on the running event loop."""
        return self._alive(asyncio.get_running_loop())

    async def ensure(self) -> None:
        """Subscribe, unless already subscribed on this event loop (never raises)."""
        loop = asyncio.get_running_loop()
        if self._alive(loop):
            return
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self._alive(loop):
                return
            await self._drop()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._open()
            except Exception as exc:  # waiters fall back to polling; say so once per outage
                await self._drop()
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

    def heard(self, key: str) -> None:
        """Hand a changed key to the waiters (called by the subclass as messages arrive)."""
        self._notifier.notify(key)

    async def close(self) -> None:
        """Stop listening (the store is closing)."""
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
