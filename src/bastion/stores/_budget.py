"""Spending caps for model calls: reserve the worst case first, settle the real cost after.

Checking a budget *after* a call cannot stop the call that breaks it, and
checking it before without holding anything lets two hundred concurrent runs
all see the same room and all spend it. So spend is **reserved** before a
call -- the worst case, e.g. the prompt's tokens plus ``max_tokens`` at the
model's prices -- against every applicable cap in one atomic step, and
**settled** to the real cost when the call returns (or **released** when it
fails). While a reservation is open, every other run sees it as spent, so no
combination of concurrent runs can pass a cap: the overspend bound is zero by
design.

Caps (all optional, at least one): per run, per user per day, per tenant per
day, and global per month. Days and months roll over at midnight in
``BudgetConfig.timezone`` (UTC by default), on the enforcer's wall clock.
What happens when a reservation does not fit is ``on_exceeded``:

- ``"throw"`` (default): nothing is reserved and :class:`BudgetExceededError`
  names the cap, its limit and what is spent or reserved on it;
- ``"warn"``: the reservation is made anyway (the cap is passed), a
  ``BudgetExceeded`` event and a warning say so;
- ``"truncate"``: as much as every cap still has room for is reserved; the
  caller shrinks the call to fit ``reservation.amount_usd`` (and an empty
  budget still throws).

A process that dies holding a reservation blocks its amount only until the
hold expires (``reservation_ttl``). When the store cannot be reached the
enforcer fails *closed* by default: a budget exists to stop spending, and an
outage of the budget store is exactly when nobody is watching.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Literal, Self

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import BudgetExceededError, StoreUnavailableError
from bastion._core.events import BudgetExceeded, EventBus, default_bus
from bastion._core.validate import invalid, one_of, positive_number
from bastion.stores._base import FailureMode, report_degraded
from bastion.stores._budget_store import (
    BudgetStore,
    CapCharge,
    ReserveMode,
    from_micros,
    to_micros,
)
from bastion.stores._keys import escape
from bastion.stores._memory import MemoryStore

__all__ = ["BudgetConfig", "BudgetEnforcer", "BudgetExceeded", "Reservation", "usd"]

_log = logging.getLogger("bastion.budget")

_ON_EXCEEDED = ("throw", "warn", "truncate")
_FAILURE_MODES = ("open", "closed")
_STORE_MODE: dict[str, ReserveMode] = {"throw": "all", "warn": "force", "truncate": "partial"}
_KEEP_AFTER_PERIOD = 86_400.0  # a finished day's or month's counter stays readable one more day


def usd(value: object, option: str) -> Decimal:
    """A dollar amount >= 0 as a :class:`Decimal`.

    ``Decimal``, ``int`` and numeric strings are taken as they are; a float is
    read through its shortest repr (``0.1`` becomes ``Decimal("0.1")``, not
    the binary fraction a float really holds).
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        invalid(option, "an amount in US dollars (a Decimal, int or numeric string) >= 0", value)
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        invalid(option, "an amount in US dollars (a Decimal, int or numeric string) >= 0", value)
    if not amount.is_finite() or amount < 0:
        invalid(option, "a finite amount in US dollars >= 0", value)
    return amount


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetConfig:
    """Which spending caps apply, and what to do when a reservation does not fit."""

    max_usd_per_run: Decimal | int | float | str | None = None
    """Most one run (all the calls reserved under one ``run_id``) may spend."""
    max_usd_per_user: Decimal | int | float | str | None = None
    """Most one user may spend per day."""
    max_usd_per_tenant: Decimal | int | float | str | None = None
    """Most one tenant may spend per day."""
    max_usd_per_month: Decimal | int | float | str | None = None
    """Most everything together may spend per calendar month."""
    on_exceeded: Literal["throw", "warn", "truncate"] = "throw"
    """``"throw"``: refuse; ``"warn"``: reserve anyway and report; ``"truncate"``: reserve
    what still fits."""
    on_store_failure: FailureMode = "closed"
    """When the store cannot be reached: ``"closed"`` raises ``StoreUnavailableError``;
    ``"open"`` lets the call go unchecked (and still tries to record what it spent)."""
    timezone: tzinfo = UTC
    """Where days and months begin and end."""
    reservation_ttl: float = 900.0
    """Seconds a reservation holds its amount unless settled or released first: the most a
    crashed process can block a budget, and longer than any call should take."""
    run_ttl: float = 86_400.0
    """Seconds a run's spend is remembered after its latest reservation or settlement."""

    def __post_init__(self) -> None:
        caps = 0
        for option in (
            "max_usd_per_run",
            "max_usd_per_user",
            "max_usd_per_tenant",
            "max_usd_per_month",
        ):
            value = getattr(self, option)
            if value is not None:
                amount = usd(value, f"BudgetConfig.{option}")
                if amount <= 0:
                    invalid(f"BudgetConfig.{option}", "an amount > 0, or None for no cap", value)
                object.__setattr__(self, option, amount)
                caps += 1
        if caps == 0:
            invalid(
                "BudgetConfig.max_usd_per_run",
                "set (or another max_usd_per_* cap): a budget with no cap limits nothing",
                None,
            )
        one_of(self.on_exceeded, "BudgetConfig.on_exceeded", _ON_EXCEEDED)
        one_of(self.on_store_failure, "BudgetConfig.on_store_failure", _FAILURE_MODES)
        if not isinstance(self.timezone, tzinfo):
            invalid("BudgetConfig.timezone", "a tzinfo such as datetime.UTC", self.timezone)
        positive_number(self.reservation_ttl, "BudgetConfig.reservation_ttl", unit="seconds")
        positive_number(self.run_ttl, "BudgetConfig.run_ttl", unit="seconds")


class Reservation:
    """Money held on every applicable cap until :meth:`settle` or :meth:`release`.

    ``amount_usd`` is what is held (less than ``requested_usd`` when
    truncated); ``exceeded`` names the cap a ``warn`` or ``truncate``
    reservation ran into (None when everything fit); ``checked`` is false when
    the store was down and ``on_store_failure="open"`` let the call through.

    As an async context manager it releases on an exception and, if the block
    ends without :meth:`settle`, settles the whole held amount -- the safe
    guess when nobody reported the real cost.

    A reservation is settled or released once: a second call -- even one
    made while the first is still waiting for the store -- raises
    ``RuntimeError``. A settle or release that fails leaves it open, so it
    can be retried; the store adds a settlement only while the hold is there,
    so a retry after a first attempt that did run (its reply lost to a
    timeout) still counts once.
    """

    __slots__ = (
        "_caps",
        "_enforcer",
        "_hold_until",
        "_state",
        "amount_usd",
        "checked",
        "exceeded",
        "id",
        "requested_usd",
    )

    def __init__(
        self,
        enforcer: BudgetEnforcer,
        *,
        id: str,
        caps: tuple[CapCharge, ...],
        amount_usd: Decimal,
        requested_usd: Decimal,
        exceeded: str | None,
        checked: bool,
        hold_until: float,
    ) -> None:
        self._enforcer = enforcer
        self._caps = caps
        self._hold_until = hold_until
        self._state = "open"
        self.id = id
        self.amount_usd = amount_usd
        self.requested_usd = requested_usd
        self.exceeded = exceeded
        self.checked = checked

    def __repr__(self) -> str:
        return (
            f"Reservation(id={self.id!r}, amount_usd={self.amount_usd!r}, "
            f"requested_usd={self.requested_usd!r}, state={self._state!r})"
        )

    @property
    def state(self) -> str:
        """``"open"``, ``"settling"``, ``"releasing"``, ``"settled"`` or ``"released"``."""
        return self._state

    async def settle(self, actual_usd: Decimal | int | float | str) -> None:
        """Record ``actual_usd`` as spent on every cap and drop the hold, atomically.

        The actual cost may exceed what was reserved (the money is spent
        either way); it is recorded as it is.
        """
        amount = to_micros(usd(actual_usd, "actual_usd"))
        self._begin("settle", "settling")
        try:
            await self._enforcer._settle(self, self._caps, amount)
        except BaseException:
            self._state = "open"  # nothing known to be recorded: a retry may finish the job
            raise
        self._state = "settled"

    async def release(self) -> None:
        """Drop the hold without spending: the call failed before costing anything."""
        self._begin("release", "releasing")
        try:
            await self._enforcer._release(self, self._caps)
        except BaseException:
            self._state = "open"
            raise
        self._state = "released"

    def _begin(self, verb: str, state: str) -> None:
        """Claim the reservation for one settle or release, before any await (no second one)."""
        self._check_open(verb)
        self._state = state

    def _check_open(self, verb: str) -> None:
        if self._state != "open":
            msg = f"cannot {verb} reservation {self.id!r}: it is already {self._state}"
            raise RuntimeError(msg)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        if exc_type is None:
            await self.settle(self.amount_usd)
        else:
            await self.release()


class BudgetEnforcer:
    """Reserve, settle and release spend against the caps of a :class:`BudgetConfig`.

    ``store`` is where spend lives: a shared store (SQL, Redis) makes the caps
    hold across every process using it; the default is a private
    :class:`~bastion.stores.MemoryStore`.
    """

    __slots__ = ("_bus", "_limits", "clock", "config", "name", "store")

    def __init__(
        self,
        config: BudgetConfig,
        *,
        store: BudgetStore | None = None,
        name: str = "budget",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        if not isinstance(config, BudgetConfig):
            invalid("BudgetEnforcer.config", "a BudgetConfig(max_usd_per_... = ...)", config)
        if store is None:
            store = MemoryStore(clock=clock)
        elif not isinstance(store, BudgetStore):
            invalid("BudgetEnforcer.store", "a store with budgets (open_store(url))", store)
        self.config = config
        self.store = store
        self.name = name
        self.clock = clock
        self._bus = bus
        self._limits = {
            cap: to_micros(Decimal(value), up=False)
            for cap, value in (
                ("run", config.max_usd_per_run),
                ("user", config.max_usd_per_user),
                ("tenant", config.max_usd_per_tenant),
                ("month", config.max_usd_per_month),
            )
            if value is not None
        }

    def __repr__(self) -> str:
        c = self.config
        return (
            f"BudgetEnforcer(name={self.name!r}, run={c.max_usd_per_run!r}, "
            f"user={c.max_usd_per_user!r}, tenant={c.max_usd_per_tenant!r}, "
            f"month={c.max_usd_per_month!r}, on_exceeded={c.on_exceeded!r})"
        )

    async def reserve(
        self,
        amount_usd: Decimal | int | float | str,
        *,
        run_id: str | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
    ) -> Reservation:
        """Hold ``amount_usd`` (the call's worst-case cost) on every cap that applies.

        The user and tenant caps apply when their id is given; the run cap
        sums every reservation made with the same ``run_id`` (without one, the
        reservation is a run of its own). Raises :class:`BudgetExceededError`
        when it does not fit (see ``on_exceeded``).
        """
        requested = usd(amount_usd, "amount_usd")
        amount = to_micros(requested)
        now = self.clock.time()
        hold_until = now + self.config.reservation_ttl
        reservation_id = uuid.uuid4().hex
        names, caps = self._caps(now, hold_until, run_id or reservation_id, user_id, tenant_id)
        mode = _STORE_MODE[self.config.on_exceeded]
        try:
            outcome = await self.store.reserve(
                reservation_id, caps, amount, mode=mode, now=now, hold_until=hold_until
            )
        except StoreUnavailableError as exc:
            self._degraded(exc)
            return Reservation(
                self,
                id=reservation_id,
                caps=caps,
                amount_usd=requested,
                requested_usd=requested,
                exceeded=None,
                checked=False,
                hold_until=hold_until,
            )
        exceeded = None
        if outcome.over != -1:
            exceeded = names[outcome.over]
            self._exceeded(
                exceeded,
                caps[outcome.over],
                outcome.committed[outcome.over],
                requested,
                outcome.granted,
            )
        return Reservation(
            self,
            id=reservation_id,
            caps=caps,
            amount_usd=from_micros(outcome.granted),
            requested_usd=requested,
            exceeded=exceeded,
            checked=True,
            hold_until=hold_until,
        )

    async def spent(
        self,
        *,
        run_id: str | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
    ) -> dict[str, Decimal]:
        """What is settled or reserved now on each cap that applies (``{"run": ..., ...}``)."""
        now = self.clock.time()
        names, caps = self._caps(now, now, run_id, user_id, tenant_id)
        committed = await self.store.committed(caps, now=now)
        return {name: from_micros(value) for name, value in zip(names, committed, strict=True)}

    def _caps(
        self,
        now: float,
        hold_until: float,
        run_id: str | None,
        user_id: str | None,
        tenant_id: str | None,
    ) -> tuple[tuple[str, ...], tuple[CapCharge, ...]]:
        """The caps a call with these ids counts against, with this period's keys."""
        limits = self._limits
        local = datetime.fromtimestamp(now, self.config.timezone)
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        day_end = _next(day_start, days=1).timestamp() + _KEEP_AFTER_PERIOD
        day = day_start.strftime("%Y-%m-%d")
        names: list[str] = []
        caps: list[CapCharge] = []

        def add(name: str, key: str, expires_at: float) -> None:
            names.append(name)
            caps.append(CapCharge(key, limits[name], max(expires_at, hold_until)))

        if "run" in limits and run_id is not None:
            add("run", f"budget:run:{escape(run_id)}", now + self.config.run_ttl)
        if "user" in limits and user_id is not None:
            add("user", f"budget:user:{escape(user_id)}:{day}", day_end)
        if "tenant" in limits and tenant_id is not None:
            add("tenant", f"budget:tenant:{escape(tenant_id)}:{day}", day_end)
        if "month" in limits:
            month_start = day_start.replace(day=1)
            month_end = _next(month_start, months=1).timestamp() + _KEEP_AFTER_PERIOD
            add("month", f"budget:month:{month_start.strftime('%Y-%m')}", month_end)
        return tuple(names), tuple(caps)

    def _exceeded(
        self, cap: str, charge: CapCharge, committed: int, requested: Decimal, granted: int
    ) -> None:
        on_exceeded = self.config.on_exceeded
        if granted == 0:
            action = "refused"
        elif on_exceeded == "warn":
            action = "warned"
        else:
            action = "truncated"
        limit_usd, spent_usd = from_micros(charge.limit), from_micros(committed)
        (self._bus if self._bus is not None else default_bus()).emit(
            BudgetExceeded(
                source=self.name,
                cap=cap,
                limit_usd=limit_usd,
                spent_usd=spent_usd,
                requested_usd=requested,
                action=action,
            )
        )
        if action == "refused":
            raise BudgetExceededError(cap, limit_usd=limit_usd, spent_usd=spent_usd)
        _log.warning(
            "%s: budget cap %r: $%s spent or reserved of $%s; $%s requested, %s",
            self.name,
            cap,
            spent_usd,
            limit_usd,
            requested,
            action,
        )

    def _degraded(self, exc: StoreUnavailableError) -> None:
        mode = self.config.on_store_failure
        report_degraded(exc, source=self.name, mode=mode, bus=self._bus)
        if mode == "closed":
            raise exc

    async def _settle(
        self, reservation: Reservation, caps: tuple[CapCharge, ...], amount: int
    ) -> None:
        now = self.clock.time()
        refreshed = tuple(
            CapCharge(cap.key, cap.limit, max(cap.expires_at, now + self.config.run_ttl))
            if cap.key.startswith("budget:run:")
            else cap
            for cap in caps
        )
        # Only a live hold makes a settle idempotent; one never made (the store was down) or
        # already expired cannot be found again, so its amount is added unconditionally.
        if_held = reservation.checked and now < reservation._hold_until
        try:
            await self.store.settle(reservation.id, refreshed, amount, now=now, if_held=if_held)
        except StoreUnavailableError as exc:
            self._degraded(exc)

    async def _release(self, reservation: Reservation, caps: tuple[CapCharge, ...]) -> None:
        try:
            await self.store.release(reservation.id, caps)
        except StoreUnavailableError as exc:
            # The hold expires on its own after reservation_ttl; nothing was spent.
            report_degraded(exc, source=self.name, mode="open", bus=self._bus)


def _next(start: datetime, *, days: int = 0, months: int = 0) -> datetime:
    """The start of the next day or month after ``start`` (a local midnight), DST-proof.

    Adding 24 hours to a midnight lands at 23:00 or 01:00 on a DST change; the
    calendar date is advanced instead and midnight rebuilt in the zone.
    """
    if months:
        year, month = divmod(start.month, 12)
        return start.replace(year=start.year + year, month=month + 1, day=1)
    following = (start + timedelta(days=days, hours=12)).date()
    return datetime(following.year, following.month, following.day, tzinfo=start.tzinfo)
