"""A cache in the SQL store's database: the embedded default's cache, shared and durable.

Where the memory cache dies with its process and needs no server, and the
Redis cache is the fastest one many machines can share, this one keeps the
response and embedding caches in the same SQLite file (or PostgreSQL
database) as the rest of Bastion's state: every worker process on the machine
shares it, it survives a restart -- cached embeddings are paid for once -- and
there is nothing else to run. A hit costs a query (about a third of a
millisecond on SQLite), far below the model call it saves.

A batch is one query to read and one transaction to write, as the
:class:`~bastion.stores.CacheStore` protocol asks. Expiry is on the store's
clock; expired rows read as absent and the SQL store's periodic sweep deletes
them. There is no size bound: choose TTLs that keep the table to the size you
want (the memory cache bounds entries; Redis bounds memory with its own
eviction policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion.stores._cache import check_ttl
from bastion.stores._keys import ScopedView

if TYPE_CHECKING:
    from bastion.stores._sql import SQLStore

__all__ = ["SQLCacheStore"]


class SQLCacheStore(ScopedView):
    """A cache in SQLite (``sqlite:///path.db``) or PostgreSQL (``postgresql://...``).

    Give either ``url`` (the cache builds and owns its own
    :class:`~bastion.stores.SQLStore`; ``timeout``, ``clock`` and ``schema``
    go to it) or ``store`` (an existing SQL store, whose connections, scope
    and clock it shares; the cache never closes it).
    """

    __slots__ = ("_owned", "_store")

    def __init__(
        self,
        url: str | None = None,
        *,
        store: SQLStore | None = None,
        timeout: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        schema: str | None = None,
    ) -> None:
        from bastion.stores._sql import SQLStore

        if (url is None) == (store is None):
            msg = "SQLCacheStore needs exactly one of url= (e.g. 'sqlite:///bastion.db') or store="
            raise ConfigurationError(msg)
        if store is None:
            self._store = SQLStore(str(url), timeout=timeout, clock=clock, schema=schema)
            self._owned = True
        else:
            given: object = store
            if not isinstance(given, SQLStore):
                msg = f"SQLCacheStore(store=...) takes a SQLStore; got {given!r}"
                raise ConfigurationError(msg)
            self._store = store
            self._owned = False
        self._scope = self._store.scope

    def __repr__(self) -> str:
        return f"SQLCacheStore(backend={self.backend!r}, scope={self._scope!r})"

    def _rescope(self) -> None:
        self._store = self._store.scoped(self._scope[-1])

    @property
    def backend(self) -> str:
        return self._store.backend

    async def ping(self) -> None:
        await self._store.ping()

    async def aclose(self) -> None:
        if self._owned:
            await self._store.aclose()

    async def get(self, key: str) -> bytes | None:
        return (await self._store.cache_get_many((key,)))[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._store.cache_get_many(keys)

    async def set(self, key: str, value: bytes, *, ttl: float | None) -> None:
        await self._store.cache_set_many(((key, value),), ttl=check_ttl(ttl))

    async def set_many(self, items: Sequence[tuple[str, bytes]], *, ttl: float | None) -> None:
        await self._store.cache_set_many(items, ttl=check_ttl(ttl))

    async def delete(self, key: str) -> None:
        await self._store.cache_delete(key)
