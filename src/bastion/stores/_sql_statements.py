"""Every statement the SQL store runs, built once per dialect with bind parameters.

Built once so that SQLAlchemy compiles each one once and serves it from its
cache afterwards (a statement carrying its values inline -- a multi-row
``VALUES`` list -- is compiled anew on every call, which cost more than the
database work). Rows are passed at execution time instead (``executemany``).

The only dialect differences are the upsert construct (``INSERT ... ON
CONFLICT`` exists in both, under different SQLAlchemy imports) and the name
of the two-argument maximum (``greatest`` in PostgreSQL, ``max`` in SQLite).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from bastion.stores._sql_schema import (
    approvals,
    budget_caps,
    budget_holds,
    cache,
    checkpoints,
    idempotency_keys,
    rate_limits,
    session_messages,
    sessions,
)

__all__ = ["Statements"]


class Statements:
    """The store's statements for one dialect (``"sqlite"`` or ``"postgresql"``)."""

    def __init__(self, dialect: str) -> None:
        upsert: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert

            greatest: Any = sa.func.greatest
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert

            greatest = sa.func.max
        now: Any = sa.bindparam("b_now")
        keys: Any = sa.bindparam("b_keys", expanding=True)
        reservation: Any = sa.bindparam("b_reservation")

        limits = rate_limits
        self.limit_state = (
            sa.select(limits.c.state).where(limits.c.key == sa.bindparam("b_key")).with_for_update()
        )
        """The stored state of one limited key, locked until the transaction ends."""
        self.limit_create = (
            upsert(limits)
            .values(key=sa.bindparam("b_key"), state="{}", expires_at=0.0)
            .on_conflict_do_nothing()
        )
        """An empty row for a key seen for the first time (a racing creator is harmless)."""
        self.limit_write = (
            sa.update(limits)
            .where(limits.c.key == sa.bindparam("b_key"))
            .values(state=sa.bindparam("b_state"), expires_at=sa.bindparam("b_expires"))
        )

        caps = budget_caps
        insert_cap = upsert(caps)
        live = sa.case((caps.c.expires_at <= now, 0), else_=caps.c.settled)
        self.caps_lock = insert_cap.on_conflict_do_update(
            index_elements=[caps.c.key],
            set_={
                "settled": live + insert_cap.excluded.settled,
                "expires_at": greatest(caps.c.expires_at, insert_cap.excluded.expires_at),
            },
        ).returning(caps.c.key, caps.c.settled)
        """Per row ``{key, settled, expires_at, b_now}``: create or update (and so lock) a cap,
        restart it from zero when its period has passed, add ``settled``; returns the totals."""
        self.caps_add = (
            sa.update(caps)
            .where(caps.c.key.in_(keys))
            .values(settled=caps.c.settled + sa.bindparam("b_amount"))
        )
        """Add ``b_amount`` to the settled sum of caps already locked by ``caps_lock``."""
        self.caps_read = sa.select(caps.c.key, caps.c.settled).where(
            caps.c.key.in_(keys), caps.c.expires_at > now
        )

        holds = budget_holds
        self.held = (
            sa.select(holds.c.cap_key, sa.func.sum(holds.c.amount))
            .where(
                holds.c.cap_key.in_(keys),
                holds.c.hold_until > now,
                holds.c.reservation != reservation,
            )
            .group_by(holds.c.cap_key)
        )
        """Live holds per cap, leaving out ``b_reservation``'s own (``""`` leaves out none)."""
        insert_hold = upsert(holds)
        self.hold = insert_hold.on_conflict_do_update(
            index_elements=[holds.c.reservation, holds.c.cap_key],
            set_={
                "amount": insert_hold.excluded.amount,
                "hold_until": insert_hold.excluded.hold_until,
            },
        )
        """Per row ``{reservation, cap_key, amount, hold_until}``; a retried reserve replaces."""
        self.unhold = sa.delete(holds).where(holds.c.reservation == reservation)
        self.unhold_returning = self.unhold.returning(holds.c.cap_key)
        """Drop a reservation's holds; the caps it still held (a settle adds only to those)."""
        self.unhold_caps = sa.delete(holds).where(
            holds.c.reservation == reservation, holds.c.cap_key.in_(keys)
        )

        idem = idempotency_keys
        key: Any = sa.bindparam("b_key")
        token: Any = sa.bindparam("b_token")
        self.idem_insert = (
            upsert(idem)
            .values(
                key=key,
                fingerprint=sa.bindparam("b_fingerprint"),
                token=token,
                expires_at=sa.bindparam("b_expires"),
            )
            .on_conflict_do_nothing()
            .returning(idem.c.key)
        )
        """A running record for a key no one holds; returns nothing when the key exists."""
        self.idem_read = (
            sa.select(
                idem.c.fingerprint, idem.c.expires_at, idem.c.status, idem.c.headers, idem.c.body
            )
            .where(idem.c.key == key)
            .with_for_update()
        )
        """An existing record, locked until the transaction ends."""
        self.idem_take = (
            sa.update(idem)
            .where(idem.c.key == key)
            .values(
                fingerprint=sa.bindparam("b_fingerprint"),
                token=token,
                expires_at=sa.bindparam("b_expires"),
                status=None,
                headers=None,
                body=None,
            )
        )
        """Turn an expired record (locked by ``idem_read``) into a new running one."""
        self.idem_store = (
            sa.update(idem)
            .where(idem.c.key == key, idem.c.token == token, idem.c.status.is_(None))
            .values(
                expires_at=sa.bindparam("b_expires"),
                status=sa.bindparam("b_status"),
                headers=sa.bindparam("b_headers"),
                body=sa.bindparam("b_body"),
            )
            .returning(idem.c.key)
        )
        self.idem_release = sa.delete(idem).where(
            idem.c.key == key, idem.c.token == token, idem.c.status.is_(None)
        )

        ckpt = checkpoints
        insert_ckpt = upsert(ckpt).values(
            key=key,
            step=sa.bindparam("b_step"),
            state=sa.bindparam("b_state"),
            saved_at=now,
            expires_at=sa.bindparam("b_expires"),
        )
        self.ckpt_save = insert_ckpt.on_conflict_do_update(
            index_elements=[ckpt.c.key],
            set_={
                "step": insert_ckpt.excluded.step,
                "state": insert_ckpt.excluded.state,
                "saved_at": insert_ckpt.excluded.saved_at,
                "expires_at": insert_ckpt.excluded.expires_at,
            },
            where=sa.or_(ckpt.c.step <= insert_ckpt.excluded.step, ckpt.c.expires_at <= now),
        ).returning(ckpt.c.key)
        """Save a checkpoint unless a live one has a higher step: one atomic upsert (the
        conflicting row is locked while its condition is checked); returns nothing if refused."""
        self.ckpt_load = sa.select(ckpt.c.step, ckpt.c.state, ckpt.c.saved_at).where(
            ckpt.c.key == key, sa.or_(ckpt.c.expires_at.is_(None), ckpt.c.expires_at > now)
        )
        self.ckpt_delete = sa.delete(ckpt).where(ckpt.c.key == key)

        sess, msgs = sessions, session_messages
        insert_sess = upsert(sess).values(
            key=key,
            scope=sa.bindparam("b_scope"),
            session_id=sa.bindparam("b_session"),
            metadata=sa.bindparam("b_metadata"),
            created_at=now,
            expires_at=sa.bindparam("b_expires"),
            ttl=sa.bindparam("b_ttl"),
            length=0,
        )
        self.sess_create = insert_sess.on_conflict_do_update(
            index_elements=[sess.c.key],
            set_={
                column: insert_sess.excluded[column]
                for column in ("metadata", "created_at", "expires_at", "ttl", "length")
            },
        )
        """Start a session, or restart one of the same id (its old messages go first)."""
        self.sess_grow = (
            sa.update(sess)
            .where(sess.c.key == key, sess.c.expires_at > now)
            .values(
                length=sess.c.length + sa.bindparam("b_count"),
                expires_at=now + sess.c.ttl,
            )
            .returning(sess.c.length)
        )
        """Make room for ``b_count`` messages in a live session and refresh its expiry, in one
        locking update (concurrent appends queue on the row); returns the new length."""
        self.sess_load = sa.select(
            sess.c.metadata, sess.c.created_at, sess.c.expires_at, sess.c.length
        ).where(sess.c.key == key, sess.c.expires_at > now)
        self.msgs_load = (
            sa.select(msgs.c.body)
            .where(msgs.c.key == key, msgs.c.seq < sa.bindparam("b_length"))
            .order_by(msgs.c.seq)
        )
        self.msgs_insert = sa.insert(msgs).values(
            key=key, seq=sa.bindparam("b_seq"), body=sa.bindparam("b_body")
        )
        self.sess_list = (
            sa.select(sess.c.session_id)
            .where(
                sess.c.scope == sa.bindparam("b_scope"),
                sess.c.session_id > sa.bindparam("b_cursor"),
                sess.c.expires_at > now,
            )
            .order_by(sess.c.session_id)
            .limit(sa.bindparam("b_limit"))
        )
        self.sess_delete = sa.delete(sess).where(sess.c.key == key)
        self.msgs_delete = sa.delete(msgs).where(msgs.c.key == key)
        self.sess_sweep = (
            sa.delete(msgs).where(
                msgs.c.key.in_(sa.select(sess.c.key).where(sess.c.expires_at <= now))
            ),
            sa.delete(sess).where(sess.c.expires_at <= now),
        )
        """The messages of every session expired by ``b_now``, then the sessions."""

        apr = approvals
        self.apr_columns = (
            apr.c.approval_id,
            apr.c.run_id,
            apr.c.agent_name,
            apr.c.tool_name,
            apr.c.tool_arguments,
            apr.c.call_hash,
            apr.c.risk_level,
            apr.c.description,
            apr.c.session_id,
            apr.c.status,
            apr.c.created_at,
            apr.c.expires_at,
            apr.c.decided_at,
            apr.c.decided_by,
            apr.c.reason,
        )
        """The columns an approval is read from, in :func:`approval_of_row`'s order."""
        self.apr_insert = (
            upsert(apr)
            .values(
                key=key,
                scope=sa.bindparam("b_scope"),
                approval_id=sa.bindparam("b_id"),
                run_id=sa.bindparam("b_run"),
                agent_name=sa.bindparam("b_agent"),
                tool_name=sa.bindparam("b_tool"),
                tool_arguments=sa.bindparam("b_arguments"),
                call_hash=sa.bindparam("b_hash"),
                risk_level=sa.bindparam("b_risk"),
                description=sa.bindparam("b_description"),
                session_id=sa.bindparam("b_session"),
                status="pending",
                created_at=now,
                expires_at=sa.bindparam("b_expires"),
                purge_at=sa.bindparam("b_purge"),
            )
            .on_conflict_do_nothing()
            .returning(apr.c.key)
        )
        """Create a pending approval unless its key is taken; returns nothing if it was."""
        self.apr_purge = sa.delete(apr).where(apr.c.key == key, apr.c.purge_at <= now)
        """Drop a purged approval whose id is being reused (before ``apr_insert``)."""
        self.apr_get = sa.select(*self.apr_columns).where(apr.c.key == key, apr.c.purge_at > now)
        self.apr_decide = (
            sa.update(apr)
            .where(
                apr.c.key == key,
                apr.c.status == "pending",
                apr.c.expires_at > now,
                apr.c.purge_at > now,
            )
            .values(
                status=sa.bindparam("b_status"),
                decided_at=now,
                decided_by=sa.bindparam("b_by"),
                reason=sa.bindparam("b_reason"),
            )
            .returning(*self.apr_columns)
        )
        """Record a decision if the approval is still decidable: one locking update, so of
        concurrent deciders exactly one matches; returns the decided row, or nothing."""
        effective = sa.case(
            (sa.and_(apr.c.status == "pending", apr.c.expires_at <= now), "expired"),
            else_=apr.c.status,
        )
        status: Any = sa.bindparam("b_status")
        self.apr_list = (
            sa.select(*self.apr_columns)
            .where(
                apr.c.scope == sa.bindparam("b_scope"),
                apr.c.approval_id > sa.bindparam("b_cursor"),
                apr.c.purge_at > now,
                sa.or_(status == "", effective == status),
            )
            .order_by(apr.c.approval_id)
            .limit(sa.bindparam("b_limit"))
        )
        self.notify = sa.select(
            sa.func.pg_notify(sa.bindparam("b_channel"), sa.bindparam("b_notice"))
        )
        """PostgreSQL only: tell every listener that the key ``b_notice`` names changed, at
        commit."""

        live_value = sa.or_(cache.c.expires_at.is_(None), cache.c.expires_at > now)
        self.cache_get = sa.select(cache.c.key, cache.c.value).where(
            cache.c.key.in_(keys), live_value
        )
        """The live values among ``b_keys`` (absent and expired keys return no row)."""
        insert_value = upsert(cache).values(
            key=key, value=sa.bindparam("b_value"), expires_at=sa.bindparam("b_expires")
        )
        self.cache_set = insert_value.on_conflict_do_update(
            index_elements=[cache.c.key],
            set_={
                "value": insert_value.excluded.value,
                "expires_at": insert_value.excluded.expires_at,
            },
        )
        """Per row ``{b_key, b_value, b_expires}``: store or replace a value."""
        self.cache_delete = sa.delete(cache).where(cache.c.key == key)

        self.sweeps = (
            sa.delete(limits).where(limits.c.expires_at <= now),
            sa.delete(holds).where(holds.c.hold_until <= now),
            sa.delete(caps).where(caps.c.expires_at <= now),
            sa.delete(idem).where(idem.c.expires_at <= now),
            sa.delete(ckpt).where(ckpt.c.expires_at <= now),
            sa.delete(apr).where(apr.c.purge_at <= now),
            sa.delete(cache).where(cache.c.expires_at <= now),
        )
        """What has expired by ``b_now``, to delete every so often."""
