"""OpenAIModel over real HTTP against the chaos server: wire format, errors, limits, pooling."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import warnings
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
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
from bastion.models._openai import (
    StreamAssembler,
    encode_request,
    error_from_response,
    normalise_finish,
    parse_completion,
)
from bastion.models._sse import SSEParser, StreamEventSkipped
from bastion.models._transport import parse_duration, retry_after_from_headers
from bastion.testing import ChaosServer, FakeClock, Scenario, Step

FIXTURES = Path(__file__).parent / "fixtures"
REQUEST = ChatRequest.of("What is a circuit breaker?", system="Answer in one line.")
TEXT = "Breakers stop calls to a failing service."
PIECES = ["Breakers ", "stop ", "calls ", "to ", "a ", "failing ", "service."]
FAST = ModelTimeouts(connect=1.0, first_token=0.1, idle=0.1, total=5.0)
WEATHER = ToolCall(id="call_w", name="get_weather", arguments='{"city": "Lisbon", "days": 3}')


@pytest.fixture
async def server() -> AsyncIterator[ChaosServer]:
    async with ChaosServer(Step.ok(TEXT)) as chaos:
        yield chaos


def model_for(server: ChaosServer, **options: Any) -> OpenAIModel:
    options.setdefault("api_key", "sk-test")
    options.setdefault("timeouts", FAST)
    return OpenAIModel("gpt-4o", base_url=server.url + "/v1", **options)


async def collect(model: OpenAIModel, request: ChatRequest = REQUEST) -> list[StreamChunk]:
    return [chunk async for chunk in model.stream(request)]


async def ask(model: OpenAIModel, *, stream: bool) -> object:
    """One call, streamed or not."""
    if stream:
        return await collect(model)
    return await model.complete(REQUEST)


async def received(server: ChaosServer, count: int = 1) -> None:
    """Let the loop run until the server has the request (no sleeping: each turn only yields)."""
    while server.count() < count:  # noqa: ASYNC110 - polling another party's record
        await asyncio.sleep(0)


# -- the happy path --------------------------------------------------------------------------------


async def test_complete_returns_text_usage_and_timing(server: ChaosServer) -> None:
    async with model_for(server) as model:
        assert isinstance(model, ChatModel)
        completion = await model.complete(REQUEST)
    assert completion.text == TEXT
    assert completion.finish_reason == "stop"
    assert completion.model == "gpt-4o"
    assert completion.id is not None
    assert completion.id.startswith("chatcmpl-")
    prompt_chars = len("What is a circuit breaker?") + len("Answer in one line.")
    assert completion.usage == Usage(input_tokens=(prompt_chars + 3) // 4, output_tokens=7)
    assert completion.ttft_s is not None
    assert 0 < completion.ttft_s <= completion.latency_s
    sent = server.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.stream is False
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert sent.body == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "What is a circuit breaker?"},
        ],
    }


async def test_stream_yields_text_then_a_final_chunk_with_usage(server: ChaosServer) -> None:
    async with model_for(server) as model:
        chunks = await collect(model)
    assert [c.text for c in chunks[:-1]] == PIECES
    final = chunks[-1]
    assert final.text == ""
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.output_tokens == 7
    assert all(c.finish_reason is None for c in chunks[:-1])
    sent = server.requests[-1].body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert server.requests[-1].headers["Accept"] == "text/event-stream"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_tool_calls_arrive_whole(server: ChaosServer, stream: bool) -> None:
    other = ToolCall(id="call_t", name="get_time", arguments='{"zone": "Europe/Lisbon"}')
    server.set_scenario(Step.ok("", tool_calls=[WEATHER, other]))
    async with model_for(server) as model:
        if stream:
            chunks = await collect(model)
            assert len(chunks) == 1  # no text: only the final chunk
            calls, finish = chunks[0].tool_calls, chunks[0].finish_reason
        else:
            completion = await model.complete(REQUEST)
            calls, finish = completion.tool_calls, completion.finish_reason
            assert completion.text == ""
    assert calls == (WEATHER, other)
    assert finish == "tool_calls"
    assert calls[0].parsed_arguments() == {"city": "Lisbon", "days": 3}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_cached_prompt_tokens_are_reported(server: ChaosServer, stream: bool) -> None:
    server.set_scenario(Step(text="ok", cached_tokens=4))
    async with model_for(server) as model:
        if stream:
            usage = (await collect(model))[-1].usage
        else:
            usage = (await model.complete(REQUEST)).usage
    assert usage is not None
    assert usage.cached_tokens == 4
    assert usage.input_tokens >= 4


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_two_megabyte_prompt_goes_through(server: ChaosServer, stream: bool) -> None:
    prompt = "word " * 400_000  # over aiohttp's 1 MiB limits on both ends
    async with model_for(server) as model:
        if stream:
            chunks = [chunk async for chunk in model.stream(ChatRequest.of(prompt))]
            text = "".join(c.text for c in chunks)
        else:
            text = (await model.complete(ChatRequest.of(prompt))).text
    assert text == TEXT
    sent = server.requests[-1]
    assert sent.body["messages"][0]["content"] == prompt
    assert sent.headers["Content-Type"] == "application/json"


async def test_request_options_reach_the_wire(server: ChaosServer) -> None:
    schema = {"title": "verdict", "type": "object", "properties": {"ok": {"type": "boolean"}}}
    request = ChatRequest(
        messages=(
            Message.user("weather?"),
            Message.assistant("", tool_calls=(WEATHER,)),
            Message.tool("call_w", '{"temp": 21}', name="get_weather"),
            Message("user", "and tomorrow?", name="ana"),
        ),
        tools=(ToolSpec(name="get_weather", description="Weather by city"), ToolSpec(name="x")),
        tool_choice="get_weather",
        temperature=0.2,
        max_tokens=64,
        stop=("\n\n",),
        response_format=schema,
        model="gpt-4o-mini",
    )
    async with model_for(server, max_tokens_param="max_completion_tokens") as model:
        completion = await model.complete(request)
    assert completion.model == "gpt-4o-mini"
    body = server.requests[-1].body
    assert server.requests[-1].model == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": WEATHER.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": '{"temp": 21}'},
        {"role": "user", "content": "and tomorrow?", "name": "ana"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather by city",
                "parameters": {"type": "object", "properties": {}},
            },
        },
        {
            "type": "function",
            "function": {"name": "x", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["temperature"] == 0.2
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body
    assert body["stop"] == ["\n\n"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": schema},
    }


@pytest.mark.parametrize(
    ("given", "wire"),
    [
        ("text", {"type": "text"}),
        ("json", {"type": "json_object"}),
        (
            {"type": "object"},
            {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": {"type": "object"}},
            },
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "strict": True}},
            {"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "strict": True}},
        ),
    ],
)
def test_response_format_forms(given: Any, wire: dict[str, Any]) -> None:
    body = json.loads(
        encode_request(REQUEST.replace(response_format=given), model="m", stream=False)
    )
    assert body["response_format"] == wire


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_keywords_pass_through(choice: str) -> None:
    body = json.loads(encode_request(REQUEST.replace(tool_choice=choice), model="m", stream=True))
    assert body["tool_choice"] == choice


def test_an_unknown_response_format_is_a_configuration_error() -> None:
    request = REQUEST.replace(response_format="yaml")
    with pytest.raises(ConfigurationError, match="response_format"):
        encode_request(request, model="m", stream=False)


# -- error mapping ---------------------------------------------------------------------------------


ERRORS = [
    pytest.param(Step.rate_limited(2), ProviderRateLimited, 429, id="429"),
    pytest.param(Step.unavailable(500), ProviderUnavailable, 500, id="500"),
    pytest.param(Step.unavailable(502), ProviderUnavailable, 502, id="502"),
    pytest.param(Step.unavailable(503), ProviderUnavailable, 503, id="503"),
    pytest.param(Step.unavailable(529), ProviderUnavailable, 529, id="529"),
    pytest.param(Step.error(408), ProviderUnavailable, 408, id="408"),
    pytest.param(Step.context_length_exceeded(), ContextLengthExceeded, 400, id="context"),
    pytest.param(
        Step.error(
            400,
            body={
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens.",
            },
        ),
        ContextLengthExceeded,
        400,
        id="context-by-message",
    ),
    pytest.param(Step.content_filtered(), ContentPolicyViolation, 400, id="content-filter"),
    pytest.param(
        Step.error(400, error_code="content_policy_violation"),
        ContentPolicyViolation,
        400,
        id="content-policy",
    ),
    pytest.param(Step.unauthorized(), AuthenticationFailed, 401, id="401"),
    pytest.param(Step.error(403), AuthenticationFailed, 403, id="403"),
    pytest.param(Step.error(404, error_code="model_not_found"), ProviderBadRequest, 404, id="404"),
    pytest.param(Step.error(422, body="not json at all"), ProviderBadRequest, 422, id="422-text"),
    pytest.param(
        Step.error(429, error_code="insufficient_quota"), ProviderBadRequest, 429, id="quota"
    ),
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
    assert info.value.provider == "openai"
    assert info.value.model == "gpt-4o"


async def test_transient_errors_say_so(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.unavailable(503), Step.context_length_exceeded()))
    async with model_for(server) as model:
        with pytest.raises(ProviderUnavailable) as down:
            await model.complete(REQUEST)
        with pytest.raises(ContextLengthExceeded) as too_long:
            await model.complete(REQUEST)
    assert down.value.transient is True
    assert too_long.value.transient is False


def test_the_documented_context_length_error_body() -> None:
    body = (FIXTURES / "openai_error_context_length.json").read_bytes()
    error = error_from_response(400, {}, body, model="gpt-4o", now=0.0)
    assert isinstance(error, ContextLengthExceeded)
    assert "maximum context length is 128000" in str(error)


def test_other_statuses_are_malformed() -> None:
    error = error_from_response(302, {}, b"", model="m", now=0.0)
    assert isinstance(error, MalformedResponse)
    assert error.status_code == 302


def test_a_long_error_message_is_clipped() -> None:
    body = json.dumps({"error": {"message": "x" * 5000}}).encode()
    error = error_from_response(400, {}, body, model="m", now=0.0)
    assert len(str(error)) < 400


# -- Retry-After -----------------------------------------------------------------------------------

WALL = 1_750_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": formatdate(WALL + 30, usegmt=True)}, 30.0),
        ({"Retry-After": formatdate(WALL - 30, usegmt=True)}, 0.0),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, 360.0),
        (
            {
                "x-ratelimit-reset-requests": "20ms",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "6m0s",
                "x-ratelimit-remaining-tokens": "1200",
            },
            0.02,
        ),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"Retry-After": "whenever"}, None),
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
    assert (
        info.value.retry_after == pytest.approx(expected)
        if expected is not None
        else (info.value.retry_after is None)
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1.5", 1.5),
        ("250us", 0.00025),
        ("3µs", 3e-6),
        ("2h", 7200.0),
        ("", None),
        ("5 parsecs", None),
        ("m", None),
        ("1.2.3s", None),
        ("-1", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_reset_headers_prefer_the_exhausted_limit() -> None:
    headers = {
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-reset-tokens": "500ms",
        "x-ratelimit-remaining-tokens": "0",
    }
    assert retry_after_from_headers(headers, now=WALL) == 0.5


# -- time limits -----------------------------------------------------------------------------------


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
    limits = ModelTimeouts(connect=0.05, first_token=5, idle=5, total=5)
    async with OpenAIModel(
        "m", base_url=f"http://127.0.0.1:{black_hole}/v1", timeouts=limits
    ) as model:
        with pytest.raises(ProviderTimeout) as info:
            await model.complete(REQUEST)
    assert info.value.kind == "connect"
    assert info.value.timeout == 0.05
    assert info.value.transient is True


async def test_a_closed_port_is_a_connection_error() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    async with OpenAIModel("m", base_url=f"http://127.0.0.1:{port}/v1", timeouts=FAST) as model:
        with pytest.raises(ProviderConnectionError, match="could not connect"):
            await model.complete(REQUEST)
        with pytest.raises(ProviderConnectionError):
            await collect(model)


async def test_first_token_timeout_when_stream_headers_never_come(server: ChaosServer) -> None:
    server.set_scenario(Step.stall())
    async with model_for(server) as model:
        with pytest.raises(ProviderTimeout) as info:
            await collect(model)
    assert info.value.kind == "first_token"
    assert info.value.timeout == 0.1


async def test_a_non_streamed_answer_may_take_longer_than_first_token() -> None:
    # Its headers come only once the whole answer is written: only `total` bounds the wait.
    clock = FakeClock()
    limits = ModelTimeouts(first_token=30, idle=30, total=600)
    async with (
        ChaosServer(Step.ok(TEXT, latency=45), clock=clock) as server,
        model_for(server, clock=clock, timeouts=limits) as model,
    ):
        task = asyncio.create_task(model.complete(REQUEST))
        await received(server)
        clock.advance(45)
        completion = await task
    assert completion.text == TEXT
    assert completion.latency_s == 45


async def test_a_non_streamed_call_that_never_answers_hits_the_total_limit() -> None:
    clock = FakeClock()
    limits = ModelTimeouts(first_token=30, idle=30, total=120)
    async with (
        ChaosServer(Step.stall(), clock=clock) as server,
        model_for(server, clock=clock, timeouts=limits) as model,
    ):
        task = asyncio.create_task(model.complete(REQUEST))
        await received(server)
        clock.advance(119)
        for _ in range(5):
            await asyncio.sleep(0)
        stalled = not task.done()
        clock.advance(2)
        with pytest.raises(ProviderTimeout) as info:
            await task
    assert stalled
    assert info.value.kind == "total"
    assert info.value.timeout == 120


async def test_first_token_timeout_when_a_stream_says_nothing_after_its_headers(
    server: ChaosServer,
) -> None:
    server.set_scenario(Step(text=TEXT, ttft=5.0))
    async with model_for(server) as model:
        with pytest.raises(ProviderTimeout) as info:
            await collect(model)
    assert info.value.kind == "first_token"


async def test_idle_timeout_interrupts_a_stalled_stream(server: ChaosServer) -> None:
    server.set_scenario(Step.stream_stall(2, TEXT))
    delivered: list[str] = []

    async def consume(model: OpenAIModel) -> None:
        async for chunk in model.stream(REQUEST):
            delivered.append(chunk.text)

    async with model_for(server) as model:
        with pytest.raises(StreamInterrupted) as info:
            await consume(model)
    assert delivered == PIECES[:2]
    assert info.value.delivered_text == "Breakers stop "
    assert info.value.delivered_chunks == 2
    cause = info.value.__cause__
    assert isinstance(cause, ProviderTimeout)
    assert cause.kind == "idle"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_total_timeout(server: ChaosServer, stream: bool) -> None:
    server.set_scenario(Step(text=TEXT, chunk_delay=0.03, latency=0.0 if stream else 0.3))
    limits = ModelTimeouts(first_token=2, idle=2, total=0.1)
    async with model_for(server, timeouts=limits) as model:
        if stream:
            with pytest.raises(StreamInterrupted) as info:
                await collect(model)
            error = info.value.__cause__
        else:
            with pytest.raises(ProviderTimeout) as timeout:
                await model.complete(REQUEST)
            error = timeout.value
    assert isinstance(error, ProviderTimeout)
    assert error.kind == "total"


async def test_limits_run_on_the_injected_clock(server: ChaosServer) -> None:
    clock = FakeClock()
    server.set_scenario(Step.stall())
    model = model_for(server, clock=clock, timeouts=ModelTimeouts(first_token=30))
    task = asyncio.create_task(collect(model))
    await received(server)
    clock.advance(29.5)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1)
    with pytest.raises(ProviderTimeout) as info:
        await task
    assert info.value.kind == "first_token"
    assert info.value.timeout == 30
    await model.aclose()


async def test_a_slow_consumer_is_not_an_idle_provider(server: ChaosServer) -> None:
    clock = FakeClock()
    limits = ModelTimeouts(first_token=5, idle=1, total=None)
    async with model_for(server, clock=clock, timeouts=limits) as model:
        chunks = []
        async for chunk in model.stream(REQUEST):
            chunks.append(chunk)
            clock.advance(10)  # the consumer spends 10 s on every chunk
    assert "".join(c.text for c in chunks) == TEXT
    assert chunks[-1].finish_reason == "stop"


async def test_the_total_limit_includes_the_consumers_time(server: ChaosServer) -> None:
    server.set_scenario(Step(text=TEXT, chunk_delay=0.01))  # one piece per read
    clock = FakeClock()
    limits = ModelTimeouts(first_token=5, idle=1, total=15)

    async def slow_consumer(model: OpenAIModel) -> None:
        async for _ in model.stream(REQUEST):
            clock.advance(10)

    async with model_for(server, clock=clock, timeouts=limits) as model:
        with pytest.raises(StreamInterrupted) as info:
            await slow_consumer(model)
    assert 2 <= info.value.delivered_chunks < len(PIECES)
    assert isinstance(info.value.__cause__, ProviderTimeout)
    assert info.value.__cause__.kind == "total"


async def test_a_cancelled_caller_is_not_a_timeout(server: ChaosServer) -> None:
    server.set_scenario(Step.stall())
    async with model_for(server, timeouts=ModelTimeouts(first_token=30)) as model:
        task = asyncio.create_task(model.complete(REQUEST))
        await received(server)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_model_timeouts_validate() -> None:
    assert ModelTimeouts(connect=None, total=None).connect is None
    assert ModelTimeouts(idle=2).idle == 2.0
    bad_values: list[tuple[str, Any]] = [
        ("connect", 0),
        ("first_token", -1),
        ("idle", True),
        ("total", "60"),
    ]
    for option, bad in bad_values:
        with pytest.raises(ConfigurationError, match=f"ModelTimeouts.{option}"):
            ModelTimeouts(**{option: bad})


# -- stream rules ----------------------------------------------------------------------------------


async def test_one_bad_event_is_skipped_counted_and_the_answer_completes(
    server: ChaosServer, bus: EventBus
) -> None:
    skipped: list[StreamEventSkipped] = []
    bus.subscribe(skipped.append, StreamEventSkipped)
    server.set_scenario(Step.bad_event(3, TEXT))
    async with model_for(server, bus=bus, name="primary") as model:
        chunks = await collect(model)
    assert "".join(c.text for c in chunks) == TEXT
    assert chunks[-1].finish_reason == "stop"
    assert len(skipped) == 1
    assert skipped[0].source == "primary"
    assert skipped[0].model == "gpt-4o"
    assert skipped[0].position == 4  # the role chunk and three pieces came before it
    assert "not JSON" in skipped[0].reason


async def test_missing_done_after_a_finish_reason_is_complete(server: ChaosServer) -> None:
    server.set_scenario(Step.no_done(TEXT))
    async with model_for(server) as model:
        chunks = await collect(model)
    assert "".join(c.text for c in chunks) == TEXT
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None


async def test_no_finish_reason_is_a_cut_not_an_answer(server: ChaosServer) -> None:
    server.set_scenario(Step.no_finish(TEXT))
    async with model_for(server) as model:
        with pytest.raises(StreamInterrupted) as info:
            await collect(model)
    assert info.value.delivered_text == TEXT
    assert info.value.delivered_chunks == len(PIECES)
    assert info.value.__cause__ is None


async def test_a_cut_stream_says_what_was_delivered(server: ChaosServer) -> None:
    server.set_scenario(Step.cut(3, TEXT))
    async with model_for(server) as model:
        with pytest.raises(StreamInterrupted) as info:
            await collect(model)
    assert info.value.delivered_text == "".join(PIECES[:3])
    assert isinstance(info.value.__cause__, ProviderConnectionError)
    assert info.value.transient is True


async def test_a_cut_before_any_text_is_a_plain_connection_error(server: ChaosServer) -> None:
    server.set_scenario(Step.cut(0, TEXT))
    async with model_for(server) as model:
        with pytest.raises(ProviderConnectionError):
            await collect(model)


async def test_a_cut_after_the_last_piece_but_before_the_finish_is_a_cut(
    server: ChaosServer,
) -> None:
    server.set_scenario(Step.cut(len(PIECES), TEXT))
    async with model_for(server) as model:
        with pytest.raises(StreamInterrupted) as info:
            await collect(model)
    assert info.value.delivered_text == TEXT


@contextlib.asynccontextmanager
async def raw_server(body: bytes, content_type: str, *, cut: bool = False) -> AsyncIterator[str]:
    """A server that answers every request with the same bytes (recorded wire data).

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
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def chunk_event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def stream_from(
    body: bytes, *, cut: bool = False, bus: EventBus | None = None
) -> list[StreamChunk]:
    async with (
        raw_server(body, "text/event-stream", cut=cut) as url,
        OpenAIModel("m", base_url=url, bus=bus) as model,
    ):
        return await collect(model)


async def test_a_cut_after_the_finish_reason_is_a_complete_answer() -> None:
    body = chunk_event({"content": "All done."}) + chunk_event({}, "stop")
    chunks = await stream_from(body, cut=True)
    assert [c.text for c in chunks] == ["All done.", ""]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is None


async def test_done_without_a_finish_reason_is_a_cut() -> None:
    body = chunk_event({"content": "Half"}) + b"data: [DONE]\n\n"
    with pytest.raises(StreamInterrupted) as info:
        await stream_from(body)
    assert info.value.delivered_text == "Half"


async def test_an_event_that_is_not_utf8_is_skipped(bus: EventBus) -> None:
    skipped: list[StreamEventSkipped] = []
    bus.subscribe(skipped.append, StreamEventSkipped)
    body = (
        chunk_event({"content": "one"})
        + b"data: \xff\xfe\n\n"
        + b"data: [1, 2]\n\n"  # JSON, but not a chunk
        + chunk_event({"content": " two"}, "stop")
    )
    chunks = await stream_from(body, bus=bus)
    assert "".join(c.text for c in chunks) == "one two"
    assert [event.reason for event in skipped] == [
        "an event that is not UTF-8",
        "an event that is not a chat completion chunk",
    ]


async def test_a_reply_that_is_not_http() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"SMTP READY\r\n\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with OpenAIModel("m", base_url=f"http://127.0.0.1:{port}/v1") as model:
            with pytest.raises(MalformedResponse, match="valid HTTP"):
                await model.complete(REQUEST)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_server_that_ignores_stream_true_still_streams() -> None:
    body = (FIXTURES / "openai_completion_tool_calls.json").read_bytes()
    async with raw_server(body, "application/json") as url, OpenAIModel("m", base_url=url) as model:
        chunks = await collect(model)
    assert len(chunks) == 1
    assert chunks[0].finish_reason == "tool_calls"
    assert [c.name for c in chunks[0].tool_calls] == ["get_weather", "get_local_time"]
    plain = json.dumps({"model": "m2", "choices": [{"message": {"content": "whole"}}]}).encode()
    async with (
        raw_server(plain, "application/json") as url,
        OpenAIModel("m", base_url=url) as model,
    ):
        chunks = await collect(model)
    assert [(c.text, c.finish_reason, c.model) for c in chunks] == [
        ("whole", None, "m2"),
        ("", "stop", "m2"),
    ]


async def test_a_mid_stream_error_event_interrupts(bus: EventBus) -> None:
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Half an"},"finish_reason":null}]}\n\n'
        b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n'
    )
    async with (
        raw_server(body, "text/event-stream") as url,
        OpenAIModel("m", base_url=url) as model,
    ):
        with pytest.raises(StreamInterrupted) as info:
            await collect(model)
    assert info.value.delivered_text == "Half an"
    assert isinstance(info.value.__cause__, ProviderUnavailable)


ERROR_EVENTS = [
    pytest.param(
        {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
        ProviderRateLimited,
        id="rate-limit",
    ),
    pytest.param(
        {"message": "Slow down", "type": "rate_limit_error"}, ProviderRateLimited, id="rl-type"
    ),
    pytest.param(
        {"message": "Overloaded", "type": "overloaded_error"}, ProviderUnavailable, id="ov"
    ),
    pytest.param(
        {"message": "The server had an error", "type": "server_error"},
        ProviderUnavailable,
        id="server",
    ),
    pytest.param(
        {"message": "Bad 'temperature'", "type": "invalid_request_error", "code": None},
        ProviderBadRequest,
        id="invalid-request",
    ),
    pytest.param(
        {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        },
        ContextLengthExceeded,
        id="context-length",
    ),
    pytest.param(
        {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400},
        ProviderBadRequest,
        id="vllm-numeric-code",
    ),
    pytest.param(
        {"message": "filtered", "type": "invalid_request_error", "code": "content_filter"},
        ContentPolicyViolation,
        id="content",
    ),
    pytest.param({"message": "something odd"}, ProviderUnavailable, id="unknown"),
]


def error_event(error: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


@pytest.mark.parametrize(("error", "expected"), ERROR_EVENTS)
async def test_an_error_event_before_any_text_maps_by_its_code_and_type(
    error: dict[str, Any], expected: type[ProviderError]
) -> None:
    async with (
        raw_server(error_event(error), "text/event-stream") as url,
        OpenAIModel("m", base_url=url) as model,
    ):
        with pytest.raises(ProviderError) as info:
            await collect(model)
    assert type(info.value) is expected
    assert info.value.status_code is None  # the HTTP status was 200
    assert "mid-stream" in str(info.value)


@pytest.mark.parametrize(("error", "expected"), ERROR_EVENTS)
async def test_an_error_event_after_text_is_an_interruption_caused_by_it(
    error: dict[str, Any], expected: type[ProviderError]
) -> None:
    body = chunk_event({"content": "Half an"}) + error_event(error)
    async with (
        raw_server(body, "text/event-stream") as url,
        OpenAIModel("m", base_url=url) as model,
    ):
        with pytest.raises(StreamInterrupted) as info:
            await collect(model)
    assert info.value.delivered_text == "Half an"
    assert type(info.value.__cause__) is expected


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_filtered_empty_answer_is_a_content_policy_violation(
    server: ChaosServer, stream: bool
) -> None:
    server.set_scenario(Step(text="", finish_reason="content_filter"))
    async with model_for(server) as model:
        with pytest.raises(ContentPolicyViolation, match="content filter withheld") as info:
            await ask(model, stream=stream)
    assert info.value.transient is False


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_filtered_partial_answer_is_returned_as_filtered(
    server: ChaosServer, stream: bool
) -> None:
    server.set_scenario(Step(text="The first half", finish_reason="content_filter"))
    async with model_for(server) as model:
        if stream:
            chunks = await collect(model)
            text, finish = "".join(c.text for c in chunks), chunks[-1].finish_reason
        else:
            completion = await model.complete(REQUEST)
            text, finish = completion.text, completion.finish_reason
    assert text == "The first half"
    assert finish == "content_filter"


async def test_an_azure_filtered_answer_names_the_filtered_categories() -> None:
    safe = {"filtered": False, "severity": "safe"}
    body = {
        "id": "chatcmpl-azure",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": safe}}],
        "choices": [
            {
                "index": 0,
                "finish_reason": "content_filter",
                "message": {"role": "assistant", "content": None},
                "content_filter_results": {
                    "hate": safe,
                    "self_harm": safe,
                    "sexual": {"filtered": True, "severity": "medium"},
                    "violence": {"filtered": True, "severity": "high"},
                },
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12},
    }
    async with (
        raw_server(json.dumps(body).encode(), "application/json") as url,
        OpenAIModel("m", base_url=url) as model,
    ):
        with pytest.raises(ContentPolicyViolation, match=r"\(sexual, violence\)") as info:
            await model.complete(REQUEST)
    assert info.value.provider == "openai"


# -- recorded wire fixtures ------------------------------------------------------------------------


def test_fixture_completion_with_tool_calls() -> None:
    data = json.loads((FIXTURES / "openai_completion_tool_calls.json").read_text())
    completion = parse_completion(data, model="gpt-4o")
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall(
            id="call_weather_1", name="get_weather", arguments='{"city":"Lisbon","unit":"celsius"}'
        ),
        ToolCall(id="call_time_2", name="get_local_time", arguments='{"city":"Lisbon"}'),
    )
    assert completion.usage == Usage(input_tokens=2140, output_tokens=48, cached_tokens=1920)
    assert completion.id == "chatcmpl-B9xq2vQk7Zx1example"


def replay(name: str) -> list[StreamChunk]:
    """Feed a recorded stream through the parser and assembler, as the provider does."""
    parser = SSEParser()
    assembler = StreamAssembler("asked-for")
    chunks: list[StreamChunk] = []
    for event in parser.feed((FIXTURES / name).read_bytes()):
        if event.data == "[DONE]":
            chunks.append(assembler.final())
            break
        chunk = assembler.accept(json.loads(event.data))
        if chunk is not None:
            chunks.append(chunk)
    return chunks


def test_fixture_stream_of_text_with_usage() -> None:
    chunks = replay("openai_stream_text.sse")
    assert [c.text for c in chunks] == ["Circuit", " breakers", " fail fast.", ""]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(input_tokens=1250, output_tokens=5, cached_tokens=1024)
    assert chunks[-1].model == "gpt-4o-2024-08-06"


def test_fixture_stream_of_parallel_tool_calls() -> None:
    chunks = replay("openai_stream_tool_calls.sse")
    assert len(chunks) == 1
    assert chunks[0].finish_reason == "tool_calls"
    assert chunks[0].tool_calls == (
        ToolCall(id="call_weather_1", name="get_weather", arguments='{"city": "Oslo"}'),
        ToolCall(id="call_time_2", name="get_local_time", arguments='{"city": "Oslo"}'),
    )
    assert chunks[0].usage == Usage(input_tokens=310, output_tokens=41)


@pytest.mark.parametrize("name", ["openai_stream_text.sse", "openai_stream_tool_calls.sse"])
async def test_fixture_streams_over_http_match_the_pure_replay(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    async with (
        raw_server(body, "text/event-stream") as url,
        OpenAIModel("m", base_url=url) as model,
    ):
        chunks = await collect(model)
    assert chunks == replay(name)


@pytest.mark.parametrize(
    ("reason", "tools", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("tool_calls", True, "tool_calls"),
        ("function_call", True, "tool_calls"),
        ("content_filter", False, "content_filter"),
        ("eos", False, "stop"),
        ("max_tokens", False, "length"),
        ("stop", True, "tool_calls"),  # some servers announce tool calls with "stop"
        (None, False, "stop"),
        ("something-new", False, "stop"),
    ],
)
def test_finish_reasons_are_normalised(reason: str | None, tools: bool, expected: str) -> None:
    assert normalise_finish(reason, has_tool_calls=tools) == expected


def test_lenient_completion_shapes() -> None:
    data = {
        "choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": True,
            "prompt_tokens_details": {"cached_tokens": 9},
        },
    }
    completion = parse_completion(data, model="m")
    assert completion.text == "ab"
    assert completion.model == "m"
    assert completion.usage == Usage(input_tokens=3, output_tokens=0, cached_tokens=3)
    with pytest.raises(MalformedResponse):
        parse_completion({"choices": []}, model="m")


def test_streamed_tool_calls_without_index_or_id_are_numbered() -> None:
    assembler = StreamAssembler("m")
    assembler.accept(
        {"choices": [{"delta": {"tool_calls": [{"function": {"name": "a", "arguments": "{}"}}]}}]}
    )
    assembler.accept({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    final = assembler.final()
    assert final.tool_calls == (ToolCall(id="call_0", name="a", arguments="{}"),)
    assert final.finish_reason == "tool_calls"


# -- connections -----------------------------------------------------------------------------------


async def test_calls_share_one_kept_alive_connection(server: ChaosServer) -> None:
    async with model_for(server) as model:
        for _ in range(3):
            await model.complete(REQUEST)
        await collect(model)
        await model.complete(REQUEST)
    peers = {request.peer for request in server.requests}
    assert len(server.requests) == 5
    assert len(peers) == 1


async def test_concurrent_calls_use_a_pool(server: ChaosServer) -> None:
    async with model_for(server) as model:
        await asyncio.gather(*(model.complete(REQUEST) for _ in range(4)))
        await asyncio.gather(*(model.complete(REQUEST) for _ in range(4)))
    peers = {request.peer for request in server.requests}
    assert 1 <= len(peers) <= 4  # the second round reuses the first round's connections


async def test_aclose_closes_and_a_later_call_reopens(server: ChaosServer) -> None:
    model = model_for(server)
    await model.complete(REQUEST)
    await model.aclose()
    await model.aclose()  # twice is fine
    await model.complete(REQUEST)
    await model.aclose()
    first, second = server.requests
    assert first.peer != second.peer


async def test_leaving_a_stream_early_frees_its_connection(server: ChaosServer) -> None:
    async with model_for(server) as model:
        async for chunk in model.stream(REQUEST):
            assert chunk.text == PIECES[0]
            break
        completion = await model.complete(REQUEST)
    assert completion.text == TEXT


def test_a_model_outlives_an_event_loop() -> None:
    with ChaosServer(Step.ok("hi")) as server:
        model = model_for(server)

        async def ask() -> str:
            return (await model.complete(REQUEST)).text

        with warnings.catch_warnings():
            # The first loop closed with the pool open (no aclose): its sockets leak, as
            # they would with any client; the model must still work on the next loop.
            warnings.simplefilter("ignore", ResourceWarning)
            assert asyncio.run(ask()) == "hi"
            assert asyncio.run(ask()) == "hi"
            asyncio.run(model.aclose())
            gc.collect()
    assert len(server.requests) == 2


def test_a_model_refuses_a_second_live_loop() -> None:
    with ChaosServer(Step.ok("hi")) as server:
        model = model_for(server)
        first = asyncio.new_event_loop()
        try:
            assert first.run_until_complete(model.complete(REQUEST)).text == "hi"
            with pytest.raises(RuntimeError, match="another event loop"):
                asyncio.run(model.complete(REQUEST))
            with pytest.raises(RuntimeError, match="another event loop"):
                asyncio.run(model.aclose())
            first.run_until_complete(model.aclose())
        finally:
            first.close()


# -- configuration ---------------------------------------------------------------------------------


def test_the_openai_endpoint_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIModel("gpt-4o")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    model = OpenAIModel("gpt-4o")
    assert model.url == "https://api.openai.com/v1/chat/completions"
    assert model.name == "gpt-4o"
    assert "api.openai.com" in repr(model)


async def test_the_key_from_the_environment_and_extra_headers_are_sent(
    server: ChaosServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    model = OpenAIModel(
        "gpt-4o", base_url=server.url + "/v1/", headers={"OpenAI-Organization": "org-1"}
    )
    async with model:
        await model.complete(REQUEST)
    headers = server.requests[-1].headers
    assert headers["Authorization"] == "Bearer sk-env"
    assert headers["OpenAI-Organization"] == "org-1"


async def test_a_local_server_needs_no_key(
    server: ChaosServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with OpenAIModel("llama3", base_url=server.url + "/v1", name="local") as model:
        completion = await model.complete(REQUEST)
    assert completion.model == "llama3"
    assert model.name == "local"
    assert "Authorization" not in server.requests[-1].headers


async def test_azure_style_deployment(server: ChaosServer) -> None:
    async with OpenAIModel(
        "gpt-4o",
        base_url=server.url,
        api_key="az-key",
        deployment="prod-4o",
        api_version="2024-10-21",
    ) as model:
        assert model.url.endswith(
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        )
        completion = await model.complete(REQUEST)
        chunks = await collect(model)
    assert completion.text == TEXT
    assert chunks[-1].finish_reason == "stop"
    sent = server.requests[-1]
    assert sent.path == "/openai/deployments/prod-4o/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.model == "prod-4o"
    assert sent.headers["api-key"] == "az-key"
    assert "Authorization" not in sent.headers


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"base_url": "ftp://example.com"}, "base_url"),
        ({"base_url": "not a url"}, "base_url"),
        ({"max_connections": 0}, "max_connections"),
        ({"timeouts": 30}, "timeouts"),
        ({"max_tokens_param": "tokens"}, "max_tokens_param"),
    ],
)
def test_bad_options_name_themselves(options: dict[str, Any], option: str) -> None:
    options.setdefault("base_url", "http://127.0.0.1:1/v1")
    with pytest.raises(ConfigurationError, match=option):
        OpenAIModel("m", **options)
    with pytest.raises(ConfigurationError, match="model"):
        OpenAIModel("", base_url="http://127.0.0.1:1/v1")
