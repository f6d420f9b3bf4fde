"""Add up what model calls cost, per model, against an optional budget.

The tracker is the in-process ledger of one agent, script or test: every
completion is priced as it arrives (:class:`~bastion.models._pricing.PricingTable`)
and summed in :class:`~decimal.Decimal`. It records *after* the fact -- the
money is spent once the provider answered -- so crossing the budget cannot be
prevented here, only reported: ``"raise"`` makes every record that leaves the
total over budget raise :class:`~bastion._core.errors.BudgetExceededError`
(the spend is recorded first, so the ledger stays true), which stops an agent
loop at its next step; ``"warn"`` issues one :class:`BudgetWarning` when the
total first crosses the budget and lets work go on. Budgets shared across
processes, reserved before each call, belong to the stores layer.

A model without a price raises :class:`~bastion.models._pricing.UnknownModelError`
rather than counting as free: a budget that silently ignores a model is no
budget.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal, overload

from bastion._core.errors import BudgetExceededError, ConfigurationError
from bastion._core.events import BudgetExceeded, EventBus, default_bus
from bastion._core.usage import Usage
from bastion._core.validate import one_of
from bastion.models._pricing import PricingTable
from bastion.models._types import Completion

__all__ = ["BudgetExceeded", "BudgetWarning", "CostTracker", "ModelSpend"]

OnBudgetExceeded = Literal["raise", "warn"]
_ACTIONS: Final = ("raise", "warn")


class BudgetWarning(UserWarning):
    """A :class:`CostTracker` with ``on_budget_exceeded="warn"`` went over its budget."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpend:
    """What one model consumed: calls, tokens and USD."""

    model: str
    calls: int
    usage: Usage
    cost_usd: Decimal


def _budget_usd(value: object) -> Decimal | None:
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, int | float | str | Decimal):
        try:
            number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        except ArithmeticError:
            number = Decimal("NaN")
        if number.is_finite() and number >= 0:
            return number
    raise ConfigurationError(
        "CostTracker.budget must be an amount in USD >= 0 (a Decimal, a number or a numeric "
        f"string), or None for no budget; got {value!r}"
    )


class CostTracker:
    """Prices and sums completions, per model, and watches an optional budget.

    Thread-safe. ``name`` identifies the tracker in events.
    """

    __slots__ = (
        "_budget",
        "_bus",
        "_by_model",
        "_lock",
        "_on_exceeded",
        "_over",
        "_pricing",
        "_total",
        "name",
    )

    def __init__(
        self,
        *,
        budget: Decimal | int | float | str | None = None,
        on_budget_exceeded: OnBudgetExceeded = "raise",
        pricing: PricingTable | None = None,
        name: str = "tracker",
        bus: EventBus | None = None,
    ) -> None:
        one_of(on_budget_exceeded, "CostTracker.on_budget_exceeded", _ACTIONS)
        if pricing is not None and not isinstance(pricing, PricingTable):
            raise ConfigurationError(
                "CostTracker.pricing must be a PricingTable (e.g. "
                f"PricingTable.default().with_overrides({{...}})) or None; got {pricing!r}"
            )
        self._budget = _budget_usd(budget)
        self.name = name
        self._on_exceeded: OnBudgetExceeded = on_budget_exceeded
        self._pricing = pricing if pricing is not None else PricingTable.default()
        self._bus = bus
        self._lock = threading.Lock()
        self._by_model: dict[str, tuple[int, Usage, Decimal]] = {}
        self._total = Decimal(0)
        self._over = False

    @overload
    def record(self, completion: Completion, /) -> Decimal: ...
    @overload
    def record(self, model: str, usage: Usage, /) -> Decimal: ...
    def record(self, completion: Completion | str, usage: Usage | None = None, /) -> Decimal:
        """Price and add one call; returns its cost in USD.

        Pass a :class:`Completion` (its ``model`` and ``usage`` are used), or a
        model name and a :class:`Usage`.
        """
        if isinstance(completion, Completion):
            if usage is not None:
                msg = "record(completion) takes no usage: the completion carries its own"
                raise TypeError(msg)
            model, usage = completion.model, completion.usage
        elif isinstance(completion, str) and isinstance(usage, Usage):
            model = completion
        else:
            msg = "record() takes a Completion, or a model name and a Usage"
            raise TypeError(msg)
        cost = self._pricing.cost(model, usage)
        with self._lock:
            calls, used, spent = self._by_model.get(model, (0, Usage(), Decimal(0)))
            self._by_model[model] = (calls + 1, used + usage, spent + cost)
            self._total += cost
            total = self._total
            over = self._budget is not None and total > self._budget
            crossed = over and not self._over
            self._over = over
        if over and self._budget is not None:
            self._exceeded(self._budget, total, crossed)
        return cost

    @property
    def budget(self) -> Decimal | None:
        """The budget in USD, or None."""
        return self._budget

    def total_cost(self) -> Decimal:
        """USD spent over every recorded call."""
        with self._lock:
            return self._total

    def total_usage(self) -> Usage:
        """Tokens used over every recorded call."""
        with self._lock:
            entries = list(self._by_model.values())
        return sum((used for _, used, _ in entries), Usage())

    def remaining(self) -> Decimal | None:
        """USD left before the budget (negative once over it); None without a budget."""
        if self._budget is None:
            return None
        return self._budget - self.total_cost()

    def breakdown(self) -> dict[str, ModelSpend]:
        """Per model name as recorded: calls, tokens and USD."""
        with self._lock:
            entries = list(self._by_model.items())
        return {
            model: ModelSpend(model=model, calls=calls, usage=used, cost_usd=spent)
            for model, (calls, used, spent) in entries
        }

    def reset(self) -> None:
        """Forget every recorded call (a new run, a new period)."""
        with self._lock:
            self._by_model.clear()
            self._total = Decimal(0)
            self._over = False

    def _exceeded(self, budget: Decimal, total: Decimal, crossed: bool) -> None:
        if self._on_exceeded == "warn" and not crossed:
            return
        bus = self._bus if self._bus is not None else default_bus()
        bus.emit(
            BudgetExceeded(
                source=self.name,
                cap="tracker",
                limit_usd=budget,
                spent_usd=total,
                action=self._on_exceeded,
            )
        )
        if self._on_exceeded == "raise":
            raise BudgetExceededError("tracker", limit_usd=budget, spent_usd=total)
        warnings.warn(
            f"cost tracker {self.name!r} is over its budget: ${total} spent of ${budget}",
            BudgetWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        budget = "no budget" if self._budget is None else f"budget=${self._budget}"
        return f"CostTracker({self.name!r}, spent=${self.total_cost()}, {budget})"
