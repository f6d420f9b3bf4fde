"""What an agent run checkpoints after each step, and how it is read back.

The document is plain JSON with a format name and a version, because it
outlives the process that wrote it: the process that reads it may run a newer
Bastion, or may have been pointed by mistake at a ``run_id`` some other code
uses. Anything that is not exactly what the loop writes is refused with a
:class:`~bastion.ConfigurationError` naming the run, instead of surfacing
later as a ``KeyError`` deep in the loop -- or worse, as a run that carries
on from a conversation it never had.

Messages use the same fields as the sessions' ``encode_message`` (role,
content, tool_calls, tool_call_id, name), so one reader understands both.
Money is a string: a ``Decimal`` sent through a JSON float would no longer add
up to the cents a budget settled.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from bastion._core.errors import ConfigurationError
from bastion._core.usage import Usage
from bastion._core.validate import invalid
from bastion.models._types import Message, ToolCall
from bastion.stores._checkpoints import Checkpoints
from bastion.stores._sessions import message_document

__all__ = ["FORMAT", "VERSION", "Progress", "dump", "load", "restore", "save"]

FORMAT = "bastion.agent-run"
VERSION = 1

_KEYS = frozenset(
    {
        "format",
        "v",
        "agent",
        "start",
        "messages",
        "usage",
        "cost_usd",
        "priced",
        "degraded",
        "model_used",
    }
)
_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name"})
_CALL_KEYS = frozenset({"id", "name", "arguments"})
_USAGE_KEYS = frozenset({"input_tokens", "output_tokens", "cached_tokens"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Where a run stands after a completed step: all the loop needs to carry on.

    ``start`` counts the messages the run began with (instructions and input),
    so a resumed call can tell whether it was given the same input.
    """

    agent: str
    start: int
    messages: tuple[Message, ...]
    usage: Usage
    cost_usd: Decimal | None
    priced: bool
    degraded: bool
    model_used: str


async def restore(
    checkpoints: Checkpoints, run_id: str, *, agent: str
) -> tuple[int, Progress] | None:
    """The last completed step of ``run_id`` and where it left the run; None: nothing saved."""
    if not isinstance(run_id, str) or not run_id:
        invalid("Agent.run(run_id)", "a non-empty string or None", run_id)
    try:
        saved = await checkpoints.load(run_id)
    except ConfigurationError:  # with a valid run_id, load refuses only what is not a JSON object
        _refuse(run_id, "it is not a JSON object")
    if saved is None:
        return None
    if saved.step < 1:
        _refuse(run_id, f"it is at step {saved.step} and the loop saves steps from 1 on")
    return saved.step, load(saved.state, agent=agent, run_id=run_id)


async def save(checkpoints: Checkpoints, run_id: str, step: int, progress: Progress) -> None:
    """Record ``progress`` as ``run_id``'s step ``step``; refuse to race another worker."""
    try:
        kept = await checkpoints.save(run_id, step, dump(progress))
    except ConfigurationError:
        # The message of the error from Checkpoints would quote the state -- the
        # whole conversation -- and prompts must never reach an error or a log.
        msg = (
            f"cannot checkpoint run {run_id!r} after step {step}: the conversation holds "
            "something JSON cannot store, most likely text that is not valid Unicode (a lone "
            "surrogate, e.g. from undecodable bytes); have tools return text that encodes as UTF-8"
        )
        raise ConfigurationError(msg) from None
    if not kept:
        msg = (
            f"run {run_id!r} is further on than step {step} in another worker: two runs "
            "share this run_id; this one stops here rather than go on beside it"
        )
        raise ConfigurationError(msg)


def dump(progress: Progress) -> dict[str, Any]:
    """``progress`` as the JSON document a checkpoint stores."""
    usage = progress.usage
    return {
        "format": FORMAT,
        "v": VERSION,
        "agent": progress.agent,
        "start": progress.start,
        "messages": [message_document(message) for message in progress.messages],
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
        },
        "cost_usd": None if progress.cost_usd is None else str(progress.cost_usd),
        "priced": progress.priced,
        "degraded": progress.degraded,
        "model_used": progress.model_used,
    }


def load(state: object, *, agent: str, run_id: str) -> Progress:
    """The :class:`Progress` in a checkpoint ``dump`` wrote for ``agent``; refuses anything else."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        _refuse(run_id, "it is not a checkpoint the agent loop wrote")
    version = state.get("v")
    if isinstance(version, bool) or version != VERSION:
        _refuse(
            run_id, f"it has format version {version!r} and this Bastion reads version {VERSION}"
        )
    if set(state) != _KEYS:
        _refuse(run_id, f"its fields are {sorted(state)}, expected {sorted(_KEYS)}")
    if state["agent"] != agent:
        _refuse(
            run_id,
            f"it belongs to agent {state['agent']!r}, not {agent!r}: "
            "give each agent's runs their own run_id",
        )
    try:
        messages = tuple(_load_message(document) for document in _list(state["messages"]))
        progress = Progress(
            agent=agent,
            start=_whole(state["start"]),
            messages=messages,
            usage=_load_usage(state["usage"]),
            cost_usd=_load_cost(state["cost_usd"]),
            priced=_flag(state["priced"]),
            degraded=_flag(state["degraded"]),
            model_used=_text(state["model_used"]),
        )
    except (TypeError, ValueError) as exc:
        _refuse(run_id, f"its contents are malformed ({exc})")
    if not 1 <= progress.start <= len(messages):
        _refuse(run_id, f"it starts at message {progress.start} of {len(messages)}")
    return progress


def _refuse(run_id: str, why: str) -> NoReturn:
    msg = (
        f"cannot resume run {run_id!r} from its checkpoint: {why}. Pass another run_id, "
        "or delete this checkpoint (Checkpoints.delete) to start the run over"
    )
    raise ConfigurationError(msg) from None


def _load_message(document: object) -> Message:
    if not isinstance(document, dict) or set(document) != _MESSAGE_KEYS:
        raise ValueError("a message is not an object with role, content, tool_calls, ...")
    calls = []
    for call in _list(document["tool_calls"]):
        if not isinstance(call, dict) or set(call) != _CALL_KEYS:
            raise ValueError("a tool call is not an object with id, name and arguments")
        calls.append(
            ToolCall(
                id=_text(call["id"]), name=_text(call["name"]), arguments=_text(call["arguments"])
            )
        )
    return Message(
        document["role"],
        _text(document["content"]),
        tuple(calls),
        _optional_text(document["tool_call_id"]),
        _optional_text(document["name"]),
    )


def _load_usage(document: object) -> Usage:
    if not isinstance(document, dict) or set(document) != _USAGE_KEYS:
        raise ValueError("usage is not an object with input, output and cached tokens")
    return Usage(**{key: _whole(value) for key, value in document.items()})


def _load_cost(value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        cost = Decimal(_text(value))
    except InvalidOperation:
        raise ValueError(f"cost_usd {value!r} is not a decimal number") from None
    if not cost.is_finite() or cost < 0:
        raise ValueError(f"cost_usd {value!r} is not an amount of dollars")
    return cost


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value
