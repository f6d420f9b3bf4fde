"""What every HTTP chat provider does the same way, written once.

OpenAI-compatible servers and Anthropic disagree about the wire format, but
not about the shell around it: one pooled :class:`Transport` per model
object, a wall-clock read for ``retry-after``, a JSON body that must parse,
a stream request that some servers answer in one piece, an SSE read loop
that skips unreadable events (and says so on the bus) instead of failing the
answer, and the ``async with`` lifecycle. Keeping that shell here means a fix
to the read loop or to connection handling lands in every provider at once;
each provider module keeps only its own wire rules.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncGenerator, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

from bastion._core.clock import Clock
from bastion._core.errors import ConfigurationError
from bastion._core.events import EventBus, default_bus
from bastion._core.validate import instance_of, whole_number
from bastion.models._errors import (
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    StreamInterrupted,
)
from bastion.models._sse import SSEEvent, SSEParser, StreamEventSkipped, StreamTooLarge
from bastion.models._timeouts import ModelTimeouts
from bastion.models._transport import HttpStream, Transport
from bastion.models._types import ChatRequest, Completion, StreamChunk

__all__ = [
    "Assembly",
    "ErrorMapper",
    "HTTPModel",
    "api_key_for",
    "checked_model_name",
    "connection_limits",
    "interruption",
    "json_body",
    "plain",
]


class ErrorMapper(Protocol):
    """A provider's ``error_from_response``: the typed error for a non-2xx answer."""

    def __call__(
        self, status: int, headers: Mapping[str, str], body: bytes, *, model: str | None, now: float
    ) -> ProviderError: ...


class Assembly(Protocol):
    """A provider's pure stream assembler, as the shared read loop drives it."""

    started: bool
    timing_switched: bool

    @property
    def complete(self) -> bool:
        """Whether the finish reason has arrived (only trailing usage may still be missing)."""
        ...

    @property
    def ended(self) -> bool:
        """Whether the provider's end-of-stream marker has arrived."""
        ...

    def take(self, event: SSEEvent) -> StreamChunk | None: ...

    def final(self) -> StreamChunk: ...

    def interrupted(self, cause: ProviderError | None) -> ProviderError: ...


def checked_model_name(model: object, owner: str, example: str) -> str:
    """The model name, refused early when it is empty or not text."""
    if not isinstance(model, str) or not model:
        msg = f"{owner}.model must be a non-empty model name such as {example!r}; got {model!r}"
        raise ConfigurationError(msg)
    return model


def connection_limits(
    owner: str, *, max_connections: int, timeouts: ModelTimeouts | None
) -> ModelTimeouts:
    """Validate the pool size; the timeouts, defaulted when None."""
    whole_number(max_connections, f"{owner}.max_connections")
    return instance_of(timeouts, ModelTimeouts, f"{owner}.timeouts")


def api_key_for(
    api_key: str | None, *, env: str, base_url: str, default_url: str, missing: str
) -> str | None:
    """The key given, else ``$env``; the provider's own endpoint refuses to start without one.

    Other base URLs (a proxy, a local server, a test double) may need no key.
    """
    key = api_key if api_key is not None else os.environ.get(env)
    if not key and base_url.rstrip("/") == default_url:
        raise ConfigurationError(missing)
    return key


def plain(value: object) -> object:
    """``json.dumps`` ``default=``: mappings that are not dicts are sent as objects."""
    if isinstance(value, Mapping):
        return dict(value)
    msg = f"{type(value).__name__} cannot be sent as JSON"
    raise TypeError(msg)


def json_body(body: bytes, *, provider: str, model: str) -> Any:
    """A 2xx body, decoded; one that is not JSON is a :class:`MalformedResponse`."""
    try:
        return json.loads(body)
    except ValueError as exc:
        msg = f"the response body is not JSON ({len(body)} bytes)"
        raise MalformedResponse(msg, provider=provider, model=model) from exc


def interruption(
    cause: ProviderError | None,
    *,
    provider: str,
    model: str,
    delivered_text: str,
    delivered_chunks: int,
    missing: str,
) -> ProviderError:
    """The error for a stream that ended before its ``missing`` finish marker.

    :class:`StreamInterrupted` once the caller has text; before that, the
    cause itself (nothing was delivered, so the call can simply be redone).
    """
    if delivered_chunks:
        interrupted = StreamInterrupted(
            _why_cut(cause, missing),
            provider=provider,
            model=model,
            delivered_text=delivered_text,
            delivered_chunks=delivered_chunks,
        )
        interrupted.__cause__ = cause
        return interrupted
    if cause is not None:
        return cause
    return ProviderConnectionError(
        "the stream ended before any part of the answer", provider=provider, model=model
    )


def _why_cut(cause: ProviderError | None, missing: str) -> str:
    if cause is None:
        return f"the stream ended without a {missing}"
    if isinstance(cause, ProviderTimeout):
        return f"the stream stalled ({cause.kind} limit of {cause.timeout:g}s)"
    if isinstance(cause, ProviderConnectionError):
        return "the connection broke mid-stream"
    return f"the stream failed ({type(cause).__name__})"


class HTTPModel:
    """The shell of a chat model behind an HTTP API: transport, lifecycle, read loop.

    Subclasses validate their own options, build their headers, and keep the
    wire format; they hand the pooled connection settings to ``__init__``.
    """

    __slots__ = ("_bus", "_clock", "_errors", "_model", "_name", "_path", "_transport")

    _EVENT_NAME: ClassVar[str]
    """What a stream event should have been, for the skipped-event reason."""

    def __init__(
        self,
        model: str,
        *,
        name: str | None,
        clock: Clock,
        bus: EventBus | None,
        path: str,
        errors: ErrorMapper,
        base_url: str,
        provider: str,
        headers: Mapping[str, str],
        timeouts: ModelTimeouts,
        max_connections: int,
        query: Mapping[str, str] | None = None,
    ) -> None:
        self._model = model
        self._name = name or model
        self._clock = clock
        self._bus = bus
        self._path = path
        self._errors: ErrorMapper = errors
        self._transport = Transport(
            base_url,
            provider=provider,
            headers=headers,
            query=query,
            timeouts=timeouts,
            clock=clock,
            max_connections=max_connections,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model!r}, base_url={self._transport.base_url!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        """The model asked for when a request does not name one."""
        return self._model

    @property
    def url(self) -> str:
        """Where requests go."""
        return self._transport.url(self._path)

    @property
    def timeouts(self) -> ModelTimeouts:
        return self._transport.timeouts

    def _model_for(self, request: ChatRequest) -> str:
        return request.model or self._model

    async def _ask(self, body: bytes, model: str, parse: Callable[..., Completion]) -> Completion:
        """POST ``body``; ``parse(data, latency_s=, ttft_s=)`` reads the answer."""
        reply = await self._transport.post(self._path, body, model=model)
        if not 200 <= reply.status < 300:
            raise self._errors(
                reply.status, reply.headers, reply.body, model=model, now=self._clock.time()
            )
        data = json_body(reply.body, provider=self._transport.provider, model=model)
        return parse(
            data,
            latency_s=self._clock.monotonic() - reply.started_at,
            ttft_s=reply.headers_at - reply.started_at,
        )

    async def _relay(
        self,
        body: bytes,
        model: str,
        whole: Callable[[Any], Completion],
        assembler: Assembly,
    ) -> AsyncGenerator[StreamChunk, None]:
        """Open a stream and yield its chunks; ``whole`` reads a server's one-piece answer."""
        http = await self._transport.open_stream(self._path, body, model=model)
        try:
            if not 200 <= http.status < 300:
                raw = await http.read_all()
                raise self._errors(
                    http.status, http.headers, raw, model=model, now=self._clock.time()
                )
            if "event-stream" not in http.headers.get("Content-Type", ""):
                # Some servers and proxies ignore stream=true and answer in one piece.
                provider = self._transport.provider
                answer = whole(json_body(await http.read_all(), provider=provider, model=model))
                if answer.text:
                    yield StreamChunk(text=answer.text, model=answer.model)
                yield StreamChunk(
                    model=answer.model,
                    tool_calls=answer.tool_calls,
                    finish_reason=answer.finish_reason,
                    usage=answer.usage,
                )
                return
            async with contextlib.aclosing(self._read_stream(http, model, assembler)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            http.close()

    async def _read_stream(
        self, http: HttpStream, model: str, assembler: Assembly
    ) -> AsyncGenerator[StreamChunk, None]:
        parser = SSEParser()
        position = 0
        while True:
            try:
                data = await http.read()
            except ProviderError as exc:
                if assembler.complete:
                    break  # the answer was complete; only usage or the end marker went missing
                raise assembler.interrupted(exc)  # noqa: B904 - the cause is set on the error
            skipped = parser.skipped
            try:
                events = parser.feed(data) if data else parser.close()
            except StreamTooLarge as exc:
                provider = self._transport.provider
                raise MalformedResponse(str(exc), provider=provider, model=model) from exc
            for _ in range(parser.skipped - skipped):
                self._skipped(model, position, "an event that is not UTF-8")
                position += 1
            for event in events:
                position += 1
                try:
                    chunk = assembler.take(event)
                except (ValueError, TypeError, AttributeError, KeyError) as exc:
                    self._skipped(model, position - 1, self._unreadable(exc))
                    continue
                except ProviderError as exc:
                    raise assembler.interrupted(exc)  # noqa: B904 - the cause is set on the error
                if assembler.started and not assembler.timing_switched:
                    assembler.timing_switched = True
                    http.first_token()
                if chunk is not None:
                    yield chunk
                if assembler.ended:
                    if not assembler.complete:
                        raise assembler.interrupted(None)
                    yield assembler.final()
                    return
            if not data:
                break
        if not assembler.complete:
            raise assembler.interrupted(None)
        yield assembler.final()

    def _unreadable(self, exc: BaseException) -> str:
        if isinstance(exc, ValueError):
            return "an event whose data is not JSON"
        return f"an event that is not {self._EVENT_NAME}"

    def _skipped(self, model: str, position: int, reason: str) -> None:
        bus = self._bus if self._bus is not None else default_bus()
        bus.emit(
            StreamEventSkipped(source=self._name, model=model, position=position, reason=reason)
        )

    async def aclose(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
