"""Keep calls under a rate: requests and tokens per window, per key.

Two jobs share this one limiter. *Admission* limits protect a service from its
callers: a refused caller should hear "no, try again in N seconds" at once, so
the default mode is ``"reject"`` and :class:`RateLimitError` carries an exact
``retry_after`` for a ``Retry-After`` header. *Provider-quota* limits keep a
service under its providers' quotas: there a short wait beats an upstream 429,
so mode ``"wait"`` sleeps until the call fits, bounded by ``max_wait``.

LLM quotas count tokens as well as requests, so a call can cost against
``max_rpm`` and ``max_tpm`` at once; it is admitted against both or neither, so a
call refused for tokens never uses up a request.

The counting is exact (see :mod:`bastion.resilience._window_log` for why a
sliding log and not a bucket): no interval of ``window`` seconds ever holds more
than the limit. The log lives in a *backend*; the in-memory
:class:`SlidingWindowLog` is the default, and a shared store (Redis, SQL) plugs
in through ``backend=`` behind the same interface. This module only turns
decisions into waits, errors and events; time comes from the injected clock.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, overload

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError, RateLimitError
from bastion._core.events import CallRejected, EventBus, default_bus
from bastion.resilience._window_log import RateLimitBackend, SlidingWindowLog, WindowDecision

__all__ = ["RateLimitConfig", "RateLimitDecision", "RateLimiter", "estimate_tokens"]

P = ParamSpec("P")
T = TypeVar("T")

_MODES = ("reject", "wait")
_REQUEST_COST = (1.0,)


def estimate_tokens(input: object, /, **_: object) -> float:
    """A rough token count for limiting: about four characters of text per token.

    Good enough to keep a per-minute token quota honest when nothing better is
    known; pass ``RateLimitConfig(tokens=...)`` to count with a real tokenizer.
    """
    return float(math.ceil(len(str(input)) / 4))


def _check_limit(value: float | None, option: str, *, at_least_one: bool, fix: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"RateLimitConfig({option}) must be a number or None; got {value!r}"
        raise ConfigurationError(msg)
    if not (value >= 1 if at_least_one else value > 0) or value == math.inf:
        bound = ">= 1" if at_least_one else "> 0"
        msg = f"RateLimitConfig({option}) must be finite and {bound}; got {value!r} ({fix})"
        raise ConfigurationError(msg)


def _check_seconds(value: float, option: str, *, allow_zero: bool) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and (value >= 0 if allow_zero else value > 0)
        and value < math.inf
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        msg = f"RateLimitConfig({option}) must be a finite number of seconds {bound}; got {value!r}"
        raise ConfigurationError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    """How many requests and tokens a key may spend per window, and what to do when out.

    ``max_rpm``/``max_tpm`` count per ``window`` seconds; with the default
    ``window=60`` they are literally per minute. ``key(input, **kwargs)`` picks
    the key a call is counted under (default: one shared ``"default"`` key);
    ``tokens(input, **kwargs)`` prices a call for ``max_tpm`` (default:
    :func:`estimate_tokens`).
    """

    max_rpm: float | None = 60
    max_tpm: float | None = None
    window: float = 60.0
    mode: Literal["reject", "wait"] = "reject"
    max_wait: float = 10.0
    key: Callable[..., str] | None = None
    tokens: Callable[..., float] | None = None

    def __post_init__(self) -> None:
        _check_limit(
            self.max_rpm,
            "max_rpm",
            at_least_one=True,
            fix="for less than one call per window use a longer window; None for no limit",
        )
        _check_limit(self.max_tpm, "max_tpm", at_least_one=False, fix="use None for no token limit")
        if self.max_rpm is None and self.max_tpm is None:
            msg = (
                "RateLimitConfig needs max_rpm or max_tpm (or both); both are None, "
                "which would limit nothing: drop the limiter instead"
            )
            raise ConfigurationError(msg)
        _check_seconds(self.window, "window", allow_zero=False)
        if self.mode not in _MODES:
            msg = f"RateLimitConfig(mode) must be 'reject' or 'wait'; got {self.mode!r}"
            raise ConfigurationError(msg)
        _check_seconds(self.max_wait, "max_wait", allow_zero=True)
        for option in ("key", "tokens"):
            value = getattr(self, option)
            if value is not None and not callable(value):
                msg = f"RateLimitConfig({option}) must be a callable or None; got {value!r}"
                raise ConfigurationError(msg)

    def key_for(self, input: object, /, **kwargs: object) -> str:
        """The key a call with this input is counted under."""
        if self.key is None:
            return "default"
        return self.key(input, **kwargs)

    def tokens_for(self, input: object, /, **kwargs: object) -> float:
        """What a call with this input costs against ``max_tpm``."""
        if self.tokens is None:
            return estimate_tokens(input)
        return self.tokens(input, **kwargs)


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """What the limiter decided, with the numbers a ``RateLimit-*`` header needs.

    ``limit`` and ``remaining`` describe the binding limit: the one that
    refused, or the one with the smallest share left when the call was
    admitted. ``reset_at`` is the wall-clock time (``clock.time()``) when that
    limit is fully free again; ``retry_after`` is 0.0 when admitted, else the
    seconds until a call of this cost would fit.
    """

    allowed: bool
    limit: float
    remaining: float
    reset_at: float
    retry_after: float


class RateLimiter:
    """Admit calls at most ``max_rpm`` requests and ``max_tpm`` tokens per window and key.

    >>> limiter = RateLimiter(RateLimitConfig(max_rpm=100), name="search")
    >>> @limiter
    ... async def search(q: str) -> list[str]: ...

    ``backend`` swaps the in-memory log for a shared store implementing
    :class:`RateLimitBackend` with the same limits and window.
    """

    __slots__ = ("_backend", "_bus", "_costs", "_names", "clock", "config", "name")

    def __init__(
        self,
        config: RateLimitConfig | None = None,
        *,
        name: str = "rate_limit",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
        backend: RateLimitBackend | None = None,
    ) -> None:
        self.config = config if config is not None else RateLimitConfig()
        self.name = name
        self.clock = clock
        self._bus = bus
        limits: list[float] = []
        names: list[str] = []
        if self.config.max_rpm is not None:
            limits.append(float(self.config.max_rpm))
            names.append("max_rpm")
        if self.config.max_tpm is not None:
            limits.append(float(self.config.max_tpm))
            names.append("max_tpm")
        self._names = tuple(names)
        self._costs = _cost_builder(self._names)
        if backend is None:
            backend = SlidingWindowLog(limits=limits, window=self.config.window, names=names)
        elif tuple(backend.limits) != tuple(limits) or backend.window != self.config.window:
            msg = (
                f"RateLimiter(backend) counts limits={tuple(backend.limits)!r} per "
                f"{backend.window!r}s but the config asks for {tuple(limits)!r} per "
                f"{self.config.window!r}s; build the backend from the same config"
            )
            raise ConfigurationError(msg)
        self._backend = backend

    def __repr__(self) -> str:
        c = self.config
        return (
            f"RateLimiter(name={self.name!r}, max_rpm={c.max_rpm!r}, max_tpm={c.max_tpm!r}, "
            f"window={c.window!r}, mode={c.mode!r})"
        )

    @property
    def backend(self) -> RateLimitBackend:
        """The store that holds the log of admitted calls."""
        return self._backend

    def try_acquire(self, key: str = "default", *, tokens: float = 0.0) -> RateLimitDecision:
        """Admit one call costing ``tokens`` now, or refuse it at once; never waits or raises.

        A refusal emits ``CallRejected`` like every other one.
        """
        costs = self._costs(tokens)
        verdict = self._backend.decide(key, costs, self.clock.monotonic())
        if not verdict.allowed:
            self._emit_rejected(verdict)
        return self._public(verdict)

    async def acquire(self, key: str = "default", *, tokens: float = 0.0) -> RateLimitDecision:
        """Admit one call costing ``tokens``: raise when out (reject mode) or wait (wait mode)."""
        return self._public(await self._admit(key, tokens))

    def acquire_sync(self, key: str = "default", *, tokens: float = 0.0) -> RateLimitDecision:
        """:meth:`acquire` for threads: a wait blocks the calling thread."""
        return self._public(self._admit_sync(key, tokens))

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` once admitted under key ``"default"``."""
        await self._admit("default", 0.0)
        return await fn(*args, **kwargs)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` once admitted under key ``"default"``."""
        self._admit_sync("default", 0.0)
        return fn(*args, **kwargs)

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                await self._admit("default", 0.0)
                return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            self._admit_sync("default", 0.0)
            return fn(*args, **kwargs)

        return sync_wrapper

    async def _admit(self, key: str, tokens: float) -> WindowDecision:
        costs = self._costs(tokens)
        waited = 0.0
        while True:
            verdict = self._backend.decide(key, costs, self.clock.monotonic())
            if verdict.allowed:
                return verdict
            delay = self._delay_or_raise(key, costs, verdict, waited)
            await self.clock.sleep(delay)
            waited += delay

    def _admit_sync(self, key: str, tokens: float) -> WindowDecision:
        costs = self._costs(tokens)
        waited = 0.0
        while True:
            verdict = self._backend.decide(key, costs, self.clock.monotonic())
            if verdict.allowed:
                return verdict
            delay = self._delay_or_raise(key, costs, verdict, waited)
            self.clock.sleep_sync(delay)
            waited += delay

    def _delay_or_raise(
        self, key: str, costs: tuple[float, ...], verdict: WindowDecision, waited: float
    ) -> float:
        """How long to sleep before asking again; raises when the answer is "don't"."""
        config = self.config
        if config.mode == "wait" and waited + verdict.retry_after <= config.max_wait:
            return verdict.retry_after
        self._emit_rejected(verdict)
        raise RateLimitError(
            key,
            retry_after=verdict.retry_after,
            limit=verdict.limit,
            remaining=verdict.remaining,
            window=config.window,
            cost=costs[verdict.binding],
        )

    def _emit_rejected(self, verdict: WindowDecision) -> None:
        bus = self._bus if self._bus is not None else default_bus()
        bus.emit(
            CallRejected(source=self.name, reason="rate_limited", retry_after=verdict.retry_after)
        )

    def _public(self, verdict: WindowDecision) -> RateLimitDecision:
        return RateLimitDecision(
            verdict.allowed,
            verdict.limit,
            verdict.remaining,
            self.clock.time() + verdict.reset_after,
            verdict.retry_after,
        )


def _cost_builder(names: tuple[str, ...]) -> Callable[[float], tuple[float, ...]]:
    """The function turning a call's token count into one cost per active limit."""

    def check(tokens: float) -> float:
        if (
            isinstance(tokens, bool)
            or not isinstance(tokens, int | float)
            or not 0 <= tokens < math.inf
        ):
            msg = f"tokens must be a finite number >= 0; got {tokens!r}"
            raise ConfigurationError(msg)
        return float(tokens)

    if names == ("max_rpm",):

        def requests_only(tokens: float) -> tuple[float, ...]:
            if tokens:
                check(tokens)
            return _REQUEST_COST

        return requests_only
    if names == ("max_tpm",):

        def tokens_only(tokens: float) -> tuple[float, ...]:
            return (check(tokens),)

        return tokens_only

    def both(tokens: float) -> tuple[float, ...]:
        return (1.0, check(tokens))

    return both
