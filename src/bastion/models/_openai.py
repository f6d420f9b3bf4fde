"""OpenAI-compatible chat completions: OpenAI itself, Azure OpenAI, and every server that copies it.

vLLM, Ollama, Groq, Together, LM Studio and many gateways speak the same
``POST /chat/completions`` dialect, so one provider serves them all: point
``base_url`` at the server. What differs between them is tolerated rather
than configured -- a finish reason spelled ``eos``, tool calls announced with
``finish_reason: "stop"``, usage reported on the finish chunk or after it,
a server that answers a stream request with one JSON body.

The wire rules live here once, as pure functions (request body, completion,
stream assembly, error mapping); :class:`OpenAIModel` is the thin shell that
sends bytes through the transport. Errors map to the provider hierarchy the
resilience core reads:

==========================================  ===================================
HTTP answer                                  error
==========================================  ===================================
429 (``retry-after``, ``retry-after-ms``,    :class:`ProviderRateLimited`, with
``x-ratelimit-reset-*``)                     ``retry_after`` in seconds
429 with code ``insufficient_quota``         :class:`ProviderBadRequest`: waiting will not help
500-599, 529; 408, 409                       :class:`ProviderUnavailable`
4xx, code ``context_length_exceeded`` or     :class:`ContextLengthExceeded`
"maximum context length" in the message
4xx, code ``content_filter``,                :class:`ContentPolicyViolation`
``content_policy_violation``, ``invalid_prompt``
401, 403                                     :class:`AuthenticationFailed`
other 4xx                                    :class:`ProviderBadRequest`
a 2xx body or event that cannot be read      :class:`MalformedResponse`
==========================================  ===================================

A 200 can be a refusal too. Azure OpenAI's content filter answers with
``finish_reason: "content_filter"`` and no content: that raises
:class:`ContentPolicyViolation` (naming the filtered categories when the
body lists them), never an empty success. When the filter cut an answer
that had already begun, the partial text is returned (or was streamed) with
``finish_reason="content_filter"``, so the caller decides whether half an
answer is worth showing.

A stream can fail after its 200 with an ``error`` event. The event is read
like the HTTP error its ``code`` / ``type`` stand for (a number as ``code``
is taken as the HTTP status): rate limits raise :class:`ProviderRateLimited`,
server errors and overload :class:`ProviderUnavailable`, context length
:class:`ContextLengthExceeded`, content codes :class:`ContentPolicyViolation`,
authentication :class:`AuthenticationFailed`, other invalid requests
:class:`ProviderBadRequest`; an event that says nothing recognisable is
:class:`ProviderUnavailable`. None of these carries a ``status_code`` (the
HTTP status was 200). Once text was delivered, the caller gets
:class:`StreamInterrupted` instead, with that error as its ``__cause__``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any, Literal

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.events import EventBus
from bastion._core.usage import Usage
from bastion._core.validate import one_of
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
    "OpenAIModel",
    "StreamAssembler",
    "encode_request",
    "error_from_response",
    "normalise_finish",
    "parse_completion",
    "parse_usage",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PROVIDER = "openai"


class OpenAIModel(HTTPModel):
    """A chat model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    >>> model = OpenAIModel("gpt-4o-mini", api_key="sk-...")            # doctest: +SKIP
    >>> local = OpenAIModel("llama3.1", base_url="http://localhost:11434/v1")  # doctest: +SKIP

    ``api_key`` defaults to ``$OPENAI_API_KEY``; servers that need no key
    (a local vLLM or Ollama) work without one. ``name`` (default: the model)
    is how completions, metrics and the router refer to this model.

    Azure OpenAI: pass ``deployment=`` (the URL then ends in
    ``/openai/deployments/{deployment}/chat/completions``) and
    ``api_version=`` (sent as ``?api-version=``; the key then goes in an
    ``api-key`` header). ``max_tokens_param="max_completion_tokens"`` for the
    models that refuse ``max_tokens``.

    One pooled connection set per model object, opened on first use. Close it
    with ``await model.aclose()`` or ``async with model:``.
    """

    __slots__ = ("_max_tokens_param",)

    _EVENT_NAME = "a chat completion chunk"

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
        api_version: str | None = None,
        deployment: str | None = None,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        max_connections: int = 100,
        bus: EventBus | None = None,
    ) -> None:
        checked_model_name(model, "OpenAIModel", "gpt-4o")
        one_of(
            max_tokens_param,
            "OpenAIModel.max_tokens_param",
            ("max_tokens", "max_completion_tokens"),
        )
        limits = connection_limits(
            "OpenAIModel", max_connections=max_connections, timeouts=timeouts
        )
        key = api_key_for(
            api_key,
            env="OPENAI_API_KEY",
            base_url=base_url,
            default_url=DEFAULT_BASE_URL,
            missing=(
                f"OpenAIModel({model!r}) needs an API key for {DEFAULT_BASE_URL}: pass api_key= "
                "or set OPENAI_API_KEY (servers that need no key: pass their base_url)"
            ),
        )
        wire_headers = {"Content-Type": "application/json", "User-Agent": "bastion"}
        if key:
            if api_version is not None:
                wire_headers["api-key"] = key
            else:
                wire_headers["Authorization"] = f"Bearer {key}"
        wire_headers.update(headers or {})
        super().__init__(
            model,
            name=name,
            clock=clock,
            bus=bus,
            path=(
                f"/openai/deployments/{deployment}/chat/completions"
                if deployment
                else "/chat/completions"
            ),
            errors=error_from_response,
            base_url=base_url,
            provider=PROVIDER,
            headers=wire_headers,
            query={"api-version": api_version} if api_version is not None else None,
            timeouts=limits,
            max_connections=max_connections,
        )
        self._max_tokens_param = max_tokens_param

    async def complete(self, request: ChatRequest) -> Completion:
        """Ask for the whole answer in one response."""
        model = self._model_for(request)
        body = encode_request(
            request, model=model, stream=False, max_tokens_param=self._max_tokens_param
        )
        return await self._ask(body, model, partial(parse_completion, model=model))

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Yield the answer as it is written; the last chunk has the finish reason and usage.

        A stream that breaks after part of the answer was yielded raises
        :class:`StreamInterrupted` (with the text delivered so far); one that
        breaks before anything was yielded raises the underlying error.
        """
        model = self._model_for(request)
        body = encode_request(
            request, model=model, stream=True, max_tokens_param=self._max_tokens_param
        )
        whole = partial(parse_completion, model=model)
        relay = self._relay(body, model, whole, StreamAssembler(model))
        async with contextlib.aclosing(relay) as chunks:
            async for chunk in chunks:
                yield chunk


# -- request -------------------------------------------------------------------------------


def encode_request(
    request: ChatRequest,
    *,
    model: str,
    stream: bool,
    max_tokens_param: str = "max_tokens",
) -> bytes:
    """The JSON body of a ``/chat/completions`` request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(message) for message in request.messages],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = (
            choice
            if choice in ("auto", "none", "required")
            else {"type": "function", "function": {"name": choice}}
        )
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body[max_tokens_param] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=plain).encode()


def _message(message: Message) -> dict[str, Any]:
    role = message.role
    if role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    wire: dict[str, Any] = {"role": role, "content": message.content}
    if message.name:
        wire["name"] = message.name
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return wire


def _response_format(value: str | Mapping[str, Any]) -> Mapping[str, Any]:
    if value == "text":
        return {"type": "text"}
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, Mapping):
        if value.get("type") in ("text", "json_object", "json_schema"):
            return value  # already in wire form
        title = value.get("title")
        name = title if isinstance(title, str) and title else "response"
        return {"type": "json_schema", "json_schema": {"name": name, "schema": value}}
    msg = f"ChatRequest.response_format must be 'text', 'json' or a JSON schema; got {value!r}"
    raise ConfigurationError(msg)


# -- response ------------------------------------------------------------------------------


def parse_completion(
    data: Any, *, model: str, latency_s: float = 0.0, ttft_s: float | None = None
) -> Completion:
    """A :class:`Completion` from a ``chat.completion`` object; ``model`` is the one asked for."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = _text(message.get("content"))
        calls = tuple(
            ToolCall(
                id=call.get("id") or f"call_{index}",
                name=call["function"]["name"],
                arguments=call["function"].get("arguments") or "{}",
            )
            for index, call in enumerate(message.get("tool_calls") or ())
        )
        finish = normalise_finish(choice.get("finish_reason"), has_tool_calls=bool(calls))
        if finish == "content_filter" and not text and not calls:
            raise _filtered(model, choice.get("content_filter_results"))
        served = data.get("model")
        return Completion(
            text=text,
            model=served if isinstance(served, str) and served else model,
            finish_reason=finish,
            tool_calls=calls,
            usage=parse_usage(data.get("usage")),
            latency_s=latency_s,
            ttft_s=ttft_s,
            id=data.get("id") if isinstance(data.get("id"), str) else None,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        msg = "the response is not a chat completion (no choices[0].message)"
        raise MalformedResponse(msg, provider=PROVIDER, model=model) from exc


def _filtered(model: str, results: Any) -> ContentPolicyViolation:
    """A refusal that came as a 200: ``finish_reason`` ``content_filter`` and nothing written."""
    categories = (
        sorted(
            name
            for name, verdict in results.items()
            if isinstance(verdict, Mapping) and verdict.get("filtered") is True
        )
        if isinstance(results, Mapping)
        else []
    )
    which = f" ({', '.join(categories)})" if categories else ""
    return ContentPolicyViolation(
        f"the content filter withheld the answer{which}: finish_reason content_filter, no content",
        provider=PROVIDER,
        model=model,
    )


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, as some compatible servers send
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    msg = f"message content is {type(content).__name__}, not text"
    raise TypeError(msg)


def parse_usage(raw: Any) -> Usage:
    """Token usage, with cached prompt tokens from ``prompt_tokens_details.cached_tokens``."""
    if not isinstance(raw, Mapping):
        return Usage()
    prompt = _count(raw.get("prompt_tokens"))
    details = raw.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    return Usage(
        input_tokens=prompt,
        output_tokens=_count(raw.get("completion_tokens")),
        cached_tokens=min(cached, prompt),
    )


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
    # spellings seen on compatible servers
    "eos": "stop",
    "eos_token": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "tool_use": "tool_calls",
}


def normalise_finish(reason: Any, *, has_tool_calls: bool) -> FinishReason:
    """One of the five finish reasons; tool calls win over ``stop`` (some servers say ``stop``)."""
    finish = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    if has_tool_calls and finish == "stop":
        return "tool_calls"
    return finish


class StreamAssembler:
    """Turns ``chat.completion.chunk`` objects into :class:`StreamChunk` s, pure and I/O-free.

    Text is passed on as it comes. Tool calls arrive as fragments spread over
    many chunks (an id and name first, then pieces of the arguments, keyed by
    ``index``); they are put together here and handed over whole on the final
    chunk, with the finish reason and the usage.
    """

    __slots__ = (
        "_texts",
        "_tools",
        "chunks",
        "ended",
        "finish",
        "model",
        "started",
        "timing_switched",
        "usage",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self._texts: list[str] = []
        self._tools: dict[int, list[Any]] = {}
        self.finish: FinishReason | None = None
        self.usage: Usage | None = None
        self.chunks = 0
        """Chunks handed to the caller so far."""
        self.started = False
        """Whether any part of the answer (text, a tool call, a finish reason) has arrived."""
        self.timing_switched = False
        self.ended = False
        """Whether ``data: [DONE]`` arrived."""

    @property
    def text(self) -> str:
        """The text handed to the caller so far."""
        return "".join(self._texts)

    @property
    def complete(self) -> bool:
        """Whether the finish reason has arrived."""
        return self.finish is not None

    def take(self, event: SSEEvent) -> StreamChunk | None:
        """Take one SSE event: ``[DONE]`` ends the stream, anything else is a JSON chunk."""
        if event.data == "[DONE]":
            self.ended = True
            return None
        return self.accept(json.loads(event.data))

    def accept(self, obj: Mapping[str, Any]) -> StreamChunk | None:
        """Take one decoded event; return the chunk to pass on now, if it carries text."""
        if "choices" not in obj and "error" in obj:
            raise _stream_error(obj["error"], self.model)
        usage = obj.get("usage")
        if usage:
            self.usage = parse_usage(usage)
        served = obj.get("model")
        if served and isinstance(served, str):
            self.model = served
        choices = obj.get("choices")
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        calls = delta.get("tool_calls")
        if calls:
            self.started = True
            for call in calls:
                self._tool_fragment(call)
        reason = choice.get("finish_reason")
        if reason:
            self.started = True
            self.finish = normalise_finish(reason, has_tool_calls=bool(self._tools))
        content = delta.get("content")
        if content:
            if not isinstance(content, str):
                content = _text(content)
            self.started = True
            self._texts.append(content)
            self.chunks += 1
            return StreamChunk(text=content, model=self.model)
        return None

    def _tool_fragment(self, call: Mapping[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int):
            index = len(self._tools)
        entry = self._tools.get(index)
        if entry is None:
            entry = self._tools[index] = ["", "", []]
        if call.get("id"):
            entry[0] = call["id"]
        function = call.get("function") or {}
        if function.get("name") and not entry[1]:
            entry[1] = function["name"]
        arguments = function.get("arguments")
        if arguments:
            entry[2].append(arguments)

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(
                id=entry[0] or f"call_{index}", name=entry[1], arguments="".join(entry[2]) or "{}"
            )
            for index, entry in sorted(self._tools.items())
        )

    def final(self) -> StreamChunk:
        """The last chunk: finish reason, whole tool calls, usage.

        Raises :class:`ContentPolicyViolation` when the content filter ended the
        stream before any text or tool call: an empty answer is a refusal.
        """
        calls = self.tool_calls()
        finish = self.finish or "stop"
        if finish == "content_filter" and not self.chunks and not calls:
            raise _filtered(self.model, None)
        if calls and finish == "stop":
            finish = "tool_calls"
        return StreamChunk(
            model=self.model, tool_calls=calls, finish_reason=finish, usage=self.usage
        )

    def interrupted(self, cause: ProviderError | None) -> ProviderError:
        """The error for a stream that ended before its finish reason.

        :class:`StreamInterrupted` once the caller has text; before that, the
        cause itself (nothing was delivered, so the call can simply be redone).
        """
        return interruption(
            cause,
            provider=PROVIDER,
            model=self.model,
            delivered_text=self.text if self.chunks else "",
            delivered_chunks=self.chunks,
            missing="finish reason",
        )


def _stream_error(error: Any, model: str) -> ProviderError:
    """The error an ``error`` event stands for: the HTTP error its code or type names."""
    if isinstance(error, Mapping):
        message, code, kind = error.get("message"), error.get("code"), error.get("type")
    else:
        message, code, kind = error, None, None
    said = message or kind or code
    text = f"the provider reported an error mid-stream: {_clip(str(said))}"
    code_name = code if isinstance(code, str) else None
    kind_name = kind if isinstance(kind, str) else None
    status = _implied_status(code, kind_name, text)
    if status is None:
        return ProviderUnavailable(text, provider=PROVIDER, model=model)
    return _classify(
        status, text, code_name, kind_name, model=model, status_code=None, retry_after=None
    )


_STATUS_WORDS = (
    # (words in the code or type, the HTTP status they stand for); first match wins.
    (("insufficient_quota",), 429),
    (("context_length", "content_filter", "content_policy", "invalid_prompt"), 400),
    (("rate_limit", "ratelimit"), 429),
    (("overloaded",), 529),
    (("server", "internal", "unavailable", "api_error", "timeout"), 503),
    (("authentication", "invalid_api_key", "permission"), 401),
    (("invalid_request", "badrequest", "bad_request", "not_found", "invalid"), 400),
)


def _implied_status(code: Any, kind: str | None, text: str) -> int | None:
    """The HTTP status an error event's code or type names; None when it names none."""
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    if isinstance(code, str) and code.isdigit() and 400 <= int(code) <= 599:
        return int(code)
    names = " ".join(name.lower() for name in (code, kind) if isinstance(name, str))
    for words, status in _STATUS_WORDS:
        if any(word in names for word in words):
            return status
    if "maximum context length" in text.lower():
        return 400
    return None


# -- errors --------------------------------------------------------------------------------

_CONTENT_CODES = frozenset({"content_filter", "content_policy_violation", "invalid_prompt"})


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, *, model: str | None, now: float
) -> ProviderError:
    """The typed error for an HTTP answer that is not a success; ``now`` is wall-clock time."""
    message, code, kind = _error_fields(body)
    text = message or f"HTTP {status}"
    retry_after = retry_after_from_headers(headers, now=now) if status == 429 else None
    return _classify(
        status, text, code, kind, model=model, status_code=status, retry_after=retry_after
    )


def _classify(
    status: int,
    text: str,
    code: str | None,
    kind: str | None,
    *,
    model: str | None,
    status_code: int | None,
    retry_after: float | None,
) -> ProviderError:
    """The error for ``status`` (an HTTP answer's, or the one an error event implies)."""
    if status == 429:
        if code == "insufficient_quota" or kind == "insufficient_quota":
            return ProviderBadRequest(
                f"{text} (quota exhausted: waiting will not help)",
                provider=PROVIDER,
                model=model,
                status_code=status_code,
            )
        return ProviderRateLimited(
            text,
            provider=PROVIDER,
            model=model,
            status_code=status_code,
            retry_after=retry_after,
        )
    if status >= 500 or status in (408, 409):
        return ProviderUnavailable(text, provider=PROVIDER, model=model, status_code=status_code)
    if status in (401, 403):
        return AuthenticationFailed(text, provider=PROVIDER, model=model, status_code=status_code)
    if 400 <= status < 500:
        if code == "context_length_exceeded" or "maximum context length" in text.lower():
            return ContextLengthExceeded(
                text, provider=PROVIDER, model=model, status_code=status_code
            )
        if code in _CONTENT_CODES or kind in _CONTENT_CODES:
            return ContentPolicyViolation(
                text, provider=PROVIDER, model=model, status_code=status_code
            )
        return ProviderBadRequest(text, provider=PROVIDER, model=model, status_code=status_code)
    return MalformedResponse(
        f"unexpected HTTP status {status}", provider=PROVIDER, model=model, status_code=status_code
    )


def _error_fields(body: bytes) -> tuple[str, str | None, str | None]:
    """``(message, code, type)`` from an OpenAI-style error body, or its raw text."""
    try:
        data = json.loads(body)
    except ValueError:
        return _clip(body.decode("utf-8", "replace").strip()), None, None
    error = data.get("error", data) if isinstance(data, Mapping) else data
    if isinstance(error, str):
        return _clip(error), None, None
    if not isinstance(error, Mapping):
        return _clip(str(error)), None, None
    message = error.get("message")
    code = error.get("code")
    kind = error.get("type")
    return (
        _clip(str(message)) if message else "",
        code if isinstance(code, str) else None,
        kind if isinstance(kind, str) else None,
    )


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
