"""The scripted model plays its steps exactly, streams, fails on cue and records requests."""

from __future__ import annotations

import asyncio

import pytest

from bastion.models import (
    ChatRequest,
    ProviderUnavailable,
    Reply,
    ScriptedModel,
    StreamInterrupted,
    Usage,
)
from bastion.testing import FakeClock


async def test_steps_play_in_order_then_the_last_repeats() -> None:
    model = ScriptedModel(["one", Reply(text="two words"), "three"])
    answers = [(await model.complete(ChatRequest.of("q"))).text for _ in range(5)]
    assert answers == ["one", "two words", "three", "three", "three"]
    assert model.calls == 5
    assert model.requests[0].messages[-1].content == "q"


async def test_cycle_and_callable_steps() -> None:
    model = ScriptedModel(["a", lambda request: request.messages[-1].content.upper()], cycle=True)
    texts = [(await model.complete(ChatRequest.of("hey"))).text for _ in range(4)]
    assert texts == ["a", "HEY", "a", "HEY"]


async def test_usage_follows_the_documented_rule() -> None:
    completion = await ScriptedModel(["three word answer"]).complete(ChatRequest.of("12345678"))
    assert completion.usage == Usage(input_tokens=2, output_tokens=3)
    assert completion.finish_reason == "stop"
    assert completion.model == "scripted"
    explicit = Usage(input_tokens=7, output_tokens=1)
    assert (
        await ScriptedModel([Reply(usage=explicit)]).complete(ChatRequest.of("x"))
    ).usage == explicit


async def test_errors_and_latency_use_the_clock() -> None:
    clock = FakeClock(auto_advance=True)
    model = ScriptedModel(
        [ProviderUnavailable("down", provider="p"), Reply(text="ok", latency=2.5)], clock=clock
    )
    with pytest.raises(ProviderUnavailable):
        await model.complete(ChatRequest.of("q"))
    completion = await model.complete(ChatRequest.of("q"))
    assert completion.latency_s == 2.5
    assert clock.sleeps == [2.5]


async def test_tool_replies() -> None:
    completion = await ScriptedModel([Reply.tool("search", '{"q": "x"}', call_id="c1")]).complete(
        ChatRequest.of("q")
    )
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls[0].name == "search"
    assert completion.tool_calls[0].id == "c1"


async def test_streaming_rebuilds_the_text_and_ends_with_usage() -> None:
    model = ScriptedModel(["the quick brown fox"])
    chunks = [chunk async for chunk in model.stream(ChatRequest.of("q"))]
    assert "".join(c.text for c in chunks) == "the quick brown fox"
    assert len(chunks) == 5
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None


async def test_streams_break_after_some_chunks() -> None:
    model = ScriptedModel([Reply(text="one two three four", fail_after_chunks=2)])
    received: list[str] = []

    async def consume() -> None:
        async for chunk in model.stream(ChatRequest.of("q")):
            received.append(chunk.text)

    with pytest.raises(StreamInterrupted) as info:
        await consume()
    assert received == ["one ", "two "]
    assert info.value.delivered_text == "one two "
    assert info.value.delivered_chunks == 2
    with pytest.raises(StreamInterrupted):
        await ScriptedModel([Reply(text="x", fail_after_chunks=0)]).complete(ChatRequest.of("q"))


def test_an_empty_script_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ScriptedModel([])


async def test_concurrent_use() -> None:
    model = ScriptedModel(["a", "b"], cycle=True)
    results = await asyncio.gather(*(model.complete(ChatRequest.of("q")) for _ in range(10)))
    assert sorted(r.text for r in results) == ["a"] * 5 + ["b"] * 5
