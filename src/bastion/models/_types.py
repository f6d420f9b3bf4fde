"""The shapes every model speaks: messages in, a completion (or a stream of chunks) out.

Providers differ on the wire -- OpenAI puts the system prompt among the
messages, Anthropic beside them; one says ``tool_calls``, the other
``tool_use`` -- but the rest of Bastion (router, budgets, cache, agent loop)
sees only these types. Each provider translates at its edge, once.

Finish reasons are normalised to five words: ``stop``, ``length``,
``tool_calls``, ``content_filter`` and ``error``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from bastion._core.usage import Usage

__all__ = [
    "Attempt",
    "ChatModel",
    "ChatRequest",
    "Completion",
    "FinishReason",
    "Message",
    "Role",
    "StreamChunk",
    "ToolCall",
    "ToolSpec",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]

_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A model's request to run one tool; ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; a clear ``ValueError`` when the model wrote bad JSON."""
        try:
            value = json.loads(self.arguments or "{}")
        except json.JSONDecodeError as exc:
            msg = f"tool call {self.name!r} has arguments that are not JSON ({exc.msg})"
            raise ValueError(msg) from exc
        if not isinstance(value, dict):
            msg = f"tool call {self.name!r} has arguments that are not a JSON object"
            raise ValueError(msg)
        return value


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation.

    ``tool`` messages answer a tool call and must name it (``tool_call_id``);
    assistant messages may carry the tool calls they asked for.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            msg = f"Message.role must be one of {_ROLES}, got {self.role!r}"
            raise ValueError(msg)
        content: object = self.content
        if not isinstance(content, str):
            msg = f"Message.content must be text, got {type(content).__name__}"
            raise TypeError(msg)
        if self.role == "tool" and not self.tool_call_id:
            msg = "a tool message must name the call it answers: pass tool_call_id"
            raise ValueError(msg)
        if self.tool_calls and self.role != "assistant":
            msg = f"only assistant messages carry tool calls, not {self.role!r} messages"
            raise ValueError(msg)

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls("user", content)

    @classmethod
    def assistant(cls, content: str = "", *, tool_calls: tuple[ToolCall, ...] = ()) -> Message:
        return cls("assistant", content, tool_calls)

    @classmethod
    def tool(cls, tool_call_id: str, content: str, *, name: str | None = None) -> Message:
        return cls("tool", content, tool_call_id=tool_call_id, name=name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """A tool as the model sees it: a name, what it is for, and a JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """What to ask a model. ``model`` overrides the provider's default model name."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    """``"auto"``, ``"none"``, ``"required"`` or a tool's name; None: the provider's default."""
    temperature: float | None = None
    max_tokens: int | None = None
    response_format: Literal["text", "json"] | Mapping[str, Any] | None = None
    """``"json"`` for any JSON object, or a JSON schema the answer must follow."""
    stop: tuple[str, ...] = ()
    model: str | None = None

    def __post_init__(self) -> None:
        messages: object = self.messages
        if not isinstance(messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            msg = "a ChatRequest needs at least one message"
            raise ValueError(msg)
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            msg = f"max_tokens must be a whole number >= 1, got {self.max_tokens!r}"
            raise ValueError(msg)
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            msg = f"temperature must be between 0 and 2, got {self.temperature!r}"
            raise ValueError(msg)

    @classmethod
    def of(cls, prompt: str, *, system: str | None = None, **options: Any) -> ChatRequest:
        """A one-question request: ``ChatRequest.of("hi", system="be brief", max_tokens=50)``."""
        messages = (Message.system(system),) if system else ()
        return cls(messages=(*messages, Message.user(prompt)), **options)

    def replace(self, **changes: Any) -> ChatRequest:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One try of one model while serving a request: who, how it ended, how long it took."""

    model: str
    error: str | None
    duration_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """A model's answer, with what it cost and how long it took.

    ``model`` names the model that actually answered -- after a fallback, not
    the one first asked -- as the provider reported it (what pricing uses);
    ``served_by`` is the name of the chain member that served it, when a
    router was involved. ``attempts`` lists every try made to get here.
    """

    text: str
    model: str
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    ttft_s: float | None = None
    id: str | None = None
    attempts: tuple[Attempt, ...] = ()
    degraded: bool = False
    served_by: str | None = None

    def message(self) -> Message:
        """The answer as the assistant turn to append to the conversation."""
        return Message.assistant(self.text, tool_calls=self.tool_calls)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamChunk:
    """A piece of a streamed answer.

    ``text`` is the new text only. Tool calls arrive whole, on the chunk that
    carries the ``finish_reason``; ``usage`` arrives on the last chunk when the
    provider reports it.

    ``restart`` is set on the first chunk of an answer that starts over: a
    stream broke midway and the model that took over could not continue the
    partial answer, so everything received before this chunk must be discarded.
    """

    text: str = ""
    model: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    restart: bool = False


@runtime_checkable
class ChatModel(Protocol):
    """Anything that answers chat requests: a provider, a scripted model, a fallback chain."""

    @property
    def name(self) -> str:
        """The model's name as reported in completions and metrics."""
        ...

    async def complete(self, request: ChatRequest) -> Completion:
        """Answer in one piece."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Answer piece by piece; the last chunk carries ``finish_reason``."""
        ...
