"""FallbackChain rules, driven by scripted models and a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bastion import CircuitBreakerRegistry, CircuitOpenError, EventBus, FallbackUsed
from bastion.models import (
    ChatRequest,
    ContentPolicyViolation,
    ContextLengthExceeded,
    FallbackChain,
    Message,
    ModelChoice,
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    Reply,
    ScriptedModel,
    StreamChunk,
    StreamInterrupted,
    create_fallback_chain,
)
from bastion.testing import FakeClock

Q = ChatRequest.of("hello")


def down(name: str = "p") -> ProviderUnavailable:
    return ProviderUnavailable("503", provider=name, status_code=503)


def chain(
    *models: ScriptedModel, clock: FakeClock | None = None, **options: object
) -> FallbackChain:
    return FallbackChain(
        list(models),
        clock=clock or FakeClock(auto_advance=True),
        bus=EventBus(),
        rng=random.Random(1),
        **options,  # type: ignore[arg-type]
    )


async def test_primary_serves_and_records_its_attempt() -> None:
    primary, backup = ScriptedModel(["hi"], name="primary"), ScriptedModel(["b"], name="backup")
    completion = await chain(primary, backup).complete(Q)
    assert (completion.text, completion.model, completion.degraded) == ("hi", "primary", False)
    assert [(a.model, a.error) for a in completion.attempts] == [("primary", None)]
    assert backup.calls == 0


async def test_one_500_is_retried_on_the_same_model() -> None:
    primary = ScriptedModel([down(), "recovered"], name="primary")
    backup = ScriptedModel(["backup"], name="backup")
    completion = await chain(primary, backup).complete(Q)
    assert completion.model == "primary"
    assert primary.calls == 2
    assert backup.calls == 0
    assert not completion.degraded  # the first choice served, after one retry
    assert [a.error is None for a in completion.attempts] == [False, True]


async def test_a_persistent_failure_moves_on_after_a_bounded_number_of_attempts() -> None:
    clock = FakeClock(auto_advance=True)
    bus = EventBus()
    used: list[FallbackUsed] = []
    bus.subscribe(used.append, FallbackUsed)
    primary = ScriptedModel([down()], name="primary")
    backup = ScriptedModel(["from backup"], name="backup")
    completion = await FallbackChain([primary, backup], clock=clock, bus=bus).complete(Q)
    assert completion.model == "backup"
    assert primary.calls == 3  # three attempts within a few seconds, then move on
    assert sum(clock.sleeps) < 5
    assert [a.model for a in completion.attempts] == ["primary"] * 3 + ["backup"]
    assert used[0].served_by == "backup"


async def test_a_short_retry_after_is_waited_for_a_long_one_moves_on() -> None:
    clock = FakeClock(auto_advance=True)
    short = ProviderRateLimited("slow down", provider="p", retry_after=2.0)
    primary = ScriptedModel([short, "after waiting"], name="primary")
    assert (await chain(primary, clock=clock).complete(Q)).text == "after waiting"
    assert clock.sleeps == [2.0]

    clock = FakeClock(auto_advance=True)
    long = ProviderRateLimited("come back later", provider="p", retry_after=120.0)
    primary = ScriptedModel([long, "never"], name="primary")
    backup = ScriptedModel(["backup"], name="backup")
    completion = await chain(primary, backup, clock=clock).complete(Q)
    assert completion.model == "backup"
    assert primary.calls == 1
    assert clock.sleeps == []


async def test_silence_after_connecting_moves_on_at_once() -> None:
    silent = ProviderTimeout("no first token", provider="p", kind="first_token", timeout=10)
    primary = ScriptedModel([silent], name="primary")
    backup = ScriptedModel(["backup"], name="backup")
    completion = await chain(primary, backup).complete(Q)
    assert completion.model == "backup"
    assert primary.calls == 1


async def test_a_dead_primary_is_not_reprobed_on_every_request_and_recovers() -> None:
    clock = FakeClock(auto_advance=True)
    primary = ScriptedModel([down()], name="primary")
    backup = ScriptedModel(["backup"], name="backup")
    fallback = chain(primary, backup, clock=clock)
    for _ in range(20):
        assert (await fallback.complete(Q)).model == "backup"
    # three attempts tripped the breaker (threshold 3); later requests skip the primary
    # except for a half-open probe every reset_timeout of fake time spent in backoff
    assert primary.calls <= 6
    primary.script = ["primary is back"]
    clock.advance(5)
    assert (await fallback.complete(Q)).model == "primary"


async def test_context_window_fallback_before_sending_and_after_a_refusal() -> None:
    small = ScriptedModel(["small"], name="small")
    large = ScriptedModel(["large"], name="large")
    fallback = FallbackChain(
        [
            ModelChoice(model=small, context_window=100),
            ModelChoice(model=large, context_window=1000),
        ],
        count_tokens=lambda request: sum(len(m.content) for m in request.messages),
        bus=EventBus(),
        clock=FakeClock(auto_advance=True),
    )
    big = ChatRequest.of("x" * 500)
    completion = await fallback.complete(big)
    assert completion.model == "large"
    assert small.calls == 0
    assert "500 tokens" in (completion.attempts[0].error or "")

    refusing = ScriptedModel(
        [ContextLengthExceeded("too long", provider="p", status_code=400)], name="refusing"
    )
    same_size = ScriptedModel(["same"], name="same-size")
    bigger = ScriptedModel(["bigger"], name="bigger")
    fallback = FallbackChain(
        [
            ModelChoice(model=refusing, context_window=8000),
            ModelChoice(model=same_size, context_window=8000),
            ModelChoice(model=bigger, context_window=128000),
        ],
        bus=EventBus(),
        clock=FakeClock(auto_advance=True),
    )
    completion = await fallback.complete(Q)
    assert completion.model == "bigger"
    assert (refusing.calls, same_size.calls) == (1, 0)


async def test_content_policy_is_not_routed_around_unless_asked() -> None:
    refusal = ContentPolicyViolation("refused", provider="p", status_code=400)
    primary = ScriptedModel([refusal], name="primary")
    backup = ScriptedModel(["permissive"], name="backup")
    with pytest.raises(ContentPolicyViolation):
        await chain(primary, backup).complete(Q)
    assert (primary.calls, backup.calls) == (1, 0)
    primary = ScriptedModel([refusal], name="primary")
    completion = await chain(primary, backup, route_around_content_policy=True).complete(Q)
    assert completion.model == "backup"


async def test_static_answer_and_raising_when_everything_fails() -> None:
    one, two = ScriptedModel([down("a")], name="a"), ScriptedModel([down("b")], name="b")
    completion = await chain(one, two, static="Sorry, try again soon.").complete(Q)
    assert (completion.text, completion.model, completion.degraded) == (
        "Sorry, try again soon.",
        "static",
        True,
    )
    one, two = ScriptedModel([down("a")], name="a"), ScriptedModel([down("b")], name="b")
    with pytest.raises(ProviderUnavailable) as info:
        await chain(one, two).complete(Q)
    assert any("'b' failed too" in note for note in info.value.__notes__)


async def test_weights_split_traffic_statistically() -> None:
    heavy = ScriptedModel(["h"], name="heavy")
    light = ScriptedModel(["l"], name="light")
    backup = ScriptedModel(["b"], name="backup")
    fallback = FallbackChain(
        [ModelChoice(model=heavy, weight=3), ModelChoice(model=light, weight=1), backup],
        rng=random.Random(42),
        bus=EventBus(),
    )
    served = Counter([(await fallback.complete(Q)).model for _ in range(2000)])
    assert served["backup"] == 0
    assert 0.70 < served["heavy"] / 2000 < 0.80  # expected 0.75
    assert fallback.order()[-1].model is backup


async def test_open_breakers_are_left_out_of_the_weighted_draw() -> None:
    registry = CircuitBreakerRegistry()
    heavy = ScriptedModel(["h"], name="heavy")
    light = ScriptedModel(["l"], name="light")
    fallback = FallbackChain(
        [ModelChoice(model=heavy, weight=100), ModelChoice(model=light, weight=1)],
        breakers=registry,
        bus=EventBus(),
    )
    registry.get("heavy").force_open()
    served = Counter([(await fallback.complete(Q)).model for _ in range(50)])
    assert served == {"light": 50}
    assert heavy.calls == 0


async def test_streams_fall_through_before_the_first_chunk() -> None:
    primary = ScriptedModel([down()], name="primary")
    backup = ScriptedModel(["streamed from backup"], name="backup")
    chunks = [c async for c in chain(primary, backup).stream(Q)]
    assert "".join(c.text for c in chunks) == "streamed from backup"
    assert chunks[-1].finish_reason == "stop"


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        FallbackChain([])
    with pytest.raises(ValueError, match="unique"):
        FallbackChain([ScriptedModel(["a"]), ScriptedModel(["b"])])
    with pytest.raises(ValueError, match="weight"):
        ModelChoice(model=ScriptedModel(["a"]), weight=0)
    with pytest.raises(ValueError, match="2 weights for 1 models"):
        create_fallback_chain([ScriptedModel(["a"])], weights=[1, 2])
    made = create_fallback_chain(
        [ScriptedModel(["a"], name="a"), ScriptedModel(["b"], name="b")], weights=[1, 1]
    )
    assert all(c.weight == 1 for c in made.choices)


async def test_usage_and_model_of_the_served_completion() -> None:
    completion = await chain(ScriptedModel([Reply(text="two words")], name="m")).complete(Q)
    assert completion.usage.output_tokens == 2
    assert completion.model == "m"


async def collect(fallback: FallbackChain) -> list[StreamChunk]:
    return [chunk async for chunk in fallback.stream(Q)]


async def test_a_broken_stream_continues_on_the_next_model_with_the_partial_answer() -> None:
    primary = ScriptedModel(
        [Reply(text="The answer is forty", fail_after_chunks=3)], name="primary"
    )
    backup = ScriptedModel(["forty two."], name="backup")
    chunks = await collect(chain(primary, backup))
    assert "".join(c.text for c in chunks) == "The answer is forty two."
    assert not any(c.restart for c in chunks)
    continued = backup.requests[0].messages
    assert continued[-1] == Message.assistant("The answer is")  # sent without trailing space
    assert chunks[-1].finish_reason == "stop"


async def test_a_backup_that_refuses_the_prefix_restarts_the_answer() -> None:
    primary = ScriptedModel([Reply(text="Partial answer here", fail_after_chunks=1)], name="p")
    refuses_prefix = ProviderBadRequest("assistant prefix not supported", provider="b")
    backup = ScriptedModel([refuses_prefix, "A complete answer."], name="b")
    chunks = await collect(chain(primary, backup))
    texts = [c.text for c in chunks]
    assert texts[0] == "Partial "
    restart_at = next(i for i, c in enumerate(chunks) if c.restart)
    assert "".join(texts[restart_at:]) == "A complete answer."
    assert backup.requests[1].messages == Q.messages  # asked again without the prefix


async def test_a_cut_stream_is_never_passed_off_as_complete() -> None:
    primary = ScriptedModel([Reply(text="half an answer", fail_after_chunks=1)], name="p")
    backup = ScriptedModel([down("b")], name="b")
    received: list[str] = []

    async def consume() -> None:
        async for chunk in chain(primary, backup, static="static text").stream(Q):
            received.append(chunk.text)

    with pytest.raises(StreamInterrupted) as info:
        await consume()
    assert info.value.delivered_text == "half "
    assert "static text" not in received


async def test_content_policy_stops_a_stream() -> None:
    refusal = ContentPolicyViolation("refused", provider="p", status_code=400)
    primary = ScriptedModel([refusal], name="p")
    backup = ScriptedModel(["b"], name="b")
    with pytest.raises(ContentPolicyViolation):
        await collect(chain(primary, backup))
    assert backup.calls == 0


async def test_streams_get_the_same_retries_and_waits_as_calls() -> None:
    clock = FakeClock(auto_advance=True)
    throttled = ProviderRateLimited("slow down", provider="p", retry_after=1.5)
    primary = ScriptedModel([down(), throttled, "streamed after retries"], name="primary")
    backup = ScriptedModel(["backup"], name="backup")
    chunks = await collect(chain(primary, backup, clock=clock))
    assert "".join(c.text for c in chunks) == "streamed after retries"
    assert primary.calls == 3
    assert 1.5 in clock.sleeps
    assert backup.calls == 0


async def test_a_stream_with_every_breaker_open_says_so() -> None:
    registry = CircuitBreakerRegistry()
    one, two = ScriptedModel(["a"], name="a"), ScriptedModel(["b"], name="b")
    fallback = FallbackChain([one, two], breakers=registry, bus=EventBus())
    registry.get("a").force_open()
    registry.get("b").force_open()
    with pytest.raises(CircuitOpenError):
        await collect(fallback)


async def test_a_backup_without_prefill_restarts_and_static_is_never_appended() -> None:
    primary = ScriptedModel([Reply(text="Hello wor", fail_after_chunks=1)], name="p")
    no_prefill = ScriptedModel(["Fresh answer."], name="b", supports_prefill=False)
    chunks = await collect(chain(primary, no_prefill))
    assert chunks[0].text == "Hello "
    assert not chunks[0].restart
    assert chunks[1].restart
    assert "".join(c.text for c in chunks[1:]) == "Fresh answer."
    assert no_prefill.requests[0].messages == Q.messages

    primary = ScriptedModel([Reply(text="Hello wor", fail_after_chunks=1)], name="p")
    failing = ScriptedModel([down("b")], name="b", supports_prefill=False)
    with pytest.raises(StreamInterrupted) as info:
        await collect(chain(primary, failing, static="Sorry."))
    assert info.value.delivered_text == "Hello "
    assert info.value.delivered_chunks == 1


async def test_a_request_naming_a_model_is_refused() -> None:
    with pytest.raises(ValueError, match=r"leave ChatRequest\.model unset"):
        await chain(ScriptedModel(["a"], name="a")).complete(ChatRequest.of("q", model="gpt-4o"))


async def test_served_by_names_the_member_and_closing_closes_members() -> None:
    closed: list[str] = []

    class Closable(ScriptedModel):
        async def aclose(self) -> None:
            closed.append(self.name)

    async with chain(Closable(["x"], name="member")) as fallback:
        completion = await fallback.complete(Q)
    assert completion.served_by == "member"
    assert closed == ["member"]
