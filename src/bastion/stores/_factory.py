"""One URL picks the backend: ``open_store("redis://...")`` and the rest of the code never cares.

Two registries -- explicit dictionaries from URL scheme to a builder, so the
list of backends is readable in one place -- one for the state stores
(:func:`open_store`) and one for the cache stores (:func:`open_cache_store`),
behind one parser, so both accept the same URLs and refuse a bad one the same
way. A backend's driver (redis-py, asyncpg) is imported only when its scheme
is used: a SQLite user never needs Redis installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.redact import redact_url
from bastion.stores._cache import DEFAULT_MAX_ENTRIES, MemoryCacheStore, RedisCacheStore
from bastion.stores._memory import MemoryStore
from bastion.stores._redis import RedisStore

if TYPE_CHECKING:
    from bastion.stores._cache_sql import SQLCacheStore
    from bastion.stores._sql import SQLStore

__all__ = ["CACHE_SCHEMES", "SCHEMES", "open_cache_store", "open_store"]

_EXAMPLES = (
    "memory://, sqlite:///bastion.db, postgresql://user@host:5432/db or redis://localhost:6379/0"
)


def _memory_only(url: str) -> None:
    if url.rstrip("/") != "memory:":
        msg = (
            "a memory store takes no host, path or options: use 'memory://'; "
            f"got {redact_url(url)!r}"
        )
        raise ConfigurationError(msg)


def _memory(url: str, options: dict[str, Any]) -> MemoryStore:
    _memory_only(url)
    return MemoryStore(clock=options["clock"] or SYSTEM_CLOCK)


def _sql(url: str, options: dict[str, Any]) -> SQLStore:
    from bastion.stores._sql import SQLStore

    return SQLStore(
        url,
        timeout=options["timeout"],
        clock=options["clock"] or SYSTEM_CLOCK,
        schema=options["schema"],
    )


def _redis(url: str, options: dict[str, Any]) -> RedisStore:
    return RedisStore(
        url, timeout=options["timeout"], namespace=options["namespace"], clock=options["clock"]
    )


def _memory_cache(url: str, options: dict[str, Any]) -> MemoryCacheStore:
    _memory_only(url)
    return MemoryCacheStore(
        max_entries=options["max_entries"], clock=options["clock"] or SYSTEM_CLOCK
    )


def _sql_cache(url: str, options: dict[str, Any]) -> SQLCacheStore:
    from bastion.stores._cache_sql import SQLCacheStore

    return SQLCacheStore(
        url,
        timeout=options["timeout"],
        clock=options["clock"] or SYSTEM_CLOCK,
        schema=options["schema"],
    )


def _redis_cache(url: str, options: dict[str, Any]) -> RedisCacheStore:
    return RedisCacheStore(url, timeout=options["timeout"], namespace=options["namespace"])


def _by_scheme(*, memory: Any, sql: Any, redis: Any) -> Any:
    """Map every spelling of each backend's scheme to that backend's builder."""
    spellings = {
        "memory": ("memory",),
        "sql": (
            "sqlite",
            "sqlite+aiosqlite",
            "postgresql",
            "postgres",
            "postgresql+asyncpg",
        ),
        "redis": ("redis", "rediss", "unix"),
    }
    named = {"memory": memory, "sql": sql, "redis": redis}
    return {scheme: named[kind] for kind, schemes in spellings.items() for scheme in schemes}


SCHEMES: dict[str, Callable[[str, dict[str, Any]], MemoryStore | SQLStore | RedisStore]] = (
    _by_scheme(memory=_memory, sql=_sql, redis=_redis)
)
"""URL scheme -> builder of the store it names."""

CACHE_SCHEMES: dict[
    str, Callable[[str, dict[str, Any]], MemoryCacheStore | SQLCacheStore | RedisCacheStore]
] = _by_scheme(memory=_memory_cache, sql=_sql_cache, redis=_redis_cache)
"""URL scheme -> builder of the cache store it names."""


def _builder(url: str, registry: dict[str, Any], what: str) -> Any:
    """The builder ``url``'s scheme names in ``registry``, or an error that shows valid URLs."""
    if not isinstance(url, str) or ("://" not in url and not url.startswith("memory:")):
        msg = f"a {what} URL looks like {_EXAMPLES}; got {redact_url(url)!r}"
        raise ConfigurationError(msg)
    scheme = url.split(":", 1)[0].lower()
    builder = registry.get(scheme)
    if builder is None:
        known = ", ".join(f"{name}://" for name in registry)
        msg = f"no {what} for URL scheme {scheme!r} in {redact_url(url)!r}; known schemes: {known}"
        raise ConfigurationError(msg)
    return builder


def open_store(
    url: str,
    *,
    timeout: float = 1.0,
    clock: Clock | None = None,
    namespace: str = "bastion",
    schema: str | None = None,
) -> MemoryStore | SQLStore | RedisStore:
    """The store ``url`` names, ready to use (connections open lazily, on the first operation).

    ``memory://`` (this process), ``sqlite:///path.db`` (a file; its schema is
    created on first use), ``postgresql://user@host:port/db`` (run
    :func:`~bastion.stores.upgrade` first), ``redis://host:port/db``.

    ``timeout`` bounds every operation on a shared store. ``clock`` is the
    time source: the memory and SQL stores read it (default: the system
    clock); the Redis store uses the server's clock unless one is given (tests
    only). ``namespace`` prefixes every Redis key; ``schema`` is the PostgreSQL
    schema holding the tables.
    """
    builder = _builder(url, SCHEMES, "store")
    options = {"timeout": timeout, "clock": clock, "namespace": namespace, "schema": schema}
    store: MemoryStore | SQLStore | RedisStore = builder(url, options)
    return store


def open_cache_store(
    url: str,
    *,
    timeout: float = 1.0,
    clock: Clock | None = None,
    namespace: str = "bastion",
    max_entries: int = DEFAULT_MAX_ENTRIES,
    schema: str | None = None,
) -> MemoryCacheStore | SQLCacheStore | RedisCacheStore:
    """The cache store ``url`` names, from the same URLs as :func:`open_store`.

    ``memory://`` keeps at most ``max_entries`` values in this process;
    ``sqlite:///path.db`` and ``postgresql://...`` keep them in the SQL
    store's database (``schema``: the PostgreSQL schema); ``redis://...``
    in Redis under ``namespace``. ``timeout`` bounds every operation on a
    shared store; ``clock`` drives the memory and SQL stores' expiry
    (default: the system clock).
    """
    builder = _builder(url, CACHE_SCHEMES, "cache store")
    options = {
        "timeout": timeout,
        "clock": clock,
        "namespace": namespace,
        "schema": schema,
        "max_entries": max_entries,
    }
    store: MemoryCacheStore | SQLCacheStore | RedisCacheStore = builder(url, options)
    return store
