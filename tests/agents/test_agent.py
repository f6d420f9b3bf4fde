"""The agent loop: tools from signatures, validation fed back, max_steps, streaming, resilience."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Literal

import pydantic
import pytest

from bastion import CircuitBreakerConfig, EventBus, RetryConfig, with_resilience
from bastion.agents import Agent, StepLimitReached, Tool, ToolError, tool
from bastion.models import (
    ChatRequest,
    FallbackChain,
    Message,
    ProviderUnavailable,
    Reply,
    ScriptedModel,
    ToolCall,
    Usage,
)
from bastion.testing import FakeClock


def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, object]:
    """Current weather for a city.

    More text that the model does not need.
    """
    return {"city": city, "temperature": 21 if unit == "C" else 70, "unit": unit}


async def slow_lookup(key: str) -> str:
    await asyncio.sleep(10)
    return key


def test_schema_comes_from_the_signature() -> None:
    spec = Tool(get_weather).spec
    assert spec.name == "get_weather"
    assert spec.description == "Current weather for a city."
    assert spec.parameters["required"] == ["city"]
    assert spec.parameters["properties"]["unit"]["enum"] == ["C", "F"]
    assert spec.parameters["additionalProperties"] is False


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"city": "Oslo"}', {"city": "Oslo", "temperature": 21, "unit": "C"}),
        ('{"city": "Oslo", "unit": "F"}', {"city": "Oslo", "temperature": 70, "unit": "F"}),
    ],
)
async def test_valid_arguments_run_the_tool(arguments: str, expected: dict[str, object]) -> None:
    answer = await Tool(get_weather).invoke(
        ToolCall(id="1", name="get_weather", arguments=arguments)
    )
    assert json.loads(answer) == expected


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ('{"unit": "C"}', "city"),
        ('{"city": "Oslo", "unit": "K"}', "unit"),
        ('{"city": "Oslo", "extra": 1}', "extra"),
        ("{not json", "not JSON"),
    ],
)
async def test_bad_arguments_go_back_to_the_model(arguments: str, fragment: str) -> None:
    answer = await Tool(get_weather).invoke(
        ToolCall(id="1", name="get_weather", arguments=arguments)
    )
    assert answer.startswith("error: invalid arguments for get_weather")
    assert fragment in answer


async def test_tool_failures_and_timeouts_become_answers() -> None:
    def broken(x: int) -> int:
        raise RuntimeError("database down")

    def refuses(x: int) -> int:
        raise ToolError("ask the user for their account id first")

    call = ToolCall(id="1", name="x", arguments='{"x": 1}')
    assert await Tool(broken).invoke(call) == "error: broken failed: RuntimeError: database down"
    assert await Tool(refuses).invoke(call) == "error: ask the user for their account id first"
    clock = FakeClock()
    limited = Tool(slow_lookup, timeout=2)
    pending = asyncio.create_task(
        limited.invoke(ToolCall(id="1", name="slow_lookup", arguments='{"key": "k"}'), clock=clock)
    )
    await asyncio.sleep(0)
    clock.advance(2)
    assert await pending == "error: slow_lookup did not finish within 2s"


def test_tool_definitions_are_checked() -> None:
    def variadic(*args: int) -> None:
        return None

    with pytest.raises(ValueError, match=r"\*args"):
        Tool(variadic)
    with pytest.raises(ValueError, match="letters"):
        Tool(get_weather, name="get weather")
    decorated = tool(timeout=5)(get_weather)
    assert decorated.timeout == 5
    assert tool(get_weather).name == "get_weather"


async def test_the_loop_runs_tools_and_feeds_results_back() -> None:
    model = ScriptedModel(
        [
            Reply.tool("get_weather", '{"city": "Oslo"}', call_id="c1"),
            lambda request: f"It is {json.loads(request.messages[-1].content)['temperature']} C.",
        ]
    )
    agent = Agent(
        name="weather",
        model=model,
        instructions="Answer briefly.",
        tools=[get_weather],
        pricing=lambda model, usage: Decimal("0.001") * usage.total_tokens,
    )
    result = await agent.run("Weather in Oslo?", user_id="u1", tenant_id="t1")
    assert result.output == "It is 21 C."
    assert result.steps == 2
    assert result.finish_reason == "stop"
    assert [m.role for m in result.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert result.messages[3].tool_call_id == "c1"
    assert result.usage.total_tokens > 0
    assert result.cost_usd == Decimal("0.001") * result.usage.total_tokens
    assert (result.user_id, result.tenant_id, result.session_id) == ("u1", "t1", None)
    assert len(result.run_id) == 32
    first_request = model.requests[0]
    assert first_request.tools[0].name == "get_weather"


async def test_unknown_tools_are_reported_to_the_model() -> None:
    model = ScriptedModel([Reply.tool("launch_rockets"), "sorry"])
    result = await Agent(name="a", model=model, tools=[get_weather]).run("q")
    assert "no tool named 'launch_rockets'" in result.messages[2].content
    assert result.output == "sorry"


async def test_max_steps_stops_a_model_that_never_finishes() -> None:
    model = ScriptedModel([Reply.tool("get_weather", '{"city": "X"}')])
    result = await Agent(name="a", model=model, tools=[get_weather], max_steps=3).run("q")
    assert result.finish_reason == "max_steps"
    assert result.steps == 3
    assert model.calls == 3
    assert result.cost_usd is None


async def test_continuing_a_conversation() -> None:
    model = ScriptedModel(["second answer"])
    history = [Message.user("first"), Message.assistant("first answer"), Message.user("again")]
    result = await Agent(name="a", model=model, instructions="sys").run(history)
    assert [m.content for m in model.requests[0].messages] == [
        "sys",
        "first",
        "first answer",
        "again",
    ]
    assert result.output == "second answer"


async def test_streaming_the_final_answer() -> None:
    model = ScriptedModel([Reply.tool("get_weather", '{"city": "Rome"}'), "Sunny in Rome."])
    agent = Agent(name="a", model=model, tools=[get_weather])
    pieces = [chunk.text async for chunk in agent.stream("q")]
    assert "".join(pieces) == "Sunny in Rome."
    assert model.calls == 2


async def test_streaming_honours_restarts_and_the_step_limit() -> None:
    primary = ScriptedModel([Reply(text="Hello wor", fail_after_chunks=1)], name="p")
    backup = ScriptedModel(["Fresh answer."], name="b", supports_prefill=False)
    chain = FallbackChain([primary, backup], bus=EventBus(), clock=FakeClock(auto_advance=True))
    agent = Agent(name="a", model=chain)
    chunks = [chunk async for chunk in agent.stream("q")]
    restart_at = next(i for i, c in enumerate(chunks) if c.restart)
    assert "".join(c.text for c in chunks[restart_at:]) == "Fresh answer."

    looping = ScriptedModel([Reply.tool("get_weather", '{"city": "X"}')])
    agent = Agent(name="loop", model=looping, tools=[get_weather], max_steps=2)

    async def drain() -> None:
        async for _ in agent.stream("q"):
            pass

    with pytest.raises(StepLimitReached, match="max_steps=2"):
        await drain()


async def test_an_unpriced_answer_keeps_the_answer_and_reports_unknown_cost() -> None:
    from bastion.models import PricingTable

    primary = ScriptedModel([ProviderUnavailable("down", provider="p")], name="p")
    chain = FallbackChain(
        [primary], static="Sorry.", bus=EventBus(), clock=FakeClock(auto_advance=True)
    )
    agent = Agent(name="a", model=chain, pricing=PricingTable.default().cost)
    result = await agent.run("q")
    assert result.output == "Sorry."
    assert result.cost_usd is None
    unknown = Agent(
        name="b",
        model=ScriptedModel(["x"], name="my-local-llm"),
        pricing=PricingTable.default().cost,
    )
    assert (await unknown.run("q")).cost_usd is None


async def test_context_hook_shapes_every_request() -> None:
    seen: list[int] = []

    def keep_last(request: ChatRequest) -> ChatRequest:
        seen.append(len(request.messages))
        return request.replace(messages=request.messages[-1:])

    model = ScriptedModel(["ok"])
    await Agent(name="a", model=model, instructions="sys", context=keep_last).run("q")
    assert seen == [2]
    assert len(model.requests[0].messages) == 1


def test_run_sync_and_validation() -> None:
    assert Agent(name="a", model=ScriptedModel(["hi"])).run_sync("q").output == "hi"
    with pytest.raises(ValueError, match="max_steps"):
        Agent(name="a", model=ScriptedModel(["x"]), max_steps=0)
    with pytest.raises(ValueError, match="same name"):
        Agent(name="a", model=ScriptedModel(["x"]), tools=[get_weather, get_weather])
    with pytest.raises(ValueError, match="non-empty"):
        Agent(name="a", model=ScriptedModel(["x"])).run_sync([])


async def test_an_agent_works_with_with_resilience_unchanged() -> None:
    model = ScriptedModel([ProviderUnavailable("busy", provider="p"), "recovered"])
    agent = Agent(name="support", model=model)
    resilient = with_resilience(
        agent,
        retry=RetryConfig(backoff=0),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3),
        graceful_shutdown=False,
        clock=FakeClock(auto_advance=True),
    )
    result = await resilient.run("q", user_id="u9")
    assert result.output == "recovered"
    assert result.user_id == "u9"
    assert resilient.name == "support"
    assert model.calls == 2


async def test_pydantic_results_are_serialised() -> None:
    class Weather(pydantic.BaseModel):
        city: str

    def typed(city: str) -> Weather:
        return Weather(city=city)

    answer = await Tool(typed).invoke(ToolCall(id="1", name="typed", arguments='{"city": "Oslo"}'))
    assert json.loads(answer) == {"city": "Oslo"}
    assert Usage() == Usage(input_tokens=0)


async def test_pricing_table_and_context_manager_plug_in() -> None:
    from bastion.models import ContextWindowManager, PricingTable

    model = ScriptedModel(["fine"], name="gpt-4o-mini")
    history = [Message.user("old question " * 200), Message.assistant("old answer " * 200)]
    agent = Agent(
        name="a",
        model=model,
        pricing=PricingTable.default().cost,
        context=ContextWindowManager(max_tokens=300, model="gpt-4o-mini", reserve_for_reply=50).fit,
    )
    result = await agent.run([*history, Message.user("new question")])
    assert result.cost_usd is not None
    assert result.cost_usd > 0
    sent = model.requests[0].messages
    assert sent[-1] == Message.user("new question")
    assert len(sent) == 1  # the old turns did not fit and were dropped


async def test_a_response_cache_answers_repeated_runs() -> None:
    from bastion.models import ResponseCache
    from bastion.stores import MemoryCacheStore

    model = ScriptedModel(["cached answer"])
    agent = Agent(name="a", model=model, cache=ResponseCache(MemoryCacheStore()))
    first = await agent.run("same question")
    second = await agent.run("same question")
    assert first.output == second.output == "cached answer"
    assert model.calls == 1
    assert second.usage.total_tokens == 0  # a hit costs nothing
