"""PostgreSQL ``LISTEN``: hear about a change made by another process the moment it commits.

A decision written by one process (``NOTIFY`` inside its transaction, so it
is sent only if the write commits) reaches every process that listens on the
channel, and each hands the changed key to its :class:`Notifier`. One
connection per store listens for all keys; it is opened on the first wait and
reopened on a later one when the server dropped it.

Listening is an accelerator, never a dependency: when the connection cannot
be opened, or is lost, waiters still find the change on their next poll, so
a failure here is logged (once per outage) rather than raised.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from bastion._core.errors import summarize
from bastion.stores._wakeup import Notifier

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["PgListener"]

_log = logging.getLogger("bastion.stores")


class PgListener:
    """One ``LISTEN channel`` connection of ``engine``, forwarding payloads to ``notifier``."""

    __slots__ = (
        "_channel",
        "_connection",
        "_driver",
        "_engine",
        "_failing",
        "_lock",
        "_loop",
        "_notifier",
        "_timeout",
    )

    def __init__(
        self, engine: AsyncEngine, *, channel: str, notifier: Notifier, timeout: float
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._notifier = notifier
        self._timeout = timeout
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    def listening(self) -> bool:
        """Whether the listening connection is open (as far as the driver knows)."""
        return self._driver is not None and not self._driver.is_closed()

    async def ensure(self) -> None:
        """Listen, unless already listening on this event loop (never raises)."""
        loop = asyncio.get_running_loop()
        if self.listening() and self._loop is loop:
            return
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            self._loop = loop
        async with self._lock:
            if self.listening():
                return
            await self._drop()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._listen()
            except Exception as exc:  # waiters fall back to polling; say so once per outage
                await self._drop()
                if not self._failing:
                    _log.warning(
                        "postgresql: cannot LISTEN for changes (%s); waiters poll instead",
                        summarize(exc),
                    )
                self._failing = True
            else:
                if self._failing:
                    _log.info("postgresql: listening for changes again")
                self._failing = False

    async def _listen(self) -> None:
        self._connection = await self._engine.connect()
        raw = await self._connection.get_raw_connection()
        self._driver = raw.driver_connection
        await self._driver.add_listener(self._channel, self._heard)

    def _heard(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._notifier.notify(payload)

    async def _drop(self) -> None:
        """Forget the listening connection (closing it if it still can be)."""
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            try:
                await connection.invalidate()
                await connection.close()
            except Exception:  # already broken: nothing left to release
                _log.debug("postgresql: dropping a broken LISTEN connection", exc_info=True)

    async def close(self) -> None:
        """Stop listening (the store is closing)."""
        await self._drop()
