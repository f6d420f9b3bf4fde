"""Bytes with an expiry: the store behind the response and embedding caches.

A cache needs far less than the other concerns -- no read-check-write, no
atomic decision -- only "give me these keys" and "keep these values for this
long", in batches, because an embedding lookup asks for hundreds of keys at
once and one round trip per key would cost more than the provider call it
saves. So :class:`CacheStore` is its own small protocol (a backend offers it
only if it does batches in one round trip) rather than more methods on the
budget and rate-limit stores.

Values are opaque bytes: what they mean (a serialised completion, a packed
vector) is the caller's business, so every backend stores them the same way.
A ``ttl`` is in seconds; ``None`` keeps a value until it is evicted or deleted.

- :class:`MemoryCacheStore` keeps at most ``max_entries`` values in this
  process, evicting the least recently used, with expiry on the injected
  clock (so a test moves a FakeClock instead of sleeping).
- :class:`RedisCacheStore` uses ``MGET`` for a batch read and one pipelined
  round of ``SET ... PX`` for a batch write; every operation is bounded by
  ``timeout`` and a dead or stalled server becomes
  :class:`~bastion._core.errors.StoreUnavailableError`, which the caches treat
  as a miss (fail-open).

- :class:`~bastion.stores.SQLCacheStore` keeps values in the SQL store's
  database (:mod:`bastion.stores._cache_sql`): shared by every process on a
  SQLite file, surviving restarts, with nothing else to run.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.validate import optional_positive_number, positive_number, whole_number
from bastion.stores._base import Store, call_store
from bastion.stores._keys import ScopedView, escape, scope_path
from bastion.stores._redis import import_redis

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["CacheStore", "MemoryCacheStore", "RedisCacheStore"]

DEFAULT_MAX_ENTRIES = 10_000


def check_ttl(ttl: float | None, option: str = "ttl") -> float | None:
    """A time to live in seconds (> 0), or None for "until evicted"."""
    return optional_positive_number(ttl, option, unit="seconds", none="to keep until evicted")


@runtime_checkable
class CacheStore(Store, Protocol):
    """Get and set opaque values by key, one at a time or in batches, with a time to live.

    Every key is confined to the store's scope (see :meth:`Store.scoped`). A
    backend raises :class:`~bastion._core.errors.StoreUnavailableError` when it
    cannot be reached; the caches built on it turn that into a miss.
    """

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when it is absent or expired."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One value (or None) per key, in the order of ``keys``, in one round trip."""
        ...

    async def set(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted)."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]], *, ttl: float | None) -> None:
        """Store every ``(key, value)`` pair for ``ttl`` seconds, in one round trip."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``; forgetting an absent key is not an error."""
        ...


class _Entries:
    """What a memory cache and its scoped views share: one LRU map behind one lock."""

    __slots__ = ("lock", "max_entries", "values")

    def __init__(self, max_entries: int) -> None:
        self.lock = threading.Lock()
        self.max_entries = max_entries
        self.values: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        """key -> (value, expires_at on the clock's monotonic time; inf for never)."""


class MemoryCacheStore(ScopedView):
    """A bounded in-process cache (``memory://``): LRU eviction, expiry on the injected clock.

    Thread-safe. An expired value is dropped when it is next read, or earlier
    when it reaches the least recently used end and room is needed.
    """

    __slots__ = ("_clock", "_entries")

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        limit = whole_number(max_entries, "MemoryCacheStore.max_entries", hint="e.g. 10_000")
        self._entries = _Entries(limit)
        self._clock = clock
        self._scope: tuple[str, ...] = ()
        self._prefix = scope_path(())

    def __repr__(self) -> str:
        return f"MemoryCacheStore(max_entries={self._entries.max_entries}, scope={self._scope!r})"

    def __len__(self) -> int:
        """How many values the whole store holds, every scope and expired ones included."""
        return len(self._entries.values)

    @property
    def backend(self) -> str:
        return "memory"

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        entries = self._entries
        full = self._prefix + key
        with entries.lock:
            found = entries.values.get(full)
            if found is None:
                return None
            if found[1] <= self._clock.monotonic():
                del entries.values[full]
                return None
            entries.values.move_to_end(full)
            return found[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        entries = self._entries
        values = entries.values
        prefix = self._prefix
        now = self._clock.monotonic()
        result: list[bytes | None] = []
        with entries.lock:
            for key in keys:
                full = prefix + key
                found = values.get(full)
                if found is None:
                    result.append(None)
                elif found[1] <= now:
                    del values[full]
                    result.append(None)
                else:
                    values.move_to_end(full)
                    result.append(found[0])
        return result

    async def set(self, key: str, value: bytes, *, ttl: float | None) -> None:
        await self.set_many(((key, value),), ttl=ttl)

    async def set_many(self, items: Sequence[tuple[str, bytes]], *, ttl: float | None) -> None:
        ttl = check_ttl(ttl)
        expires_at = math.inf if ttl is None else self._clock.monotonic() + ttl
        entries = self._entries
        values = entries.values
        prefix = self._prefix
        with entries.lock:
            for key, value in items:
                full = prefix + key
                values[full] = (bytes(value), expires_at)
                values.move_to_end(full)
            while len(values) > entries.max_entries:
                values.popitem(last=False)

    async def delete(self, key: str) -> None:
        entries = self._entries
        with entries.lock:
            entries.values.pop(self._prefix + key, None)


class _RedisShared:
    """What a Redis cache store and its views share: the client and the error rule."""

    __slots__ = ("client", "owned", "unavailable")

    def __init__(self, client: Redis, *, owned: bool) -> None:
        import redis.exceptions as errors

        self.client = client
        self.owned = owned
        # A full or read-only server (maxmemory with noeviction, a replica after a
        # failover) cannot serve a cache either: that is an outage, not a bug.
        lost = (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.OutOfMemoryError,
            errors.ReadOnlyError,
            errors.TryAgainError,
            OSError,
        )
        self.unavailable: Callable[[Exception], bool] = lambda exc: isinstance(exc, lost)


class RedisCacheStore(ScopedView):
    """A cache shared by every process that points at one Redis (``redis://host:port/db``).

    Give either ``url`` (the store builds and owns a client) or ``client``
    (yours, e.g. ``RedisStore.client`` to share its connections; the store
    never closes it). The client must return bytes: one built with
    ``decode_responses=True`` is refused, since packed vectors are not text.
    Keys are ``{namespace}:cache:{scope path}{key}``; expiry is Redis's own.
    """

    __slots__ = ("_head", "_namespace", "_scope", "_shared", "_timeout")

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        namespace: str = "bastion",
        timeout: float = 1.0,
        max_connections: int = 50,
    ) -> None:
        self._timeout = positive_number(timeout, "RedisCacheStore.timeout", unit="seconds")
        redis_asyncio = import_redis()
        if (url is None) == (client is None):
            msg = (
                "RedisCacheStore needs exactly one of url= (e.g. 'redis://localhost:6379/0') "
                "or client="
            )
            raise ConfigurationError(msg)
        if not isinstance(namespace, str) or not namespace:
            msg = f"RedisCacheStore.namespace must be a non-empty string; got {namespace!r}"
            raise ConfigurationError(msg)
        if client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = redis_asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=whole_number(max_connections, "RedisCacheStore.max_connections"),
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
            )
            client = redis_asyncio.Redis.from_pool(pool)
            owned = True
        else:
            if client.connection_pool.connection_kwargs.get("decode_responses"):
                msg = (
                    "RedisCacheStore(client=...) needs a client that returns bytes; this one was "
                    "built with decode_responses=True: build another without it"
                )
                raise ConfigurationError(msg)
            owned = False
        self._shared = _RedisShared(client, owned=owned)
        self._namespace = escape(namespace)
        self._scope: tuple[str, ...] = ()
        self._head = f"{self._namespace}:cache:{scope_path(())}"

    def __repr__(self) -> str:
        return f"RedisCacheStore(namespace={self._namespace!r}, scope={self._scope!r})"

    @property
    def backend(self) -> str:
        return "redis"

    @property
    def client(self) -> Redis:
        """The redis-py client (shared by every view of this store)."""
        return self._shared.client

    def key_of(self, key: str) -> str:
        """The Redis key that holds ``key`` in this view (for operators and tests)."""
        return self._head + key

    def _rescope(self) -> None:
        self._head = f"{self._namespace}:cache:{scope_path(self._scope)}"

    async def ping(self) -> None:
        await self._call("ping", cast("Awaitable[object]", self._shared.client.ping()))

    async def aclose(self) -> None:
        if self._shared.owned:
            await self._shared.client.aclose()

    async def _call(self, operation: str, work: Awaitable[Any]) -> Any:
        return await call_store("redis", operation, self._timeout, work, self._shared.unavailable)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(
            "cache_get", self._shared.client.get(self._head + key)
        )
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        head = self._head
        work = self._shared.client.mget([head + key for key in keys])
        values: list[bytes | None] = await self._call("cache_get_many", work)
        return values

    async def set(self, key: str, value: bytes, *, ttl: float | None) -> None:
        px = _milliseconds(check_ttl(ttl))
        await self._call("cache_set", self._shared.client.set(self._head + key, value, px=px))

    async def set_many(self, items: Sequence[tuple[str, bytes]], *, ttl: float | None) -> None:
        px = _milliseconds(check_ttl(ttl))
        if not items:
            return
        pipe = self._shared.client.pipeline(transaction=False)
        head = self._head
        for key, value in items:
            pipe.set(head + key, value, px=px)
        await self._call("cache_set_many", pipe.execute())

    async def delete(self, key: str) -> None:
        await self._call("cache_delete", self._shared.client.delete(self._head + key))


def _milliseconds(ttl: float | None) -> int | None:
    """Redis expiry in whole milliseconds, rounded up so a value never expires early."""
    return None if ttl is None else max(1, math.ceil(ttl * 1000))
