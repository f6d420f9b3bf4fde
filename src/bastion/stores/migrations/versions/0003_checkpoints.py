"""Checkpoints: the latest saved step of each run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bastion_checkpoints",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("saved_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=True),
    )
    op.create_index("ix_bastion_checkpoints_expires_at", "bastion_checkpoints", ["expires_at"])


def downgrade() -> None:
    op.drop_table("bastion_checkpoints")
