"""A chain of models that behaves as one: weighted choice, retries, breakers, fallbacks.

Rules, in the order they apply to one request:

1. **Order.** Choices with a ``weight`` form the primary pool: the first model
   is drawn from it by weight, among those whose breaker is not open; the
   rest of the pool follows by descending weight. Choices without a weight
   are backups, tried afterwards in list order. With no weights at all, the
   list order is the order.
2. **Per model**, the resilience pipeline: a circuit breaker per model name
   (from a shared registry, so a model's cooldown is remembered across
   requests) and retries with backoff and a retry budget. A ``Retry-After``
   longer than ``max_retry_after`` (default 5 s) is not waited for: the
   next model is tried at once. A model that connected and then said nothing
   (``ProviderTimeout`` of kind ``first_token``) is not retried: it counts
   against its breaker and the next model is tried at once.
3. **Context window.** A choice with a known ``context_window`` is skipped
   when the request cannot fit (with room for ``max_tokens``); after a
   ``ContextLengthExceeded`` only models with a larger window are tried --
   the same oversized request is never resent to a model that refused it.
4. **Content policy.** A ``ContentPolicyViolation`` is raised at once, not
   retried and not routed elsewhere, unless ``route_around_content_policy``
   is set: sending a refused request to a more permissive model must be a
   deliberate choice.
5. **Last resort.** With ``static=`` text, a request every model failed gets
   that text as a completion from model ``"static"``, marked ``degraded``.
   Without it, the first model's error is raised with a note per model.

The completion names the model that answered and carries every attempt made
(model, error, duration); ``degraded`` is true when any earlier attempt failed.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError, summarize
from bastion._core.events import EventBus, FallbackUsed, default_bus
from bastion._core.usage import Usage
from bastion.models._errors import (
    ContentPolicyViolation,
    ContextLengthExceeded,
    MalformedResponse,
    ProviderBadRequest,
    ProviderTimeout,
    StreamInterrupted,
)
from bastion.models._types import (
    Attempt,
    ChatModel,
    ChatRequest,
    Completion,
    Message,
    StreamChunk,
)
from bastion.resilience._breaker import CircuitBreakerConfig
from bastion.resilience._classify import is_transient
from bastion.resilience._pipeline import Pipeline
from bastion.resilience._registry import CircuitBreakerRegistry
from bastion.resilience._retry import Retry, RetryConfig

__all__ = ["FallbackChain", "ModelChoice", "create_fallback_chain"]

T = TypeVar("T")

TokenCounter = Callable[[ChatRequest], int]

DEFAULT_MODEL_BREAKER = CircuitBreakerConfig(
    failure_threshold=3, reset_timeout=5.0, call_timeout=None
)
"""Per-model breaker defaults: trip fast, probe again after 5 s, so a recovered
primary takes traffic back within seconds."""


def _model_retry_on(exc: BaseException) -> bool:
    if isinstance(exc, ProviderTimeout) and exc.kind == "first_token":
        return False
    return is_transient(exc)


DEFAULT_MODEL_RETRY = RetryConfig(
    max_retries=2, backoff=0.5, max_backoff=4.0, max_retry_after=5.0, retry_on=_model_retry_on
)
"""Per-model retry defaults: at most three attempts within a few seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelChoice:
    """One model in a chain; ``weight`` puts it in the load-balanced primary pool."""

    model: ChatModel
    weight: float | None = None
    context_window: int | None = None

    def __post_init__(self) -> None:
        if self.weight is not None and not (self.weight > 0):
            msg = f"ModelChoice.weight must be > 0 (or None for a backup); got {self.weight!r}"
            raise ConfigurationError(msg)
        if self.context_window is not None and self.context_window < 1:
            msg = f"ModelChoice.context_window must be >= 1 token; got {self.context_window!r}"
            raise ConfigurationError(msg)


class FallbackChain:
    """Several models behind one :class:`ChatModel` interface; see the module docs for the rules."""

    def __init__(
        self,
        choices: Sequence[ModelChoice | ChatModel],
        *,
        name: str = "fallback-chain",
        retry: RetryConfig = DEFAULT_MODEL_RETRY,
        breaker: CircuitBreakerConfig = DEFAULT_MODEL_BREAKER,
        breakers: CircuitBreakerRegistry | None = None,
        count_tokens: TokenCounter | None = None,
        static: str | None = None,
        route_around_content_policy: bool = False,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        if not choices:
            msg = "FallbackChain needs at least one model"
            raise ConfigurationError(msg)
        self.choices = tuple(
            c if isinstance(c, ModelChoice) else ModelChoice(model=c) for c in choices
        )
        names = [c.model.name for c in self.choices]
        if len(set(names)) != len(names):
            msg = f"FallbackChain model names must be unique (one breaker each); got {names}"
            raise ConfigurationError(msg)
        self._name = name
        self.breakers = (
            breakers
            if breakers is not None  # an empty registry is falsy: test for None explicitly
            else CircuitBreakerRegistry(breaker, clock=clock, bus=bus)
        )
        self.count_tokens = count_tokens
        self.static = static
        self.route_around_content_policy = route_around_content_policy
        self._rng = rng or random.Random()
        self._clock = clock
        self._bus = bus
        self._pipelines = {
            c.model.name: Pipeline(
                name=c.model.name,
                gate=None,  # draining is the owner's job (the agent or gateway around the chain)
                retry=Retry(retry, name=c.model.name, clock=clock, bus=bus),
                breaker=self.breakers.get(c.model.name),
                clock=clock,
                bus=bus,
            )
            for c in self.choices
        }

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"FallbackChain({[c.model.name for c in self.choices]!r})"

    def order(self) -> list[ModelChoice]:
        """The order this request will try models in (drawn anew per request)."""
        pool = [c for c in self.choices if c.weight is not None]
        backups = [c for c in self.choices if c.weight is None]
        if not pool:
            return list(self.choices)
        pipelines = self._pipelines
        available = [c for c in pool if _admits(pipelines[c.model.name])]
        candidates = available or pool
        first = self._rng.choices(candidates, weights=[c.weight or 0.0 for c in candidates])[0]
        rest = sorted((c for c in pool if c is not first), key=lambda c: -(c.weight or 0.0))
        return [first, *rest, *backups]

    async def aclose(self) -> None:
        """Close every member model that holds resources (HTTP sessions)."""
        for choice in self.choices:
            close = getattr(choice.model, "aclose", None)
            if close is not None:
                await close()

    async def __aenter__(self) -> FallbackChain:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def complete(self, request: ChatRequest) -> Completion:
        self._check(request)
        route = _Route()
        for index, choice in enumerate(self.order()):
            completion = await self._try(choice, route, request, choice.model.complete)
            if completion is not None:
                return self._served(completion, choice, index, route)
        return self._last_resort(route)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """Stream from the first model that answers; continue a broken stream on the next.

        Until a model sends its first chunk, every rule of :meth:`complete`
        applies (retries, waits, breakers, context window, content policy).
        When a stream breaks or stalls after delivering text, the next model
        continues the answer if it can take the partial answer as a prefix
        (``supports_prefill``; the prefix is sent without trailing whitespace
        and the continuation's leading whitespace is dropped when the caller
        already has it). A model that cannot -- or refuses the prefix -- starts
        the answer over, and its first chunk carries ``restart=True``. If no
        model can finish, the caller gets :class:`StreamInterrupted` with what
        was delivered: a cut answer is never passed off as complete, and the
        static answer is never appended to one.
        """
        self._check(request)
        route = _Route()
        delivered = ""
        shown = 0
        for choice in self.order():
            model = choice.model
            prefixes = [True, False] if delivered and _supports_prefill(model) else [False]
            for with_prefix in prefixes:
                sent = request
                if with_prefix:
                    prefix = Message.assistant(delivered.rstrip())
                    sent = request.replace(messages=(*request.messages, prefix))
                opened = await self._try(choice, route, sent, partial(_open_stream, model))
                if opened is None:
                    last = route.errors[-1][1] if route.errors else None
                    if with_prefix and isinstance(last, ProviderBadRequest):
                        continue  # refused the prefix: ask again without it, from scratch
                    break
                restart = bool(delivered) and not with_prefix
                trim = with_prefix and delivered != delivered.rstrip()
                if restart:
                    delivered = ""
                first, rest = opened
                started = self._clock.monotonic()
                try:
                    chunk: StreamChunk | None = first
                    while chunk is not None:
                        if trim and chunk.text:
                            chunk = replace(chunk, text=chunk.text.lstrip())
                            trim = False
                        if restart and chunk.text:
                            chunk = replace(chunk, restart=True)
                            restart = False
                        delivered += chunk.text
                        shown += 1
                        yield chunk
                        chunk = await anext(rest, None)
                except ContentPolicyViolation:
                    raise
                except Exception as exc:
                    elapsed = self._clock.monotonic() - started
                    route.attempts.append(_attempt(model.name, exc, elapsed))
                    route.errors.append((model.name, exc))
                    break
                finally:
                    await _close(rest)
                return
        if shown:
            raise StreamInterrupted(
                "every model failed before the answer was complete",
                provider="bastion",
                model=self._name,
                delivered_text=delivered,
                delivered_chunks=shown,
            )
        completion = self._last_resort(route)
        yield StreamChunk(
            text=completion.text, model=completion.model, finish_reason="stop", usage=Usage()
        )

    # -- helpers -----------------------------------------------------------------------------

    def _check(self, request: ChatRequest) -> None:
        if request.model is not None:
            msg = (
                f"{self._name!r} chooses the model itself; leave ChatRequest.model unset "
                f"(got {request.model!r}, which would be sent to every member)"
            )
            raise ConfigurationError(msg)

    async def _try(
        self,
        choice: ModelChoice,
        route: _Route,
        request: ChatRequest,
        start: Callable[[ChatRequest], Awaitable[T]],
    ) -> T | None:
        """One member's turn: skip it, serve, or record why it failed and return None."""
        name = choice.model.name
        skip = self._why_skip(choice, request, route.refused_above)
        if skip is not None:
            route.attempts.append(Attempt(model=name, error=skip, duration_s=0.0))
            return None
        call = self._recorded(start, request, name, route.attempts)
        try:
            return await self._pipelines[name].run_value(call, (), {})
        except ContentPolicyViolation as exc:
            if not self.route_around_content_policy:
                raise
            route.errors.append((name, exc))
        except ContextLengthExceeded as exc:
            size = choice.context_window or self._size(request) or 0
            route.refused_above = max(route.refused_above or 0, size)
            route.errors.append((name, exc))
        except Exception as exc:
            _note_refusal(route.attempts, name, exc)
            route.errors.append((name, exc))
        return None

    def _recorded(
        self,
        start: Callable[[ChatRequest], Awaitable[T]],
        request: ChatRequest,
        name: str,
        attempts: list[Attempt],
    ) -> Callable[[], Awaitable[T]]:
        clock = self._clock

        async def attempt() -> T:
            started = clock.monotonic()
            try:
                result = await start(request)
            except Exception as exc:
                attempts.append(_attempt(name, exc, clock.monotonic() - started))
                raise
            attempts.append(Attempt(model=name, error=None, duration_s=clock.monotonic() - started))
            return result

        return attempt

    def _size(self, request: ChatRequest) -> int | None:
        if self.count_tokens is None:
            return None
        return self.count_tokens(request) + (request.max_tokens or 0)

    def _why_skip(
        self, choice: ModelChoice, request: ChatRequest, refused_above: int | None
    ) -> str | None:
        window = choice.context_window
        if refused_above is not None and (window is None or window <= refused_above):
            return "skipped: its context window is not larger than one that refused the request"
        size = self._size(request)
        if window is not None and size is not None and size > window:
            return f"skipped: the request needs {size} tokens, its context window is {window}"
        return None

    def _served(
        self, completion: Completion, choice: ModelChoice, index: int, route: _Route
    ) -> Completion:
        """Stamp who served; ``degraded`` only when someone other than the first choice did."""
        degraded = index > 0
        if degraded:
            failed = tuple(dict.fromkeys(name for name, _ in route.errors))
            (self._bus or default_bus()).emit(
                FallbackUsed(source=self._name, served_by=choice.model.name, skipped=failed)
            )
        c = completion  # built field by field: dataclasses.replace costs ~4 us per call here
        return Completion(
            text=c.text,
            model=c.model,
            finish_reason=c.finish_reason,
            tool_calls=c.tool_calls,
            usage=c.usage,
            latency_s=c.latency_s,
            ttft_s=c.ttft_s,
            id=c.id,
            attempts=tuple(route.attempts),
            degraded=degraded,
            served_by=choice.model.name,
        )

    def _last_resort(self, route: _Route) -> Completion:
        if self.static is not None:
            (self._bus or default_bus()).emit(
                FallbackUsed(
                    source=self._name,
                    served_by="static",
                    skipped=tuple(dict.fromkeys(a.model for a in route.attempts)),
                )
            )
            return Completion(
                text=self.static,
                model="static",
                finish_reason="stop",
                attempts=tuple(route.attempts),
                degraded=True,
                served_by="static",
            )
        if not route.errors:
            msg = f"no model of {self._name!r} could take the request: " + "; ".join(
                f"{a.model}: {a.error}" for a in route.attempts
            )
            raise ContextLengthExceeded(msg, provider="bastion")
        _, first = route.errors[0]
        for name, error in route.errors[1:]:
            first.add_note(f"bastion: fallback model {name!r} failed too: {summarize(error)}")
        raise first


def create_fallback_chain(
    models: Sequence[ChatModel], *, weights: Sequence[float] | None = None, **options: Any
) -> FallbackChain:
    """A :class:`FallbackChain` of models in order; ``weights`` (one each) load-balance them."""
    if weights is not None and len(weights) != len(models):
        msg = f"create_fallback_chain: {len(weights)} weights for {len(models)} models"
        raise ConfigurationError(msg)
    choices = [
        ModelChoice(model=m, weight=None if weights is None else weights[i])
        for i, m in enumerate(models)
    ]
    return FallbackChain(choices, **options)


@dataclass(slots=True)
class _Route:
    """What one request has been through so far."""

    attempts: list[Attempt] = field(default_factory=list)
    errors: list[tuple[str, Exception]] = field(default_factory=list)
    refused_above: int | None = None


def _supports_prefill(model: ChatModel) -> bool:
    """Whether a model continues a trailing assistant message instead of answering anew."""
    return bool(getattr(model, "supports_prefill", False))


async def _open_stream(
    model: ChatModel, request: ChatRequest
) -> tuple[StreamChunk, AsyncIterator[StreamChunk]]:
    """Start a stream and wait for its first chunk: until then it can be retried like a call."""
    stream = model.stream(request)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        await _close(stream)
        msg = "the stream ended before its first chunk"
        raise MalformedResponse(msg, provider=model.name, model=model.name) from None
    except BaseException:
        await _close(stream)
        raise
    return first, stream


async def _close(stream: AsyncIterator[StreamChunk]) -> None:
    """Release a stream's connection at once, even when its consumer stopped early."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _admits(pipeline: Pipeline) -> bool:
    breaker = pipeline.breaker
    return breaker is None or breaker.retry_after() == 0.0


def _attempt(name: str, exc: BaseException, duration: float) -> Attempt:
    return Attempt(model=name, error=summarize(exc), duration_s=duration)


def _note_refusal(attempts: list[Attempt], name: str, exc: Exception) -> None:
    """Record a refusal that happened before any call (an open breaker), which no attempt saw."""
    if not any(a.model == name for a in attempts):
        attempts.append(_attempt(name, exc, 0.0))
