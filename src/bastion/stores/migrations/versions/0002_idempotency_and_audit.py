"""Idempotency keys and the hash-chained audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bastion_idempotency_keys",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("headers", sa.Text, nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=True),
    )
    op.create_index(
        "ix_bastion_idempotency_keys_expires_at", "bastion_idempotency_keys", ["expires_at"]
    )
    op.create_table(
        "bastion_audit_log",
        sa.Column("chain", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("timestamp", sa.Double, nullable=False),
        sa.Column("method", sa.Text, nullable=True),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("agent_name", sa.Text, nullable=True),
        sa.Column("session_id", sa.Text, nullable=True),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("tenant_id", sa.Text, nullable=True),
        sa.Column("prompt_hash", sa.Text, nullable=True),
        sa.Column("tools_called", sa.Text, nullable=False),
        sa.Column("finish_reason", sa.Text, nullable=True),
        sa.Column("duration_ms", sa.Double, nullable=True),
        sa.Column("cost_usd", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.Text, nullable=True),
        sa.Column("idempotency_hit", sa.Boolean, nullable=True),
        sa.Column("prev_hash", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_bastion_audit_log_chain_timestamp", "bastion_audit_log", ["chain", "timestamp"]
    )
    op.create_table(
        "bastion_audit_heads",
        sa.Column("chain", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bastion_audit_heads")
    op.drop_table("bastion_audit_log")
    op.drop_table("bastion_idempotency_keys")
