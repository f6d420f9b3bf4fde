"""A real LLM server that fails on purpose, so resilience can be tested instead of hoped for.

Mocks test what their author imagined a provider does. This server does what
providers actually do, over real HTTP on loopback: it speaks the OpenAI
chat-completions and Anthropic messages wire formats (streamed and not), and
follows a *scenario* that says, request by request, how to answer -- a normal
reply, a 429 with ``Retry-After``, a 503, a 400 for a prompt that is too long,
a connection closed with no answer, headers that never come, a stream cut or
stalled halfway, a body that is not JSON, an event that is garbage, a stream
that never says ``[DONE]``, a primary that is down for a while and comes back.

Scenarios are data (:class:`Step` and :class:`Scenario`, loadable from JSON
or TOML), so a test reads as a script of what goes wrong. The server records
every request it received (:attr:`ChaosServer.requests`,
:meth:`ChaosServer.count`), so a test can assert how often a client retried
and which model it fell back to. Routes by the request's ``model`` (or path)
let one server be both the primary and the backup.

Delays (latency, time to first token, gaps between chunks) are slept on the
injected clock; a scenario that moves on after ``duration`` seconds reads
the same clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.validate import invalid, non_negative_number, one_of, whole_number
from bastion.models._types import ToolCall

__all__ = ["ChaosServer", "RecordedRequest", "Scenario", "Step"]

Action = Literal["reply", "status", "disconnect", "stall", "malformed"]
_ACTIONS = ("reply", "status", "disconnect", "stall", "malformed")
_MODES = ("sequence", "cycle", "random")

DEFAULT_TEXT = "Hello! This answer comes from the Bastion chaos server."
MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""The largest request body accepted: long prompts are a case to test, not to refuse."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """How the server answers one request.

    ``action`` is what happens:

    * ``"reply"`` -- a normal answer: ``text`` and ``tool_calls``, after
      ``latency`` seconds (before the headers). Streams wait ``ttft`` more
      before the first content chunk and ``chunk_delay`` between chunks;
      ``chunks`` splits the text into that many pieces (default: a chunk per
      word). Faults inside a stream: ``cut_after`` closes the connection after
      that many content chunks; ``stall_after`` goes silent after that many
      (for ``stall_for`` seconds, or until the client leaves); ``bad_event_at``
      sends an undecodable event before that content chunk; ``finish_reason=None``
      ends the stream without a finish reason; ``done=False`` leaves out the
      final ``data: [DONE]`` (``message_stop`` for Anthropic).
    * ``"status"`` -- an error answer with HTTP ``status``, a wire-format error
      body (``error_code``, ``message``; or your own ``body``) and, for 429s,
      ``retry_after`` (seconds, or an HTTP date string) as ``Retry-After``.
    * ``"disconnect"`` -- close the connection without answering.
    * ``"stall"`` -- accept the request and never send headers.
    * ``"malformed"`` -- a 200 whose body is cut-off JSON.

    ``headers`` are added to any answer. In a sequence the step serves
    ``times`` requests, or every request for ``duration`` seconds from the
    first one it served; in a random scenario it is drawn with ``weight``.
    """

    action: Action = "reply"
    text: str = DEFAULT_TEXT
    tool_calls: tuple[ToolCall, ...] = ()
    latency: float = 0.0
    ttft: float = 0.0
    chunks: int | None = None
    chunk_delay: float = 0.0
    finish_reason: str | None = "auto"
    """``"auto"``: ``tool_calls`` when there are tool calls, else ``stop``."""
    done: bool = True
    cut_after: int | None = None
    stall_after: int | None = None
    stall_for: float | None = None
    bad_event_at: int | None = None
    cached_tokens: int = 0
    status: int = 200
    error_code: str | None = None
    message: str | None = None
    retry_after: float | str | None = None
    body: str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    times: int = 1
    duration: float | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        one_of(self.action, "Step.action", _ACTIONS)
        calls: Any = self.tool_calls
        if not isinstance(calls, tuple):
            object.__setattr__(self, "tool_calls", tuple(calls))
        if not all(isinstance(call, ToolCall) for call in self.tool_calls):
            invalid("Step.tool_calls", "ToolCall objects (or mappings, via Step.from_dict)", calls)
        for option in ("latency", "ttft", "chunk_delay", "weight"):
            non_negative_number(getattr(self, option), f"Step.{option}", unit="seconds")
        for option in ("cut_after", "stall_after", "bad_event_at"):
            value = getattr(self, option)
            if value is not None:
                whole_number(value, f"Step.{option}", minimum=0)
        if self.chunks is not None:
            whole_number(self.chunks, "Step.chunks")
        if self.stall_for is not None:
            non_negative_number(self.stall_for, "Step.stall_for", unit="seconds")
        if self.duration is not None and not (
            isinstance(self.duration, int | float)
            and not isinstance(self.duration, bool)
            and 0 < self.duration < math.inf
        ):
            invalid("Step.duration", "a finite number of seconds > 0, or None", self.duration)
        whole_number(self.times, "Step.times")
        whole_number(self.cached_tokens, "Step.cached_tokens", minimum=0)
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            invalid("Step.status", "an HTTP status code between 100 and 599", self.status)
        if self.action == "status" and self.status < 400:
            invalid("Step.status", "an error status >= 400 when action='status'", self.status)
        if not isinstance(self.text, str):
            invalid("Step.text", "a string", self.text)

    # -- named faults ----------------------------------------------------------------------

    @classmethod
    def ok(
        cls,
        text: str = DEFAULT_TEXT,
        *,
        tool_calls: Sequence[ToolCall] = (),
        latency: float = 0.0,
        ttft: float = 0.0,
        chunks: int | None = None,
        chunk_delay: float = 0.0,
        times: int = 1,
        duration: float | None = None,
    ) -> Step:
        """A normal answer."""
        return cls(
            text=text,
            tool_calls=tuple(tool_calls),
            latency=latency,
            ttft=ttft,
            chunks=chunks,
            chunk_delay=chunk_delay,
            times=times,
            duration=duration,
        )

    @classmethod
    def error(
        cls,
        status: int,
        *,
        error_code: str | None = None,
        message: str | None = None,
        retry_after: float | str | None = None,
        body: str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        duration: float | None = None,
    ) -> Step:
        """An error answer with this HTTP status."""
        return cls(
            action="status",
            status=status,
            error_code=error_code,
            message=message,
            retry_after=retry_after,
            body=body,
            headers=dict(headers or {}),
            times=times,
            duration=duration,
        )

    @classmethod
    def rate_limited(
        cls, retry_after: float | str | None = 1.0, *, times: int = 1, duration: float | None = None
    ) -> Step:
        """429 Too Many Requests, with ``Retry-After`` unless ``retry_after`` is None."""
        return cls.error(
            429,
            error_code="rate_limit_exceeded",
            retry_after=retry_after,
            times=times,
            duration=duration,
        )

    @classmethod
    def unavailable(
        cls, status: int = 503, *, times: int = 1, duration: float | None = None
    ) -> Step:
        """A server-side failure: 500, 502, 503 (default) or 529 (overloaded)."""
        return cls.error(status, times=times, duration=duration)

    @classmethod
    def context_length_exceeded(cls, *, times: int = 1) -> Step:
        """400: the prompt does not fit the model's context window."""
        return cls.error(400, error_code="context_length_exceeded", times=times)

    @classmethod
    def content_filtered(cls, *, times: int = 1) -> Step:
        """400: the provider refused the prompt on content-policy grounds."""
        return cls.error(400, error_code="content_filter", times=times)

    @classmethod
    def unauthorized(cls, *, times: int = 1) -> Step:
        """401: the API key was refused."""
        return cls.error(401, error_code="invalid_api_key", times=times)

    @classmethod
    def disconnect(cls, *, times: int = 1, duration: float | None = None) -> Step:
        """Close the connection without sending anything."""
        return cls(action="disconnect", times=times, duration=duration)

    @classmethod
    def stall(cls, *, times: int = 1, duration: float | None = None) -> Step:
        """Accept the request, then never send the headers."""
        return cls(action="stall", times=times, duration=duration)

    @classmethod
    def malformed(cls, *, times: int = 1) -> Step:
        """A 200 whose body is not valid JSON."""
        return cls(action="malformed", times=times)

    @classmethod
    def cut(cls, after: int, text: str = DEFAULT_TEXT, *, times: int = 1) -> Step:
        """Stream ``after`` content chunks, then close the connection mid-stream."""
        return cls(text=text, cut_after=after, times=times)

    @classmethod
    def stream_stall(
        cls, after: int, text: str = DEFAULT_TEXT, *, seconds: float | None = None, times: int = 1
    ) -> Step:
        """Stream ``after`` content chunks, then go silent (for ``seconds``, or for good)."""
        return cls(text=text, stall_after=after, stall_for=seconds, times=times)

    @classmethod
    def bad_event(cls, at: int = 1, text: str = DEFAULT_TEXT, *, times: int = 1) -> Step:
        """A stream with one undecodable event before content chunk ``at``."""
        return cls(text=text, bad_event_at=at, times=times)

    @classmethod
    def no_done(cls, text: str = DEFAULT_TEXT, *, times: int = 1) -> Step:
        """A stream that ends after its finish reason without ``[DONE]``."""
        return cls(text=text, done=False, times=times)

    @classmethod
    def no_finish(cls, text: str = DEFAULT_TEXT, *, times: int = 1) -> Step:
        """A stream that ends cleanly but never gives a finish reason (nor ``[DONE]``)."""
        return cls(text=text, finish_reason=None, done=False, times=times)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        """A step from plain data (a JSON or TOML table): the field names are the keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            invalid("Step", f"a table with keys among {sorted(known)}", unknown)
        values = dict(data)
        if "tool_calls" in values:
            values["tool_calls"] = tuple(
                _tool_call(call, index) for index, call in enumerate(values["tool_calls"])
            )
        if "headers" in values:
            values["headers"] = {str(k): str(v) for k, v in dict(values["headers"]).items()}
        return cls(**values)


def _tool_call(raw: Any, index: int) -> ToolCall:
    if isinstance(raw, ToolCall):
        return raw
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        invalid("Step.tool_calls[]", "a table with a 'name' and optional 'arguments', 'id'", raw)
    arguments = raw.get("arguments", {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(
        id=str(raw.get("id") or f"call_chaos_{index}"), name=raw["name"], arguments=text
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """The steps one route follows, request after request.

    ``mode``: ``"sequence"`` plays the steps in order and then keeps
    repeating the last one; ``"cycle"`` starts over after the last;
    ``"random"`` draws each request's step by ``Step.weight`` from a
    generator seeded with ``seed``, so a run is reproducible.
    """

    steps: tuple[Step, ...] = (Step(),)
    mode: Literal["sequence", "cycle", "random"] = "sequence"
    seed: int = 0

    def __post_init__(self) -> None:
        steps: Any = self.steps
        if isinstance(steps, Step):
            steps = (steps,)
        if not isinstance(steps, tuple):
            steps = tuple(steps)
        object.__setattr__(self, "steps", steps)
        if not steps or not all(isinstance(step, Step) for step in steps):
            invalid("Scenario.steps", "one or more Step objects", self.steps)
        one_of(self.mode, "Scenario.mode", _MODES)
        if self.mode == "random" and not any(step.weight > 0 for step in steps):
            invalid("Scenario.steps", "at least one step with weight > 0 in random mode", steps)

    @classmethod
    def of(
        cls,
        *steps: Step,
        mode: Literal["sequence", "cycle", "random"] = "sequence",
        seed: int = 0,
    ) -> Scenario:
        """``Scenario.of(Step.unavailable(times=2), Step.ok())``."""
        return cls(steps=steps, mode=mode, seed=seed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """A scenario from plain data: ``{"mode": ..., "seed": ..., "steps": [{...}, ...]}``."""
        unknown = sorted(set(data) - {"steps", "mode", "seed"})
        if unknown:
            invalid("Scenario", "a table with keys among ['mode', 'seed', 'steps']", unknown)
        raw_steps = data.get("steps", [{}])
        if not isinstance(raw_steps, list):
            invalid("Scenario.steps", "a list of step tables", raw_steps)
        return cls(
            steps=tuple(Step.from_dict(step) for step in raw_steps),
            mode=data.get("mode", "sequence"),
            seed=data.get("seed", 0),
        )


ScenarioLike = Scenario | Step | Sequence[Step]


def _as_scenario(value: ScenarioLike | None) -> Scenario:
    if value is None:
        return Scenario()
    if isinstance(value, Scenario):
        return value
    if isinstance(value, Step):
        return Scenario(steps=(value,))
    return Scenario(steps=tuple(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """One request as the server received it.

    ``peer`` is the client's (host, port): requests with the same peer came
    over the same TCP connection. ``time`` is the server clock's monotonic
    time on arrival; ``action`` is what the server did with it (a step's
    action, ``"rejected"`` for a body that is not a JSON object, or
    ``"too_large"`` for one over ``max_request_bytes``, answered with a 413).
    """

    path: str
    model: str | None
    stream: bool
    body: Any
    headers: Mapping[str, str]
    query: Mapping[str, str]
    peer: tuple[str, int] | None
    time: float
    action: str


class _Cursor:
    """Where one route is in its scenario."""

    __slots__ = ("_index", "_rng", "_since", "_used", "scenario")

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._index = 0
        self._used = 0
        self._since: float | None = None
        self._rng = random.Random(scenario.seed)

    def next(self, now: float) -> Step:
        steps = self.scenario.steps
        if self.scenario.mode == "random":
            return self._rng.choices(steps, weights=[step.weight for step in steps])[0]
        while True:
            step = steps[self._index]
            last = self._index == len(steps) - 1
            if last and self.scenario.mode == "sequence":
                return step
            if step.duration is not None:
                spent = self._since is not None and now - self._since >= step.duration
            else:
                spent = self._used >= step.times
            if not spent:
                self._used += 1
                if self._since is None:
                    self._since = now
                return step
            self._index = (self._index + 1) % len(steps)
            self._used = 0
            self._since = None


class ChaosServer:
    """An OpenAI- and Anthropic-compatible HTTP server that follows a fault scenario.

    >>> async with ChaosServer(Scenario.of(Step.unavailable(), Step.ok("hi"))) as server:
    ...     model = OpenAIModel("gpt-4o", base_url=server.url + "/v1")   # doctest: +SKIP

    ``scenario`` is what every request gets by default (a :class:`Scenario`,
    one :class:`Step`, or a list of steps). ``routes`` gives a model name (or a
    path such as ``"/v1/messages"``) its own scenario; a request's ``model``
    is matched first, then its path. Routes:

    * ``POST /v1/chat/completions`` (OpenAI, streamed when ``"stream": true``,
      usage in the stream when ``stream_options.include_usage`` is set);
    * ``POST /openai/deployments/{deployment}/chat/completions`` (Azure-style;
      the deployment is the model);
    * ``POST /v1/messages`` (Anthropic Messages).

    Request bodies up to ``max_request_bytes`` (64 MiB) are accepted; a larger
    one is recorded (action ``"too_large"``) and answered with a 413.

    Start it with ``async with`` (or ``start()`` / ``stop()``) inside an event
    loop, or with a plain ``with`` from sync code, which runs it on a
    background thread.
    """

    def __init__(
        self,
        scenario: ScenarioLike | None = None,
        *,
        routes: Mapping[str, ScenarioLike] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = SYSTEM_CLOCK,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        whole_number(port, "ChaosServer.port", minimum=0)
        whole_number(max_request_bytes, "ChaosServer.max_request_bytes")
        self._max_request_bytes = max_request_bytes
        self._default = _Cursor(_as_scenario(scenario))
        self._routes = {key: _Cursor(_as_scenario(value)) for key, value in (routes or {}).items()}
        self._host = host
        self._port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._serial = 0

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> ChaosServer:
        """A server whose scenarios come from a ``.json`` or ``.toml`` file.

        The file holds a scenario table (``mode``, ``seed``, ``steps``) and,
        optionally, ``routes``: a table of scenario tables keyed by model name
        or path.
        """
        file = Path(path)
        text = file.read_text()
        if file.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif file.suffix == ".json":
            data = json.loads(text)
        else:
            invalid("scenario file", "a .json or .toml file", str(path))
        if not isinstance(data, dict):
            invalid("scenario file", "a table (object) at the top level", type(data).__name__)
        routes = data.pop("routes", {})
        if not isinstance(routes, dict):
            invalid("scenario file 'routes'", "a table of scenario tables", routes)
        return cls(
            Scenario.from_dict(data),
            routes={key: Scenario.from_dict(value) for key, value in routes.items()},
            host=host,
            port=port,
            clock=clock,
        )

    def __repr__(self) -> str:
        where = self.url if self._bound_port is not None else "not started"
        return f"ChaosServer({where})"

    # -- what a test reads -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash, no ``/v1``)."""
        if self._bound_port is None:
            msg = "the chaos server is not running: start it with `async with server:`"
            raise RuntimeError(msg)
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound_port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def count(self, *, model: str | None = None, path: str | None = None) -> int:
        """How many requests were received, for one model and/or path if given."""
        return sum(
            1
            for request in self.requests
            if (model is None or request.model == model) and (path is None or request.path == path)
        )

    def set_scenario(self, scenario: ScenarioLike, *, route: str | None = None) -> None:
        """Replace the default scenario, or a route's; it starts from its first step."""
        cursor = _Cursor(_as_scenario(scenario))
        with self._lock:
            if route is None:
                self._default = cursor
            else:
                self._routes[route] = cursor

    def reset(self) -> None:
        """Forget the recorded requests and restart every scenario from its first step."""
        with self._lock:
            self._requests.clear()
            self._default = _Cursor(self._default.scenario)
            self._routes = {key: _Cursor(c.scenario) for key, c in self._routes.items()}

    # -- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port`` (a free port when 0)."""
        if self._runner is not None:
            return
        # aiohttp refuses bodies over 1 MiB by default; real prompts are larger.
        app = web.Application(client_max_size=self._max_request_bytes)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/messages", self._handle)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.25,
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._closing = asyncio.Event()
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening, end stalled answers and close every connection."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        await runner.cleanup()
        self._bound_port = None

    async def __aenter__(self) -> ChaosServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> ChaosServer:
        """Run the server on a background thread (for sync code and the command line)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name="bastion-chaos-server", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._thread, self._thread_loop = thread, loop
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        thread, loop = self._thread, self._thread_loop
        self._thread = self._thread_loop = None
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    # -- serving ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        wire = _ANTHROPIC if request.path == "/v1/messages" else _OPENAI
        peer = request.transport.get_extra_info("peername") if request.transport else None
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._record(request, None, False, None, peer, "too_large")
            return wire.error_response(
                413,
                "request_too_large",
                f"the request body is over the server's limit of {self._max_request_bytes} bytes",
            )
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._record(request, None, False, None, peer, "rejected")
            return wire.error_response(400, "invalid_request", "the body must be a JSON object")
        model = request.match_info.get("deployment") or body.get("model")
        model = model if isinstance(model, str) else None
        stream = body.get("stream") is True
        with self._lock:
            cursor = (
                self._routes.get(model or "") or self._routes.get(request.path) or self._default
            )
            step = cursor.next(self._clock.monotonic())
            self._serial += 1
            serial = self._serial
        self._record(request, model, stream, body, peer, step.action)
        if step.latency:
            await self._clock.sleep(step.latency)
        action = step.action
        if action == "stall":
            await self._hang()
            return self._drop(request, web.Response())
        if action == "disconnect":
            return self._drop(request, web.Response())
        if action == "status":
            return wire.error_step(step)
        if action == "malformed":
            return web.Response(
                body=b'{"id": "chaos", "object": "chat.completion", "choices": [{"index": 0, "mes',
                content_type="application/json",
                headers=step.headers,
            )
        reply = _Reply(step, model or "chaos-model", body, serial, int(self._clock.time()))
        if not stream:
            return web.json_response(wire.completion(reply), headers=step.headers)
        return await self._stream(request, step, wire.frames(reply))

    async def _stream(
        self, request: web.Request, step: Step, frames: list[tuple[bytes, bool]]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **step.headers,
            }
        )
        await response.prepare(request)
        content = [index for index, (_, is_content) in enumerate(frames) if is_content]
        cut = _position(step.cut_after, content)
        stall = _position(step.stall_after, content)
        bad = _position(step.bad_event_at, content)
        first = content[0] if content else -1
        try:
            for index, (frame, is_content) in enumerate(frames):
                if index == cut:
                    return self._drop(request, response)
                if index == stall and not await self._stall_stream(step):
                    return self._drop(request, response)
                if is_content:
                    delay = step.ttft if index == first else step.chunk_delay
                    if delay:
                        await self._clock.sleep(delay)
                if index == bad:
                    await response.write(b'data: {"id": "chaos", "choices": [{"delta": {\n\n')
                await response.write(frame)
            if cut is not None and cut >= len(frames):
                return self._drop(request, response)
            await response.write_eof()
        except ConnectionError:
            pass  # the client left mid-stream: nothing more to send
        return response

    async def _stall_stream(self, step: Step) -> bool:
        """Go quiet mid-stream; False when the server is stopping and the stream must end."""
        if step.stall_for is None:
            await self._hang()
            return False
        await self._clock.sleep(step.stall_for)
        return True

    async def _hang(self) -> None:
        """Wait until the client gives up (the handler is cancelled) or the server stops."""
        assert self._closing is not None
        await self._closing.wait()

    @staticmethod
    def _drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Close the connection; aiohttp's write of ``response`` then fails quietly."""
        if request.transport is not None:
            request.transport.close()
        return response

    def _record(
        self,
        request: web.Request,
        model: str | None,
        stream: bool,
        body: Any,
        peer: Any,
        action: str,
    ) -> None:
        entry = RecordedRequest(
            path=request.path,
            model=model,
            stream=stream,
            body=body,
            headers=dict(request.headers),
            query=dict(request.query),
            peer=(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None,
            time=self._clock.monotonic(),
            action=action,
        )
        with self._lock:
            self._requests.append(entry)


def _position(after: int | None, content: list[int]) -> int | None:
    """The frame index before which a fault set "after N content chunks" strikes."""
    if after is None:
        return None
    if after < len(content):
        return content[after]
    return content[-1] + 1 if content else 1


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


# -- wire formats ------------------------------------------------------------------------------


_WORDS = re.compile(r"\S+\s*|\s+")


class _Reply:
    """One answer to render: the step, the request it answers and its usage counts."""

    __slots__ = (
        "body",
        "completion_tokens",
        "created",
        "finish",
        "id",
        "model",
        "prompt_tokens",
        "step",
    )

    def __init__(
        self, step: Step, model: str, body: Mapping[str, Any], serial: int, created: int
    ) -> None:
        self.step = step
        self.model = model
        self.body = body
        self.id = serial
        self.created = created
        self.prompt_tokens = max(1, (_prompt_chars(body) + 3) // 4)
        self.completion_tokens = len(step.text.split()) + sum(
            max(1, len(call.arguments) // 4) for call in step.tool_calls
        )
        finish = step.finish_reason
        if finish == "auto":
            finish = "tool_calls" if step.tool_calls else "stop"
        self.finish = finish

    def pieces(self) -> list[str]:
        text = self.step.text
        if not text:
            return []
        if self.step.chunks is None:
            return _WORDS.findall(text)
        size = max(1, math.ceil(len(text) / self.step.chunks))
        return [text[i : i + size] for i in range(0, len(text), size)]


def _argument_pieces(arguments: str, size: int = 16) -> list[str]:
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _prompt_chars(body: Mapping[str, Any]) -> int:
    total = _content_chars(body.get("system"))
    for message in body.get("messages") or ():
        if isinstance(message, Mapping):
            total += _content_chars(message.get("content"))
    return total


def _content_chars(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"])
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            else _content_chars(part.get("content"))
            if isinstance(part, Mapping)
            else 0
            for part in content
        )
    return len(json.dumps(content, default=str))


def _event(data: Any, name: str | None = None) -> bytes:
    line = f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
    return (f"event: {name}\n" + line if name else line).encode()


_OPENAI_MESSAGES = {
    "context_length_exceeded": "This model's maximum context length is 8192 tokens; "
    "the request asked for more.",
    "content_filter": "The request was refused by the content filter.",
    "invalid_api_key": "The API key was not accepted.",
    "rate_limit_exceeded": "Rate limit reached for requests; slow down.",
}


class _OpenAIWire:
    """The OpenAI chat-completions dialect."""

    def completion(self, reply: _Reply) -> dict[str, Any]:
        step = reply.step
        message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
        if step.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in step.tool_calls
            ]
        return {
            "id": f"chatcmpl-chaos{reply.id}",
            "object": "chat.completion",
            "created": reply.created,
            "model": reply.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish}
            ],
            "usage": self._usage(reply),
            "system_fingerprint": "fp_chaos",
        }

    @staticmethod
    def _usage(reply: _Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {
                "cached_tokens": min(reply.step.cached_tokens, reply.prompt_tokens)
            },
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def frames(self, reply: _Reply) -> list[tuple[bytes, bool]]:
        options = reply.body.get("stream_options")
        with_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        base = {
            "id": f"chatcmpl-chaos{reply.id}",
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": "fp_chaos",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if with_usage:
                data["usage"] = None
            return _event(data)

        frames = [(chunk({"role": "assistant", "content": ""}), False)]
        frames += [(chunk({"content": piece}), True) for piece in reply.pieces()]
        for index, call in enumerate(reply.step.tool_calls):
            for number, piece in enumerate(_argument_pieces(call.arguments)):
                fragment: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
                if number == 0:
                    fragment.update(id=call.id, type="function")
                    fragment["function"]["name"] = call.name
                frames.append((chunk({"tool_calls": [fragment]}), True))
        if reply.finish is not None:
            frames.append((chunk({}, reply.finish), False))
        if with_usage:
            frames.append((_event({**base, "choices": [], "usage": self._usage(reply)}), False))
        if reply.step.done:
            frames.append((b"data: [DONE]\n\n", False))
        return frames

    def error_step(self, step: Step) -> web.Response:
        return _error_answer(step, self._body(step))

    def _body(self, step: Step) -> dict[str, Any]:
        code = step.error_code
        message = (
            step.message
            or _OPENAI_MESSAGES.get(code or "")
            or _STATUS_TEXT.get(step.status, f"HTTP {step.status}")
        )
        kind = "invalid_request_error" if step.status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def error_response(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": code,
                }
            },
            status=status,
        )


_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_ANTHROPIC_MESSAGES = {
    "context_length_exceeded": "prompt is too long: the request exceeds the maximum "
    "context length of 200000 tokens",
    "content_filter": "The request was refused under the usage policy.",
    "invalid_api_key": "invalid x-api-key",
    "rate_limit_exceeded": "Number of requests has exceeded your rate limit.",
}


class _AnthropicWire:
    """The Anthropic Messages dialect."""

    def _stop(self, reply: _Reply) -> str | None:
        return None if reply.finish is None else _ANTHROPIC_STOP.get(reply.finish, reply.finish)

    def _usage(self, reply: _Reply, output: int) -> dict[str, Any]:
        cached = min(reply.step.cached_tokens, reply.prompt_tokens)
        return {
            "input_tokens": reply.prompt_tokens - cached,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": output,
        }

    def completion(self, reply: _Reply) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.step.text:
            content.append({"type": "text", "text": reply.step.text})
        content += [
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": _json_object(call.arguments),
            }
            for call in reply.step.tool_calls
        ]
        return {
            "id": f"msg_chaos{reply.id}",
            "type": "message",
            "role": "assistant",
            "model": reply.model,
            "content": content,
            "stop_reason": self._stop(reply),
            "stop_sequence": None,
            "usage": self._usage(reply, reply.completion_tokens),
        }

    def frames(self, reply: _Reply) -> list[tuple[bytes, bool]]:
        start = {
            "type": "message_start",
            "message": {
                "id": f"msg_chaos{reply.id}",
                "type": "message",
                "role": "assistant",
                "model": reply.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": self._usage(reply, 1),
            },
        }
        frames = [(_event(start, "message_start"), False)]
        block = 0
        pieces = reply.pieces()
        if pieces:
            frames.append(
                (
                    _event(
                        {
                            "type": "content_block_start",
                            "index": 0,
                            "content_block": {"type": "text", "text": ""},
                        },
                        "content_block_start",
                    ),
                    False,
                )
            )
            frames.append((_event({"type": "ping"}, "ping"), False))
            frames += [
                (
                    _event(
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                        "content_block_delta",
                    ),
                    True,
                )
                for piece in pieces
            ]
            frames.append(
                (_event({"type": "content_block_stop", "index": 0}, "content_block_stop"), False)
            )
            block = 1
        for offset, call in enumerate(reply.step.tool_calls):
            index = block + offset
            frames.append(
                (
                    _event(
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {
                                "type": "tool_use",
                                "id": call.id,
                                "name": call.name,
                                "input": {},
                            },
                        },
                        "content_block_start",
                    ),
                    False,
                )
            )
            frames += [
                (
                    _event(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                        "content_block_delta",
                    ),
                    True,
                )
                for piece in _argument_pieces(call.arguments)
            ]
            frames.append(
                (
                    _event({"type": "content_block_stop", "index": index}, "content_block_stop"),
                    False,
                )
            )
        stop = self._stop(reply)
        if stop is not None:
            frames.append(
                (
                    _event(
                        {
                            "type": "message_delta",
                            "delta": {"stop_reason": stop, "stop_sequence": None},
                            "usage": {"output_tokens": reply.completion_tokens},
                        },
                        "message_delta",
                    ),
                    False,
                )
            )
        if reply.step.done:
            frames.append((_event({"type": "message_stop"}, "message_stop"), False))
        return frames

    def error_step(self, step: Step) -> web.Response:
        return _error_answer(step, self._body(step))

    def _body(self, step: Step) -> dict[str, Any]:
        message = (
            step.message
            or _ANTHROPIC_MESSAGES.get(step.error_code or "")
            or (_STATUS_TEXT.get(step.status, f"HTTP {step.status}"))
        )
        kind = _ANTHROPIC_TYPES.get(
            step.status, "api_error" if step.status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": kind, "message": message}}

    def error_response(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"type": "error", "error": {"type": "invalid_request_error", "message": message}},
            status=status,
        )


_STATUS_TEXT = {
    429: "Too many requests.",
    500: "The server had an error while processing the request.",
    502: "Bad gateway.",
    503: "The service is temporarily unavailable.",
    529: "Overloaded.",
}


def _error_answer(step: Step, default_body: dict[str, Any]) -> web.Response:
    headers = dict(step.headers)
    if step.retry_after is not None:
        value = step.retry_after
        headers["Retry-After"] = value if isinstance(value, str) else f"{value:g}"
    if step.body is None:
        payload = json.dumps(default_body)
    elif isinstance(step.body, str):
        payload = step.body
    else:
        payload = json.dumps(dict(step.body))
    return web.Response(
        status=step.status, text=payload, content_type="application/json", headers=headers
    )


def _json_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return {}


_OPENAI = _OpenAIWire()
_ANTHROPIC = _AnthropicWire()
