"""The coalescer batches concurrent requests without delaying a lone one, and never loses one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bastion.stores import RedisStore, WindowSpec
from bastion.stores._coalesce import Coalescer
from bastion.testing import FakeClock

from .conftest import RUN


class Echo:
    """A ``send`` that records its batches and answers when the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, requests: list[int]) -> list[int]:
        self.batches.append(list(requests))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [r * 10 for r in requests]


async def test_a_lone_request_goes_out_at_once() -> None:
    echo = Echo()
    coalescer: Coalescer[int, int] = Coalescer(echo, timeout=5)
    assert await coalescer.submit(1) == 10
    assert await coalescer.submit(2) == 20
    assert echo.batches == [[1], [2]]


async def test_requests_that_pile_up_in_flight_go_out_together() -> None:
    echo = Echo()
    echo.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(echo, timeout=5, max_batch=3)
    first = asyncio.ensure_future(coalescer.submit(0))
    await asyncio.sleep(0)  # the first batch is on the wire
    rest = [asyncio.ensure_future(coalescer.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    echo.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40, 50]
    assert echo.batches == [[0], [1, 2, 3], [4, 5]]


async def test_a_failed_send_fails_every_request_in_it_and_the_next_batch_still_goes() -> None:
    echo = Echo()
    echo.gate.clear()
    echo.fail = ConnectionError("gone")
    coalescer: Coalescer[int, int] = Coalescer(echo, timeout=5)
    calls = [asyncio.ensure_future(coalescer.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    echo.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    echo.fail = None
    assert await coalescer.submit(7) == 70


async def test_a_cancelled_caller_is_dropped_and_the_others_are_answered() -> None:
    echo = Echo()
    echo.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(echo, timeout=5)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0)
    leaver = asyncio.ensure_future(coalescer.submit(2))
    stayer = asyncio.ensure_future(coalescer.submit(3))
    await asyncio.sleep(0)
    leaver.cancel()
    echo.gate.set()
    assert await first == 10
    assert await stayer == 30
    assert leaver.cancelled()
    assert echo.batches == [[1], [3]]


async def test_a_send_that_hangs_is_cut_off_by_the_timeout() -> None:
    echo = Echo()
    echo.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(echo, timeout=0.05)
    with pytest.raises(TimeoutError):
        await coalescer.submit(1)
    echo.gate.set()
    assert await coalescer.submit(2) == 20


async def test_a_wrong_number_of_results_is_an_error_not_a_mixup() -> None:
    async def short(requests: list[int]) -> list[int]:
        return requests[:-1]

    coalescer: Coalescer[int, int] = Coalescer(short, timeout=5)
    with pytest.raises(RuntimeError, match="sent 1 requests but got 0 results"):
        await coalescer.submit(1)


@pytest.mark.redis
async def test_batched_and_unbatched_redis_decide_alike(redis_url: str) -> None:
    spec = WindowSpec(limits=(5,), window=10, name="batching")
    answers: list[list[Any]] = []
    for batch in (True, False):
        store = RedisStore(
            redis_url, namespace=f"bastion-test-{RUN}", clock=FakeClock(), batch=batch
        )
        view = store.scoped(f"batch-{batch}")
        try:
            verdicts = await asyncio.gather(
                *(view.rate_limit(f"k{i % 3}", (1.0,), spec) for i in range(30))
            )
            answers.append(sorted((v.allowed, v.remaining) for v in verdicts))
        finally:
            await store.aclose()
    assert answers[0] == answers[1]
    assert answers[0] == sorted(
        [(False, 0.0)] * 15 + [(True, float(left)) for left in range(5) for _ in range(3)]
    )
