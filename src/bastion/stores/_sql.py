"""The SQL store: SQLite (the embedded default, one file) and PostgreSQL, one implementation.

Both speak SQLAlchemy Core, with statements built once
(:mod:`bastion.stores._sql_statements`) and each transaction written once, as
a plain function of a connection: PostgreSQL runs it through asyncpg;
SQLite runs it whole in one dedicated thread on the standard ``sqlite3``
driver (one hand-off per transaction instead of one per statement). Every
read-check-write is one transaction that first locks what it decides on, then
runs the same Python rule the memory store runs, then writes:

- PostgreSQL locks rows: ``SELECT ... FOR UPDATE`` for a rate-limited key, an
  ``INSERT ... ON CONFLICT DO UPDATE`` (which locks the row it touches) for
  budget caps, always in sorted key order so two reservations cannot deadlock.
- SQLite has no row locks; every transaction that writes starts with ``BEGIN
  IMMEDIATE``, which takes the database's write lock up front, so writing
  transactions from every process touching the file run one at a time. A
  transaction that only reads begins deferred and reads a WAL snapshot: it
  neither waits for the writers nor holds them up.

Time is the wall clock of the process running the transaction
(``clock.time()``), read *after* the lock is held and never allowed to go
backwards for a key (the stored state remembers the latest time it saw), so
processes whose clocks differ slightly still keep each log in order. Keep the
machines on NTP: a clock that runs ahead makes that process's calls expire
later, never sooner -- skew can only make the limit stricter.

The schema is shipped as Alembic migrations; :func:`upgrade` applies them.
A SQLite store applies them itself on first use; a PostgreSQL store expects
``bastion db upgrade`` (``await upgrade(url)``) to have run, because schema
changes on a shared server are an operator's decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.redact import redact_url
from bastion._core.validate import invalid, positive_number
from bastion.stores._approval_store import (
    Approval,
    ApprovalPage,
    ApprovalRequest,
    ApprovalStatus,
    as_of,
    encode_arguments,
)
from bastion.stores._approval_store import page_of as approval_page
from bastion.stores._base import call_store
from bastion.stores._budget_store import (
    CapCharge,
    ReserveMode,
    ReserveOutcome,
    decide_reservation,
)
from bastion.stores._checkpoint_store import Checkpoint
from bastion.stores._fixed_window import WindowCount, decide_fixed
from bastion.stores._idempotency_store import (
    Claim,
    StoredResponse,
    claim_of,
    decode_headers,
    encode_headers,
)
from bastion.stores._keys import ScopedView, scope_path
from bastion.stores._pg_listen import PgListener
from bastion.stores._ratelimit import WindowSpec
from bastion.stores._session_store import SessionData, SessionNotFound, SessionPage, page_of
from bastion.stores._sql_statements import Statements
from bastion.stores._wakeup import Notifier, Wakeup
from bastion.stores._window_log import KeyLog, WindowDecision, check_costs, decide_in

__all__ = ["SQLStore", "upgrade"]

T = TypeVar("T")

_MIGRATIONS = Path(__file__).with_name("migrations")
_SWEEP_EVERY = 1000
_PG_MIGRATION_LOCK = 0x62617374  # pg_advisory_xact_lock key: one migrator at a time
_UNDEFINED_TABLE = "42P01"
_READ_ONLY = "bastion_read_only"
"""Execution option marking a SQLite transaction that only reads."""
CHANGE_CHANNEL = "bastion_changes"
"""The PostgreSQL channel a change that waiters care about is announced on (payload: its key):
a decided approval, a stored or released idempotency key."""


def _engine_url(url: str) -> tuple[sa.URL, str]:
    """The SQLAlchemy URL with Bastion's async driver, and the backend's name."""
    parsed = make_url(url)
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(parsed):
            msg = (
                f"sqlite URL {redact_url(url)!r} names an in-memory database, "
                "which each connection would "
                "see separately; use a file (sqlite:///bastion.db) or memory:// for in-process"
            )
            raise ConfigurationError(msg)
        return parsed.set(drivername="sqlite+pysqlite"), "sqlite"
    if dialect in ("postgresql", "postgres"):
        try:
            import asyncpg  # type: ignore[import-untyped]  # noqa: F401
        except ImportError as exc:
            msg = "the PostgreSQL store needs asyncpg: pip install 'bastion[postgres]'"
            raise ImportError(msg) from exc
        return parsed.set(drivername="postgresql+asyncpg"), "postgresql"
    msg = f"SQLStore supports sqlite:/// and postgresql:// URLs; got {redact_url(url)!r}"
    raise ConfigurationError(msg)


def _is_unavailable(exc: Exception) -> bool:
    """Whether a driver error means "the database cannot be reached" rather than a bug."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    return isinstance(exc, OSError | sa.exc.TimeoutError | ConnectionError)


class _Shared:
    """What a root store and its scoped views share: engines, statements, first-use state.

    PostgreSQL runs on an async engine (asyncpg). SQLite runs on a *sync*
    engine whose one connection lives in one dedicated thread: a whole
    transaction then costs one hop between the event loop and that thread,
    where going through an async driver statement by statement cost about
    twenty (each hop a wake-up of the loop), which made a budget reservation
    take milliseconds instead of a fraction of one.
    """

    __slots__ = (
        "async_engine",
        "auto_upgrade",
        "closed",
        "executor",
        "listener",
        "notifier",
        "ops",
        "ready",
        "ready_lock",
        "statements",
        "sync_engine",
    )

    def __init__(
        self,
        *,
        async_engine: AsyncEngine | None,
        sync_engine: sa.Engine | None,
        dialect: str,
        auto_upgrade: bool,
        timeout: float,
        clock: Clock,
    ) -> None:
        self.async_engine = async_engine
        self.sync_engine = sync_engine
        self.executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-sqlite")
            if sync_engine is not None
            else None
        )
        self.statements = Statements(dialect)
        self.auto_upgrade = auto_upgrade
        self.ready = not auto_upgrade
        self.ready_lock: asyncio.Lock | None = None
        self.ops = 0
        self.closed = False
        self.notifier = Notifier()
        self.listener = (
            PgListener(
                async_engine,
                channel=CHANGE_CHANNEL,
                notifier=self.notifier,
                timeout=timeout,
                clock=clock,
            )
            if async_engine is not None
            else None
        )

    async def run(self, step: Callable[[Connection], T], *, read: bool = False) -> T:
        """Run ``step(connection)`` inside one transaction, committed when it returns.

        ``read=True`` says ``step`` only reads: on SQLite its transaction then
        takes no write lock, so in WAL mode it never queues behind another
        process's writes (nor they behind it).
        """
        if self.async_engine is not None:
            async with self.async_engine.begin() as conn:
                return await conn.run_sync(step)
        assert self.executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run_sqlite, step, read)

    def _run_sqlite(self, step: Callable[[Connection], T], read: bool) -> T:
        assert self.sync_engine is not None
        with self.sync_engine.connect() as conn:
            if read:
                conn.execution_options(**{_READ_ONLY: True})
            with conn.begin():
                return step(conn)

    async def close(self) -> None:
        """Release everything (a second close does nothing)."""
        if self.closed:
            return
        self.closed = True
        if self.listener is not None:
            await self.listener.close()
        if self.async_engine is not None:
            await self.async_engine.dispose()
        if self.executor is not None and self.sync_engine is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, self.sync_engine.dispose)
            self.executor.shutdown(wait=True)


class SQLStore(ScopedView):
    """Rate limits, budgets, idempotency, checkpoints, sessions, approvals in SQLite or PostgreSQL.

    URLs: ``sqlite:///path.db`` or ``postgresql://...``.

    ``schema`` (PostgreSQL only) puts every table in that schema instead of
    the user's default one -- it must exist, and be a plain identifier (it
    goes into ``search_path``, which folds it to lower case). ``auto_upgrade`` (default: on for
    SQLite, off for PostgreSQL) applies missing migrations on first use.
    ``pool_size`` is PostgreSQL's connection pool (twice that under load); a
    SQLite store keeps one connection, since SQLite writes one at a time.
    """

    __slots__ = ("_backend", "_clock", "_shared", "_timeout")

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        schema: str | None = None,
        auto_upgrade: bool | None = None,
        pool_size: int = 10,
    ) -> None:
        self._timeout = positive_number(timeout, "SQLStore.timeout", unit="seconds")
        engine_url, self._backend = _engine_url(url)
        self._clock = clock
        self._scope: tuple[str, ...] = ()
        self._prefix = scope_path(())
        if auto_upgrade is None:
            auto_upgrade = self._backend == "sqlite"
        if self._backend == "sqlite":
            if schema is not None:
                msg = "SQLStore.schema is for PostgreSQL; a SQLite file has no schemas"
                raise ConfigurationError(msg)
            sync_engine = sa.create_engine(
                engine_url,
                hide_parameters=True,  # errors and logs never carry prompts or secrets
                pool_size=1,
                max_overflow=0,
                pool_timeout=self._timeout,
                connect_args={"timeout": self._timeout},
            )
            _serialize_sqlite(sync_engine, self._timeout)
            self._shared = _Shared(
                async_engine=None,
                sync_engine=sync_engine,
                dialect="sqlite",
                auto_upgrade=auto_upgrade,
                timeout=self._timeout,
                clock=clock,
            )
        else:
            connect_args: dict[str, Any] = {"timeout": self._timeout}
            if schema is not None:
                connect_args["server_settings"] = {"search_path": _plain_identifier(schema)}
            async_engine = create_async_engine(
                engine_url,
                hide_parameters=True,  # errors and logs never carry prompts or secrets
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=self._timeout,
                connect_args=connect_args,
            )
            self._shared = _Shared(
                async_engine=async_engine,
                sync_engine=None,
                dialect="postgresql",
                auto_upgrade=auto_upgrade,
                timeout=self._timeout,
                clock=clock,
            )

    def __repr__(self) -> str:
        return f"SQLStore(backend={self._backend!r}, scope={self._scope!r})"

    @property
    def backend(self) -> str:
        return self._backend

    async def ping(self) -> None:
        await self.run(
            "ping", lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one(), read=True
        )

    async def aclose(self) -> None:
        await self._shared.close()

    async def upgrade(self) -> None:
        """Apply every migration the database lacks (idempotent; safe from many processes)."""
        await call_store(
            self._backend,
            "upgrade",
            max(self._timeout, 30.0),
            self._shared.run(self._migrate),
            _is_unavailable,
        )
        self._shared.ready = True

    def _migrate(self, conn: Connection) -> None:
        if self._backend == "postgresql":
            conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
        _run_migrations(conn)

    async def _ready(self) -> None:
        shared = self._shared
        if shared.ready:
            return
        if shared.ready_lock is None:
            shared.ready_lock = asyncio.Lock()
        async with shared.ready_lock:
            if not shared.ready:
                await shared.run(self._migrate)
                shared.ready = True

    async def run(
        self, operation: str, step: Callable[[Connection], T], *, read: bool = False
    ) -> T:
        """Run ``step(connection)`` in one transaction under the store's timeout.

        For the store's own concerns (and tests): ``step`` is a plain function
        of a SQLAlchemy :class:`~sqlalchemy.engine.Connection`; ``read=True``
        promises it writes nothing (SQLite then runs it without the write lock).
        """

        async def work() -> T:
            await self._ready()
            try:
                return await self._shared.run(step, read=read)
            except sa.exc.ProgrammingError as exc:
                if getattr(exc.orig, "sqlstate", None) != _UNDEFINED_TABLE:
                    raise
                msg = (
                    f"the {self._backend} database has no Bastion tables yet: run "
                    "`bastion db upgrade` (or `await bastion.stores.upgrade(url)`) once, or "
                    "pass auto_upgrade=True"
                )
                raise ConfigurationError(msg) from exc

        return await call_store(self._backend, operation, self._timeout, work(), _is_unavailable)

    def _maybe_sweep(self, conn: Connection, now: float) -> None:
        """Every so often, delete what has expired, inside the current transaction."""
        shared = self._shared
        shared.ops += 1
        if shared.ops < _SWEEP_EVERY:
            return
        shared.ops = 0
        for sweep in shared.statements.sweeps:
            conn.execute(sweep, {"b_now": now})

    # -- rate limits ---------------------------------------------------------------------------

    async def rate_limit(
        self, key: str, costs: Sequence[float], spec: WindowSpec
    ) -> WindowDecision:
        check_costs(costs, spec.limits, spec.names, spec.window)
        full = {"b_key": self._prefix + "rl:" + spec.tag + ":" + key}
        sql = self._shared.statements
        clock = self._clock

        def step(conn: Connection) -> WindowDecision:
            state = conn.execute(sql.limit_state, full).scalar_one_or_none()
            if state is None:
                conn.execute(sql.limit_create, full)
                state = conn.execute(sql.limit_state, full).scalar_one()
            stored = json.loads(state)
            now = max(clock.time(), stored.get("t", 0.0))  # read under the row lock
            verdict, new_state, expires_at = _decide(spec, stored, costs, now)
            if verdict.allowed:
                conn.execute(
                    sql.limit_write, {**full, "b_state": new_state, "b_expires": expires_at}
                )
                self._maybe_sweep(conn, now)
            return verdict

        return await self.run("rate_limit", step)

    # -- budgets -------------------------------------------------------------------------------

    def _lock_caps(
        self, conn: Connection, caps: Sequence[CapCharge], now: float, settle: int
    ) -> dict[str, int]:
        """Create or update every cap row (which locks it, in key order); their settled sums."""
        rows = [
            {"key": key, "settled": settle, "expires_at": expires_at, "b_now": now}
            for key, expires_at in sorted((self._prefix + cap.key, cap.expires_at) for cap in caps)
        ]
        result = conn.execute(self._shared.statements.caps_lock, rows)
        return {key: int(settled) for key, settled in result.all()}

    async def reserve(
        self,
        reservation: str,
        caps: Sequence[CapCharge],
        amount: int,
        *,
        mode: ReserveMode,
        now: float,
        hold_until: float,
    ) -> ReserveOutcome:
        keys = [self._prefix + cap.key for cap in caps]
        limits = [cap.limit for cap in caps]
        sql = self._shared.statements

        def step(conn: Connection) -> ReserveOutcome:
            settled = self._lock_caps(conn, caps, now, 0)
            query = {"b_keys": keys, "b_now": now, "b_reservation": reservation}
            held = {key: int(total) for key, total in conn.execute(sql.held, query).all()}
            committed = tuple(settled[key] + held.get(key, 0) for key in keys)
            granted, over = decide_reservation(committed, limits, amount, mode)
            if granted > 0:
                rows = [
                    {
                        "reservation": reservation,
                        "cap_key": key,
                        "amount": granted,
                        "hold_until": hold_until,
                    }
                    for key in keys
                ]
                conn.execute(sql.hold, rows)
            else:
                conn.execute(sql.unhold, {"b_reservation": reservation})
            self._maybe_sweep(conn, now)
            return ReserveOutcome(granted, over, committed)

        return await self.run("reserve", step)

    async def settle(
        self,
        reservation: str,
        caps: Sequence[CapCharge],
        amount: int,
        *,
        now: float,
        if_held: bool = True,
    ) -> bool:
        keys = [self._prefix + cap.key for cap in caps]
        sql = self._shared.statements

        def step(conn: Connection) -> bool:
            if not if_held:
                self._lock_caps(conn, caps, now, amount)
                conn.execute(sql.unhold, {"b_reservation": reservation})
                return bool(caps)
            self._lock_caps(conn, caps, now, 0)  # caps first, in key order, as reserve does
            dropped = conn.execute(sql.unhold_returning, {"b_reservation": reservation})
            held = sorted(set(dropped.scalars().all()) & set(keys))
            if held:
                conn.execute(sql.caps_add, {"b_keys": held, "b_amount": amount})
            return bool(held)

        return await self.run("settle", step)

    async def release(self, reservation: str, caps: Sequence[CapCharge]) -> None:
        keys = [self._prefix + cap.key for cap in caps]
        sql = self._shared.statements

        def step(conn: Connection) -> None:
            conn.execute(sql.unhold_caps, {"b_reservation": reservation, "b_keys": keys})

        await self.run("release", step)

    async def committed(self, caps: Sequence[CapCharge], *, now: float) -> tuple[int, ...]:
        keys = [self._prefix + cap.key for cap in caps]
        sql = self._shared.statements

        def step(conn: Connection) -> tuple[int, ...]:
            query = {"b_keys": keys, "b_now": now, "b_reservation": ""}
            settled = {k: int(v) for k, v in conn.execute(sql.caps_read, query).all()}
            held = {k: int(v) for k, v in conn.execute(sql.held, query).all()}
            return tuple(settled.get(key, 0) + held.get(key, 0) for key in keys)

        return await self.run("committed", step, read=True)

    # -- idempotency ---------------------------------------------------------------------------

    async def claim_idempotency_key(
        self, key: str, fingerprint: str, token: str, *, lock_ttl: float
    ) -> Claim:
        sql = self._shared.statements
        clock = self._clock
        full = self._prefix + "idem:" + key

        def step(conn: Connection) -> Claim:
            now = clock.time()
            new = {
                "b_key": full,
                "b_fingerprint": fingerprint,
                "b_token": token,
                "b_expires": now + lock_ttl,
            }
            for _ in range(3):
                if conn.execute(sql.idem_insert, new).first() is not None:
                    break
                row = conn.execute(sql.idem_read, {"b_key": full}).first()
                if row is None:  # its owner released it between the two statements
                    continue
                claim = claim_of(_idempotency_record(row), now)
                if claim is not None:
                    return claim
                conn.execute(sql.idem_take, new)
                break
            else:
                msg = f"idempotency key {key!r} kept vanishing while being claimed"
                raise RuntimeError(msg)
            self._maybe_sweep(conn, now)
            return Claim("acquired", fingerprint)

        return await self.run("claim_idempotency_key", step)

    async def store_idempotent_response(
        self, key: str, token: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        sql = self._shared.statements
        clock = self._clock
        full = self._prefix + "idem:" + key
        values = {
            "b_key": full,
            "b_token": token,
            "b_status": response.status,
            "b_headers": encode_headers(response.headers),
            "b_body": response.body,
        }

        def step(conn: Connection) -> bool:
            row = {**values, "b_expires": clock.time() + ttl}
            stored = conn.execute(sql.idem_store, row).first() is not None
            if stored:
                self._announce(conn, full)
            return stored

        stored = await self.run("store_idempotent_response", step)
        if stored:
            self._shared.notifier.notify(notice(full))
        return stored

    async def release_idempotency_key(self, key: str, token: str) -> None:
        sql = self._shared.statements
        full = self._prefix + "idem:" + key
        row = {"b_key": full, "b_token": token}

        def step(conn: Connection) -> bool:
            released = bool(conn.execute(sql.idem_release, row).rowcount)
            if released:
                self._announce(conn, full)
            return released

        if await self.run("release_idempotency_key", step):
            self._shared.notifier.notify(notice(full))

    def idempotency_wakeups(self, key: str) -> AbstractAsyncContextManager[Wakeup]:
        return self._wakeups(self._prefix + "idem:" + key)

    # -- checkpoints ---------------------------------------------------------------------------

    async def save_checkpoint(
        self, run_id: str, step: int, state: bytes, *, ttl: float | None
    ) -> bool:
        sql = self._shared.statements
        clock = self._clock
        values = {"b_key": self._prefix + "ckpt:" + run_id, "b_step": step, "b_state": state}

        def write(conn: Connection) -> bool:
            now = clock.time()
            row = {**values, "b_now": now, "b_expires": None if ttl is None else now + ttl}
            saved = conn.execute(sql.ckpt_save, row).first() is not None
            self._maybe_sweep(conn, now)
            return saved

        return await self.run("save_checkpoint", write)

    async def load_checkpoint(self, run_id: str) -> Checkpoint | None:
        sql = self._shared.statements
        clock = self._clock
        full = self._prefix + "ckpt:" + run_id

        def step(conn: Connection) -> Checkpoint | None:
            row = conn.execute(sql.ckpt_load, {"b_key": full, "b_now": clock.time()}).first()
            if row is None:
                return None
            stored_step, state, saved_at = row
            return Checkpoint(
                run_id=run_id, step=int(stored_step), state=bytes(state), saved_at=float(saved_at)
            )

        return await self.run("load_checkpoint", step, read=True)

    async def delete_checkpoint(self, run_id: str) -> None:
        sql = self._shared.statements
        row = {"b_key": self._prefix + "ckpt:" + run_id}

        def step(conn: Connection) -> None:
            conn.execute(sql.ckpt_delete, row)

        await self.run("delete_checkpoint", step)

    # -- sessions ------------------------------------------------------------------------------

    async def create_session(self, session_id: str, *, ttl: float, metadata: bytes) -> None:
        sql = self._shared.statements
        clock = self._clock
        values = {
            "b_key": self._prefix + "sess:" + session_id,
            "b_scope": self._prefix,
            "b_session": session_id,
            "b_metadata": metadata,
            "b_ttl": ttl,
        }

        def step(conn: Connection) -> None:
            now = clock.time()
            conn.execute(sql.msgs_delete, values)
            conn.execute(sql.sess_create, {**values, "b_now": now, "b_expires": now + ttl})

        await self.run("create_session", step)

    async def append_messages(self, session_id: str, messages: list[bytes]) -> int:
        sql = self._shared.statements
        clock = self._clock
        full = self._prefix + "sess:" + session_id
        bodies = list(messages)

        def step(conn: Connection) -> int | None:
            row = {"b_key": full, "b_now": clock.time(), "b_count": len(bodies)}
            length = conn.execute(sql.sess_grow, row).scalar()
            if length is None:
                return None
            first = int(length) - len(bodies)
            if bodies:
                rows = [
                    {"b_key": full, "b_seq": first + i, "b_body": body}
                    for i, body in enumerate(bodies)
                ]
                conn.execute(sql.msgs_insert, rows)
            return int(length)

        length = await self.run("append_messages", step)
        if length is None:
            raise SessionNotFound(session_id)
        return length

    async def load_session(self, session_id: str) -> SessionData | None:
        sql = self._shared.statements
        clock = self._clock
        full = self._prefix + "sess:" + session_id

        def step(conn: Connection) -> SessionData | None:
            row = conn.execute(sql.sess_load, {"b_key": full, "b_now": clock.time()}).first()
            if row is None:
                return None
            metadata, created_at, expires_at, length = row
            bodies = conn.execute(sql.msgs_load, {"b_key": full, "b_length": length}).scalars()
            return SessionData(
                session_id=session_id,
                metadata=bytes(metadata),
                messages=tuple(bytes(body) for body in bodies),
                created_at=float(created_at),
                expires_at=float(expires_at),
            )

        return await self.run("load_session", step, read=True)

    async def list_sessions(self, *, limit: int, cursor: str | None) -> SessionPage:
        sql = self._shared.statements
        clock = self._clock
        values = {"b_scope": self._prefix, "b_cursor": cursor or "", "b_limit": limit + 1}

        def step(conn: Connection) -> list[str]:
            return list(conn.execute(sql.sess_list, {**values, "b_now": clock.time()}).scalars())

        return page_of(await self.run("list_sessions", step, read=True), limit)

    async def delete_session(self, session_id: str) -> None:
        sql = self._shared.statements
        row = {"b_key": self._prefix + "sess:" + session_id}

        def step(conn: Connection) -> None:
            conn.execute(sql.msgs_delete, row)
            conn.execute(sql.sess_delete, row)

        await self.run("delete_session", step)

    async def sweep_sessions(self, now: float) -> int:
        sql = self._shared.statements
        delete_messages, delete_sessions = sql.sess_sweep

        def step(conn: Connection) -> int:
            conn.execute(delete_messages, {"b_now": now})
            return int(conn.execute(delete_sessions, {"b_now": now}).rowcount)

        return await self.run("sweep_sessions", step)

    # -- cache (through SQLCacheStore) ---------------------------------------------------------

    async def cache_get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The live value of each key, in order (None: absent or expired), in one query."""
        sql = self._shared.statements
        clock = self._clock
        prefix = self._prefix + "cache:"
        full = [prefix + key for key in keys]

        def step(conn: Connection) -> list[bytes | None]:
            query = {"b_keys": sorted(set(full)), "b_now": clock.time()}
            found = {key: bytes(value) for key, value in conn.execute(sql.cache_get, query)}
            return [found.get(key) for key in full]

        if not full:
            return []
        return await self.run("cache_get", step, read=True)

    async def cache_set_many(
        self, items: Sequence[tuple[str, bytes]], *, ttl: float | None
    ) -> None:
        """Store every ``(key, value)`` for ``ttl`` seconds (None: forever), in one transaction."""
        sql = self._shared.statements
        clock = self._clock
        prefix = self._prefix + "cache:"
        latest = {prefix + key: bytes(value) for key, value in items}  # the last of a key wins

        def step(conn: Connection) -> None:
            now = clock.time()
            expires = None if ttl is None else now + ttl
            rows = [
                {"b_key": key, "b_value": value, "b_expires": expires}
                for key, value in sorted(latest.items())  # key order: no deadlock between writers
            ]
            conn.execute(sql.cache_set, rows)
            self._maybe_sweep(conn, now)

        if latest:
            await self.run("cache_set", step)

    async def cache_delete(self, key: str) -> None:
        """Forget ``key`` (harmless when absent)."""
        sql = self._shared.statements
        row = {"b_key": self._prefix + "cache:" + key}

        def step(conn: Connection) -> None:
            conn.execute(sql.cache_delete, row)

        await self.run("cache_delete", step)

    # -- approvals -----------------------------------------------------------------------------

    def _approval_key(self, approval_id: str) -> str:
        return self._prefix + "apr:" + approval_id

    async def create_approval(
        self, request: ApprovalRequest, *, ttl: float, keep_for: float
    ) -> tuple[Approval, bool]:
        sql = self._shared.statements
        clock = self._clock
        values = {
            "b_key": self._approval_key(request.approval_id),
            "b_scope": self._prefix,
            "b_id": request.approval_id,
            "b_run": request.run_id,
            "b_agent": request.agent_name,
            "b_tool": request.tool_name,
            "b_arguments": encode_arguments(request.tool_arguments),
            "b_hash": request.call_hash,
            "b_risk": request.risk_level,
            "b_description": request.description,
            "b_session": request.session_id,
        }

        def step(conn: Connection) -> tuple[Approval, bool]:
            now = clock.time()
            row = {**values, "b_now": now, "b_expires": now + ttl, "b_purge": now + ttl + keep_for}
            conn.execute(sql.apr_purge, row)
            created = conn.execute(sql.apr_insert, row).first() is not None
            stored = conn.execute(sql.apr_get, row).one()
            self._maybe_sweep(conn, now)
            return _approval_of_row(stored, now), created

        return await self.run("create_approval", step)

    async def get_approval(self, approval_id: str) -> Approval | None:
        sql = self._shared.statements
        clock = self._clock
        key = self._approval_key(approval_id)

        def step(conn: Connection) -> Approval | None:
            now = clock.time()
            row = conn.execute(sql.apr_get, {"b_key": key, "b_now": now}).first()
            return None if row is None else _approval_of_row(row, now)

        return await self.run("get_approval", step, read=True)

    async def list_approvals(
        self, *, status: ApprovalStatus | None, limit: int, cursor: str | None
    ) -> ApprovalPage:
        sql = self._shared.statements
        clock = self._clock
        values = {
            "b_scope": self._prefix,
            "b_cursor": cursor or "",
            "b_status": status or "",
            "b_limit": limit + 1,
        }

        def step(conn: Connection) -> list[Approval]:
            now = clock.time()
            rows = conn.execute(sql.apr_list, {**values, "b_now": now}).all()
            return [_approval_of_row(row, now) for row in rows]

        return approval_page(await self.run("list_approvals", step, read=True), limit)

    async def decide_approval(
        self, approval_id: str, *, approved: bool, by: str, reason: str
    ) -> tuple[Approval | None, bool]:
        sql = self._shared.statements
        clock = self._clock
        key = self._approval_key(approval_id)
        values = {
            "b_key": key,
            "b_status": "approved" if approved else "rejected",
            "b_by": by,
            "b_reason": reason,
        }

        def step(conn: Connection) -> tuple[Approval | None, bool]:
            now = clock.time()
            row = conn.execute(sql.apr_decide, {**values, "b_now": now}).first()
            if row is not None:
                self._announce(conn, key)
                return _approval_of_row(row, now), True
            current = conn.execute(sql.apr_get, {"b_key": key, "b_now": now}).first()
            return (None if current is None else _approval_of_row(current, now)), False

        outcome = await self.run("decide_approval", step)
        if outcome[1]:
            self._shared.notifier.notify(notice(key))  # this process's waiters, at once
        return outcome

    def approval_wakeups(self, approval_id: str) -> AbstractAsyncContextManager[Wakeup]:
        return self._wakeups(self._approval_key(approval_id))

    def _announce(self, conn: Connection, key: str) -> None:
        """Tell other processes' waiters that ``key`` changed (PostgreSQL; sent at commit)."""
        if self._backend == "postgresql":
            row = {"b_channel": CHANGE_CHANNEL, "b_notice": notice(key)}
            conn.execute(self._shared.statements.notify, row)

    def _wakeups(self, key: str) -> AbstractAsyncContextManager[Wakeup]:
        listener = self._shared.listener
        if listener is None:  # SQLite: this process hears its own changes; others poll
            return self._shared.notifier.watch(notice(key))
        return listener.watch(notice(key))


def notice(key: str) -> str:
    """The fixed-size name a change of ``key`` is announced under.

    A NOTIFY payload must stay under 8000 bytes, and keys (a scope path, an
    idempotency key) may not; a digest always fits and names the key as well.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _approval_of_row(row: Any, now: float) -> Approval:
    """The approval a row of ``Statements.apr_columns`` holds, as it reads at ``now``."""
    (
        approval_id,
        run_id,
        agent_name,
        tool_name,
        arguments,
        fingerprint,
        risk_level,
        description,
        session_id,
        status,
        created_at,
        expires_at,
        decided_at,
        decided_by,
        reason,
    ) = row
    approval = Approval(
        approval_id=approval_id,
        run_id=run_id,
        agent_name=agent_name,
        tool_name=tool_name,
        tool_arguments=json.loads(arguments),
        risk_level=risk_level,
        description=description,
        session_id=session_id,
        call_hash=fingerprint,
        status=status,
        created_at=float(created_at),
        expires_at=float(expires_at),
        decided_at=None if decided_at is None else float(decided_at),
        decided_by=decided_by,
        reason=reason,
    )
    return as_of(approval, now)


def _idempotency_record(row: Any) -> tuple[str, float, StoredResponse | None]:
    """``(fingerprint, expires_at, response)`` of a stored idempotency row."""
    fingerprint, expires_at, status, headers, body = row
    response = None
    if status is not None:
        response = StoredResponse(
            status=int(status), body=bytes(body or b""), headers=decode_headers(headers or "[]")
        )
    return str(fingerprint), float(expires_at), response


def _decide(
    spec: WindowSpec, stored: dict[str, Any], costs: Sequence[float], now: float
) -> tuple[WindowDecision, str, float]:
    """Run the shared per-key rule on a stored state; the decision, new state and its expiry."""
    width = len(spec.limits)
    if spec.algorithm == "fixed":
        count = WindowCount(width, stored.get("w", -(2**62)), stored.get("s", ()))
        verdict = decide_fixed(count, spec.limits, spec.window, costs, now)
        state = {"t": now, "w": count.index, "s": count.sums}
        expires_at = (count.index + 1) * spec.window
    else:
        log = KeyLog.of(width, [(entry[0], entry[1:]) for entry in stored.get("e", ())])
        verdict = decide_in(log, spec.limits, spec.window, costs, now)
        state = {"t": now, "e": [[expires, *entry] for expires, entry in log.entries]}
        expires_at = log.entries[-1][0] if log.entries else now
    return verdict, json.dumps(state, separators=(",", ":")), expires_at


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _plain_identifier(schema: object) -> str:
    """``schema`` if it can go into ``search_path`` as it is: nothing there to quote or inject."""
    if not isinstance(schema, str) or _IDENTIFIER.fullmatch(schema) is None:
        invalid(
            "SQLStore.schema",
            "a plain PostgreSQL identifier (ASCII letters, digits and underscores, not "
            "starting with a digit, at most 63 characters), e.g. 'bastion'",
            schema,
        )
    return schema


def _serialize_sqlite(engine: sa.Engine, timeout: float) -> None:
    """Make every SQLite transaction that writes take the write lock up front.

    Python's sqlite3 would start a *deferred* transaction that only asks for
    the write lock at its first write; two processes that both read first then
    deadlock on the upgrade, and one fails at once instead of waiting. Taking
    the lock at ``BEGIN`` (``BEGIN IMMEDIATE``) makes them queue (up to
    ``timeout``) instead. A step run with ``read=True`` writes nothing, so it
    cannot take part in that deadlock and begins deferred.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        _wal(cursor, timeout)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A read-only step begins deferred: in WAL mode it reads a snapshot and never
        # waits for, or holds up, a writer.
        read = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def _wal(cursor: Any, timeout: float) -> None:
    """Put the file in WAL mode, waiting up to ``timeout`` for other connections to let it.

    Switching a fresh file to WAL needs it to itself, and SQLite answers
    "database is locked" at once rather than through the busy handler: several
    processes opening a new file together (a gateway's workers at first start)
    would each fail their first operation. So this waits, briefly and bounded,
    in the store's own thread.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _run_migrations(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade(url: str, *, schema: str | None = None, timeout: float = 30.0) -> None:
    """Bring the database at ``url`` up to the newest schema (what ``bastion db upgrade`` runs).

    Idempotent and safe to run from several processes at once (PostgreSQL
    serialises migrators with an advisory lock, SQLite with its write lock).
    ``schema`` (PostgreSQL) must already exist.
    """
    store = SQLStore(url, schema=schema, timeout=timeout, auto_upgrade=False)
    try:
        await store.upgrade()
    finally:
        await store.aclose()
