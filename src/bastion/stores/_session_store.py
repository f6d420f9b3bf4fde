"""The session concern of a store: a conversation's messages, kept while it is in use.

A session lives ``ttl`` seconds after its latest write: creating it and every
append push its expiry out, so an active conversation never expires under a
user and an abandoned one cleans itself up. Appending is the one
read-check-write (is the session still live? then add at the end and refresh
its expiry), so every backend does it in one atomic step (a lock, one locking
update, a Lua script) -- concurrent appends all land, in some order, and none
is lost.

An expired session counts as absent everywhere (load, list, append) even
before anything deletes it. Deleting is :meth:`SessionStore.sweep_sessions`'
job on the memory and SQL stores (a session and every message it owns);
Redis expires both keys of a session itself, so its sweep has nothing to do.
Time is the store's: its clock for the memory and SQL stores, the server's
(or the test clock given) for Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bastion._core.errors import BastionError

__all__ = ["SessionData", "SessionNotFound", "SessionPage", "SessionStore"]


class SessionNotFound(BastionError):
    """The session does not exist, or has expired: create it (again) before appending."""

    http_status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id!r} does not exist or has expired; create it before appending"
        )
        self.session_id = session_id


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionData:
    """A live session: its opaque metadata and messages (oldest first), in store time."""

    session_id: str
    metadata: bytes
    messages: tuple[bytes, ...]
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPage:
    """Live session ids in order; pass ``next_cursor`` back for the next page (None: done)."""

    session_ids: tuple[str, ...]
    next_cursor: str | None


def page_of(ids: list[str], limit: int) -> SessionPage:
    """The page for ``ids`` (sorted, up to ``limit + 1`` of them: one more means more follow)."""
    if len(ids) > limit:
        return SessionPage(session_ids=tuple(ids[:limit]), next_cursor=ids[limit - 1])
    return SessionPage(session_ids=tuple(ids), next_cursor=None)


@runtime_checkable
class SessionStore(Protocol):
    """A store that keeps conversations for a while after their latest write."""

    @property
    def backend(self) -> str:
        """The backend's name, for errors and logs."""
        ...

    async def create_session(self, session_id: str, *, ttl: float, metadata: bytes) -> None:
        """Start ``session_id`` with no messages, replacing any session of that id."""
        ...

    async def append_messages(self, session_id: str, messages: list[bytes]) -> int:
        """Add ``messages`` at the end and refresh the expiry; the new number of messages.

        Raises :class:`SessionNotFound` when the session is missing or expired.
        """
        ...

    async def load_session(self, session_id: str) -> SessionData | None:
        """The live session ``session_id``, or None."""
        ...

    async def list_sessions(self, *, limit: int, cursor: str | None) -> SessionPage:
        """Up to ``limit`` live session ids after ``cursor``, ordered by id."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Forget ``session_id`` and its messages (harmless when there is none)."""
        ...

    async def sweep_sessions(self, now: float) -> int:
        """Delete sessions expired by ``now`` and their messages; how many sessions went."""
        ...
