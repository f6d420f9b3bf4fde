"""RedisRateLimiter: the limiter for callers that only hold a Redis client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bastion import EventBus, RateLimitError, StoreUnavailableError
from bastion.resilience import RedisRateLimiter
from bastion.stores import StoreDegraded

from .conftest import RUN

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def namespace() -> str:
    return f"bastion-test-{RUN}-{uuid.uuid4().hex[:6]}"


async def test_check_counts_requests_and_says_when(client: Any) -> None:
    limiter = RedisRateLimiter(client=client, window=30, max_requests=2, namespace=namespace())
    first = await limiter.check("user-1")
    assert (first.allowed, first.limit, first.remaining, first.retry_after) == (True, 2.0, 1.0, 0.0)
    assert (await limiter.check("user-1")).allowed
    refused = await limiter.check("user-1")
    assert not refused.allowed
    assert 29 < refused.retry_after <= 30
    assert refused.reset_at > first.reset_at - 1
    assert (await limiter.check("user-2")).allowed  # keys are separate


async def test_execute_runs_the_call_or_raises_rate_limit_error(client: Any) -> None:
    limiter = RedisRateLimiter(
        client=client, window=60, max_requests=1, algorithm="fixed", namespace=namespace()
    )
    calls: list[str] = []

    async def call() -> str:
        calls.append("ran")
        return "reply"

    assert await limiter.execute(call, key="k") == "reply"
    with pytest.raises(RateLimitError) as caught:
        await limiter.execute(call, key="k")
    assert calls == ["ran"]
    assert caught.value.limit == 1.0
    assert 0 < caught.value.retry_after <= 60
    assert "algorithm='fixed'" in repr(limiter)


async def test_a_client_it_was_given_is_never_closed(client: Any) -> None:
    limiter = RedisRateLimiter(client=client, window=1, max_requests=1, namespace=namespace())
    await limiter.store.aclose()
    assert await client.ping()


async def test_fail_open_and_fail_closed_on_an_unreachable_server(bus: EventBus) -> None:
    import redis.asyncio as redis_asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = redis_asyncio.Redis(port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    degraded: list[StoreDegraded] = []
    bus.subscribe(degraded.append, StoreDegraded)
    try:
        lenient = RedisRateLimiter(client=client, window=1, max_requests=1, bus=bus, name="a")
        strict = RedisRateLimiter(
            client=client, window=1, max_requests=1, bus=bus, name="b", on_store_failure="closed"
        )
        assert (await lenient.check("k")).allowed
        with pytest.raises(StoreUnavailableError, match="unavailable during rate_limit"):
            await strict.check("k")
        assert [(e.source, e.backend, e.action) for e in degraded] == [
            ("a", "redis", "allowed"),
            ("b", "redis", "refused"),
        ]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "options",
    [{}, {"retry": None, "retry_on_error": [TimeoutError]}],
    ids=["default-retries", "retry-on-error"],
)
def test_a_client_that_retries_is_refused(options: dict[str, Any]) -> None:
    import redis.asyncio as redis_asyncio

    from bastion import ConfigurationError
    from bastion.stores import RedisStore

    client = redis_asyncio.Redis(**options)
    with pytest.raises(ConfigurationError, match=r"RedisStore\.client retries.*NoBackoff\(\), 0"):
        RedisStore(client=client)
    with pytest.raises(ConfigurationError, match=r"RedisRateLimiter\.client retries"):
        RedisRateLimiter(client=client, window=1, max_requests=1)


def test_a_client_without_retries_is_taken() -> None:
    import redis.asyncio as redis_asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from bastion.stores import RedisStore

    for client in (
        redis_asyncio.Redis(retry=Retry(NoBackoff(), 0)),
        redis_asyncio.Redis.from_url("redis://127.0.0.1:6379/0"),  # what the fixtures use
    ):
        assert RedisStore(client=client).client is client
        assert RedisRateLimiter(client=client, window=1, max_requests=1).store.client is client
