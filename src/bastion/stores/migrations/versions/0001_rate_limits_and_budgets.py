"""Rate-limit windows, budget caps and budget holds.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bastion_rate_limits",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("ix_bastion_rate_limits_expires_at", "bastion_rate_limits", ["expires_at"])
    op.create_table(
        "bastion_budget_caps",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("settled", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("ix_bastion_budget_caps_expires_at", "bastion_budget_caps", ["expires_at"])
    op.create_table(
        "bastion_budget_holds",
        sa.Column("reservation", sa.Text, primary_key=True),
        sa.Column("cap_key", sa.Text, primary_key=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("hold_until", sa.Double, nullable=False),
    )
    op.create_index(
        "ix_bastion_budget_holds_cap", "bastion_budget_holds", ["cap_key", "hold_until"]
    )


def downgrade() -> None:
    op.drop_table("bastion_budget_holds")
    op.drop_table("bastion_budget_caps")
    op.drop_table("bastion_rate_limits")
