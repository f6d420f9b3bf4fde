"""Redis pub/sub: hear about a change made by another process as soon as it is written.

The script that records a change also ``PUBLISH``es the changed key, inside
the same atomic step, so a message goes out exactly when the change lands.
Each store subscribes once, with one background reader that hands every key
it hears on; :class:`~bastion.stores._listen.Listener` resubscribes after the
reader died with its connection.

Pub/sub delivers at most once and keeps nothing for a subscriber that was
away, which is fine here: a message only shortens a wait, and a waiter that
missed one finds the change on its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import summarize
from bastion.stores._listen import Listener
from bastion.stores._wakeup import Notifier

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisListener"]

_log = logging.getLogger("bastion.stores")


class RedisListener(Listener):
    """One subscription to ``channel`` on ``client``, read by one background task."""

    __slots__ = ("_client", "_task")

    backend = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        channel: str,
        notifier: Notifier,
        timeout: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(channel=channel, notifier=notifier, timeout=timeout, clock=clock)
        self._client = client
        self._task: asyncio.Task[None] | None = None

    def _alive(self, loop: asyncio.AbstractEventLoop) -> bool:
        task = self._task
        return task is not None and not task.done() and task.get_loop() is loop

    async def _open(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            # SUBSCRIBE is sent without waiting for its reply; a waiter that read the
            # store before the server confirmed could miss a change made in between.
            while True:
                reply = await pubsub.get_message(timeout=self._timeout)
                if reply is not None and reply.get("type") == "subscribe":
                    break
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        self._task = asyncio.get_running_loop().create_task(self._read(pubsub))

    async def _read(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = message["data"]
                    self.heard(data.decode() if isinstance(data, bytes) else str(data))
        except Exception as exc:  # the connection went away; the next wait resubscribes
            _log.info("redis: subscription to %s ended (%s)", self._channel, summarize(exc))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _drop(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:  # it runs on another loop: tell that loop to stop it (harmless once it is closed)
            with contextlib.suppress(RuntimeError):
                task.get_loop().call_soon_threadsafe(task.cancel)
