"""Store fixtures: one per backend, on real servers, isolated per run and per test.

Redis and PostgreSQL are expected on 127.0.0.1 (6379; 5432 with user
``postgres`` and database ``test``), or wherever ``BASTION_TEST_REDIS_URL`` /
``BASTION_TEST_POSTGRES_URL`` point. When one is absent its tests skip with
the reason -- and under ``CI=true`` the root conftest turns any skip into a
failure, so CI always proves every backend.

Isolation: each session gets its own PostgreSQL schema and Redis namespace
(dropped / deleted at the end), and each test gets a fresh scope inside them,
so parallel or repeated runs never share a key.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bastion.testing import FakeClock

REDIS_URL = os.environ.get("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "BASTION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["memory", "sqlite", "postgresql", "redis"]
SHARED_BACKENDS = ["sqlite", "postgresql", "redis"]
RUN = uuid.uuid4().hex[:10]


def pytest_configure(config: pytest.Config) -> None:
    for backend in BACKENDS:
        config.addinivalue_line("markers", f"{backend}: runs against the {backend} store")


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        address = (parts.hostname or "127.0.0.1", parts.port or default_port)
        with socket.create_connection(address, 1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The test Redis server (skips without one); deletes this run's keys at the end."""
    if not reachable(REDIS_URL, 6379):
        pytest.skip(
            f"no Redis server at {REDIS_URL} (start redis-server or set BASTION_TEST_REDIS_URL)"
        )
    yield REDIS_URL
    asyncio.run(_delete_redis_keys(REDIS_URL, f"*bastion-test-{RUN}*"))


async def _delete_redis_keys(url: str, pattern: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """A schema of its own for this run, migrated to head (skips without a server)."""
    if not reachable(POSTGRES_URL, 5432):
        pytest.skip(
            f"no PostgreSQL server at {POSTGRES_URL} (start one or set BASTION_TEST_POSTGRES_URL)"
        )
    schema = f"bastion_test_{RUN}"
    asyncio.run(_postgres(f'CREATE SCHEMA "{schema}"'))
    from bastion.stores._sql import upgrade

    asyncio.run(upgrade(POSTGRES_URL, schema=schema))
    yield schema
    asyncio.run(_postgres(f'DROP SCHEMA "{schema}" CASCADE'))


async def _postgres(statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    parts = urlsplit(POSTGRES_URL)
    conn = await asyncpg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username or "postgres",
        database=parts.path.lstrip("/") or "postgres",
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


StoreFactory = Callable[..., Any]


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn; asks for its server only when it needs one."""
    name: str = request.param
    request.applymarker(getattr(pytest.mark, name))
    if name == "redis":
        request.getfixturevalue("redis_url")
    elif name == "postgresql":
        request.getfixturevalue("postgres_schema")
    return name


@pytest.fixture
def store_url(backend: str, tmp_path: Path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'bastion.db'}"
    if backend == "postgresql":
        return POSTGRES_URL
    return REDIS_URL


@pytest.fixture
async def make_store(
    backend: str, store_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    """Build a store of the current backend (scoped to this test); all closed at the end."""
    from bastion.stores._factory import open_store

    made: list[Any] = []
    scope = f"test-{uuid.uuid4().hex[:8]}"

    def make(*, clock: FakeClock | None = None, timeout: float = 2.0) -> Any:
        schema = request.getfixturevalue("postgres_schema") if backend == "postgresql" else None
        store = open_store(
            store_url,
            clock=clock,
            timeout=timeout,
            namespace=f"bastion-test-{RUN}",
            schema=schema,
        )
        made.append(store)
        return store.scoped(scope)

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
def store(make_store: StoreFactory, clock: FakeClock) -> Any:
    """A store of the current backend on the test's fake clock, scoped to the test."""
    return make_store(clock=clock)
