"""Alembic's entry point: run the migrations on the connection Bastion hands over.

Bastion never lets Alembic open its own connection: :func:`bastion.stores.upgrade`
opens one through the store (so timeouts, SQLite's write lock and PostgreSQL's
schema apply) and passes it in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from bastion.stores._sql_schema import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
