"""``with_resilience`` and ``@resilient``: the whole resilience stack around one callee.

One call gives an agent, a model client or a plain function every strategy,
with defaults chosen for LLM calls, in the order fixed by the pipeline module:

=================  =====================================================================
option             default
=================  =====================================================================
circuit_breaker    ``CircuitBreakerConfig(failure_threshold=5, reset_timeout=30.0,
                   call_timeout=60.0)`` -- its ``call_timeout`` is the per-attempt timeout
rate_limit         ``RateLimitConfig(max_rpm=60)`` -- admission, once per run
retry              ``RetryConfig(max_retries=2, backoff=0.5, max_backoff=5.0)``
bulkhead           off (``True`` gives ``BulkheadConfig()``)
total_timeout      off (seconds over all attempts)
fallback           none
health_check       ``True`` (``HealthConfig()`` thresholds; a rate limiter counting in a
                   shared store also reports that store's outages)
graceful_shutdown  ``True``: drain on SIGTERM (see the shutdown module), 30 s
=================  =====================================================================

``False`` switches a part off; a config object tunes it; an instance
(``CircuitBreaker``, ``RateLimiter``, ``Retry``, ``Bulkhead``) shares it
between several wrapped agents -- one breaker per model, one limit per tenant.
With ``circuit_breaker=False`` there is no per-attempt timeout either; use
``total_timeout`` or keep the breaker and ``disable()`` it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, ParamSpec, Protocol, TypedDict, TypeVar, Unpack, cast, overload

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.events import EventBus
from bastion.resilience._breaker import CircuitBreaker, CircuitBreakerConfig
from bastion.resilience._bulkhead import Bulkhead, BulkheadConfig
from bastion.resilience._fallback import Fallback, FallbackResult
from bastion.resilience._health import HealthConfig, HealthReport, HealthTracker
from bastion.resilience._invoke import Target, resolve_target
from bastion.resilience._pipeline import Pipeline
from bastion.resilience._ratelimit import RateLimitConfig, RateLimiter
from bastion.resilience._retry import Retry, RetryConfig
from bastion.resilience._shutdown import DrainReport, ShutdownGate, watch_sigterm
from bastion.resilience._store_health import StoreHealth
from bastion.resilience._timeout import check_timeout

__all__ = ["ResilienceOptions", "ResilientAgent", "resilient", "with_resilience"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
P = ParamSpec("P")


class ResilienceOptions(TypedDict, total=False):
    """Keyword options of :func:`with_resilience` and :func:`resilient` (see the module docs)."""

    name: str
    circuit_breaker: CircuitBreakerConfig | CircuitBreaker | bool
    rate_limit: RateLimitConfig | RateLimiter | bool
    retry: RetryConfig | Retry | bool
    bulkhead: BulkheadConfig | Bulkhead | bool
    total_timeout: float | None
    fallback: Fallback | Sequence[object] | None
    health_check: HealthConfig | bool
    graceful_shutdown: bool
    shutdown_timeout: float
    clock: Clock
    bus: EventBus | None


class AsyncRunner(Protocol[T_co]):
    """An agent whose ``run(input, **kwargs)`` is a coroutine function."""

    @property
    def run(self) -> Callable[..., Awaitable[T_co]]: ...


class SyncRunner(Protocol[T_co]):
    """An agent whose ``run(input, **kwargs)`` blocks and returns the answer."""

    @property
    def run(self) -> Callable[..., T_co]: ...


_OPTIONS = frozenset(ResilienceOptions.__annotations__)


class ResilientAgent(Generic[T]):
    """A callee wrapped in the resilience pipeline; ``run`` has the callee's signature.

    Build one with :func:`with_resilience`.
    """

    __slots__ = (
        "__weakref__",
        "_gate",
        "_graceful",
        "_health",
        "_loop",
        "_pipeline",
        "_shutdown_timeout",
        "_target",
        "wrapped",
    )

    def __init__(
        self,
        wrapped: object,
        *,
        target: Target,
        pipeline: Pipeline,
        gate: ShutdownGate,
        health: HealthTracker | None,
        graceful_shutdown: bool,
        shutdown_timeout: float,
    ) -> None:
        self.wrapped = wrapped
        self._target = target
        self._pipeline = pipeline
        self._gate = gate
        self._health = health
        self._graceful = graceful_shutdown
        self._shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<ResilientAgent {self.name!r}>"

    @property
    def name(self) -> str:
        return self._pipeline.name

    @property
    def circuit_breaker(self) -> CircuitBreaker | None:
        return self._pipeline.breaker

    @property
    def rate_limiter(self) -> RateLimiter | None:
        return self._pipeline.limiter

    @property
    def retry(self) -> Retry | None:
        return self._pipeline.retry

    @property
    def bulkhead(self) -> Bulkhead | None:
        return self._pipeline.bulkhead

    @property
    def fallback(self) -> Fallback | None:
        return self._pipeline.fallback

    async def run(self, input: Any, /, **kwargs: Any) -> T:
        """Run the wrapped agent through the pipeline and return its answer."""
        return await self._run_value((input,), kwargs)

    async def run_detailed(self, input: Any, /, **kwargs: Any) -> FallbackResult[T]:
        """Like :meth:`run`, but say who served the answer and who was skipped on the way."""
        return await self._run((input,), kwargs)

    def run_sync(self, input: Any, /, **kwargs: Any) -> T:
        """Blocking :meth:`run`.

        For a sync callee the pipeline runs in the calling thread; with a
        per-attempt timeout each attempt runs in a worker thread of its own so
        the caller can stop waiting (pass ``call_timeout=None`` to keep the
        callee in this thread). For an async callee this runs its own event
        loop, so it cannot be called from inside one.
        """
        return self._run_sync((input,), kwargs).value

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            watch_sigterm(self, timeout=self._shutdown_timeout)

    async def _run_value(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        pipeline = self._pipeline
        if pipeline.fallback is not None:
            return (await self._run(args, kwargs)).value
        if self._graceful:
            self._watch()
        call = self._target.bind_async(args, kwargs)
        health = self._health
        if health is None:
            return await pipeline.run_value(call, args, kwargs)
        monotonic = pipeline.clock.monotonic
        started = monotonic()
        try:
            value: T = await pipeline.run_value(call, args, kwargs)
        except Exception as exc:
            health.record(monotonic() - started, exc)
            raise
        health.record(monotonic() - started)
        return value

    async def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FallbackResult[T]:
        if self._graceful:
            self._watch()
        pipeline = self._pipeline
        call = self._target.bind_async(args, kwargs)
        health = self._health
        if health is None:
            return await pipeline.run(call, args, kwargs)
        monotonic = pipeline.clock.monotonic
        started = monotonic()
        try:
            result = await pipeline.run(call, args, kwargs)
        except Exception as exc:
            health.record(monotonic() - started, exc)
            raise
        _record_served(health, monotonic() - started, result)
        return result

    def _run_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FallbackResult[T]:
        if self._target.is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self._run(args, kwargs))
            msg = (
                f"run_sync() was called inside a running event loop for async {self.name!r}; "
                "use `await agent.run(...)` there"
            )
            raise ConfigurationError(msg)
        pipeline = self._pipeline
        _check_sync_fallback(pipeline.fallback, self.name)
        call = self._target.bind_sync(args, kwargs)
        health = self._health
        if health is None:
            return pipeline.run_sync(call, args, kwargs)
        monotonic = pipeline.clock.monotonic
        started = monotonic()
        try:
            result = pipeline.run_sync(call, args, kwargs)
        except Exception as exc:
            health.record(monotonic() - started, exc)
            raise
        _record_served(health, monotonic() - started, result)
        return result

    def health(self) -> HealthReport:
        """Counters, latency percentiles and a status; the rules are in the health module."""
        if self._health is None:
            msg = f"health checks are off for {self.name!r}; build it with health_check=True"
            raise ConfigurationError(msg)
        breaker = self._pipeline.breaker
        gate = self._gate
        return self._health.report(
            name=self.name,
            circuit_state=str(breaker.state) if breaker is not None else None,
            in_flight=gate.in_flight,
            shutting_down=gate.closed,
        )

    async def shutdown(self, timeout: float | None = None) -> DrainReport:
        """Stop admitting runs, wait up to ``timeout`` for those in flight, cancel the rest.

        ``timeout`` defaults to the ``shutdown_timeout`` option (30 s).
        """
        wait = self._shutdown_timeout if timeout is None else timeout
        return await self._gate.drain(wait)


@overload
def with_resilience(
    agent: AsyncRunner[T], /, **options: Unpack[ResilienceOptions]
) -> ResilientAgent[T]: ...
@overload
def with_resilience(
    agent: SyncRunner[T], /, **options: Unpack[ResilienceOptions]
) -> ResilientAgent[T]: ...
@overload
def with_resilience(
    agent: Callable[..., Awaitable[T]], /, **options: Unpack[ResilienceOptions]
) -> ResilientAgent[T]: ...
@overload
def with_resilience(
    agent: Callable[..., T], /, **options: Unpack[ResilienceOptions]
) -> ResilientAgent[T]: ...
def with_resilience(agent: object, /, **options: Unpack[ResilienceOptions]) -> ResilientAgent[Any]:
    """Wrap ``agent`` (an object with ``run(input, **kwargs)``, or a callable) in the pipeline."""
    target = resolve_target(agent, name=options.get("name"))
    return _build(agent, target, options)


class ResilientCallable(Protocol[P, T_co]):
    """A function decorated with :func:`resilient`: same call, plus ``.resilience``."""

    resilience: ResilientAgent[Any]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...


def resilient(
    **options: Unpack[ResilienceOptions],
) -> Callable[[Callable[P, T]], ResilientCallable[P, T]]:
    """Decorator form of :func:`with_resilience` for functions; sync stays sync, async stays async.

    The decorated function gains ``.resilience`` (the :class:`ResilientAgent`)
    for ``health()`` and ``shutdown()``.
    """
    _check_options(options)

    def decorate(fn: Callable[P, T]) -> ResilientCallable[P, T]:
        target = resolve_target(fn, name=options.get("name"))
        agent: ResilientAgent[Any] = _build(fn, target, options)
        if target.is_async:

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await agent._run_value(args, kwargs)

            wrapper: Any = async_wrapper
        else:
            _check_sync_fallback(agent.fallback, agent.name)

            @functools.wraps(fn)
            def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return agent._run_sync(args, kwargs).value

            wrapper = sync_wrapper
        wrapper.resilience = agent
        return cast(ResilientCallable[P, T], wrapper)

    return decorate


def _record_served(health: HealthTracker, duration: float, result: FallbackResult[Any]) -> None:
    """Count a served run; when a backup served, the primary's failure still counts as recent."""
    primary_error = result.skipped[0].error if result.degraded and result.skipped else None
    health.record(duration, None, fallback=result.degraded, primary_error=primary_error)


def _check_sync_fallback(fallback: Fallback | None, name: str) -> None:
    if fallback is None:
        return
    async_backups = [t.name for t in fallback.targets if t.is_async]
    if async_backups:
        msg = (
            f"{name!r} runs sync, but its fallback(s) {async_backups} are async and cannot "
            "be called from the sync API; use `await agent.run(...)` or sync fallbacks"
        )
        raise ConfigurationError(msg)


def _check_options(options: ResilienceOptions) -> None:
    unknown = set(options) - _OPTIONS
    if unknown:
        msg = f"unknown option(s) {sorted(unknown)}; valid options are {sorted(_OPTIONS)}"
        raise ConfigurationError(msg)


def _build(wrapped: object, target: Target, options: ResilienceOptions) -> ResilientAgent[Any]:
    _check_options(options)
    name = options.get("name") or target.name
    clock = options.get("clock", SYSTEM_CLOCK)
    bus = options.get("bus")

    def part(
        option: str, default: bool, instance_type: type[T], config_type: type[Any]
    ) -> T | None:
        value = options.get(option, default)
        return _part(value, instance_type, config_type, option, name=name, clock=clock, bus=bus)

    breaker = part("circuit_breaker", True, CircuitBreaker, CircuitBreakerConfig)
    limiter = part("rate_limit", True, RateLimiter, RateLimitConfig)
    retry = part("retry", True, Retry, RetryConfig)
    bulkhead = part("bulkhead", False, Bulkhead, BulkheadConfig)
    fallback_option = options.get("fallback")
    if fallback_option is None or isinstance(fallback_option, Fallback):
        fallback = fallback_option
    else:
        fallback = Fallback(fallback_option, name=name, bus=bus)

    health_option: object = options.get("health_check", True)
    health: HealthTracker | None
    if health_option is False:
        health = None
    elif health_option is True or isinstance(health_option, HealthConfig):
        health_config = HealthConfig() if health_option is True else health_option
        health = HealthTracker(
            config=health_config, clock=clock, stores=_watch_stores(limiter, health_config, clock)
        )
    else:
        msg = f"health_check must be True, False or a HealthConfig, got {health_option!r}"
        raise ConfigurationError(msg)

    shutdown_timeout = check_timeout(options.get("shutdown_timeout", 30.0), "shutdown_timeout")
    if shutdown_timeout is None:
        msg = "shutdown_timeout must be a number of seconds > 0: a drain needs a bound; got None"
        raise ConfigurationError(msg)
    gate = ShutdownGate(name, clock=clock, bus=bus)
    pipeline = Pipeline(
        name=name,
        gate=gate,
        fallback=fallback,
        limiter=limiter,
        total_timeout=check_timeout(options.get("total_timeout"), "total_timeout"),
        retry=retry,
        breaker=breaker,
        bulkhead=bulkhead,
        call_timeout=breaker.config.call_timeout if breaker is not None else None,
        clock=clock,
        bus=bus,
    )
    return ResilientAgent(
        wrapped,
        target=target,
        pipeline=pipeline,
        gate=gate,
        health=health,
        graceful_shutdown=bool(options.get("graceful_shutdown", True)),
        shutdown_timeout=shutdown_timeout,
    )


def _watch_stores(
    limiter: RateLimiter | None, config: HealthConfig, clock: Clock
) -> StoreHealth | None:
    """Listen for the outages of the agent's store-backed parts -- today, a limiter on a store.

    The watch listens on the limiter's own bus (a shared limiter may emit to
    another bus than the agent's) and to its name only, so an agent never
    reports a store that some other component of the process failed to reach.
    An agent without a store-backed part subscribes to nothing.
    """
    if limiter is None or limiter._store is None:
        return None
    return StoreHealth(
        bus=limiter._bus,
        clock=clock,
        degraded_for=config.store_degraded_for,
        sources=(limiter.name,),
    )


def _part(
    value: object,
    instance_type: type[T],
    config_type: type[Any],
    option: str,
    *,
    name: str,
    clock: Clock,
    bus: EventBus | None,
) -> T | None:
    """Turn one option (False / True / config / shared instance) into a strategy or None."""
    if value is False:
        return None
    if value is True:
        value = config_type()
    if isinstance(value, instance_type):
        return value
    if isinstance(value, config_type):
        build: Any = instance_type
        strategy: T = build(value, name=name, clock=clock, bus=bus)
        return strategy
    msg = (
        f"{option} must be True, False, a {config_type.__name__} or a {instance_type.__name__}, "
        f"got {value!r}"
    )
    raise ConfigurationError(msg)
