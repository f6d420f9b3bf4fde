"""The audit log on the SQL store (SQLite or PostgreSQL): one chain per scope.

Appends must form *one* chain however many processes append at once, so each
append is one transaction that locks the chain's head row (``SELECT ... FOR
UPDATE`` on PostgreSQL; on SQLite every transaction already holds the write
lock from ``BEGIN IMMEDIATE``), reads the last sequence number and hash,
inserts the next record and moves the head -- two appends can never both
see the same head.

The head row lives in its own table, so deleting the last records or adding
a forged one at the end also shows in :meth:`SQLAuditLog.verify`.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.validate import whole_number
from bastion.stores._audit import (
    GENESIS,
    AuditEntry,
    AuditPage,
    AuditRecord,
    AuditReport,
    cursor_seq,
    page_of,
    record_hash,
    verify_chain,
)
from bastion.stores._keys import scope_path
from bastion.stores._sql_schema import audit_heads, audit_log

if TYPE_CHECKING:
    from bastion.stores._sql import SQLStore

__all__ = ["SQLAuditLog"]

_ENTRY_COLUMNS = (
    "id",
    "timestamp",
    "method",
    "path",
    "status",
    "agent_name",
    "session_id",
    "user_id",
    "tenant_id",
    "prompt_hash",
    "tools_called",
    "finish_reason",
    "duration_ms",
    "cost_usd",
    "idempotency_key",
    "idempotency_hit",
)


def _record_of(row: Any) -> AuditRecord:
    data = {name: getattr(row, name) for name in _ENTRY_COLUMNS}
    data["tools_called"] = json.loads(data["tools_called"])
    if data["idempotency_hit"] is not None:
        data["idempotency_hit"] = bool(data["idempotency_hit"])
    entry = AuditEntry.from_json(data)
    return AuditRecord(seq=int(row.seq), entry=entry, prev_hash=row.prev_hash, hash=row.hash)


class SQLAuditLog:
    """A hash-chained audit log in ``store``'s database (table ``bastion_audit_log``).

    Each scope of the store (``store.scoped("tenant-a")``) keeps a chain of
    its own. ``secret`` makes the hashes HMAC-SHA256 under it (see
    :mod:`bastion.stores._audit`); ``clock`` stamps entries without a timestamp.
    """

    __slots__ = ("_chain", "_clock", "_head_create", "_secret", "_store")

    def __init__(
        self, store: SQLStore, *, secret: bytes | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._store = store
        self._secret = secret
        self._clock = clock
        self._chain = scope_path(store.scope)
        upsert: Any
        if store.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        self._head_create = (
            upsert(audit_heads)
            .values(chain=sa.bindparam("b_chain"), seq=0, hash=GENESIS)
            .on_conflict_do_nothing()
        )

    async def append(self, entry: AuditEntry) -> AuditRecord:
        if not entry.id or entry.timestamp is None:
            entry = AuditEntry.from_json(
                {
                    **entry.to_json(),
                    "id": entry.id or uuid.uuid4().hex,
                    "timestamp": (
                        entry.timestamp if entry.timestamp is not None else self._clock.time()
                    ),
                }
            )
        chain, secret = self._chain, self._secret
        head_create = self._head_create

        def step(conn: Connection) -> AuditRecord:
            conn.execute(head_create, {"b_chain": chain})
            last_seq, last_hash = conn.execute(
                sa.select(audit_heads.c.seq, audit_heads.c.hash)
                .where(audit_heads.c.chain == chain)
                .with_for_update()
            ).one()
            seq = int(last_seq) + 1
            record = AuditRecord(
                seq=seq,
                entry=entry,
                prev_hash=last_hash,
                hash=record_hash(seq, entry, last_hash, secret),
            )
            row = entry.to_json()
            row["tools_called"] = json.dumps(row["tools_called"])
            row.update(chain=chain, seq=seq, prev_hash=record.prev_hash, hash=record.hash)
            conn.execute(sa.insert(audit_log), row)
            conn.execute(
                sa.update(audit_heads)
                .where(audit_heads.c.chain == chain)
                .values(seq=seq, hash=record.hash)
            )
            return record

        return await self._store.run("audit_append", step)

    async def query(
        self,
        *,
        agent_name: str | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        status: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> AuditPage:
        limit = whole_number(limit, "AuditLog.query(limit)")
        after = cursor_seq(cursor)
        c = audit_log.c
        where = [c.chain == self._chain, c.seq > after]
        for column, value in (
            (c.agent_name, agent_name),
            (c.user_id, user_id),
            (c.tenant_id, tenant_id),
            (c.status, status),
        ):
            if value is not None:
                where.append(column == value)
        if since is not None:
            where.append(c.timestamp >= since)
        if until is not None:
            where.append(c.timestamp < until)
        statement = sa.select(audit_log).where(*where).order_by(c.seq).limit(limit + 1)

        def step(conn: Connection) -> list[AuditRecord]:
            return [_record_of(row) for row in conn.execute(statement)]

        records = await self._store.run("audit_query", step, read=True)
        return page_of(records, limit)

    async def verify(self) -> AuditReport:
        chain = self._chain

        def step(conn: Connection) -> tuple[list[AuditRecord], tuple[int, str]]:
            rows = conn.execute(
                sa.select(audit_log).where(audit_log.c.chain == chain).order_by(audit_log.c.seq)
            )
            records = [_record_of(row) for row in rows]
            head = conn.execute(
                sa.select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.chain == chain)
            ).first()
            return records, (0, GENESIS) if head is None else (int(head.seq), str(head.hash))

        records, head = await self._store.run("audit_verify", step, read=True)
        return verify_chain(records, head, self._secret)
