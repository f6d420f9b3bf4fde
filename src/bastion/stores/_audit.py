"""The audit log: append-only entries, hash-chained so that tampering shows.

Each entry is stored as a *record* with a sequence number (1, 2, 3, ... per
log), the hash of the record before it, and its own hash over a canonical
serialisation (sorted-key JSON of every field, the sequence number and the
previous hash). Changing a field breaks the record's hash; deleting a record
leaves a gap in the sequence and a link that points nowhere; a forged record
either has a hash that does not match or sits past the log's *head* (the
sequence number and hash of the last append, which the backends keep apart
from the records). :func:`verify_chain` is that check, written once for
every backend.

A chain of plain SHA-256 hashes proves the log was not changed *by someone
who cannot recompute the hashes*. Whoever can write the database can also
rewrite every hash after an edit; give the log a ``secret`` and the hashes
become HMAC-SHA256 under it, so only holders of the secret can produce valid
records.

Prompts never enter the log: ``prompt_hash`` holds :func:`hash_prompt` of one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from bastion._core.validate import invalid

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditLog",
    "AuditPage",
    "AuditProblem",
    "AuditQuery",
    "AuditRecord",
    "AuditReport",
    "hash_prompt",
    "record_hash",
    "verify_chain",
]

GENESIS = "0" * 64
"""The previous hash of a log's first record."""


def hash_prompt(prompt: str) -> str:
    """SHA-256 (hex) of a prompt: what the log keeps instead of the prompt itself."""
    return hashlib.sha256(prompt.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One audited request. ``id`` and ``timestamp`` are filled in by ``append`` when empty."""

    id: str = ""
    timestamp: float | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    agent_name: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    tenant_id: str | None = None
    prompt_hash: str | None = None
    tools_called: tuple[str, ...] = ()
    finish_reason: str | None = None
    duration_ms: float | None = None
    cost_usd: Decimal | None = None
    idempotency_key: str | None = None
    idempotency_hit: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as plain JSON values (money as an exact decimal string)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["tools_called"] = list(self.tools_called)
        data["cost_usd"] = None if self.cost_usd is None else str(self.cost_usd)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditEntry:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        values["id"] = str(values["id"] or "")
        values["tools_called"] = tuple(values["tools_called"] or ())
        cost = values["cost_usd"]
        values["cost_usd"] = None if cost is None else Decimal(str(cost))
        return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """An entry as the log holds it: its place in the chain and the hashes that seal it."""

    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str


def canonical(seq: int, entry: AuditEntry, prev_hash: str) -> bytes:
    """The bytes a record's hash is taken over: sorted-key JSON, no spaces."""
    data = entry.to_json()
    data["seq"] = seq
    data["prev_hash"] = prev_hash
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(seq: int, entry: AuditEntry, prev_hash: str, secret: bytes | None) -> str:
    """SHA-256 of the canonical record, or HMAC-SHA256 under ``secret`` when one is given."""
    data = canonical(seq, entry, prev_hash)
    if secret is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """Filters of :meth:`AuditLog.query`; ``since`` is inclusive, ``until`` exclusive."""

    agent_name: str | None = None
    user_id: str | None = None
    tenant_id: str | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, entry: AuditEntry) -> bool:
        stamp = entry.timestamp if entry.timestamp is not None else 0.0
        return (
            (self.agent_name is None or entry.agent_name == self.agent_name)
            and (self.user_id is None or entry.user_id == self.user_id)
            and (self.tenant_id is None or entry.tenant_id == self.tenant_id)
            and (self.status is None or entry.status == self.status)
            and (self.since is None or stamp >= self.since)
            and (self.until is None or stamp < self.until)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditPage:
    """One page of a query, oldest first; pass ``cursor`` back for the next (None: no more)."""

    records: tuple[AuditRecord, ...]
    cursor: str | None


ProblemKind = Literal["edited", "deleted", "inserted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditProblem:
    """One thing :func:`verify_chain` found: which record (by ``seq``), what, and why."""

    seq: int
    kind: ProblemKind
    detail: str
    entry_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """The verdict of ``verify()``: ``ok`` when the chain is whole, else every problem found."""

    checked: int
    problems: tuple[AuditProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(
    records: Iterable[AuditRecord], head: tuple[int, str], secret: bytes | None
) -> AuditReport:
    """Check ``records`` (in ``seq`` order) against their hashes, each other and the ``head``.

    - ``edited``: a record's fields do not match its hash, or its hash was
      recomputed after an edit (the next record -- or the head -- still links
      to the old one);
    - ``deleted``: a gap in the sequence, or fewer records than the head says;
    - ``inserted``: a second record with the same ``seq``, or a record past the head.
    """
    problems: list[AuditProblem] = []
    prev_seq, prev_hash = 0, GENESIS
    prev: AuditRecord | None = None
    flagged: set[int] = set()
    checked = 0

    def report(seq: int, kind: ProblemKind, detail: str, entry_id: str | None = None) -> None:
        flagged.add(seq)
        problems.append(AuditProblem(seq=seq, kind=kind, detail=detail, entry_id=entry_id))

    head_seq, head_hash = head
    for record in records:
        checked += 1
        entry_id = record.entry.id
        if prev is not None and record.seq == prev.seq:
            report(record.seq, "inserted", "a second record with this sequence number", entry_id)
            continue
        if record.seq > head_seq:
            report(record.seq, "inserted", f"past the log's head (seq {head_seq})", entry_id)
        gap = record.seq > prev_seq + 1
        if gap:
            report(prev_seq + 1, "deleted", f"records {prev_seq + 1}..{record.seq - 1} are missing")
        if record_hash(record.seq, record.entry, record.prev_hash, secret) != record.hash:
            report(record.seq, "edited", "its fields do not match its hash", entry_id)
        elif not gap and record.prev_hash != prev_hash and prev is not None:
            if prev.seq not in flagged:
                report(prev.seq, "edited", "rewritten: the next record links to another hash")
        elif not gap and record.prev_hash != prev_hash:
            report(record.seq, "edited", "its link to the start of the log was changed", entry_id)
        prev, prev_seq, prev_hash = record, record.seq, record.hash
    if head_seq > prev_seq:
        report(prev_seq + 1, "deleted", f"records {prev_seq + 1}..{head_seq} are missing")
    elif head_seq == prev_seq and head_hash != prev_hash and prev_seq not in flagged:
        report(prev_seq, "edited", "rewritten: the head links to another hash")
    return AuditReport(checked=checked, problems=tuple(problems))


def page_of(records: Sequence[AuditRecord], limit: int) -> AuditPage:
    """A page from up to ``limit + 1`` matching records (the extra one says there are more)."""
    if len(records) > limit:
        kept = tuple(records[:limit])
        return AuditPage(records=kept, cursor=str(kept[-1].seq))
    return AuditPage(records=tuple(records), cursor=None)


def cursor_seq(cursor: str | None) -> int:
    """The sequence number a cursor continues after (0: from the start)."""
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not cursor.isdigit():
        invalid("AuditLog.query(cursor)", "None or the cursor of a page this log returned", cursor)
    return int(cursor)


@runtime_checkable
class AuditLog(Protocol):
    """An append-only, hash-chained log of audited requests."""

    async def append(self, entry: AuditEntry) -> AuditRecord:
        """Add ``entry`` at the end of the chain (concurrent appends still form one chain)."""
        ...

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
        """Matching records, oldest first, at most ``limit``; a stable ``cursor`` for the rest."""
        ...

    async def verify(self) -> AuditReport:
        """Walk the whole chain and report every edited, deleted or inserted record."""
        ...
