"""Make a conversation fit the model's context window before it is sent.

A request longer than the window is refused by the provider after a network
round trip, or -- worse -- silently truncated. Long-running agents grow their
history every step, so the history has to give way: the
:class:`ContextWindowManager` drops the oldest turns until the prompt fits
with room left for the reply.

What is never dropped: the system messages (the agent's instructions) and the
current turn -- the latest user message and everything after it. In an agent
loop the current turn holds the tool calls the model already made for this
question and their results; dropping them would make the model call the same
tools again, step after step, until the loop gives up. What is dropped together:
an assistant message that called tools and the tool results that answer it --
a tool result without its call, or a call without its results, is refused by
the providers. After dropping, the history starts on a user turn (leading
assistant or tool turns whose question is gone are dropped too), which is
also what Anthropic's API requires. When the protected messages alone do not fit,
:class:`~bastion.models._errors.ContextLengthExceeded` says by how much, so a
router can move to a model with a larger window instead of sending a request
that cannot succeed.

Only the ``"sliding-window"`` strategy exists. Shortening a message in the
middle would change what the user or a tool said; that decision belongs to
the application, not to a transport-level guard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

from bastion._core.errors import ConfigurationError
from bastion._core.validate import invalid, one_of, optional_whole_number, whole_number
from bastion.models._errors import ContextLengthExceeded
from bastion.models._pricing import UnknownModelError, close_matches, match_model
from bastion.models._tokens import (
    REPLY_PRIMING_TOKENS,
    Tokenizer,
    message_tokens,
    tokenizer_for,
    tools_tokens,
)
from bastion.models._types import ChatRequest, Message

__all__ = ["CONTEXT_WINDOWS", "ContextWindowManager", "context_window_for"]

Strategy = Literal["sliding-window"]
_STRATEGIES: Final = ("sliding-window",)

CONTEXT_WINDOWS: Final = {
    # OpenAI: prompt and reply share the window.
    "gpt-5": 400_000,
    "gpt-5.1": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "o1": 200_000,
    "o1-pro": 200_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o3-pro": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106-preview": 128_000,
    "gpt-4-0125-preview": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    # Anthropic (the standard window; Sonnet's 1M-token window is an opt-in beta).
    "claude-opus-4-5": 200_000,
    "claude-opus-4-1": 200_000,
    "claude-opus-4": 200_000,
    "claude-opus-4-0": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-sonnet-4-0": 200_000,
    "claude-3-7-sonnet": 200_000,
    "claude-3-5-sonnet": 200_000,
    "claude-haiku-4-5": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-opus": 200_000,
    "claude-3-haiku": 200_000,
    # Google: the input limit.
    "gemini-3-pro": 1_048_576,
    "gemini-2.5-pro": 1_048_576,
    "gemini-2.5-flash": 1_048_576,
    "gemini-2.5-flash-lite": 1_048_576,
    "gemini-2.0-flash": 1_048_576,
    "gemini-2.0-flash-lite": 1_048_576,
    "gemini-1.5-pro": 2_097_152,
    "gemini-1.5-flash": 1_048_576,
    # Open models, as their hosts serve them ("128k" taken as 128,000 where the exact figure
    # varies by host: erring short only drops history a little early).
    "mistral-large": 128_000,
    "mistral-medium": 128_000,
    "mistral-small": 128_000,
    "codestral": 256_000,
    "deepseek-chat": 128_000,
    "deepseek-reasoner": 128_000,
    "llama-3.3-70b-versatile": 131_072,
    "llama-3.1-8b-instant": 131_072,
}
"""Context window in tokens per model, matched like prices (snapshot suffixes stripped)."""

DEFAULT_REPLY_RESERVE: Final = 1024


def context_window_for(model: str) -> int:
    """``model``'s context window in tokens; :class:`UnknownModelError` when the table lacks it."""
    key = match_model(model, CONTEXT_WINDOWS)
    if key is None:
        raise UnknownModelError(
            model,
            what="context window",
            close_matches=close_matches(model, CONTEXT_WINDOWS),
            fix="Pass ContextWindowManager(max_tokens=...) with the model's window.",
        )
    return CONTEXT_WINDOWS[key]


def _units(messages: tuple[Message, ...]) -> list[tuple[int, int]]:
    """Split messages into droppable units, as ``(start, end)`` index ranges.

    An assistant message with tool calls and the tool messages right after it
    are one unit; every other message is a unit of its own.
    """
    units: list[tuple[int, int]] = []
    index = 0
    while index < len(messages):
        end = index + 1
        if messages[index].tool_calls:
            while end < len(messages) and messages[end].role == "tool":
                end += 1
        units.append((index, end))
        index = end
    return units


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextWindowManager:
    """Fits chat requests into a context window by dropping the oldest turns.

    ``max_tokens`` is the window; without it the window comes from
    :func:`context_window_for` (``model``). ``model`` also picks the
    tokenizer; without it, each request's own ``model`` does, and with
    neither the vocabulary-free estimate counts. ``reserve_for_reply`` is the
    room kept for the answer when a request does not set its own
    ``max_tokens``. ``safety_margin`` inflates every count by that fraction:
    by default 0 when the tokenizer is the model's own and 0.1 when it is an
    approximation, which measured up to 5 % low on average.
    """

    max_tokens: int | None = None
    model: str | None = None
    strategy: Strategy = "sliding-window"
    reserve_for_reply: int = DEFAULT_REPLY_RESERVE
    safety_margin: float | None = None
    window: int = field(init=False)

    def __post_init__(self) -> None:
        optional_whole_number(
            self.max_tokens,
            "ContextWindowManager.max_tokens",
            none="to take the window of `model` from the built-in table",
        )
        one_of(self.strategy, "ContextWindowManager.strategy", _STRATEGIES)
        whole_number(self.reserve_for_reply, "ContextWindowManager.reserve_for_reply", minimum=0)
        margin = self.safety_margin
        if margin is not None and (
            isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1
        ):
            invalid(
                "ContextWindowManager.safety_margin",
                "a fraction in [0, 1), or None for 0 with exact tokenizers and 0.1 otherwise",
                margin,
            )
        if self.max_tokens is not None:
            window = self.max_tokens
        elif self.model is not None:
            window = context_window_for(self.model)
        else:
            raise ConfigurationError(
                "ContextWindowManager needs the window size: pass max_tokens=... or a model=... "
                "from the built-in table"
            )
        object.__setattr__(self, "window", window)

    def tokenizer(self, request: ChatRequest) -> Tokenizer:
        """The tokenizer counting ``request``: the manager's model, else the request's."""
        return tokenizer_for(self.model if self.model is not None else request.model)

    def reply_reserve(self, request: ChatRequest) -> int:
        """Tokens kept free for the answer: the request's ``max_tokens``, else the default."""
        return request.max_tokens if request.max_tokens is not None else self.reserve_for_reply

    def count(self, request: ChatRequest) -> int:
        """The prompt tokens of ``request`` as this manager counts them (margin included)."""
        tokenizer = self.tokenizer(request)
        raw = REPLY_PRIMING_TOKENS + tools_tokens(request.tools, tokenizer)
        raw += sum(message_tokens(message, tokenizer) for message in request.messages)
        return self._with_margin(raw, tokenizer)

    def fits(self, request: ChatRequest) -> bool:
        """Whether ``request`` fits the window with its reply reserve, as it is."""
        return self.count(request) + self.reply_reserve(request) <= self.window

    def fit(self, request: ChatRequest) -> ChatRequest:
        """``request`` itself when it fits; else a copy without its oldest turns.

        Raises :class:`ContextLengthExceeded` when the system messages, the
        current turn (the latest user message and every message after it) and
        the tool definitions alone leave no room for the reply.
        """
        tokenizer = self.tokenizer(request)
        messages = request.messages
        counts = [message_tokens(message, tokenizer) for message in messages]
        fixed = REPLY_PRIMING_TOKENS + tools_tokens(request.tools, tokenizer)
        budget = self.window - self.reply_reserve(request)
        if self._with_margin(fixed + sum(counts), tokenizer) <= budget:
            return request

        units = _units(messages)
        latest_user = next(
            (i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None
        )
        # The current turn: from the latest user message on (with no user message, the last unit).
        turn_start = units[-1][0] if latest_user is None else latest_user

        def is_protected(unit: tuple[int, int]) -> bool:
            return messages[unit[0]].role == "system" or unit[0] >= turn_start

        kept = [True] * len(units)
        unit_tokens = [sum(counts[start:end]) for start, end in units]
        total = fixed + sum(unit_tokens)
        needed = fixed + sum(t for u, t in zip(units, unit_tokens, strict=True) if is_protected(u))
        if self._with_margin(needed, tokenizer) > budget:
            self._refuse(request, tokenizer, needed, budget)

        # Drop the oldest unprotected units until the rest fits ...
        for position, unit in enumerate(units):
            if self._with_margin(total, tokenizer) <= budget:
                break
            if not is_protected(unit):
                kept[position] = False
                total -= unit_tokens[position]
        # ... then let the remaining history open on a user turn.
        if latest_user is not None:
            for position, unit in enumerate(units):
                if unit[0] >= latest_user:
                    break
                if not kept[position] or is_protected(unit):
                    continue
                if messages[unit[0]].role == "user":
                    break
                kept[position] = False

        survivors = tuple(
            message
            for position, (start, end) in enumerate(units)
            if kept[position]
            for message in messages[start:end]
        )
        return request.replace(messages=survivors)

    def _with_margin(self, tokens: int, tokenizer: Tokenizer) -> int:
        margin = self.safety_margin
        if margin is None:
            margin = 0.0 if tokenizer.exact else 0.1
        return tokens if margin == 0 else math.ceil(tokens * (1 + margin))

    def _refuse(self, request: ChatRequest, tokenizer: Tokenizer, needed: int, budget: int) -> None:
        counted = self._with_margin(needed, tokenizer)
        reserve = self.reply_reserve(request)
        raise ContextLengthExceeded(
            f"the system messages, the current turn (the latest user message and the tool "
            f"calls and results after it) and the tool definitions need {counted} tokens and "
            f"the reply {reserve} more, but the context window is {self.window}: "
            f"{counted - budget} tokens too many. Shorten the latest message or the tool "
            "results, lower max_tokens, or use a model with a larger window",
            provider="bastion",
            model=self.model if self.model is not None else request.model,
        )
