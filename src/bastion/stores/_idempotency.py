"""Idempotency keys: a request retried with the same key does its work at most once.

A client that times out cannot know whether its request ran; retrying it
blindly may charge a card twice. With an idempotency key the retry is safe:
the first request with a key runs and its response is kept; every repeat
within ``ttl`` gets that response back (``hit=True``) without running again.

:meth:`Idempotency.run` applies the rules, on any :class:`IdempotencyStore`:

- a repeat that arrives while the first request still runs waits for it, for
  at most ``wait`` seconds, then gets :class:`IdempotencyConflict` (HTTP 409)
  -- the client should retry later;
- the same key with a different request (another ``fingerprint``) gets
  :class:`IdempotencyMismatch` (HTTP 422): a key names one request, never two;
- an outcome that should not be replayed releases the key, so a retry runs
  again: ``fn`` raising, or a response that ``cacheable`` refuses (by default
  any 5xx, which says the server failed rather than the request);
- the claim is a lock that lapses after ``lock_ttl``: a process that dies
  mid-request blocks its key only that long.

A waiting repeat is woken the moment the first request's response is stored
or its key released -- in-process on every backend, across processes by
PostgreSQL ``NOTIFY`` and Redis pub/sub -- and reads the store again every
``poll_interval`` as well, which is all SQLite offers across processes and
the safety net under a lost notification. Only a repeat subscribes; the
first request with a key only announces its response, inside the same
transaction or script that stores it.

When the store is unreachable, ``failure_mode="closed"`` (the default)
raises :class:`~bastion._core.errors.StoreUnavailableError` -- running
unprotected work twice is what idempotency exists to prevent; ``"open"``
runs ``fn`` unprotected and reports a :class:`~bastion.stores.StoreDegraded`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import BastionError, StoreUnavailableError
from bastion._core.events import EventBus
from bastion._core.validate import invalid, non_negative_number, one_of, positive_number
from bastion.stores._base import FailureMode, report_degraded
from bastion.stores._idempotency_store import Claim, IdempotencyStore, StoredResponse

__all__ = [
    "Idempotency",
    "IdempotencyConflict",
    "IdempotencyMismatch",
    "fingerprint",
    "not_a_server_error",
]

_log = logging.getLogger("bastion.stores")


class _Running:
    """The claim found the key held by a request still running."""


_RUNNING = _Running()


class IdempotencyConflict(BastionError):
    """A request with this key is still running and did not finish within the wait."""

    http_status = 409
    transient = True

    def __init__(self, key: str, *, waited: float) -> None:
        self.key = key
        self.waited = waited
        super().__init__(
            f"a request with idempotency key {key!r} is still in progress after waiting "
            f"{waited:g}s; retry later"
        )


class IdempotencyMismatch(BastionError):
    """The key was first used with a different request; it cannot name this one too."""

    http_status = 422

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used with a different request body; "
            "use a new key for a new request"
        )


def fingerprint(body: bytes | str | object) -> str:
    """SHA-256 (hex) of a request body, normalised so equal JSON hashes equally.

    Bytes and text holding JSON, and plain Python values, are hashed as
    canonical JSON (sorted keys, no spaces), so ``{"a":1,"b":2}`` and
    ``{ "b": 2, "a": 1 }`` are the same request. Anything else is hashed
    byte for byte.
    """
    if isinstance(body, bytes | str):
        raw = body.encode() if isinstance(body, str) else body
        try:
            value = json.loads(raw)
        except ValueError:
            return hashlib.sha256(raw).hexdigest()
    else:
        value = body
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def not_a_server_error(response: StoredResponse) -> bool:
    """The default ``cacheable`` rule: keep any response below 500."""
    return response.status < 500


class Idempotency:
    """Run each idempotency key's work at most once, on ``store``.

    ``ttl`` (default one day): how long a response is replayed. ``wait``
    (default 10 s): how long a repeat waits for a running first request
    before :class:`IdempotencyConflict`; 0 fails at once. ``lock_ttl``
    (default 60 s): when a running claim lapses (make it longer than the work
    takes). ``cacheable`` decides which responses are kept.
    """

    __slots__ = (
        "_bus",
        "_cacheable",
        "_clock",
        "_failure_mode",
        "_lock_ttl",
        "_poll",
        "_store",
        "_ttl",
        "_wait",
    )

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        ttl: float = 86_400.0,
        wait: float = 10.0,
        lock_ttl: float = 60.0,
        poll_interval: float = 0.1,
        cacheable: Callable[[StoredResponse], bool] = not_a_server_error,
        failure_mode: FailureMode = "closed",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        if not isinstance(store, IdempotencyStore):
            invalid("Idempotency(store)", "a store with idempotency support", store)
        self._store = store
        self._ttl = positive_number(ttl, "Idempotency.ttl", unit="seconds")
        self._wait = non_negative_number(wait, "Idempotency.wait", unit="seconds")
        self._lock_ttl = positive_number(lock_ttl, "Idempotency.lock_ttl", unit="seconds")
        self._poll = positive_number(poll_interval, "Idempotency.poll_interval", unit="seconds")
        if not callable(cacheable):
            invalid("Idempotency.cacheable", "a function of a StoredResponse", cacheable)
        self._cacheable = cacheable
        one_of(failure_mode, "Idempotency.failure_mode", ("open", "closed"))
        self._failure_mode: FailureMode = failure_mode
        self._clock = clock
        self._bus = bus

    async def run(
        self, key: str, fingerprint: str, fn: Callable[[], Awaitable[StoredResponse]]
    ) -> StoredResponse:
        """The response for ``key``: ``fn()``'s on the first call, the stored one on a repeat.

        Raises :class:`IdempotencyMismatch` when ``key`` was used with another
        ``fingerprint``, :class:`IdempotencyConflict` when a first request with
        ``key`` is still running after ``wait``; whatever ``fn`` raises is
        re-raised after the key is released.
        """
        if not isinstance(key, str) or not key:
            invalid("Idempotency.run(key)", "a non-empty string", key)
        token = uuid.uuid4().hex
        try:
            claim = await self._claim(key, fingerprint, token)
        except StoreUnavailableError as exc:
            if self._failure_mode == "closed":
                report_degraded(exc, source="idempotency", mode="closed", bus=self._bus)
                raise
            report_degraded(exc, source="idempotency", mode="open", bus=self._bus)
            return await fn()
        if claim is not None:
            return claim
        try:
            response = await fn()
        except BaseException:
            await self._release(key, token)
            raise
        if not self._cacheable(response):
            await self._release(key, token)
            return response
        stored = await self._store.store_idempotent_response(key, token, response, ttl=self._ttl)
        if not stored:
            _log.warning(
                "idempotency key %r: its lock lapsed before the response was stored "
                "(raise lock_ttl above the work's duration)",
                key,
            )
        return response

    async def _claim(self, key: str, fingerprint: str, token: str) -> StoredResponse | None:
        """The stored response for a repeat, or None once this call owns ``key``."""
        outcome = await self._try_claim(key, fingerprint, token)
        if not isinstance(outcome, _Running):
            return outcome
        if self._wait == 0:
            raise IdempotencyConflict(key, waited=0.0)
        clock = self._clock
        deadline = clock.monotonic() + self._wait
        # Only a duplicate pays for a wake-up; it registers before claiming again, so a
        # response stored in between is not missed.
        async with self._store.idempotency_wakeups(key) as wakeup:
            while True:
                outcome = await self._try_claim(key, fingerprint, token)
                if not isinstance(outcome, _Running):
                    return outcome
                left = deadline - clock.monotonic()
                if left <= 0:
                    raise IdempotencyConflict(key, waited=self._wait)
                await wakeup.wait(min(self._poll, left), clock=clock)

    async def _try_claim(
        self, key: str, fingerprint: str, token: str
    ) -> StoredResponse | _Running | None:
        """One claim: the stored response, None when acquired, or _RUNNING."""
        claim: Claim = await self._store.claim_idempotency_key(
            key, fingerprint, token, lock_ttl=self._lock_ttl
        )
        if claim.fingerprint != fingerprint:
            raise IdempotencyMismatch(key)
        if claim.state == "acquired":
            return None
        if claim.response is not None:
            return replace(claim.response, hit=True)
        return _RUNNING

    async def _release(self, key: str, token: str) -> None:
        try:
            await self._store.release_idempotency_key(key, token)
        except StoreUnavailableError as exc:
            _log.warning(
                "idempotency key %r could not be released (%s); it stays locked until its "
                "lock_ttl lapses",
                key,
                exc,
            )
