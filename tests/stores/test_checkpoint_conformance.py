"""A run's checkpoint only moves forward, on every backend.

Parametrised over memory, SQLite, PostgreSQL and Redis (real servers). Every
store reads the test's FakeClock (Redis too: a test clock replaces the
server's), so TTLs pass without sleeping.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from bastion._core.errors import ConfigurationError
from bastion.stores._checkpoint_store import Checkpoint, CheckpointStore
from bastion.stores._checkpoints import Checkpoints
from bastion.testing import FakeClock


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


async def test_the_store_is_a_checkpoint_store(store: Any) -> None:
    assert isinstance(store, CheckpointStore)


async def test_a_saved_checkpoint_loads_back_byte_for_byte(store: Any, clock: FakeClock) -> None:
    run, state = run_id(), b'{"x": 1}\x00\xff'
    assert await store.load_checkpoint(run) is None
    assert await store.save_checkpoint(run, 3, state, ttl=60.0)
    assert await store.load_checkpoint(run) == Checkpoint(
        run_id=run, step=3, state=state, saved_at=clock.time()
    )


async def test_a_higher_or_equal_step_overwrites(store: Any, clock: FakeClock) -> None:
    run = run_id()
    assert await store.save_checkpoint(run, 1, b"one", ttl=60.0)
    clock.advance(5.0)
    assert await store.save_checkpoint(run, 2, b"two", ttl=60.0)
    loaded = await store.load_checkpoint(run)
    assert (loaded.step, loaded.state, loaded.saved_at) == (2, b"two", clock.time())
    assert await store.save_checkpoint(run, 2, b"two again", ttl=60.0)
    assert (await store.load_checkpoint(run)).state == b"two again"


async def test_a_lower_step_is_ignored(store: Any) -> None:
    run = run_id()
    assert await store.save_checkpoint(run, 5, b"five", ttl=60.0)
    assert not await store.save_checkpoint(run, 4, b"four", ttl=60.0)
    loaded = await store.load_checkpoint(run)
    assert (loaded.step, loaded.state) == (5, b"five")


async def test_delete_forgets_the_run_and_is_harmless_twice(store: Any) -> None:
    run = run_id()
    await store.save_checkpoint(run, 9, b"nine", ttl=None)
    await store.delete_checkpoint(run)
    await store.delete_checkpoint(run)
    assert await store.load_checkpoint(run) is None
    assert await store.save_checkpoint(run, 0, b"fresh", ttl=60.0)
    assert (await store.load_checkpoint(run)).step == 0


async def test_a_checkpoint_expires_on_the_store_clock(store: Any, clock: FakeClock) -> None:
    run, forever = run_id(), run_id()
    await store.save_checkpoint(run, 7, b"seven", ttl=10.0)
    await store.save_checkpoint(forever, 1, b"kept", ttl=None)
    clock.advance(9.5)
    assert (await store.load_checkpoint(run)).step == 7
    clock.advance(1.0)
    assert await store.load_checkpoint(run) is None
    assert await store.save_checkpoint(run, 2, b"after expiry", ttl=10.0)  # no longer blocks
    assert (await store.load_checkpoint(run)).step == 2
    clock.advance(10_000.0)
    assert (await store.load_checkpoint(forever)).state == b"kept"


async def test_scoped_stores_never_see_each_others_runs(store: Any) -> None:
    run = run_id()
    tenant_a, tenant_b = store.scoped("a"), store.scoped("b")
    await tenant_a.save_checkpoint(run, 8, b"a", ttl=60.0)
    assert await tenant_b.load_checkpoint(run) is None
    assert await store.load_checkpoint(run) is None
    assert await tenant_b.save_checkpoint(run, 1, b"b", ttl=60.0)
    await tenant_b.delete_checkpoint(run)
    assert (await tenant_a.load_checkpoint(run)).state == b"a"


async def test_twenty_concurrent_saves_leave_the_highest_step(store: Any) -> None:
    run, steps = run_id(), list(range(20))
    random.shuffle(steps)
    await asyncio.gather(*(store.save_checkpoint(run, s, b"%d" % s, ttl=60.0) for s in steps))
    loaded = await store.load_checkpoint(run)
    assert (loaded.step, loaded.state) == (19, b"19")


async def test_the_front_round_trips_json_and_refuses_rollback(
    store: Any, clock: FakeClock
) -> None:
    checkpoints = Checkpoints(store, ttl=30.0, clock=clock)
    run = run_id()
    assert await checkpoints.save(run, 2, {"messages": ["hi", "é"], "n": 2})
    clock.advance(4.0)
    assert not await checkpoints.save(run, 1, {"stale": True})
    saved = await checkpoints.load(run)
    assert saved is not None
    assert (saved.step, saved.state, saved.age) == (2, {"messages": ["hi", "é"], "n": 2}, 4.0)
    clock.advance(30.0)
    assert await checkpoints.load(run) is None
    await checkpoints.save(run, 3, {})
    await checkpoints.delete(run)
    assert await checkpoints.load(run) is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.save("", 1, {}), r"Checkpoints\.save\(run_id\)"),
        (lambda c: c.save("r", -1, {}), r"Checkpoints\.save\(step\) must be a whole number"),
        (lambda c: c.save("r", True, {}), r"Checkpoints\.save\(step\)"),
        (lambda c: c.save("r", 1, ["x"]), r"Checkpoints\.save\(state\) must be a dict"),
        (lambda c: c.save("r", 1, {"x": object()}), r"Checkpoints\.save\(state\)"),
        (lambda c: c.load(7), r"Checkpoints\.load\(run_id\)"),
        (lambda c: c.delete(""), r"Checkpoints\.delete\(run_id\)"),
    ],
)
async def test_the_front_rejects_bad_arguments(call: Any, match: str) -> None:
    from bastion.stores._memory import MemoryStore

    with pytest.raises(ConfigurationError, match=match):
        await call(Checkpoints(MemoryStore()))


def test_the_front_rejects_a_bad_store_or_ttl() -> None:
    from bastion.stores._memory import MemoryStore

    with pytest.raises(ConfigurationError, match=r"Checkpoints\(store\)"):
        Checkpoints(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Checkpoints\.ttl must be"):
        Checkpoints(MemoryStore(), ttl=0)


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"not json", b"[1, 2]", b'"text"'])
async def test_the_front_refuses_a_checkpoint_it_did_not_write(store: Any, raw: bytes) -> None:
    run = run_id()
    await store.save_checkpoint(run, 1, raw, ttl=60.0)
    with pytest.raises(ConfigurationError, match=rf"checkpoint of run '{run}' is not a JSON"):
        await Checkpoints(store).load(run)


async def test_bad_state_errors_never_show_the_state() -> None:
    from bastion.stores._memory import MemoryStore

    secret = "my card is 4111 1111 1111 1111"
    checkpoints = Checkpoints(MemoryStore())
    for state in ([secret], {"prompt": secret, "x": object()}):
        with pytest.raises(ConfigurationError, match="contents not shown") as caught:
            await checkpoints.save("r", 1, state)  # type: ignore[arg-type]
        assert "4111" not in str(caught.value)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_the_sql_sweep_deletes_expired_checkpoints(store: Any, clock: FakeClock) -> None:
    import sqlalchemy as sa

    from bastion.stores._sql_schema import checkpoints

    old, kept = run_id(), run_id()
    await store.save_checkpoint(old, 1, b"old", ttl=1.0)
    await store.save_checkpoint(kept, 1, b"kept", ttl=None)
    clock.advance(2.0)
    store._shared.ops = 10**6  # the next write sweeps
    await store.save_checkpoint(run_id(), 1, b"new", ttl=60.0)
    keys = await store.run(
        "test", lambda conn: set(conn.execute(sa.select(checkpoints.c.key)).scalars())
    )
    assert not any(key.endswith(old) for key in keys)
    assert any(key.endswith(kept) for key in keys)
