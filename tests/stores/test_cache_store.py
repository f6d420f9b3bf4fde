"""The cache store contract on memory, SQLite, PostgreSQL and Redis, plus each backend's rules."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bastion import ConfigurationError, StoreUnavailableError
from bastion.stores import (
    CacheStore,
    MemoryCacheStore,
    RedisCacheStore,
    SQLCacheStore,
    SQLStore,
    open_cache_store,
)
from bastion.testing import FakeClock

from .conftest import POSTGRES_URL

CACHE_BACKENDS = ["memory", "sqlite", "postgresql", "redis"]
NAMESPACE = f"bastion-test-cache-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=CACHE_BACKENDS, ids=CACHE_BACKENDS)
def cache_url(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str | None]:
    """The URL (and PostgreSQL schema) of the current backend; its server is asked for here,
    outside the event loop, since the session's server fixtures run their own."""
    name: str = request.param
    request.applymarker(getattr(pytest.mark, name))
    if name == "memory":
        return "memory://", None
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'cache.db'}", None
    if name == "postgresql":
        return POSTGRES_URL, request.getfixturevalue("postgres_schema")
    return request.getfixturevalue("redis_url"), None


@pytest.fixture
async def make_cache(
    cache_url: tuple[str, str | None], clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    """Build a cache store of the current backend, scoped to this test; closed at the end."""
    url, schema = cache_url
    scope = f"test-{uuid.uuid4().hex[:8]}"
    made: list[Any] = []

    def make(**options: Any) -> Any:
        if schema is not None:
            options["schema"] = schema
        store = open_cache_store(url, clock=clock, namespace=NAMESPACE, **options)
        made.append(store)
        return store.scoped(scope)

    yield make
    for store in made:
        if isinstance(store, RedisCacheStore):
            keys = [key async for key in store.client.scan_iter(match=f"{NAMESPACE}:*")]
            if keys:
                await store.client.delete(*keys)
        await store.aclose()


@pytest.fixture
def cache(make_cache: Callable[..., Any]) -> Any:
    return make_cache()


async def test_every_backend_is_a_cache_store(cache: Any) -> None:
    assert isinstance(cache, CacheStore)
    await cache.ping()


async def test_get_returns_what_set_stored_and_none_for_absent_keys(cache: Any) -> None:
    assert await cache.get("absent") is None
    await cache.set("k", b"value", ttl=60)
    assert await cache.get("k") == b"value"


async def test_every_byte_value_round_trips(cache: Any) -> None:
    value = bytes(range(256)) * 4
    await cache.set("binary", value, ttl=60)
    assert await cache.get("binary") == value
    await cache.set("empty", b"", ttl=60)
    assert await cache.get("empty") == b""


async def test_get_many_answers_in_order_with_none_for_misses(cache: Any) -> None:
    await cache.set_many([("a", b"1"), ("c", b"3")], ttl=60)
    assert await cache.get_many(["c", "b", "a", "c"]) == [b"3", None, b"1", b"3"]
    assert await cache.get_many([]) == []
    await cache.set_many([], ttl=60)  # nothing to write is not an error


async def test_set_replaces_the_value(cache: Any) -> None:
    await cache.set("k", b"old", ttl=60)
    await cache.set("k", b"new", ttl=60)
    assert await cache.get("k") == b"new"


async def test_delete_forgets_a_key_and_tolerates_absent_ones(cache: Any) -> None:
    await cache.set("k", b"v", ttl=60)
    await cache.delete("k")
    await cache.delete("never-set")
    assert await cache.get("k") is None


async def test_scoped_views_never_see_each_others_keys(cache: Any) -> None:
    tenant_a, tenant_b = cache.scoped("a"), cache.scoped("b")
    await tenant_a.set("k", b"from-a", ttl=60)
    await tenant_b.set("k", b"from-b", ttl=60)
    await cache.set("a/:k", b"crafted", ttl=60)  # a key that looks like a scope path
    assert await tenant_a.get("k") == b"from-a"
    assert await tenant_b.get("k") == b"from-b"
    assert await cache.get("k") is None
    assert await tenant_a.scoped("x").get("k") is None
    assert tenant_a.scope == (*cache.scope, "a")


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "60", True])
async def test_a_bad_ttl_is_refused(cache: Any, ttl: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl must be"):
        await cache.set("k", b"v", ttl=ttl)
    with pytest.raises(ConfigurationError, match="ttl must be"):
        await cache.set_many([("k", b"v")], ttl=ttl)


# -- expiry: the memory store on the fake clock, Redis by its own TTL ---------------------------


@pytest.mark.memory
async def test_memory_values_expire_on_the_injected_clock(clock: FakeClock) -> None:
    store = MemoryCacheStore(clock=clock)
    await store.set("short", b"1", ttl=10)
    await store.set_many([("long", b"2")], ttl=100)
    await store.set("forever", b"3", ttl=None)
    clock.advance(9.999)
    assert await store.get_many(["short", "long", "forever"]) == [b"1", b"2", b"3"]
    clock.advance(0.001)
    assert await store.get("short") is None
    clock.advance(90)
    assert await store.get_many(["short", "long", "forever"]) == [None, None, b"3"]
    clock.advance(10**9)
    assert await store.get("forever") == b"3"


@pytest.mark.memory
async def test_memory_setting_again_restarts_the_ttl(clock: FakeClock) -> None:
    store = MemoryCacheStore(clock=clock)
    await store.set("k", b"v", ttl=10)
    clock.advance(8)
    await store.set("k", b"v", ttl=10)
    clock.advance(8)
    assert await store.get("k") == b"v"


@pytest.mark.redis
async def test_redis_sets_the_ttl_in_milliseconds_rounded_up(redis_url: str) -> None:
    store = RedisCacheStore(redis_url, namespace=NAMESPACE).scoped(uuid.uuid4().hex)
    client = store.client
    try:
        await store.set("a", b"1", ttl=30.0)
        await store.set_many([("b", b"2"), ("c", b"3")], ttl=0.0004)
        await store.set("forever", b"4", ttl=None)
        assert 29_000 < await client.pttl(store.key_of("a")) <= 30_000
        assert await client.pttl(store.key_of("forever")) == -1  # no expiry
        b_ttl = await client.pttl(store.key_of("b"))
        assert b_ttl in (-2, 0, 1)  # 1 ms (or already gone): never truncated to "no expiry"
    finally:
        await client.delete(*(store.key_of(k) for k in "abc"), store.key_of("forever"))
        await store.aclose()


# -- memory: bounded, least recently used first, thread-safe ------------------------------------


@pytest.mark.memory
async def test_memory_evicts_the_least_recently_used_value() -> None:
    store = MemoryCacheStore(max_entries=3)
    await store.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")], ttl=None)
    assert await store.get("a") == b"1"  # "a" is now the most recently used
    await store.set("d", b"4", ttl=None)
    assert await store.get_many(["a", "b", "c", "d"]) == [b"1", None, b"3", b"4"]
    assert len(store) == 3


@pytest.mark.memory
async def test_memory_scopes_share_one_bound() -> None:
    store = MemoryCacheStore(max_entries=2)
    await store.scoped("a").set("k", b"1", ttl=None)
    await store.scoped("b").set("k", b"2", ttl=None)
    await store.scoped("c").set("k", b"3", ttl=None)
    assert len(store) == 2
    assert await store.scoped("a").get("k") is None


@pytest.mark.memory
def test_memory_store_stays_consistent_under_threads() -> None:
    import asyncio

    store = MemoryCacheStore(max_entries=50)
    errors: list[BaseException] = []

    def hammer(worker: int) -> None:
        async def run() -> None:
            for i in range(300):
                key = f"{worker}-{i % 70}"
                await store.set(key, key.encode(), ttl=None)
                value = await store.get(key)
                assert value in (None, key.encode())
                await store.get_many([f"{(worker + 1) % 4}-{i % 70}", key])

        try:
            asyncio.run(run())
        except BaseException as exc:  # collected and re-raised by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store) == 50


@pytest.mark.memory
@pytest.mark.parametrize("max_entries", [0, -5, 1.5, True, "10"])
def test_memory_max_entries_must_be_a_positive_whole_number(max_entries: object) -> None:
    with pytest.raises(ConfigurationError, match=r"MemoryCacheStore\.max_entries must be"):
        MemoryCacheStore(max_entries=max_entries)  # type: ignore[arg-type]


# -- redis: construction and outages ------------------------------------------------------------


@pytest.mark.redis
def test_redis_store_needs_exactly_one_of_url_or_client() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of url="):
        RedisCacheStore()


@pytest.mark.redis
async def test_redis_refuses_a_client_that_decodes_responses() -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis(decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses=True"):
            RedisCacheStore(client=client)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_shares_a_callers_client_and_leaves_it_open(redis_url: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(redis_url)
    store = RedisCacheStore(client=client, namespace=NAMESPACE).scoped(uuid.uuid4().hex)
    try:
        await store.set("k", b"v", ttl=5)
        await store.aclose()  # not ours to close
        assert await client.get(store.key_of("k")) == b"v"
        await store.delete("k")
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_unreachable_is_a_typed_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisCacheStore(f"redis://127.0.0.1:{port}/0", timeout=0.5)  # nothing listens there
    try:
        for call in (
            lambda: store.get("k"),
            lambda: store.get_many(["k"]),
            lambda: store.set("k", b"v", ttl=1),
            lambda: store.set_many([("k", b"v")], ttl=1),
            lambda: store.delete("k"),
            store.ping,
        ):
            with pytest.raises(StoreUnavailableError) as caught:
                await call()
            assert caught.value.backend == "redis"
            assert caught.value.operation in (
                "cache_get",
                "cache_get_many",
                "cache_set",
                "cache_set_many",
                "cache_delete",
                "ping",
            )
    finally:
        await store.aclose()


@pytest.mark.redis
def test_redis_without_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"bastion\[redis\]"):
        RedisCacheStore("redis://127.0.0.1:6379/0")


# -- SQL: expiry on the store's clock, restarts, sharing a store ---------------------------------


@pytest.mark.sqlite
async def test_sql_values_expire_on_the_store_clock_and_survive_a_restart(
    tmp_path: Any, clock: FakeClock
) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    async with SQLCacheStore(url, clock=clock) as cache:
        await cache.set_many([("a", b"1"), ("b", b"2"), ("a", b"3")], ttl=10)
        await cache.set("forever", b"kept", ttl=None)
    async with SQLCacheStore(url, clock=clock) as reopened:  # another process, or a restart
        assert await reopened.get_many(["a", "b", "forever", "c"]) == [b"3", b"2", b"kept", None]
        clock.advance(9.999)
        assert await reopened.get("a") == b"3"
        clock.advance(0.001)
        assert await reopened.get_many(["a", "b", "forever"]) == [None, None, b"kept"]
        await reopened.set("a", b"again", ttl=10)  # an expired key is simply written anew
        assert await reopened.get("a") == b"again"


@pytest.mark.sqlite
async def test_sql_expired_values_are_swept(tmp_path: Any, clock: FakeClock) -> None:
    import sqlalchemy as sa

    from bastion.stores._sql_schema import cache as cache_table

    store = SQLStore(f"sqlite:///{tmp_path / 'cache.db'}", clock=clock)
    try:
        cache = SQLCacheStore(store=store).scoped("t")
        await cache.set("old", b"x", ttl=1)
        await cache.set("kept", b"y", ttl=None)
        clock.advance(2)
        store._shared.ops = 10**6  # the next write sweeps
        await cache.set("new", b"z", ttl=60)
        keys = await store.run(
            "test", lambda conn: set(conn.execute(sa.select(cache_table.c.key)).scalars())
        )
        assert sorted(key.rsplit(":", 1)[-1] for key in keys) == ["kept", "new"]
    finally:
        await store.aclose()


@pytest.mark.sqlite
async def test_a_sql_cache_shares_a_stores_connections_scope_and_clock(
    tmp_path: Any, clock: FakeClock
) -> None:
    store = SQLStore(f"sqlite:///{tmp_path / 'cache.db'}", clock=clock)
    try:
        tenant = SQLCacheStore(store=store.scoped("acme"))
        assert tenant.scope == ("acme",)
        assert tenant.backend == "sqlite"
        await tenant.set("k", b"v", ttl=5)
        assert await SQLCacheStore(store=store).get("k") is None  # another scope
        assert await SQLCacheStore(store=store.scoped("acme")).get("k") == b"v"
        await tenant.aclose()  # not its store: the store stays open
        await tenant.delete("k")
        assert await tenant.get("k") is None
        assert await tenant.get_many([]) == []
        await tenant.set_many([], ttl=5)
    finally:
        await store.aclose()


def test_a_sql_cache_needs_exactly_one_of_url_or_store() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of url= "):
        SQLCacheStore()
    with pytest.raises(ConfigurationError, match="takes a SQLStore"):
        SQLCacheStore(store=MemoryCacheStore())  # type: ignore[arg-type]


# -- URLs ---------------------------------------------------------------------------------------


async def test_open_cache_store_picks_the_backend_from_the_url(clock: FakeClock) -> None:
    memory = open_cache_store("memory://", clock=clock, max_entries=7)
    assert isinstance(memory, MemoryCacheStore)
    assert "max_entries=7" in repr(memory)
    redis = open_cache_store("redis://127.0.0.1:6379/0", namespace="elsewhere")
    assert isinstance(redis, RedisCacheStore)
    assert redis.key_of("k") == "elsewhere:cache::k"  # no connection is made until used
    await redis.aclose()
    sqlite = open_cache_store("sqlite:///never-opened.db")
    assert isinstance(sqlite, SQLCacheStore)
    assert sqlite.backend == "sqlite"
    await sqlite.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://somewhere", "takes no host"),
        ("mongodb://x", "no cache store for URL scheme 'mongodb'"),
        ("nonsense", "looks like memory://"),
    ],
)
def test_open_cache_store_explains_unsupported_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_cache_store(url)
