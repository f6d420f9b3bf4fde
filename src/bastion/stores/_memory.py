"""The in-process store: for tests, and for one process that needs no shared state.

It keeps everything in dictionaries behind one lock and never fails, so it is
also the reference the conformance suite holds every other backend to. It
answers the same protocols with the same rules as the shared stores (the
window algorithms and the reservation rule are the very same functions), but
its state dies with the process and is invisible to other processes.

Rate limits run on the store's ``clock.monotonic()``; budgets on the wall
time their enforcer passes in.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion.stores._approval_store import (
    Approval,
    ApprovalPage,
    ApprovalRequest,
    ApprovalStatus,
    as_of,
    decidable,
    decided,
    page_of,
    pending,
)
from bastion.stores._budget_store import (
    CapCharge,
    ReserveMode,
    ReserveOutcome,
    decide_reservation,
)
from bastion.stores._checkpoint_store import Checkpoint, newer_or_same
from bastion.stores._idempotency_store import Claim, StoredResponse, claim_of
from bastion.stores._keys import ScopedView, scope_path
from bastion.stores._ratelimit import WindowSpec
from bastion.stores._session_store import SessionData, SessionNotFound, SessionPage
from bastion.stores._session_store import page_of as session_page
from bastion.stores._wakeup import Notifier, Wakeup
from bastion.stores._window_log import RateLimitBackend, WindowDecision, check_costs

__all__ = ["MemoryStore"]


class _Cap:
    """One budget counter: what was settled, and the live holds on it."""

    __slots__ = ("expires_at", "holds", "settled")

    def __init__(self, expires_at: float) -> None:
        self.settled = 0
        self.holds: dict[str, tuple[int, float]] = {}
        """reservation id -> (micro-dollars, hold_until)."""
        self.expires_at = expires_at

    def committed(self, now: float) -> int:
        holds = self.holds
        for reservation in [r for r, (_, until) in holds.items() if until <= now]:
            del holds[reservation]
        return self.settled + sum(amount for amount, _ in holds.values())


class _State:
    """Everything a root store and its scoped views share."""

    __slots__ = (
        "approvals",
        "caps",
        "checkpoints",
        "idempotency",
        "lock",
        "logs",
        "notifier",
        "sessions",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logs: dict[WindowSpec, RateLimitBackend] = {}
        self.caps: dict[str, _Cap] = {}
        self.idempotency: dict[str, tuple[str, float, StoredResponse | None, str]] = {}
        """key -> (fingerprint, expires_at, response or None while running, owner token)."""
        self.checkpoints: dict[str, tuple[Checkpoint, float | None]] = {}
        """key -> (checkpoint, expires_at or None for never)."""
        self.sessions: dict[str, dict[str, _Session]] = {}
        """scope path -> session id -> session."""
        self.approvals: dict[str, dict[str, tuple[Approval, float]]] = {}
        """scope path -> approval id -> (approval as stored, purge_at)."""
        self.notifier = Notifier()


class _Session:
    """One conversation: its metadata, its messages, and how long it lives after a write."""

    __slots__ = ("created_at", "expires_at", "messages", "metadata", "ttl")

    def __init__(self, metadata: bytes, created_at: float, ttl: float) -> None:
        self.metadata = metadata
        self.messages: list[bytes] = []
        self.created_at = created_at
        self.ttl = ttl
        self.expires_at = created_at + ttl


class MemoryStore(ScopedView):
    """Rate limits, budgets, idempotency, checkpoints, sessions and approvals, in memory."""

    __slots__ = ("_clock", "_state")

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._state = _State()
        self._scope: tuple[str, ...] = ()
        self._prefix = scope_path(())

    def __repr__(self) -> str:
        return f"MemoryStore(scope={self._scope!r})"

    @property
    def backend(self) -> str:
        return "memory"

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- rate limits ---------------------------------------------------------------------------

    async def rate_limit(
        self, key: str, costs: Sequence[float], spec: WindowSpec
    ) -> WindowDecision:
        check_costs(costs, spec.limits, spec.names, spec.window)
        state = self._state
        log = state.logs.get(spec)
        if log is None:
            with state.lock:
                log = state.logs.setdefault(spec, spec.local())
        return log.decide(self._prefix + key, costs, self._clock.monotonic())

    # -- budgets -------------------------------------------------------------------------------

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
        with self._state.lock:
            counters = [self._cap(cap, now) for cap in caps]
            for counter in counters:  # a retried reserve replaces its own hold
                counter.holds.pop(reservation, None)
            committed = tuple(counter.committed(now) for counter in counters)
            granted, over = decide_reservation(committed, [cap.limit for cap in caps], amount, mode)
            if granted > 0:
                for counter in counters:
                    counter.holds[reservation] = (granted, hold_until)
            return ReserveOutcome(granted, over, committed)

    async def settle(
        self,
        reservation: str,
        caps: Sequence[CapCharge],
        amount: int,
        *,
        now: float,
        if_held: bool = True,
    ) -> bool:
        added = False
        with self._state.lock:
            for cap in caps:
                counter = self._cap(cap, now)
                if counter.holds.pop(reservation, None) is not None or not if_held:
                    counter.settled += amount
                    added = True
        return added

    async def release(self, reservation: str, caps: Sequence[CapCharge]) -> None:
        with self._state.lock:
            for cap in caps:
                counter = self._state.caps.get(self._prefix + cap.key)
                if counter is not None:
                    counter.holds.pop(reservation, None)

    async def committed(self, caps: Sequence[CapCharge], *, now: float) -> tuple[int, ...]:
        with self._state.lock:
            return tuple(self._cap(cap, now, extend=False).committed(now) for cap in caps)

    def _cap(self, cap: CapCharge, now: float, *, extend: bool = True) -> _Cap:
        """The live counter of ``cap`` (a fresh one once its period is over); lock held.

        A write pushes the counter's expiry out to ``cap.expires_at`` when that
        is later (a run is remembered ``run_ttl`` after its *latest* use, as
        the shared stores do); a read leaves it alone.
        """
        caps = self._state.caps
        key = self._prefix + cap.key
        counter = caps.get(key)
        if counter is not None and counter.expires_at > now:
            if extend and cap.expires_at > counter.expires_at:
                counter.expires_at = cap.expires_at
        else:
            counter = caps[key] = _Cap(cap.expires_at)
            if len(caps) % 1024 == 0:
                for stale in [k for k, c in caps.items() if c.expires_at <= now]:
                    del caps[stale]
                caps[key] = counter
        return counter

    # -- idempotency ---------------------------------------------------------------------------

    async def claim_idempotency_key(
        self, key: str, fingerprint: str, token: str, *, lock_ttl: float
    ) -> Claim:
        records = self._state.idempotency
        full = self._prefix + key
        with self._state.lock:
            now = self._clock.time()
            stored = records.get(full)
            claim = claim_of(stored[:3] if stored is not None else None, now)
            if claim is not None:
                return claim
            records[full] = (fingerprint, now + lock_ttl, None, token)
            if len(records) % 1024 == 0:
                for stale in [k for k, record in records.items() if record[1] <= now]:
                    del records[stale]
                records[full] = (fingerprint, now + lock_ttl, None, token)
            return Claim("acquired", fingerprint)

    async def store_idempotent_response(
        self, key: str, token: str, response: StoredResponse, *, ttl: float
    ) -> bool:
        records = self._state.idempotency
        full = self._prefix + key
        with self._state.lock:
            stored = records.get(full)
            if stored is None or stored[3] != token or stored[2] is not None:
                return False
            records[full] = (stored[0], self._clock.time() + ttl, response, token)
        self._state.notifier.notify("idem:" + full)
        return True

    async def release_idempotency_key(self, key: str, token: str) -> None:
        records = self._state.idempotency
        full = self._prefix + key
        with self._state.lock:
            stored = records.get(full)
            if stored is None or stored[3] != token or stored[2] is not None:
                return
            del records[full]
        self._state.notifier.notify("idem:" + full)

    def idempotency_wakeups(self, key: str) -> AbstractAsyncContextManager[Wakeup]:
        return self._state.notifier.watch("idem:" + self._prefix + key)

    # -- checkpoints ---------------------------------------------------------------------------

    def _live_checkpoint(self, full: str, now: float) -> Checkpoint | None:
        """The unexpired checkpoint under ``full``; lock held."""
        stored = self._state.checkpoints.get(full)
        if stored is None or (stored[1] is not None and stored[1] <= now):
            return None
        return stored[0]

    async def save_checkpoint(
        self, run_id: str, step: int, state: bytes, *, ttl: float | None
    ) -> bool:
        records = self._state.checkpoints
        full = self._prefix + run_id
        with self._state.lock:
            now = self._clock.time()
            live = self._live_checkpoint(full, now)
            if not newer_or_same(None if live is None else live.step, step):
                return False
            checkpoint = Checkpoint(run_id=run_id, step=step, state=bytes(state), saved_at=now)
            records[full] = (checkpoint, None if ttl is None else now + ttl)
            if len(records) % 1024 == 0:
                for stale in [k for k, (_, until) in records.items() if until and until <= now]:
                    del records[stale]
            return True

    async def load_checkpoint(self, run_id: str) -> Checkpoint | None:
        with self._state.lock:
            return self._live_checkpoint(self._prefix + run_id, self._clock.time())

    async def delete_checkpoint(self, run_id: str) -> None:
        with self._state.lock:
            self._state.checkpoints.pop(self._prefix + run_id, None)

    # -- sessions ------------------------------------------------------------------------------

    def _live_session(self, session_id: str, now: float) -> _Session | None:
        """The unexpired session ``session_id`` of this scope; lock held."""
        session = self._state.sessions.get(self._prefix, {}).get(session_id)
        if session is None or session.expires_at <= now:
            return None
        return session

    async def create_session(self, session_id: str, *, ttl: float, metadata: bytes) -> None:
        with self._state.lock:
            sessions = self._state.sessions.setdefault(self._prefix, {})
            sessions[session_id] = _Session(bytes(metadata), self._clock.time(), ttl)

    async def append_messages(self, session_id: str, messages: list[bytes]) -> int:
        with self._state.lock:
            now = self._clock.time()
            session = self._live_session(session_id, now)
            if session is None:
                raise SessionNotFound(session_id)
            session.messages.extend(bytes(message) for message in messages)
            session.expires_at = now + session.ttl
            return len(session.messages)

    async def load_session(self, session_id: str) -> SessionData | None:
        with self._state.lock:
            session = self._live_session(session_id, self._clock.time())
            if session is None:
                return None
            return SessionData(
                session_id=session_id,
                metadata=session.metadata,
                messages=tuple(session.messages),
                created_at=session.created_at,
                expires_at=session.expires_at,
            )

    async def list_sessions(self, *, limit: int, cursor: str | None) -> SessionPage:
        with self._state.lock:
            now = self._clock.time()
            sessions = self._state.sessions.get(self._prefix, {})
            ids = sorted(
                session_id
                for session_id, session in sessions.items()
                if session.expires_at > now and (cursor is None or session_id > cursor)
            )
        return session_page(ids[: limit + 1], limit)

    async def delete_session(self, session_id: str) -> None:
        with self._state.lock:
            self._state.sessions.get(self._prefix, {}).pop(session_id, None)

    async def sweep_sessions(self, now: float) -> int:
        swept = 0
        with self._state.lock:
            for sessions in self._state.sessions.values():
                for session_id in [k for k, s in sessions.items() if s.expires_at <= now]:
                    del sessions[session_id]
                    swept += 1
        return swept

    # -- approvals -----------------------------------------------------------------------------

    def _live_approval(self, approval_id: str, now: float) -> Approval | None:
        """The stored approval ``approval_id`` of this scope, unless purged; lock held."""
        stored = self._state.approvals.get(self._prefix, {}).get(approval_id)
        if stored is None or stored[1] <= now:
            return None
        return stored[0]

    async def create_approval(
        self, request: ApprovalRequest, *, ttl: float, keep_for: float
    ) -> tuple[Approval, bool]:
        with self._state.lock:
            now = self._clock.time()
            existing = self._live_approval(request.approval_id, now)
            if existing is not None:
                return as_of(existing, now), False
            approval = pending(request, now=now, ttl=ttl)
            records = self._state.approvals.setdefault(self._prefix, {})
            records[request.approval_id] = (approval, now + ttl + keep_for)
            if len(records) % 1024 == 0:
                for stale in [k for k, (_, purge_at) in records.items() if purge_at <= now]:
                    del records[stale]
            return approval, True

    async def get_approval(self, approval_id: str) -> Approval | None:
        with self._state.lock:
            now = self._clock.time()
            approval = self._live_approval(approval_id, now)
            return None if approval is None else as_of(approval, now)

    async def list_approvals(
        self, *, status: ApprovalStatus | None, limit: int, cursor: str | None
    ) -> ApprovalPage:
        with self._state.lock:
            now = self._clock.time()
            records = self._state.approvals.get(self._prefix, {})
            found = sorted(
                (as_of(approval, now) for approval, purge_at in records.values() if purge_at > now),
                key=lambda approval: approval.approval_id,
            )
        found = [
            approval
            for approval in found
            if (cursor is None or approval.approval_id > cursor)
            and (status is None or approval.status == status)
        ]
        return page_of(found[: limit + 1], limit)

    async def decide_approval(
        self, approval_id: str, *, approved: bool, by: str, reason: str
    ) -> tuple[Approval | None, bool]:
        with self._state.lock:
            now = self._clock.time()
            approval = self._live_approval(approval_id, now)
            if approval is None:
                return None, False
            if not decidable(approval.status, approval.expires_at, now):
                return as_of(approval, now), False
            approval = decided(approval, approved=approved, by=by, reason=reason, now=now)
            records = self._state.approvals[self._prefix]
            records[approval_id] = (approval, records[approval_id][1])
        self._state.notifier.notify("apr:" + self._prefix + approval_id)
        return approval, True

    def approval_wakeups(self, approval_id: str) -> AbstractAsyncContextManager[Wakeup]:
        return self._state.notifier.watch("apr:" + self._prefix + approval_id)
