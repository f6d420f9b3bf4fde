"""The one place that decides in which order the strategies wrap a call.

Outermost first::

    shutdown gate      refuse new runs while draining
    fallback           serve from a backup when everything below failed
    rate limit         admission: refuse (or briefly delay) callers over their limit
    total timeout      bound the whole call, all attempts included (off unless set)
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

No other module composes strategies; call sites ask a :class:`Pipeline` to
run a call. The sync twin follows the same order with the sync shells.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.events import EventBus
from bastion.resilience._breaker import CircuitBreaker
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
        gate: ShutdownGate,
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
        """The key and token cost of a run; ``key``/``tokens`` see its first argument and kwargs."""
        config = self._limit_config
        assert config is not None
        first = args[0] if args else None
        key = config.key_for(first, **kwargs)
        tokens = config.tokens_for(first, **kwargs) if config.max_tpm is not None else 0.0
        return key, tokens

    # -- async -------------------------------------------------------------------------------

    async def run(
        self, call: Callable[[], Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> FallbackResult[Any]:
        """Run ``call`` (one attempt each time it is called) through every configured strategy."""
        gate = self.gate
        task = gate.enter()
        try:
            if self.fallback is None:
                return FallbackResult(await self._admitted(call, args, kwargs), self.name, 0)
            return await self.fallback.serve(
                lambda: self._admitted(call, args, kwargs), self.name, args, kwargs
            )
        finally:
            gate.exit(task)

    async def _admitted(
        self, call: Callable[[], Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        limiter = self.limiter
        if limiter is not None:
            key, tokens = self._admission(args, kwargs)
            await limiter.acquire(key, tokens=tokens)
        if self.total_timeout is None:
            return await self._retried(call)
        return await call_with_timeout(
            lambda: self._retried(call),
            self.total_timeout,
            name=self.name,
            clock=self.clock,
            scope="total",
            bus=self.bus,
        )

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        retry = self.retry
        if retry is None:
            return await self._attempt(call)
        state = retry.begin()
        sleep = self.clock.sleep
        while True:
            try:
                return await self._attempt(call)
            except Exception as exc:
                delay = state.next_delay(exc)
                if delay is None:
                    raise
            await sleep(delay)

    async def _attempt(self, call: Callable[[], Awaitable[T]]) -> T:
        breaker = self.breaker
        bulkhead = self.bulkhead
        if breaker is None:
            if bulkhead is None:
                return await self._timed(call)
            await bulkhead.acquire()
            try:
                return await self._timed(call)
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
            result = await self._timed(call)
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

    async def _timed(self, call: Callable[[], Awaitable[T]]) -> T:
        if self.call_timeout is None:
            return await call()
        return await call_with_timeout(
            call, self.call_timeout, name=self.name, clock=self.clock, bus=self.bus
        )

    # -- sync --------------------------------------------------------------------------------

    def run_sync(
        self, call: Callable[[], T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> FallbackResult[Any]:
        """:meth:`run` for a blocking callee, in the calling thread (attempts may use a worker)."""
        gate = self.gate
        gate.enter_sync()
        try:
            if self.fallback is None:
                return FallbackResult(self._admitted_sync(call, args, kwargs), self.name, 0)
            return self.fallback.serve_sync(
                lambda: self._admitted_sync(call, args, kwargs), self.name, args, kwargs
            )
        finally:
            gate.exit_sync()

    def _admitted_sync(
        self, call: Callable[[], T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        limiter = self.limiter
        if limiter is not None:
            key, tokens = self._admission(args, kwargs)
            limiter.acquire_sync(key, tokens=tokens)
        if self.total_timeout is None:
            return self._retried_sync(call)
        return call_with_timeout_sync(
            lambda: self._retried_sync(call),
            self.total_timeout,
            name=self.name,
            clock=self.clock,
            scope="total",
            bus=self.bus,
        )

    def _retried_sync(self, call: Callable[[], T]) -> T:
        retry = self.retry
        if retry is None:
            return self._attempt_sync(call)
        state = retry.begin()
        while True:
            try:
                return self._attempt_sync(call)
            except Exception as exc:
                delay = state.next_delay(exc)
                if delay is None:
                    raise
            self.clock.sleep_sync(delay)

    def _attempt_sync(self, call: Callable[[], T]) -> T:
        breaker = self.breaker
        bulkhead = self.bulkhead
        if breaker is None:
            if bulkhead is None:
                return self._timed_sync(call)
            bulkhead.acquire_sync()
            try:
                return self._timed_sync(call)
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
            result = self._timed_sync(call)
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

    def _timed_sync(self, call: Callable[[], T]) -> T:
        return call_with_timeout_sync(
            call, self.call_timeout, name=self.name, clock=self.clock, bus=self.bus
        )
