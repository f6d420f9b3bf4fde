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

With ``checkpoints``, a run survives its process: every step that ran tools
is saved, and a later call with the same ``run_id`` carries on after the last
saved step instead of starting over (see :meth:`Agent.run`).
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
from bastion._core.errors import BastionError, ConfigurationError, StoreUnavailableError
from bastion._core.usage import Usage
from bastion.agents import _resume
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
from bastion.stores._checkpoints import Checkpoints

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
    ``checkpoints`` makes :meth:`run` resumable by ``run_id`` after a crash;
    without it a run keeps its state in memory only and costs no store I/O.
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
        checkpoints: Checkpoints | None = None,
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
        given: object = checkpoints
        if given is not None and not isinstance(given, Checkpoints):
            msg = (
                f"Agent.checkpoints must be a bastion.stores.Checkpoints (wrap the store: "
                f"Checkpoints(store)) or None; got {given!r}"
            )
            raise ConfigurationError(msg)
        self.max_steps = max_steps
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.context = context
        self.pricing = pricing
        self.checkpoints = checkpoints
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
        """Run the loop on ``input`` (a question, or a conversation to continue).

        With ``checkpoints``, the run is saved after every step that ran tools
        (the model answered and every tool it asked for ran), under ``run_id``.
        A fresh id is made when none is given and reported in
        ``RunResult.run_id`` -- only once the run has ended, so pass your own
        for a run you may need to resume after a crash. A call whose ``run_id``
        has a checkpoint carries on after the saved step: the model is not
        asked again for the steps before it and their tools do not run again,
        and the usage, cost and messages of the whole run add up as if it had
        never stopped. The checkpoint is the run: an ``input`` that differs
        from the one it began with is ignored (logged, without its text), as
        the saved steps' tools already ran on the old one. A crash *during* a
        step -- after the model answered, while its tools ran -- redoes that
        step, so tools run at least once, not exactly once, across a crash. A
        store that fails while saving raises ``StoreUnavailableError``: a run
        that asked for durability must learn it has none. A finished run
        deletes its checkpoint, so the same ``run_id`` then starts afresh. With
        ``tenant_id`` the checkpoint lives in that tenant's scope: run ids are
        the caller's to choose, and one tenant's must never resume another's.
        """
        messages = self._start(input)
        tally = _Tally(model_used=self.model.name, pricing=self.pricing)
        ids = {"user_id": user_id, "session_id": session_id, "tenant_id": tenant_id}
        run_id = run_id or uuid.uuid4().hex
        checkpoints = self.checkpoints
        if checkpoints is not None and tenant_id is not None:
            checkpoints = checkpoints.scoped(tenant_id)  # another tenant's run_id is not ours
        start, done = len(messages), 0
        if checkpoints is not None:
            resumed = await _resume.restore(checkpoints, run_id, agent=self.name)
            if resumed is not None:
                done, progress = resumed
                messages = self._continue(run_id, done, progress, messages)
                start = progress.start
                tally.restore(progress)
        text = _last_answer(messages) if done else ""
        finish_reason, steps = "max_steps", max(done, self.max_steps)
        for step in range(done + 1, self.max_steps + 1):
            completion = await self.model.complete(self._request(messages))
            tally.add(completion)
            messages.append(completion.message())
            text = completion.text
            if not completion.tool_calls:
                finish_reason, steps = completion.finish_reason, step
                break
            messages.extend(await self._run_tools(completion.tool_calls))
            if checkpoints is not None:
                progress = tally.progress(self.name, start, messages)
                await _resume.save(checkpoints, run_id, step, progress)
                done = step
        if checkpoints is not None and done:
            await self._forget(checkpoints, run_id)
        return tally.result(text, messages, finish_reason, steps, run_id, ids)

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

        A stream is not checkpointed, even when the agent has ``checkpoints``:
        its chunks belong to one connection, and a client that lost it cannot
        be handed the middle of an answer. Use :meth:`run` for resumable runs.
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

    def _continue(
        self, run_id: str, done: int, progress: _resume.Progress, fresh: list[Message]
    ) -> list[Message]:
        """The conversation to carry on with: the checkpoint's, whatever ``fresh`` says."""
        if list(progress.messages[: progress.start]) == fresh:
            _log.info("agent %r resumes run %s after step %d", self.name, run_id, done)
        else:
            # The tools of the saved steps ran on the recorded input; continuing
            # them with another would mix two conversations. The text is not
            # logged: prompts never are.
            _log.info(
                "agent %r resumes run %s after step %d; the input given differs from the "
                "one the run began with and is ignored",
                self.name,
                run_id,
                done,
            )
        return list(progress.messages)

    async def _forget(self, checkpoints: Checkpoints, run_id: str) -> None:
        try:
            await checkpoints.delete(run_id)
        except StoreUnavailableError:
            # The answer is in hand and must not be lost to cleanup; the checkpoint
            # expires with its ttl, and until then the run_id resumes from it.
            _log.warning(
                "agent %r could not delete the checkpoint of finished run %s",
                self.name,
                run_id,
                exc_info=True,
            )

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

    def progress(self, agent: str, start: int, messages: list[Message]) -> _resume.Progress:
        return _resume.Progress(
            agent=agent,
            start=start,
            messages=tuple(messages),
            usage=self.usage,
            cost_usd=self.cost,
            priced=self.priced,
            degraded=self.degraded,
            model_used=self.model_used,
        )

    def restore(self, progress: _resume.Progress) -> None:
        self.usage = progress.usage
        self.cost = progress.cost_usd
        self.priced = progress.priced
        self.degraded = progress.degraded
        self.model_used = progress.model_used

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


def _last_answer(messages: list[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "assistant"), "")


def _as_tool(candidate: Tool | Callable[..., Any]) -> Tool:
    return candidate if isinstance(candidate, Tool) else Tool(candidate)
