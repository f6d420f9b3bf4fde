"""What every store is, and how a store that does not answer becomes one typed error.

Each concern (rate limits, budgets, and later idempotency, audit, ...) has its
own small protocol; a backend implements the ones it can do atomically. What
they all share is here: a name for logs and errors, scoping, a health ping,
closing -- and the rule that a store never hangs and never leaks a driver's
exception. Every operation on a shared store runs under a per-operation
timeout; a timeout or a connection failure becomes
:class:`~bastion._core.errors.StoreUnavailableError`, so each concern can apply
its declared failure mode (fail-open or fail-closed) to one error type.

Errors that mean a bug (a malformed query, a type error) are *not* translated:
hiding them behind "unavailable" would turn a crash into silent fail-open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, Self, TypeVar, runtime_checkable

from bastion._core.errors import StoreUnavailableError, summarize
from bastion._core.events import Event, EventBus, default_bus

__all__ = [
    "FailureMode",
    "Store",
    "StoreDegraded",
    "call_store",
    "report_degraded",
]

T = TypeVar("T")

_log = logging.getLogger("bastion.stores")

FailureMode = Literal["open", "closed"]
"""What a concern does when its store is unavailable: ``"open"`` lets the call through
unchecked, ``"closed"`` refuses it by raising :class:`StoreUnavailableError`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreDegraded(Event):
    """A concern could not reach its store and applied its failure mode.

    ``action`` is ``"allowed"`` (fail-open: the call went ahead unchecked) or
    ``"refused"`` (fail-closed: the caller got ``StoreUnavailableError``).
    """

    backend: str
    operation: str
    reason: str
    action: str


@runtime_checkable
class Store(Protocol):
    """What every backend offers, whatever concerns it implements."""

    @property
    def backend(self) -> str:
        """``"memory"``, ``"sqlite"``, ``"postgresql"`` or ``"redis"``: for logs and errors."""
        ...

    @property
    def scope(self) -> tuple[str, ...]:
        """The scope names this view is confined to, outermost first (``()`` at the root)."""
        ...

    def scoped(self, name: str) -> Self:
        """A view whose every key is prefixed by ``name``: it never sees keys outside it.

        Views share the root store's connections; close the root, not the views.
        """
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise :class:`StoreUnavailableError` otherwise."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store (and every view of it) is unusable afterwards."""
        ...


async def call_store(
    backend: str,
    operation: str,
    timeout: float,
    work: Awaitable[T],
    unavailable: Callable[[Exception], bool],
) -> T:
    """Await ``work`` within ``timeout`` seconds, translating "no answer" into one error.

    ``unavailable(exc)`` says whether a driver's exception means the server
    cannot be reached or lost the connection; a timeout always counts. The
    driver's exception stays attached as ``__cause__`` for debugging.
    """
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError as exc:
        reason = f"no answer within {timeout:g}s"
        raise StoreUnavailableError(backend, operation=operation, reason=reason) from exc
    except StoreUnavailableError:
        raise
    except Exception as exc:
        if not unavailable(exc):
            raise
        raise StoreUnavailableError(backend, operation=operation, reason=summarize(exc)) from exc


def report_degraded(
    error: StoreUnavailableError, *, source: str, mode: FailureMode, bus: EventBus | None
) -> None:
    """Log and emit that ``source`` applied failure mode ``mode`` after ``error``.

    Called on the failure path only, so building the event costs the success
    path nothing.
    """
    action = "allowed" if mode == "open" else "refused"
    _log.warning(
        "%s: store %r unavailable during %s (%s); failing %s: call %s",
        source,
        error.backend,
        error.operation,
        error.reason,
        mode,
        action,
    )
    (bus if bus is not None else default_bus()).emit(
        StoreDegraded(
            source=source,
            backend=error.backend,
            operation=error.operation,
            reason=error.reason,
            action=action,
        )
    )
