"""Anthropic's Messages API (Claude), over ``POST /v1/messages``.

The Messages API says the same things as OpenAI's chat completions in a
different shape, and each difference is a place where a careless translation
loses a request:

* the system prompt sits beside the messages, not among them;
* turns are lists of content blocks; a tool call is a ``tool_use`` block in
  an assistant turn and its answer a ``tool_result`` block in a *user* turn,
  so consecutive tool results have to share one user turn;
* ``max_tokens`` is mandatory, and ``temperature`` stops at 1;
* there is no JSON mode;
* a conversation that ends with an assistant turn is a *prefill*: the model
  continues that text instead of starting a new answer. This is what lets a
  fallback chain continue a broken stream on a Claude backup without the user
  seeing a seam -- but the API refuses a prefill that ends in whitespace, so
  the whitespace is held back here and the continuation's echo of it dropped;
* usage is split three ways (fresh input, cache reads, cache writes);
* a stream can carry an ``error`` event after a 200, and rate-limit resets
  come as RFC 3339 timestamps.

The wire rules are pure functions (request body, message parsing, stream
assembly, error mapping); :class:`AnthropicModel` is the thin shell that
moves bytes through the shared transport. Errors map to the provider
hierarchy the resilience core reads:

=============================================  ===================================
HTTP answer (or ``error`` event in a stream)    error
=============================================  ===================================
429 / ``rate_limit_error`` (``retry-after``,   :class:`ProviderRateLimited`, with
``anthropic-ratelimit-*-reset``)                ``retry_after`` in seconds
529 / ``overloaded_error``, 500-599, 408, 409   :class:`ProviderUnavailable`
4xx, "prompt is too long" or "exceed context    :class:`ContextLengthExceeded`
limit" in the message
4xx, "content filtering policy" or "usage       :class:`ContentPolicyViolation`
policy" in the message
401, 403                                        :class:`AuthenticationFailed`
other 4xx                                       :class:`ProviderBadRequest`
a 2xx body or event that cannot be read         :class:`MalformedResponse`
=============================================  ===================================
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.events import EventBus
from bastion._core.usage import Usage
from bastion._core.validate import whole_number
from bastion.models._errors import (
    AuthenticationFailed,
    ContentPolicyViolation,
    ContextLengthExceeded,
    MalformedResponse,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from bastion.models._provider import (
    HTTPModel,
    api_key_for,
    checked_model_name,
    connection_limits,
    interruption,
    plain,
)
from bastion.models._sse import SSEEvent
from bastion.models._timeouts import ModelTimeouts
from bastion.models._transport import retry_after_from_headers
from bastion.models._types import (
    ChatRequest,
    Completion,
    FinishReason,
    Message,
    StreamChunk,
    ToolCall,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_VERSION",
    "AnthropicModel",
    "MessageAssembler",
    "encode_request",
    "error_from_response",
    "normalise_stop",
    "parse_message",
    "parse_usage",
    "retry_after_from_anthropic",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
PROVIDER = "anthropic"
_PATH = "/v1/messages"


class AnthropicModel(HTTPModel):
    """A Claude model behind Anthropic's Messages API.

    >>> model = AnthropicModel("claude-sonnet-4-5", api_key="sk-ant-...")   # doctest: +SKIP

    ``api_key`` defaults to ``$ANTHROPIC_API_KEY`` (sent as ``x-api-key``);
    a ``base_url`` other than Anthropic's own (a proxy, a test server) may do
    without one. ``name`` (default: the model) is how completions, metrics and
    the router refer to this model. ``anthropic_version`` is sent as the
    ``anthropic-version`` header. ``max_tokens_default`` is sent when a
    request does not set ``max_tokens``, because the API will not answer
    without one.

    One pooled connection set per model object, opened on first use. Close it
    with ``await model.aclose()`` or ``async with model:``.
    """

    __slots__ = ("_max_tokens",)

    _EVENT_NAME = "a Messages stream event"

    supports_prefill = True
    """Claude continues a trailing assistant message, so a fallback chain can hand it a
    broken answer to finish instead of starting over."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeouts: ModelTimeouts | None = None,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        headers: Mapping[str, str] | None = None,
        anthropic_version: str = DEFAULT_VERSION,
        max_tokens_default: int = 4096,
        max_connections: int = 100,
        bus: EventBus | None = None,
    ) -> None:
        checked_model_name(model, "AnthropicModel", "claude-sonnet-4-5")
        if not isinstance(anthropic_version, str) or not anthropic_version.strip():
            msg = (
                "AnthropicModel.anthropic_version must be an API version date such as "
                f"{DEFAULT_VERSION!r}; got {anthropic_version!r}"
            )
            raise ConfigurationError(msg)
        whole_number(
            max_tokens_default,
            "AnthropicModel.max_tokens_default",
            hint="the Messages API requires max_tokens on every request",
        )
        limits = connection_limits(
            "AnthropicModel", max_connections=max_connections, timeouts=timeouts
        )
        key = api_key_for(
            api_key,
            env="ANTHROPIC_API_KEY",
            base_url=base_url,
            default_url=DEFAULT_BASE_URL,
            missing=(
                f"AnthropicModel({model!r}) needs an API key for {DEFAULT_BASE_URL}: pass "
                "api_key= or set ANTHROPIC_API_KEY"
            ),
        )
        wire_headers = {
            "Content-Type": "application/json",
            "anthropic-version": anthropic_version,
            "User-Agent": "bastion",
        }
        if key:
            wire_headers["x-api-key"] = key
        wire_headers.update(headers or {})
        super().__init__(
            model,
            name=name,
            clock=clock,
            bus=bus,
            path=_PATH,
            errors=error_from_response,
            base_url=base_url,
            provider=PROVIDER,
            headers=wire_headers,
            timeouts=limits,
            max_connections=max_connections,
        )
        self._max_tokens = max_tokens_default

    async def complete(self, request: ChatRequest) -> Completion:
        """Ask for the whole answer in one response."""
        model = self._model_for(request)
        body, held_back = _wire_body(
            request, model=model, stream=False, max_tokens=self._max_tokens
        )
        parse = partial(parse_message, model=model, held_back=held_back)
        return await self._ask(_dump(body), model, parse)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Yield the answer as it is written; the last chunk has the finish reason and usage.

        A stream that breaks after part of the answer was yielded raises
        :class:`StreamInterrupted` (with the text delivered so far); one that
        breaks before anything was yielded raises the underlying error. A
        content-policy block is raised as :class:`ContentPolicyViolation`
        either way: continuing elsewhere would route around it.
        """
        model = self._model_for(request)
        body, held_back = _wire_body(request, model=model, stream=True, max_tokens=self._max_tokens)
        whole = partial(parse_message, model=model, held_back=held_back)
        assembler = MessageAssembler(model, held_back=held_back)
        relay = self._relay(_dump(body), model, whole, assembler)
        async with contextlib.aclosing(relay) as chunks:
            async for chunk in chunks:
                yield chunk


# -- request -------------------------------------------------------------------------------


def encode_request(
    request: ChatRequest, *, model: str, stream: bool, max_tokens_default: int = 4096
) -> bytes:
    """The JSON body of a ``/v1/messages`` request."""
    body, _ = _wire_body(request, model=model, stream=stream, max_tokens=max_tokens_default)
    return _dump(body)


def _dump(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=plain).encode()


def _wire_body(
    request: ChatRequest, *, model: str, stream: bool, max_tokens: int
) -> tuple[dict[str, Any], int]:
    """The request body, and how many whitespace characters were cut off the end of a prefill."""
    turns, held_back = _turns(request.messages)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens or max_tokens,
        "messages": turns,
    }
    system = [message.content for message in request.messages if message.role == "system"]
    instruction = _format_instruction(request.response_format)
    if instruction:
        system.append(instruction)
    system = [part for part in system if part]
    if system:
        body["system"] = "\n\n".join(system)
    if stream:
        body["stream"] = True
    if request.tools:
        body["tools"] = [
            {
                "name": tool.name,
                **({"description": tool.description} if tool.description else {}),
                "input_schema": tool.parameters,
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = _TOOL_CHOICES.get(choice) or {"type": "tool", "name": choice}
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    return body, held_back


_TOOL_CHOICES: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "any": {"type": "any"},
    "none": {"type": "none"},
}


def _turns(messages: Sequence[Message]) -> tuple[list[dict[str, Any]], int]:
    """User and assistant turns as content blocks; same-role neighbours become one turn.

    Tool results become ``tool_result`` blocks in a user turn, so a run of
    them (and the user text after them) shares one turn, as the API requires.
    A final assistant turn is a prefill; its trailing whitespace, which the
    API refuses, is cut and counted.
    """
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role == "system":
            continue
        blocks: list[dict[str, Any]]
        if role == "tool":
            role = "user"
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id,
                    "content": message.content,
                }
            ]
        else:
            blocks = [{"type": "text", "text": message.content}] if message.content else []
            blocks += [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}
                for call in message.tool_calls
            ]
        if not blocks:
            continue  # an empty turn says nothing, and the API refuses empty text
        if turns and turns[-1]["role"] == role:
            _merge(turns[-1]["content"], blocks, role)
        else:
            turns.append({"role": role, "content": blocks})
    held_back = 0
    if turns and turns[-1]["role"] == "assistant" and turns[-1]["content"][-1]["type"] == "text":
        content = turns[-1]["content"]
        text: str = content[-1]["text"]
        kept = text.rstrip()
        held_back = len(text) - len(kept)
        if kept:
            content[-1] = {"type": "text", "text": kept}
        else:
            content.pop()
            if not content:
                turns.pop()
    return turns, held_back


def _merge(into: list[dict[str, Any]], blocks: list[dict[str, Any]], role: str) -> None:
    if role == "assistant" and into[-1]["type"] == "text" and blocks[0]["type"] == "text":
        # One assistant text continued (a prefill and the partial answer after it).
        into[-1] = {"type": "text", "text": into[-1]["text"] + blocks[0]["text"]}
        blocks = blocks[1:]
    into.extend(blocks)


def _input(call: ToolCall) -> Any:
    """The tool call's arguments as the JSON object the API wants; ``{}`` when they are not one."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_JSON_INSTRUCTION = (
    "Reply with a single JSON object and nothing else: no text before or after it, "
    "no Markdown code fences."
)


def _format_instruction(value: str | Mapping[str, Any] | None) -> str | None:
    """The system-prompt line that stands in for a JSON mode the API does not have."""
    if value is None or value == "text":
        return None
    if value == "json":
        return _JSON_INSTRUCTION
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return _JSON_INSTRUCTION
        schema: Any = value
        if kind == "json_schema":
            wrapper = value.get("json_schema")
            schema = wrapper.get("schema", {}) if isinstance(wrapper, Mapping) else {}
        shown = json.dumps(schema, ensure_ascii=False, default=plain)
        return (
            "Reply with a single JSON object that is valid against this JSON schema, and "
            f"nothing else (no text around it, no Markdown code fences): {shown}"
        )
    msg = f"ChatRequest.response_format must be 'text', 'json' or a JSON schema; got {value!r}"
    raise ConfigurationError(msg)


# -- response ------------------------------------------------------------------------------


def parse_message(
    data: Any,
    *,
    model: str,
    latency_s: float = 0.0,
    ttft_s: float | None = None,
    held_back: int = 0,
) -> Completion:
    """A :class:`Completion` from a ``message`` object; ``model`` is the one asked for.

    Text blocks are joined; ``tool_use`` blocks become tool calls with their
    ``input`` as JSON text; other blocks (thinking, server tools) are left
    out. ``held_back`` is the whitespace cut off a prefill: as much leading
    whitespace of the answer is dropped, since the caller already has it.
    """
    try:
        content = data["content"]
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in content:
            kind = block.get("type")
            if kind == "text":
                texts.append(_checked_text(block["text"]))
            elif kind == "tool_use":
                calls.append(
                    ToolCall(
                        id=block.get("id") or f"toolu_{len(calls)}",
                        name=block["name"],
                        arguments=json.dumps(block.get("input") or {}, ensure_ascii=False),
                    )
                )
        text, _ = _trim("".join(texts), held_back)
        served = data.get("model")
        ident = data.get("id")
        return Completion(
            text=text,
            model=served if isinstance(served, str) and served else model,
            finish_reason=normalise_stop(data.get("stop_reason"), has_tool_calls=bool(calls)),
            tool_calls=tuple(calls),
            usage=parse_usage(data.get("usage")),
            latency_s=latency_s,
            ttft_s=ttft_s,
            id=ident if isinstance(ident, str) else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        msg = "the response is not a Messages API message (no content blocks)"
        raise MalformedResponse(msg, provider=PROVIDER, model=model) from exc


def _checked_text(value: Any) -> str:
    if not isinstance(value, str):
        msg = f"a text block holds {type(value).__name__}, not text"
        raise TypeError(msg)
    return value


def _trim(text: str, budget: int) -> tuple[str, int]:
    """Drop up to ``budget`` leading whitespace characters; return the text and what is left.

    The budget ends at the first character that is not whitespace: only the
    answer's echo of the held-back whitespace is dropped, never its words.
    """
    if not budget:
        return text, 0
    limit = min(budget, len(text))
    cut = 0
    while cut < limit and text[cut].isspace():
        cut += 1
    return text[cut:], (0 if cut < len(text) else budget - cut)


def parse_usage(raw: Any) -> Usage:
    """Usage with cache reads and cache writes counted as input; cache reads are the cached part.

    Anthropic's ``input_tokens`` is only the input that neither came from
    nor went into the prompt cache, so the three are added up.
    """
    if not isinstance(raw, Mapping):
        return Usage()
    fresh, read, written, output = _usage_counts(raw, (0, 0, 0, 0))
    return Usage(input_tokens=fresh + read + written, output_tokens=output, cached_tokens=read)


_USAGE_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)


def _usage_counts(
    raw: Mapping[str, Any], previous: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """The four counts in ``raw``; a field it leaves out keeps its ``previous`` value."""
    fresh, read, written, output = (
        _count(raw[name]) if name in raw and raw[name] is not None else previous[index]
        for index, name in enumerate(_USAGE_FIELDS)
    )
    return fresh, read, written, output


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "pause_turn": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def normalise_stop(reason: Any, *, has_tool_calls: bool) -> FinishReason:
    """One of the five finish reasons for a ``stop_reason``.

    ``pause_turn`` (a long server-tool turn the API paused) is ``length``: the
    answer is unfinished and continues when sent back as an assistant turn.
    """
    finish = _STOP.get(reason, "stop") if isinstance(reason, str) else "stop"
    if has_tool_calls and finish == "stop":
        return "tool_calls"
    return finish


class MessageAssembler:
    """Turns Messages stream events into :class:`StreamChunk` s, pure and I/O-free.

    Text deltas are passed on as they come. A ``tool_use`` block's input
    arrives as pieces of JSON text (``input_json_delta``); the pieces are
    put together here and the tool calls handed over whole on the final
    chunk, with the finish reason and the usage (from ``message_start``,
    updated by ``message_delta``).
    """

    __slots__ = (
        "_held_back",
        "_texts",
        "_tools",
        "_usage",
        "chunks",
        "model",
        "reason",
        "started",
        "stopped",
        "timing_switched",
    )

    def __init__(self, model: str, *, held_back: int = 0) -> None:
        self.model = model
        self._held_back = held_back
        self._texts: list[str] = []
        self._tools: dict[int, list[Any]] = {}
        self._usage: tuple[int, int, int, int] | None = None
        self.reason: str | None = None
        """The ``stop_reason``, once ``message_delta`` has said it."""
        self.stopped = False
        """Whether ``message_stop`` arrived."""
        self.chunks = 0
        """Text chunks handed to the caller so far."""
        self.started = False
        """Whether any part of the answer (text, a tool call, a stop reason) has arrived."""
        self.timing_switched = False

    @property
    def text(self) -> str:
        """The text handed to the caller so far."""
        return "".join(self._texts)

    @property
    def complete(self) -> bool:
        """Whether the stop reason has arrived."""
        return self.reason is not None

    @property
    def ended(self) -> bool:
        """Whether ``message_stop`` arrived."""
        return self.stopped

    def take(self, event: SSEEvent) -> StreamChunk | None:
        """Take one SSE event: its JSON data, typed by the event name when it has no ``type``."""
        return self.accept(json.loads(event.data), event.event)

    def accept(self, obj: Any, event: str = "message") -> StreamChunk | None:
        """Take one decoded event; return the chunk to pass on now, if it carries text.

        ``event`` is the SSE event name, used when the data has no ``type``.
        Unknown event and delta types are ignored (the API adds new ones).
        """
        if not isinstance(obj, Mapping):
            msg = f"a stream event is {type(obj).__name__}, not an object"
            raise TypeError(msg)
        kind = obj.get("type") or event
        if kind == "content_block_delta":
            delta = obj["delta"]
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                return self._text(delta["text"])
            if delta_kind == "input_json_delta":
                piece = delta.get("partial_json")
                if piece:
                    self._tool(obj.get("index"))[2].append(_checked_text(piece))
            return None
        if kind == "content_block_start":
            block = obj["content_block"]
            block_kind = block.get("type")
            if block_kind == "tool_use":
                self.started = True
                entry = self._tool(obj.get("index"))
                entry[0] = block.get("id") or entry[0]
                entry[1] = block.get("name") or entry[1]
                entry[3] = block.get("input")
            elif block_kind == "text" and block.get("text"):
                return self._text(block["text"])
            return None
        if kind == "message_start":
            message = obj["message"]
            served = message.get("model")
            if isinstance(served, str) and served:
                self.model = served
            self._take_usage(message.get("usage"))
        elif kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            if isinstance(reason, str) and reason:
                self.started = True
                self.reason = reason
            self._take_usage(obj.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            raise _stream_error(obj.get("error"), self.model)
        return None

    def _text(self, text: Any) -> StreamChunk | None:
        self.started = True
        text, self._held_back = _trim(_checked_text(text), self._held_back)
        if not text:
            return None
        self._texts.append(text)
        self.chunks += 1
        return StreamChunk(text=text, model=self.model)

    def _tool(self, index: Any) -> list[Any]:
        if not isinstance(index, int):
            index = len(self._tools)
        entry = self._tools.get(index)
        if entry is None:
            entry = self._tools[index] = ["", "", [], None]
        return entry

    def _take_usage(self, raw: Any) -> None:
        if isinstance(raw, Mapping):
            self._usage = _usage_counts(raw, self._usage or (0, 0, 0, 0))

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=entry[0] or f"toolu_{index}", name=entry[1], arguments=_arguments(entry))
            for index, entry in sorted(self._tools.items())
        )

    def final(self) -> StreamChunk:
        """The last chunk: finish reason, whole tool calls, usage."""
        calls = self.tool_calls()
        usage = None
        if self._usage is not None:
            fresh, read, written, output = self._usage
            usage = Usage(
                input_tokens=fresh + read + written, output_tokens=output, cached_tokens=read
            )
        return StreamChunk(
            model=self.model,
            tool_calls=calls,
            finish_reason=normalise_stop(self.reason, has_tool_calls=bool(calls)),
            usage=usage,
        )

    def interrupted(self, cause: ProviderError | None) -> ProviderError:
        """The error for a stream that ended before its stop reason.

        :class:`StreamInterrupted` once the caller has text; before that, the
        cause itself (nothing was delivered, so the call can simply be redone).
        A content-policy block is never dressed up as an interruption: that
        would invite a fallback chain to continue the answer elsewhere.
        """
        delivered = 0 if isinstance(cause, ContentPolicyViolation) else self.chunks
        return interruption(
            cause,
            provider=PROVIDER,
            model=self.model,
            delivered_text=self.text if delivered else "",
            delivered_chunks=delivered,
            missing="stop reason",
        )


def _arguments(entry: list[Any]) -> str:
    """A tool call's JSON text, written the way :func:`parse_message` writes it."""
    pieces: list[str] = entry[2]
    if not pieces:
        start = entry[3]
        return json.dumps(start, ensure_ascii=False) if isinstance(start, dict) else "{}"
    raw = "".join(pieces)
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False)
    except ValueError:
        return raw  # the model wrote bad JSON: pass it on for the tool layer to report


# -- errors --------------------------------------------------------------------------------

_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""The HTTP status each error type stands for; an ``error`` event in a stream has only its type."""

_CONTEXT_MARKERS = ("prompt is too long", "exceed context limit", "context window")
_POLICY_MARKERS = ("content filtering policy", "usage policy")


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, *, model: str | None, now: float
) -> ProviderError:
    """The typed error for an HTTP answer that is not a success; ``now`` is wall-clock time."""
    message, _ = _error_fields(body)
    retry_after = retry_after_from_anthropic(headers, now=now) if status == 429 else None
    return _mapped(status, message or f"HTTP {status}", model, retry_after, status)


def _mapped(
    status: int, text: str, model: str | None, retry_after: float | None, status_code: int | None
) -> ProviderError:
    """The error for ``status``; ``status_code`` is what it records (None after a 200)."""
    code = status_code
    if status == 429:
        return ProviderRateLimited(
            text, provider=PROVIDER, model=model, status_code=code, retry_after=retry_after
        )
    if status >= 500 or status in (408, 409):
        return ProviderUnavailable(text, provider=PROVIDER, model=model, status_code=code)
    if status in (401, 403):
        return AuthenticationFailed(text, provider=PROVIDER, model=model, status_code=code)
    if 400 <= status < 500:
        lowered = text.lower()
        if any(marker in lowered for marker in _CONTEXT_MARKERS):
            return ContextLengthExceeded(text, provider=PROVIDER, model=model, status_code=code)
        if any(marker in lowered for marker in _POLICY_MARKERS):
            return ContentPolicyViolation(text, provider=PROVIDER, model=model, status_code=code)
        return ProviderBadRequest(text, provider=PROVIDER, model=model, status_code=code)
    return MalformedResponse(
        f"unexpected HTTP status {status}", provider=PROVIDER, model=model, status_code=status
    )


def _stream_error(error: Any, model: str) -> ProviderError:
    """The error an ``error`` event stands for: classified by the HTTP status its type names.

    It records no ``status_code``: the response itself was a 200.
    """
    kind = error.get("type") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else error
    text = f"the provider reported an error mid-stream: {_clip(str(message or kind))}"
    status = _ERROR_STATUS.get(kind) if isinstance(kind, str) else None
    if status is None:
        return ProviderUnavailable(text, provider=PROVIDER, model=model)
    return _mapped(status, text, model, None, None)


def _error_fields(body: bytes) -> tuple[str, str | None]:
    """``(message, type)`` from a Messages API error body, or its raw text."""
    try:
        data = json.loads(body)
    except ValueError:
        return _clip(body.decode("utf-8", "replace").strip()), None
    error = data.get("error", data) if isinstance(data, Mapping) else data
    if isinstance(error, str):
        return _clip(error), None
    if not isinstance(error, Mapping):
        return _clip(str(error)), None
    message = error.get("message")
    kind = error.get("type")
    return (_clip(str(message)) if message else "", kind if isinstance(kind, str) else None)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_RESET_PREFIX = "anthropic-ratelimit-"
_RESET_SUFFIX = "-reset"


def retry_after_from_anthropic(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds a 429 asked us to wait; ``now`` is wall-clock time (the clock's ``time()``).

    ``retry-after`` (and ``retry-after-ms``) first: it is the API's own
    answer. Failing that, the ``anthropic-ratelimit-{kind}-reset`` headers
    (``requests``, ``tokens``, ``input-tokens``, ``output-tokens``, ...), RFC
    3339 timestamps measured from ``now``: the latest reset among the limits
    whose ``-remaining`` is 0, else the latest of all. None when no header
    says anything usable.
    """
    explicit = retry_after_from_headers(headers, now=now)
    if explicit is not None:
        return explicit
    lowered = {key.lower(): value for key, value in headers.items()}
    resets: list[float] = []
    exhausted: list[float] = []
    for name, value in lowered.items():
        if not (name.startswith(_RESET_PREFIX) and name.endswith(_RESET_SUFFIX)):
            continue
        delay = _seconds_until(value, now)
        if delay is None:
            continue
        resets.append(delay)
        kind = name[len(_RESET_PREFIX) : -len(_RESET_SUFFIX)]
        if lowered.get(f"{_RESET_PREFIX}{kind}-remaining", "").strip() == "0":
            exhausted.append(delay)
    if exhausted:
        return max(exhausted)
    return max(resets) if resets else None


def _seconds_until(timestamp: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(timestamp.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)
