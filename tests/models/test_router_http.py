"""FallbackChain over real HTTP: two OpenAI-compatible models on the chaos server."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from bastion import EventBus, RetryConfig
from bastion.models import (
    ChatRequest,
    ContentPolicyViolation,
    FallbackChain,
    ModelChoice,
    ModelTimeouts,
    OpenAIModel,
)
from bastion.testing import ChaosServer, FakeClock, Scenario, Step

Q = ChatRequest.of("Where is my order?")


@pytest.fixture
async def server() -> AsyncIterator[ChaosServer]:
    async with ChaosServer(Step.ok("default answer")) as running:
        yield running


def models(server: ChaosServer, **timeouts: float) -> tuple[OpenAIModel, OpenAIModel]:
    limits = ModelTimeouts(**timeouts) if timeouts else None
    primary = OpenAIModel("primary", api_key="k", base_url=server.url + "/v1", timeouts=limits)
    backup = OpenAIModel("backup", api_key="k", base_url=server.url + "/v1", timeouts=limits)
    return primary, backup


def chain(*models: OpenAIModel, clock: FakeClock | None = None, **options: object) -> FallbackChain:
    return FallbackChain(
        list(models),
        clock=clock or FakeClock(auto_advance=True),
        bus=EventBus(),
        rng=random.Random(3),
        **options,  # type: ignore[arg-type]
    )


async def test_one_500_is_retried_on_the_same_model(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.unavailable(500), Step.ok("second try")), route="primary")
    primary, backup = models(server)
    async with primary, backup:
        completion = await chain(primary, backup).complete(Q)
    assert (completion.model, completion.text) == ("primary", "second try")
    assert server.count(model="primary") == 2
    assert server.count(model="backup") == 0


async def test_a_reset_connection_is_retried(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.disconnect(), Step.ok("after reset")), route="primary")
    primary, backup = models(server)
    async with primary, backup:
        completion = await chain(primary, backup).complete(Q)
    assert completion.text == "after reset"
    assert server.count(model="primary") == 2


async def test_a_persistent_503_moves_on_without_hammering(server: ChaosServer) -> None:
    server.set_scenario(Step.unavailable(503, times=100), route="primary")
    server.set_scenario(Step.ok("from the backup"), route="backup")
    clock = FakeClock(auto_advance=True)
    primary, backup = models(server)
    async with primary, backup:
        completion = await chain(primary, backup, clock=clock).complete(Q)
    assert completion.model == "backup"
    assert completion.text == "from the backup"
    assert server.count(model="primary") == 3  # a few attempts within the first seconds
    assert sum(clock.sleeps) < 5
    assert [a.model for a in completion.attempts][-1] == "backup"


async def test_a_429_with_retry_after_waits_then_retries_the_same_model(
    server: ChaosServer,
) -> None:
    server.set_scenario(
        Scenario.of(Step.rate_limited(2), Step.ok("worth the wait")), route="primary"
    )
    clock = FakeClock(auto_advance=True)
    primary, backup = models(server)
    async with primary, backup:
        completion = await chain(primary, backup, clock=clock).complete(Q)
    assert completion.text == "worth the wait"
    assert clock.sleeps == [2.0]
    long_wait = Scenario.of(Step.rate_limited(300), Step.ok("too late"))
    server.set_scenario(long_wait, route="primary")
    async with primary, backup:
        completion = await chain(primary, backup, clock=FakeClock(auto_advance=True)).complete(Q)
    assert completion.model == "backup"  # a five-minute wait is not worth it: move on


async def test_a_silent_model_is_left_at_once(server: ChaosServer) -> None:
    # A stream shows silence (no first token); a non-streamed call only its total time.
    server.set_scenario(Step.stall(times=10), route="primary")
    server.set_scenario(Step.ok("from the backup"), route="backup")
    primary, backup = models(server, first_token=0.05)
    async with primary, backup:
        chunks = [c async for c in chain(primary, backup).stream(Q)]
    assert "".join(c.text for c in chunks) == "from the backup"
    assert server.count(model="primary") == 1  # not retried on the same model


async def test_a_down_primary_is_skipped_then_takes_traffic_back(server: ChaosServer) -> None:
    server.set_scenario(Step.unavailable(503, times=1000), route="primary")
    server.set_scenario(Step.ok("backup"), route="backup")
    clock = FakeClock()
    primary, backup = models(server)
    async with primary, backup:
        fallback = chain(primary, backup, clock=clock, retry=RetryConfig(backoff=0))
        for _ in range(30):
            assert (await fallback.complete(Q)).model == "backup"
        # three failures opened the primary's breaker; no request re-probed it since
        assert server.count(model="primary") == 3
        server.set_scenario(Step.ok("primary is back"), route="primary")
        clock.advance(5)  # one reset timeout later a probe finds it healthy
        completion = await fallback.complete(Q)
    assert completion.model == "primary"
    assert completion.text == "primary is back"


async def test_a_stream_cut_midway_restarts_on_an_openai_backup(server: ChaosServer) -> None:
    # OpenAI-compatible chat completions cannot continue a trailing assistant message, so
    # the backup starts the answer over and says so with restart=True.
    server.set_scenario(Step.cut(3, "one two three four five six"), route="primary")
    server.set_scenario(Step.ok("a whole new answer"), route="backup")
    primary, backup = models(server)
    async with primary, backup:
        chunks = [c async for c in chain(primary, backup).stream(Q)]
    restart_at = next(i for i, c in enumerate(chunks) if c.restart)
    assert "".join(c.text for c in chunks[:restart_at]).startswith("one two")
    assert "".join(c.text for c in chunks[restart_at:]) == "a whole new answer"
    sent = server.requests[-1].body["messages"]
    assert sent[-1]["role"] == "user"  # no prefix was sent to a model that cannot use it


async def test_weights_split_real_traffic(server: ChaosServer) -> None:
    heavy = OpenAIModel("heavy", api_key="k", base_url=server.url + "/v1")
    light = OpenAIModel("light", api_key="k", base_url=server.url + "/v1")
    async with heavy, light:
        fallback = FallbackChain(
            [ModelChoice(model=heavy, weight=3), ModelChoice(model=light, weight=1)],
            bus=EventBus(),
            rng=random.Random(11),
        )
        served = [(await fallback.complete(Q)).served_by for _ in range(400)]
    share = served.count("heavy") / len(served)
    assert 0.67 < share < 0.83  # expected 0.75
    assert server.count(model="heavy") + server.count(model="light") == 400


async def test_context_length_refusal_moves_to_a_larger_window(server: ChaosServer) -> None:
    small = OpenAIModel("small", api_key="k", base_url=server.url + "/v1")
    same = OpenAIModel("same", api_key="k", base_url=server.url + "/v1")
    large = OpenAIModel("large", api_key="k", base_url=server.url + "/v1")
    server.set_scenario(Step.context_length_exceeded(times=10), route="small")
    server.set_scenario(Step.ok("fits here"), route="large")
    async with small, same, large:
        fallback = FallbackChain(
            [
                ModelChoice(model=small, context_window=8_000),
                ModelChoice(model=same, context_window=8_000),
                ModelChoice(model=large, context_window=200_000),
            ],
            bus=EventBus(),
            clock=FakeClock(auto_advance=True),
        )
        completion = await fallback.complete(Q)
    assert completion.served_by == "large"
    assert server.count(model="small") == 1  # never resent the oversized request
    assert server.count(model="same") == 0


async def test_content_policy_refusal_is_not_routed_around(server: ChaosServer) -> None:
    server.set_scenario(Step.content_filtered(), route="primary")
    primary, backup = models(server)
    async with primary, backup:
        with pytest.raises(ContentPolicyViolation):
            await chain(primary, backup).complete(Q)
    assert server.count(model="backup") == 0
