"""The chaos server: both wire formats, every scripted fault, scenarios as data, the request log."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion import ConfigurationError
from bastion.models import ToolCall
from bastion.models._sse import SSEEvent, SSEParser
from bastion.testing import ChaosServer, FakeClock, Scenario, Step

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
MESSAGES = [{"role": "user", "content": "x" * 40}]  # 40 characters: 10 prompt tokens
TOOL = ToolCall(id="call_1", name="lookup", arguments='{"query": "bastion", "limit": 5}')


@pytest.fixture
async def server() -> AsyncIterator[ChaosServer]:
    async with ChaosServer() as chaos:
        yield chaos


async def post(
    server: ChaosServer, path: str = OPENAI, timeout: float = 5.0, **body: Any
) -> tuple[int, dict[str, str], bytes]:
    body.setdefault("model", "gpt-4o")
    body.setdefault("messages", MESSAGES)
    limit = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=limit) as session,
        session.post(server.url + path, json=body) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def read_into(response: aiohttp.ClientResponse, received: list[bytes]) -> None:
    async for data in response.content.iter_any():
        received.append(data)


def sse(raw: bytes) -> list[SSEEvent]:
    return SSEParser().feed(raw)


def openai_chunks(raw: bytes) -> list[Any]:
    return [json.loads(e.data) if e.data != "[DONE]" else "[DONE]" for e in sse(raw)]


# -- OpenAI wire format ----------------------------------------------------------------------------


async def test_openai_completion_with_realistic_usage(server: ChaosServer) -> None:
    server.set_scenario(Step.ok("four words right here", tool_calls=[TOOL]))
    status, headers, raw = await post(server)
    data = json.loads(raw)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-4o"
    choice = data["choices"][0]
    assert choice["message"]["content"] == "four words right here"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": TOOL.arguments},
        }
    ]
    assert choice["finish_reason"] == "tool_calls"
    usage = data["usage"]
    assert usage["prompt_tokens"] == 10
    assert usage["completion_tokens"] == 4 + len(TOOL.arguments) // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_openai_stream_with_usage(server: ChaosServer) -> None:
    server.set_scenario(Step.ok("one two three", tool_calls=[TOOL]))
    status, headers, raw = await post(server, stream=True, stream_options={"include_usage": True})
    chunks = openai_chunks(raw)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[1:-3])
    assert text == "one two three"
    fragments = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks[1:-3]
        if "tool_calls" in c["choices"][0]["delta"]
    ]
    assert fragments[0]["id"] == "call_1"
    assert fragments[0]["function"]["name"] == "lookup"
    assert "".join(f["function"]["arguments"] for f in fragments) == TOOL.arguments
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["choices"] == []
    assert chunks[-2]["usage"]["completion_tokens"] == 3 + len(TOOL.arguments) // 4
    assert all(c["usage"] is None for c in chunks[:-2])
    assert chunks[-1] == "[DONE]"


async def test_openai_stream_without_usage_unless_asked(server: ChaosServer) -> None:
    _, _, raw = await post(server, stream=True)
    chunks = openai_chunks(raw)
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks[:-1])


@pytest.mark.parametrize(
    ("step", "status", "code"),
    [
        (Step.context_length_exceeded(), 400, "context_length_exceeded"),
        (Step.content_filtered(), 400, "content_filter"),
        (Step.unauthorized(), 401, "invalid_api_key"),
        (Step.rate_limited(3), 429, "rate_limit_exceeded"),
        (Step.unavailable(502), 502, None),
    ],
)
async def test_openai_error_bodies(
    server: ChaosServer, step: Step, status: int, code: str | None
) -> None:
    server.set_scenario(step)
    got, headers, raw = await post(server)
    error = json.loads(raw)["error"]
    assert got == status
    assert error["code"] == code
    assert error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert ("Retry-After" in headers) is (status == 429)


async def test_custom_error_body_and_headers(server: ChaosServer) -> None:
    server.set_scenario(
        Step.error(
            429,
            retry_after="Wed, 21 Oct 2026 07:28:00 GMT",
            body="slow down",
            headers={"x-ratelimit-reset-tokens": "6m0s"},
        )
    )
    status, headers, raw = await post(server)
    assert status == 429
    assert raw == b"slow down"
    assert headers["Retry-After"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert headers["x-ratelimit-reset-tokens"] == "6m0s"


# -- Anthropic wire format -------------------------------------------------------------------------


async def test_anthropic_message(server: ChaosServer) -> None:
    server.set_scenario(Step(text="Hi there", tool_calls=(TOOL,), cached_tokens=4))
    status, _, raw = await post(
        server, ANTHROPIC, model="claude-sonnet", system="y" * 8, max_tokens=100
    )
    data = json.loads(raw)
    assert status == 200
    assert data["type"] == "message"
    assert data["role"] == "assistant"
    assert data["model"] == "claude-sonnet"
    assert data["content"] == [
        {"type": "text", "text": "Hi there"},
        {
            "type": "tool_use",
            "id": "call_1",
            "name": "lookup",
            "input": {"query": "bastion", "limit": 5},
        },
    ]
    assert data["stop_reason"] == "tool_use"
    assert data["usage"] == {
        "input_tokens": 12 - 4,  # 48 characters with the system prompt; 4 of them cached
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "output_tokens": 2 + len(TOOL.arguments) // 4,
    }


async def test_anthropic_stream(server: ChaosServer) -> None:
    server.set_scenario(Step.ok("Hello streaming world", tool_calls=[TOOL]))
    _, headers, raw = await post(
        server, ANTHROPIC, model="claude-sonnet", stream=True, max_tokens=100
    )
    events = sse(raw)
    names = [e.event for e in events]
    assert headers["Content-Type"] == "text/event-stream"
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(json.loads(e.data)["type"] == e.event for e in events)
    data = [json.loads(e.data) for e in events]
    assert data[0]["message"]["usage"]["input_tokens"] == 10
    text = "".join(
        d["delta"]["text"] for d in data if d["type"] == "content_block_delta" and d["index"] == 0
    )
    assert text == "Hello streaming world"
    starts = [d for d in data if d["type"] == "content_block_start"]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "lookup",
        "input": {},
    }
    partial = "".join(
        d["delta"]["partial_json"]
        for d in data
        if d["type"] == "content_block_delta" and d["index"] == 1
    )
    assert json.loads(partial) == {"query": "bastion", "limit": 5}
    delta = data[-2]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == 3 + len(TOOL.arguments) // 4


@pytest.mark.parametrize(
    ("step", "status", "kind"),
    [
        (Step.unavailable(529), 529, "overloaded_error"),
        (Step.unavailable(500), 500, "api_error"),
        (Step.rate_limited(2), 429, "rate_limit_error"),
        (Step.context_length_exceeded(), 400, "invalid_request_error"),
        (Step.unauthorized(), 401, "authentication_error"),
    ],
)
async def test_anthropic_errors(server: ChaosServer, step: Step, status: int, kind: str) -> None:
    server.set_scenario(step)
    got, headers, raw = await post(server, ANTHROPIC, model="claude")
    body = json.loads(raw)
    assert got == status
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["error"]["message"]
    if status == 429:
        assert headers["Retry-After"] == "2"


async def test_anthropic_stream_faults(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.no_done("a b"), Step.no_finish("a b")))
    _, _, no_done = await post(server, ANTHROPIC, stream=True)
    _, _, no_finish = await post(server, ANTHROPIC, stream=True)
    assert [e.event for e in sse(no_done)][-1] == "message_delta"
    assert "message_delta" not in [e.event for e in sse(no_finish)]


# -- faults on the wire ----------------------------------------------------------------------------


async def test_disconnect_answers_nothing(server: ChaosServer) -> None:
    server.set_scenario(Step.disconnect())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(server)
    assert server.requests[-1].action == "disconnect"


async def test_stall_sends_no_headers(server: ChaosServer) -> None:
    server.set_scenario(Step.stall())
    with pytest.raises(asyncio.TimeoutError):
        await post(server, timeout=0.05)


async def test_stop_ends_a_stalled_answer(server: ChaosServer) -> None:
    server.set_scenario(Step.stall())
    waiting = asyncio.create_task(post(server))
    while server.count() == 0:  # noqa: ASYNC110 - polling the server's record; only yields
        await asyncio.sleep(0)
    await server.stop()
    with pytest.raises(aiohttp.ClientError):
        await waiting
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url


async def test_cut_closes_the_connection_mid_stream(server: ChaosServer) -> None:
    server.set_scenario(Step.cut(2, "one two three four"))
    received: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            server.url + OPENAI, json={"model": "m", "messages": MESSAGES, "stream": True}
        )
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_into(response, received)
        response.close()
    pieces = [
        json.loads(e.data)["choices"][0]["delta"].get("content") for e in sse(b"".join(received))
    ]
    assert pieces == ["", "one ", "two "]


async def test_a_finite_stream_stall_then_the_rest(server: ChaosServer) -> None:
    clock = FakeClock(auto_advance=True)
    async with ChaosServer(Step.stream_stall(1, "a b c", seconds=7.5), clock=clock) as chaos:
        _, _, raw = await post(chaos, stream=True)
    chunks = openai_chunks(raw)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == "a b c"
    assert clock.sleeps == [7.5]


async def test_delays_are_slept_on_the_servers_clock() -> None:
    clock = FakeClock(auto_advance=True)
    step = Step(text="a b c", latency=2.0, ttft=0.5, chunk_delay=0.25)
    async with ChaosServer(step, clock=clock) as chaos:
        await post(chaos)
        await post(chaos, stream=True)
    assert clock.sleeps == [2.0, 2.0, 0.5, 0.25, 0.25]


async def test_bad_event_is_not_json(server: ChaosServer) -> None:
    server.set_scenario(Step.bad_event(1, "one two"))
    _, _, raw = await post(server, stream=True)
    events = sse(raw)
    with pytest.raises(ValueError, match="Expecting"):
        json.loads(events[2].data)
    assert json.loads(events[1].data)["choices"][0]["delta"]["content"] == "one "
    assert json.loads(events[3].data)["choices"][0]["delta"]["content"] == "two"


async def test_no_done_and_no_finish(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.no_done("a"), Step.no_finish("a")))
    _, _, no_done = await post(server, stream=True)
    _, _, no_finish = await post(server, stream=True)
    assert openai_chunks(no_done)[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in openai_chunks(no_finish))


async def test_malformed_body(server: ChaosServer) -> None:
    server.set_scenario(Step.malformed())
    status, _, raw = await post(server)
    assert status == 200
    with pytest.raises(ValueError, match="Unterminated"):
        json.loads(raw)


async def test_chunks_option_splits_text_evenly(server: ChaosServer) -> None:
    server.set_scenario(Step(text="abcdefghij", chunks=3))
    _, _, raw = await post(server, stream=True)
    pieces = [c["choices"][0]["delta"].get("content") for c in openai_chunks(raw)[1:-2]]
    assert pieces == ["abcd", "efgh", "ij"]


async def test_a_body_that_is_not_a_json_object_is_rejected(server: ChaosServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + OPENAI, data=b"[1, 2") as response,
    ):
        status = response.status
        body = await response.json()
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert server.requests[-1].action == "rejected"


async def test_a_two_megabyte_prompt_is_accepted_and_recorded(server: ChaosServer) -> None:
    prompt = "word " * 400_000  # 2,000,000 characters: over aiohttp's default 1 MiB limit
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url + OPENAI,
            data=io.BytesIO(json.dumps(body).encode()),
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        status, raw = response.status, await response.read()
    assert status == 200
    assert json.loads(raw)["usage"]["prompt_tokens"] == 500_000
    recorded = server.requests[-1]
    assert recorded.action == "reply"
    assert recorded.body["messages"][0]["content"] == prompt


async def test_a_body_over_the_limit_is_recorded_and_refused() -> None:
    async with ChaosServer(max_request_bytes=1000) as server:
        status, _, raw = await post(server, messages=[{"role": "user", "content": "x" * 2000}])
        recorded = server.requests
    assert status == 413
    assert "1000 bytes" in json.loads(raw)["error"]["message"]
    assert [(r.action, r.path, r.body) for r in recorded] == [("too_large", OPENAI, None)]


def test_the_request_limit_is_validated() -> None:
    with pytest.raises(ConfigurationError, match=r"ChaosServer\.max_request_bytes"):
        ChaosServer(max_request_bytes=0)


# -- scenarios -------------------------------------------------------------------------------------


async def statuses(server: ChaosServer, count: int, **body: Any) -> list[int]:
    return [(await post(server, **body))[0] for _ in range(count)]


async def test_a_sequence_plays_in_order_then_repeats_its_last_step(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.unavailable(times=2), Step.rate_limited(), Step.ok()))
    assert await statuses(server, 6) == [503, 503, 429, 200, 200, 200]


async def test_a_cycle_starts_over(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.unavailable(), Step.ok(times=2), mode="cycle"))
    assert await statuses(server, 6) == [503, 200, 200, 503, 200, 200]


async def test_random_mode_is_seeded_and_follows_weights() -> None:
    steps = (Step(weight=3), Step.unavailable(), Step(action="status", status=500, weight=0))
    first = ChaosServer(Scenario(steps=steps, mode="random", seed=7))
    second = ChaosServer(Scenario(steps=steps, mode="random", seed=7))
    async with first, second:
        a = await statuses(first, 40)
        b = await statuses(second, 40)
    assert a == b
    assert 500 not in a  # weight 0 is never drawn
    assert 20 <= a.count(200) <= 38


async def test_a_primary_that_is_down_for_a_while(clock: FakeClock) -> None:
    flapping = Scenario.of(Step.unavailable(duration=30), Step.ok())
    async with ChaosServer(flapping, clock=clock) as chaos:
        down = await statuses(chaos, 2)
        clock.advance(29)
        still_down = await statuses(chaos, 1)
        clock.advance(2)
        up = await statuses(chaos, 2)
    assert down + still_down == [503, 503, 503]
    assert up == [200, 200]


async def test_routes_by_model_then_path() -> None:
    routes = {"backup": Step.ok("backup here"), ANTHROPIC: Step.unavailable(529)}
    async with ChaosServer(Step.unavailable(503), routes=routes) as chaos:
        primary = await statuses(chaos, 2, model="primary")
        backup = await post(chaos, model="backup")
        claude = await post(chaos, ANTHROPIC, model="claude")
        backup_on_anthropic = await post(chaos, ANTHROPIC, model="backup")
        assert chaos.count() == 5
        assert chaos.count(model="primary") == 2
        assert chaos.count(model="backup") == 2
        assert chaos.count(path=ANTHROPIC) == 2
        assert chaos.count(model="backup", path=OPENAI) == 1
    assert primary == [503, 503]
    assert json.loads(backup[2])["choices"][0]["message"]["content"] == "backup here"
    assert claude[0] == 529
    assert backup_on_anthropic[0] == 200


async def test_the_request_log(clock: FakeClock) -> None:
    async with ChaosServer(clock=clock) as chaos:
        clock.advance(5)
        await post(chaos, model="m1", stream=True, temperature=0.5)
        await post(chaos, model="m2")
        first, second = chaos.requests
        chaos.reset()
        assert chaos.requests == []
    assert first.path == OPENAI
    assert first.model == "m1"
    assert first.stream is True
    assert first.body["temperature"] == 0.5
    assert first.time == 5
    assert first.action == "reply"
    assert first.headers["Content-Type"] == "application/json"
    assert first.peer is not None
    assert first.peer[0] == "127.0.0.1"
    assert second.stream is False


async def test_set_scenario_and_reset_start_over(server: ChaosServer) -> None:
    server.set_scenario(Scenario.of(Step.unavailable(), Step.ok()))
    assert await statuses(server, 2) == [503, 200]
    server.reset()
    assert await statuses(server, 1) == [503]
    server.set_scenario(Step.unauthorized(), route="gpt-4o")
    assert await statuses(server, 1) == [401]


def test_scenarios_from_data() -> None:
    scenario = Scenario.from_dict(
        {
            "mode": "cycle",
            "seed": 3,
            "steps": [
                {"action": "status", "status": 503, "times": 2},
                {
                    "text": "hi",
                    "tool_calls": [{"name": "lookup", "arguments": {"q": 1}}],
                    "headers": {"x-a": 1},
                },
                {"tool_calls": [{"id": "mine", "name": "raw", "arguments": "{}"}, TOOL]},
            ],
        }
    )
    assert scenario.mode == "cycle"
    assert scenario.seed == 3
    assert scenario.steps[0] == Step.unavailable(times=2)
    assert scenario.steps[1].tool_calls == (
        ToolCall(id="call_chaos_0", name="lookup", arguments='{"q": 1}'),
    )
    assert scenario.steps[1].headers == {"x-a": "1"}
    assert scenario.steps[2].tool_calls == (ToolCall(id="mine", name="raw", arguments="{}"), TOOL)
    assert Scenario.from_dict({}) == Scenario()


SCENARIO_FILES = {
    "json": json.dumps(
        {
            "mode": "cycle",
            "steps": [{"action": "status", "status": 503}, {"text": "ok"}],
            "routes": {"backup": {"steps": [{"text": "backup"}]}},
        }
    ),
    "toml": (
        'mode = "cycle"\n\n[[steps]]\naction = "status"\nstatus = 503\n\n[[steps]]\ntext = "ok"\n\n'
        '[routes.backup]\nsteps = [{text = "backup"}]\n'
    ),
}


@pytest.mark.parametrize("suffix", sorted(SCENARIO_FILES))
async def test_a_scenario_file_drives_the_server(tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"scenario.{suffix}"
    file.write_text(SCENARIO_FILES[suffix])
    chaos = ChaosServer.from_file(file)
    assert repr(chaos) == "ChaosServer(not started)"
    async with chaos:
        assert repr(chaos) == f"ChaosServer({chaos.url})"
        assert await statuses(chaos, 3) == [503, 200, 503]
        _, _, raw = await post(chaos, model="backup")
    assert json.loads(raw)["choices"][0]["message"]["content"] == "backup"


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: Step(action="explode"), "Step.action"),  # type: ignore[arg-type]
        (lambda: Step(latency=-1), "Step.latency"),
        (lambda: Step(times=0), "Step.times"),
        (lambda: Step(chunks=0), "Step.chunks"),
        (lambda: Step(cut_after=-1), "Step.cut_after"),
        (lambda: Step(duration=0), "Step.duration"),
        (lambda: Step(status=700), "Step.status"),
        (lambda: Step(action="status", status=200), "Step.status"),
        (lambda: Step(tool_calls=({"name": "x"},)), "Step.tool_calls"),  # type: ignore[arg-type]
        (lambda: Step(text=None), "Step.text"),  # type: ignore[arg-type]
        (lambda: Step(stall_for=-2), "Step.stall_for"),
        (lambda: Step.from_dict({"txt": "typo"}), "Step"),
        (lambda: Step.from_dict({"tool_calls": [{"arguments": {}}]}), "tool_calls"),
        (lambda: Scenario(steps=()), "Scenario.steps"),
        (lambda: Scenario(mode="shuffle"), "Scenario.mode"),  # type: ignore[arg-type]
        (lambda: Scenario(steps=(Step(weight=0),), mode="random"), "Scenario.steps"),
        (lambda: Scenario.from_dict({"step": []}), "Scenario"),
        (lambda: Scenario.from_dict({"steps": {}}), "Scenario.steps"),
        (lambda: ChaosServer(port=-1), "ChaosServer.port"),
    ],
)
def test_bad_scenarios_name_the_option(make: Any, option: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        make()


def test_bad_scenario_files(tmp_path: Path) -> None:
    yaml = tmp_path / "scenario.yaml"
    yaml.write_text("steps: []")
    with pytest.raises(ConfigurationError, match=r"\.json or \.toml"):
        ChaosServer.from_file(yaml)
    listed = tmp_path / "scenario.json"
    listed.write_text("[]")
    with pytest.raises(ConfigurationError, match="top level"):
        ChaosServer.from_file(listed)
    listed.write_text('{"routes": []}')
    with pytest.raises(ConfigurationError, match="routes"):
        ChaosServer.from_file(listed)


# -- sync use and the command line -----------------------------------------------------------------


def test_sync_code_runs_it_on_a_thread() -> None:
    with ChaosServer(Step.ok("from a thread")) as chaos:
        request = urllib.request.Request(
            chaos.url + OPENAI,
            data=json.dumps({"model": "m", "messages": MESSAGES}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            data = json.loads(response.read())
        assert chaos.count(model="m") == 1
    assert data["choices"][0]["message"]["content"] == "from a thread"
    with pytest.raises(RuntimeError, match="not running"):
        _ = chaos.url


def test_the_command_line_serves_until_ctrl_c(tmp_path: Path) -> None:
    file = tmp_path / "scenario.json"
    file.write_text(json.dumps({"steps": [{"text": "chaos on the command line"}]}))
    code = (
        "from bastion._chaos_cli import chaos_server_command;"
        f"chaos_server_command('127.0.0.1', 0, {str(file)!r})"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-W", "error", "-c", code], stdout=subprocess.PIPE, text=True, env=env
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = first.rsplit(" ", 1)[-1].strip()
        request = urllib.request.Request(
            url + OPENAI,
            data=json.dumps({"model": "m", "messages": MESSAGES}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.loads(response.read())
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
    assert first.startswith("Chaos LLM server listening on http://127.0.0.1:")
    assert data["choices"][0]["message"]["content"] == "chaos on the command line"
    assert "Stopped after 1 request(s)." in rest
    assert process.returncode == 0
