"""The agent loop: ask the model, run the tools it asks for, feed the results back, repeat.

The loop is deliberately plain -- one model call per step, tools run between
steps, a hard stop at ``max_steps`` -- because everything that makes it
survive production sits around it: the model may be a fallback chain with
breakers and retries, and the whole agent can be wrapped by
``with_resilience`` unchanged (it has ``run(input, **kwargs)``).

A step that asks for tools runs them one after another, in the order the
model listed them; every outcome (result, validation error, failure, timeout)
goes back to the model as the tool's answer. The run stops when the model
answers without asking for a tool, or at ``max_steps`` with
``finish_reason="max_steps"``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import BastionError, ConfigurationError
from bastion._core.usage import Usage
from bastion.agents._tools import Tool
from bastion.models._cache import CachedModel, ResponseCache
from bastion.models._types import (
    ChatModel,
    ChatRequest,
    Completion,
    Message,
    StreamChunk,
    ToolCall,
)

__all__ = ["Agent", "RunResult", "StepLimitReached"]

_log = logging.getLogger("bastion.agents")


class StepLimitReached(BastionError):
    """A streamed run used all its steps and the model still asked for tools."""

    http_status = 502

    def __init__(self, agent: str, steps: int) -> None:
        self.agent = agent
        self.steps = steps
        super().__init__(
            f"agent {agent!r} reached max_steps={steps} while the model still asked for tools; "
            "raise max_steps or check the tools' answers"
        )


Pricer = Callable[[str, Usage], Decimal]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What one run produced, what it cost, and how it got there."""

    output: str
    messages: tuple[Message, ...]
    usage: Usage
    cost_usd: Decimal | None
    finish_reason: str
    model_used: str
    steps: int
    degraded: bool
    run_id: str
    user_id: str | None = None
    session_id: str | None = None
    tenant_id: str | None = None


class Agent:
    """A model, instructions and tools, run as a loop.

    ``pricing`` turns a model's usage into dollars for ``RunResult.cost_usd``
    (a ``PricingTable``'s ``cost`` method fits); without it the cost is None.
    ``cache`` serves repeated identical requests from a ``ResponseCache``
    (the model is wrapped in a ``CachedModel``; cache hits cost nothing).
    """

    def __init__(
        self,
        *,
        name: str,
        model: ChatModel,
        instructions: str = "",
        tools: Sequence[Tool | Callable[..., Any]] = (),
        max_steps: int = 10,
        temperature: float | None = None,
        max_tokens: int | None = None,
        context: Callable[[ChatRequest], ChatRequest] | None = None,
        cache: ResponseCache | None = None,
        pricing: Pricer | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            msg = f"Agent.max_steps must be a whole number >= 1; got {max_steps!r}"
            raise ConfigurationError(msg)
        self.name = name
        self.model: ChatModel = CachedModel(model, cache) if cache is not None else model
        self.instructions = instructions
        self.tools = {t.name: t for t in (_as_tool(x) for x in tools)}
        if len(self.tools) != len(tools):
            msg = f"Agent {name!r} has two tools with the same name"
            raise ConfigurationError(msg)
        self.max_steps = max_steps
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.context = context
        self.pricing = pricing
        self.clock = clock

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model.name!r}, tools={list(self.tools)})"

    async def run(
        self,
        input: str | Sequence[Message],
        *,
        run_id: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        tenant_id: str | None = None,
    ) -> RunResult:
        """Run the loop on ``input`` (a question, or a conversation to continue)."""
        messages = self._start(input)
        tally = _Tally(model_used=self.model.name, pricing=self.pricing)
        ids = {"user_id": user_id, "session_id": session_id, "tenant_id": tenant_id}
        run_id = run_id or uuid.uuid4().hex
        text = ""
        for step in range(1, self.max_steps + 1):
            completion = await self.model.complete(self._request(messages))
            tally.add(completion)
            messages.append(completion.message())
            text = completion.text
            if not completion.tool_calls:
                return tally.result(text, messages, completion.finish_reason, step, run_id, ids)
            messages.extend(await self._run_tools(completion.tool_calls))
        return tally.result(text, messages, "max_steps", self.max_steps, run_id, ids)

    def run_sync(self, input: str | Sequence[Message], **ids: str | None) -> RunResult:
        """Blocking :meth:`run`, for scripts; not from inside a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(input, **ids))
        msg = "Agent.run_sync() cannot run inside an event loop; use `await agent.run(...)`"
        raise ConfigurationError(msg)

    async def stream(self, input: str | Sequence[Message]) -> AsyncIterator[StreamChunk]:
        """Yield the answer's chunks as they arrive; tool steps run in between.

        A chunk with ``restart=True`` means the model behind a fallback chain
        started the answer over: discard the text received so far. A model
        that still asks for tools after ``max_steps`` raises
        :class:`StepLimitReached` rather than ending the stream silently.
        """
        messages = self._start(input)
        for _ in range(self.max_steps):
            text: list[str] = []
            calls: tuple[ToolCall, ...] = ()
            async for chunk in self.model.stream(self._request(messages)):
                if chunk.restart:
                    text.clear()
                if chunk.text:
                    text.append(chunk.text)
                if chunk.tool_calls:
                    calls = chunk.tool_calls
                yield chunk
            messages.append(Message.assistant("".join(text), tool_calls=calls))
            if not calls:
                return
            messages.extend(await self._run_tools(calls))
        raise StepLimitReached(self.name, self.max_steps)

    def _start(self, input: str | Sequence[Message]) -> list[Message]:
        history = [Message.user(input)] if isinstance(input, str) else list(input)
        if not history:
            msg = "Agent.run needs a question or a non-empty list of messages"
            raise ConfigurationError(msg)
        if self.instructions and history[0].role != "system":
            history.insert(0, Message.system(self.instructions))
        return history

    def _request(self, messages: list[Message]) -> ChatRequest:
        request = ChatRequest(
            messages=tuple(messages),
            tools=tuple(t.spec for t in self.tools.values()),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )
        return self.context(request) if self.context is not None else request

    async def _run_tools(self, calls: Sequence[ToolCall]) -> list[Message]:
        answers = []
        for call in calls:
            found = self.tools.get(call.name)
            if found is None:
                known = ", ".join(sorted(self.tools)) or "none"
                content = f"error: there is no tool named {call.name!r}; available: {known}"
            else:
                content = await found.invoke(call, clock=self.clock)
            answers.append(Message.tool(call.id, content, name=call.name))
        return answers


@dataclass(slots=True)
class _Tally:
    """What the steps of one run add up to."""

    model_used: str
    pricing: Pricer | None
    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = None
    degraded: bool = False
    priced: bool = True

    def add(self, completion: Completion) -> None:
        self.usage += completion.usage
        if self.pricing is not None and self.priced and completion.usage.total_tokens:
            try:
                price = self.pricing(completion.model, completion.usage)
            except LookupError:
                # An answer in hand is never lost to a missing price: the run's cost is
                # unknown instead (None), and the reason is logged once.
                _log.warning("no price for model %r; cost_usd is None", completion.model)
                self.priced = False
                self.cost = None
            else:
                self.cost = (self.cost or Decimal(0)) + price
        self.degraded = self.degraded or completion.degraded
        self.model_used = completion.model

    def result(
        self,
        output: str,
        messages: list[Message],
        finish_reason: str,
        steps: int,
        run_id: str,
        ids: dict[str, str | None],
    ) -> RunResult:
        return RunResult(
            output=output,
            messages=tuple(messages),
            usage=self.usage,
            cost_usd=self.cost,
            finish_reason=finish_reason,
            model_used=self.model_used,
            steps=steps,
            degraded=self.degraded,
            run_id=run_id,
            **ids,
        )


def _as_tool(candidate: Tool | Callable[..., Any]) -> Tool:
    return candidate if isinstance(candidate, Tool) else Tool(candidate)
