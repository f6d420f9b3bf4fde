"""The audit log as a JSON-lines file: one record per line, appended, never rewritten.

For a deployment without a database, or as a second copy shipped to a log
collector. Every append takes an exclusive ``flock`` on the file, reads the
last record (another process may have appended since), writes the next line
and -- with ``fsync=True``, the default -- ``fsync``\\ s it before returning, so
an acknowledged entry survives a power cut. ``fsync=False`` only flushes to
the operating system: much faster, and an entry can be lost if the machine
(not just the process) dies within a few seconds of writing it.

File I/O runs in a worker thread, so the event loop never blocks on a disk.

A file has no separate head: :meth:`JSONLinesAuditLog.verify` detects edited
and deleted records anywhere but the end, and forged records whose hash does
not match (use ``secret`` so nobody else can forge one). Removing the last
lines leaves a shorter chain that is still whole -- anchor the head
elsewhere (``report.checked`` and the last hash) if that matters.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import uuid
from pathlib import Path

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.validate import whole_number
from bastion.stores._audit import (
    GENESIS,
    AuditEntry,
    AuditPage,
    AuditQuery,
    AuditRecord,
    AuditReport,
    cursor_seq,
    page_of,
    record_hash,
    verify_chain,
)

__all__ = ["JSONLinesAuditLog"]

_TAIL = 65536


def _line(record: AuditRecord) -> bytes:
    data = record.entry.to_json()
    data.update(seq=record.seq, prev_hash=record.prev_hash, hash=record.hash)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _parse(line: bytes) -> AuditRecord:
    data = json.loads(line)
    return AuditRecord(
        seq=int(data["seq"]),
        entry=AuditEntry.from_json(data),
        prev_hash=str(data["prev_hash"]),
        hash=str(data["hash"]),
    )


def _last_record(fd: int) -> tuple[int, str]:
    """``(seq, hash)`` of the file's last line, or the start of a chain when it is empty."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS
    start = max(size - _TAIL, 0)
    tail = os.pread(fd, size - start, start).rstrip(b"\n")
    last = _parse(tail.rsplit(b"\n", 1)[-1])
    return last.seq, last.hash


class JSONLinesAuditLog:
    """A hash-chained audit log appended to the file at ``path`` (created when missing)."""

    __slots__ = ("_clock", "_fsync", "_lock", "_path", "_secret")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        secret: bytes | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._path = Path(path)
        self._fsync = bool(fsync)
        self._secret = secret
        self._clock = clock
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._path

    async def append(self, entry: AuditEntry) -> AuditRecord:
        if not entry.id or entry.timestamp is None:
            stamp = entry.timestamp if entry.timestamp is not None else self._clock.time()
            data = {**entry.to_json(), "id": entry.id or uuid.uuid4().hex, "timestamp": stamp}
            entry = AuditEntry.from_json(data)
        async with self._lock:
            return await asyncio.to_thread(self._append, entry)

    def _append(self, entry: AuditEntry) -> AuditRecord:
        fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last_seq, last_hash = _last_record(fd)
            seq = last_seq + 1
            record = AuditRecord(
                seq=seq,
                entry=entry,
                prev_hash=last_hash,
                hash=record_hash(seq, entry, last_hash, self._secret),
            )
            os.write(fd, _line(record) + b"\n")
            if self._fsync:
                os.fsync(fd)
            return record
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> list[AuditRecord]:
        try:
            with self._path.open("rb") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_SH)
                return [_parse(line) for line in file if line.strip()]
        except FileNotFoundError:
            return []

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
        filters = AuditQuery(
            agent_name=agent_name,
            user_id=user_id,
            tenant_id=tenant_id,
            status=status,
            since=since,
            until=until,
        )
        records = await asyncio.to_thread(self._read)
        matching: list[AuditRecord] = []
        for record in records:
            if record.seq > after and filters.matches(record.entry):
                matching.append(record)
                if len(matching) > limit:
                    break
        return page_of(matching, limit)

    async def verify(self) -> AuditReport:
        records = await asyncio.to_thread(self._read)
        records.sort(key=lambda record: record.seq)
        head = (records[-1].seq, records[-1].hash) if records else (0, GENESIS)
        return verify_chain(records, head, self._secret)
