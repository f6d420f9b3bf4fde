"""Approvals: a person says yes or no to one risky tool call, and the run waits for it.

:class:`Approvals` keeps approval requests on any
:class:`~bastion.stores.ApprovalStore`, so a request survives a restart of
the process that made it, and the person deciding may use another process
(an operator console, a chat bot) than the run that waits. The lifecycle:

1. ``create(...)`` records a *pending* request for one exact call (agent,
   run, tool, arguments), with a deadline for the decision (``ttl``, default
   one hour). Creating again with the same ``approval_id`` returns the
   existing request -- a resumed run asks once, not twice -- but only for the
   very same call (:class:`~bastion.stores.ApprovalMismatch` otherwise).
2. ``decide(approval_id, approved=..., by=..., reason=...)`` records the
   decision at most once: a second decision, or one after the deadline,
   raises :class:`~bastion.stores.ApprovalAlreadyDecided` carrying what
   stands.
3. ``wait(approval_id, timeout)`` returns as soon as a decision lands --
   woken in-process at once, across processes by PostgreSQL ``NOTIFY`` or
   Redis pub/sub, or on its next poll (SQLite, or a lost notification) -- or
   when ``timeout`` passes, returning the approval still ``pending``.

Before running the tool, check :meth:`Approval.permits` with the call you
are about to make: it is true only for an approved request for exactly that
call, so an approval can never be replayed for other arguments.

Events: :class:`ApprovalRequested` and :class:`ApprovalDecided` carry ids,
the tool's name, the risk level and the outcome -- never the arguments or the
description, which may hold a user's data.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import StoreUnavailableError
from bastion._core.events import Event, EventBus, default_bus
from bastion._core.validate import (
    invalid,
    invalid_content,
    non_negative_number,
    one_of,
    positive_number,
    text,
    whole_number,
)
from bastion.stores._approval_store import (
    RISK_LEVELS,
    STATUSES,
    Approval,
    ApprovalAlreadyDecided,
    ApprovalMismatch,
    ApprovalNotFound,
    ApprovalPage,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalStore,
    RiskLevel,
    call_hash,
    encode_arguments,
)

__all__ = ["ApprovalDecided", "ApprovalRequested", "Approvals"]

_log = logging.getLogger("bastion.stores")

_SQLITE_POLL = 0.5
_PUSH_POLL = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequested(Event):
    """A tool call now waits for a person's decision (no arguments: they may hold user data)."""

    approval_id: str
    run_id: str
    agent_name: str
    tool_name: str
    risk_level: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalDecided(Event):
    """Someone approved or rejected a pending tool call."""

    approval_id: str
    run_id: str
    tool_name: str
    status: str
    decided_by: str


def _text(value: object, api: str, *, empty: bool = False) -> str:
    value = text(value, api, empty=empty)
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from undecodable bytes
        invalid_content(api, "text that encodes as UTF-8", value)
    return value


def new_approval_id(clock: Clock) -> str:
    """A fresh id that sorts by creation time (milliseconds), then 64 random bits."""
    return f"apr_{int(clock.time() * 1000):012x}{secrets.token_hex(8)}"


class Approvals:
    """Create, decide, list and wait for approvals of risky tool calls on ``store``.

    ``ttl`` (default one hour): how long a request may wait for a decision
    before it expires. ``keep_for`` (default seven days): how long a request
    stays readable after its deadline, for the record. ``poll_interval``: how
    often a waiter re-reads the store even without a notification; None picks
    0.5 s on SQLite (which has no channel to push a decision to other
    processes) and 5 s elsewhere (a safety net under push). ``clock`` paces
    waits; ``bus`` receives the events (default: the process-wide bus).
    """

    __slots__ = ("_bus", "_clock", "_keep_for", "_poll", "_store", "_ttl")

    def __init__(
        self,
        store: ApprovalStore,
        *,
        ttl: float = 3600.0,
        keep_for: float = 7 * 86_400.0,
        poll_interval: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        if not isinstance(store, ApprovalStore):
            invalid("Approvals(store)", "a store with approval support", store)
        self._store = store
        self._ttl = positive_number(ttl, "Approvals.ttl", unit="seconds")
        self._keep_for = non_negative_number(keep_for, "Approvals.keep_for", unit="seconds")
        if poll_interval is None:
            poll_interval = _SQLITE_POLL if store.backend == "sqlite" else _PUSH_POLL
        self._poll = positive_number(poll_interval, "Approvals.poll_interval", unit="seconds")
        self._clock = clock
        self._bus = bus

    def __repr__(self) -> str:
        return f"Approvals(backend={self._store.backend!r}, ttl={self._ttl!r})"

    @property
    def _events(self) -> EventBus:
        return self._bus if self._bus is not None else default_bus()

    async def create(
        self,
        *,
        run_id: str,
        agent_name: str,
        tool_name: str,
        tool_arguments: Mapping[str, Any],
        risk_level: RiskLevel = "high",
        description: str = "",
        session_id: str | None = None,
        approval_id: str | None = None,
    ) -> Approval:
        """Ask for a decision on one exact tool call; the pending :class:`Approval`.

        ``approval_id`` (default: a fresh, time-ordered id) makes the request
        idempotent: the same id for the same call returns the stored request.
        """
        _text(run_id, "Approvals.create(run_id)")
        _text(agent_name, "Approvals.create(agent_name)")
        _text(tool_name, "Approvals.create(tool_name)")
        _text(description, "Approvals.create(description)", empty=True)
        one_of(risk_level, "Approvals.create(risk_level)", RISK_LEVELS)
        if session_id is not None:
            _text(session_id, "Approvals.create(session_id)")
        if not isinstance(tool_arguments, Mapping):
            invalid_content(
                "Approvals.create(tool_arguments)", "a dict of JSON values", tool_arguments
            )
        try:
            arguments = dict(tool_arguments)
            encode_arguments(arguments).encode()
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
            invalid_content(
                "Approvals.create(tool_arguments)", f"a dict of JSON values ({exc})", tool_arguments
            )
        if approval_id is None:
            approval_id = new_approval_id(self._clock)
        _text(approval_id, "Approvals.create(approval_id)")
        fingerprint = call_hash(
            agent_name=agent_name, run_id=run_id, tool_name=tool_name, tool_arguments=arguments
        )
        request = ApprovalRequest(
            approval_id=approval_id,
            run_id=run_id,
            agent_name=agent_name,
            tool_name=tool_name,
            tool_arguments=arguments,
            risk_level=risk_level,
            description=description,
            session_id=session_id,
            call_hash=fingerprint,
        )
        approval, created = await self._store.create_approval(
            request, ttl=self._ttl, keep_for=self._keep_for
        )
        if approval.call_hash != fingerprint:
            raise ApprovalMismatch(approval_id)
        if created:
            self._events.emit(
                ApprovalRequested(
                    source="approvals",
                    approval_id=approval_id,
                    run_id=run_id,
                    agent_name=agent_name,
                    tool_name=tool_name,
                    risk_level=risk_level,
                )
            )
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        """The approval ``approval_id``, or None when there is none (or it was purged)."""
        return await self._store.get_approval(_text(approval_id, "Approvals.get(approval_id)"))

    async def list(
        self, *, status: ApprovalStatus | None = None, limit: int = 100, cursor: str | None = None
    ) -> ApprovalPage:
        """A page of approvals in id order (creation order for generated ids).

        ``status="pending"`` is an operator's queue; pass ``next_cursor`` back
        for the next page.
        """
        if status is not None:
            one_of(status, "Approvals.list(status)", STATUSES)
        limit = whole_number(limit, "Approvals.list(limit)")
        if cursor is not None and not isinstance(cursor, str):
            invalid("Approvals.list(cursor)", "a next_cursor from an earlier page, or None", cursor)
        return await self._store.list_approvals(status=status, limit=limit, cursor=cursor)

    async def decide(
        self, approval_id: str, *, approved: bool, by: str, reason: str = ""
    ) -> Approval:
        """Approve or reject a pending request, once; wakes everyone waiting on it.

        Raises :class:`ApprovalNotFound` for an unknown id and
        :class:`ApprovalAlreadyDecided` when someone decided first or the
        deadline passed.
        """
        _text(approval_id, "Approvals.decide(approval_id)")
        if not isinstance(approved, bool):
            invalid("Approvals.decide(approved)", "True or False", approved)
        _text(by, "Approvals.decide(by)")
        _text(reason, "Approvals.decide(reason)", empty=True)
        approval, recorded = await self._store.decide_approval(
            approval_id, approved=approved, by=by, reason=reason
        )
        if approval is None:
            raise ApprovalNotFound(approval_id)
        if not recorded:
            raise ApprovalAlreadyDecided(approval)
        self._events.emit(
            ApprovalDecided(
                source="approvals",
                approval_id=approval_id,
                run_id=approval.run_id,
                tool_name=approval.tool_name,
                status=approval.status,
                decided_by=by,
            )
        )
        return approval

    async def wait(self, approval_id: str, timeout: float) -> Approval:
        """The approval once decided (or expired), or still pending after ``timeout`` seconds.

        Returns as soon as the decision lands rather than at the next poll
        wherever the store can push it (in-process on every backend; across
        processes on PostgreSQL and Redis). Raises :class:`ApprovalNotFound`
        for an unknown id. A store that fails on the first read raises
        :class:`~bastion._core.errors.StoreUnavailableError` at once; one that
        fails later, mid-wait, is read again at the next poll -- a person may
        take an hour to decide, and a blip of the store in between must not
        end the wait -- and raises only if it is still failing at the timeout.
        """
        _text(approval_id, "Approvals.wait(approval_id)")
        timeout = non_negative_number(timeout, "Approvals.wait(timeout)", unit="seconds")
        clock = self._clock
        deadline = clock.monotonic() + timeout
        async with self._store.approval_wakeups(approval_id) as wakeup:
            approval = await self._read(approval_id)
            while True:
                left = deadline - clock.monotonic()
                if approval.status != "pending" or left <= 0:
                    return approval
                # Re-read at the request's deadline too, so an expiry is seen promptly -- but
                # not in a busy loop when this host's clock runs ahead of the store's.
                until_expiry = approval.expires_at - clock.time()
                if until_expiry <= 0:  # past the deadline here, not yet at the store
                    until_expiry = self._poll / 10
                await wakeup.wait(min(left, self._poll, until_expiry + 1e-3), clock=clock)
                try:
                    approval = await self._read(approval_id)
                except StoreUnavailableError as exc:
                    if clock.monotonic() >= deadline:
                        raise
                    _log.warning(
                        "approval %r: store unavailable mid-wait (%s); reading again in %gs",
                        approval_id,
                        exc.reason,
                        self._poll,
                    )

    async def _read(self, approval_id: str) -> Approval:
        approval = await self._store.get_approval(approval_id)
        if approval is None:
            raise ApprovalNotFound(approval_id)
        return approval
