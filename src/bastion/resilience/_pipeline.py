"""The one place that decides in which order the strategies wrap a call.

Outermost first::

    shutdown gate      refuse new runs while draining (None: the owner drains)
    fallback           serve from a backup when everything below failed
    rate limit         admission: refuse (or briefly delay) callers over their limit
    total timeout      a deadline over all attempts and backoffs (off unless set)
    retry              try again on transient failures, with backoff and a budget
    circuit breaker    fail fast while the callee is failing; count each attempt
    bulkhead           cap the attempts in flight
    attempt timeout    cancel one attempt that runs too long
    the call

Why this order: the gate and the fallback see everything, so a refusal or an
exhausted retry can still be answered from a backup. Admission is checked once
per run, not per attempt, so retries never eat the caller's quota. Retry sits
outside the breaker so that each attempt is one breaker call, and an open
circuit stops the retries at once (it is not transient). The bulkhead is
inside the breaker so a call refused by an open circuit never takes a slot,
and the timeout is innermost so it bounds only the callee's own time.

The total timeout is a deadline, not a second timer: each attempt gets
``min(call_timeout, time left)``, and a backoff that would end past the
deadline ends the run at once with ``CallTimeoutError(scope="total")``. An
attempt cut short by the deadline gives its breaker permit back without a
verdict -- the callee was not too slow by its own limit. The same rules hold
for sync callees, whose retry loop stays in the caller's thread.

When an attempt is refused by a local guard (the circuit opened during the
retries, the bulkhead filled) after an earlier attempt really failed, the
earlier failure is what the caller gets -- with a note naming the refusal --
because it says what went wrong with the callee.

No other module composes strategies; call sites ask a :class:`Pipeline` to
run a call. The sync twin follows the same order with the sync shells.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import CallTimeoutError, RejectedError
from bastion._core.events import CallTimedOut, EventBus, default_bus
from bastion.resilience._breaker import CircuitBreaker, Permit
from bastion.resilience._bulkhead import Bulkhead
from bastion.resilience._fallback import Fallback, FallbackResult
from bastion.resilience._ratelimit import RateLimitConfig, RateLimiter
from bastion.resilience._retry import Retry
from bastion.resilience._shutdown import ShutdownGate
from bastion.resilience._timeout import call_with_timeout, call_with_timeout_sync

__all__ = ["Pipeline"]

T = TypeVar("T")


class Pipeline:
    """The configured strategies of one resilient callee, applied in the fixed order."""

    __slots__ = (
        "_limit_config",
        "breaker",
        "bulkhead",
        "bus",
        "call_timeout",
        "clock",
        "fallback",
        "gate",
        "limiter",
        "name",
        "retry",
        "total_timeout",
    )

    def __init__(
        self,
        *,
        name: str,
        gate: ShutdownGate | None,
        fallback: Fallback | None = None,
        limiter: RateLimiter | None = None,
        total_timeout: float | None = None,
        retry: Retry | None = None,
        breaker: CircuitBreaker | None = None,
        bulkhead: Bulkhead | None = None,
        call_timeout: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        self.name = name
        self.gate = gate
        self.fallback = fallback
        self.limiter = limiter
        self.total_timeout = total_timeout
        self.retry = retry
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.call_timeout = call_timeout
        self.clock = clock
        self.bus = bus
        self._limit_config: RateLimitConfig | None = limiter.config if limiter is not None else None

    def _admission(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, float]:
        """The key and token cost of a run; ``key``/``tokens`` get the run's own arguments."""
        config = self._limit_config
        assert config is not None
        key = config.key_for(*args, **kwargs)
        tokens = config.tokens_for(*args, **kwargs) if config.max_tpm is not None else 0.0
        return key, tokens

    # -- async -------------------------------------------------------------------------------

    async def run(
        self, call: Callable[[], Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> FallbackResult[Any]:
        """Run ``call`` (one attempt each time it is called) through every configured strategy."""
        gate = self.gate
        task = gate.enter() if gate is not None else None
        try:
            if self.fallback is None:
                return FallbackResult(await self._admitted(call, args, kwargs, task), self.name, 0)
            return await self.fallback.serve(
                lambda: self._admitted(call, args, kwargs, task), self.name, args, kwargs
            )
        finally:
            if gate is not None:
                gate.exit(task)

    async def run_value(
        self, call: Callable[[], Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        """:meth:`run` for a pipeline without fallback: just the value, nothing to report."""
        gate = self.gate
        if gate is None:
            return await self._admitted(call, args, kwargs, None)
        task = gate.enter()
        try:
            return await self._admitted(call, args, kwargs, task)
        finally:
            gate.exit(task)

    async def _admitted(
        self,
        call: Callable[[], Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task: asyncio.Task[Any] | None,
    ) -> T:
        limiter = self.limiter
        if limiter is not None:
            key, tokens = self._admission(args, kwargs)
            await limiter.acquire(key, tokens=tokens)
        total = self.total_timeout
        deadline = None if total is None else self.clock.monotonic() + total
        retry = self.retry
        if retry is None:
            return await self._attempt(call, deadline, task)
        state = retry.begin()
        clock = self.clock
        failed: Exception | None = None
        while True:
            try:
                return await self._attempt(call, deadline, task)
            except Exception as exc:
                if failed is not None and isinstance(exc, RejectedError):
                    raise _stopped_by(failed, exc) from None
                delay = state.next_delay(exc)
                if delay is None:
                    raise
                failed = exc
                if deadline is not None and clock.monotonic() + delay >= deadline:
                    raise self._total_timeout_error() from exc
            await clock.sleep(delay)

    async def _attempt(
        self,
        call: Callable[[], Awaitable[T]],
        deadline: float | None,
        task: asyncio.Task[Any] | None,
    ) -> T:
        seconds, scope = self._attempt_limit(deadline)
        breaker = self.breaker
        bulkhead = self.bulkhead
        if breaker is None:
            if bulkhead is None:
                return await self._timed(call, seconds, scope, task)
            await bulkhead.acquire()
            try:
                return await self._timed(call, seconds, scope, task)
            finally:
                bulkhead.release()
        permit = breaker.acquire()
        if bulkhead is not None:
            try:
                await bulkhead.acquire()
            except BaseException:
                breaker.release(permit)
                raise
        monotonic = self.clock.monotonic
        started = monotonic()
        try:
            result = await self._timed(call, seconds, scope, task)
        except CallTimeoutError as exc:
            _judge_timeout(breaker, permit, exc, monotonic() - started)
            raise
        except Exception as exc:
            breaker.record_failure(permit, exc, monotonic() - started)
            raise
        except BaseException:
            breaker.release(permit)
            raise
        finally:
            if bulkhead is not None:
                bulkhead.release()
        breaker.record_success(permit, monotonic() - started)
        return result

    async def _timed(
        self,
        call: Callable[[], Awaitable[T]],
        seconds: float | None,
        scope: str,
        task: asyncio.Task[Any] | None,
    ) -> T:
        if seconds is None:
            return await call()
        return await call_with_timeout(
            call, seconds, name=self.name, clock=self.clock, scope=scope, bus=self.bus, task=task
        )

    def _attempt_limit(self, deadline: float | None) -> tuple[float | None, str]:
        """This attempt's timeout: the per-attempt limit or the time left, whichever is shorter."""
        if deadline is None:
            return self.call_timeout, "attempt"
        left = deadline - self.clock.monotonic()
        if left <= 0:
            raise self._total_timeout_error()
        if self.call_timeout is None or left < self.call_timeout:
            return left, "total"
        return self.call_timeout, "attempt"

    def _total_timeout_error(self) -> CallTimeoutError:
        total = self.total_timeout
        assert total is not None
        (self.bus or default_bus()).emit(
            CallTimedOut(source=self.name, timeout=total, scope="total")
        )
        return CallTimeoutError(self.name, timeout=total, scope="total", cancelled=None)

    # -- sync --------------------------------------------------------------------------------

    def run_sync(
        self, call: Callable[[], T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> FallbackResult[Any]:
        """:meth:`run` for a blocking callee; the loop runs here, attempts may use a worker."""
        gate = self.gate
        if gate is not None:
            gate.enter_sync()
        try:
            if self.fallback is None:
                return FallbackResult(self._admitted_sync(call, args, kwargs), self.name, 0)
            return self.fallback.serve_sync(
                lambda: self._admitted_sync(call, args, kwargs), self.name, args, kwargs
            )
        finally:
            if gate is not None:
                gate.exit_sync()

    def _admitted_sync(
        self, call: Callable[[], T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        limiter = self.limiter
        if limiter is not None:
            key, tokens = self._admission(args, kwargs)
            limiter.acquire_sync(key, tokens=tokens)
        total = self.total_timeout
        deadline = None if total is None else self.clock.monotonic() + total
        retry = self.retry
        if retry is None:
            return self._attempt_sync(call, deadline)
        state = retry.begin()
        clock = self.clock
        failed: Exception | None = None
        while True:
            try:
                return self._attempt_sync(call, deadline)
            except Exception as exc:
                if failed is not None and isinstance(exc, RejectedError):
                    raise _stopped_by(failed, exc) from None
                delay = state.next_delay(exc)
                if delay is None:
                    raise
                failed = exc
                if deadline is not None and clock.monotonic() + delay >= deadline:
                    raise self._total_timeout_error() from exc
            clock.sleep_sync(delay)

    def _attempt_sync(self, call: Callable[[], T], deadline: float | None) -> T:
        seconds, scope = self._attempt_limit(deadline)
        breaker = self.breaker
        bulkhead = self.bulkhead
        if breaker is None:
            if bulkhead is None:
                return self._timed_sync(call, seconds, scope)
            bulkhead.acquire_sync()
            try:
                return self._timed_sync(call, seconds, scope)
            finally:
                bulkhead.release()
        permit = breaker.acquire()
        if bulkhead is not None:
            try:
                bulkhead.acquire_sync()
            except BaseException:
                breaker.release(permit)
                raise
        monotonic = self.clock.monotonic
        started = monotonic()
        try:
            result = self._timed_sync(call, seconds, scope)
        except CallTimeoutError as exc:
            _judge_timeout(breaker, permit, exc, monotonic() - started)
            raise
        except Exception as exc:
            breaker.record_failure(permit, exc, monotonic() - started)
            raise
        except BaseException:
            breaker.release(permit)
            raise
        finally:
            if bulkhead is not None:
                bulkhead.release()
        breaker.record_success(permit, monotonic() - started)
        return result

    def _timed_sync(self, call: Callable[[], T], seconds: float | None, scope: str) -> T:
        return call_with_timeout_sync(
            call, seconds, name=self.name, clock=self.clock, scope=scope, bus=self.bus
        )


def _judge_timeout(
    breaker: CircuitBreaker, permit: Permit, exc: CallTimeoutError, duration: float
) -> None:
    """A timeout by the callee's own limit is its failure; one cut by the run's deadline is not."""
    if exc.scope == "total":
        breaker.release(permit)
    else:
        breaker.record_failure(permit, exc, duration)


def _stopped_by(failed: Exception, refusal: Exception) -> Exception:
    failed.add_note(f"bastion: stopped retrying because the next attempt was refused: {refusal}")
    return failed
