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

The counting is exact (see :mod:`bastion.stores._window_log` for why a
sliding log and not a bucket): no interval of ``window`` seconds ever holds more
than the limit. ``algorithm="fixed"`` trades that for a cheaper counter that
holds per fixed window only (see :mod:`bastion.stores._fixed_window`).

Where the counts live is the *backend*. By default it is an in-process log
asked synchronously with the limiter's own clock -- the hot path, a few
microseconds. ``backend=`` takes a store instead (``open_store("redis://...")``,
SQL, memory): then every process sharing the store shares the limit, each
decision is one atomic step on the store, and the store keeps time. A store
can be unreachable; ``on_store_failure`` says whether calls then go through
unchecked (``"open"``, the default) or are refused with
:class:`StoreUnavailableError` (``"closed"``). This module only turns
decisions into waits, errors and events.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import (
    ConfigurationError,
    RateLimitError,
    RequestTooLargeError,
    StoreUnavailableError,
)
from bastion._core.events import CallRejected, EventBus, default_bus
from bastion._core.validate import (
    at_least,
    awaitable_returned,
    callable_or_none,
    instance_of,
    invalid,
    non_negative_number,
    one_of,
    optional_positive_number,
    positive_number,
)
from bastion.resilience._invoke import decorate
from bastion.stores._base import FailureMode, report_degraded
from bastion.stores._ratelimit import ALGORITHMS, Algorithm, RateLimitStore, WindowSpec
from bastion.stores._redis import RedisStore, refuse_retries
from bastion.stores._window_log import RateLimitBackend, WindowDecision

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "RateLimitConfig",
    "RateLimitDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "estimate_tokens",
]

P = ParamSpec("P")
T = TypeVar("T")

_MODES = ("reject", "wait")
_FAILURE_MODES = ("open", "closed")
_REQUEST_COST = (1.0,)


def estimate_tokens(*args: object, **kwargs: object) -> float:
    """A rough token count for limiting: about four characters of text per token.

    Counts the text of every ``str`` argument, positional or keyword, and
    ignores the rest (a method's ``self``, numbers, options), so it prices any
    call from its arguments. Good enough to keep a per-minute token quota
    honest when nothing better is known; pass ``RateLimitConfig(tokens=...)``
    to count with a real tokenizer.
    """
    chars = 0
    for arg in args:
        if isinstance(arg, str):
            chars += len(arg)
    for value in kwargs.values():
        if isinstance(value, str):
            chars += len(value)
    return float(math.ceil(chars / 4))


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    """How many requests and tokens a key may spend per window, and what to do when out.

    ``max_rpm``/``max_tpm`` count per ``window`` seconds; with the default
    ``window=60`` they are literally per minute. ``key`` and ``tokens`` are
    called with the same arguments as the wrapped agent's ``run`` (under
    ``with_resilience``) or the decorated function (under ``@limiter`` and
    :meth:`RateLimiter.call`), whatever those are.
    """

    max_rpm: float | None = 60
    """Requests per window (at least 1); None for no request limit."""
    max_tpm: float | None = None
    """Tokens per window; None for no token limit."""
    window: float = 60.0
    """Seconds the limits count over."""
    mode: Literal["reject", "wait"] = "reject"
    """``"reject"``: refuse at once; ``"wait"``: sleep until the call fits, up to ``max_wait``."""
    max_wait: float = 10.0
    """Wait mode: the longest total sleep before refusing anyway."""
    key: Callable[..., str] | None = None
    """``key(*args, **kwargs)``, called with the same arguments as the wrapped agent's run / the
    decorated function, picks the key a call counts under; None: one shared ``"default"``."""
    tokens: Callable[..., float] | None = None
    """``tokens(*args, **kwargs)``, called with the same arguments as the wrapped agent's run /
    the decorated function, prices a call for ``max_tpm``; None: :func:`estimate_tokens`."""
    algorithm: Algorithm = "sliding"
    """``"sliding"``: exact, no interval of ``window`` seconds exceeds a limit; ``"fixed"``:
    per fixed window only (up to twice a limit across a boundary), but cheaper to store."""
    on_store_failure: FailureMode = "open"
    """With a store as backend, when it cannot be reached: ``"open"`` lets calls through
    unchecked, ``"closed"`` refuses them with ``StoreUnavailableError``."""

    def __post_init__(self) -> None:
        if self.max_rpm is not None:
            at_least(
                self.max_rpm,
                "RateLimitConfig.max_rpm",
                1,
                hint="for less than one call per window use a longer window; None for no limit",
            )
        optional_positive_number(self.max_tpm, "RateLimitConfig.max_tpm", none="for no token limit")
        if self.max_rpm is None and self.max_tpm is None:
            invalid(
                "RateLimitConfig.max_rpm",
                "set when max_tpm is None: a limiter needs max_rpm or max_tpm (or both), and "
                "one with neither would limit nothing (drop it instead)",
                None,
            )
        positive_number(self.window, "RateLimitConfig.window", unit="seconds")
        one_of(self.mode, "RateLimitConfig.mode", _MODES)
        one_of(self.algorithm, "RateLimitConfig.algorithm", ALGORITHMS)
        one_of(self.on_store_failure, "RateLimitConfig.on_store_failure", _FAILURE_MODES)
        non_negative_number(self.max_wait, "RateLimitConfig.max_wait", unit="seconds")
        callable_or_none(
            self.key, "RateLimitConfig.key", what="a function of the call's arguments -> str"
        )
        callable_or_none(
            self.tokens,
            "RateLimitConfig.tokens",
            what="a function of the call's arguments -> token count",
        )

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The key a call with these arguments (the wrapped callable's) is counted under."""
        if self.key is None:
            return "default"
        return self.key(*args, **kwargs)

    def tokens_for(self, *args: Any, **kwargs: Any) -> float:
        """What a call with these arguments (the wrapped callable's) costs against ``max_tpm``."""
        if self.tokens is None:
            return estimate_tokens(*args, **kwargs)
        return self.tokens(*args, **kwargs)


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

    ``backend`` is where the counts live: an in-process log (a
    :class:`RateLimitBackend` with the same limits and window, e.g. one shared
    by two limiters) or a store (:class:`~bastion.stores.RateLimitStore`), which
    shares the limit with every process using it. With a store, only the async
    methods can ask it (``acquire``, ``check``, ``call``, an async decorated function).
    """

    __slots__ = (
        "_bus",
        "_costs",
        "_log",
        "_max_tokens",
        "_names",
        "_open",
        "_priced",
        "_spec",
        "_store",
        "clock",
        "config",
        "name",
    )

    def __init__(
        self,
        config: RateLimitConfig | None = None,
        *,
        name: str = "rate_limit",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
        backend: RateLimitBackend | RateLimitStore | None = None,
    ) -> None:
        self.config = instance_of(config, RateLimitConfig, "RateLimiter.config")
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
        self._priced = self.config.max_tpm is not None
        max_tpm = self.config.max_tpm
        self._max_tokens = math.inf if max_tpm is None else float(max_tpm)
        self._spec = WindowSpec(
            limits=tuple(limits),
            window=self.config.window,
            algorithm=self.config.algorithm,
            name=name,
            names=self._names,
        )
        self._open = WindowDecision(True, 0, limits[0], limits[0], 0.0, 0.0)
        self._store: RateLimitStore | None = None
        self._log: RateLimitBackend | None = None
        if backend is None:
            self._log = self._spec.local()
        elif isinstance(backend, RateLimitStore):
            self._store = backend
        elif tuple(backend.limits) != tuple(limits) or backend.window != self.config.window:
            msg = (
                f"RateLimiter(backend) counts limits={tuple(backend.limits)!r} per "
                f"{backend.window!r}s but the config asks for {tuple(limits)!r} per "
                f"{self.config.window!r}s; build the backend from the same config"
            )
            raise ConfigurationError(msg)
        else:
            self._log = backend

    def __repr__(self) -> str:
        c = self.config
        return (
            f"RateLimiter(name={self.name!r}, max_rpm={c.max_rpm!r}, max_tpm={c.max_tpm!r}, "
            f"window={c.window!r}, mode={c.mode!r})"
        )

    @property
    def backend(self) -> RateLimitBackend | RateLimitStore:
        """Where the counts live: the in-process log, or the store given as ``backend=``."""
        if self._store is not None:
            return self._store
        assert self._log is not None
        return self._log

    def try_acquire(self, key: str = "default", *, tokens: float = 0.0) -> RateLimitDecision:
        """Admit one call costing ``tokens`` now, or refuse it at once; never waits or raises.

        A refusal emits ``CallRejected`` like every other one. In-process
        backends only: with a store, use :meth:`check`.
        """
        costs = self._price(key, tokens)
        verdict = self._local("try_acquire", "check").decide(key, costs, self.clock.monotonic())
        if not verdict.allowed:
            self._emit_rejected(verdict)
        return self._public(verdict)

    async def check(self, key: str = "default", *, tokens: float = 0.0) -> RateLimitDecision:
        """:meth:`try_acquire` for every backend, stores included: admit now or refuse at once.

        Never waits and never raises for a refusal (only ``StoreUnavailableError``
        when the store is down and ``on_store_failure="closed"``).
        """
        costs = self._price(key, tokens)
        verdict = await self._decide(key, costs)
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
        """Await ``fn(*args, **kwargs)`` once admitted.

        The call counts under ``config.key_for(*args, **kwargs)`` and, with a
        token limit, costs ``config.tokens_for(*args, **kwargs)`` tokens.
        """
        if self._priced:
            if self.config.max_rpm is None:
                raise self._token_only("RateLimiter.call")
            tokens = self.config.tokens_for(*args, **kwargs)
        else:
            tokens = 0.0
        await self._admit(self.config.key_for(*args, **kwargs), tokens)
        return await fn(*args, **kwargs)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` once admitted (keyed and priced as in :meth:`call`)."""
        if self._priced:
            if self.config.max_rpm is None:
                raise self._token_only("RateLimiter.call_sync")
            tokens = self.config.tokens_for(*args, **kwargs)
        else:
            tokens = 0.0
        self._admit_sync(self.config.key_for(*args, **kwargs), tokens)
        result = fn(*args, **kwargs)
        if hasattr(result, "__await__"):
            raise awaitable_returned(
                result, "RateLimiter.call_sync", instead="await limiter.call(...)"
            )
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any], /) -> Callable[P, Any]:
        if self.config.max_rpm is None:
            raise self._token_only("@RateLimiter")
        return decorate(fn, self.call, self.call_sync)

    def _token_only(self, api: str) -> ConfigurationError:
        return ConfigurationError(
            f"{api} cannot limit {self.name!r}: its config has max_rpm=None, so it counts only "
            "tokens, and a wrapped call does not say what it costs; price each call yourself "
            "with `await limiter.acquire(key, tokens=...)` (or acquire_sync), or set max_rpm"
        )

    def _price(self, key: str, tokens: float) -> tuple[float, ...]:
        """One cost per active limit; refuses a call whose tokens could never fit ``max_tpm``."""
        costs = self._costs(tokens)
        if tokens > self._max_tokens:
            bus = self._bus if self._bus is not None else default_bus()
            bus.emit(CallRejected(source=self.name, reason="too_large"))
            raise RequestTooLargeError(key, cost=tokens, limit=self._max_tokens, unit="tokens")
        return costs

    async def _admit(self, key: str, tokens: float) -> WindowDecision:
        costs = self._price(key, tokens)
        waited = 0.0
        log = self._log
        while True:
            if log is not None:
                verdict = log.decide(key, costs, self.clock.monotonic())
            else:
                verdict = await self._decide(key, costs)
            if verdict.allowed:
                return verdict
            delay = self._delay_or_raise(key, costs, verdict, waited)
            await self.clock.sleep(delay)
            waited += delay

    async def _decide(self, key: str, costs: tuple[float, ...]) -> WindowDecision:
        """Ask the backend; a store that cannot answer gets the configured failure mode."""
        store = self._store
        if store is None:
            assert self._log is not None
            return self._log.decide(key, costs, self.clock.monotonic())
        try:
            return await store.rate_limit(key, costs, self._spec)
        except StoreUnavailableError as exc:
            mode = self.config.on_store_failure
            report_degraded(exc, source=self.name, mode=mode, bus=self._bus)
            if mode == "closed":
                raise
            return self._open

    def _local(self, api: str, instead: str) -> RateLimitBackend:
        """The in-process log, for the sync shells; a store cannot be asked without awaiting."""
        log = self._log
        if log is None:
            assert self._store is not None
            msg = (
                f"{api} cannot ask the {self._store.backend} store behind {self.name!r}: a "
                f"shared store answers over the network, so use `await limiter.{instead}(...)`"
            )
            raise ConfigurationError(msg)
        return log

    def _admit_sync(self, key: str, tokens: float) -> WindowDecision:
        costs = self._price(key, tokens)
        waited = 0.0
        log = self._local("a sync call (acquire_sync, call_sync, a sync function)", "acquire")
        while True:
            verdict = log.decide(key, costs, self.clock.monotonic())
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
        return non_negative_number(tokens, "tokens", hint="a call's token count")

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


class RedisRateLimiter:
    """A rate limit shared through Redis, for callers that only have a Redis client.

    ``max_requests`` per ``window`` seconds per key, decided by one Lua script
    on the server (see :class:`~bastion.stores.RedisStore`). It is a thin
    front for ``RateLimiter(config, backend=RedisStore(client=...))`` -- the
    same limiter, errors and events -- with the names such callers expect.
    The client must not retry (a re-sent script may count a request twice);
    one that does is refused with a ``ConfigurationError``:

    >>> from redis.asyncio import Redis
    >>> from redis.asyncio.retry import Retry
    >>> from redis.backoff import NoBackoff
    >>> redis_client = Redis(host="localhost", retry=Retry(NoBackoff(), 0))
    >>> limiter = RedisRateLimiter(client=redis_client, window=60, max_requests=100)
    >>> decision = await limiter.check("user-42")      # admit now or say when
    >>> reply = await limiter.execute(call_model, key="user-42")  # or RateLimitError
    """

    __slots__ = ("limiter", "store")

    def __init__(
        self,
        *,
        client: Redis,
        window: float,
        max_requests: float,
        algorithm: Algorithm = "sliding",
        on_store_failure: FailureMode = "open",
        name: str = "redis_rate_limit",
        namespace: str = "bastion",
        timeout: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        config = RateLimitConfig(
            max_rpm=max_requests,
            window=window,
            algorithm=algorithm,
            on_store_failure=on_store_failure,
        )
        refuse_retries(client, "RedisRateLimiter.client")
        self.store = RedisStore(client=client, namespace=namespace, timeout=timeout)
        """The store the decisions run in (it never closes your client)."""
        self.limiter = RateLimiter(config, name=name, clock=clock, bus=bus, backend=self.store)
        """The limiter doing the work, for everything beyond check and execute."""

    def __repr__(self) -> str:
        c = self.limiter.config
        return (
            f"RedisRateLimiter(name={self.limiter.name!r}, max_requests={c.max_rpm!r}, "
            f"window={c.window!r}, algorithm={c.algorithm!r})"
        )

    async def check(self, key: str = "default") -> RateLimitDecision:
        """Count one request for ``key`` if it fits now; the decision says so either way."""
        return await self.limiter.check(key)

    async def execute(self, fn: Callable[[], Awaitable[T]], /, *, key: str = "default") -> T:
        """Await ``fn()`` once ``key`` has room; raise :class:`RateLimitError` when it has none."""
        await self.limiter.acquire(key)
        return await fn()
