"""Typed events and the bus that carries them.

Primitives report what they decide -- a circuit opening, a retry scheduled, a
call shed -- as small frozen dataclasses on an :class:`EventBus`. Exporters
(logs, metrics, traces) subscribe; no primitive knows about any exporter.

Emitting is synchronous and cheap: with no subscriber for an event's type it is
one dictionary lookup. A subscriber that raises is logged and skipped, so a
broken metrics exporter can never fail a user's call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

__all__ = [
    "BudgetExceeded",
    "CallRejected",
    "CallTimedOut",
    "CircuitStateChanged",
    "Event",
    "EventBus",
    "FallbackUsed",
    "RetryBudgetExhausted",
    "RetryScheduled",
    "ShutdownStarted",
    "default_bus",
]

_log = logging.getLogger("bastion.events")

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: ``source`` names the primitive instance that emitted it."""

    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitStateChanged(Event):
    """A breaker moved between states; ``reason`` says which rule fired."""

    from_state: str
    to_state: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """An attempt failed with a transient error and another one will follow after ``delay``."""

    attempt: int
    delay: float
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetExhausted(Event):
    """A retry was wanted but the policy's retry budget had no room, so the error was raised."""

    attempt: int
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    """A call was refused before it ran (``reason``: rate_limited, bulkhead_full, ...)."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallTimedOut(Event):
    """An attempt (or the whole call) exceeded its timeout and was cancelled."""

    timeout: float
    scope: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """The primary did not serve; ``served_by`` did, after ``skipped`` were passed over."""

    served_by: str
    skipped: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetExceeded(Event):
    """Spending went, or would go, over the cap named ``cap``.

    ``action`` says what was done about it: ``"raise"`` or ``"refused"`` (the
    call was stopped), ``"warn"`` or ``"warned"`` (it went ahead), ``"truncated"``
    (it went ahead with less); ``requested_usd`` is what a refused reservation asked for.
    """

    cap: str
    limit_usd: Decimal
    spent_usd: Decimal
    action: str
    requested_usd: Decimal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownStarted(Event):
    """A resilient agent stopped admitting runs and is draining ``in_flight`` runs."""

    in_flight: int


Subscriber = Callable[[Any], object]


class EventBus:
    """Delivers events to the subscribers of their type (and of every base type).

    Thread-safe: subscribing and emitting may happen from any thread; delivery
    happens in the emitter's thread, in subscription order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_type: dict[type[Event], tuple[Subscriber, ...]] = {}
        self._resolved: dict[type[Any], tuple[Subscriber, ...]] = {}

    def subscribe(
        self, callback: Callable[[E], object], event_type: type[E] | None = None
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``event_type`` (default: all).

        Returns a function that removes the subscription.
        """
        kind: type[Event] = event_type if event_type is not None else Event
        with self._lock:
            self._by_type[kind] = (*self._by_type.get(kind, ()), callback)
            self._resolved = {}

        def unsubscribe() -> None:
            with self._lock:
                remaining = tuple(s for s in self._by_type.get(kind, ()) if s is not callback)
                if remaining:
                    self._by_type[kind] = remaining
                else:
                    self._by_type.pop(kind, None)
                self._resolved = {}

        return unsubscribe

    def has_subscribers(self, event_type: type[Event]) -> bool:
        """Whether emitting ``event_type`` would reach anyone (to skip building costly events)."""
        return bool(self._subscribers_of(event_type))

    def emit(self, event: Event) -> None:
        """Deliver ``event``; a failing subscriber is logged and never propagates."""
        for callback in self._subscribers_of(type(event)):
            try:
                callback(event)
            except Exception:
                _log.exception(
                    "event subscriber %r failed on %s; skipped", callback, type(event).__name__
                )

    def clear(self) -> None:
        """Remove every subscription (for test isolation)."""
        with self._lock:
            self._by_type = {}
            self._resolved = {}

    def _subscribers_of(self, event_type: type[Any]) -> tuple[Subscriber, ...]:
        resolved = self._resolved.get(event_type)
        if resolved is None:
            with self._lock:
                resolved = tuple(
                    callback
                    for kind in event_type.__mro__
                    for callback in self._by_type.get(kind, ())
                )
                self._resolved[event_type] = resolved
        return resolved


_DEFAULT_BUS = EventBus()


def default_bus() -> EventBus:
    """The process-wide bus every primitive emits to unless given ``bus=``."""
    return _DEFAULT_BUS
