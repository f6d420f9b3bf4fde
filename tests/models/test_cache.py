"""Response and embedding caches: keys, hits, what is kept, opt-out, and failing open."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import ConfigurationError, EventBus
from bastion.models import (
    CachedModel,
    CacheStats,
    ChatModel,
    ChatRequest,
    Completion,
    EmbeddingCache,
    Message,
    ProviderUnavailable,
    Reply,
    ResponseCache,
    ScriptedModel,
    StreamChunk,
    ToolCall,
    ToolSpec,
    Usage,
    skip_cache,
)
from bastion.models._cache import CACHE_ATTEMPT, cacheable, request_key, served_from_cache
from bastion.stores import MemoryCacheStore, MemoryStore, RedisCacheStore, StoreDegraded
from bastion.testing import FakeClock

Q = ChatRequest.of("What is the capital of France?", system="Be brief.", temperature=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cached(
    script: Sequence[Any], *, clock: FakeClock | None = None, **options: Any
) -> tuple[CachedModel, ScriptedModel, ResponseCache]:
    clock = clock or FakeClock()
    model = ScriptedModel(script, name="gpt-test", clock=clock)
    cache = ResponseCache(MemoryCacheStore(clock=clock), clock=clock, **options)
    return CachedModel(model, cache), model, cache


# -- the key ------------------------------------------------------------------------------------


def test_a_request_that_names_its_model_is_keyed_by_that_name() -> None:
    pinned = Q.replace(model="gpt-test")
    assert request_key(pinned, model="gpt-test") == request_key(Q, model="gpt-test")
    assert request_key(pinned, model="anything") == request_key(Q, model="gpt-test")


def test_the_key_is_a_sha256_of_the_request_and_model() -> None:
    key = request_key(Q, model="gpt-test")
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert (
        request_key(
            ChatRequest.of(Q.messages[-1].content, system="Be brief.", temperature=0.0),
            model="gpt-test",
        )
        == key
    )  # 0 and 0.0 are the same temperature
    assert request_key(Q, model="other-model") != key


TOOL = ToolSpec(name="weather", description="Weather now", parameters={"type": "object"})
CALL = ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}')


@pytest.mark.parametrize(
    "change",
    [
        {"messages": (Message.user("What is the capital of Spain?"),)},
        {"messages": (Message.system("Be long."), Message.user("What is the capital of France?"))},
        {"messages": (*Q.messages, Message.assistant("", tool_calls=(CALL,)))},
        {"tools": (TOOL,)},
        {"tool_choice": "none"},
        {"temperature": 0.7},
        {"temperature": None},
        {"max_tokens": 50},
        {"response_format": "json"},
        {"response_format": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"stop": ("\n",)},
        {"model": "gpt-other"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_field_that_can_change_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    cache = ResponseCache(MemoryCacheStore())
    assert cache.key(Q, model="m") != cache.key(Q.replace(**change), model="m")


def test_a_role_or_a_tool_call_id_changes_the_key() -> None:
    as_user = ChatRequest(messages=(Message.user("hi"),))
    as_system = ChatRequest(messages=(Message.system("hi"),))
    first = ChatRequest(messages=(Message.user("q"), Message.assistant("", tool_calls=(CALL,))))
    renamed = ToolCall(id="call_2", name=CALL.name, arguments=CALL.arguments)
    second = ChatRequest(messages=(Message.user("q"), Message.assistant("", tool_calls=(renamed,))))
    assert request_key(as_user, model="m") != request_key(as_system, model="m")
    assert request_key(first, model="m") != request_key(second, model="m")


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=8), max_size=6
    ),
    st.randoms(use_true_random=False),
)
def test_the_key_ignores_the_order_of_schema_keys(schema: dict[str, Any], rng: Any) -> None:
    items = list(schema.items())
    rng.shuffle(items)
    shuffled = dict(items)
    one = Q.replace(tools=(ToolSpec(name="t", parameters=schema),))
    two = Q.replace(tools=(ToolSpec(name="t", parameters=shuffled),))
    assert request_key(one, model="m") == request_key(two, model="m")


def test_the_namespace_separates_caches_on_one_store() -> None:
    store = MemoryCacheStore()
    one, two = ResponseCache(store, namespace="a"), ResponseCache(store, namespace="b")
    assert one.key(Q, model="m") != two.key(Q, model="m")
    assert one.key(Q, model="m").startswith("a:")


# -- hits and misses ----------------------------------------------------------------------------


async def test_a_repeated_request_is_served_from_the_cache() -> None:
    clock = FakeClock()
    model, scripted, cache = cached([Reply(text="Paris.", latency=1.5)], clock=clock)
    task = asyncio.create_task(model.complete(Q))
    await clock.wait_for_sleepers(1)
    clock.advance(1.5)
    first = await task
    second = await model.complete(Q)
    assert scripted.calls == 1
    assert (first.text, first.latency_s, served_from_cache(first)) == ("Paris.", 1.5, False)
    assert (second.text, second.model, second.finish_reason) == ("Paris.", "gpt-test", "stop")
    assert second.id == first.id
    assert second.latency_s == 0.0  # the fake clock did not move during the hit
    assert second.usage == Usage()  # a hit consumes no tokens, so it costs nothing
    assert [(a.model, a.error) for a in second.attempts] == [(CACHE_ATTEMPT, None)]
    assert served_from_cache(second)
    assert not second.degraded
    assert cache.stats == CacheStats(hits=1, misses=1, writes=1)
    assert cache.stats.hit_ratio == 0.5


async def test_tool_calls_come_back_from_the_cache_whole() -> None:
    model, scripted, _ = cached([Reply(tool_calls=(CALL,))])
    await model.complete(Q)
    hit = await model.complete(Q)
    assert scripted.calls == 1
    assert (hit.finish_reason, hit.tool_calls) == ("tool_calls", (CALL,))


async def test_a_hit_keeps_the_name_of_the_model_that_answered() -> None:
    model, scripted, _ = cached(["answer"])
    request = Q.replace(model="gpt-pinned")
    await model.complete(request)
    hit = await model.complete(request)
    assert (hit.model, model.name, scripted.calls) == ("gpt-pinned", "gpt-test", 1)
    await model.complete(Q)  # the default model name is another key
    assert scripted.calls == 2


async def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    model, scripted, cache = cached(["one", "two"], clock=clock, ttl=60)
    assert (await model.complete(Q)).text == "one"
    clock.advance(59.9)
    assert (await model.complete(Q)).text == "one"
    clock.advance(0.1)
    assert (await model.complete(Q)).text == "two"
    assert scripted.calls == 2
    assert cache.ttl == 60


async def test_get_put_and_invalidate_work_without_the_wrapper() -> None:
    cache = ResponseCache(MemoryCacheStore())
    answer = Completion(text="Paris.", model="m", finish_reason="stop", id="c1")
    assert await cache.get(Q, model="m") is None
    await cache.put(Q, answer, model="m")
    hit = await cache.get(Q, model="m")
    assert hit is not None
    assert (hit.text, hit.id, served_from_cache(hit)) == ("Paris.", "c1", True)
    await cache.invalidate(Q, model="m")
    assert await cache.get(Q, model="m") is None


# -- what is kept -------------------------------------------------------------------------------


@pytest.mark.parametrize("finish_reason", ["length", "content_filter", "error"])
async def test_cut_filtered_or_failed_answers_are_not_kept(finish_reason: str) -> None:
    model, scripted, cache = cached([Reply(text="partial", finish_reason=finish_reason)])  # type: ignore[arg-type]
    await model.complete(Q)
    await model.complete(Q)
    assert scripted.calls == 2
    assert cache.stats.writes == 0


def test_degraded_answers_are_not_cacheable() -> None:
    good = Completion(text="x", model="m", finish_reason="stop")
    assert cacheable(Q, good)
    assert not cacheable(
        Q, Completion(text="x", model="static", finish_reason="stop", degraded=True)
    )


async def test_a_failing_model_leaves_nothing_behind() -> None:
    model, scripted, cache = cached([ProviderUnavailable("503", provider="p"), "ok"])
    with pytest.raises(ProviderUnavailable):
        await model.complete(Q)
    assert (await model.complete(Q)).text == "ok"
    assert (cache.stats.writes, scripted.calls) == (1, 2)


async def test_cache_if_decides_what_is_kept() -> None:
    def deterministic_only(request: ChatRequest, completion: Completion) -> bool:
        return cacheable(request, completion) and request.temperature == 0

    clock = FakeClock()
    scripted = ScriptedModel(["a", "b", "c"], clock=clock)
    model = CachedModel(
        scripted, ResponseCache(MemoryCacheStore(clock=clock)), cache_if=deterministic_only
    )
    warm = Q.replace(temperature=0.9)
    assert [(await model.complete(warm)).text for _ in range(2)] == ["a", "b"]
    assert [(await model.complete(Q)).text for _ in range(2)] == ["c", "c"]


# -- opting out, streams ------------------------------------------------------------------------


async def test_skip_cache_neither_reads_nor_writes() -> None:
    model, scripted, cache = cached(["one", "two", "three"])
    await model.complete(Q)
    with skip_cache():
        assert (await model.complete(Q)).text == "two"
        with skip_cache():
            assert (await model.complete(Q.replace(max_tokens=9))).text == "three"
    assert (await model.complete(Q)).text == "one"  # the block wrote nothing
    assert (await model.complete(Q.replace(max_tokens=9))).text == "three"  # fresh miss
    assert cache.stats.bypassed == 2
    assert scripted.calls == 4


async def test_skip_cache_reaches_tasks_started_inside_it() -> None:
    model, scripted, _ = cached(["one", "two"])
    await model.complete(Q)
    with skip_cache():
        inner = asyncio.create_task(model.complete(Q))
    assert (await inner).text == "two"
    assert scripted.calls == 2


async def test_streams_pass_through_and_are_not_cached() -> None:
    model, scripted, cache = cached(["streamed answer"])
    for _ in range(2):
        chunks: list[StreamChunk] = [chunk async for chunk in model.stream(Q)]
        assert "".join(chunk.text for chunk in chunks) == "streamed answer"
    assert scripted.calls == 2
    assert cache.stats == CacheStats()


async def test_a_request_json_cannot_hold_bypasses_the_cache() -> None:
    model, _, cache = cached(["a", "b"])
    odd = Q.replace(tools=(ToolSpec(name="t", parameters={"type": {1, 2}}),))
    assert [(await model.complete(odd)).text for _ in range(2)] == ["a", "b"]
    assert (cache.stats.bypassed, cache.stats.writes) == (2, 0)


async def test_the_wrapper_is_a_chat_model_and_closes_the_model_not_the_store() -> None:
    model, scripted, cache = cached(["x"])
    assert isinstance(model, ChatModel)
    assert (model.model, model.cache) == (scripted, cache)
    await model.aclose()  # ScriptedModel has no aclose: nothing to do
    assert (await model.complete(Q)).text == "x"


# -- failing open -------------------------------------------------------------------------------


def unreachable_redis(timeout: float = 0.5) -> RedisCacheStore:
    return RedisCacheStore(f"redis://127.0.0.1:{free_port()}/0", timeout=timeout)


async def test_an_unreachable_store_never_fails_the_call(bus: EventBus) -> None:
    events: list[StoreDegraded] = []
    bus.subscribe(events.append, StoreDegraded)
    store = unreachable_redis()
    scripted = ScriptedModel(["one", "two"])
    cache = ResponseCache(store, bus=bus)
    model = CachedModel(scripted, cache)
    try:
        assert [(await model.complete(Q)).text for _ in range(2)] == ["one", "two"]
        assert await cache.get(Q, model="m") is None
        await cache.put(Q, Completion(text="x", model="m", finish_reason="stop"), model="m")
        await cache.invalidate(Q, model="m")
    finally:
        await store.aclose()
    assert cache.stats == CacheStats(misses=3, errors=5)  # no write after a failed read
    assert {(e.source, e.backend, e.action) for e in events} == {
        ("cache:responses", "redis", "allowed")
    }
    assert [e.operation for e in events[:2]] == ["cache_get", "cache_get"]


async def test_an_unreadable_entry_is_a_miss_and_is_replaced() -> None:
    store = MemoryCacheStore()
    cache = ResponseCache(store)
    model = CachedModel(ScriptedModel(["fresh"]), cache)
    await store.set(cache.key(Q, model="scripted"), b"{not json", ttl=None)
    assert (await model.complete(Q)).text == "fresh"
    assert (await model.complete(Q)).text == "fresh"
    assert cache.stats == CacheStats(hits=1, misses=1, writes=1, errors=1)


class RedisServer:
    """A throwaway redis-server on a free port, for killing mid-test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                return
        pytest.fail(f"redis-server on port {self.port} did not start")

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.thaw()
    server.kill()


TIMEOUT = 0.5


async def test_redis_killed_mid_run_falls_through_to_the_model(
    redis_server: RedisServer, bus: EventBus
) -> None:
    events: list[StoreDegraded] = []
    bus.subscribe(events.append, StoreDegraded)
    store = RedisCacheStore(redis_server.url, timeout=TIMEOUT)
    scripted = ScriptedModel(["one", "two", "three", "four", "five"])
    cache = ResponseCache(store, bus=bus)
    model = CachedModel(scripted, cache)

    async def vectors(texts: list[str]) -> list[list[float]]:
        return [[float(len(text))] for text in texts]

    embeddings = EmbeddingCache(store, vectors, model="emb", bus=bus)
    try:
        assert (await model.complete(Q)).text == "one"
        assert (await model.complete(Q)).text == "one"  # a hit, from Redis
        assert await embeddings.embed(["a", "bb"]) == [[1.0], [2.0]]

        redis_server.kill()
        started = time.monotonic()
        assert (await model.complete(Q)).text == "two"  # the model answers instead
        assert time.monotonic() - started < TIMEOUT + 0.5  # within the store's timeout
        assert (await model.complete(Q)).text == "three"
        assert await embeddings.embed(["a", "ccc"]) == [[1.0], [3.0]]

        assert cache.stats == CacheStats(hits=1, misses=3, writes=1, errors=2)
        assert embeddings.stats == CacheStats(misses=4, writes=2, errors=1)
        assert len(events) == 3
        assert all(e.action == "allowed" and e.backend == "redis" for e in events)

        redis_server.start()  # an empty server: the cache refills
        answers = [await model.complete(Q) for _ in range(3)]
        assert served_from_cache(answers[-1])  # served from Redis again
        assert answers[-1].text == answers[-2].text != "three"
        assert cache.stats.writes == 2
    finally:
        await store.aclose()


async def test_a_frozen_redis_costs_one_store_timeout_per_call(
    redis_server: RedisServer, bus: EventBus
) -> None:
    events: list[StoreDegraded] = []
    bus.subscribe(events.append, StoreDegraded)
    store = RedisCacheStore(redis_server.url, timeout=0.2)
    cache = ResponseCache(store, bus=bus)
    model = CachedModel(ScriptedModel(["one", "two"]), cache)
    try:
        assert (await model.complete(Q)).text == "one"
        redis_server.freeze()
        started = time.monotonic()
        assert (await model.complete(Q.replace(max_tokens=5))).text == "two"
        assert time.monotonic() - started < 0.2 + 0.5  # the read timed out; no write was tried
    finally:
        redis_server.thaw()
        await store.aclose()
    assert [(e.operation, e.reason) for e in events] == [("cache_get", "no answer within 0.2s")]
    assert cache.stats == CacheStats(misses=2, writes=1, errors=1)


# -- embeddings ---------------------------------------------------------------------------------


class Embedder:
    """An embedding function that records every batch it is sent."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(list(texts))
        return [[float(len(text)), float(sum(map(ord, text)) % 97), 0.5] for text in texts]


class CountingStore(MemoryCacheStore):
    """A real memory store that also counts its round trips."""

    __slots__ = ("trips",)

    def __init__(self) -> None:
        super().__init__()
        self.trips: list[tuple[str, int]] = []

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.trips.append(("get_many", len(keys)))
        return await super().get_many(keys)

    async def set_many(self, items: Sequence[tuple[str, bytes]], *, ttl: float | None) -> None:
        self.trips.append(("set_many", len(items)))
        await super().set_many(items, ttl=ttl)


async def test_one_batch_read_only_misses_sent_once_each_one_batch_write() -> None:
    store, embed = CountingStore(), Embedder()
    cache = EmbeddingCache(store, embed, model="text-embedding-3-small")
    first = await cache.embed(["a", "bb", "a", "ccc"])
    assert embed.batches == [["a", "bb", "ccc"]]  # each text once, in first-seen order
    assert store.trips == [("get_many", 3), ("set_many", 3)]

    second = await cache.embed(["ccc", "dddd", "a", "dddd"])
    assert embed.batches[-1] == ["dddd"]  # only the miss goes to the provider
    assert store.trips[2:] == [("get_many", 3), ("set_many", 1)]
    assert (second[0], second[2]) == (first[3], first[0])
    assert second[1] == second[3]
    assert second[1] is not second[3]  # copies, not aliases

    await cache.embed(["bb", "a"])
    assert len(embed.batches) == 2  # all hits: no provider call, no write
    assert store.trips[-1] == ("get_many", 2)
    assert cache.stats == CacheStats(hits=4, misses=4, writes=4)


async def test_no_texts_no_round_trips() -> None:
    store, embed = CountingStore(), Embedder()
    assert await EmbeddingCache(store, embed, model="m").embed([]) == []
    assert (store.trips, embed.batches) == ([], [])


async def test_vectors_are_the_same_on_a_hit_and_on_a_miss() -> None:
    values = [0.1, -1 / 3, 1e-8, 12345.678]

    async def embed(texts: list[str]) -> list[list[float]]:
        return [values for _ in texts]

    store = MemoryCacheStore()
    f32 = EmbeddingCache(store, embed, model="m")
    f64 = EmbeddingCache(store, embed, model="m", precision="float64")
    miss32, hit32 = (await f32.embed(["t"]))[0], (await f32.embed(["t"]))[0]
    miss64, hit64 = (await f64.embed(["t"]))[0], (await f64.embed(["t"]))[0]
    assert miss32 == hit32
    assert miss32 == pytest.approx(values, rel=1e-7)
    assert miss64 == hit64 == values  # float64 is exact
    assert f32.stats.hits == f64.stats.hits == 1  # the two precisions never share an entry


async def test_each_model_has_its_own_vectors() -> None:
    store, embed = MemoryCacheStore(), Embedder()
    await EmbeddingCache(store, embed, model="small").embed(["x"])
    await EmbeddingCache(store, embed, model="large").embed(["x"])
    assert embed.batches == [["x"], ["x"]]


async def test_embedding_entries_expire_after_the_ttl(clock: FakeClock) -> None:
    embed = Embedder()
    cache = EmbeddingCache(MemoryCacheStore(clock=clock), embed, model="m", ttl=10)
    await cache.embed(["x"])
    clock.advance(10)
    await cache.embed(["x"])
    assert embed.batches == [["x"], ["x"]]


async def test_a_wrong_number_of_vectors_is_an_error_and_nothing_is_stored() -> None:
    async def short(texts: list[str]) -> list[list[float]]:
        return [[1.0]]

    store = CountingStore()
    with pytest.raises(ConfigurationError, match=r"returned 1 vector\(s\) for 2 text\(s\)"):
        await EmbeddingCache(store, short, model="m").embed(["a", "b"])
    assert store.trips == [("get_many", 2)]


async def test_a_failing_embed_fn_propagates_unchanged() -> None:
    async def broken(texts: list[str]) -> list[list[float]]:
        raise ProviderUnavailable("503", provider="emb")

    cache = EmbeddingCache(MemoryCacheStore(), broken, model="m")
    with pytest.raises(ProviderUnavailable):
        await cache.embed(["a"])
    assert cache.stats.writes == 0


async def test_embeddings_fail_open_when_the_store_is_down(bus: EventBus) -> None:
    events: list[StoreDegraded] = []
    bus.subscribe(events.append, StoreDegraded)
    store, embed = unreachable_redis(), Embedder()
    cache = EmbeddingCache(store, embed, model="m", bus=bus)
    try:
        assert [v[0] for v in await cache.embed(["a", "bb", "a"])] == [1.0, 2.0, 1.0]
    finally:
        await store.aclose()
    assert embed.batches == [["a", "bb"]]
    assert cache.stats == CacheStats(misses=2, errors=1)
    assert [(e.source, e.operation, e.action) for e in events] == [
        ("cache:embeddings", "cache_get_many", "allowed")
    ]


async def test_an_unreadable_vector_is_a_miss() -> None:
    store, embed = MemoryCacheStore(), Embedder()
    cache = EmbeddingCache(store, embed, model="m")
    await store.set(cache.key("x"), b"\x00\x01\x02", ttl=None)  # not a whole float32
    assert (await cache.embed(["x"]))[0][0] == 1.0
    assert (embed.batches, cache.stats.errors, cache.stats.writes) == ([["x"]], 1, 1)


async def test_skip_cache_sends_every_text_to_the_provider() -> None:
    store, embed = CountingStore(), Embedder()
    cache = EmbeddingCache(store, embed, model="m")
    await cache.embed(["a"])
    with skip_cache():
        vectors = await cache.embed(["a", "a"])
    assert embed.batches == [["a"], ["a"]]
    assert vectors[0] == vectors[1]
    assert store.trips == [("get_many", 1), ("set_many", 1)]
    assert cache.stats.bypassed == 1


async def test_a_bare_string_is_refused() -> None:
    cache = EmbeddingCache(MemoryCacheStore(), Embedder(), model="m")
    with pytest.raises(TypeError, match=r"embed\(\[text\]\)"):
        await cache.embed("hello")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from("abcdefgh"), max_size=12), min_size=1, max_size=5))
def test_batches_match_embedding_each_text_alone(batches: list[list[str]]) -> None:
    async def run() -> None:
        embed, alone = Embedder(), Embedder()
        cache = EmbeddingCache(MemoryCacheStore(), embed, model="m", precision="float64")
        seen: set[str] = set()
        for texts in batches:
            before = len(embed.batches)
            got = await cache.embed(texts)
            assert got == [(await alone([text]))[0] for text in texts]
            new = [text for text in dict.fromkeys(texts) if text not in seen]
            assert embed.batches[before:] == ([new] if new else [])  # one call, misses only
            seen |= set(texts)

    asyncio.run(run())


# -- configuration ------------------------------------------------------------------------------


def test_a_store_of_another_concern_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"ResponseCache\.store must be a cache store"):
        ResponseCache(MemoryStore())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"EmbeddingCache\.store must be a cache store"):
        EmbeddingCache(MemoryStore(), Embedder(), model="m")  # type: ignore[arg-type]


TEXT: Any = "gpt"
NONE: Any = None
F16: Any = "float16"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: ResponseCache(s, ttl=0), r"ResponseCache\.ttl must be"),
        (lambda s: ResponseCache(s, namespace=""), r"ResponseCache\.namespace must be"),
        (lambda s: CachedModel(TEXT, ResponseCache(s)), r"CachedModel\.model must be"),
        (lambda s: CachedModel(ScriptedModel(["x"]), s), r"CachedModel\.cache must be"),
        (
            lambda s: CachedModel(ScriptedModel(["x"]), ResponseCache(s), cache_if=NONE),
            r"CachedModel\.cache_if must be",
        ),
        (lambda s: EmbeddingCache(s, Embedder(), model=""), r"EmbeddingCache\.model must be"),
        (lambda s: EmbeddingCache(s, TEXT, model="m"), r"EmbeddingCache\.embed_fn must be"),
        (lambda s: EmbeddingCache(s, Embedder(), model="m", ttl=-1), r"EmbeddingCache\.ttl"),
        (
            lambda s: EmbeddingCache(s, Embedder(), model="m", precision=F16),
            r"EmbeddingCache\.precision must be one of 'float32' or 'float64'",
        ),
    ],
)
def test_bad_options_name_themselves(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build(MemoryCacheStore())
