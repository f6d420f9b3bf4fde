"""How a resilient agent is doing, in one report a probe or an operator can read.

Counters are kept per agent as runs finish; the report turns them into a
status by these rules, first match wins:

1. ``unhealthy`` -- the agent is shutting down, or its circuit is ``open`` or
   ``forced_open`` (calls are being refused);
2. ``degraded`` -- the circuit is ``half_open`` (probing a recovering callee),
   or at least ``degraded_failure_rate`` (default 25 %) of the last
   ``recent_runs`` (default 20) finished runs failed, once at least
   ``min_runs`` (default 5) of them were seen, or a shared store of the
   agent's (its rate limiter's) could not be reached within the last
   ``store_degraded_for`` seconds (default 30);
3. ``healthy`` otherwise.

A store that does not answer makes the agent ``degraded`` and never
``unhealthy``, whichever failure mode its concern declared. Fail-open calls
still go through. Fail-closed calls are refused, yet ``unhealthy`` would be
the wrong signal: it tells a load balancer to send work to another
instance, and every instance shares the same store, so all of them would
leave rotation at once; and since recovery is seen only when the quiet
period ends (see :mod:`bastion.resilience._store_health`), the status would
outlast the outage -- a 2-second Redis blip would become 30 seconds of a
service refusing everything. The refusals stay visible: each run raises
``StoreUnavailableError`` (HTTP 503) and counts in the recent failure rate,
and the report's ``degraded_stores`` entry says ``action="refused"``. A
readiness check that must follow a store exactly pings it with
:func:`~bastion.resilience.check_stores`.

A run served by a fallback counts as a success that was degraded
(``fallback_runs``), and the primary's failure behind it counts in the recent
failure rate and ``last_error``: a primary that is down makes the agent
``degraded`` even while backups answer every request. A run refused before
it started (rate limit, full bulkhead, open circuit, draining) counts in
``total_rejected``, not as a failure of the agent: the agent did nothing
wrong. Latency percentiles come from the last ``latency_samples`` (default
1024) runs.
"""

from __future__ import annotations

import enum
import math
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import RejectedError, summarize
from bastion._core.validate import fraction, invalid, positive_number, whole_number
from bastion.resilience._store_health import DegradedStore, StoreHealth

__all__ = ["HealthConfig", "HealthReport", "HealthStatus", "HealthTracker"]


class HealthStatus(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """The thresholds that turn counters into a status (see the module docs)."""

    recent_runs: int = 20
    degraded_failure_rate: float = 0.25
    min_runs: int = 5
    latency_samples: int = 1024
    store_degraded_for: float = 30.0
    """Seconds a store stays degraded in the report after the latest failure to reach it: long
    enough to ride out a store that flaps and to be seen by a scrape every 15 s, as short as the
    circuit breaker's default ``reset_timeout``."""

    def __post_init__(self) -> None:
        for option in ("recent_runs", "min_runs", "latency_samples"):
            whole_number(getattr(self, option), f"HealthConfig.{option}")
        positive_number(self.store_degraded_for, "HealthConfig.store_degraded_for", unit="seconds")
        fraction(self.degraded_failure_rate, "HealthConfig.degraded_failure_rate", hint="e.g. 0.25")
        if self.min_runs > self.recent_runs:
            invalid(
                "HealthConfig.min_runs",
                f"<= recent_runs ({self.recent_runs}), or the rule could never fire",
                self.min_runs,
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """A snapshot of one agent's health; ``to_dict()`` gives a JSON-ready form.

    ``degraded_stores`` lists the shared stores the agent's parts could not
    reach lately (empty when all answer, or when no part uses a store).
    """

    name: str
    status: HealthStatus
    circuit_state: str | None
    total_runs: int
    total_failures: int
    total_rejected: int
    fallback_runs: int
    recent_failure_rate: float
    average_latency_ms: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    uptime_s: float
    last_error: str | None
    last_run_at: float | None
    in_flight: int
    shutting_down: bool
    degraded_stores: tuple[DegradedStore, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["degraded_stores"] = [asdict(store) for store in self.degraded_stores]
        return data


class HealthTracker:
    """Counts finished runs; thread-safe, O(1) per run.

    ``stores`` is what it asks, at report time only, about the agent's shared
    stores; a run never touches it.
    """

    def __init__(
        self,
        *,
        config: HealthConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stores: StoreHealth | None = None,
    ) -> None:
        self.config = config or HealthConfig()
        self._clock = clock
        self._stores = stores
        self._lock = threading.Lock()
        self._started = clock.monotonic()
        self._runs = 0
        self._failures = 0
        self._rejected = 0
        self._fallbacks = 0
        self._latency_total = 0.0
        self._latencies: deque[float] = deque(maxlen=self.config.latency_samples)
        self._recent: deque[bool] = deque(maxlen=self.config.recent_runs)
        self._recent_failures = 0
        self._last_error: str | None = None
        self._last_run_at: float | None = None

    def record(
        self,
        duration: float,
        error: BaseException | None = None,
        *,
        fallback: bool = False,
        primary_error: BaseException | None = None,
    ) -> None:
        """Count one finished run.

        ``error`` None means it succeeded. When a backup served it
        (``fallback=True``), ``primary_error`` is why the primary did not: the
        run succeeded, but the primary's failure still counts in the recent
        failure rate and ``last_error``, so a primary that is down shows as
        ``degraded`` even while every answer arrives.
        """
        now = self._clock.time()
        with self._lock:
            self._last_run_at = now
            if isinstance(error, RejectedError):
                self._rejected += 1
                return
            self._runs += 1
            self._latency_total += duration
            self._latencies.append(duration)
            failure = error if error is not None else primary_error
            recent = self._recent
            if len(recent) == recent.maxlen and recent[0]:
                self._recent_failures -= 1
            recent.append(failure is not None)
            if failure is not None:
                self._recent_failures += 1
                self._last_error = summarize(failure)
            if error is not None:
                self._failures += 1
            elif fallback:
                self._fallbacks += 1

    def report(
        self, *, name: str, circuit_state: str | None, in_flight: int, shutting_down: bool
    ) -> HealthReport:
        with self._lock:
            latencies = sorted(self._latencies)
            recent_count = len(self._recent)
            recent_rate = self._recent_failures / recent_count if recent_count else 0.0
            runs = self._runs
            average = self._latency_total / runs * 1000 if runs else None
            snapshot = (self._failures, self._rejected, self._fallbacks, self._last_error)
            last_run_at = self._last_run_at
        failures, rejected, fallbacks, last_error = snapshot
        degraded_stores = self._stores.degraded() if self._stores is not None else ()
        cfg = self.config
        if shutting_down or circuit_state in ("open", "forced_open"):
            status = HealthStatus.UNHEALTHY
        elif (
            circuit_state == "half_open"
            or degraded_stores
            or (recent_count >= cfg.min_runs and recent_rate >= cfg.degraded_failure_rate)
        ):
            status = HealthStatus.DEGRADED
        else:
            status = HealthStatus.HEALTHY
        return HealthReport(
            name=name,
            status=status,
            circuit_state=circuit_state,
            total_runs=runs,
            total_failures=failures,
            total_rejected=rejected,
            fallback_runs=fallbacks,
            recent_failure_rate=recent_rate,
            average_latency_ms=average,
            p50_latency_ms=_percentile_ms(latencies, 0.50),
            p95_latency_ms=_percentile_ms(latencies, 0.95),
            p99_latency_ms=_percentile_ms(latencies, 0.99),
            uptime_s=self._clock.monotonic() - self._started,
            last_error=last_error,
            last_run_at=last_run_at,
            in_flight=in_flight,
            shutting_down=shutting_down,
            degraded_stores=degraded_stores,
        )


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest sample with at least q of all samples at or below."""
    if not ordered:
        return None
    rank = max(math.ceil(q * len(ordered)), 1)
    return ordered[rank - 1] * 1000
