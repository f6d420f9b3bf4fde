"""Cache store reads and writes per backend, against each backend's bare round trip.

What it measures: the time a cache *hit* costs -- one ``get`` and one
``get_many`` of 100 keys (the embedding cache's batch lookup) -- and one
``set_many`` of 100 values, on the memory, SQLite, PostgreSQL and Redis
cache stores. A hit is what every cached model call or embedding pays
instead of the provider, so it is the figure to keep small.

Baseline, measured in the same run on the same server: the backend's bare
round trip for the same read -- a dict lookup behind a lock (memory), one
``SELECT`` on the same file through the standard ``sqlite3`` module (SQLite),
one ``fetchval`` on a raw asyncpg connection (PostgreSQL), one ``GET`` through
redis-py (Redis). ``ratio`` is Bastion's median over the baseline's: what
the store adds on top of talking to the server yourself.

How: ``--rounds`` rounds of ``--calls`` sequential awaits per operation, after
a warm-up; the table shows the median of the per-round means. The PostgreSQL
run uses a schema of its own, dropped afterwards; SQLite a temporary file.

Run: ``.venv/bin/python bench/cache.py [--calls 2000] [--rounds 5]
[--backends memory sqlite postgresql redis] [--postgres-url ...] [--redis-url ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

KEYS = [f"k{i:03d}" for i in range(100)]
VALUE = b"x" * 512  # a small serialised completion


async def timed(calls: int, rounds: int, op: Callable[[], Awaitable[object]]) -> float:
    """Median over rounds of the mean microseconds per call."""
    for _ in range(min(calls, 200)):
        await op()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            await op()
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


async def bare_memory() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    lock = threading.Lock()
    values = {"k000": VALUE}

    async def read() -> object:
        with lock:
            return values.get("k000")

    async def close() -> None:
        return None

    return read, close


async def bare_sqlite(path: Path) -> tuple[Callable[[], Awaitable[object]], Any]:
    conn = sqlite3.connect(path, isolation_level=None)

    async def read() -> object:
        return conn.execute(
            "SELECT value FROM bastion_cache WHERE key = ? LIMIT 1", (":cache:k000",)
        ).fetchone()

    async def close() -> None:
        conn.close()

    return read, close


async def _connect(url: str, **settings: str) -> Any:
    """A raw asyncpg connection to ``url`` (``settings``: server settings such as search_path)."""
    import asyncpg  # type: ignore[import-untyped]

    parts = urlsplit(url)
    return await asyncpg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username or "postgres",
        database=parts.path.lstrip("/") or "postgres",
        server_settings=settings,
    )


async def bare_postgres(url: str, schema: str) -> tuple[Callable[[], Awaitable[object]], Any]:
    conn = await _connect(url, search_path=schema)

    async def read() -> object:
        return await conn.fetchval("SELECT value FROM bastion_cache WHERE key = $1", ":cache:k000")

    return read, conn.close


async def bare_redis(url: str, namespace: str) -> tuple[Callable[[], Awaitable[object]], Any]:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)

    async def read() -> object:
        return await client.get(f"{namespace}:cache::k000")

    return read, client.aclose


async def run_backend(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from bastion.stores import open_cache_store
    from bastion.stores._sql import upgrade

    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    schema = None
    if name == "memory":
        url = "memory://"
    elif name == "sqlite":
        url = f"sqlite:///{tmp / 'cache.db'}"
    elif name == "postgresql":
        url, schema = args.postgres_url, f"bench_{uuid.uuid4().hex[:8]}"
        await _postgres(args.postgres_url, f'CREATE SCHEMA "{schema}"')
        await upgrade(url, schema=schema)
    else:
        url = args.redis_url
    store = open_cache_store(url, namespace=namespace, schema=schema, timeout=30.0)
    try:
        await store.set_many([(key, VALUE) for key in KEYS], ttl=3600)
        if name == "memory":
            bare, close = await bare_memory()
        elif name == "sqlite":
            bare, close = await bare_sqlite(tmp / "cache.db")
        elif name == "postgresql":
            assert schema is not None
            bare, close = await bare_postgres(args.postgres_url, schema)
        else:
            bare, close = await bare_redis(url, namespace)
        try:
            baseline = await timed(args.calls, args.rounds, bare)
        finally:
            await close()
        items = [(key, VALUE) for key in KEYS]
        row = {
            "backend": name,
            "baseline_us": baseline,
            "get_us": await timed(args.calls, args.rounds, lambda: store.get("k000")),
            "get_many_100_us": await timed(
                max(args.calls // 10, 20), args.rounds, lambda: store.get_many(KEYS)
            ),
            "set_many_100_us": await timed(
                max(args.calls // 10, 20), args.rounds, lambda: store.set_many(items, ttl=3600)
            ),
        }
        row["ratio"] = row["get_us"] / baseline
        return row
    finally:
        await store.aclose()
        if schema is not None:
            await _postgres(args.postgres_url, f'DROP SCHEMA "{schema}" CASCADE')


async def _postgres(url: str, statement: str) -> None:
    conn = await _connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--backends", nargs="+", default=["memory", "sqlite", "postgresql", "redis"]
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends:
            try:
                rows.append(await run_backend(name, args, Path(tmp)))
            except OSError as exc:
                print(f"{name}: skipped, server not reachable ({exc})", file=sys.stderr)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "rows": rows}, indent=2))
        return
    print(
        f"{'backend':<11} {'bare':>9} {'get':>9} {'ratio':>6} {'get_many(100)':>14} "
        f"{'set_many(100)':>14}   (microseconds, median of {args.rounds} rounds)"
    )
    for row in rows:
        print(
            f"{row['backend']:<11} {row['baseline_us']:>9.1f} {row['get_us']:>9.1f} "
            f"{row['ratio']:>5.1f}x {row['get_many_100_us']:>14.1f} {row['set_many_100_us']:>14.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
