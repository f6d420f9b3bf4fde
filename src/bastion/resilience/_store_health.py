"""Which shared stores are failing, seen two ways: what the concerns met, and what a ping finds.

A concern that cannot reach its store (a rate limiter on Redis, a budget on
PostgreSQL) applies its failure mode and emits
:class:`~bastion.stores.StoreDegraded`. Nothing about one such event says
how the service is doing; an operator needs the sum of them. Two tools give
it, for two different questions:

* :class:`StoreHealth` -- "did a concern lately have to fail open or closed?"
  It listens for ``StoreDegraded`` on a bus and keeps, per (backend, source),
  the latest event. Concerns emit only on the failure path, so while the
  stores answer, watching costs a call nothing. A store stays degraded until
  ``degraded_for`` seconds pass without a new event. Recovery is by time
  alone, on purpose: a store operation that succeeds emits nothing (that is
  what keeps the success path free), so there is no success to observe; and
  the quiet period is hysteresis -- a store failing every other call stays
  degraded rather than flipping state on each call.
* :func:`check_stores` -- "does each store answer right now?" It pings every
  store concurrently, each under a bound, and returns one result per store.
  It is exact and live, so it is what a readiness endpoint asks; it never
  raises for a store that fails, and it never hangs.

This module sits in the resilience layer and only reads the stores layer
(their events and their ``ping``); stores never learn they are watched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import (
    CallTimeoutError,
    ConfigurationError,
    StoreUnavailableError,
    summarize,
)
from bastion._core.events import EventBus, default_bus
from bastion._core.validate import positive_number
from bastion.resilience._timeout import call_with_timeout
from bastion.stores._base import Store, StoreDegraded

__all__ = ["DegradedStore", "StoreCheck", "StoreHealth", "check_stores"]

_log = logging.getLogger("bastion.resilience.health")

# A probe's own timeout is its answer ("unavailable"), not a call that timed
# out: emitting CallTimedOut for it would count health checks as failed calls
# in every exporter. The probe's bound therefore reports to a bus nobody hears.
_QUIET = EventBus()


@dataclass(frozen=True, slots=True, kw_only=True)
class DegradedStore:
    """One store a concern could not reach lately, as its latest ``StoreDegraded`` said.

    ``operation``, ``reason`` and ``action`` come from the latest event;
    ``action`` is what the concern did: ``"allowed"`` (it failed open, calls
    went through unchecked) or ``"refused"`` (it failed closed, callers got
    ``StoreUnavailableError``). ``events`` counts the events of this episode,
    which began at the first event after the store was last healthy, so
    ``seconds_since_first`` tells a long outage from a blip.
    """

    backend: str
    source: str
    operation: str
    reason: str
    action: str
    events: int
    seconds_since_first: float
    seconds_since_last: float


class _Episode:
    """The running tally of one (backend, source) while it stays degraded."""

    __slots__ = ("count", "first", "last", "latest")

    def __init__(self, event: StoreDegraded, now: float) -> None:
        self.latest = event
        self.first = now
        self.last = now
        self.count = 1


class StoreHealth:
    """Which stores the concerns on ``bus`` could not reach in the last ``degraded_for`` seconds.

    ``sources`` keeps only the concerns with those names (the ``source`` of
    their events: a limiter's or a budget's ``name``); None keeps every
    concern on the bus -- the process-wide view a gateway wants. A
    :class:`~bastion.ResilientAgent` builds one for its own store-backed
    parts, which is how its ``health()`` learns about them.

    It subscribes when built and unsubscribes on :meth:`close` or when it is
    garbage-collected, so building one per agent never leaves subscriptions
    behind on a shared (or the default) bus. Thread-safe.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_degraded_for",
        "_episodes",
        "_lock",
        "_sources",
        "_unsubscribe",
    )

    def __init__(
        self,
        *,
        bus: EventBus | None = None,
        clock: Clock = SYSTEM_CLOCK,
        degraded_for: float = 30.0,
        sources: Iterable[str] | None = None,
    ) -> None:
        self._degraded_for = positive_number(
            degraded_for, "StoreHealth.degraded_for", unit="seconds"
        )
        if isinstance(sources, str):
            msg = (
                f"StoreHealth.sources must be a collection of names, e.g. ({sources!r},), "
                f"or None for every source; got the single string {sources!r}"
            )
            raise ConfigurationError(msg)
        self._sources = None if sources is None else frozenset(sources)
        self._clock = clock
        self._lock = threading.Lock()
        self._episodes: dict[tuple[str, str], _Episode] = {}
        # The bus must not keep this object alive: the subscriber reaches it
        # through a weak reference, and the finalizer unsubscribes once it is gone.
        ref = weakref.ref(self)

        def deliver(event: StoreDegraded) -> None:
            health = ref()
            if health is not None:
                health._record(event)

        unsubscribe = (bus if bus is not None else default_bus()).subscribe(deliver, StoreDegraded)
        self._unsubscribe = weakref.finalize(self, unsubscribe)
        self._unsubscribe.atexit = False

    def __repr__(self) -> str:
        watched = "every source" if self._sources is None else sorted(self._sources)
        return f"<StoreHealth {watched} degraded_for={self._degraded_for:g}s>"

    @property
    def degraded_for(self) -> float:
        """Seconds a store stays degraded after the latest event about it."""
        return self._degraded_for

    @property
    def closed(self) -> bool:
        """Whether it stopped listening (:meth:`close`); it still reports what it saw."""
        return not self._unsubscribe.alive

    def close(self) -> None:
        """Stop listening to the bus; idempotent."""
        self._unsubscribe()

    def degraded(self) -> tuple[DegradedStore, ...]:
        """The stores degraded now, ordered by backend then source; ``()`` when all answer."""
        now = self._clock.monotonic()
        window = self._degraded_for
        with self._lock:
            episodes = self._episodes
            for key in [key for key, ep in episodes.items() if now - ep.last >= window]:
                del episodes[key]
            current = sorted(episodes.items())
        return tuple(
            DegradedStore(
                backend=backend,
                source=source,
                operation=ep.latest.operation,
                reason=ep.latest.reason,
                action=ep.latest.action,
                events=ep.count,
                seconds_since_first=now - ep.first,
                seconds_since_last=now - ep.last,
            )
            for (backend, source), ep in current
        )

    def _record(self, event: StoreDegraded) -> None:
        sources = self._sources
        if sources is not None and event.source not in sources:
            return
        now = self._clock.monotonic()
        key = (event.backend, event.source)
        with self._lock:
            episode = self._episodes.get(key)
            if episode is None or now - episode.last >= self._degraded_for:
                self._episodes[key] = _Episode(event, now)
            else:
                episode.latest = event
                episode.last = now
                episode.count += 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreCheck:
    """What a ping of one store found; ``to_dict()`` gives a JSON-ready form.

    ``reason`` is None when the store answered, else why it did not (the
    store's own ``StoreUnavailableError`` reason, or ``"no answer within
    ...s"`` when the probe's bound ran out first). ``latency_ms`` is how long
    the answer -- or the failure -- took.
    """

    backend: str
    scope: tuple[str, ...]
    status: Literal["ok", "unavailable"]
    reason: str | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scope"] = list(self.scope)
        return data


async def check_stores(
    *stores: Store, timeout: float = 0.5, clock: Clock = SYSTEM_CLOCK
) -> tuple[StoreCheck, ...]:
    """Ping every store at once; one :class:`StoreCheck` per store, in the order given.

    Each ping runs under ``timeout`` seconds (default 0.5: the answer then
    fits well inside the 1 s a readiness probe is commonly given), on top of
    the store's own per-operation timeout, whichever ends first. A store that
    fails is reported, never raised, so one dead store cannot hide the
    others; an error that is not a store being unreachable (a bug) is reported
    too, and logged with its traceback on ``bastion.resilience.health``.
    """
    bound = positive_number(timeout, "check_stores(timeout)", unit="seconds")
    given: tuple[object, ...] = stores  # typed callers pass stores; others may pass a URL
    for store in given:
        if not isinstance(store, Store):
            msg = (
                f"check_stores() takes stores, got {store!r}; "
                "open one first with bastion.stores.open_store(url)"
            )
            raise ConfigurationError(msg)
    return tuple(await asyncio.gather(*(_check(store, bound, clock) for store in stores)))


async def _check(store: Store, timeout: float, clock: Clock) -> StoreCheck:
    backend = store.backend
    reason: str | None = None
    started = clock.monotonic()
    try:
        await call_with_timeout(
            store.ping, timeout, name=f"{backend} ping", clock=clock, scope="probe", bus=_QUIET
        )
    except CallTimeoutError:
        reason = f"no answer within {timeout:g}s"
    except StoreUnavailableError as exc:
        reason = exc.reason
    except Exception as exc:
        _log.warning("probing the %s store failed unexpectedly", backend, exc_info=True)
        reason = summarize(exc)
    return StoreCheck(
        backend=backend,
        scope=store.scope,
        status="ok" if reason is None else "unavailable",
        reason=reason,
        latency_ms=(clock.monotonic() - started) * 1000,
    )
