"""One URL picks the backend: ``open_store("redis://...")`` and the rest of the code never cares.

The registry is an explicit dictionary from URL scheme to a builder, so the
list of backends is readable in one place, and a backend's driver (redis-py,
asyncpg) is imported only when its scheme is used -- a SQLite user never needs
Redis installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.redact import redact_url
from bastion.stores._memory import MemoryStore
from bastion.stores._redis import RedisStore

if TYPE_CHECKING:
    from bastion.stores._sql import SQLStore

__all__ = ["SCHEMES", "open_store"]


def _memory(url: str, options: dict[str, Any]) -> MemoryStore:
    if url.rstrip("/") != "memory:":
        msg = (
            "a memory store takes no host, path or options: use 'memory://'; "
            f"got {redact_url(url)!r}"
        )
        raise ConfigurationError(msg)
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


SCHEMES: dict[str, Callable[[str, dict[str, Any]], MemoryStore | SQLStore | RedisStore]] = {
    "memory": _memory,
    "sqlite": _sql,
    "sqlite+aiosqlite": _sql,
    "postgresql": _sql,
    "postgres": _sql,
    "postgresql+asyncpg": _sql,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
}
"""URL scheme -> builder of the store it names."""


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
    if not isinstance(url, str) or ("://" not in url and not url.startswith("memory:")):
        msg = (
            f"a store URL looks like memory://, sqlite:///bastion.db, "
            f"postgresql://user@host:5432/db or redis://localhost:6379/0; got {redact_url(url)!r}"
        )
        raise ConfigurationError(msg)
    scheme = url.split(":", 1)[0].lower()
    builder = SCHEMES.get(scheme)
    if builder is None:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        msg = f"no store for URL scheme {scheme!r} in {redact_url(url)!r}; known schemes: {known}"
        raise ConfigurationError(msg)
    options = {"timeout": timeout, "clock": clock, "namespace": namespace, "schema": schema}
    return builder(url, options)
