"""Answer a request seen before without paying for it again.

Two caches on one :class:`~bastion.stores._cache.CacheStore`:

- :class:`ResponseCache` with :class:`CachedModel`: an **exact-match** cache
  of completions. The key is the SHA-256 of the request in canonical JSON
  (sorted keys, no whitespace): the model name, every message (tool calls
  and their ids included), the tools, ``tool_choice``, ``temperature``,
  ``max_tokens``, ``response_format`` and ``stop``. Anything that could change
  the answer is in the key, and nothing else is, so two requests share an
  entry only when a provider could not tell them apart. It is not a semantic
  cache: a changed comma is a different request.
- :class:`EmbeddingCache`: vectors per ``(model, text)``. A batch is looked up
  with one ``get_many``; only the texts not found (each once, however often it
  repeats) go to the provider, in one call; the new vectors are written with
  one ``set_many``. Vectors are stored packed as little-endian float32 (or
  float64): 6 KB for 1,536 dimensions against 32 KB as JSON, and packed or
  unpacked in ~15 us instead of ~250-550 us. A vector comes back with the
  same values whether it was a hit or a miss.

A cache must never be the reason a call fails. When the store is
unreachable (:class:`~bastion._core.errors.StoreUnavailableError`) the cache
counts an error in :class:`CacheStats`, logs it, emits
:class:`~bastion.stores._base.StoreDegraded` (``action="allowed"``) and
carries on as if it had missed: the model answers, and nothing is written.

What is cached: completions that ended with ``stop`` or ``tool_calls`` and
are not ``degraded`` (by default; see ``cache_if``). A hit costs nothing, so
its ``usage`` is zero, and it says where it came from: its last attempt is
``Attempt(model="cache", ...)`` (see :func:`served_from_cache`) while
``model`` still names the model that wrote the answer. Streams are not
cached. Inside ``with skip_cache():`` neither cache reads or writes -- a
context variable rather than a flag on the request, so it reaches a cache
buried under an agent or a fallback chain without changing any signature.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, cast, get_args

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError, StoreUnavailableError
from bastion._core.events import EventBus
from bastion._core.validate import invalid, one_of
from bastion.models._types import (
    Attempt,
    ChatModel,
    ChatRequest,
    Completion,
    FinishReason,
    StreamChunk,
    ToolCall,
)
from bastion.stores._base import report_degraded
from bastion.stores._cache import CacheStore, check_ttl
from bastion.stores._keys import escape

__all__ = [
    "CACHE_ATTEMPT",
    "CacheStats",
    "CachedModel",
    "EmbeddingCache",
    "ResponseCache",
    "cacheable",
    "request_key",
    "served_from_cache",
    "skip_cache",
]

_log = logging.getLogger("bastion.cache")

CACHE_ATTEMPT = "cache"
"""The ``Attempt.model`` of the attempt that served a completion from the cache."""

_KEY_VERSION = 1
"""Bumped whenever the key's payload or an entry's format changes: old entries are never read."""

_FINISH_REASONS: frozenset[str] = frozenset(get_args(FinishReason))
_BIG_ENDIAN = sys.byteorder == "big"

_skipping: ContextVar[bool] = ContextVar("bastion_skip_cache", default=False)


@contextmanager
def skip_cache() -> Iterator[None]:
    """Within this block (and tasks it starts), caches neither read nor write.

    ``with skip_cache(): await agent.run(...)`` gets fresh answers even when
    the model deep inside the agent is a :class:`CachedModel`.
    """
    token = _skipping.set(True)
    try:
        yield
    finally:
        _skipping.reset(token)


def served_from_cache(completion: Completion) -> bool:
    """Whether ``completion`` came from a cache rather than from a model."""
    attempts = completion.attempts
    return bool(attempts) and attempts[-1].model == CACHE_ATTEMPT


def cacheable(request: ChatRequest, completion: Completion) -> bool:
    """The default ``cache_if``: a complete, first-choice answer.

    A ``length`` cut, a content-filter stop or an error is not an answer worth
    replaying, and a ``degraded`` completion (a fallback, a static answer)
    should not outlive the outage that caused it.
    """
    return not completion.degraded and completion.finish_reason in ("stop", "tool_calls")


@dataclass(slots=True)
class CacheStats:
    """What a cache did since it was made; counts are exact within one event loop.

    ``errors`` counts store failures (and unreadable entries): each one was
    served as a miss. ``bypassed`` counts calls that skipped the cache
    (``skip_cache()``, or a request that cannot be written as JSON).
    """

    hits: int = 0
    misses: int = 0
    writes: int = 0
    errors: int = 0
    bypassed: int = 0

    @property
    def hit_ratio(self) -> float:
        """Hits among lookups (0.0 before the first lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


def _check_store(store: object, owner: str) -> CacheStore:
    if not isinstance(store, CacheStore):
        invalid(
            f"{owner}.store",
            "a cache store such as MemoryCacheStore() or RedisCacheStore(url)",
            store,
        )
    return store


def _check_namespace(namespace: object, owner: str) -> str:
    if not isinstance(namespace, str) or not namespace:
        invalid(f"{owner}.namespace", "a non-empty string", namespace)
    return escape(namespace)


class _Guard:
    """The fail-open rule both caches share: a store error is counted, reported and survived."""

    __slots__ = ("bus", "source", "stats")

    def __init__(self, source: str, stats: CacheStats, bus: EventBus | None) -> None:
        self.source = source
        self.stats = stats
        self.bus = bus

    def store_failed(self, error: StoreUnavailableError) -> None:
        self.stats.errors += 1
        report_degraded(error, source=self.source, mode="open", bus=self.bus)

    def unreadable(self, key: str, exc: Exception) -> None:
        self.stats.errors += 1
        _log.warning("%s: entry %r is unreadable (%s); treated as a miss", self.source, key, exc)


# -- responses -----------------------------------------------------------------------------------


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    msg = f"{type(value).__name__} is not JSON"
    raise TypeError(msg)


def request_key(request: ChatRequest, *, model: str) -> str:
    """The SHA-256 (hex) of everything in ``request`` that can change its answer.

    ``model`` is the name of the model that answers when ``request.model``
    names none; a request that names its model is keyed by that name.
    Raises ``TypeError`` or ``ValueError`` when the request holds something
    JSON cannot represent (a provider could not send it either).
    """
    temperature = request.temperature
    payload = {
        "v": _KEY_VERSION,
        "model": request.model or model,
        "messages": [
            [
                message.role,
                message.content,
                [[call.id, call.name, call.arguments] for call in message.tool_calls],
                message.tool_call_id,
                message.name,
            ]
            for message in request.messages
        ],
        "tools": [[tool.name, tool.description, tool.parameters] for tool in request.tools],
        "tool_choice": request.tool_choice,
        "temperature": None if temperature is None else float(temperature),
        "max_tokens": request.max_tokens,
        "response_format": request.response_format,
        "stop": request.stop,
    }
    text = json.dumps(
        payload,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_jsonable,
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _encode_completion(completion: Completion) -> bytes:
    usage = completion.usage
    entry = {
        "text": completion.text,
        "model": completion.model,
        "finish_reason": completion.finish_reason,
        "tool_calls": [[call.id, call.name, call.arguments] for call in completion.tool_calls],
        "usage": [usage.input_tokens, usage.output_tokens, usage.cached_tokens],
        "id": completion.id,
    }
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def _decode_completion(data: bytes, latency: float) -> Completion:
    entry = json.loads(data.decode("utf-8", "surrogatepass"))
    finish_reason = entry["finish_reason"]
    if finish_reason not in _FINISH_REASONS:
        msg = f"unknown finish_reason {finish_reason!r}"
        raise ValueError(msg)
    text, model, completion_id = entry["text"], entry["model"], entry["id"]
    if not isinstance(text, str) or not isinstance(model, str):
        msg = "text and model must be strings"
        raise TypeError(msg)
    return Completion(
        text=text,
        model=model,
        finish_reason=cast("FinishReason", finish_reason),
        tool_calls=tuple(
            ToolCall(id=call_id, name=name, arguments=arguments)
            for call_id, name, arguments in entry["tool_calls"]
        ),
        latency_s=latency,
        ttft_s=latency,
        id=completion_id if isinstance(completion_id, str) else None,
        attempts=(Attempt(model=CACHE_ATTEMPT, error=None, duration_s=latency),),
    )


class ResponseCache:
    """Completions by request, on a cache store, for ``ttl`` seconds (default one hour).

    Entries live under ``{namespace}:{sha256}`` in the store (scope the store
    per tenant to keep tenants' answers apart). Use it through
    :class:`CachedModel`, or directly with :meth:`get` and :meth:`put`.
    """

    __slots__ = ("_clock", "_guard", "_prefix", "_store", "_ttl", "stats")

    def __init__(
        self,
        store: CacheStore,
        *,
        ttl: float | None = 3600.0,
        namespace: str = "responses",
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        self._store = _check_store(store, "ResponseCache")
        self._ttl = check_ttl(ttl, "ResponseCache.ttl")
        self._prefix = _check_namespace(namespace, "ResponseCache") + ":"
        self._clock = clock
        self.stats = CacheStats()
        self._guard = _Guard(f"cache:{namespace}", self.stats, bus)

    def __repr__(self) -> str:
        return f"ResponseCache(store={self._store!r}, ttl={self._ttl!r}, prefix={self._prefix!r})"

    @property
    def store(self) -> CacheStore:
        return self._store

    @property
    def ttl(self) -> float | None:
        return self._ttl

    def key(self, request: ChatRequest, *, model: str) -> str:
        """The store key of ``request`` sent to ``model`` (see :func:`request_key`)."""
        return self._prefix + request_key(request, model=model)

    async def get(self, request: ChatRequest, *, model: str) -> Completion | None:
        """The cached answer of ``model`` to ``request``; None on a miss or a store outage."""
        started = self._clock.monotonic()
        try:
            return await self._read(self.key(request, model=model), started)
        except StoreUnavailableError as exc:
            self._unavailable(exc)
            return None

    async def put(self, request: ChatRequest, completion: Completion, *, model: str) -> None:
        """Keep ``completion`` as ``model``'s answer to ``request`` (unless the store is down)."""
        await self._save(self.key(request, model=model), completion)

    async def invalidate(self, request: ChatRequest, *, model: str) -> None:
        """Forget the cached answer of ``model`` to ``request``."""
        try:
            await self._store.delete(self.key(request, model=model))
        except StoreUnavailableError as exc:
            self._guard.store_failed(exc)

    def _unavailable(self, error: StoreUnavailableError) -> None:
        """A lookup the store could not answer: a miss, counted and reported."""
        self._guard.store_failed(error)
        self.stats.misses += 1

    async def _read(self, key: str, started: float) -> Completion | None:
        """The entry under ``key``, or None; raises StoreUnavailableError for the caller."""
        data = await self._store.get(key)
        if data is not None:
            try:
                completion = _decode_completion(data, self._clock.monotonic() - started)
            except (ValueError, TypeError, KeyError) as exc:
                self._guard.unreadable(key, exc)
            else:
                self.stats.hits += 1
                return completion
        self.stats.misses += 1
        return None

    async def _save(self, key: str, completion: Completion) -> None:
        try:
            await self._store.set(key, _encode_completion(completion), ttl=self._ttl)
        except StoreUnavailableError as exc:
            self._guard.store_failed(exc)
        else:
            self.stats.writes += 1


CacheIf = Callable[[ChatRequest, Completion], bool]


class CachedModel:
    """A :class:`ChatModel` that answers from a :class:`ResponseCache` when it can.

    On a miss the wrapped model answers and the completion is kept when
    ``cache_if(request, completion)`` says so (default :func:`cacheable`).
    ``stream`` goes straight to the wrapped model: streams are not cached.
    The key uses ``request.model`` when set, else the wrapped model's name.
    """

    __slots__ = ("_cache", "_cache_if", "_model")

    def __init__(
        self, model: ChatModel, cache: ResponseCache, *, cache_if: CacheIf = cacheable
    ) -> None:
        if not isinstance(model, ChatModel):
            invalid("CachedModel.model", "a ChatModel (complete, stream and name)", model)
        if not isinstance(cache, ResponseCache):
            invalid("CachedModel.cache", "a ResponseCache(store)", cache)
        if not callable(cache_if):
            invalid("CachedModel.cache_if", "a function (request, completion) -> bool", cache_if)
        self._model = model
        self._cache = cache
        self._cache_if = cache_if

    def __repr__(self) -> str:
        return f"CachedModel({self._model!r}, {self._cache!r})"

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def model(self) -> ChatModel:
        """The wrapped model."""
        return self._model

    @property
    def cache(self) -> ResponseCache:
        return self._cache

    async def complete(self, request: ChatRequest) -> Completion:
        cache = self._cache
        if _skipping.get():
            cache.stats.bypassed += 1
            return await self._model.complete(request)
        started = cache._clock.monotonic()
        try:
            key = cache.key(request, model=self._model.name)
        except (TypeError, ValueError) as exc:
            cache.stats.bypassed += 1
            _log.debug("request cannot be cached (%s); sent to the model as it is", exc)
            return await self._model.complete(request)
        try:
            hit = await cache._read(key, started)
        except StoreUnavailableError as exc:
            cache._unavailable(exc)  # fail open; and no write to a store that just failed
            return await self._model.complete(request)
        if hit is not None:
            return hit
        completion = await self._model.complete(request)
        if self._cache_if(request, completion):
            await cache._save(key, completion)
        return completion

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        return self._model.stream(request)

    async def aclose(self) -> None:
        """Close the wrapped model if it has ``aclose``; the store stays open (it may be shared)."""
        close = getattr(self._model, "aclose", None)
        if callable(close):
            await close()


# -- embeddings ----------------------------------------------------------------------------------

Precision = Literal["float32", "float64"]
EmbedFn = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]

_TYPECODES: dict[str, str] = {"float32": "f", "float64": "d"}


def _pack(vector: Sequence[float], typecode: str) -> bytes:
    packed = array(typecode, vector)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _unpack(data: bytes, typecode: str) -> list[float]:
    packed = array(typecode)
    packed.frombytes(data)
    if _BIG_ENDIAN:
        packed.byteswap()
    return cast("list[float]", packed.tolist())  # typecode "f" or "d": floats


class EmbeddingCache:
    """Vectors by ``(model, text)``: one batch read, the misses to ``embed_fn``, one batch write.

    ``embed_fn(texts)`` is your async call to the provider; it gets each
    missing text once, in first-seen order, and must return one vector per
    text in that order. ``model`` names the embedding model and is part of
    every key, so vectors of two models never mix. ``precision`` is how
    vectors are stored: ``"float32"`` (default; exact for providers, which
    compute in float32) or ``"float64"`` (exact for any Python float).
    """

    __slots__ = ("_embed_fn", "_guard", "_prefix", "_store", "_ttl", "_typecode", "model", "stats")

    def __init__(
        self,
        store: CacheStore,
        embed_fn: EmbedFn,
        *,
        model: str,
        ttl: float | None = 7 * 86_400.0,
        namespace: str = "embeddings",
        precision: Precision = "float32",
        bus: EventBus | None = None,
    ) -> None:
        self._store = _check_store(store, "EmbeddingCache")
        if not callable(embed_fn):
            invalid("EmbeddingCache.embed_fn", "an async function (texts) -> vectors", embed_fn)
        if not isinstance(model, str) or not model:
            invalid(
                "EmbeddingCache.model",
                "the embedding model's name, e.g. 'text-embedding-3-small'",
                model,
            )
        one_of(precision, "EmbeddingCache.precision", tuple(_TYPECODES))
        self._embed_fn = embed_fn
        self.model = model
        self._ttl = check_ttl(ttl, "EmbeddingCache.ttl")
        self._typecode = _TYPECODES[precision]
        namespace_part = _check_namespace(namespace, "EmbeddingCache")
        self._prefix = f"{namespace_part}:{escape(model)}:{precision}:"
        self.stats = CacheStats()
        self._guard = _Guard(f"cache:{namespace}", self.stats, bus)

    def __repr__(self) -> str:
        return f"EmbeddingCache(model={self.model!r}, store={self._store!r}, ttl={self._ttl!r})"

    def key(self, text: str) -> str:
        """The store key of ``text``'s vector."""
        return self._prefix + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, asking ``embed_fn`` only for the texts not cached."""
        if isinstance(texts, str):
            msg = "EmbeddingCache.embed takes a list of texts; wrap a single text: embed([text])"
            raise TypeError(msg)
        if not texts:
            return []
        unique = list(dict.fromkeys(texts))
        typecode = self._typecode
        if _skipping.get():
            self.stats.bypassed += 1
            vectors = await self._call_embed(unique)
            found = {
                text: _unpack(_pack(v, typecode), typecode)
                for text, v in zip(unique, vectors, strict=True)
            }
            return self._in_order(texts, found)
        keys = [self.key(text) for text in unique]
        found, reachable = await self._read(unique, keys)
        missing = [i for i, text in enumerate(unique) if text not in found]
        self.stats.hits += len(unique) - len(missing)
        self.stats.misses += len(missing)
        if missing:
            vectors = await self._call_embed([unique[i] for i in missing])
            items: list[tuple[str, bytes]] = []
            for i, vector in zip(missing, vectors, strict=True):
                data = _pack(vector, typecode)
                items.append((keys[i], data))
                found[unique[i]] = _unpack(data, typecode)
            if reachable:  # no write to a store that just failed
                await self._write(items)
        return self._in_order(texts, found)

    async def _read(
        self, unique: list[str], keys: list[str]
    ) -> tuple[dict[str, list[float]], bool]:
        """The vectors found, by text, and whether the store answered at all."""
        found: dict[str, list[float]] = {}
        try:
            values = await self._store.get_many(keys)
        except StoreUnavailableError as exc:
            self._guard.store_failed(exc)
            return found, False
        typecode = self._typecode
        for text, key, data in zip(unique, keys, values, strict=True):
            if data is None:
                continue
            try:
                found[text] = _unpack(data, typecode)
            except ValueError as exc:
                self._guard.unreadable(key, exc)
        return found, True

    async def _write(self, items: list[tuple[str, bytes]]) -> None:
        try:
            await self._store.set_many(items, ttl=self._ttl)
        except StoreUnavailableError as exc:
            self._guard.store_failed(exc)
        else:
            self.stats.writes += len(items)

    async def _call_embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
        vectors = await self._embed_fn(texts)
        if len(vectors) != len(texts):
            msg = (
                f"EmbeddingCache.embed_fn returned {len(vectors)} vector(s) for {len(texts)} "
                "text(s); it must return one vector per text, in the order given"
            )
            raise ConfigurationError(msg)
        return vectors

    @staticmethod
    def _in_order(texts: Sequence[str], found: dict[str, list[float]]) -> list[list[float]]:
        """One vector per text; a repeated text gets its own copy, so callers may mutate freely."""
        given: set[str] = set()
        result: list[list[float]] = []
        for text in texts:
            vector = found[text]
            if text in given:
                vector = vector.copy()
            else:
                given.add(text)
            result.append(vector)
        return result
