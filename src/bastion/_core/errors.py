"""Bastion's exceptions.

Every error Bastion raises on its own behalf derives from :class:`BastionError`
and says what happened, why, and what the caller can do; structured fields
(``retry_after``, ``limit``, ...) carry the same facts for code. Errors raised by
*your* code are never wrapped: when retries give up, the last error you raised
is re-raised as it was, with a note saying how many attempts were made.

::

    BastionError
    ├── ConfigurationError          (also ValueError) an option has an invalid value
    ├── RejectedError               the call was refused before it ran: nothing happened
    │   ├── CircuitOpenError        the callee is failing; retry_after says when to try again
    │   ├── RateLimitError          over a rate limit; retry_after, limit, remaining
    │   ├── RequestTooLargeError    one call costs more than a limit allows per window: never fits
    │   ├── BulkheadFullError       too many calls in flight and in the queue
    │   └── ShuttingDownError       the process is draining and admits no new runs
    ├── CallTimeoutError            (also TimeoutError) an attempt or the whole call ran too long
    ├── BudgetExceededError         a spending cap would be passed; cap, limit_usd, spent_usd
    └── StoreUnavailableError       a shared store did not answer; backend, operation

``http_status`` on each class is the HTTP status the gateway answers with.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "BastionError",
    "BudgetExceededError",
    "BulkheadFullError",
    "CallTimeoutError",
    "CircuitOpenError",
    "ConfigurationError",
    "RateLimitError",
    "RejectedError",
    "RequestTooLargeError",
    "ShuttingDownError",
    "StoreUnavailableError",
    "summarize",
]


class BastionError(Exception):
    """Root of every error Bastion raises on its own behalf."""

    http_status: int = 500
    """HTTP status the gateway answers with (not the upstream status an error may carry)."""

    transient: bool = False
    """Whether trying the same call again later can succeed; read by retry classification."""


class ConfigurationError(BastionError, ValueError):
    """An option was given a value it cannot take; the message names the option and the fix."""

    http_status = 500


class RejectedError(BastionError):
    """The call was refused before it started, so it had no effect and may be sent again."""

    http_status = 503


class CircuitOpenError(RejectedError):
    """The circuit breaker in front of the callee is open.

    The callee failed often enough that Bastion stopped sending it calls for a
    while, to let it recover and to fail fast instead of waiting on it. Try
    again after ``retry_after`` seconds, or use a fallback.
    """

    http_status = 503

    def __init__(self, name: str, *, retry_after: float | None, state: str = "open") -> None:
        self.name = name
        self.retry_after = retry_after
        self.state = state
        when = (
            f"retry in {retry_after:.3g}s"
            if retry_after is not None
            else "an operator must close it (breaker.reset())"
        )
        super().__init__(
            f"circuit {name!r} is {state}: calls are refused while the callee recovers; {when}"
        )


class RateLimitError(RejectedError):
    """A rate limit is exhausted for this key.

    ``retry_after`` is exact: a call of the same cost made after that many
    seconds is admitted, unless others take the room first.
    """

    http_status = 429

    def __init__(
        self,
        key: str,
        *,
        retry_after: float,
        limit: float,
        remaining: float,
        window: float,
        cost: float = 1.0,
    ) -> None:
        self.key = key
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.window = window
        self.cost = cost
        super().__init__(
            f"rate limit exceeded for {key!r}: {limit:g} per {window:g}s, {remaining:g} left, "
            f"this call needs {cost:g}; retry in {retry_after:.3g}s"
        )


class RequestTooLargeError(RejectedError):
    """One call costs more than a limit allows in a whole window, so it can never be admitted.

    Waiting cannot help, unlike a :class:`RateLimitError`: the call must be
    made smaller (split the input) or the limit raised. ``unit`` is
    ``"requests"`` or ``"tokens"``; ``cost`` and ``limit`` are in that unit.
    """

    http_status = 413

    def __init__(self, key: str, *, cost: float, limit: float, unit: str) -> None:
        self.key = key
        self.cost = cost
        self.limit = limit
        self.unit = unit
        if unit == "tokens":
            option, fix = "max_tpm", "split the input into smaller calls or raise max_tpm"
        else:
            option, fix = "max_rpm", "raise max_rpm"
        super().__init__(
            f"a call costing {cost:g} {unit} can never fit under {option}={limit:g} for key "
            f"{key!r}, however long it waits; {fix}"
        )


class BulkheadFullError(RejectedError):
    """Every concurrency slot is busy and the waiting queue is full (or the wait ran out)."""

    http_status = 503

    def __init__(self, name: str, *, max_concurrent: int, max_queued: int, reason: str) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.reason = reason
        super().__init__(
            f"bulkhead {name!r} is full ({reason}): at most {max_concurrent} call(s) in flight "
            f"and {max_queued} waiting; shed load or raise max_concurrent"
        )


class ShuttingDownError(RejectedError):
    """The agent is draining for shutdown and admits no new runs."""

    http_status = 503

    def __init__(self, name: str) -> None:
        self.name = name
        self.retry_after: float | None = None
        super().__init__(f"{name!r} is shutting down and admits no new runs; send it elsewhere")


class CallTimeoutError(BastionError, TimeoutError):
    """A call ran longer than its timeout.

    ``scope`` is ``"attempt"`` for the per-attempt limit (the next retry may
    still succeed) or ``"total"`` for the limit over every attempt.
    ``cancelled`` is false for sync callees, which Python cannot stop: the
    caller stopped waiting while the call finishes in a background thread;
    None when nothing was running (the deadline fell between attempts).
    """

    http_status = 504
    transient = True

    def __init__(
        self, name: str, *, timeout: float, scope: str = "attempt", cancelled: bool | None = True
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.scope = scope
        self.cancelled = cancelled
        if cancelled is None:
            fate = ""
        elif cancelled:
            fate = " and was cancelled"
        else:
            fate = "; stopped waiting (a sync call cannot be cancelled, it ends in the background)"
        super().__init__(f"{name!r} timed out after {timeout:g}s ({scope} timeout){fate}")


class BudgetExceededError(BastionError):
    """Spending this call would take a budget cap past its limit, so it was not made.

    ``cap`` names the cap (``run``, ``user``, ``tenant``, ``month``, ``tracker``);
    ``limit_usd`` and ``spent_usd`` say where it stands.
    """

    http_status = 402

    def __init__(self, cap: str, *, limit_usd: Decimal, spent_usd: Decimal) -> None:
        self.cap = cap
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        super().__init__(
            f"budget cap {cap!r} reached: ${spent_usd} spent or reserved of ${limit_usd}; "
            "raise the cap or wait for its period to roll over"
        )


class StoreUnavailableError(BastionError):
    """A shared store (Redis, PostgreSQL, a SQLite file) did not answer in time or at all.

    Each concern then follows its declared failure mode (fail-open or
    fail-closed); this error is what fail-closed raises.
    """

    http_status = 503
    transient = True

    def __init__(self, backend: str, *, operation: str, reason: str) -> None:
        self.backend = backend
        self.operation = operation
        self.reason = reason
        super().__init__(f"store {backend!r} unavailable during {operation}: {reason}")


def summarize(exc: BaseException, *, limit: int = 200) -> str:
    """``"TypeName: message"`` cut to ``limit`` characters, for health reports and fallback logs.

    Messages are cut because a provider's error text can echo large parts of a
    request; reports need the gist, not the payload.
    """
    text = str(exc)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
