"""State that survives restarts and is shared between processes.

One small protocol per concern (:class:`RateLimitStore`, :class:`BudgetStore`),
one module per backend -- :class:`MemoryStore`, :class:`SQLStore` (SQLite and
PostgreSQL), :class:`RedisStore` -- chosen by URL with :func:`open_store`.
``store.scoped("tenant-a")`` gives a view that never sees another scope's keys.

The SQL store (and SQLAlchemy with it) is imported on first use of
``SQLStore`` or ``upgrade``, so ``import bastion`` stays fast.
"""

import typing as _typing

from bastion.stores._base import FailureMode, Store, StoreDegraded
from bastion.stores._budget import (
    BudgetConfig,
    BudgetEnforcer,
    BudgetExceeded,
    Reservation,
)
from bastion.stores._budget_store import BudgetStore, CapCharge, ReserveMode, ReserveOutcome
from bastion.stores._cache import CacheStore, MemoryCacheStore, RedisCacheStore, open_cache_store
from bastion.stores._factory import open_store
from bastion.stores._fixed_window import FixedWindowCounter
from bastion.stores._memory import MemoryStore
from bastion.stores._ratelimit import RateLimitStore, WindowSpec
from bastion.stores._redis import RedisStore
from bastion.stores._window_log import SlidingWindowLog, WindowDecision

if _typing.TYPE_CHECKING:
    from bastion.stores._sql import SQLStore, upgrade

__all__ = [
    "BudgetConfig",
    "BudgetEnforcer",
    "BudgetExceeded",
    "BudgetStore",
    "CacheStore",
    "CapCharge",
    "FailureMode",
    "FixedWindowCounter",
    "MemoryCacheStore",
    "MemoryStore",
    "RateLimitStore",
    "RedisCacheStore",
    "RedisStore",
    "Reservation",
    "ReserveMode",
    "ReserveOutcome",
    "SQLStore",
    "SlidingWindowLog",
    "Store",
    "StoreDegraded",
    "WindowDecision",
    "WindowSpec",
    "open_cache_store",
    "open_store",
    "upgrade",
]

_LAZY = ("SQLStore", "upgrade")


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        from bastion.stores import _sql

        return getattr(_sql, name)
    msg = f"module 'bastion.stores' has no attribute {name!r}"
    raise AttributeError(msg)
