"""ContextWindowManager: drop the oldest turns, keep system and the current turn whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ConfigurationError
from bastion.models import (
    ChatRequest,
    ContextLengthExceeded,
    ContextWindowManager,
    Message,
    ToolCall,
    ToolSpec,
    UnknownModelError,
    context_window_for,
)
from bastion.models._tokens import tokenizer_for

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")


def text(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def calls(*ids: str) -> Message:
    return Message.assistant(tool_calls=tuple(ToolCall(id=i, name="lookup") for i in ids))


def conversation() -> tuple[Message, ...]:
    return (
        Message.system("You are terse."),
        Message.user(text(200)),
        Message.assistant(text(200)),
        Message.user(text(50)),
        calls("a", "b"),
        Message.tool("a", text(100)),
        Message.tool("b", text(100)),
        Message.assistant(text(30)),
        Message.user("And now?"),
    )


def test_a_request_that_fits_is_returned_as_is() -> None:
    request = ChatRequest(messages=conversation())
    manager = ContextWindowManager(max_tokens=100_000, model="gpt-4o")
    assert manager.fit(request) is request
    assert manager.fits(request)


def test_drops_the_oldest_turns_first() -> None:
    request = ChatRequest(messages=conversation(), max_tokens=100)
    full = ContextWindowManager(max_tokens=100_000, model="gpt-4o").count(request)
    first_two = sum(
        ContextWindowManager(max_tokens=100_000, model="gpt-4o").count(ChatRequest(messages=(m,)))
        - 3
        for m in conversation()[1:3]
    )
    manager = ContextWindowManager(max_tokens=full - first_two + 100, model="gpt-4o")
    fitted = manager.fit(request)
    assert fitted.messages == (conversation()[0], *conversation()[3:])
    assert manager.count(fitted) + 100 <= manager.window


def test_tool_calls_and_results_go_together() -> None:
    messages = conversation()
    request = ChatRequest(messages=messages, max_tokens=50)
    manager = ContextWindowManager(max_tokens=200, model="gpt-4o")
    fitted = manager.fit(request)
    # Everything but the system prompt and the question had to go, tool results included.
    assert fitted.messages == (messages[0], messages[-1])


def test_history_restarts_on_a_user_turn() -> None:
    system, question = Message.system("s"), Message.user("q?")
    messages = (
        system,
        Message.user(text(300)),
        Message.assistant(text(20)),
        Message.user(text(20)),
        Message.assistant(text(20)),
        question,
    )
    probe = ContextWindowManager(max_tokens=1_000_000, model="gpt-4o")
    without_first = probe.count(ChatRequest(messages=(system, *messages[2:])))
    manager = ContextWindowManager(max_tokens=without_first + 10, model="gpt-4o")
    fitted = manager.fit(ChatRequest(messages=messages, max_tokens=10))
    # Dropping the long first question is enough, but its answer would then open the history.
    assert fitted.messages == (system, messages[3], messages[4], question)


def test_system_messages_anywhere_are_kept_in_place() -> None:
    messages = (
        Message.user(text(300)),
        Message.system("Policy update: be formal."),
        Message.assistant(text(300)),
        Message.user("Well?"),
    )
    manager = ContextWindowManager(max_tokens=100, reserve_for_reply=10, model="gpt-4o")
    fitted = manager.fit(ChatRequest(messages=messages))
    assert fitted.messages == (messages[1], messages[3])


def agent_step() -> tuple[Message, ...]:
    """An agent loop mid-step: the model called a tool and its result is in."""
    return (
        Message.system("You are a travel assistant."),
        Message.user("What is the weather in Lisbon?"),
        calls("w1"),
        Message.tool("w1", text(120)),
    )


def test_the_current_steps_tool_calls_and_results_are_never_dropped() -> None:
    step = agent_step()
    request = ChatRequest(messages=step, max_tokens=50)
    probe = ContextWindowManager(max_tokens=1_000_000, model="gpt-4o")
    needed = probe.count(request)
    # One token short: dropping the tool call would make the model call it again, forever.
    manager = ContextWindowManager(max_tokens=needed + 50 - 1, model="gpt-4o")
    with pytest.raises(ContextLengthExceeded) as caught:
        manager.fit(request)
    assert "1 tokens too many" in str(caught.value)
    assert "current turn" in str(caught.value)


def test_older_turns_make_room_for_the_current_step() -> None:
    step = agent_step()
    history = (
        step[0],
        Message.user(text(300)),
        Message.assistant(text(300)),
        calls("old"),
        Message.tool("old", text(300)),
        *step[1:],
        calls("w2"),
        Message.tool("w2", text(40)),
    )
    request = ChatRequest(messages=history, max_tokens=50)
    probe = ContextWindowManager(max_tokens=1_000_000, model="gpt-4o")
    current = probe.count(request.replace(messages=(step[0], *history[5:])))
    manager = ContextWindowManager(max_tokens=current + 50, model="gpt-4o")
    fitted = manager.fit(request)
    assert fitted.messages == (step[0], *history[5:])
    assert manager.count(fitted) + 50 <= manager.window


def test_too_long_a_question_is_a_clear_error() -> None:
    request = ChatRequest(messages=(Message.system("s"), Message.user(text(500))), max_tokens=100)
    manager = ContextWindowManager(max_tokens=300, model="gpt-4o")
    needed = manager.count(request)
    with pytest.raises(ContextLengthExceeded) as caught:
        manager.fit(request)
    error = caught.value
    assert error.provider == "bastion"
    assert error.model == "gpt-4o"
    assert f"{needed + 100 - 300} tokens too many" in str(error)
    assert "larger window" in str(error)


def test_a_reply_reserve_larger_than_the_window_is_refused() -> None:
    manager = ContextWindowManager(max_tokens=1000, model="gpt-4o")
    with pytest.raises(ContextLengthExceeded):
        manager.fit(ChatRequest(messages=(Message.user("hi"),), max_tokens=5000))


def test_the_request_reply_limit_wins_over_the_default_reserve() -> None:
    manager = ContextWindowManager(max_tokens=1000, reserve_for_reply=900)
    assert manager.reply_reserve(ChatRequest.of("hi")) == 900
    assert manager.reply_reserve(ChatRequest.of("hi", max_tokens=10)) == 10


def test_the_window_comes_from_the_model_table() -> None:
    assert ContextWindowManager(model="gpt-4o-2024-08-06").window == 128_000
    assert ContextWindowManager(model="claude-sonnet-4-5-20250929").window == 200_000
    assert ContextWindowManager(model="gpt-4o", max_tokens=5000).window == 5000
    assert context_window_for("models/gemini-2.5-pro") == 1_048_576
    with pytest.raises(UnknownModelError, match="close matches: gpt-4o"):
        context_window_for("gpt-4o-turbo-max")


def test_the_tokenizer_follows_the_manager_then_the_request() -> None:
    assert ContextWindowManager(max_tokens=10, model="gpt-4").tokenizer(
        ChatRequest.of("x", model="gpt-4o")
    ) == tokenizer_for("gpt-4")
    unnamed = ContextWindowManager(max_tokens=10)
    assert unnamed.tokenizer(ChatRequest.of("x", model="gpt-4o")) == tokenizer_for("gpt-4o")
    assert unnamed.tokenizer(ChatRequest.of("x")) == tokenizer_for(None)


def test_approximate_counts_get_a_safety_margin() -> None:
    request = ChatRequest.of(text(400), model="claude-3-5-sonnet")
    plain = ContextWindowManager(max_tokens=10_000, safety_margin=0).count(request)
    default = ContextWindowManager(max_tokens=10_000).count(request)
    assert default == -(-plain * 11 // 10)  # ceil(plain * 1.1)
    exact = ChatRequest.of(text(400), model="gpt-4o")
    assert ContextWindowManager(max_tokens=10_000).count(exact) == ContextWindowManager(
        max_tokens=10_000, safety_margin=0
    ).count(exact)


def test_tools_count_against_the_window() -> None:
    tool = ToolSpec(name="lookup", description=text(200))
    request = ChatRequest(messages=(Message.user("q"),), tools=(tool,))
    manager = ContextWindowManager(max_tokens=150, reserve_for_reply=10, model="gpt-4o")
    with pytest.raises(ContextLengthExceeded, match="tool definitions"):
        manager.fit(request)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs the window size"),
        ({"max_tokens": 0}, "max_tokens must be a whole number >= 1"),
        ({"max_tokens": 10, "strategy": "truncate-middle"}, "strategy must be one of"),
        ({"max_tokens": 10, "reserve_for_reply": -1}, "reserve_for_reply must be"),
        ({"max_tokens": 10, "safety_margin": 1.5}, "safety_margin must be"),
        ({"max_tokens": 10, "safety_margin": True}, "safety_margin must be"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ContextWindowManager(**options)  # type: ignore[arg-type]


# -- properties ----------------------------------------------------------------------------


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Message, ...]:
    """System prompts, plain turns and tool-call groups in any order."""
    messages: list[Message] = []
    next_id = 0
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["system", "user", "assistant", "tools", "user"]))
        size = draw(st.integers(0, 60))
        if kind == "tools":
            ids = [f"call-{next_id + i}" for i in range(draw(st.integers(1, 3)))]
            next_id += len(ids)
            messages.append(calls(*ids))
            messages.extend(Message.tool(i, text(size)) for i in ids)
        else:
            messages.append(Message(kind, text(size)))  # type: ignore[arg-type]
    return tuple(messages)


def groups(messages: tuple[Message, ...]) -> list[tuple[Message, ...]]:
    found, index = [], 0
    while index < len(messages):
        end = index + 1
        if messages[index].tool_calls:
            while end < len(messages) and messages[end].role == "tool":
                end += 1
        found.append(messages[index:end])
        index = end
    return found


@settings(max_examples=300, deadline=None)
@given(
    messages=conversations(),
    window=st.integers(20, 800),
    reserve=st.integers(0, 100),
    model=st.sampled_from(["gpt-4o", "gpt-4", None, "claude-3-5-sonnet"]),
)
def test_fit_always_fits_and_keeps_what_matters(
    messages: tuple[Message, ...], window: int, reserve: int, model: str | None
) -> None:
    manager = ContextWindowManager(max_tokens=window, reserve_for_reply=reserve)
    request = ChatRequest(messages=messages, model=model)
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    # The current turn: the latest user message and everything after it (else the last group).
    turn = users[-1] if users else len(messages) - len(groups(messages)[-1])
    try:
        fitted = manager.fit(request)
    except ContextLengthExceeded:
        # Only when the untouchable part alone is too big.
        keep = tuple(m for i, m in enumerate(messages) if m.role == "system" or i >= turn)
        assert manager.count(request.replace(messages=keep)) + reserve > window
        return
    kept = fitted.messages
    assert manager.count(fitted) + reserve <= window
    # Order preserved: the result is a subsequence of the original (by identity).
    position = 0
    for message in kept:
        while messages[position] is not message:
            position += 1
        position += 1
    # Every system message and the whole current turn survive.
    assert all(any(k is m for k in kept) for m in messages if m.role == "system")
    assert all(any(k is m for k in kept) for m in messages[turn:])
    # Once history was dropped, it opens on a user turn.
    if fitted is not request and users:
        assert next(m for m in kept if m.role != "system").role == "user"
    # Tool-call groups are kept whole or dropped whole.
    for group in groups(messages):
        present = [any(k is m for k in kept) for m in group]
        assert all(present) or not any(present)
