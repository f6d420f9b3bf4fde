"""What is particular to the SQL store: migrations, first use, sweeping, clocks that disagree."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bastion import ConfigurationError, StoreUnavailableError
from bastion.stores import SQLStore, WindowSpec, upgrade
from bastion.stores._sql import _SWEEP_EVERY
from bastion.stores._sql_schema import METADATA, VERSION_TABLE
from bastion.testing import FakeClock

from .conftest import POSTGRES_URL, _postgres

SPEC = WindowSpec(limits=(2,), window=10, name="sql")


def schema_differences(connection: Connection) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(connection)
    return [
        diff
        for diff in compare_metadata(context, METADATA)
        if not (diff[0] == "remove_table" and diff[1].name == VERSION_TABLE)
    ]


@pytest.mark.sqlite
async def test_sqlite_migrates_itself_on_first_use_to_exactly_the_declared_schema(
    tmp_path: Path,
) -> None:
    store = SQLStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        await store.ping()
        assert await store.run("test", schema_differences) == []
        version = await store.run(
            "test",
            lambda conn: conn.execute(
                sa.text(f"SELECT version_num FROM {VERSION_TABLE}")
            ).scalar_one(),
        )
        assert version == "0006"
    finally:
        await store.aclose()


@pytest.mark.postgresql
async def test_postgres_upgrade_is_idempotent_concurrent_and_exact(postgres_schema: str) -> None:
    schema = f"bastion_up_{uuid.uuid4().hex[:8]}"
    await _postgres(f'CREATE SCHEMA "{schema}"')
    try:
        store = SQLStore(POSTGRES_URL, schema=schema)
        try:
            with pytest.raises(ConfigurationError, match="bastion db upgrade"):
                await store.rate_limit("k", (1.0,), SPEC)
            await asyncio.gather(*(upgrade(POSTGRES_URL, schema=schema) for _ in range(3)))
            await upgrade(POSTGRES_URL, schema=schema)
            assert (await store.rate_limit("k", (1.0,), SPEC)).allowed
            assert await store.run("test", schema_differences) == []
        finally:
            await store.aclose()
    finally:
        await _postgres(f'DROP SCHEMA "{schema}" CASCADE')


async def count_rows(store: SQLStore, table: str) -> int:
    def count(conn: Connection) -> int:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    return await store.run("test", count)


@pytest.mark.sqlite
async def test_expired_rows_are_swept_every_so_often(tmp_path: Path, clock: FakeClock) -> None:
    store = SQLStore(f"sqlite:///{tmp_path / 'sweep.db'}", clock=clock)
    try:
        for i in range(5):
            await store.rate_limit(f"user-{i}", (1.0,), SPEC)
        assert await count_rows(store, "bastion_rate_limits") == 5
        clock.advance(10)
        store._shared.ops = _SWEEP_EVERY - 1  # the next admission is the one that sweeps
        await store.rate_limit("busy", (1.0,), SPEC)
        assert await count_rows(store, "bastion_rate_limits") == 1
    finally:
        await store.aclose()


@pytest.mark.sqlite
async def test_a_process_whose_clock_lags_never_moves_a_key_back_in_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'clocks.db'}"
    ahead, behind = FakeClock(wall=1_000_010.0), FakeClock(wall=1_000_000.0)
    first, second = SQLStore(url, clock=ahead), SQLStore(url, clock=behind)
    try:
        admitted = await first.rate_limit("k", (1.0,), SPEC)
        late = await second.rate_limit("k", (1.0,), SPEC)
        assert late.now == admitted.now == 1_000_010.0  # the lagging clock is caught up
        refused = await second.rate_limit("k", (1.0,), SPEC)
        assert not refused.allowed
        assert refused.retry_after == 10.0  # measured from the latest time the key has seen
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.sqlite
async def test_views_share_the_connections_and_report_their_scope(tmp_path: Path) -> None:
    async with SQLStore(f"sqlite:///{tmp_path / 'v.db'}") as store:
        view = store.scoped("tenant")
        assert view._shared is store._shared
        assert repr(view) == "SQLStore(backend='sqlite', scope=('tenant',))"


@pytest.mark.postgresql
@pytest.mark.parametrize(
    "schema",
    ['x"; DROP TABLE budget_caps; --', "public,evil", "1st", "a" * 64, "", "naïve", 7],
)
def test_a_schema_must_be_a_plain_identifier(schema: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"SQLStore\.schema must be a plain PostgreSQL"):
        SQLStore(POSTGRES_URL, schema=schema)


@pytest.mark.postgresql
@pytest.mark.parametrize("schema", ["bastion", "_Tenant_42", "a" * 63])
async def test_a_plain_schema_is_taken(schema: str) -> None:
    store = SQLStore(POSTGRES_URL, schema=schema)
    await store.aclose()
    assert store.backend == "postgresql"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_driver_errors_never_carry_the_values_sent(store: Any) -> None:
    """A statement's parameters may be prompts or keys; a logged traceback must not show them."""
    from bastion.stores._sql_schema import checkpoints

    def write_a_bad_row(conn: Connection) -> None:
        row = {"key": "k", "step": None, "state": b"prompt: my password is hunter2", "saved_at": 0}
        conn.execute(sa.insert(checkpoints).values(**row))

    with pytest.raises(sa.exc.IntegrityError) as caught:
        await store.run("test", write_a_bad_row)
    assert "hunter2" not in str(caught.value)
    assert "parameters hidden" in str(caught.value)


@pytest.mark.sqlite
async def test_a_fresh_file_another_process_holds_is_waited_for_not_refused(
    tmp_path: Path,
) -> None:
    """Switching a new file to WAL fails at once while another connection holds it; the
    store waits (within its timeout) instead, so workers starting together all come up."""
    import sqlite3
    import threading

    path = tmp_path / "fresh.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process, mid-way through its migrations
    released = threading.Event()

    def release() -> None:
        released.wait(10)
        other.execute("ROLLBACK")
        other.close()

    holder = threading.Thread(target=release)
    holder.start()
    store = SQLStore(f"sqlite:///{path}", timeout=5.0)
    try:
        ping = asyncio.ensure_future(store.ping())
        await asyncio.sleep(0.05)  # the store is waiting for the file, not failing
        assert not ping.done()
        released.set()
        await ping
    finally:
        released.set()
        holder.join()
        await store.aclose()


@pytest.mark.sqlite
async def test_sqlite_reads_never_queue_behind_another_process_writing(
    tmp_path: Path, clock: FakeClock
) -> None:
    import sqlite3

    from bastion.stores import Checkpoints, SQLCacheStore

    path = tmp_path / "shared.db"
    store = SQLStore(f"sqlite:///{path}", timeout=0.3, clock=clock)
    try:
        cache, checkpoints = SQLCacheStore(store=store), Checkpoints(store, clock=clock)
        await cache.set("k", b"v", ttl=None)
        await checkpoints.save("run", 1, {"n": 1})
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            assert await cache.get("k") == b"v"  # a snapshot read: no wait for the lock
            saved = await checkpoints.load("run")
            assert saved is not None
            assert saved.state == {"n": 1}
            await store.ping()
            with pytest.raises(StoreUnavailableError):
                await cache.set("k", b"w", ttl=None)  # a write does wait, up to the timeout
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        await cache.set("k", b"w", ttl=None)
        assert await cache.get("k") == b"w"
    finally:
        await store.aclose()
