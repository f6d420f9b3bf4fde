"""Cache: opaque values with an expiry, for the response and embedding caches.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bastion_cache",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=True),
    )
    op.create_index("ix_bastion_cache_expires_at", "bastion_cache", ["expires_at"])


def downgrade() -> None:
    op.drop_table("bastion_cache")
