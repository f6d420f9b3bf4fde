"""A session keeps every message in order while it is in use, on every backend.

Parametrised over memory, SQLite, PostgreSQL and Redis (real servers). Every
store reads the test's FakeClock (Redis too: a test clock replaces the
server's), so TTLs pass without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest

from bastion._core.errors import BastionError, ConfigurationError
from bastion.models._types import Message, ToolCall
from bastion.stores._memory import MemoryStore
from bastion.stores._session_store import SessionNotFound, SessionStore
from bastion.stores._sessions import Sessions, SessionSweeper
from bastion.testing import FakeClock


def session_id() -> str:
    return f"sess-{uuid.uuid4().hex[:8]}"


async def test_the_store_is_a_session_store(store: Any) -> None:
    assert isinstance(store, SessionStore)


async def test_appended_messages_load_back_in_order(store: Any, clock: FakeClock) -> None:
    sid = session_id()
    assert await store.load_session(sid) is None
    await store.create_session(sid, ttl=60.0, metadata=b"meta\x00\xff")
    assert await store.append_messages(sid, [b"one", b"two"]) == 2
    assert await store.append_messages(sid, [b"three\x00"]) == 3
    assert await store.append_messages(sid, []) == 3
    data = await store.load_session(sid)
    assert data.messages == (b"one", b"two", b"three\x00")
    assert (data.session_id, data.metadata) == (sid, b"meta\x00\xff")
    assert (data.created_at, data.expires_at) == (clock.time(), clock.time() + 60.0)


async def test_creating_again_starts_afresh(store: Any) -> None:
    sid = session_id()
    await store.create_session(sid, ttl=60.0, metadata=b"old")
    await store.append_messages(sid, [b"x"])
    await store.create_session(sid, ttl=60.0, metadata=b"new")
    data = await store.load_session(sid)
    assert (data.metadata, data.messages) == (b"new", ())


async def test_an_append_refreshes_the_ttl(store: Any, clock: FakeClock) -> None:
    sid = session_id()
    await store.create_session(sid, ttl=10.0, metadata=b"")
    clock.advance(8.0)
    await store.append_messages(sid, [b"a"])
    clock.advance(8.0)  # 16 s after creation, 8 s after the append
    data = await store.load_session(sid)
    assert data.messages == (b"a",)
    assert data.expires_at == clock.time() + 2.0
    clock.advance(2.5)
    assert await store.load_session(sid) is None


async def test_appending_to_a_missing_or_expired_session_raises(
    store: Any, clock: FakeClock
) -> None:
    with pytest.raises(SessionNotFound, match="does not exist or has expired") as caught:
        await store.append_messages(session_id(), [b"x"])
    assert isinstance(caught.value, BastionError)
    assert caught.value.http_status == 404
    sid = session_id()
    await store.create_session(sid, ttl=5.0, metadata=b"")
    clock.advance(5.0)
    with pytest.raises(SessionNotFound):
        await store.append_messages(sid, [b"late"])
    assert await store.load_session(sid) is None


async def test_list_pages_through_live_sessions_with_a_stable_cursor(
    store: Any, clock: FakeClock
) -> None:
    ids = sorted(f"s{i:02d}" for i in range(7))
    for sid in reversed(ids):
        await store.create_session(sid, ttl=60.0, metadata=b"")
    await store.create_session("s99-short", ttl=1.0, metadata=b"")
    clock.advance(2.0)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_sessions(limit=3, cursor=cursor)
        seen += page.session_ids
        assert len(page.session_ids) <= 3
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        await store.create_session("a-before-the-cursor", ttl=60.0, metadata=b"")
    assert seen == ids


async def test_delete_forgets_the_session_and_its_messages(store: Any) -> None:
    sid = session_id()
    await store.create_session(sid, ttl=60.0, metadata=b"")
    await store.append_messages(sid, [b"x", b"y"])
    await store.delete_session(sid)
    await store.delete_session(sid)
    assert await store.load_session(sid) is None
    assert sid not in (await store.list_sessions(limit=10, cursor=None)).session_ids
    await store.create_session(sid, ttl=60.0, metadata=b"")
    assert (await store.load_session(sid)).messages == ()


async def test_scoped_stores_never_see_each_others_sessions(store: Any) -> None:
    sid = session_id()
    tenant_a, tenant_b = store.scoped("a"), store.scoped("b")
    await tenant_a.create_session(sid, ttl=60.0, metadata=b"a")
    await tenant_a.append_messages(sid, [b"a1"])
    assert await tenant_b.load_session(sid) is None
    assert await store.load_session(sid) is None
    with pytest.raises(SessionNotFound):
        await tenant_b.append_messages(sid, [b"b1"])
    assert (await tenant_b.list_sessions(limit=10, cursor=None)).session_ids == ()
    await tenant_b.create_session(sid, ttl=60.0, metadata=b"b")
    await tenant_b.delete_session(sid)
    assert (await tenant_a.load_session(sid)).messages == (b"a1",)
    assert (await tenant_a.list_sessions(limit=10, cursor=None)).session_ids == (sid,)


async def test_twenty_concurrent_appends_all_land(store: Any) -> None:
    sid = session_id()
    await store.create_session(sid, ttl=60.0, metadata=b"")
    lengths = await asyncio.gather(*(store.append_messages(sid, [b"%d" % i]) for i in range(20)))
    assert sorted(lengths) == list(range(1, 21))
    data = await store.load_session(sid)
    assert sorted(data.messages) == sorted(b"%d" % i for i in range(20))


@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgresql"], indirect=True)
async def test_sweep_deletes_expired_sessions_and_their_messages(
    store: Any, clock: FakeClock
) -> None:
    old, kept = session_id(), session_id()
    await store.create_session(old, ttl=1.0, metadata=b"")
    await store.append_messages(old, [b"gone"])
    await store.create_session(kept, ttl=60.0, metadata=b"")
    await store.append_messages(kept, [b"kept"])
    clock.advance(2.0)
    assert await store.sweep_sessions(clock.time()) >= 1
    assert await store.sweep_sessions(clock.time()) == 0
    assert (await store.load_session(kept)).messages == (b"kept",)
    if store.backend != "memory":
        import sqlalchemy as sa

        from bastion.stores._sql_schema import session_messages, sessions

        def keys(conn: Any) -> set[str]:
            rows = conn.execute(sa.select(sessions.c.key)).scalars()
            messages = conn.execute(sa.select(session_messages.c.key)).scalars()
            return set(rows) | set(messages)

        left = await store.run("test", keys)
        assert not any(key.endswith(old) for key in left)
        assert any(key.endswith(kept) for key in left)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_expires_sessions_itself(store: Any) -> None:
    sid = session_id()
    await store.create_session(sid, ttl=30.0, metadata=b"")
    await store.append_messages(sid, [b"x"])
    assert await store.sweep_sessions(10**12) == 0
    hash_key, list_key, _ = store._session_keys(sid)
    ttls = [await store.client.pttl(hash_key), await store.client.pttl(list_key)]
    assert all(25_000 < left <= 30_000 for left in ttls)


async def test_the_front_round_trips_messages(store: Any, clock: FakeClock) -> None:
    sessions = Sessions(store, ttl=30.0, clock=clock)
    sid = session_id()
    call = ToolCall(id="c1", name="search", arguments='{"q": "é"}')
    history = (
        Message.system("be brief"),
        Message.user("héllo"),
        Message.assistant("", tool_calls=(call,)),
        Message("tool", "found", tool_call_id="c1", name="search"),
    )
    await sessions.create(sid, metadata={"user": "u1"})
    assert await sessions.append(sid, *history[:2]) == 2
    clock.advance(10.0)
    assert await sessions.append(sid, *history[2:]) == 4
    clock.advance(5.0)
    loaded = await sessions.load(sid)
    assert loaded is not None
    assert (loaded.messages, loaded.metadata, loaded.expires_in) == (history, {"user": "u1"}, 25.0)
    assert (await sessions.list()).session_ids == (sid,)
    await sessions.delete(sid)
    assert await sessions.load(sid) is None
    with pytest.raises(SessionNotFound):
        await sessions.append(sid, Message.user("again"))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.create(""), r"Sessions\.create\(session_id\)"),
        (lambda s: s.create("s", metadata=["x"]), r"Sessions\.create\(metadata\)"),
        (lambda s: s.create("s", metadata={"x": object()}), r"Sessions\.create\(metadata\)"),
        (lambda s: s.append("s", "hi"), r"Sessions\.append\(messages\)"),
        (lambda s: s.load(7), r"Sessions\.load\(session_id\)"),
        (lambda s: s.list(limit=0), r"Sessions\.list\(limit\)"),
        (lambda s: s.list(cursor=3), r"Sessions\.list\(cursor\)"),
        (lambda s: s.delete(""), r"Sessions\.delete\(session_id\)"),
    ],
)
async def test_the_front_rejects_bad_arguments(call: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        await call(Sessions(MemoryStore()))


def test_the_fronts_reject_a_bad_store_or_interval() -> None:
    with pytest.raises(ConfigurationError, match=r"Sessions\(store\)"):
        Sessions(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Sessions\.ttl must be"):
        Sessions(MemoryStore(), ttl=0)
    with pytest.raises(ConfigurationError, match=r"SessionSweeper\(store\)"):
        SessionSweeper(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"SessionSweeper\.every must be"):
        SessionSweeper(MemoryStore(), every=-1)


class _Flaky(MemoryStore):
    """A memory store whose first sweep fails, as a store that is briefly down would."""

    __slots__ = ("failures",)

    async def sweep_sessions(self, now: float) -> int:
        self.failures = getattr(self, "failures", 0) + 1
        if self.failures == 1:
            raise OSError("store down")
        return await super().sweep_sessions(now)


async def test_the_sweeper_runs_on_schedule_and_survives_errors(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    memory = _Flaky(clock=clock)
    await memory.create_session("a", ttl=5.0, metadata=b"")
    await memory.create_session("b", ttl=500.0, metadata=b"")
    sweeper = SessionSweeper(memory, every=60.0, clock=clock)
    sweeper.start()
    with caplog.at_level(logging.WARNING, logger="bastion.stores"):
        await clock.wait_for_sleepers()
        clock.advance(60.0)  # first sweep fails, logged
        await clock.wait_for_sleepers()
        assert sweeper.swept == 0
        assert "session sweep on memory failed" in caplog.text
        clock.advance(60.0)  # second sweep deletes "a"
        await clock.wait_for_sleepers()
    assert sweeper.swept == 1
    assert await memory.load_session("a") is None
    assert await memory.load_session("b") is not None
    await sweeper.stop()
    await sweeper.stop()
    assert clock.pending_sleepers == 0
