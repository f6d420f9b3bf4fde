"""Sessions: conversations kept for a TTL after their latest write, and their messages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bastion_sessions",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("session_id", sa.Text, nullable=False),
        sa.Column("metadata", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("ttl", sa.Double, nullable=False),
        sa.Column("length", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_bastion_sessions_scope_session_id", "bastion_sessions", ["scope", "session_id"]
    )
    op.create_index("ix_bastion_sessions_expires_at", "bastion_sessions", ["expires_at"])
    op.create_table(
        "bastion_session_messages",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bastion_session_messages")
    op.drop_table("bastion_sessions")
