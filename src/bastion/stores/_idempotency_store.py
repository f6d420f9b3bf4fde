"""The idempotency concern of a store: claim a key, keep its response, or let it go.

A key's record is in one of two states: *running* (someone claimed it and is
doing the work; the claim is a lock that lapses after ``lock_ttl`` so a crashed
owner cannot block the key for ever) or *done* (the response is kept until
``ttl`` passes). A record past its expiry counts as absent. Claiming is the one
read-check-write, so every backend does it in one atomic step (a lock, a
transaction, a Lua script): of twenty claims that arrive together exactly one
is ``"acquired"`` and the others see ``"running"``.

Only the owner's ``token`` (a fresh random id per attempt) can store a
response or release the key, so an owner whose lock lapsed and was taken over
cannot overwrite the new owner's record. Time is the store's: its clock for
the memory and SQL stores, the server's (or the test clock given) for Redis.

A duplicate that finds the key running waits for the first request; storing
the response or releasing the key wakes it (in-process on every backend,
across processes by PostgreSQL ``NOTIFY`` and Redis pub/sub), so it answers
as soon as the first one does instead of at its next poll.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from bastion.stores._wakeup import Wakeup

__all__ = [
    "Claim",
    "IdempotencyStore",
    "StoredResponse",
    "claim_of",
    "decode_headers",
    "encode_headers",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResponse:
    """What an idempotent request answered: replayed byte for byte on a repeat.

    ``hit`` is True on a response that came from the store (a replay) rather
    than from running the work; it is not stored.
    """

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    hit: bool = False


ClaimState = Literal["acquired", "running", "done"]


class Claim(NamedTuple):
    """The outcome of claiming a key.

    ``"acquired"``: the caller owns the key and must store a response or
    release it. ``"running"``: another owner holds it. ``"done"``: ``response``
    is the stored answer. ``fingerprint`` is the record's (the caller's own
    when acquired), so the caller can tell a different request reusing the key.
    """

    state: ClaimState
    fingerprint: str
    response: StoredResponse | None = None


def claim_of(stored: tuple[str, float, StoredResponse | None] | None, now: float) -> Claim | None:
    """The claim a live record ``(fingerprint, expires_at, response)`` gives; None if free."""
    if stored is None or stored[1] <= now:
        return None
    fingerprint, _, response = stored
    if response is None:
        return Claim("running", fingerprint)
    return Claim("done", fingerprint, response)


def encode_headers(headers: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([list(pair) for pair in headers], separators=(",", ":"))


def decode_headers(text: str | bytes) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for name, value in json.loads(text))


@runtime_checkable
class IdempotencyStore(Protocol):
    """A store that claims idempotency keys atomically and keeps their responses."""

    @property
    def backend(self) -> str:
        """The backend's name, for errors and logs."""
        ...

    async def claim_idempotency_key(
        self, key: str, fingerprint: str, token: str, *, lock_ttl: float
    ) -> Claim:
        """Claim ``key`` for ``token`` unless a live record holds it, as one atomic step.

        A new claim is a running record that lapses ``lock_ttl`` seconds from now.
        """
        ...

    async def store_idempotent_response(
        self, key: str, token: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        """Keep ``response`` for ``ttl`` seconds if ``token`` still owns ``key``; whether it did."""
        ...

    async def release_idempotency_key(self, key: str, token: str) -> None:
        """Forget ``key`` if ``token`` still owns it (twice, or after a takeover, is harmless)."""
        ...

    def idempotency_wakeups(self, key: str) -> AbstractAsyncContextManager[Wakeup]:
        """A wake-up that fires when ``key``'s response is stored or its claim released.

        Entered *before* claiming again, so a change in between still wakes
        the duplicate. A wake-up may be spurious: claim again to see.
        """
        ...
