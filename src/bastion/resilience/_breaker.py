"""Stop calling a callee that keeps failing, and find out -- carefully -- when it has recovered.

When a provider is down, every call to it waits for a timeout, burns a retry
and holds a connection, and the retries of many callers together keep it down.
A circuit breaker notices the failures and fails calls fast instead
(:class:`~bastion._core.errors.CircuitOpenError`, with ``retry_after``), so
callers fall back or give up at once and the callee gets room to recover.

States::

                failures trip a rule                reset timeout elapsed
     CLOSED ─────────────────────────► OPEN ─────────────────────────► HALF_OPEN
       ▲                                 ▲                                  │
       │                                 └─── a probe fails (longer wait) ──┤
       └──────────────── success_threshold probes succeed ─────────────────┘

     DISABLED (admit all, record nothing) and FORCED_OPEN (reject all) are set by
     an operator with disable() / force_open() and left only through reset().

Time is read from the injected clock and nothing runs in the background: the
move from open to half-open happens when someone next asks (``acquire``,
``state``, ``metrics``, ``retry_after``) after the reset timeout has passed.

A caller drives one call as ``permit = acquire()``, then exactly one of
``record_success``, ``record_failure`` or ``release`` with that permit;
:meth:`CircuitBreaker.call` and the decorator do this for you. The permit
carries the *epoch* of the state it was issued in: every transition starts a
new epoch, so the verdict of a call admitted before a transition (a slow call
let in while closed that fails after the breaker already opened, or after an
operator reset) is ignored instead of re-tripping or closing the breaker.

All state lives behind one ``threading.Lock`` that is never held across an
``await`` or a call into user code; the breaker is safe to share between
threads and tasks. While closed, :meth:`~CircuitBreaker.acquire` takes no lock
at all. Transition events are delivered with no lock held, in the order the
transitions happened, to the event bus and to listeners; a slow listener
holds up only the thread delivering to it, never another thread's calls.
"""

from __future__ import annotations

import collections
import enum
import functools
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, NewType, ParamSpec, TypeVar, overload

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import CircuitOpenError, RejectedError
from bastion._core.events import CallRejected, CircuitStateChanged, EventBus, default_bus
from bastion._core.validate import (
    at_least,
    awaitable_returned,
    callable_or_none,
    instance_of,
    invalid,
    one_of,
    optional_fraction,
    optional_positive_number,
    optional_whole_number,
    positive_number,
    whole_number,
)
from bastion.resilience._classify import is_client_error
from bastion.resilience._invoke import decorate
from bastion.resilience._timeout import call_with_timeout, call_with_timeout_sync, check_timeout
from bastion.resilience._windows import (
    FAILURE,
    SLOW,
    SUCCESS,
    CountWindow,
    OutcomeWindow,
    TimeWindow,
    WindowTotals,
)

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitMetrics",
    "CircuitState",
    "Permit",
    "counts_against_callee",
]

P = ParamSpec("P")
T = TypeVar("T")

_NO_VERDICT = -1
"""The outcome of a call that ended without one (cancelled, or an error that does not count)."""

_log = logging.getLogger("bastion.resilience.breaker")

Permit = NewType("Permit", int)
"""The ticket :meth:`CircuitBreaker.acquire` hands out: a plain int, so issuing one costs nothing.

``permit >> 1`` is the state epoch it was issued in and ``permit & 1`` is 1 for
a half-open probe. Treat it as opaque otherwise, and give each permit exactly
one verdict.
"""

Listener = Callable[[CircuitStateChanged], object]


class CircuitState(enum.StrEnum):
    """Where a breaker stands; the values are the strings used in events and errors."""

    CLOSED = "closed"
    """Calls flow; outcomes are counted against the trip rules."""
    OPEN = "open"
    """Calls are refused until the reset timeout has passed."""
    HALF_OPEN = "half_open"
    """A few probe calls test whether the callee has recovered."""
    DISABLED = "disabled"
    """Set by an operator: every call is admitted and nothing is recorded."""
    FORCED_OPEN = "forced_open"
    """Set by an operator: every call is refused until :meth:`CircuitBreaker.reset`."""


def counts_against_callee(exc: BaseException) -> bool:
    """The default ``record_failure`` rule: does this error say the callee is unhealthy?

    Timeouts, connection errors, 5xx, 408 and 429 do. Client errors (other 4xx,
    validation and programming errors) do not: they are the caller's fault and
    would fail against a healthy callee too. Neither do refusals by a local guard
    further in (a full bulkhead, an inner open circuit): the call never reached
    the callee.
    """
    return not isinstance(exc, RejectedError) and not is_client_error(exc)


_OPTION = "CircuitBreakerConfig."
_RULE_OFF = "to turn the rule off"
_COUNT_WINDOW = 'calls, for window_type="count"'
_TIME_WINDOW = 'for window_type="time"'


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """When a breaker trips, how long it stays open, and how it probes for recovery.

    Every option has a default; ``CircuitBreakerConfig()`` opens after 5
    consecutive failures and probes again after 30 s. See ``docs/circuit-breaker.md``.
    """

    failure_threshold: int | None = 5
    """Consecutive counted failures that open the breaker (a success restarts the run)."""
    failure_rate_threshold: float | None = None
    """Open when failures / calls in the window reaches this fraction (needs ``minimum_calls``)."""
    window_type: Literal["count", "time"] = "count"
    """``"count"``: the last ``window_size`` calls; ``"time"``: the last ``window_size`` seconds."""
    window_size: float = 100
    """Calls (an integer) for a count window, seconds for a time window."""
    minimum_calls: int = 10
    """The rate rules stay quiet until the window holds at least this many calls."""
    slow_call_duration: float | None = None
    """A successful call that took at least this many seconds counts as slow."""
    slow_call_rate_threshold: float | None = None
    """Open when slow calls / calls in the window reaches this fraction."""
    reset_timeout: float = 30.0
    """Seconds an opened breaker refuses calls before it lets a probe through."""
    reset_backoff: float = 1.0
    """Each re-open without a close in between multiplies the wait by this (>= 1)."""
    max_reset_timeout: float = 300.0
    """The backed-off wait never exceeds this."""
    half_open_max_calls: int = 1
    """Probes let through at the same time while half-open; other calls are refused."""
    success_threshold: int = 1
    """Probe successes needed to close the breaker again."""
    record_failure: Callable[[BaseException], bool] | None = None
    """Which errors count against the callee; default :func:`counts_against_callee`."""
    call_timeout: float | None = 60.0
    """Per-attempt time limit of calls made through :meth:`CircuitBreaker.call`; None: none."""

    def __post_init__(self) -> None:
        optional_whole_number(self.failure_threshold, _OPTION + "failure_threshold", none=_RULE_OFF)
        for rate in ("failure_rate_threshold", "slow_call_rate_threshold"):
            optional_fraction(getattr(self, rate), _OPTION + rate, none=_RULE_OFF, hint="e.g. 0.5")
        optional_positive_number(
            self.slow_call_duration,
            _OPTION + "slow_call_duration",
            unit="seconds",
            none="to count no call as slow",
        )
        one_of(self.window_type, _OPTION + "window_type", ("count", "time"))
        size = self.window_size
        if self.window_type == "time":
            positive_number(size, _OPTION + "window_size", unit="seconds", hint=_TIME_WINDOW)
        elif not (isinstance(size, float) and size.is_integer() and size >= 1):
            whole_number(size, _OPTION + "window_size", hint=_COUNT_WINDOW)
        whole_number(self.minimum_calls, _OPTION + "minimum_calls")
        positive_number(self.reset_timeout, _OPTION + "reset_timeout", unit="seconds")
        positive_number(self.max_reset_timeout, _OPTION + "max_reset_timeout", unit="seconds")
        at_least(self.reset_backoff, _OPTION + "reset_backoff", 1, hint="1 keeps the wait constant")
        self._check_relations()
        callable_or_none(
            self.record_failure, _OPTION + "record_failure", what="a callable(exc) -> bool"
        )
        whole_number(self.half_open_max_calls, _OPTION + "half_open_max_calls")
        whole_number(self.success_threshold, _OPTION + "success_threshold")
        check_timeout(self.call_timeout, _OPTION + "call_timeout")

    def _check_relations(self) -> None:
        if self.max_reset_timeout < self.reset_timeout:
            invalid(
                _OPTION + "max_reset_timeout",
                f">= reset_timeout ({self.reset_timeout!r}); raise it or lower reset_timeout",
                self.max_reset_timeout,
            )
        if self.slow_call_rate_threshold is not None and self.slow_call_duration is None:
            invalid(
                _OPTION + "slow_call_duration",
                "set when slow_call_rate_threshold is set (which calls count as slow?)",
                None,
            )
        rate_rules = (self.failure_rate_threshold, self.slow_call_rate_threshold)
        if self.failure_threshold is None and rate_rules == (None, None):
            invalid(
                _OPTION + "failure_threshold",
                "set, or one of failure_rate_threshold / slow_call_rate_threshold set: with no "
                "rule the breaker could never open (use breaker.disable() to switch it off)",
                None,
            )
        if (
            self.window_type == "count"
            and rate_rules != (None, None)
            and self.minimum_calls > self.window_size
        ):
            invalid(
                _OPTION + "minimum_calls",
                f"<= window_size ({self.window_size!r}) for a count window, or the rate rules "
                "could never fire",
                self.minimum_calls,
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitMetrics:
    """A consistent snapshot of one breaker, for health checks and dashboards."""

    state: CircuitState
    calls: int
    """Calls in the window (count: the last ``window_size``; time: the last seconds)."""
    failures: int
    slow_calls: int
    failure_rate: float
    """failures / calls, 0.0 for an empty window."""
    slow_call_rate: float
    consecutive_failures: int
    opened_count: int
    """Times the breaker has opened since it was created."""
    consecutive_opens: int
    """Opens since the breaker last closed; sets the backed-off reset timeout."""
    probes_in_flight: int
    retry_after: float | None
    """Seconds until a call would be admitted: 0.0 now, None only after an operator reset."""


class CircuitBreaker:
    """A circuit breaker for one callee; see the module docstring and ``docs/circuit-breaker.md``.

    >>> breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=3), name="openai")
    >>> @breaker
    ... async def complete(prompt: str) -> str: ...
    """

    __slots__ = (
        "_base",
        "_bus",
        "_call_timeout",
        "_consecutive",
        "_consecutive_opens",
        "_draining",
        "_failure_rate",
        "_failure_threshold",
        "_fast",
        "_half_open_retry",
        "_is_counted",
        "_listeners",
        "_lock",
        "_max_probes",
        "_minimum_calls",
        "_next_reset_timeout",
        "_open_until",
        "_opened_count",
        "_pending",
        "_probe_floor",
        "_probe_successes",
        "_probes",
        "_slow_duration",
        "_slow_probe_fails",
        "_slow_rate",
        "_state",
        "_success_threshold",
        "_timed",
        "_window",
        "clock",
        "config",
        "name",
    )

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        name: str = "circuit",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        cfg = instance_of(config, CircuitBreakerConfig, "CircuitBreaker.config")
        self.config = cfg
        self.name = name
        self.clock = clock
        self._bus = bus
        self._lock = threading.Lock()
        self._draining = False
        self._pending: collections.deque[CircuitStateChanged] = collections.deque()
        self._listeners: tuple[Listener, ...] = ()
        # Config read on every call, copied to plain attributes once.
        self._failure_threshold = cfg.failure_threshold
        self._failure_rate = cfg.failure_rate_threshold
        self._slow_rate = cfg.slow_call_rate_threshold
        self._slow_duration = cfg.slow_call_duration
        self._slow_probe_fails = cfg.slow_call_rate_threshold is not None
        self._minimum_calls = (
            cfg.minimum_calls
            if cfg.failure_rate_threshold is not None or cfg.slow_call_rate_threshold is not None
            else math.inf
        )
        self._max_probes = cfg.half_open_max_calls
        self._success_threshold = cfg.success_threshold
        self._half_open_retry = min(1.0, cfg.reset_timeout)
        self._is_counted = cfg.record_failure or counts_against_callee
        self._call_timeout = cfg.call_timeout
        self._timed = cfg.window_type == "time"
        self._window: OutcomeWindow = (
            TimeWindow(cfg.window_size) if self._timed else CountWindow(int(cfg.window_size))
        )
        self._state = CircuitState.CLOSED
        self._base = 0
        self._fast: Permit | None = Permit(0)
        self._consecutive = 0
        self._opened_count = 0
        self._consecutive_opens = 0
        self._next_reset_timeout = cfg.reset_timeout
        self._open_until = 0.0
        self._probes = 0
        self._probe_floor = 0
        self._probe_successes = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value!r})"

    # -- admission and verdicts ---------------------------------------------------------------

    def acquire(self) -> Permit:
        """Admit one call or raise :class:`CircuitOpenError`; the permit goes to one verdict."""
        permit = self._fast
        if permit is not None:
            return permit
        return self._acquire_slow()

    def _acquire_slow(self) -> Permit:
        retry_after: float | None = None
        with self._lock:
            now = self.clock.monotonic()
            self._poll(now)
            state = self._state
            if state is CircuitState.HALF_OPEN:
                if self._probes < self._max_probes:
                    self._probes += 1
                    permit: Permit | None = Permit(self._base | 1)
                else:
                    permit = None
                    retry_after = self._half_open_retry
            elif state is CircuitState.OPEN:
                permit = None
                retry_after = max(self._open_until - now, 0.0)
            elif state is CircuitState.FORCED_OPEN:
                permit = None
            else:  # closed or disabled, reached after another thread moved it
                permit = Permit(self._base)
        if self._pending:
            self._deliver()
        if permit is not None:
            return permit
        bus = self._bus if self._bus is not None else default_bus()
        if bus.has_subscribers(CallRejected):
            bus.emit(
                CallRejected(source=self.name, reason=f"circuit_{state}", retry_after=retry_after)
            )
        raise CircuitOpenError(self.name, retry_after=retry_after, state=state.value)

    def record_success(self, permit: Permit, duration: float) -> None:
        """The call admitted with ``permit`` succeeded after ``duration`` seconds."""
        slow_duration = self._slow_duration
        slow = slow_duration is not None and duration >= slow_duration
        with self._lock:
            if permit == self._base:
                if self._state is CircuitState.CLOSED:
                    self._consecutive = 0
                    now = self.clock.monotonic() if self._timed else 0.0
                    totals = self._window.record(SLOW if slow else SUCCESS, now)
                    if totals.calls >= self._minimum_calls:
                        self._check_rates(totals)
            elif permit & 1:
                self._end_probe(permit, SLOW if slow else SUCCESS)
        if self._pending:
            self._deliver()

    def record_failure(self, permit: Permit, exc: BaseException, duration: float) -> None:
        """The call admitted with ``permit`` raised ``exc`` after ``duration`` seconds.

        Errors that do not count (``config.record_failure``) are ignored: they
        neither fail nor succeed, but free a half-open probe slot. ``duration``
        is accepted so every verdict has the same shape; a failure is judged by
        its error alone, never as slow.
        """
        try:
            counted = self._is_counted(exc)
        except BaseException:
            self.release(permit)
            raise
        if not counted:
            self.release(permit)
            return
        with self._lock:
            if permit == self._base:
                if self._state is CircuitState.CLOSED:
                    self._consecutive += 1
                    now = self.clock.monotonic() if self._timed else 0.0
                    totals = self._window.record(FAILURE, now)
                    threshold = self._failure_threshold
                    if threshold is not None and self._consecutive >= threshold:
                        self._move(CircuitState.OPEN, "consecutive_failures")
                    elif totals.calls >= self._minimum_calls:
                        self._check_rates(totals)
            elif permit & 1:
                self._end_probe(permit, FAILURE)
        if self._pending:
            self._deliver()

    def release(self, permit: Permit) -> None:
        """The call admitted with ``permit`` ended without a verdict (cancelled, interrupted)."""
        if not permit & 1:
            return
        with self._lock:
            self._end_probe(permit, _NO_VERDICT)

    # -- reading ------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose reset timeout has passed reads half-open)."""
        with self._lock:
            self._poll(self.clock.monotonic())
            state = self._state
        if self._pending:
            self._deliver()
        return state

    def retry_after(self) -> float | None:
        """Seconds until a call would be admitted: 0.0 now, None while forced open."""
        with self._lock:
            now = self.clock.monotonic()
            self._poll(now)
            retry_after = self._retry_after(now)
        if self._pending:
            self._deliver()
        return retry_after

    def metrics(self) -> CircuitMetrics:
        """A snapshot of the state and the window, taken under the lock."""
        with self._lock:
            now = self.clock.monotonic()
            self._poll(now)
            calls, failures, slow = self._window.totals(now)
            snapshot = CircuitMetrics(
                state=self._state,
                calls=calls,
                failures=failures,
                slow_calls=slow,
                failure_rate=failures / calls if calls else 0.0,
                slow_call_rate=slow / calls if calls else 0.0,
                consecutive_failures=self._consecutive,
                opened_count=self._opened_count,
                consecutive_opens=self._consecutive_opens,
                probes_in_flight=self._probes,
                retry_after=self._retry_after(now),
            )
        if self._pending:
            self._deliver()
        return snapshot

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(event)`` on every transition; returns a function that removes it.

        A listener that raises is logged and skipped; it never fails the call
        that caused the transition.
        """
        with self._lock:
            self._listeners = (*self._listeners, callback)

        def remove() -> None:
            with self._lock:
                self._listeners = tuple(cb for cb in self._listeners if cb is not callback)

        return remove

    # -- operator controls --------------------------------------------------------------------

    def force_open(self) -> None:
        """Refuse every call (``retry_after=None``) until :meth:`reset`: take a callee out."""
        self._operate(CircuitState.FORCED_OPEN, "forced_open")

    def disable(self) -> None:
        """Admit every call and record nothing until :meth:`reset` (also the test mode)."""
        self._operate(CircuitState.DISABLED, "disabled")

    def reset(self) -> None:
        """Close the breaker with a clean window and no memory of earlier opens."""
        self._operate(CircuitState.CLOSED, "reset")

    def _operate(self, to: CircuitState, reason: str) -> None:
        with self._lock:
            self._move(to, reason)
        if self._pending:
            self._deliver()

    # -- the state machine (always under self._lock) ------------------------------------------

    def _poll(self, now: float) -> None:
        if self._state is CircuitState.OPEN and now >= self._open_until:
            self._move(CircuitState.HALF_OPEN, "reset_timeout_elapsed")

    def _end_probe(self, permit: Permit, outcome: int) -> None:
        """A probe finished: free its slot, and judge the callee if it is a current probe.

        Probes count against ``half_open_max_calls`` until they finish, even
        after their half-open period ended in a re-open, so a recovering
        callee never sees more probes at once than configured. Only a close or
        an operator action forgets them.
        """
        if permit < self._probe_floor:
            return
        self._probes -= 1
        if permit != self._base | 1 or outcome == _NO_VERDICT:
            return
        if outcome == FAILURE:
            self._move(CircuitState.OPEN, "probe_failed")
        elif outcome == SLOW and self._slow_probe_fails:
            self._move(CircuitState.OPEN, "probe_slow")
        else:
            self._probe_successes += 1
            if self._probe_successes >= self._success_threshold:
                self._move(CircuitState.CLOSED, "probes_succeeded")

    def _check_rates(self, totals: WindowTotals) -> None:
        calls = totals.calls
        rate = self._failure_rate
        if rate is not None and totals.failures / calls >= rate:
            self._move(CircuitState.OPEN, "failure_rate")
            return
        rate = self._slow_rate
        if rate is not None and totals.slow / calls >= rate:
            self._move(CircuitState.OPEN, "slow_call_rate")

    def _retry_after(self, now: float) -> float | None:
        state = self._state
        if state is CircuitState.OPEN:
            return max(self._open_until - now, 0.0)
        if state is CircuitState.FORCED_OPEN:
            return None
        if state is CircuitState.HALF_OPEN and self._probes >= self._max_probes:
            return self._half_open_retry
        return 0.0

    def _move(self, to: CircuitState, reason: str) -> None:
        """Enter ``to`` in a new epoch; queue an event when the state actually changed."""
        from_state = self._state
        self._state = to
        self._base += 2
        self._probe_successes = 0
        if to is not CircuitState.OPEN and to is not CircuitState.HALF_OPEN:
            self._probes = 0
            self._probe_floor = self._base
        if to is CircuitState.OPEN:
            self._open_until = self.clock.monotonic() + self._next_reset_timeout
            self._next_reset_timeout = min(
                self._next_reset_timeout * self.config.reset_backoff, self.config.max_reset_timeout
            )
            self._opened_count += 1
            self._consecutive_opens += 1
        elif to is CircuitState.CLOSED:
            self._window.clear()
            self._consecutive = 0
            self._consecutive_opens = 0
            self._next_reset_timeout = self.config.reset_timeout
        self._fast = (
            Permit(self._base) if to is CircuitState.CLOSED or to is CircuitState.DISABLED else None
        )
        if from_state is not to:
            self._pending.append(
                CircuitStateChanged(
                    source=self.name, from_state=from_state.value, to_state=to.value, reason=reason
                )
            )

    def _deliver(self) -> None:
        """Hand queued transitions to the bus and listeners, oldest first, holding no lock.

        One thread at a time drains the queue (whoever finds ``_draining``
        unset), so events arrive in transition order; every other thread
        returns at once and never waits on a slow listener -- the drainer
        delivers what they queued. A listener that changes the breaker queues
        its event, which is delivered when that listener returns. Checking
        for an empty queue and giving up the drainer's role happen together
        under ``_lock``, where transitions are queued, so no event is stranded.
        """
        bus = self._bus if self._bus is not None else default_bus()
        pending = self._pending
        with self._lock:
            if self._draining:
                return
            self._draining = True
        try:
            while True:
                with self._lock:
                    if not pending:
                        self._draining = False
                        return
                    event = pending.popleft()
                    listeners = self._listeners
                bus.emit(event)
                for listener in listeners:
                    try:
                        listener(event)
                    except Exception:
                        _log.exception(
                            "circuit %r: listener %r failed on %s -> %s; skipped",
                            self.name,
                            listener,
                            event.from_state,
                            event.to_state,
                        )
        except BaseException:
            with self._lock:
                self._draining = False
            raise

    # -- shells -------------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker, within ``config.call_timeout``."""
        permit = self.acquire()
        clock = self.clock
        start = clock.monotonic()
        try:
            result = await call_with_timeout(
                functools.partial(fn, *args, **kwargs),
                self._call_timeout,
                name=self.name,
                clock=clock,
                bus=self._bus,
            )
        except Exception as exc:
            self.record_failure(permit, exc, clock.monotonic() - start)
            raise
        except BaseException:
            self.release(permit)
            raise
        self.record_success(permit, clock.monotonic() - start)
        return result

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker, within ``config.call_timeout``."""
        permit = self.acquire()
        clock = self.clock
        start = clock.monotonic()
        try:
            result = call_with_timeout_sync(
                functools.partial(fn, *args, **kwargs),
                self._call_timeout,
                name=self.name,
                clock=clock,
                bus=self._bus,
            )
        except Exception as exc:
            self.record_failure(permit, exc, clock.monotonic() - start)
            raise
        except BaseException:
            self.release(permit)
            raise
        if hasattr(result, "__await__"):
            self.release(permit)
            raise awaitable_returned(
                result, "CircuitBreaker.call_sync", instead="await breaker.call(...)"
            )
        self.record_success(permit, clock.monotonic() - start)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        return decorate(fn, self.call, self.call_sync)
