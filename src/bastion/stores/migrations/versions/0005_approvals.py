"""Approvals: a risky tool call waiting for a person's decision, kept for the record.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bastion_approvals",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("approval_id", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("agent_name", sa.Text, nullable=False),
        sa.Column("tool_name", sa.Text, nullable=False),
        sa.Column("tool_arguments", sa.Text, nullable=False),
        sa.Column("call_hash", sa.Text, nullable=False),
        sa.Column("risk_level", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("session_id", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("purge_at", sa.Double, nullable=False),
        sa.Column("decided_at", sa.Double, nullable=True),
        sa.Column("decided_by", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index(
        "ix_bastion_approvals_scope_approval_id", "bastion_approvals", ["scope", "approval_id"]
    )
    op.create_index("ix_bastion_approvals_purge_at", "bastion_approvals", ["purge_at"])


def downgrade() -> None:
    op.drop_table("bastion_approvals")
