"""Try a failed call again -- only when that can help, and never enough to sink the callee.

Most failures of a model provider are brief: a dropped connection, a 503 while
a node restarts, a 429 that names its own ``Retry-After``. One more attempt a
moment later usually succeeds, so retrying is worth it. Other failures are
permanent (a 400 for a prompt that is too long, a 401 for a bad key, a bug in
the caller): repeating them only wastes time and money, so they are raised at
once. The classification lives in :mod:`bastion.resilience._classify` and is
shared with the circuit breaker; ``retry_on=`` replaces it entirely.

Between attempts the wait grows exponentially and is randomised ("jitter") so
that many clients failing together do not come back in lock-step. A wait the
callee asks for (``Retry-After``) is obeyed exactly instead, unless it is
longer than ``max_retry_after``: then waiting is pointless and the error is
raised at once. A ``deadline`` stops retrying when the next attempt could not
start in time, and a :class:`RetryBudget` shared by all calls of the policy
stops retries from multiplying the load during an outage.

When retries run out Bastion re-raises the last error the callee raised --
never wrapped -- with a PEP 678 note (``exc.__notes__``) saying why it stopped.

The decisions are made once, in :class:`RetryState`, which does no I/O and
never sleeps; :meth:`Retry.call`, :meth:`Retry.call_sync` and the composition
pipeline are the same small loop around it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, overload

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.events import (
    Event,
    EventBus,
    RetryBudgetExhausted,
    RetryScheduled,
    default_bus,
)
from bastion._core.validate import (
    at_least,
    awaitable_returned,
    callable_or_none,
    instance_of,
    non_negative_number,
    one_of,
    optional_fraction,
    optional_positive_number,
    positive_number,
    whole_number,
)
from bastion.resilience._classify import is_transient, retry_after_of
from bastion.resilience._invoke import decorate
from bastion.resilience._retry_budget import BUDGET_FLOOR_HINT, BUDGET_RATIO_HINT, RetryBudget

__all__ = ["Jitter", "Retry", "RetryConfig", "RetryState", "retry"]

P = ParamSpec("P")
T = TypeVar("T")

Jitter = Literal["full", "equal", "none"]
_JITTERS: tuple[str, ...] = ("full", "equal", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """How one policy retries; validated when built, so a bad option fails at start-up.

    The defaults suit a model provider: three attempts in all, waits of up to
    0.5 s then 1 s (full jitter), and retries capped at 20 % extra load.
    """

    max_retries: int = 2
    """Retries after the first attempt (so 3 attempts in all); 0 turns retrying off."""
    backoff: float = 0.5
    """Base delay in seconds before the first retry; 0 retries at once (test mode)."""
    multiplier: float = 2.0
    """Growth of the delay from one retry to the next (1 keeps it constant)."""
    max_backoff: float = 5.0
    """Cap on the grown delay, applied before jitter."""
    jitter: Jitter = "full"
    """``"full"``: uniform(0, d); ``"equal"``: d/2 + uniform(0, d/2); ``"none"``: exactly d."""
    deadline: float | None = None
    """Seconds from the first attempt after which no new attempt starts; None: no deadline."""
    retry_on: Callable[[BaseException], bool] | None = None
    """Decides which errors are retried, replacing Bastion's classification entirely."""
    max_retry_after: float = 60.0
    """A ``Retry-After`` longer than this is not waited for: the error is raised at once."""
    budget_ratio: float | None = 0.2
    """Extra load retries may add to first attempts (0.2 = 20 %); None turns the budget off."""
    budget_min_per_second: float = 1.0
    """Retries always allowed per second, so low-traffic callers can still retry."""
    budget_window: float = 10.0
    """Seconds of history the retry budget looks at."""

    def __post_init__(self) -> None:
        whole_number(
            self.max_retries, "RetryConfig.max_retries", minimum=0, hint="0 turns retrying off"
        )
        non_negative_number(
            self.backoff, "RetryConfig.backoff", unit="seconds", hint="0 retries at once"
        )
        at_least(self.multiplier, "RetryConfig.multiplier", 1, hint="2 doubles each wait")
        non_negative_number(self.max_backoff, "RetryConfig.max_backoff", unit="seconds")
        one_of(self.jitter, "RetryConfig.jitter", _JITTERS)
        optional_positive_number(
            self.deadline, "RetryConfig.deadline", unit="seconds", none="for no deadline"
        )
        callable_or_none(
            self.retry_on,
            "RetryConfig.retry_on",
            what="a function taking the exception and returning True to retry it",
        )
        non_negative_number(
            self.max_retry_after,
            "RetryConfig.max_retry_after",
            unit="seconds",
            finite=False,
            hint="math.inf always waits as asked",
        )
        optional_fraction(
            self.budget_ratio,
            "RetryConfig.budget_ratio",
            allow_zero=True,
            none="to turn the budget off",
            hint=BUDGET_RATIO_HINT,
        )
        non_negative_number(
            self.budget_min_per_second,
            "RetryConfig.budget_min_per_second",
            unit="retries per second",
            hint=BUDGET_FLOOR_HINT,
        )
        positive_number(self.budget_window, "RetryConfig.budget_window", unit="seconds")


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


class RetryState:
    """The retry decisions of one call: how many attempts so far, and whether to go on.

    Made by :meth:`Retry.begin`. It never sleeps and does no I/O beyond reading
    the clock and emitting events, so the async loop, the sync loop and the
    composition pipeline share it.
    """

    __slots__ = ("_deadline_at", "_policy", "attempt")

    def __init__(self, policy: Retry, deadline_at: float | None) -> None:
        self._policy = policy
        self._deadline_at = deadline_at
        self.attempt = 1
        """Attempts made so far, counting the one in progress (1 after the first)."""

    def __repr__(self) -> str:
        return f"<RetryState {self._policy.name!r} attempt={self.attempt}>"

    def next_delay(self, exc: BaseException) -> float | None:
        """Called after a failed attempt: seconds to wait before the next attempt, or None = give up
        (the caller then re-raises `exc` itself).

        Giving up after at least one retry, or because of the budget, the
        deadline or a too-long ``Retry-After``, adds a note to ``exc`` saying why.
        """
        if not isinstance(exc, Exception):
            return None  # cancellation, KeyboardInterrupt, SystemExit: never retried
        policy = self._policy
        config = policy.config
        attempt = self.attempt
        retryable = config.retry_on(exc) if config.retry_on is not None else is_transient(exc)
        if not retryable:
            if attempt > 1:
                exc.add_note(
                    f"bastion: gave up after {_attempts(attempt)}: "
                    f"{type(exc).__name__} is not retried"
                )
            return None
        if attempt > config.max_retries:
            if config.max_retries > 0:
                exc.add_note(
                    f"bastion: gave up after {_attempts(attempt)} "
                    f"(max_retries={config.max_retries})"
                )
            return None
        clock = policy.clock
        requested = retry_after_of(exc, now=clock.time())
        if requested is None:
            delay = policy._backoff_for(attempt)
        elif requested > config.max_retry_after:
            exc.add_note(
                f"bastion: gave up after {_attempts(attempt)}: the callee asked to wait "
                f"{requested:g}s (Retry-After), longer than "
                f"max_retry_after={config.max_retry_after:g}s"
            )
            return None
        else:
            delay = requested
        if self._deadline_at is not None and clock.monotonic() + delay > self._deadline_at:
            exc.add_note(
                f"bastion: gave up after {_attempts(attempt)}: another attempt in {delay:.3g}s "
                f"would start after the deadline (deadline={config.deadline:g}s)"
            )
            return None
        budget = policy.budget
        if budget is not None and not budget.try_spend():
            error_type = type(exc).__name__
            policy._emit(
                RetryBudgetExhausted(source=policy.name, attempt=attempt, error_type=error_type)
            )
            exc.add_note(
                f"bastion: gave up after {_attempts(attempt)}: the retry budget is spent "
                f"(retries may add {budget.ratio:.0%} to first attempts, plus "
                f"{budget.min_per_second:g}/s); the callee looks down, so Bastion adds no load"
            )
            return None
        self.attempt = attempt + 1
        policy._emit(
            RetryScheduled(
                source=policy.name, attempt=attempt, delay=delay, error_type=type(exc).__name__
            )
        )
        return delay


class Retry:
    """A retry policy for calls; also a decorator for sync and async functions.

    Re-raises the last error: when retrying stops, the exception the callee
    raised last propagates unchanged (not wrapped), with a note in
    ``__notes__`` saying why Bastion stopped. Only :class:`Exception` subclasses
    are retried; cancellation, ``KeyboardInterrupt`` and ``SystemExit`` pass
    through at once.

    One policy may serve many threads and tasks at once: each call keeps its
    own :class:`RetryState`, and the retry budget is the only shared state.
    Pass ``budget=`` to share one budget between several policies.

    >>> policy = Retry(RetryConfig(max_retries=3), name="search")
    >>> @policy
    ... async def search(q: str) -> list[str]: ...
    """

    __slots__ = ("_bus", "_rng", "budget", "clock", "config", "name")

    def __init__(
        self,
        config: RetryConfig | None = None,
        *,
        name: str = "retry",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        config = instance_of(config, RetryConfig, "Retry.config")
        if budget is None and config.budget_ratio is not None:
            budget = RetryBudget(
                ratio=config.budget_ratio,
                min_per_second=config.budget_min_per_second,
                window=config.budget_window,
                clock=clock,
            )
        self.config = config
        self.name = name
        self.clock = clock
        self.budget: RetryBudget | None = budget
        self._bus = bus
        self._rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return f"Retry({self.config!r}, name={self.name!r})"

    def begin(self) -> RetryState:
        """Start one call: counts a first attempt in the budget and returns its state."""
        if self.budget is not None:
            self.budget.record_attempt()
        deadline = self.config.deadline
        if deadline is None:
            return RetryState(self, None)
        return RetryState(self, self.clock.monotonic() + deadline)

    def _backoff_for(self, retry_number: int) -> float:
        """The jittered wait before retry number ``retry_number`` (1 for the first retry)."""
        config = self.config
        try:
            grown = config.backoff * config.multiplier ** (retry_number - 1)
        except OverflowError:
            grown = math.inf if config.backoff > 0 else 0.0
        base = min(config.max_backoff, grown)
        if config.jitter == "full":
            return self._rng.uniform(0.0, base)
        if config.jitter == "equal":
            return base / 2 + self._rng.uniform(0.0, base / 2)
        return base

    def _emit(self, event: Event) -> None:
        """Send one of this policy's events to its bus (or the process-wide one)."""
        (self._bus if self._bus is not None else default_bus()).emit(event)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, retrying as configured; re-raises the last error."""
        state = self.begin()
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                delay = state.next_delay(exc)
                if delay is None:
                    raise
                await self.clock.sleep(delay)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, retrying as configured; re-raises the last error."""
        state = self.begin()
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                delay = state.next_delay(exc)
                if delay is None:
                    raise
                self.clock.sleep_sync(delay)
                continue
            if hasattr(result, "__await__"):
                raise awaitable_returned(result, "Retry.call_sync", instead="await retry.call(...)")
            return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        return decorate(fn, self.call, self.call_sync)


def retry(
    *,
    max_retries: int = 2,
    backoff: float = 0.5,
    multiplier: float = 2.0,
    max_backoff: float = 5.0,
    jitter: Jitter = "full",
    deadline: float | None = None,
    retry_on: Callable[[BaseException], bool] | None = None,
    max_retry_after: float = 60.0,
    budget_ratio: float | None = 0.2,
    name: str = "retry",
    clock: Clock = SYSTEM_CLOCK,
    bus: EventBus | None = None,
) -> Retry:
    """A retry decorator in one line: ``@retry(max_retries=3)`` on a sync or async function.

    Every call of the decorated function shares the policy's retry budget.
    Re-raises the last error when retries run out (see :class:`Retry`).
    """
    config = RetryConfig(
        max_retries=max_retries,
        backoff=backoff,
        multiplier=multiplier,
        max_backoff=max_backoff,
        jitter=jitter,
        deadline=deadline,
        retry_on=retry_on,
        max_retry_after=max_retry_after,
        budget_ratio=budget_ratio,
    )
    return Retry(config, name=name, clock=clock, bus=bus)
