"""An idempotency key runs its work at most once, on every backend.

Parametrised over memory, SQLite, PostgreSQL and Redis (real servers). The
store reads the test's FakeClock (Redis too: a test clock replaces the
server's), so TTLs and lapsed locks pass without sleeping; the front object's
polling sleeps on the same clock and only moves when the test advances it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from bastion._core.errors import BastionError, ConfigurationError
from bastion.stores._idempotency import (
    Idempotency,
    IdempotencyConflict,
    IdempotencyMismatch,
    fingerprint,
)
from bastion.stores._idempotency_store import IdempotencyStore, StoredResponse
from bastion.testing import FakeClock

OK = StoredResponse(status=201, body=b'{"id": 7}\x00\xff', headers=(("content-type", "json"),))


class Work:
    """A request handler that counts its runs and can be held open by a gate."""

    def __init__(self, response: StoredResponse = OK) -> None:
        self.runs = 0
        self.response = response
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self) -> StoredResponse:
        self.runs += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.response


def key() -> str:
    return f"req-{uuid.uuid4().hex[:8]}"


async def test_the_store_is_an_idempotency_store(store: Any) -> None:
    assert isinstance(store, IdempotencyStore)


async def test_a_replay_returns_the_stored_response_without_running(
    store: Any, clock: FakeClock
) -> None:
    idem = Idempotency(store, clock=clock)
    work, k = Work(), key()
    first = await idem.run(k, "fp", work)
    again = await idem.run(k, "fp", work)
    assert work.runs == 1
    assert first == OK
    assert again.hit
    assert (again.status, again.body, again.headers) == (OK.status, OK.body, OK.headers)


async def test_twenty_concurrent_requests_run_once_and_share_the_response(
    store: Any, clock: FakeClock
) -> None:
    idem = Idempotency(store, clock=clock, wait=30.0, poll_interval=0.1)
    work, k = Work(), key()
    work.gate = asyncio.Event()
    tasks = [asyncio.create_task(idem.run(k, "fp", work)) for _ in range(20)]
    await clock.wait_for_sleepers(19, max_yields=1_000_000)
    assert work.runs == 1
    work.gate.set()
    async with asyncio.timeout(10):  # the stored response wakes every waiter: no clock moves
        await asyncio.gather(*tasks)
    results = [task.result() for task in tasks]
    assert work.runs == 1
    assert sum(not r.hit for r in results) == 1
    assert {(r.status, r.body, r.headers) for r in results} == {(OK.status, OK.body, OK.headers)}


async def test_a_repeat_that_outwaits_the_first_gets_409(store: Any, clock: FakeClock) -> None:
    idem = Idempotency(store, clock=clock, wait=1.0, poll_interval=0.25)
    work, k = Work(), key()
    work.gate = asyncio.Event()
    first = asyncio.create_task(idem.run(k, "fp", work))
    await work.started.wait()  # the first owns the key before the repeat arrives
    repeat = asyncio.create_task(idem.run(k, "fp", work))
    for _ in range(4):
        await clock.wait_for_sleepers(1, max_yields=1_000_000)
        clock.advance(0.25)
    with pytest.raises(IdempotencyConflict) as caught:
        await repeat
    assert caught.value.http_status == 409
    assert isinstance(caught.value, BastionError)
    work.gate.set()
    assert (await first) == OK
    assert work.runs == 1


async def test_a_waiting_repeat_answers_as_soon_as_the_first_is_stored(
    store: Any, clock: FakeClock
) -> None:
    idem = Idempotency(store, clock=clock, wait=30.0, poll_interval=30.0)
    work, k = Work(), key()
    work.gate = asyncio.Event()
    first = asyncio.create_task(idem.run(k, "fp", work))
    await work.started.wait()
    repeat = asyncio.create_task(idem.run(k, "fp", work))
    await clock.wait_for_sleepers(1, max_yields=1_000_000)
    work.gate.set()
    async with asyncio.timeout(5):  # woken by the stored response, not by a poll
        replayed = await repeat
    assert replayed.hit
    assert (await first) == OK
    assert (work.runs, clock.monotonic()) == (1, 0.0)


async def test_a_waiting_repeat_takes_over_at_once_when_the_first_fails(
    store: Any, clock: FakeClock
) -> None:
    idem = Idempotency(store, clock=clock, wait=30.0, poll_interval=30.0)
    failing, k = Work(), key()
    failing.gate = asyncio.Event()

    async def fail() -> StoredResponse:
        await failing()
        raise RuntimeError("upstream broke")

    first = asyncio.create_task(idem.run(k, "fp", fail))
    await failing.started.wait()
    retry = Work()
    repeat = asyncio.create_task(idem.run(k, "fp", retry))
    await clock.wait_for_sleepers(1, max_yields=1_000_000)
    failing.gate.set()
    with pytest.raises(RuntimeError, match="upstream broke"):
        await first
    async with asyncio.timeout(5):  # the release woke it: it owns the key now and runs
        assert (await repeat) == OK
    assert retry.runs == 1


@pytest.mark.parametrize("backend", ["postgresql", "redis"], indirect=True)
async def test_a_repeat_in_another_process_is_woken_by_the_stored_response(
    make_store: Any, clock: FakeClock
) -> None:
    """Two stores with their own connections stand for two processes: push, not poll."""
    first_side, repeat_side = make_store(clock=clock), make_store(clock=clock)
    work, k = Work(), key()
    work.gate = asyncio.Event()
    first = asyncio.create_task(Idempotency(first_side, clock=clock).run(k, "fp", work))
    await work.started.wait()
    idem = Idempotency(repeat_side, clock=clock, wait=30.0, poll_interval=30.0)
    repeat = asyncio.create_task(idem.run(k, "fp", work))
    await clock.wait_for_sleepers(1, max_yields=1_000_000)
    work.gate.set()
    assert (await first) == OK
    async with asyncio.timeout(5):
        assert (await repeat).hit
    assert work.runs == 1


async def test_no_wait_conflicts_at_once(store: Any, clock: FakeClock) -> None:
    idem = Idempotency(store, clock=clock, wait=0)
    k = key()
    assert (await store.claim_idempotency_key(k, "fp", "owner", lock_ttl=60)).state == "acquired"
    with pytest.raises(IdempotencyConflict):
        await idem.run(k, "fp", Work())
    assert clock.sleeps == []


async def test_the_same_key_with_another_body_gets_422(store: Any, clock: FakeClock) -> None:
    idem = Idempotency(store, clock=clock)
    work, k = Work(), key()
    await idem.run(k, fingerprint(b'{"a": 1, "b": 2}'), work)
    assert (await idem.run(k, fingerprint({"b": 2, "a": 1}), work)).hit
    with pytest.raises(IdempotencyMismatch) as caught:
        await idem.run(k, fingerprint(b'{"a": 2}'), work)
    assert caught.value.http_status == 422
    assert work.runs == 1


async def test_a_running_key_with_another_body_gets_422_without_waiting(
    store: Any, clock: FakeClock
) -> None:
    idem = Idempotency(store, clock=clock)
    k = key()
    await store.claim_idempotency_key(k, "fp-1", "owner", lock_ttl=60)
    with pytest.raises(IdempotencyMismatch):
        await idem.run(k, "fp-2", Work())
    assert clock.sleeps == []


async def test_a_failure_releases_the_key_so_a_retry_runs(store: Any, clock: FakeClock) -> None:
    idem = Idempotency(store, clock=clock)
    k = key()

    async def broken() -> StoredResponse:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError):
        await idem.run(k, "fp", broken)
    work = Work()
    assert (await idem.run(k, "fp", work)) == OK
    assert work.runs == 1


async def test_a_5xx_is_returned_but_not_kept(store: Any, clock: FakeClock) -> None:
    idem = Idempotency(store, clock=clock)
    failing, k = Work(StoredResponse(status=503, body=b"busy")), key()
    assert (await idem.run(k, "fp", failing)).status == 503
    assert not (await idem.run(k, "fp", failing)).hit
    assert failing.runs == 2
    kept = Idempotency(store, clock=clock, cacheable=lambda r: True)
    await kept.run(k, "fp", failing)
    assert (await kept.run(k, "fp", failing)).hit
    assert failing.runs == 3


async def test_a_response_expires_after_its_ttl(store: Any, clock: FakeClock) -> None:
    idem = Idempotency(store, clock=clock, ttl=30.0)
    work, k = Work(), key()
    await idem.run(k, "fp", work)
    clock.advance(29.0)
    assert (await idem.run(k, "fp", work)).hit
    clock.advance(1.5)
    assert not (await idem.run(k, "fp", work)).hit
    assert work.runs == 2
    clock.advance(31.0)  # after expiry the key may even name another request
    assert not (await idem.run(k, "other", work)).hit


async def test_a_crashed_owners_lock_lapses(store: Any, clock: FakeClock) -> None:
    idem = Idempotency(store, clock=clock, wait=0, lock_ttl=20.0)
    k = key()
    await store.claim_idempotency_key(k, "fp", "crashed-owner", lock_ttl=20.0)
    with pytest.raises(IdempotencyConflict):
        await idem.run(k, "fp", Work())
    clock.advance(20.0)
    work = Work()
    assert (await idem.run(k, "fp", work)) == OK
    assert work.runs == 1
    # the late owner can neither overwrite nor release the new owner's record
    assert not await store.store_idempotent_response(k, "crashed-owner", OK, ttl=60)
    await store.release_idempotency_key(k, "crashed-owner")
    assert (await idem.run(k, "fp", work)).hit


async def test_scoped_stores_never_share_keys(store: Any, clock: FakeClock) -> None:
    a = Idempotency(store.scoped("tenant-a"), clock=clock)
    b = Idempotency(store.scoped("tenant-b"), clock=clock)
    work, k = Work(), key()
    await a.run(k, "fp-a", work)
    assert not (await b.run(k, "fp-b", work)).hit
    assert (await a.run(k, "fp-a", work)).hit
    assert work.runs == 2


def test_fingerprint_normalises_json_and_hashes_other_bytes() -> None:
    assert fingerprint('{"a": 1, "b": [1, 2]}') == fingerprint(b'{"b":[1,2],"a":1}')
    assert fingerprint("not json") != fingerprint("not json!")
    assert len(fingerprint(b"\xff\xfe")) == 64


@pytest.mark.parametrize(
    ("option", "value"),
    [("ttl", 0), ("wait", -1), ("lock_ttl", float("inf")), ("failure_mode", "maybe")],
)
def test_bad_options_are_named(option: str, value: Any) -> None:
    from bastion.stores._memory import MemoryStore

    with pytest.raises(ConfigurationError, match=option):
        Idempotency(MemoryStore(), **{option: value})


async def test_a_very_long_key_still_wakes_a_waiting_repeat(store: Any, clock: FakeClock) -> None:
    """Keys longer than PostgreSQL's 8000-byte NOTIFY payload are announced all the same."""
    idem = Idempotency(store, clock=clock, wait=30.0, poll_interval=30.0)
    work, k = Work(), "req-" + "k" * 9000
    work.gate = asyncio.Event()
    first = asyncio.create_task(idem.run(k, "fp", work))
    await work.started.wait()
    repeat = asyncio.create_task(idem.run(k, "fp", work))
    await clock.wait_for_sleepers(1, max_yields=1_000_000)
    work.gate.set()
    assert (await first) == OK
    async with asyncio.timeout(5):
        assert (await repeat).hit
