"""The audit log is append-only and hash-chained on every backend: tampering shows in verify().

Parametrised over SQLite, PostgreSQL (a real server, this run's schema) and
the JSON-lines file sink. Tampering goes around the log -- SQL statements on
the table, byte edits on the file -- as an intruder would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bastion._core.errors import ConfigurationError
from bastion.stores._audit import AuditEntry, AuditLog, AuditRecord, hash_prompt, record_hash
from bastion.stores._audit_file import JSONLinesAuditLog
from bastion.stores._audit_sql import SQLAuditLog
from bastion.stores._keys import scope_path
from bastion.testing import FakeClock

from .conftest import POSTGRES_URL

AUDIT_BACKENDS = ["sqlite", "postgresql", "jsonl"]


@dataclass
class Subject:
    """A log under test and the intruder's tools for its backend."""

    log: Any
    backend: str
    store: Any = None
    path: Path | None = None

    async def sql(self, statement: str, **params: Any) -> None:
        chain = scope_path(self.store.scope)
        await self.store.run(
            "tamper", lambda conn: conn.execute(sa.text(statement), {"chain": chain, **params})
        )

    def lines(self) -> list[dict[str, Any]]:
        assert self.path is not None
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def write(self, lines: list[dict[str, Any]]) -> None:
        assert self.path is not None
        self.path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    async def edit_status(self, seq: int, status: int) -> None:
        if self.path is None:
            await self.sql(
                "UPDATE bastion_audit_log SET status = :status WHERE chain = :chain AND seq = :seq",
                status=status,
                seq=seq,
            )
        else:
            self.write(
                [{**ln, "status": status} if ln["seq"] == seq else ln for ln in self.lines()]
            )

    async def delete(self, seq: int) -> None:
        if self.path is None:
            await self.sql(
                "DELETE FROM bastion_audit_log WHERE chain = :chain AND seq = :seq", seq=seq
            )
        else:
            self.write([line for line in self.lines() if line["seq"] != seq])

    async def insert_forged(self, seq: int, prev_hash: str, hash_: str) -> None:
        entry = AuditEntry(id="forged", timestamp=5.0, status=200, user_id="mallory")
        if self.path is None:
            await self.sql(
                "INSERT INTO bastion_audit_log (chain, seq, id, timestamp, status, user_id, "
                "tools_called, prev_hash, hash) VALUES (:chain, :seq, 'forged', 5.0, 200, "
                "'mallory', '[]', :prev, :hash)",
                seq=seq,
                prev=prev_hash,
                hash=hash_,
            )
        else:
            line = {**entry.to_json(), "seq": seq, "prev_hash": prev_hash, "hash": hash_}
            self.write([*self.lines(), line])


@pytest.fixture(params=AUDIT_BACKENDS, ids=AUDIT_BACKENDS)
def audit_backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Each backend in turn, with this run's PostgreSQL schema when it needs one."""
    backend: str = request.param
    request.applymarker(getattr(pytest.mark, "sqlite" if backend == "jsonl" else backend))
    schema = request.getfixturevalue("postgres_schema") if backend == "postgresql" else None
    return backend, schema


@pytest.fixture
async def subject(
    audit_backend: tuple[str, str | None], tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Subject]:
    backend, schema = audit_backend
    if backend == "jsonl":
        path = tmp_path / "audit.jsonl"
        yield Subject(JSONLinesAuditLog(path, clock=clock), backend, path=path)
        return
    from bastion.stores._sql import SQLStore

    if backend == "sqlite":
        root = SQLStore(f"sqlite:///{tmp_path / 'audit.db'}", timeout=5.0)
    else:
        root = SQLStore(POSTGRES_URL, schema=schema, timeout=5.0)
    store = root.scoped(f"test-{uuid.uuid4().hex[:8]}")
    try:
        yield Subject(SQLAuditLog(store, clock=clock), backend, store=store)
    finally:
        await root.aclose()


def entry(n: int, **fields: Any) -> AuditEntry:
    base: dict[str, Any] = {
        "timestamp": 1000.0 + n,
        "method": "POST",
        "path": "/v1/chat",
        "status": 200,
        "agent_name": "support",
        "session_id": f"s{n}",
        "user_id": "ann",
        "tenant_id": "acme",
        "prompt_hash": hash_prompt(f"prompt {n}"),
        "tools_called": ("search", "lookup"),
        "finish_reason": "stop",
        "duration_ms": 12.5,
        "cost_usd": Decimal("0.000123"),
        "idempotency_key": f"k{n}",
        "idempotency_hit": False,
    }
    return AuditEntry(**{**base, **fields})


async def fill(log: Any, n: int) -> list[AuditRecord]:
    return [await log.append(entry(i)) for i in range(1, n + 1)]


async def test_an_untouched_log_verifies(subject: Subject) -> None:
    assert isinstance(subject.log, AuditLog)
    records = await fill(subject.log, 5)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    report = await subject.log.verify()
    assert report.ok
    assert report.checked == 5


async def test_records_round_trip_every_field(subject: Subject, clock: FakeClock) -> None:
    written = await subject.log.append(entry(1))
    stamped = await subject.log.append(AuditEntry(method="GET"))
    page = await subject.log.query()
    assert page.records == (written, stamped)
    assert written.entry == replace(entry(1), id=written.entry.id)
    assert stamped.entry.timestamp == clock.time()
    assert len(stamped.entry.id) == 32


async def test_an_edited_row_is_found(subject: Subject) -> None:
    await fill(subject.log, 5)
    await subject.edit_status(3, 500)
    report = await subject.log.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(3, "edited")]


async def test_an_edit_with_a_recomputed_hash_is_found(subject: Subject) -> None:
    records = await fill(subject.log, 4)
    forged = replace(records[1].entry, status=500)
    new_hash = record_hash(2, forged, records[0].hash, None)
    await subject.edit_status(2, 500)
    if subject.path is None:
        await subject.sql(
            "UPDATE bastion_audit_log SET hash = :hash WHERE chain = :chain AND seq = 2",
            hash=new_hash,
        )
    else:
        subject.write(
            [{**ln, "hash": new_hash} if ln["seq"] == 2 else ln for ln in subject.lines()]
        )
    report = await subject.log.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(2, "edited")]


async def test_a_deleted_row_is_found(subject: Subject) -> None:
    await fill(subject.log, 5)
    await subject.delete(2)
    report = await subject.log.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(2, "deleted")]


async def test_a_forged_row_is_found(subject: Subject) -> None:
    records = await fill(subject.log, 3)
    await subject.insert_forged(4, records[-1].hash, "f" * 64)
    report = await subject.log.verify()
    assert report.problems
    assert {p.seq for p in report.problems} == {4}
    assert {p.kind for p in report.problems} <= {"edited", "inserted"}


async def test_a_forged_row_with_a_valid_hash_is_past_the_head(subject: Subject) -> None:
    records = await fill(subject.log, 3)
    forged = AuditEntry(id="forged", timestamp=5.0, status=200, user_id="mallory")
    await subject.insert_forged(4, records[-1].hash, record_hash(4, forged, records[-1].hash, None))
    report = await subject.log.verify()
    if subject.path is None:
        assert [(p.seq, p.kind) for p in report.problems] == [(4, "inserted")]
    else:  # a file's head is its last line: only a secret stops this (the next test)
        assert report.ok


async def test_with_a_secret_no_one_else_can_write_a_valid_record(
    subject: Subject, tmp_path: Path
) -> None:
    if subject.path is not None:
        log: Any = JSONLinesAuditLog(tmp_path / "keyed.jsonl", secret=b"k")
        subject = Subject(log, "jsonl", path=tmp_path / "keyed.jsonl")
    else:
        log = SQLAuditLog(subject.store, secret=b"k")
        subject.log = log
    records = await fill(log, 2)
    forged = AuditEntry(id="forged", timestamp=5.0, status=200, user_id="mallory")
    await subject.insert_forged(3, records[-1].hash, record_hash(3, forged, records[-1].hash, None))
    report = await log.verify()
    assert (3, "edited") in [(p.seq, p.kind) for p in report.problems]


async def test_fifty_concurrent_appends_form_one_chain(subject: Subject) -> None:
    records = await asyncio.gather(*(subject.log.append(entry(i)) for i in range(50)))
    assert sorted(r.seq for r in records) == list(range(1, 51))
    report = await subject.log.verify()
    assert report.ok
    assert report.checked == 50


async def test_queries_filter_and_paginate(subject: Subject) -> None:
    for i in range(12):
        await subject.log.append(
            entry(
                i,
                agent_name="a" if i % 2 else "b",
                user_id=f"u{i % 3}",
                tenant_id="t1" if i < 6 else "t2",
                status=500 if i % 4 == 0 else 200,
            )
        )
    page = await subject.log.query(agent_name="a", limit=4)
    assert [r.entry.session_id for r in page.records] == ["s1", "s3", "s5", "s7"]
    rest = await subject.log.query(agent_name="a", limit=4, cursor=page.cursor)
    assert [r.entry.session_id for r in rest.records] == ["s9", "s11"]
    assert rest.cursor is None
    await subject.log.append(entry(99, agent_name="a"))  # a new entry does not shift pages
    again = await subject.log.query(agent_name="a", limit=4, cursor=page.cursor)
    assert [r.entry.session_id for r in again.records][:2] == ["s9", "s11"]
    assert len((await subject.log.query(user_id="u0", tenant_id="t2")).records) == 2
    assert len((await subject.log.query(status=500)).records) == 3
    window = await subject.log.query(since=1003.0, until=1006.0)
    assert [r.entry.session_id for r in window.records] == ["s3", "s4", "s5"]


async def test_a_bad_cursor_is_refused(subject: Subject) -> None:
    with pytest.raises(ConfigurationError, match="cursor"):
        await subject.log.query(cursor="not-a-cursor")


def test_prompts_are_hashed_never_kept() -> None:
    digest = hash_prompt("my secret prompt")
    assert len(digest) == 64
    assert "secret" not in json.dumps(AuditEntry(prompt_hash=digest).to_json())
