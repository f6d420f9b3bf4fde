"""The approval concern of a store: a risky tool call waits for a person's yes or no.

An approval is created *pending*, with a deadline (``expires_at``) for the
decision. Deciding is the one read-check-write -- is it still pending and
before its deadline? then record approved or rejected, who decided and why --
so every backend does it in one atomic step (a lock, one conditional
``UPDATE``, a Lua script): of two operators deciding at once exactly one
wins, and the other learns what was decided. A pending approval past its
deadline reads as ``expired`` everywhere, even before anything rewrites it,
and can no longer be decided.

Every approval carries ``call_hash``, the SHA-256 of the exact call it asks
about (agent, run, tool, arguments): an approval granted for one call can
never be replayed for another, and creating an approval again with the same
id is harmless only for the very same call.

A record stays readable until ``purge_at`` (its deadline plus a retention
period), decided or not, so an operator can look back at what was approved.
Time is the store's: its clock for the memory and SQL stores, the server's
(or the test clock given) for Redis.

Waiting for a decision must not mean hammering the store, so each backend
also wakes waiters when a decision lands: in the process at once on every
backend, and across processes through PostgreSQL ``LISTEN/NOTIFY`` and Redis
pub/sub. SQLite has no such channel: waiters in other processes see a
decision on their next poll.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

from bastion._core.errors import BastionError
from bastion.stores._wakeup import Wakeup

__all__ = [
    "RISK_LEVELS",
    "STATUSES",
    "Approval",
    "ApprovalAlreadyDecided",
    "ApprovalMismatch",
    "ApprovalNotFound",
    "ApprovalPage",
    "ApprovalRequest",
    "ApprovalStatus",
    "ApprovalStore",
    "RiskLevel",
    "as_of",
    "call_hash",
    "decidable",
    "decided",
    "effective_status",
    "encode_arguments",
    "page_of",
    "pending",
]

RiskLevel = Literal["low", "medium", "high", "critical"]
RISK_LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high", "critical")

ApprovalStatus = Literal["pending", "approved", "rejected", "expired"]
STATUSES: tuple[ApprovalStatus, ...] = ("pending", "approved", "rejected", "expired")


def call_hash(
    *, agent_name: str, run_id: str, tool_name: str, tool_arguments: Mapping[str, Any]
) -> str:
    """The SHA-256 of one exact tool call, the same for equal arguments in any key order."""
    document = {
        "agent": agent_name,
        "run": run_id,
        "tool": tool_name,
        "arguments": tool_arguments,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def effective_status(stored: str, expires_at: float, now: float) -> ApprovalStatus:
    """What a stored status means at ``now``: a pending approval past its deadline is expired."""
    if stored == "pending" and expires_at <= now:
        return "expired"
    if stored in ("pending", "approved", "rejected"):
        return stored  # type: ignore[return-value]
    msg = f"a stored approval has the unknown status {stored!r}"
    raise ValueError(msg)


def as_of(approval: Approval, now: float) -> Approval:
    """``approval`` as it reads at ``now`` (expired once its deadline passed undecided)."""
    status = effective_status(approval.status, approval.expires_at, now)
    return approval if status == approval.status else replace(approval, status=status)


def decidable(stored: str, expires_at: float, now: float) -> bool:
    """Whether a decision at ``now`` may still be recorded."""
    return stored == "pending" and expires_at > now


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequest:
    """What a new approval asks about (the store adds times and the status)."""

    approval_id: str
    run_id: str
    agent_name: str
    tool_name: str
    tool_arguments: Mapping[str, Any]
    risk_level: RiskLevel
    description: str
    session_id: str | None
    call_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Approval:
    """One approval as stored: the call it asks about, and what (if anything) was decided.

    ``status`` is ``pending`` until someone decides, then ``approved`` or
    ``rejected``; ``expired`` once the deadline passed undecided. Times are
    epoch seconds on the store's clock.
    """

    approval_id: str
    run_id: str
    agent_name: str
    tool_name: str
    tool_arguments: Mapping[str, Any]
    risk_level: RiskLevel
    description: str
    session_id: str | None
    call_hash: str
    status: ApprovalStatus
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: str | None
    reason: str | None

    @property
    def approved(self) -> bool:
        """Whether the call was approved (pending, rejected and expired all mean no)."""
        return self.status == "approved"

    def permits(
        self, *, agent_name: str, run_id: str, tool_name: str, tool_arguments: Mapping[str, Any]
    ) -> bool:
        """Whether this approval allows exactly this call: approved, and for the same call.

        Why a hash and not the id alone: an approval read from a shared store
        must never let a *different* call through -- other arguments, another
        run -- even when someone passes the wrong id.
        """
        return self.approved and self.call_hash == call_hash(
            agent_name=agent_name, run_id=run_id, tool_name=tool_name, tool_arguments=tool_arguments
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalPage:
    """Approvals in id order; pass ``next_cursor`` back for the next page (None: done)."""

    approvals: tuple[Approval, ...]
    next_cursor: str | None


def pending(request: ApprovalRequest, *, now: float, ttl: float) -> Approval:
    """The new, undecided approval for ``request``, created at ``now``."""
    return Approval(
        approval_id=request.approval_id,
        run_id=request.run_id,
        agent_name=request.agent_name,
        tool_name=request.tool_name,
        tool_arguments=request.tool_arguments,
        risk_level=request.risk_level,
        description=request.description,
        session_id=request.session_id,
        call_hash=request.call_hash,
        status="pending",
        created_at=now,
        expires_at=now + ttl,
        decided_at=None,
        decided_by=None,
        reason=None,
    )


def decided(approval: Approval, *, approved: bool, by: str, reason: str, now: float) -> Approval:
    """``approval`` once the decision taken at ``now`` is recorded."""
    return replace(
        approval,
        status="approved" if approved else "rejected",
        decided_at=now,
        decided_by=by,
        reason=reason,
    )


def page_of(approvals: list[Approval], limit: int) -> ApprovalPage:
    """The page for ``approvals`` (sorted by id, up to ``limit + 1``: one more means more)."""
    if len(approvals) > limit:
        return ApprovalPage(
            approvals=tuple(approvals[:limit]), next_cursor=approvals[limit - 1].approval_id
        )
    return ApprovalPage(approvals=tuple(approvals), next_cursor=None)


def encode_arguments(arguments: Mapping[str, Any]) -> str:
    """Tool arguments as compact JSON text, as every backend stores them."""
    return json.dumps(arguments, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _shown(approval_id: str) -> str:
    """``approval_id`` for a message: a long one is cut, so errors and logs stay readable."""
    return repr(approval_id if len(approval_id) <= 80 else approval_id[:77] + "...")


class ApprovalNotFound(BastionError):
    """No approval has this id in this scope, or it was purged after its retention period."""

    http_status = 404

    def __init__(self, approval_id: str) -> None:
        super().__init__(
            f"approval {_shown(approval_id)} does not exist in this scope (or its retention period "
            "ended); check the id, and the tenant scope it was created in"
        )
        self.approval_id = approval_id


class ApprovalAlreadyDecided(BastionError):
    """A decision came too late: the approval was already decided, or its deadline passed."""

    http_status = 409

    def __init__(self, approval: Approval) -> None:
        if approval.status == "expired":
            detail = "expired undecided; the run has to ask again"
        else:
            detail = f"was already {approval.status} by {approval.decided_by!r}"
        super().__init__(f"approval {_shown(approval.approval_id)} {detail}")
        self.approval = approval
        self.status = approval.status


class ApprovalMismatch(BastionError):
    """An approval id was reused for a different tool call."""

    http_status = 409

    def __init__(self, approval_id: str) -> None:
        super().__init__(
            f"approval {_shown(approval_id)} already exists for a different call (agent, run, tool "
            "or arguments differ); use a new id for a new call"
        )
        self.approval_id = approval_id


@runtime_checkable
class ApprovalStore(Protocol):
    """A store that keeps approvals, decides each at most once, and wakes its waiters."""

    @property
    def backend(self) -> str:
        """The backend's name, for errors and logs."""
        ...

    async def create_approval(
        self, request: ApprovalRequest, *, ttl: float, keep_for: float
    ) -> tuple[Approval, bool]:
        """Store ``request`` as pending, to be decided within ``ttl`` seconds.

        The record is kept until ``ttl + keep_for`` seconds from now. Returns
        the approval stored under the id and whether this call created it: an
        existing one is returned unchanged (the caller compares its
        ``call_hash``).
        """
        ...

    async def get_approval(self, approval_id: str) -> Approval | None:
        """The approval ``approval_id``, or None."""
        ...

    async def list_approvals(
        self, *, status: ApprovalStatus | None, limit: int, cursor: str | None
    ) -> ApprovalPage:
        """Up to ``limit`` approvals after ``cursor`` (by id), only of ``status`` when given."""
        ...

    async def decide_approval(
        self, approval_id: str, *, approved: bool, by: str, reason: str
    ) -> tuple[Approval | None, bool]:
        """Record a decision if the approval is still decidable; wake its waiters.

        Returns the approval as it now stands (None when absent) and whether
        this call's decision is the one recorded.
        """
        ...

    def approval_wakeups(self, approval_id: str) -> AbstractAsyncContextManager[Wakeup]:
        """A wake-up that fires when a decision on ``approval_id`` may have landed.

        Entered *before* reading the approval, so a decision that lands in
        between still wakes the reader. A wake-up may be spurious: re-read.
        """
        ...
