"""The tables of the SQL store, as SQLAlchemy Core objects the queries are built from.

This is the *current* shape; the migrations under ``migrations/versions``
create it step by step and are the only thing that changes a database. Each
migration spells its columns out instead of importing these objects, so that
changing a table here later cannot rewrite history. A test checks that the
migrated database matches these definitions.

Money is ``BIGINT`` micro-dollars; times are epoch seconds as ``DOUBLE``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)

__all__ = [
    "METADATA",
    "VERSION_TABLE",
    "approvals",
    "audit_heads",
    "audit_log",
    "budget_caps",
    "budget_holds",
    "cache",
    "checkpoints",
    "idempotency_keys",
    "rate_limits",
    "session_messages",
    "sessions",
]

VERSION_TABLE = "bastion_alembic_version"
"""Alembic's bookkeeping table, named so it never collides with an application's own."""

METADATA = MetaData()

rate_limits = Table(
    "bastion_rate_limits",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index("ix_bastion_rate_limits_expires_at", "expires_at"),
)
"""One row per limited key: its window state as JSON, and when all of it has expired."""

budget_caps = Table(
    "bastion_budget_caps",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("settled", BigInteger, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index("ix_bastion_budget_caps_expires_at", "expires_at"),
)
"""One row per cap and period: micro-dollars settled, and when the period is forgotten."""

budget_holds = Table(
    "bastion_budget_holds",
    METADATA,
    Column("reservation", Text, primary_key=True),
    Column("cap_key", Text, primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("hold_until", Double, nullable=False),
    Index("ix_bastion_budget_holds_cap", "cap_key", "hold_until"),
)
"""One row per reservation and cap it holds money on, until ``hold_until``."""

idempotency_keys = Table(
    "bastion_idempotency_keys",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("status", Integer, nullable=True),
    Column("headers", Text, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Index("ix_bastion_idempotency_keys_expires_at", "expires_at"),
)
"""One row per idempotency key: running while ``status`` is NULL (its lock lapses at
``expires_at``), done once the response is stored (kept until ``expires_at``)."""

audit_log = Table(
    "bastion_audit_log",
    METADATA,
    Column("chain", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("id", Text, nullable=False),
    Column("timestamp", Double, nullable=False),
    Column("method", Text, nullable=True),
    Column("path", Text, nullable=True),
    Column("status", Integer, nullable=True),
    Column("agent_name", Text, nullable=True),
    Column("session_id", Text, nullable=True),
    Column("user_id", Text, nullable=True),
    Column("tenant_id", Text, nullable=True),
    Column("prompt_hash", Text, nullable=True),
    Column("tools_called", Text, nullable=False),
    Column("finish_reason", Text, nullable=True),
    Column("duration_ms", Double, nullable=True),
    Column("cost_usd", Text, nullable=True),
    Column("idempotency_key", Text, nullable=True),
    Column("idempotency_hit", Boolean, nullable=True),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Index("ix_bastion_audit_log_chain_timestamp", "chain", "timestamp"),
)
"""One row per audit record; ``chain`` is the scope path (each scope keeps its own chain),
``tools_called`` a JSON list, ``cost_usd`` an exact decimal string."""

audit_heads = Table(
    "bastion_audit_heads",
    METADATA,
    Column("chain", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", Text, nullable=False),
)
"""The last record of each chain: locked by every append, so appends form one chain."""

checkpoints = Table(
    "bastion_checkpoints",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("step", BigInteger, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("saved_at", Double, nullable=False),
    Column("expires_at", Double, nullable=True),
    Index("ix_bastion_checkpoints_expires_at", "expires_at"),
)
"""One row per run: its latest step and state; ``expires_at`` NULL keeps it until deleted."""

sessions = Table(
    "bastion_sessions",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("scope", Text, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("metadata", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("ttl", Double, nullable=False),
    Column("length", BigInteger, nullable=False),
    Index("ix_bastion_sessions_scope_session_id", "scope", "session_id"),
    Index("ix_bastion_sessions_expires_at", "expires_at"),
)
"""One row per conversation (``key`` is scope path + id): lives ``ttl`` after its latest
write; ``length`` is how many messages it holds (the next message's ``seq``)."""

session_messages = Table(
    "bastion_session_messages",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("body", LargeBinary, nullable=False),
)
"""The messages of each session, numbered from 0 in the order they were appended."""

approvals = Table(
    "bastion_approvals",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("scope", Text, nullable=False),
    Column("approval_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("agent_name", Text, nullable=False),
    Column("tool_name", Text, nullable=False),
    Column("tool_arguments", Text, nullable=False),
    Column("call_hash", Text, nullable=False),
    Column("risk_level", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("session_id", Text, nullable=True),
    Column("status", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("purge_at", Double, nullable=False),
    Column("decided_at", Double, nullable=True),
    Column("decided_by", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Index("ix_bastion_approvals_scope_approval_id", "scope", "approval_id"),
    Index("ix_bastion_approvals_purge_at", "purge_at"),
)
"""One row per approval (``key`` is scope path + id): ``status`` as decided (``pending``
reads as expired past ``expires_at``), ``tool_arguments`` as JSON; gone at ``purge_at``."""

cache = Table(
    "bastion_cache",
    METADATA,
    Column("key", Text, primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("expires_at", Double, nullable=True),
    Index("ix_bastion_cache_expires_at", "expires_at"),
)
"""One row per cached value (``key`` is the scope path + the cache's key); ``expires_at``
NULL keeps it until deleted."""
