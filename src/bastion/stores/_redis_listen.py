"""Redis pub/sub: hear about a change made by another process as soon as it is written.

The script that records a decision also ``PUBLISH``es the changed key, inside
the same atomic step, so a message goes out exactly when a decision lands.
Each store subscribes once, on its first wait, with one background reader
that hands every key it hears to the store's :class:`Notifier`; a later wait
resubscribes when the reader died with its connection.

Pub/sub delivers at most once and keeps nothing for a subscriber that was
away, which is fine here: it only shortens a wait, and a waiter that missed a
message finds the decision on its next poll. So a failure to subscribe is
logged (once per outage), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from bastion._core.errors import summarize
from bastion.stores._wakeup import Notifier

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisListener"]

_log = logging.getLogger("bastion.stores")


class RedisListener:
    """One subscription to ``channel`` on ``client``, forwarding messages to ``notifier``."""

    __slots__ = (
        "_channel",
        "_client",
        "_failing",
        "_lock",
        "_lock_loop",
        "_notifier",
        "_task",
        "_timeout",
    )

    def __init__(self, client: Redis, *, channel: str, notifier: Notifier, timeout: float) -> None:
        self._client = client
        self._channel = channel
        self._notifier = notifier
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    @property
    def channel(self) -> str:
        """The channel decisions are published on."""
        return self._channel

    def listening(self) -> bool:
        """Whether the reader is running on the current event loop."""
        task = self._task
        return task is not None and not task.done() and task.get_loop() is _loop()

    async def ensure(self) -> None:
        """Subscribe, unless already subscribed on this event loop (never raises)."""
        if self.listening():
            return
        loop = _loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self.listening():
                return
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self._channel)
            except Exception as exc:  # waiters fall back to polling; say so once per outage
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                if not self._failing:
                    _log.warning(
                        "redis: cannot subscribe to %s (%s); waiters poll instead",
                        self._channel,
                        summarize(exc),
                    )
                self._failing = True
                return
            if self._failing:
                _log.info("redis: subscribed to %s again", self._channel)
            self._failing = False
            self._task = asyncio.get_running_loop().create_task(self._read(pubsub))

    async def _read(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = message["data"]
                    self._notifier.notify(data.decode() if isinstance(data, bytes) else str(data))
        except Exception as exc:  # the connection went away; the next wait resubscribes
            _log.info("redis: subscription to %s ended (%s)", self._channel, summarize(exc))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        """Stop listening (the store is closing)."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is _loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
