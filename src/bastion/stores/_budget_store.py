"""The budget concern of a store: reserve against every cap at once, settle, release.

Money is stored as whole **micro-dollars** (``int``): a float cannot hold
$0.1 exactly, and a spend counter that drifts by a rounding error per call is
wrong after a million calls. Conversions round *against* the spender
(reservations and settlements up, limits down), so rounding can only make a
cap stricter, never looser.

A cap's *committed* amount is what was settled plus every live hold on it.
A hold is a reservation's claim on one cap; it lives until it is settled,
released, or its ``hold_until`` passes -- so a process that dies between
reserving and settling blocks the budget only until its holds expire, and no
sweeper has to find it. :func:`decide_reservation` is the one rule every
backend applies inside its atomic step (a lock, a transaction, a Lua script):
with ``committed[i] + amount <= limits[i]`` for every cap, concurrent
reservations can never overspend, because each one sees every earlier hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "BudgetStore",
    "CapCharge",
    "ReserveMode",
    "ReserveOutcome",
    "decide_reservation",
    "from_micros",
    "to_micros",
]

_MICRO = Decimal(1_000_000)

ReserveMode = Literal["all", "partial", "force"]
"""``"all"``: the whole amount or nothing; ``"partial"``: as much as every cap has room for;
``"force"``: the whole amount even past a cap (the enforcer's ``warn``)."""


def to_micros(usd: Decimal, *, up: bool = True) -> int:
    """Whole micro-dollars for ``usd``: rounded up (amounts) or down (``up=False``, limits)."""
    return int((usd * _MICRO).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR))


def from_micros(micros: int) -> Decimal:
    """Dollars for a micro-dollar count, exact (``Decimal('0.000001')`` per micro)."""
    return Decimal(micros) / _MICRO


@dataclass(frozen=True, slots=True)
class CapCharge:
    """One cap a reservation counts against.

    ``key`` names the counter (period included, e.g. ``user:alice:2026-11-24``);
    ``limit`` is in micro-dollars; ``expires_at`` (epoch seconds) is when the
    counter's period is over and the store may forget it.
    """

    key: str
    limit: int
    expires_at: float


class ReserveOutcome(NamedTuple):
    """What a reservation got.

    ``granted`` micro-dollars are now held on every cap (0 when refused).
    ``over`` is the position of the cap that refused, truncated or was passed
    (the one with least room), or -1 when the whole amount fit everywhere.
    ``committed`` is each cap's settled-plus-held amount *before* this
    reservation.
    """

    granted: int
    over: int
    committed: tuple[int, ...]


def decide_reservation(
    committed: Sequence[int], limits: Sequence[int], amount: int, mode: ReserveMode
) -> tuple[int, int]:
    """``(granted, over)`` for reserving ``amount`` on caps at ``committed`` of ``limits``."""
    over, room = -1, amount
    for i, limit in enumerate(limits):
        free = limit - committed[i]
        if free < room:
            over, room = i, free
    if over == -1 or mode == "force":
        return amount, over
    if mode == "partial":
        return max(room, 0), over
    return 0, over


@runtime_checkable
class BudgetStore(Protocol):
    """A store that keeps spend per cap and reserves against several caps atomically."""

    @property
    def backend(self) -> str:
        """The backend's name, for errors and logs."""
        ...

    async def reserve(
        self,
        reservation: str,
        caps: Sequence[CapCharge],
        amount: int,
        *,
        mode: ReserveMode,
        now: float,
        hold_until: float,
    ) -> ReserveOutcome:
        """Hold ``amount`` (or what ``mode`` grants) on every cap, as one atomic step.

        ``reservation`` is a unique id; the hold counts until ``hold_until``
        (epoch seconds) unless settled or released first.
        """
        ...

    async def settle(
        self,
        reservation: str,
        caps: Sequence[CapCharge],
        amount: int,
        *,
        now: float,
        if_held: bool = True,
    ) -> bool:
        """Drop the reservation's holds and record ``amount`` as spent, atomically.

        With ``if_held`` (the default) ``amount`` is added only to the caps
        the reservation still holds, so a settle sent twice -- retried after a
        timeout whose first attempt did run -- counts once. ``if_held=False``
        adds it everywhere: for a reservation that never got a hold (the store
        was down) or whose hold has expired. True when anything was added.
        """
        ...

    async def release(self, reservation: str, caps: Sequence[CapCharge]) -> None:
        """Drop the reservation's holds without spending anything (twice is harmless)."""
        ...

    async def committed(self, caps: Sequence[CapCharge], *, now: float) -> tuple[int, ...]:
        """Each cap's settled amount plus its live holds, in micro-dollars."""
        ...
