"""A model that answers from a script: deterministic, in-process, no network.

Tests and demos need a model that fails *exactly* when told -- the third call
times out, the stream breaks after two chunks, the fifth answer asks for a
tool -- and that records what it was asked. ``ScriptedModel`` plays a list of
steps in order (repeating the last one when the list runs out, unless told to
cycle) and implements the full :class:`ChatModel` protocol, streaming included.

Usage is counted with a fixed rule so tests can predict it: input tokens are
the characters of all messages divided by four (rounded up), output tokens
are the words of the reply.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.usage import Usage
from bastion.models._errors import StreamInterrupted
from bastion.models._types import (
    ChatRequest,
    Completion,
    FinishReason,
    StreamChunk,
    ToolCall,
)

__all__ = ["Reply", "ScriptedModel"]

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One scripted step: an answer, a tool request, or a failure, after a delay.

    ``fail_after_chunks`` makes a stream deliver that many chunks of ``text``
    and then break with :class:`StreamInterrupted` (``complete`` raises it at once).
    """

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    latency: float = 0.0
    error: BaseException | None = None
    fail_after_chunks: int | None = None
    usage: Usage | None = None

    @classmethod
    def tool(cls, name: str, arguments: str = "{}", *, call_id: str | None = None) -> Reply:
        """A reply asking to call one tool; ``arguments`` is the JSON the model writes."""
        return cls(
            tool_calls=(
                ToolCall(id=call_id or f"call_{next(_ids)}", name=name, arguments=arguments),
            )
        )

    @classmethod
    def failure(cls, error: BaseException, *, latency: float = 0.0) -> Reply:
        return cls(error=error, latency=latency)


Step = str | Reply | BaseException | Callable[[ChatRequest], "str | Reply"]


@dataclass
class ScriptedModel:
    """A :class:`ChatModel` that plays ``script`` step by step and records every request."""

    script: Sequence[Step]
    name: str = "scripted"
    clock: Clock = SYSTEM_CLOCK
    cycle: bool = False
    requests: list[ChatRequest] = field(default_factory=list)
    supports_prefill: bool = True
    """Whether it plays along when a trailing assistant message asks it to continue."""

    def __post_init__(self) -> None:
        if isinstance(self.script, str | bytes) or not self.script:
            msg = "ScriptedModel needs a non-empty list of steps (texts, Reply objects or errors)"
            raise ValueError(msg)
        self._position = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _next(self, request: ChatRequest) -> Reply:
        self.requests.append(request)
        steps = self.script
        if self.cycle:
            step = steps[self._position % len(steps)]
        else:
            step = steps[min(self._position, len(steps) - 1)]
        self._position += 1
        if callable(step) and not isinstance(step, BaseException | Reply):
            step = step(request)
        if isinstance(step, BaseException):
            return Reply(error=step)
        if isinstance(step, str):
            return Reply(text=step)
        return step

    def _usage(self, request: ChatRequest, reply: Reply) -> Usage:
        if reply.usage is not None:
            return reply.usage
        chars = sum(len(m.content) for m in request.messages)
        return Usage(input_tokens=math.ceil(chars / 4), output_tokens=len(reply.text.split()))

    def _finish(self, reply: Reply) -> FinishReason:
        if reply.finish_reason is not None:
            return reply.finish_reason
        return "tool_calls" if reply.tool_calls else "stop"

    async def complete(self, request: ChatRequest) -> Completion:
        started = self.clock.monotonic()
        reply = self._next(request)
        if reply.latency:
            await self.clock.sleep(reply.latency)
        if reply.error is not None:
            raise reply.error
        if reply.fail_after_chunks is not None:
            raise self._interrupted("", 0)
        elapsed = self.clock.monotonic() - started
        return Completion(
            text=reply.text,
            model=request.model or self.name,
            finish_reason=self._finish(reply),
            tool_calls=reply.tool_calls,
            usage=self._usage(request, reply),
            latency_s=elapsed,
            ttft_s=elapsed,
            id=f"scripted-{next(_ids)}",
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        reply = self._next(request)
        if reply.latency:
            await self.clock.sleep(reply.latency)
        if reply.error is not None:
            raise reply.error
        model = request.model or self.name
        pieces = _chunks(reply.text)
        delivered: list[str] = []
        for index, piece in enumerate(pieces):
            if reply.fail_after_chunks is not None and index >= reply.fail_after_chunks:
                raise self._interrupted("".join(delivered), index)
            delivered.append(piece)
            yield StreamChunk(text=piece, model=model)
        if reply.fail_after_chunks is not None:
            raise self._interrupted("".join(delivered), len(pieces))
        yield StreamChunk(
            model=model,
            tool_calls=reply.tool_calls,
            finish_reason=self._finish(reply),
            usage=self._usage(request, reply),
        )

    def _interrupted(self, delivered: str, chunks: int) -> StreamInterrupted:
        return StreamInterrupted(
            "scripted stream broke",
            provider="scripted",
            model=self.name,
            delivered_text=delivered,
            delivered_chunks=chunks,
        )

    def __repr__(self) -> str:
        return f"ScriptedModel(name={self.name!r}, steps={len(self.script)}, calls={self.calls})"


def _chunks(text: str) -> list[str]:
    """Split text into word-sized pieces that concatenate back to it exactly."""
    if not text:
        return []
    pieces: list[str] = []
    current = ""
    for char in text:
        current += char
        if char == " ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces
