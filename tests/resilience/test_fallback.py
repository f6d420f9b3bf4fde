"""Fallback: the order of alternatives, what triggers them, and what the result records."""

from __future__ import annotations

import pytest

from bastion import (
    CircuitOpenError,
    ConfigurationError,
    Event,
    EventBus,
    Fallback,
    FallbackUsed,
    ShuttingDownError,
)


class Unavailable(Exception):
    status_code = 503


class BadRequest(Exception):
    status_code = 400


def failing(exc: Exception):  # type: ignore[no-untyped-def]
    def fn(prompt: str, **kwargs: object) -> str:
        raise exc

    fn.__name__ = f"failing_{type(exc).__name__}"
    return fn


class BackupAgent:
    name = "backup-agent"

    async def run(self, prompt: str, *, user: str = "anon") -> str:
        return f"backup answered {prompt} for {user}"


async def test_primary_serves_when_it_works(bus: EventBus) -> None:
    events: list[Event] = []
    bus.subscribe(events.append)

    async def primary(prompt: str) -> str:
        return prompt.upper()

    result = await Fallback([primary, BackupAgent()], bus=bus).call("hi")
    assert (result.value, result.served_by, result.index, result.degraded) == (
        "HI",
        "primary",
        0,
        False,
    )
    assert result.skipped == ()
    assert events == []


async def test_next_alternative_serves_and_skips_are_recorded(bus: EventBus) -> None:
    events: list[Event] = []
    bus.subscribe(events.append, FallbackUsed)
    fallback = Fallback(
        [
            failing(Unavailable("down")),
            failing(CircuitOpenError("m", retry_after=3)),
            BackupAgent(),
        ],
        bus=bus,
    )
    result = await fallback.call("q", user="ann")
    assert result.value == "backup answered q for ann"
    assert result.served_by == "backup-agent"
    assert result.index == 2
    assert result.degraded
    assert [s.name for s in result.skipped] == ["failing_Unavailable", "failing_CircuitOpenError"]
    assert result.skipped[0].reason == "Unavailable: down"
    assert isinstance(result.skipped[1].error, CircuitOpenError)
    assert events == [
        FallbackUsed(
            source="fallback",
            served_by="backup-agent",
            skipped=("failing_Unavailable", "failing_CircuitOpenError"),
        )
    ]


async def test_static_answer_when_everything_fails() -> None:
    fallback = Fallback([failing(Unavailable("a")), failing(ConnectionError("b"))], static="sorry")
    result = await fallback.call("q")
    assert (result.value, result.served_by, result.index, result.degraded) == (
        "sorry",
        "static",
        2,
        True,
    )
    assert len(result.skipped) == 2


async def test_static_only() -> None:
    result = await Fallback(static={"answer": None}).call("q")
    assert result.value == {"answer": None}
    assert result.degraded


async def test_first_error_is_raised_with_notes_when_nothing_serves() -> None:
    first = Unavailable("primary down")
    fallback = Fallback([failing(first), failing(ConnectionError("backup down"))])
    with pytest.raises(Unavailable) as info:
        await fallback.call("q")
    assert info.value is first
    assert any("backup down" in note for note in info.value.__notes__)


async def test_client_errors_do_not_fall_back() -> None:
    backup_calls: list[str] = []

    def backup(prompt: str) -> str:
        backup_calls.append(prompt)
        return "backup"

    with pytest.raises(BadRequest):
        await Fallback([failing(BadRequest("bad")), backup]).call("q")
    with pytest.raises(ShuttingDownError):
        await Fallback([failing(ShuttingDownError("x")), backup]).call("q")
    assert backup_calls == []


async def test_custom_predicate_decides() -> None:
    fallback = Fallback(
        [failing(BadRequest("bad")), lambda prompt: "backup"], fallback_on=lambda exc: True
    )
    assert (await fallback.call("q")).value == "backup"


def test_sync_fallback() -> None:
    fallback = Fallback([failing(ConnectionError("x")), lambda prompt: prompt * 2], static="s")
    result = fallback.call_sync("ab")
    assert result.value == "abab"
    assert result.index == 1
    assert Fallback(static=1).call_sync("x").value == 1


def test_sync_fallback_refuses_async_alternatives() -> None:
    async def primary(prompt: str) -> str:
        return prompt

    with pytest.raises(ConfigurationError, match="async"):
        Fallback([primary]).call_sync("q")


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "at least one alternative"),
        (("abc",), {}, "must be a list"),
        (([print],), {"fallback_on": 3}, "predicate"),
        (([42],), {}, "cannot wrap"),
    ],
)
def test_invalid_configuration(
    args: tuple[object, ...], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Fallback(*args, **kwargs)  # type: ignore[arg-type]
