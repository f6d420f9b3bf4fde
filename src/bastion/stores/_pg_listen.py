"""PostgreSQL ``LISTEN``: hear about a change made by another process the moment it commits.

A change written by one process (``NOTIFY`` inside its transaction, so it is
sent only if the write commits) reaches every process that listens on the
channel. One connection per store, taken from the store's engine, listens for
every key; :class:`~bastion.stores._listen.Listener` reopens it after the
server dropped it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion.stores._listen import Listener
from bastion.stores._wakeup import Notifier

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["PgListener"]


class PgListener(Listener):
    """One ``LISTEN channel`` connection of ``engine``."""

    __slots__ = ("_connection", "_driver", "_engine", "_loop")

    backend = "postgresql"

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        channel: str,
        notifier: Notifier,
        timeout: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(channel=channel, notifier=notifier, timeout=timeout, clock=clock)
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _alive(self, loop: asyncio.AbstractEventLoop) -> bool:
        driver = self._driver
        return driver is not None and not driver.is_closed() and self._loop is loop

    async def _open(self) -> None:
        self._connection = await self._engine.connect()
        raw = await self._connection.get_raw_connection()
        driver = raw.driver_connection
        if driver is None:
            msg = "the pool gave a connection without its asyncpg connection"
            raise ConnectionError(msg)
        await driver.add_listener(self._channel, self._on_notify)
        # Alive only once LISTEN took effect: an open cut short leaves nothing that looks alive.
        self._driver, self._loop = driver, asyncio.get_running_loop()

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self.heard(payload)

    async def _drop(self) -> None:
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                await connection.invalidate()
                await connection.close()
