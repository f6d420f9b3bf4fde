"""Sessions: a conversation's messages, kept while it is in use and swept once abandoned.

:class:`Sessions` keeps :class:`~bastion.models.Message` objects on any
:class:`~bastion.stores.SessionStore`, one JSON document per message, so a
conversation survives a restart and is shared by every process behind a load
balancer. A session lives ``ttl`` after its latest write (default one day):
each append pushes the expiry out, so only abandoned conversations expire,
and appending to one that has expired raises
:class:`~bastion.stores.SessionNotFound` rather than silently starting a
conversation without its history.

JSON rather than pickle for the same reason as checkpoints: a session outlives
the code that wrote it, and JSON cannot run code on load.

:class:`SessionSweeper` deletes expired sessions (and their messages) on a
schedule, on the stores that need it (memory, SQL; Redis expires keys itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.validate import (
    invalid,
    invalid_content,
    positive_number,
    text,
    whole_number,
)
from bastion.stores._session_store import SessionPage, SessionStore

if TYPE_CHECKING:
    from bastion.models._types import Message

__all__ = ["Conversation", "SessionSweeper", "Sessions"]

_log = logging.getLogger("bastion.stores")


@dataclass(frozen=True, slots=True, kw_only=True)
class Conversation:
    """A loaded session: its metadata, its messages (oldest first), and when it expires."""

    session_id: str
    metadata: dict[str, Any]
    messages: tuple[Message, ...]
    created_at: float
    expires_at: float
    expires_in: float


def _session_id(session_id: object, api: str) -> str:
    return text(session_id, f"{api}(session_id)")


def message_document(message: Message) -> dict[str, Any]:
    """``message`` as a JSON object (role, content, tool_calls, tool_call_id, name).

    The one shape a message takes at rest, in sessions and agent checkpoints alike.
    """
    return {
        "role": message.role,
        "content": message.content,
        "tool_calls": [
            {"id": call.id, "name": call.name, "arguments": call.arguments}
            for call in message.tool_calls
        ],
        "tool_call_id": message.tool_call_id,
        "name": message.name,
    }


def encode_message(message: Message) -> bytes:
    """``message`` as compact JSON bytes (see :func:`message_document`)."""
    document = message_document(message)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def decode_message(raw: bytes) -> Message:
    """The :class:`Message` :func:`encode_message` wrote."""
    from bastion.models._types import Message, ToolCall  # bastion.models imports the stores

    document = json.loads(raw)
    return Message(
        document["role"],
        document["content"],
        tuple(ToolCall(**call) for call in document["tool_calls"]),
        document["tool_call_id"],
        document["name"],
    )


class Sessions:
    """Create, extend, load, list and delete conversations on ``store``.

    ``ttl`` (default one day): how long a session lives after its latest
    write. ``clock`` is what ``load`` measures the time left on.
    """

    __slots__ = ("_clock", "_store", "_ttl")

    def __init__(
        self, store: SessionStore, *, ttl: float = 86_400.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if not isinstance(store, SessionStore):
            invalid("Sessions(store)", "a store with session support", store)
        self._store = store
        self._ttl = positive_number(ttl, "Sessions.ttl", unit="seconds")
        self._clock = clock

    async def create(self, session_id: str, *, metadata: dict[str, Any] | None = None) -> None:
        """Start ``session_id`` with no messages (replacing any session of that id)."""
        _session_id(session_id, "Sessions.create")
        if metadata is not None and not isinstance(metadata, dict):
            invalid_content("Sessions.create(metadata)", "a dict of JSON values or None", metadata)
        try:
            raw = json.dumps(metadata or {}, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            invalid_content("Sessions.create(metadata)", f"a dict of JSON values ({exc})", metadata)
        await self._store.create_session(session_id, ttl=self._ttl, metadata=raw)

    async def append(self, session_id: str, *messages: Message) -> int:
        """Add ``messages`` at the end; the session's new length. Raises SessionNotFound."""
        from bastion.models._types import Message  # bastion.models imports the stores

        _session_id(session_id, "Sessions.append")
        for message in messages:
            if not isinstance(message, Message):
                invalid_content(
                    "Sessions.append(messages)", "bastion.models.Message objects", message
                )
        raw = [encode_message(message) for message in messages]
        return await self._store.append_messages(session_id, raw)

    async def load(self, session_id: str) -> Conversation | None:
        """The live session ``session_id``, or None when there is none (or it expired)."""
        data = await self._store.load_session(_session_id(session_id, "Sessions.load"))
        if data is None:
            return None
        return Conversation(
            session_id=data.session_id,
            metadata=json.loads(data.metadata),
            messages=tuple(decode_message(raw) for raw in data.messages),
            created_at=data.created_at,
            expires_at=data.expires_at,
            expires_in=max(0.0, data.expires_at - self._clock.time()),
        )

    async def list(self, *, limit: int = 100, cursor: str | None = None) -> SessionPage:
        """A page of live session ids, ordered by id; pass ``next_cursor`` back for more."""
        limit = whole_number(limit, "Sessions.list(limit)")
        if cursor is not None and not isinstance(cursor, str):
            invalid("Sessions.list(cursor)", "a next_cursor from an earlier page, or None", cursor)
        return await self._store.list_sessions(limit=limit, cursor=cursor)

    async def delete(self, session_id: str) -> None:
        """Forget ``session_id`` and its messages (harmless when absent)."""
        await self._store.delete_session(_session_id(session_id, "Sessions.delete"))


class SessionSweeper:
    """Delete expired sessions from ``store`` every ``every`` seconds (default 60).

    A failed sweep is logged and the next one runs on time: a store that is
    briefly down must not stop the cleanup for good. ``start()`` runs it in
    the background, ``stop()`` ends it; ``run()`` is the loop itself.
    """

    __slots__ = ("_clock", "_every", "_store", "_task", "swept")

    def __init__(
        self, store: SessionStore, *, every: float = 60.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if not isinstance(store, SessionStore):
            invalid("SessionSweeper(store)", "a store with session support", store)
        self._store = store
        self._every = positive_number(every, "SessionSweeper.every", unit="seconds")
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.swept = 0
        """Sessions deleted so far."""

    async def sweep(self) -> int:
        """One sweep now; how many sessions it deleted (0 when the store failed, logged)."""
        try:
            swept = await self._store.sweep_sessions(self._clock.time())
        except Exception:
            _log.warning(
                "session sweep on %s failed; retrying later", self._store.backend, exc_info=True
            )
            return 0
        self.swept += swept
        return swept

    async def run(self) -> None:
        """Sweep every ``every`` seconds until cancelled."""
        while True:
            await self._clock.sleep(self._every)
            await self.sweep()

    def start(self) -> None:
        """Run the sweeper in the background (needs a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop the background sweeper and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
