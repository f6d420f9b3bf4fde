"""Alembic migrations of the SQL store's schema (applied by :func:`bastion.stores.upgrade`)."""
