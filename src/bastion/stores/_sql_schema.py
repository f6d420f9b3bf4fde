"""The tables of the SQL store, as SQLAlchemy Core objects the queries are built from.

This is the *current* shape; the migrations under ``migrations/versions``
create it step by step and are the only thing that changes a database. Each
migration spells its columns out instead of importing these objects, so that
changing a table here later cannot rewrite history. A test checks that the
migrated database matches these definitions.

Money is ``BIGINT`` micro-dollars; times are epoch seconds as ``DOUBLE``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Double, Index, MetaData, Table, Text

__all__ = ["METADATA", "VERSION_TABLE", "budget_caps", "budget_holds", "rate_limits"]

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
