"""The shared model types validate what they are given and say what was wrong."""

from __future__ import annotations

import pytest

from bastion.models import (
    ChatModel,
    ChatRequest,
    Completion,
    Message,
    ScriptedModel,
    ToolCall,
    Usage,
)


def test_message_constructors_and_rules() -> None:
    assert Message.user("hi") == Message("user", "hi")
    assert Message.system("be brief").role == "system"
    call = ToolCall(id="c1", name="search", arguments='{"q": "x"}')
    assert Message.assistant(tool_calls=(call,)).tool_calls == (call,)
    assert Message.tool("c1", "result", name="search").tool_call_id == "c1"
    with pytest.raises(ValueError, match="tool_call_id"):
        Message("tool", "result")
    with pytest.raises(ValueError, match="only assistant"):
        Message("user", "x", tool_calls=(call,))
    with pytest.raises(ValueError, match="role"):
        Message("robot", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text"):
        Message("user", 42)  # type: ignore[arg-type]


def test_tool_call_arguments() -> None:
    assert ToolCall(id="1", name="f", arguments='{"a": 1}').parsed_arguments() == {"a": 1}
    assert ToolCall(id="1", name="f", arguments="").parsed_arguments() == {}
    with pytest.raises(ValueError, match="not JSON"):
        ToolCall(id="1", name="f", arguments="{oops").parsed_arguments()
    with pytest.raises(ValueError, match="not a JSON object"):
        ToolCall(id="1", name="f", arguments="[1]").parsed_arguments()


def test_chat_request_validation() -> None:
    request = ChatRequest.of("hi", system="be brief", max_tokens=50)
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.replace(temperature=0.5).temperature == 0.5
    assert ChatRequest(messages=[Message.user("x")]).messages == (Message.user("x"),)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one message"):
        ChatRequest(messages=())
    with pytest.raises(ValueError, match="max_tokens"):
        ChatRequest.of("x", max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        ChatRequest.of("x", temperature=3)


def test_usage_adds_and_validates() -> None:
    total = Usage(input_tokens=10, output_tokens=5, cached_tokens=4) + Usage(input_tokens=1)
    assert (total.input_tokens, total.output_tokens, total.cached_tokens) == (11, 5, 4)
    assert total.total_tokens == 16
    with pytest.raises(ValueError, match="cannot exceed"):
        Usage(input_tokens=1, cached_tokens=2)
    with pytest.raises(ValueError, match="whole number"):
        Usage(input_tokens=-1)


def test_completion_becomes_the_assistant_turn() -> None:
    call = ToolCall(id="c", name="f")
    completion = Completion(text="t", model="m", finish_reason="tool_calls", tool_calls=(call,))
    assert completion.message() == Message.assistant("t", tool_calls=(call,))


def test_scripted_model_satisfies_the_protocol() -> None:
    assert isinstance(ScriptedModel(["hi"]), ChatModel)
