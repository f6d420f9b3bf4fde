"""AnthropicModel over real HTTP against the chaos server, plus the documented wire fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bastion import ConfigurationError, EventBus
from bastion._core.usage import Usage
from bastion.models import (
    AuthenticationFailed,
    ChatModel,
    ChatRequest,
    ContentPolicyViolation,
    ContextLengthExceeded,
    FallbackChain,
    MalformedResponse,
    Message,
    ModelTimeouts,
    OpenAIModel,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    StreamChunk,
    StreamInterrupted,
    ToolCall,
    ToolSpec,
)
from bastion.models._anthropic import (
    AnthropicModel,
    MessageAssembler,
    encode_request,
    error_from_response,
    normalise_stop,
    parse_message,
    parse_usage,
    retry_after_from_anthropic,
)
from bastion.models._sse import SSEParser, StreamEventSkipped
from bastion.testing import ChaosServer, FakeClock, Scenario, Step

FIXTURES = Path(__file__).parent / "fixtures"
REQUEST = ChatRequest.of("What is a circuit breaker?", system="Answer in one line.")
PROMPT_TOKENS = (len("What is a circuit breaker?") + len("Answer in one line.") + 3) // 4
TEXT = "Breakers stop calls to a failing service."
PIECES = ["Breakers ", "stop ", "calls ", "to ", "a ", "failing ", "service."]
FAST = ModelTimeouts(connect=1.0, first_token=1.0, idle=1.0, total=5.0)
WEATHER = ToolCall(id="toolu_w", name="get_weather", arguments='{"city": "Lisbon", "days": 3}')
TIME = ToolCall(id="toolu_t", name="get_time", arguments='{"zone": "Europe/Lisbon"}')
WALL = 1_750_000_000.0  # FakeClock's default wall time: 2025-06-15T15:06:40Z


@pytest.fixture
async def server() -> AsyncIterator[ChaosServer]:
    async with ChaosServer(Step.ok(TEXT)) as chaos:
        yield chaos


def model_for(server: ChaosServer, **options: Any) -> AnthropicModel:
    options.setdefault("api_key", "sk-ant-test")
    options.setdefault("timeouts", FAST)
    return AnthropicModel("claude-sonnet-4-5", base_url=server.url, **options)


async def collect(model: AnthropicModel, request: ChatRequest = REQUEST) -> list[StreamChunk]:
    return [chunk async for chunk in model.stream(request)]


async def ask(model: AnthropicModel, *, stream: bool, request: ChatRequest = REQUEST) -> Any:
    """One call, streamed or not; the answer as (text, tool calls, finish reason, usage)."""
    if stream:
        chunks = await collect(model, request)
        final = chunks[-1]
        return "".join(c.text for c in chunks), final.tool_calls, final.finish_reason, final.usage
    done = await model.complete(request)
    return done.text, done.tool_calls, done.finish_reason, done.usage


async def received(server: ChaosServer, count: int = 1) -> None:
    """Let the loop run until the server has the request (no sleeping: each turn only yields)."""
    while server.count() < count:  # noqa: ASYNC110 - polling another party's record
        await asyncio.sleep(0)


async def turns(times: int = 20) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


# -- the happy path --------------------------------------------------------------------------------


async def test_complete_returns_text_usage_and_timing(server: ChaosServer) -> None:
    async with model_for(server) as model:
        assert isinstance(model, ChatModel)
        completion = await model.complete(REQUEST)
    assert completion.text == TEXT
    assert completion.finish_reason == "stop"
    assert completion.model == "claude-sonnet-4-5"
    assert completion.id is not None
    assert completion.id.startswith("msg_")
    assert completion.usage == Usage(input_tokens=PROMPT_TOKENS, output_tokens=7)
    assert completion.ttft_s is not None
    assert 0 < completion.ttft_s <= completion.latency_s
    sent = server.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["Content-Type"] == "application/json"
    assert "Authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is a circuit breaker?"}]}
        ],
        "system": "Answer in one line.",
    }


async def test_stream_yields_text_then_a_final_chunk_with_usage(server: ChaosServer) -> None:
    async with model_for(server) as model:
        chunks = await collect(model)
    assert [c.text for c in chunks[:-1]] == PIECES
    assert all(c.finish_reason is None for c in chunks[:-1])
    final = chunks[-1]
    assert (final.text, final.finish_reason, final.model) == ("", "stop", "claude-sonnet-4-5")
    assert final.usage == Usage(input_tokens=PROMPT_TOKENS, output_tokens=7)
    sent = server.requests[-1]
    assert sent.body["stream"] is True
    assert sent.headers["Accept"] == "text/event-stream"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_tool_use_arrives_as_whole_tool_calls(server: ChaosServer, stream: bool) -> None:
    server.set_scenario(Step.ok("Checking both.", tool_calls=[WEATHER, TIME]))
    async with model_for(server) as model:
        text, calls, finish, _ = await ask(model, stream=stream)
    assert text == "Checking both."
    assert calls == (WEATHER, TIME)
    assert finish == "tool_calls"
    assert calls[0].parsed_arguments() == {"city": "Lisbon", "days": 3}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_cache_reads_count_as_cached_input(server: ChaosServer, stream: bool) -> None:
    server.set_scenario(Step(text="ok", cached_tokens=4))
    async with model_for(server) as model:
        _, _, _, usage = await ask(model, stream=stream)
    # The wire says input_tokens = PROMPT_TOKENS - 4 and cache_read_input_tokens = 4.
    assert usage == Usage(input_tokens=PROMPT_TOKENS, output_tokens=1, cached_tokens=4)


async def test_a_tool_conversation_reaches_the_wire_as_content_blocks(server: ChaosServer) -> None:
    request = ChatRequest(
        messages=(
            Message.system("You are terse."),
            Message.user("Weather and time in Lisbon?"),
            Message.assistant("Checking.", tool_calls=(WEATHER, TIME)),
            Message.tool("toolu_w", '{"temp": 21}', name="get_weather"),
            Message.tool("toolu_t", "14:02"),
            Message.user("And tomorrow?"),
            Message.system("Use metric units."),
        ),
        tools=(
            ToolSpec(
                name="get_weather",
                description="Weather by city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}},
            ),
            ToolSpec(name="get_time"),
        ),
        tool_choice="get_weather",
        temperature=0.2,
        max_tokens=64,
        stop=("\n\nHuman:",),
        model="claude-haiku-4-5",
    )
    async with model_for(server) as model:
        completion = await model.complete(request)
    assert completion.model == "claude-haiku-4-5"
    body = server.requests[-1].body
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": "You are terse.\n\nUse metric units.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather and time in Lisbon?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_w",
                        "name": "get_weather",
                        "input": {"city": "Lisbon", "days": 3},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_t",
                        "name": "get_time",
                        "input": {"zone": "Europe/Lisbon"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_w", "content": '{"temp": 21}'},
                    {"type": "tool_result", "tool_use_id": "toolu_t", "content": "14:02"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather by city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "temperature": 0.2,
        "stop_sequences": ["\n\nHuman:"],
    }


def wire(request: ChatRequest, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        encode_request(request, model="claude", stream=False, **options)
    )
    return body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("any", {"type": "any"}),
        ("none", {"type": "none"}),
        ("lookup", {"type": "tool", "name": "lookup"}),
    ],
)
def test_tool_choice_mapping(choice: str, expected: dict[str, str]) -> None:
    assert wire(REQUEST.replace(tool_choice=choice))["tool_choice"] == expected


def test_defaults_and_limits_of_the_wire() -> None:
    assert wire(REQUEST, max_tokens_default=100)["max_tokens"] == 100
    assert wire(REQUEST.replace(temperature=1.7))["temperature"] == 1.0  # Anthropic's range is 0-1
    assert "system" not in wire(ChatRequest.of("hi"))
    empty_turns = ChatRequest(
        messages=(Message.user("hi"), Message.assistant(""), Message.user(""))
    )
    assert wire(empty_turns)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    ]
    bad_arguments = Message.assistant(tool_calls=(ToolCall(id="t", name="f", arguments="[1"),))
    sent = wire(ChatRequest(messages=(Message.user("go"), bad_arguments)))
    assert sent["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    ]


SCHEMA = {"title": "verdict", "type": "object", "properties": {"ok": {"type": "boolean"}}}


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ("json", "single JSON object and nothing else"),
        ({"type": "json_object"}, "single JSON object and nothing else"),
        (SCHEMA, '"properties": {"ok": {"type": "boolean"}}'),
        ({"type": "json_schema", "json_schema": {"name": "v", "schema": SCHEMA}}, '"title"'),
    ],
)
def test_json_output_is_asked_for_in_the_system_prompt(given: Any, needle: str) -> None:
    body = wire(REQUEST.replace(response_format=given))
    first, instruction = body["system"].split("\n\n", 1)
    assert first == "Answer in one line."
    assert needle in instruction
    assert "response_format" not in body


def test_text_format_adds_nothing_and_an_unknown_one_is_refused() -> None:
    assert wire(REQUEST.replace(response_format="text"))["system"] == "Answer in one line."
    assert wire(REQUEST.replace(response_format={"type": "text"}))["system"] == (
        "Answer in one line."
    )
    with pytest.raises(ConfigurationError, match="response_format"):
        wire(REQUEST.replace(response_format="yaml"))


# -- prefill: the seam a fallback chain continues across -------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_trailing_assistant_message_is_continued(server: ChaosServer, stream: bool) -> None:
    server.set_scenario(Step.ok(" calls to a failing service."))
    request = REQUEST.replace(messages=(*REQUEST.messages, Message.assistant("Breakers stop ")))
    async with model_for(server) as model:
        text, _, finish, _ = await ask(model, stream=stream, request=request)
    # The API refuses a prefill ending in whitespace: the space is held back on the wire, and
    # the continuation's echo of it is dropped, so prefix + answer reads as one text.
    assert "Breakers stop " + text == TEXT
    assert finish == "stop"
    last = server.requests[-1].body["messages"][-1]
    assert last == {"role": "assistant", "content": [{"type": "text", "text": "Breakers stop"}]}


def test_prefill_whitespace_rules() -> None:
    only_space = ChatRequest(messages=(Message.user("q"), Message.assistant(" \n")))
    assert wire(only_space)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]}
    ]
    joined = ChatRequest(
        messages=(Message.user("q"), Message.assistant('{"a": '), Message.assistant("1, \n"))
    )
    assert wire(joined)["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": '{"a": 1,'}],
    }
    # Only as much leading whitespace as was held back is dropped, across deltas.
    assembler = MessageAssembler("m", held_back=2)
    pieces = [assembler._text(piece) for piece in (" ", "\n\nNext", " words")]
    assert [p.text if p else None for p in pieces] == [None, "\nNext", " words"]
    assert parse_message(_message_with("  \tword"), model="m", held_back=2).text == "\tword"
    assert parse_message(_message_with("word"), model="m", held_back=3).text == "word"


def _message_with(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}


async def test_a_fallback_chain_continues_a_cut_stream_on_claude(server: ChaosServer) -> None:
    text = "one two three four five six"
    server.set_scenario(Step.cut(3, text), route="primary")
    server.set_scenario(Step.ok(" four five six"), route="claude-backup")
    primary = OpenAIModel("primary", api_key="k", base_url=server.url + "/v1", timeouts=FAST)
    backup = AnthropicModel("claude-backup", api_key="k", base_url=server.url, timeouts=FAST)
    assert backup.supports_prefill is True  # what tells the chain it may continue an answer
    chain = FallbackChain(
        [primary, backup], clock=FakeClock(auto_advance=True), bus=EventBus(), rng=random.Random(3)
    )
    async with primary, backup:
        chunks = [chunk async for chunk in chain.stream(ChatRequest.of("count to six"))]
    assert "".join(c.text for c in chunks) == text
    assert not any(c.restart for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    continued = server.requests[-1]
    assert continued.path == "/v1/messages"
    assert continued.body["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "one two three"}],
    }


async def test_a_claude_that_refuses_the_prefill_restarts_the_answer(server: ChaosServer) -> None:
    server.set_scenario(Step.cut(2, "one two three"), route="primary")
    refusal = Step.error(400, message="This model does not support assistant message prefill.")
    server.set_scenario(Scenario.of(refusal, Step.ok("One, two, three.")), route="claude-backup")
    primary = OpenAIModel("primary", api_key="k", base_url=server.url + "/v1", timeouts=FAST)
    backup = AnthropicModel("claude-backup", api_key="k", base_url=server.url, timeouts=FAST)
    chain = FallbackChain(
        [primary, backup], clock=FakeClock(auto_advance=True), bus=EventBus(), rng=random.Random(3)
    )
    async with primary, backup:
        chunks = [chunk async for chunk in chain.stream(ChatRequest.of("count to three"))]
    restart = next(i for i, c in enumerate(chunks) if c.restart)
    assert "".join(c.text for c in chunks[restart:]) == "One, two, three."
    assert server.requests[-1].body["messages"][-1]["role"] == "user"


# -- error mapping ---------------------------------------------------------------------------------


def _body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


ERRORS = [
    pytest.param(Step.rate_limited(2), ProviderRateLimited, 429, id="429"),
    pytest.param(Step.unavailable(500), ProviderUnavailable, 500, id="500"),
    pytest.param(Step.unavailable(503), ProviderUnavailable, 503, id="503"),
    pytest.param(Step.unavailable(529), ProviderUnavailable, 529, id="529-overloaded"),
    pytest.param(Step.context_length_exceeded(), ContextLengthExceeded, 400, id="prompt-too-long"),
    pytest.param(
        Step.error(
            400,
            body=_body(
                "invalid_request_error",
                "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000",
            ),
        ),
        ContextLengthExceeded,
        400,
        id="context-limit",
    ),
    pytest.param(
        Step.error(
            400, body=_body("invalid_request_error", "Output blocked by content filtering policy")
        ),
        ContentPolicyViolation,
        400,
        id="content-filter",
    ),
    pytest.param(Step.content_filtered(), ContentPolicyViolation, 400, id="usage-policy"),
    pytest.param(Step.unauthorized(), AuthenticationFailed, 401, id="401"),
    pytest.param(Step.error(403), AuthenticationFailed, 403, id="403"),
    pytest.param(Step.error(404), ProviderBadRequest, 404, id="404"),
    pytest.param(Step.error(413), ProviderBadRequest, 413, id="413"),
    pytest.param(Step.error(400, message="max_tokens: Field required"), ProviderBadRequest, 400),
    pytest.param(Step.error(422, body="not json at all"), ProviderBadRequest, 422, id="422-text"),
    pytest.param(Step.malformed(), MalformedResponse, None, id="malformed"),
    pytest.param(Step.disconnect(), ProviderConnectionError, None, id="disconnect"),
]


@pytest.mark.parametrize(("step", "error", "status"), ERRORS)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_each_failure_maps_to_its_typed_error(
    server: ChaosServer, step: Step, error: type[ProviderError], status: int | None, stream: bool
) -> None:
    server.set_scenario(step)
    async with model_for(server) as model:
        with pytest.raises(error) as info:
            await ask(model, stream=stream)
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.provider == "anthropic"
    assert info.value.model == "claude-sonnet-4-5"


def test_transient_errors_say_so() -> None:
    overloaded = error_from_response(529, {}, b"", model="m", now=0.0)
    too_long = error_from_response(
        400, {}, (FIXTURES / "anthropic_error_context_length.json").read_bytes(), model="m", now=0
    )
    assert overloaded.transient is True
    assert isinstance(too_long, ContextLengthExceeded)
    assert too_long.transient is False
    assert "208310 tokens > 200000 maximum" in str(too_long)
    assert isinstance(error_from_response(302, {}, b"", model="m", now=0.0), MalformedResponse)
    long = json.dumps(_body("api_error", "x" * 5000)).encode()
    assert len(str(error_from_response(500, {}, long, model="m", now=0.0))) < 400


# -- Retry-After -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "7", "anthropic-ratelimit-requests-reset": "2025-06-15T15:07:40Z"}, 7.0),
        ({"anthropic-ratelimit-requests-reset": "2025-06-15T15:07:40Z"}, 60.0),
        ({"anthropic-ratelimit-tokens-reset": "2025-06-15T15:06:42.5+00:00"}, 2.5),
        ({"anthropic-ratelimit-tokens-reset": "2025-06-15T17:06:45+02:00"}, 5.0),
        ({"anthropic-ratelimit-tokens-reset": "2025-06-15T15:06:43"}, 3.0),  # naive: UTC
        ({"anthropic-ratelimit-requests-reset": "2025-06-15T15:00:00Z"}, 0.0),  # already past
        (
            {
                "anthropic-ratelimit-requests-reset": "2025-06-15T15:07:40Z",
                "anthropic-ratelimit-requests-remaining": "12",
                "anthropic-ratelimit-input-tokens-reset": "2025-06-15T15:06:50Z",
                "anthropic-ratelimit-input-tokens-remaining": "0",
            },
            10.0,
        ),
        (
            {
                "anthropic-ratelimit-requests-reset": "2025-06-15T15:06:50Z",
                "anthropic-ratelimit-output-tokens-reset": "2025-06-15T15:07:10Z",
            },
            30.0,
        ),
        ({"anthropic-ratelimit-requests-reset": "soon"}, None),
        ({}, None),
    ],
)
async def test_retry_after_forms(
    server: ChaosServer, headers: dict[str, str], expected: float | None
) -> None:
    server.set_scenario(Step.error(429, headers=headers))
    async with model_for(server, clock=FakeClock(wall=WALL)) as model:
        with pytest.raises(ProviderRateLimited) as info:
            await model.complete(REQUEST)
    if expected is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after == pytest.approx(expected)


def test_reset_headers_are_matched_whatever_their_case() -> None:
    headers = {
        "Anthropic-RateLimit-Tokens-Reset": "2025-06-15T15:06:44Z",
        "Anthropic-RateLimit-Tokens-Remaining": "0",
        "Anthropic-RateLimit-Requests-Reset": "2025-06-15T15:08:00Z",
    }
    assert retry_after_from_anthropic(headers, now=WALL) == 4.0


# -- time limits (one test per kind: the transport is shared with every provider) -----------------


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose listen queue is full: new connections are never accepted (nor refused)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


async def test_connect_timeout(black_hole: int) -> None:
    clock = FakeClock()
    model = AnthropicModel(
        "m", base_url=f"http://127.0.0.1:{black_hole}", clock=clock, timeouts=ModelTimeouts()
    )
    task = asyncio.create_task(model.complete(REQUEST))
    await turns()
    clock.advance(10.5)
    with pytest.raises(ProviderTimeout) as info:
        await task
    assert (info.value.kind, info.value.timeout) == ("connect", 10.0)
    await model.aclose()


async def test_first_token_timeout_counts_until_text_not_until_message_start() -> None:
    # message_start, content_block_start and ping arrive at once; the text never does.
    async with ChaosServer(Step(text=TEXT, ttft=60.0), clock=FakeClock()) as server:
        clock = FakeClock()
        model = model_for(server, clock=clock, timeouts=ModelTimeouts(first_token=30))
        task = asyncio.create_task(collect(model))
        await received(server)
        await turns()
        clock.advance(29)
        await turns()
        assert not task.done()
        clock.advance(2)
        with pytest.raises(ProviderTimeout) as info:
            await task
        await model.aclose()
    assert (info.value.kind, info.value.timeout) == ("first_token", 30)


async def test_idle_timeout_interrupts_a_stalled_stream(server: ChaosServer) -> None:
    server.set_scenario(Step.stream_stall(2, TEXT))
    clock = FakeClock()
    delivered: list[str] = []

    async def consume(model: AnthropicModel) -> None:
        async for chunk in model.stream(REQUEST):
            delivered.append(chunk.text)

    model = model_for(server, clock=clock, timeouts=ModelTimeouts(first_token=60, idle=5))
    task = asyncio.create_task(consume(model))
    for _ in range(10_000):
        if len(delivered) == 2:
            break
        await asyncio.sleep(0)
    for _ in range(50):
        if task.done():
            break
        clock.advance(6)
        await turns(5)
    with pytest.raises(StreamInterrupted) as info:
        await task
    await model.aclose()
    assert delivered == PIECES[:2]
    assert info.value.delivered_text == "Breakers stop "
    assert isinstance(info.value.__cause__, ProviderTimeout)
    assert info.value.__cause__.kind == "idle"


async def test_total_timeout(server: ChaosServer) -> None:
    server.set_scenario(Step.stall())
    clock = FakeClock()
    model = model_for(server, clock=clock, timeouts=ModelTimeouts(first_token=None, total=120))
    task = asyncio.create_task(model.complete(REQUEST))
    await received(server)
    clock.advance(121)
    with pytest.raises(ProviderTimeout) as info:
        await task
    await model.aclose()
    assert info.value.kind == "total"


# -- stream rules ----------------------------------------------------------------------------------


async def test_one_bad_event_is_skipped_counted_and_the_answer_completes(
    server: ChaosServer, bus: EventBus
) -> None:
    skipped: list[StreamEventSkipped] = []
    bus.subscribe(skipped.append, StreamEventSkipped)
    server.set_scenario(Step.bad_event(3, TEXT))
    async with model_for(server, bus=bus, name="claude") as model:
        chunks = await collect(model)
    assert "".join(c.text for c in chunks) == TEXT
    assert chunks[-1].finish_reason == "stop"
    assert [(e.source, e.model, e.position) for e in skipped] == [
        ("claude", "claude-sonnet-4-5", 6)  # message_start, block start, ping, three deltas
    ]
    assert "not JSON" in skipped[0].reason


async def test_a_stop_reason_without_message_stop_is_complete(server: ChaosServer) -> None:
    server.set_scenario(Step.no_done(TEXT))
    async with model_for(server) as model:
        chunks = await collect(model)
    assert "".join(c.text for c in chunks) == TEXT
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None


async def test_no_stop_reason_is_a_cut_not_an_answer(server: ChaosServer) -> None:
    server.set_scenario(Step.no_finish(TEXT))
    async with model_for(server) as model:
        with pytest.raises(StreamInterrupted) as info:
            await collect(model)
    assert info.value.delivered_text == TEXT
    assert info.value.delivered_chunks == len(PIECES)
    assert info.value.__cause__ is None


async def test_a_cut_stream_says_what_was_delivered(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.cut(3, TEXT), Step.cut(0, TEXT)))
    async with model_for(server) as model:
        with pytest.raises(StreamInterrupted) as info:
            await collect(model)
        with pytest.raises(ProviderConnectionError):
            await collect(model)  # cut before any text: nothing to continue
    assert info.value.delivered_text == "".join(PIECES[:3])
    assert isinstance(info.value.__cause__, ProviderConnectionError)
    assert info.value.transient is True


@pytest.mark.parametrize(
    ("step_finish", "expected"),
    [
        ("length", "length"),  # the chaos server says max_tokens
        ("stop_sequence", "stop"),
        ("content_filter", "content_filter"),  # the chaos server says refusal
        ("pause_turn", "length"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_stop_reasons_over_the_wire(
    server: ChaosServer, step_finish: str, expected: str, stream: bool
) -> None:
    server.set_scenario(Step(text="partial", finish_reason=step_finish))
    async with model_for(server) as model:
        _, _, finish, _ = await ask(model, stream=stream)
    assert finish == expected


@pytest.mark.parametrize(
    ("reason", "tools", "expected"),
    [
        ("end_turn", False, "stop"),
        ("stop_sequence", False, "stop"),
        ("max_tokens", False, "length"),
        ("model_context_window_exceeded", False, "length"),
        ("pause_turn", False, "length"),
        ("tool_use", True, "tool_calls"),
        ("end_turn", True, "tool_calls"),
        ("refusal", False, "content_filter"),
        (None, False, "stop"),
        ("something_new", False, "stop"),
    ],
)
def test_stop_reasons_are_normalised(reason: str | None, tools: bool, expected: str) -> None:
    assert normalise_stop(reason, has_tool_calls=tools) == expected


@contextlib.asynccontextmanager
async def raw_server(body: bytes, content_type: str, *, cut: bool = False) -> AsyncIterator[str]:
    """A server that answers every ``/v1/messages`` request with the same bytes.

    ``cut``: close the connection after the bytes instead of ending the response.
    """

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not cut:
            return web.Response(body=body, headers={"Content-Type": content_type})
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await response.write(body)
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def sse(events: list[dict[str, Any]]) -> bytes:
    """Documented stream events (``{"event": ..., "data": ...}``) as the bytes on the wire."""
    return b"".join(
        f"event: {e['event']}\ndata: {json.dumps(e['data'])}\n\n".encode() for e in events
    )


def fixture_events(name: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads((FIXTURES / name).read_text())
    return events


async def stream_bytes(
    body: bytes, content_type: str = "text/event-stream", *, cut: bool = False
) -> list[StreamChunk]:
    async with (
        raw_server(body, content_type, cut=cut) as url,
        AnthropicModel("claude", base_url=url, timeouts=FAST) as model,
    ):
        return await collect(model)


async def test_an_error_event_after_text_interrupts_the_stream() -> None:
    with pytest.raises(StreamInterrupted) as info:
        await stream_bytes(sse(fixture_events("anthropic_stream_error.json")))
    assert info.value.delivered_text == "The first half"
    cause = info.value.__cause__
    assert isinstance(cause, ProviderUnavailable)  # what overloaded_error (a 529) stands for
    assert cause.status_code is None  # the HTTP status was 200
    assert cause.transient is True
    assert "Overloaded" in str(cause)


@pytest.mark.parametrize(
    ("kind", "message", "error"),
    [
        ("overloaded_error", "Overloaded", ProviderUnavailable),
        ("rate_limit_error", "Slow down", ProviderRateLimited),
        ("invalid_request_error", "prompt is too long: 9 > 8", ContextLengthExceeded),
        ("brand_new_error", "?", ProviderUnavailable),
    ],
)
async def test_an_error_event_before_any_text_is_the_error_itself(
    kind: str, message: str, error: type[ProviderError]
) -> None:
    start, *_ = fixture_events("anthropic_stream_text.json")
    failure = {"event": "error", "data": _body(kind, message)}
    with pytest.raises(error) as info:
        await stream_bytes(sse([start, failure]))
    assert type(info.value) is error
    assert message in str(info.value)


async def test_a_content_block_mid_stream_is_never_dressed_as_an_interruption() -> None:
    # A StreamInterrupted would invite a fallback chain to continue the answer elsewhere.
    start, block, _, first, *_ = fixture_events("anthropic_stream_text.json")
    failure = {
        "event": "error",
        "data": _body("invalid_request_error", "Output blocked by content filtering policy"),
    }
    with pytest.raises(ContentPolicyViolation) as info:
        await stream_bytes(sse([start, block, first, failure]))
    assert info.value.transient is False


async def test_message_stop_without_a_stop_reason_is_a_cut() -> None:
    events = fixture_events("anthropic_stream_text.json")
    without_delta = [e for e in events if e["event"] != "message_delta"]
    with pytest.raises(StreamInterrupted) as info:
        await stream_bytes(sse(without_delta))
    assert info.value.delivered_text == "Circuit breakers fail fast."


async def test_a_connection_lost_after_the_stop_reason_is_a_complete_answer() -> None:
    events = fixture_events("anthropic_stream_text.json")
    chunks = await stream_bytes(sse(events[:-1]), cut=True)  # no message_stop, then a reset
    assert "".join(c.text for c in chunks) == "Circuit breakers fail fast."
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(input_tokens=1049, output_tokens=7, cached_tokens=1024)


async def test_a_stream_that_ends_before_any_answer_is_a_connection_error() -> None:
    start, *_ = fixture_events("anthropic_stream_text.json")
    with pytest.raises(ProviderConnectionError, match="before any part of the answer"):
        await stream_bytes(sse([start]))


async def test_a_server_that_ignores_stream_true_still_streams() -> None:
    body = (FIXTURES / "anthropic_message_tool_use.json").read_bytes()
    chunks = await stream_bytes(body, "application/json")
    assert [c.text for c in chunks] == ["I'll check the weather in Lisbon.", ""]
    assert chunks[-1].finish_reason == "tool_calls"
    assert [c.name for c in chunks[-1].tool_calls] == ["get_weather", "get_local_time"]


async def test_an_event_that_is_not_a_stream_event_is_skipped(bus: EventBus) -> None:
    skipped: list[StreamEventSkipped] = []
    bus.subscribe(skipped.append, StreamEventSkipped)
    events = fixture_events("anthropic_stream_text.json")
    body = sse(events[:3]) + b"data: [1, 2]\n\n" + b"data: \xff\n\n" + sse(events[3:])
    async with (
        raw_server(body, "text/event-stream") as url,
        AnthropicModel("claude", base_url=url, bus=bus) as model,
    ):
        chunks = await collect(model)
    assert "".join(c.text for c in chunks) == "Circuit breakers fail fast."
    assert sorted(e.reason for e in skipped) == [
        "an event that is not UTF-8",
        "an event that is not a Messages stream event",
    ]


# -- the documented wire format, from hand-written fixtures ----------------------------------------


def test_fixture_message_with_thinking_text_and_tool_use() -> None:
    data = json.loads((FIXTURES / "anthropic_message_tool_use.json").read_text())
    completion = parse_message(data, model="claude-sonnet-4-5")
    assert completion.model == "claude-sonnet-4-5-20250929"
    assert completion.id == "msg_01Aq9w938a90dw8q"
    assert completion.text == "I'll check the weather in Lisbon."  # thinking is left out
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall(
            id="toolu_01A09q90qw90lq917835lq9",
            name="get_weather",
            arguments='{"city": "Lisbon", "unit": "celsius"}',
        ),
        ToolCall(
            id="toolu_01B7x2vjx8mPq4Yexample", name="get_local_time", arguments='{"city": "Lisbon"}'
        ),
    )
    # input_tokens (112) + cache writes (300) + cache reads (2048); the reads are the cached part.
    assert completion.usage == Usage(input_tokens=2460, output_tokens=96, cached_tokens=2048)


def replay(name: str) -> list[StreamChunk]:
    """Feed a documented stream through the parser and assembler, as the provider does."""
    parser = SSEParser()
    assembler = MessageAssembler("asked-for")
    chunks: list[StreamChunk] = []
    for event in parser.feed(sse(fixture_events(name))):
        chunk = assembler.accept(json.loads(event.data), event.event)
        if chunk is not None:
            chunks.append(chunk)
        if assembler.stopped:
            chunks.append(assembler.final())
    return chunks


def test_fixture_stream_of_text_with_cache_reads() -> None:
    chunks = replay("anthropic_stream_text.json")
    assert [c.text for c in chunks] == ["Circuit", " breakers", " fail fast.", ""]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].model == "claude-haiku-4-5-20251001"
    assert chunks[-1].usage == Usage(input_tokens=1049, output_tokens=7, cached_tokens=1024)


def test_fixture_stream_of_text_then_two_tool_uses() -> None:
    chunks = replay("anthropic_stream_tool_use.json")
    assert [c.text for c in chunks] == ["Let me look that up.", ""]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].tool_calls == (
        ToolCall(
            id="toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            name="get_weather",
            arguments='{"city": "Oslo", "unit": "celsius"}',
        ),
        ToolCall(
            id="toolu_01Vq8pHxY2Lz8example", name="get_local_time", arguments='{"city": "Oslo"}'
        ),
    )
    assert chunks[-1].usage == Usage(input_tokens=472, output_tokens=89)


@pytest.mark.parametrize("name", ["anthropic_stream_text.json", "anthropic_stream_tool_use.json"])
async def test_fixture_streams_over_http_match_the_pure_replay(name: str) -> None:
    chunks = await stream_bytes(sse(fixture_events(name)))
    assert chunks == replay(name)


def test_lenient_shapes() -> None:
    assembler = MessageAssembler("m")
    # input_json_delta for a block that never started, and a tool_use whose input came whole.
    assembler.accept(
        {
            "type": "content_block_delta",
            "delta": {"type": "input_json_delta", "partial_json": '{"a":1}'},
        }
    )
    assembler.accept(
        {
            "type": "content_block_start",
            "index": 5,
            "content_block": {"type": "tool_use", "id": "", "name": "g", "input": {"b": 2}},
        }
    )
    assembler.accept(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hm"},
        }
    )
    assembler.accept({"type": "brand_new_event"})
    assembler.accept({"delta": {"stop_reason": "end_turn"}}, "message_delta")  # no "type": by event
    final = assembler.final()
    assert final.tool_calls == (
        ToolCall(id="toolu_0", name="", arguments='{"a": 1}'),
        ToolCall(id="toolu_5", name="g", arguments='{"b": 2}'),
    )
    assert final.finish_reason == "tool_calls"
    assert final.usage is None
    # Text in the block start itself; tool input that is not JSON is passed on as written.
    other = MessageAssembler("m")
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    chunk = other.accept({**start, "content_block": {"type": "text", "text": "Hi"}})
    assert chunk is not None
    assert chunk.text == "Hi"
    other.accept(
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"cut'},
        }
    )
    assert other.tool_calls()[0].arguments == '{"cut'
    assert parse_usage({"input_tokens": True, "output_tokens": -3}) == Usage()
    assert parse_usage(None) == Usage()
    with pytest.raises(MalformedResponse):
        parse_message({"type": "message"}, model="m")
    with pytest.raises(MalformedResponse):
        parse_message({"content": [{"type": "text", "text": 7}]}, model="m")


# -- configuration ---------------------------------------------------------------------------------


def test_the_anthropic_endpoint_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-sonnet-4-5")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    model = AnthropicModel("claude-sonnet-4-5")
    assert model.url == "https://api.anthropic.com/v1/messages"
    assert model.name == model.model == "claude-sonnet-4-5"
    assert model.timeouts == ModelTimeouts()
    assert "api.anthropic.com" in repr(model)


async def test_version_key_from_the_environment_and_extra_headers_are_sent(
    server: ChaosServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    async with AnthropicModel(
        "claude",
        base_url=server.url + "/",
        anthropic_version="2024-01-01",
        headers={"anthropic-beta": "prompt-caching-2024-07-31"},
        name="primary-claude",
    ) as model:
        await model.complete(REQUEST)
    assert model.name == "primary-claude"
    headers = server.requests[-1].headers
    assert headers["x-api-key"] == "sk-ant-env"
    assert headers["anthropic-version"] == "2024-01-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"base_url": "ftp://example.com"}, "base_url"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_tokens_default": 0}, "max_tokens_default"),
        ({"anthropic_version": " "}, "anthropic_version"),
        ({"timeouts": 30}, "timeouts"),
    ],
)
def test_bad_options_name_themselves(options: dict[str, Any], option: str) -> None:
    options.setdefault("base_url", "http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match=option):
        AnthropicModel("m", **options)
    with pytest.raises(ConfigurationError, match="model"):
        AnthropicModel("", base_url="http://127.0.0.1:1")
