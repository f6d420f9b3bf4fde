"""A checkpointed agent run resumes at its last completed step: after a failure, after kill -9."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bastion import (
    ConfigurationError,
    EventBus,
    RetryConfig,
    StoreUnavailableError,
    with_resilience,
)
from bastion.agents import Agent, RunResult
from bastion.models import (
    ChatRequest,
    FallbackChain,
    Message,
    ProviderUnavailable,
    Reply,
    ScriptedModel,
    Usage,
)
from bastion.stores import Checkpoints, MemoryStore, SQLStore, open_store
from bastion.stores._sessions import encode_message
from bastion.testing import FakeClock

from . import _resume_worker

WORKER = Path(_resume_worker.__file__)


def per_token(model: str, usage: Usage) -> Decimal:
    """A price with more digits than a float keeps, so only exact arithmetic sums it right."""
    return (
        Decimal("0.000000123456789123456") * usage.input_tokens
        + Decimal("0.1") * usage.output_tokens
    )


class Lookups:
    """A tool with a side effect the test can count."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def lookup(self, key: str) -> str:
        """Look a key up."""
        self.keys.append(key)
        return f"value of {key}"


STEP_ONE = Reply.tool("lookup", '{"key": "a"}', call_id="c1")
STEP_TWO = Reply.tool("lookup", '{"key": "b"}', call_id="c2")


def make_agent(
    model: ScriptedModel, lookups: Lookups, checkpoints: Checkpoints | None, **options: Any
) -> Agent:
    options.setdefault("pricing", per_token)
    return Agent(
        name="researcher",
        model=model,
        instructions="Look things up.",
        tools=[lookups.lookup],
        checkpoints=checkpoints,
        **options,
    )


async def uninterrupted(*, max_steps: int = 10) -> RunResult:
    """The run the resumed ones must add up to: same script, no failure, no checkpoints."""
    model = ScriptedModel([STEP_ONE, STEP_TWO, "the answer"])
    agent = make_agent(model, Lookups(), None, max_steps=max_steps)
    return await agent.run("What are a and b?")


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[MemoryStore | SQLStore]:
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    sql = open_store(f"sqlite:///{tmp_path / 'b.db'}", clock=clock)
    assert isinstance(sql, SQLStore)
    try:
        yield sql
    finally:
        await sql.aclose()


async def interrupted_run(
    checkpoints: Checkpoints, *, run_id: str = "r-1", **options: Any
) -> tuple[Agent, ScriptedModel, Lookups]:
    """An agent whose model fails at step 3, after steps 1 and 2 were checkpointed."""
    model = ScriptedModel(
        [STEP_ONE, STEP_TWO, ProviderUnavailable("down", provider="p"), "the answer"]
    )
    lookups = Lookups()
    agent = make_agent(model, lookups, checkpoints, **options)
    with pytest.raises(ProviderUnavailable):
        await agent.run("What are a and b?", run_id=run_id)
    return agent, model, lookups


async def test_a_failed_run_resumes_after_its_last_completed_step(
    store: MemoryStore | SQLStore,
) -> None:
    checkpoints = Checkpoints(store)
    _, model, lookups = await interrupted_run(checkpoints)
    saved = await checkpoints.load("r-1")
    assert saved is not None
    assert saved.step == 2

    # A new Agent object: what carries the run over is the checkpoint, nothing in memory.
    result = await make_agent(model, lookups, checkpoints).run("What are a and b?", run_id="r-1")

    assert result.output == "the answer"
    assert model.calls == 4  # steps 1, 2, the failed step 3, then step 3 again
    assert lookups.keys == ["a", "b"]  # the completed steps' tools ran once
    assert result.steps == 3
    assert result.run_id == "r-1"
    expected = await uninterrupted()
    assert result.messages == expected.messages
    assert result.usage == expected.usage
    assert result.cost_usd == expected.cost_usd  # exact: more digits than a float holds
    assert result.cost_usd is not None
    assert len(result.cost_usd.as_tuple().digits) > 17
    assert await checkpoints.load("r-1") is None


async def test_an_unknown_cost_stays_unknown_across_a_resume(clock: FakeClock) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))
    agent, _, _ = await interrupted_run(checkpoints, pricing=None)
    result = await agent.run("What are a and b?", run_id="r-1")
    assert result.cost_usd is None
    assert result.usage == (await uninterrupted()).usage


async def test_a_degraded_step_keeps_the_run_degraded_after_a_resume(clock: FakeClock) -> None:
    auto = FakeClock(auto_advance=True)
    down = ProviderUnavailable("down", provider="p")
    primary = ScriptedModel([down, down, "the answer"], name="primary")
    backup = ScriptedModel([STEP_ONE, down], name="backup")
    chain = FallbackChain(
        [primary, backup], retry=RetryConfig(max_retries=0), bus=EventBus(), clock=auto
    )
    checkpoints = Checkpoints(MemoryStore(clock=clock))
    agent = Agent(name="a", model=chain, tools=[Lookups().lookup], checkpoints=checkpoints)
    with pytest.raises(ProviderUnavailable):
        await agent.run("q", run_id="r-1")  # step 1 served by the backup, step 2 by no one
    saved = await checkpoints.load("r-1")
    assert saved is not None
    assert (saved.state["degraded"], saved.state["model_used"]) == (True, "backup")

    result = await agent.run("q", run_id="r-1")
    assert (result.output, result.degraded, result.model_used) == ("the answer", True, "primary")


async def test_a_retried_run_resumes_when_it_keeps_its_run_id(clock: FakeClock) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))
    model = ScriptedModel([STEP_ONE, STEP_TWO, ProviderUnavailable("down", provider="p"), "done"])
    lookups = Lookups()
    resilient = with_resilience(
        make_agent(model, lookups, checkpoints),
        retry=RetryConfig(backoff=0),
        graceful_shutdown=False,
        clock=FakeClock(auto_advance=True),
    )
    result = await resilient.run("What are a and b?", run_id="job-7")
    assert result.output == "done"
    assert lookups.keys == ["a", "b"]
    assert model.calls == 4


def run_worker(database: Path, workdir: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            str(WORKER),
            str(database),
            "job-1",
            str(workdir),
            str(kill_at),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def lines(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


async def test_a_run_killed_with_sigkill_resumes_at_the_step_it_died_in(tmp_path: Path) -> None:
    database, workdir = tmp_path / "b.db", tmp_path / "work"
    workdir.mkdir()

    killed = run_worker(database, workdir, kill_at=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout == ""
    assert lines(workdir / "model-calls") == [1, 2, 3]
    assert lines(workdir / "effects") == [1, 2, 3]  # step 3's tool ran, then the process died

    resumed = run_worker(database, workdir, kill_at=3)
    assert resumed.returncode == 0, resumed.stderr

    # Steps 1 and 2 were checkpointed: the new process neither asks the model for them nor
    # runs their tools again. Step 3 died midway, so it is redone: tools are at-least-once.
    assert lines(workdir / "model-calls") == [1, 2, 3, 3, 4, 5]
    assert lines(workdir / "effects") == [1, 2, 3, 3, 4]
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = await _resume_worker.build_agent(reference_dir, kill_at=0, checkpoints=None).run(
        "Record the steps.", run_id="job-1"
    )
    assert json.loads(resumed.stdout) == _resume_worker.summary(reference)
    assert reference.steps == _resume_worker.STEPS + 1

    store = open_store(f"sqlite:///{database}")
    try:
        assert await Checkpoints(store).load("job-1") is None  # finished: nothing to resume
    finally:
        await store.aclose()


async def test_the_checkpoint_wins_over_a_different_input(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))
    agent, _, lookups = await interrupted_run(checkpoints)
    with caplog.at_level(logging.INFO, logger="bastion.agents"):
        result = await agent.run("my password is hunter2", run_id="r-1")
    assert result.messages == (await uninterrupted()).messages
    assert lookups.keys == ["a", "b"]
    logged = [record.getMessage() for record in caplog.records]
    assert any("differs" in line and "r-1" in line for line in logged)
    assert not any("hunter2" in line or "a and b" in line for line in logged)

    caplog.clear()
    agent, _, _ = await interrupted_run(checkpoints, run_id="r-2")
    with caplog.at_level(logging.INFO, logger="bastion.agents"):
        await agent.run("What are a and b?", run_id="r-2")
    assert [r.getMessage() for r in caplog.records] == [
        "agent 'researcher' resumes run r-2 after step 2"
    ]


async def test_a_finished_run_id_starts_afresh(clock: FakeClock) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))
    model = ScriptedModel([STEP_ONE, "first answer", STEP_TWO, "second answer"])
    lookups = Lookups()
    agent = make_agent(model, lookups, checkpoints)
    assert (await agent.run("q", run_id="r-1")).output == "first answer"
    assert await checkpoints.load("r-1") is None
    second = await agent.run("q", run_id="r-1")
    assert second.output == "second answer"
    assert second.steps == 2
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "tool", "assistant"]

    # Without a run_id each run gets a fresh one, reported so that it can be reused.
    third = await agent.run("q")
    assert len(third.run_id) == 32
    assert third.run_id != (await agent.run("q")).run_id


async def test_max_steps_counts_the_steps_before_the_crash(clock: FakeClock) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))
    looping = ScriptedModel([Reply.tool("lookup", '{"key": "k"}', call_id="c")])
    lookups = Lookups()
    finished = await make_agent(looping, lookups, checkpoints, max_steps=2).run("q", run_id="r")
    assert (finished.finish_reason, finished.steps, looping.calls) == ("max_steps", 2, 2)
    assert await checkpoints.load("r") is None

    # A run checkpointed at step 2, resumed by an agent now allowed only 2 steps: it is over.
    _, model, _ = await interrupted_run(checkpoints, run_id="r-3")
    strict = make_agent(model, lookups, checkpoints, max_steps=2)
    result = await strict.run("What are a and b?", run_id="r-3")
    assert (result.finish_reason, result.steps, result.output) == ("max_steps", 2, "")
    assert model.calls == 3  # not asked again
    assert await checkpoints.load("r-3") is None


# -- what is written, and what is refused on reading ------------------------------------------


async def test_the_checkpoint_is_plain_versioned_json(store: MemoryStore | SQLStore) -> None:
    checkpoints = Checkpoints(store)
    await interrupted_run(checkpoints)
    stored = await store.load_checkpoint("r-1")
    assert stored is not None

    def no_floats(text: str) -> None:
        raise AssertionError(f"a checkpoint holds the non-exact number {text}")

    state = json.loads(stored.state, parse_float=no_floats, parse_constant=no_floats)
    assert (state["format"], state["v"], state["agent"]) == ("bastion.agent-run", 1, "researcher")
    assert isinstance(state["cost_usd"], str)
    assert Decimal(state["cost_usd"]) == (await uninterrupted(max_steps=2)).cost_usd
    # Messages keep the sessions' layout, so one reader understands both.
    first_tool_call = Message.assistant(tool_calls=STEP_ONE.tool_calls)
    assert state["messages"][2] == json.loads(encode_message(first_tool_call))


async def test_text_json_cannot_store_fails_the_run_without_quoting_it(clock: FakeClock) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))

    def undecodable(name: str) -> str:
        """List a directory whose entries are not valid UTF-8."""
        return b"secret-\xff".decode("utf-8", "surrogateescape")

    model = ScriptedModel([Reply.tool("undecodable", '{"name": "x"}'), "done"])
    agent = Agent(name="a", model=model, tools=[undecodable], checkpoints=checkpoints)
    with pytest.raises(ConfigurationError, match="not valid Unicode") as caught:
        await agent.run("q", run_id="r-1")
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert await checkpoints.load("r-1") is None  # nothing half-written


BadState = Callable[[dict[str, Any]], object]


def replace(key: str, value: object) -> BadState:
    return lambda state: {**state, key: value}


def edit_message(**changes: object) -> BadState:
    return lambda state: {**state, "messages": [{**state["messages"][0], **changes}]}


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda state: [1, 2], "it is not a JSON object"),
        (lambda state: {"messages": []}, "not a checkpoint the agent loop wrote"),
        (replace("v", 2), "format version 2"),
        (replace("v", True), "format version True"),
        (replace("agent", "billing"), "belongs to agent 'billing'"),
        (lambda state: {k: v for k, v in state.items() if k != "usage"}, "fields are"),
        (replace("extra", True), "fields are"),
        (replace("messages", "hello"), "expected a list"),
        (edit_message(role="robot"), "role"),
        (edit_message(content=7), "expected text"),
        (edit_message(tool_calls=[{"id": "1"}]), "tool call"),
        (replace("messages", [1]), "a message is not"),
        (replace("usage", {"input_tokens": -1, "output_tokens": 0, "cached_tokens": 0}), ">= 0"),
        (replace("usage", [1, 2, 3]), "usage is not"),
        (replace("cost_usd", "a lot"), "not a decimal"),
        (replace("cost_usd", "NaN"), "not an amount"),
        (replace("cost_usd", 1.5), "expected text"),
        (replace("priced", "yes"), "true or false"),
        (replace("start", 0), "starts at message 0"),
        (replace("start", 99), "starts at message 99"),
        (replace("model_used", None), "expected text"),
    ],
)
async def test_a_checkpoint_the_loop_did_not_write_is_refused(
    clock: FakeClock, corrupt: BadState, reason: str
) -> None:
    store = MemoryStore(clock=clock)
    checkpoints = Checkpoints(store)
    agent, model, lookups = await interrupted_run(checkpoints)
    saved = await checkpoints.load("r-1")
    assert saved is not None
    raw = json.dumps(corrupt(saved.state)).encode()
    await store.save_checkpoint("r-1", saved.step, raw, ttl=None)
    with pytest.raises(ConfigurationError, match=r"cannot resume run 'r-1'") as caught:
        await agent.run("What are a and b?", run_id="r-1")
    assert reason in str(caught.value)
    assert model.calls == 3  # refused before anything ran
    assert lookups.keys == ["a", "b"]


@pytest.mark.parametrize(
    ("raw", "step", "reason"),
    [
        (b"not json", 2, "not a JSON object"),
        (b'"\xff"', 2, "not a JSON object"),
        (b"[1, 2]", 2, "not a JSON object"),
        (b"{}", 0, "at step 0"),
    ],
)
async def test_bytes_that_are_not_a_checkpoint_are_refused(
    clock: FakeClock, raw: bytes, step: int, reason: str
) -> None:
    store = MemoryStore(clock=clock)
    await store.save_checkpoint("r-1", step, raw, ttl=None)
    model = ScriptedModel(["never asked"])
    agent = Agent(name="a", model=model, checkpoints=Checkpoints(store))
    with pytest.raises(ConfigurationError, match=reason):
        await agent.run("q", run_id="r-1")
    assert model.calls == 0


def test_checkpoints_must_be_a_checkpoints_object(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match=r"Checkpoints\(store\)"):
        Agent(name="a", model=ScriptedModel(["x"]), checkpoints=MemoryStore(clock=clock))  # type: ignore[arg-type]


# -- concurrent runs and store failures ---------------------------------------------------------


async def test_two_runs_sharing_a_run_id_do_not_both_carry_on(clock: FakeClock) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))

    async def overtaken(key: str) -> str:
        """A twin worker with the same run_id gets further while this step runs."""
        await checkpoints.save("r-1", 5, {"twin": key})
        return "ok"

    model = ScriptedModel([Reply.tool("overtaken", '{"key": "k"}'), "never asked"])
    agent = Agent(name="a", model=model, tools=[overtaken], checkpoints=checkpoints)
    with pytest.raises(ConfigurationError, match="two runs share this run_id"):
        await agent.run("q", run_id="r-1")
    assert model.calls == 1


LOCK_TIMEOUT = 0.2
"""How long the store waits for a locked file: what a store failure costs these tests."""


async def impatient_store(path: Path) -> SQLStore:
    """A SQLite store that gives up on a locked file soon, its schema already in place."""
    sql = open_store(f"sqlite:///{path}", timeout=LOCK_TIMEOUT)
    assert isinstance(sql, SQLStore)
    await sql.upgrade()  # creating the schema takes longer than the timeout allows
    return sql


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tuple[SQLStore, Path]]:
    path = tmp_path / "b.db"
    sql = await impatient_store(path)
    try:
        yield sql, path
    finally:
        await sql.aclose()


class WriteLock:
    """Another process's write lock on the SQLite file: the store cannot write meanwhile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.other: sqlite3.Connection | None = None

    def take(self) -> None:
        self.other = sqlite3.connect(self.path, isolation_level=None)
        self.other.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.other is not None:
            self.other.execute("ROLLBACK")
            self.other.close()
            self.other = None


async def test_a_store_that_cannot_save_stops_the_run(
    sqlite_store: tuple[SQLStore, Path],
) -> None:
    store, path = sqlite_store
    checkpoints = Checkpoints(store)
    lock = WriteLock(path)

    async def locked_out(key: str) -> str:
        """A tool during which another process takes the write lock."""
        lock.take()
        return "ok"

    model = ScriptedModel([Reply.tool("locked_out", '{"key": "k"}'), "never asked"])
    agent = Agent(name="a", model=model, tools=[locked_out], checkpoints=checkpoints)
    try:
        with pytest.raises(StoreUnavailableError, match="save_checkpoint"):
            await agent.run("q", run_id="r-1")
    finally:
        lock.release()
    assert model.calls == 1


async def test_a_store_that_cannot_delete_keeps_the_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    store = await impatient_store(path)
    lock = WriteLock(path)

    def answer_while_locked(request: ChatRequest) -> str:
        lock.take()
        return "the answer"

    model = ScriptedModel([Reply.tool("lookup", '{"key": "a"}'), answer_while_locked])
    agent = make_agent(model, Lookups(), Checkpoints(store))
    try:
        result = await agent.run("q", run_id="r-1")
    finally:
        # Closing waits for the store's thread, whose delete gave up while the lock was
        # held; released first, that delete could still go through after its timeout.
        await store.aclose()
        lock.release()
    assert result.output == "the answer"
    assert "could not delete the checkpoint of finished run r-1" in caplog.text

    reopened = open_store(f"sqlite:///{path}")
    try:
        saved = await Checkpoints(reopened).load("r-1")  # left behind, to expire with its ttl
    finally:
        await reopened.aclose()
    assert saved is not None
    assert saved.step == 1


async def test_a_tenant_never_resumes_another_tenants_run(clock: FakeClock) -> None:
    checkpoints = Checkpoints(MemoryStore(clock=clock))
    lookups = Lookups()
    interrupted = ScriptedModel([STEP_ONE, ProviderUnavailable("down", provider="p")])
    with pytest.raises(ProviderUnavailable):
        await make_agent(interrupted, lookups, checkpoints).run(
            "acme's private question", run_id="run-1", tenant_id="acme"
        )

    other = ScriptedModel(["hello globex"])
    result = await make_agent(other, lookups, checkpoints).run(
        "hi", run_id="run-1", tenant_id="globex"
    )
    assert result.output == "hello globex"
    assert all("acme" not in message.content for message in result.messages)
    assert result.steps == 1

    resumed = ScriptedModel(["done"])
    finished = await make_agent(resumed, lookups, checkpoints).run(
        "acme's private question", run_id="run-1", tenant_id="acme"
    )
    assert (finished.output, finished.steps, lookups.keys) == ("done", 2, ["a"])
    assert await checkpoints.scoped("acme").load("run-1") is None


def test_checkpoints_scoped_needs_a_scoping_store() -> None:
    class Plain:
        backend = "plain"

        async def save_checkpoint(self, *args: Any, **kwargs: Any) -> bool:
            return True

        async def load_checkpoint(self, run_id: str) -> None:
            return None

        async def delete_checkpoint(self, run_id: str) -> None:
            return None

    with pytest.raises(ConfigurationError, match=r"Checkpoints\.scoped"):
        Checkpoints(Plain()).scoped("acme")  # type: ignore[arg-type]
