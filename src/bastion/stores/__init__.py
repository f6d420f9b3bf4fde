"""State that survives restarts and is shared between processes.

One small protocol per concern (:class:`RateLimitStore`, :class:`BudgetStore`,
:class:`IdempotencyStore`, :class:`CheckpointStore`, :class:`SessionStore`,
:class:`ApprovalStore`, :class:`AuditLog`),
one module per backend -- :class:`MemoryStore`, :class:`SQLStore` (SQLite and
PostgreSQL), :class:`RedisStore` -- chosen by URL with :func:`open_store`.
``store.scoped("tenant-a")`` gives a view that never sees another scope's keys.

The SQL store (and SQLAlchemy with it) is imported on first use of
``SQLStore`` or ``upgrade``, so ``import bastion`` stays fast.
"""

import typing as _typing

from bastion.stores._approval_store import (
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
)
from bastion.stores._approvals import ApprovalDecided, ApprovalRequested, Approvals
from bastion.stores._audit import (
    AuditEntry,
    AuditLog,
    AuditPage,
    AuditProblem,
    AuditRecord,
    AuditReport,
    hash_prompt,
)
from bastion.stores._audit_file import JSONLinesAuditLog
from bastion.stores._base import FailureMode, Store, StoreDegraded
from bastion.stores._budget import (
    BudgetConfig,
    BudgetEnforcer,
    BudgetExceeded,
    Reservation,
)
from bastion.stores._budget_store import BudgetStore, CapCharge, ReserveMode, ReserveOutcome
from bastion.stores._cache import CacheStore, MemoryCacheStore, RedisCacheStore
from bastion.stores._cache_sql import SQLCacheStore
from bastion.stores._checkpoint_store import Checkpoint, CheckpointStore
from bastion.stores._checkpoints import Checkpoints, SavedState
from bastion.stores._factory import open_cache_store, open_store
from bastion.stores._fixed_window import FixedWindowCounter
from bastion.stores._idempotency import (
    Idempotency,
    IdempotencyConflict,
    IdempotencyMismatch,
    fingerprint,
    not_a_server_error,
)
from bastion.stores._idempotency_store import Claim, IdempotencyStore, StoredResponse
from bastion.stores._memory import MemoryStore
from bastion.stores._ratelimit import RateLimitStore, WindowSpec
from bastion.stores._redis import RedisStore
from bastion.stores._session_store import SessionData, SessionNotFound, SessionPage, SessionStore
from bastion.stores._sessions import Conversation, Sessions, SessionSweeper
from bastion.stores._window_log import SlidingWindowLog, WindowDecision

if _typing.TYPE_CHECKING:
    from bastion.stores._audit_sql import SQLAuditLog
    from bastion.stores._sql import SQLStore, upgrade

__all__ = [
    "Approval",
    "ApprovalAlreadyDecided",
    "ApprovalDecided",
    "ApprovalMismatch",
    "ApprovalNotFound",
    "ApprovalPage",
    "ApprovalRequest",
    "ApprovalRequested",
    "ApprovalStatus",
    "ApprovalStore",
    "Approvals",
    "AuditEntry",
    "AuditLog",
    "AuditPage",
    "AuditProblem",
    "AuditRecord",
    "AuditReport",
    "BudgetConfig",
    "BudgetEnforcer",
    "BudgetExceeded",
    "BudgetStore",
    "CacheStore",
    "CapCharge",
    "Checkpoint",
    "CheckpointStore",
    "Checkpoints",
    "Claim",
    "Conversation",
    "FailureMode",
    "FixedWindowCounter",
    "Idempotency",
    "IdempotencyConflict",
    "IdempotencyMismatch",
    "IdempotencyStore",
    "JSONLinesAuditLog",
    "MemoryCacheStore",
    "MemoryStore",
    "RateLimitStore",
    "RedisCacheStore",
    "RedisStore",
    "Reservation",
    "ReserveMode",
    "ReserveOutcome",
    "RiskLevel",
    "SQLAuditLog",
    "SQLCacheStore",
    "SQLStore",
    "SavedState",
    "SessionData",
    "SessionNotFound",
    "SessionPage",
    "SessionStore",
    "SessionSweeper",
    "Sessions",
    "SlidingWindowLog",
    "Store",
    "StoreDegraded",
    "StoredResponse",
    "WindowDecision",
    "WindowSpec",
    "call_hash",
    "fingerprint",
    "hash_prompt",
    "not_a_server_error",
    "open_cache_store",
    "open_store",
    "upgrade",
]

_LAZY = ("SQLStore", "upgrade")


def __getattr__(name: str) -> _typing.Any:
    if name == "SQLAuditLog":
        from bastion.stores import _audit_sql

        return _audit_sql.SQLAuditLog
    if name in _LAZY:
        from bastion.stores import _sql

        return getattr(_sql, name)
    msg = f"module 'bastion.stores' has no attribute {name!r}"
    raise AttributeError(msg)
