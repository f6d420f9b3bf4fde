"""The rate limiter: exact sliding windows, reject and wait modes, tokens, keys, concurrency."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from bastion import (
    CallRejected,
    ConfigurationError,
    EventBus,
    RateLimitConfig,
    RateLimitDecision,
    RateLimiter,
    RateLimitError,
    RejectedError,
    RequestTooLargeError,
    estimate_tokens,
)
from bastion.resilience import SlidingWindowLog
from bastion.testing import FakeClock


def limiter(
    clock: FakeClock, bus: EventBus | None = None, *, name: str = "rl", **options: Any
) -> RateLimiter:
    return RateLimiter(RateLimitConfig(**options), name=name, clock=clock, bus=bus)


def rejections(bus: EventBus) -> list[CallRejected]:
    seen: list[CallRejected] = []
    bus.subscribe(seen.append, CallRejected)
    return seen


# --- reject mode ------------------------------------------------------------------------------


def test_reject_mode_gives_the_exact_retry_after(clock: FakeClock, bus: EventBus) -> None:
    rl = limiter(clock, bus, max_rpm=3, window=10)
    for step in (0, 2, 3):  # admitted at t=0, 2 and 5
        clock.advance(step)
        assert rl.try_acquire().allowed
    clock.advance(1)  # t=6: the call from t=0 leaves the window at t=10
    with pytest.raises(RateLimitError) as info:
        rl.acquire_sync()
    err = info.value
    assert err.retry_after == 4.0
    assert (err.key, err.limit, err.remaining, err.window, err.cost) == ("default", 3, 0, 10, 1)
    assert err.http_status == 429
    clock.advance(3.999)
    assert not rl.try_acquire().allowed
    clock.advance(0.001)
    assert rl.try_acquire().allowed


def test_refusal_emits_call_rejected_with_retry_after(clock: FakeClock, bus: EventBus) -> None:
    seen = rejections(bus)
    rl = limiter(clock, bus, name="admission", max_rpm=1, window=30)
    assert rl.try_acquire().allowed
    assert seen == []
    clock.advance(5)
    decision = rl.try_acquire()
    with pytest.raises(RateLimitError):
        rl.acquire_sync()
    assert decision == RateLimitDecision(False, 1.0, 0.0, clock.time() + 25.0, 25.0)
    assert seen == [
        CallRejected(source="admission", reason="rate_limited", retry_after=25.0),
        CallRejected(source="admission", reason="rate_limited", retry_after=25.0),
    ]


async def test_async_reject_mode_raises_without_sleeping(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=2, window=60)
    await rl.acquire()
    await rl.acquire()
    with pytest.raises(RateLimitError) as info:
        await rl.acquire()
    assert info.value.retry_after == 60.0
    assert clock.sleeps == []


def test_allowed_decision_reports_remaining_and_reset(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=5, window=60)
    first = rl.try_acquire()
    clock.advance(20)
    second = rl.try_acquire()
    assert first == RateLimitDecision(True, 5.0, 4.0, clock.time() - 20 + 60, 0.0)
    assert second == RateLimitDecision(True, 5.0, 3.0, clock.time() + 60, 0.0)


# --- wait mode --------------------------------------------------------------------------------


async def test_wait_mode_sleeps_exactly_retry_after(auto_clock: FakeClock) -> None:
    rl = limiter(auto_clock, max_rpm=2, window=10, mode="wait", max_wait=10)
    await rl.acquire()
    auto_clock.advance(3)
    await rl.acquire()
    decision = await rl.acquire()  # full until the first call leaves at t=10
    assert auto_clock.sleeps == [7.0]
    assert auto_clock.monotonic() == 10.0
    assert decision.allowed
    assert decision.remaining == 0.0


def test_wait_mode_sync_uses_sleep_sync(auto_clock: FakeClock) -> None:
    rl = limiter(auto_clock, max_rpm=1, window=4, mode="wait", max_wait=5)
    rl.acquire_sync()
    rl.acquire_sync()
    rl.acquire_sync()
    assert auto_clock.sleeps == [4.0, 4.0]


async def test_wait_mode_rejects_beyond_max_wait_without_sleeping(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    seen = rejections(bus)
    rl = limiter(auto_clock, bus, max_rpm=1, window=10, mode="wait", max_wait=9.5)
    await rl.acquire()
    with pytest.raises(RateLimitError) as info:
        await rl.acquire()
    assert info.value.retry_after == 10.0
    assert auto_clock.sleeps == []
    assert [e.retry_after for e in seen] == [10.0]
    with pytest.raises(RateLimitError):
        rl.acquire_sync()
    assert auto_clock.sleeps == []


async def test_wait_mode_counts_every_sleep_against_max_wait(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=1, window=10, mode="wait", max_wait=15)
    await rl.acquire()
    first = asyncio.create_task(rl.acquire())
    second = asyncio.create_task(rl.acquire())
    await clock.wait_for_sleepers(2)
    clock.advance(10)
    # One of them takes the freed room; the other would need 10 s more: 20 s > max_wait.
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert sum(isinstance(r, RateLimitDecision) for r in results) == 1
    errors = [r for r in results if isinstance(r, RateLimitError)]
    assert len(errors) == 1
    assert errors[0].retry_after == 10.0
    assert clock.sleeps == [10.0, 10.0]


async def test_wait_mode_at_awkward_float_times_needs_one_sleep(auto_clock: FakeClock) -> None:
    auto_clock.advance(0.1)
    rl = limiter(auto_clock, max_rpm=1, window=0.3, mode="wait", max_wait=1)
    for _ in range(20):
        await rl.acquire()
    assert len(auto_clock.sleeps) == 19
    assert all(s == pytest.approx(0.3) for s in auto_clock.sleeps)


# --- tokens and both limits -------------------------------------------------------------------


def test_weighted_costs_walk_the_log_from_the_oldest(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=None, max_tpm=10, window=10)
    assert rl.try_acquire(tokens=4).allowed  # leaves at t=10
    clock.advance(5)
    assert rl.try_acquire(tokens=6).allowed  # leaves at t=15
    clock.advance(1)
    small = rl.try_acquire(tokens=4)
    big = rl.try_acquire(tokens=8)
    assert (small.allowed, small.retry_after) == (False, 4.0)
    assert (big.allowed, big.retry_after) == (False, 9.0)
    assert big.limit == 10.0
    assert big.remaining == 0.0
    with pytest.raises(RateLimitError) as info:
        rl.acquire_sync(tokens=8)
    assert info.value.cost == 8.0


def test_both_limits_admit_atomically(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=5, max_tpm=100, window=60)
    assert rl.try_acquire(tokens=60).allowed
    refused = rl.try_acquire(tokens=60)  # refused by tokens: must not use a request
    assert (refused.allowed, refused.limit, refused.remaining) == (False, 100.0, 40.0)
    with pytest.raises(RateLimitError) as info:
        rl.acquire_sync(tokens=41)
    assert (info.value.limit, info.value.cost) == (100.0, 41.0)
    admitted = [rl.try_acquire(tokens=0).allowed for _ in range(4)]
    assert admitted == [True] * 4
    over = rl.try_acquire(tokens=0)  # the sixth request: refused by requests, no tokens used
    assert (over.allowed, over.limit, over.remaining) == (False, 5.0, 0.0)
    assert rl.try_acquire(tokens=40).allowed is False
    clock.advance(60)
    assert rl.try_acquire(tokens=100).allowed


def test_allowed_decision_names_the_tighter_limit(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=10, max_tpm=1000, window=60)
    light = rl.try_acquire(tokens=10)  # requests 9/10 left, tokens 990/1000 left
    heavy = rl.try_acquire(tokens=900)  # requests 8/10 left, tokens 90/1000 left
    assert (light.limit, light.remaining) == (10.0, 9.0)
    assert (heavy.limit, heavy.remaining) == (1000.0, 90.0)


def test_refusal_by_both_limits_reports_the_one_that_frees_last(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=2, max_tpm=10, window=10)
    assert rl.try_acquire(tokens=1).allowed  # leaves at t=10
    clock.advance(2)
    assert rl.try_acquire(tokens=9).allowed  # leaves at t=12
    clock.advance(1)
    refused = rl.try_acquire(tokens=5)  # requests free at t=10, tokens only at t=12
    assert (refused.limit, refused.retry_after) == (10.0, 9.0)


def test_a_cost_that_can_never_fit_is_refused_as_too_large(clock: FakeClock, bus: EventBus) -> None:
    seen = rejections(bus)
    rl = limiter(clock, bus, name="quota", max_rpm=10, max_tpm=4000)
    with pytest.raises(RequestTooLargeError, match=r"5000.*max_tpm=4000") as info:
        rl.try_acquire("tenant", tokens=5000)
    err = info.value
    assert (err.key, err.cost, err.limit, err.unit) == ("tenant", 5000, 4000, "tokens")
    assert err.http_status == 413
    assert isinstance(err, RejectedError)
    assert not isinstance(err, ConfigurationError)
    assert "never" in str(err)
    assert "split the input" in str(err)
    assert [(e.source, e.reason, e.retry_after) for e in seen] == [("quota", "too_large", None)]
    assert rl.try_acquire("tenant", tokens=4000).allowed  # the refusal spent nothing


async def test_too_large_is_raised_by_every_way_in_even_in_wait_mode(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=10, max_tpm=100, mode="wait", max_wait=60)
    with pytest.raises(RequestTooLargeError):
        await rl.acquire(tokens=101)
    with pytest.raises(RequestTooLargeError):
        rl.acquire_sync(tokens=101)
    with pytest.raises(RequestTooLargeError):
        rl.call_sync(str.upper, "x" * 404)  # 101 tokens by the default estimate
    assert clock.sleeps == []  # refused at once: no wait could ever help


@pytest.mark.parametrize("tokens", [-1, math.nan, math.inf, True, "12"])
def test_bad_token_counts_are_refused(clock: FakeClock, tokens: Any) -> None:
    rl = limiter(clock, max_rpm=10, max_tpm=100)
    with pytest.raises(ConfigurationError, match="tokens"):
        rl.try_acquire(tokens=tokens)


def test_requests_only_limiter_still_checks_token_counts(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=2)
    assert rl.try_acquire(tokens=10**9).allowed  # tokens are not limited here
    with pytest.raises(ConfigurationError, match="tokens"):
        rl.try_acquire(tokens=-5)


def test_zero_cost_calls_are_free_under_a_token_only_limit(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=None, max_tpm=10)
    assert all(rl.try_acquire().allowed for _ in range(100))
    assert rl.try_acquire(tokens=10).allowed
    assert not rl.try_acquire(tokens=1).allowed
    assert rl.try_acquire(tokens=0).allowed


# --- keys -------------------------------------------------------------------------------------


def test_keys_are_isolated(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=1, window=60)
    assert rl.try_acquire("alice").allowed
    assert rl.try_acquire("bob").allowed
    assert not rl.try_acquire("alice").allowed
    with pytest.raises(RateLimitError) as info:
        rl.acquire_sync("bob")
    assert info.value.key == "bob"
    assert rl.try_acquire("carol").allowed


def test_config_picks_keys_and_prices_calls() -> None:
    default = RateLimitConfig()
    assert default.key_for("hello there") == "default"
    assert default.tokens_for("x" * 9) == 3.0
    assert estimate_tokens("") == 0.0
    custom = RateLimitConfig(
        key=lambda _input, *, user: f"user:{user}",
        tokens=lambda text, **_: float(len(text.split())),
    )
    assert custom.key_for("hi", user="ann") == "user:ann"
    assert custom.tokens_for("one two three", user="ann") == 3.0


def test_key_and_tokens_get_the_wrapped_callables_arguments_whatever_they_are() -> None:
    config = RateLimitConfig(
        max_tpm=1000,
        key=lambda tenant, question, *, model: f"{tenant}/{model}",
        tokens=lambda tenant, question, *, model: float(len(question)),
    )
    assert config.key_for("acme", "why?", model="small") == "acme/small"
    assert config.tokens_for("acme", "why?", model="small") == 4.0


def test_estimate_tokens_counts_the_text_of_str_arguments_only() -> None:
    class Agent:
        def run(self, prompt: str, *, system: str = "", temperature: float = 0.0) -> str:
            return prompt

    agent = Agent()
    assert estimate_tokens(agent, "x" * 7, system="y" * 5, temperature=0.7) == 3.0  # 12 chars
    assert estimate_tokens(agent, 12345, ["not", "text"]) == 0.0
    assert RateLimitConfig().tokens_for(agent, "abcd", system="efgh") == 2.0


def test_an_idle_key_is_dropped_when_seen_again(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=3, window=10)
    log = rl.backend
    assert isinstance(log, SlidingWindowLog)
    rl.try_acquire("a")
    assert len(log) == 1
    clock.advance(10)
    rl.try_acquire("a", tokens=0)
    assert len(log) == 1  # dropped, then recreated by this admission
    assert rl.try_acquire("a").remaining == 1.0


def test_stale_keys_are_swept(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=1, window=10)
    log = rl.backend
    assert isinstance(log, SlidingWindowLog)
    for i in range(5000):
        rl.try_acquire(f"user-{i}")
    assert len(log) == 5000
    clock.advance(10)
    for _ in range(1024):
        rl.try_acquire("busy")
    assert len(log) == 1


def test_a_sweep_keeps_keys_that_are_still_in_their_window(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=2000, window=10)
    log = rl.backend
    assert isinstance(log, SlidingWindowLog)
    for i in range(600):
        rl.try_acquire(f"old-{i}")
    clock.advance(5)
    for i in range(600):
        rl.try_acquire(f"new-{i}")
    clock.advance(5)  # the old keys have expired, the new ones have 5 s left
    assert len(log) == 1200
    for _ in range(1024):
        rl.try_acquire("busy")
    assert len(log) == 601
    assert rl.try_acquire("new-3").remaining == 1998.0


# --- concurrency ------------------------------------------------------------------------------


def test_many_threads_never_over_admit(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=300, max_tpm=5000, window=60)
    admitted: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(200):
            tokens = float((n + i) % 7)
            if rl.try_acquire(tokens=tokens).allowed:
                with lock:
                    admitted.append(tokens)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 300  # requests bind first: 300 calls cost at most 1800 tokens
    assert sum(admitted) <= 5000


async def test_many_tasks_never_over_admit(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=50, window=60)
    results = await asyncio.gather(*(rl.acquire() for _ in range(400)), return_exceptions=True)
    assert sum(isinstance(r, RateLimitDecision) for r in results) == 50
    assert sum(isinstance(r, RateLimitError) for r in results) == 350


async def test_waiting_tasks_stay_within_every_window(auto_clock: FakeClock) -> None:
    rl = limiter(auto_clock, max_rpm=7, window=10, mode="wait", max_wait=1000)
    times: list[float] = []

    async def one() -> None:
        await rl.acquire()
        times.append(auto_clock.monotonic())

    await asyncio.gather(*(one() for _ in range(60)))
    assert len(times) == 60
    times.sort()
    for start in times:
        assert sum(1 for t in times if start <= t < start + 10) <= 7


def test_two_limiters_can_share_one_backend(clock: FakeClock) -> None:
    config = RateLimitConfig(max_rpm=2, max_tpm=50, window=30)
    shared = SlidingWindowLog(limits=(2, 50), window=30)
    a = RateLimiter(config, clock=clock, backend=shared)
    b = RateLimiter(config, clock=clock, backend=shared)
    assert a.backend is shared
    assert a.try_acquire().allowed
    assert b.try_acquire().allowed
    assert not a.try_acquire().allowed
    assert not b.try_acquire().allowed


def test_a_backend_with_other_limits_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match="backend"):
        RateLimiter(
            RateLimitConfig(max_rpm=2),
            clock=clock,
            backend=SlidingWindowLog(limits=(3,), window=60),
        )


# --- call, call_sync, decorator ----------------------------------------------------------------


async def test_call_and_decorator_keep_async_functions_async(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=2, window=60)

    async def double(x: int) -> int:
        return 2 * x

    @rl
    async def triple(x: int) -> int:
        return 3 * x

    assert await rl.call(double, 4) == 8
    assert await triple(5) == 15
    assert triple.__name__ == "triple"
    with pytest.raises(RateLimitError):
        await triple(1)


def test_call_sync_and_decorator_keep_sync_functions_sync(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=2, window=60)

    @rl
    def square(x: int) -> int:
        return x * x

    assert rl.call_sync(str.upper, "a") == "A"
    assert square(4) == 16
    ran: list[int] = []
    with pytest.raises(RateLimitError):
        rl.call_sync(ran.append, 1)
    assert ran == []


def test_call_and_decorator_count_under_the_key_and_price_with_tokens(
    clock: FakeClock,
) -> None:
    config = RateLimitConfig(
        max_rpm=100, max_tpm=10, key=lambda user, text: f"user:{user}", tokens=None
    )
    rl = RateLimiter(config, clock=clock)

    def answer(user: str, text: str) -> str:
        return text

    ask = rl(answer)
    assert ask("ann", "x" * 24) == "x" * 24  # 6 tokens for key user:ann ("ann" adds 1)
    with pytest.raises(RateLimitError) as info:
        ask("ann", "x" * 16)  # 4 + 1 more tokens would make 12 > 10
    assert (info.value.key, info.value.cost) == ("user:ann", 5.0)
    assert rl.call_sync(answer, "bob", "x" * 32) == "x" * 32  # bob has a window of his own
    assert not rl.try_acquire("user:bob", tokens=2).allowed  # 9 of bob's 10 tokens are spent


async def test_async_call_prices_with_tokens_too(clock: FakeClock) -> None:
    rl = RateLimiter(RateLimitConfig(max_rpm=100, max_tpm=10), clock=clock)

    async def echo(text: str) -> str:
        return text

    assert await rl.call(echo, "x" * 40) == "x" * 40  # exactly the 10 tokens
    with pytest.raises(RateLimitError):
        await rl.call(echo, "y")


async def test_a_token_only_limiter_refuses_to_wrap_calls(clock: FakeClock) -> None:
    rl = limiter(clock, name="tpm", max_rpm=None, max_tpm=1000)

    def work(text: str) -> str:
        return text

    async def awork(text: str) -> str:
        return text

    with pytest.raises(ConfigurationError, match=r"max_rpm=None.*acquire\(key, tokens=") as info:
        rl(work)
    assert "@RateLimiter" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"RateLimiter\.call_sync"):
        rl.call_sync(work, "hi")
    with pytest.raises(ConfigurationError, match=r"RateLimiter\.call "):
        await rl.call(awork, "hi")
    assert rl.try_acquire("k", tokens=1000).allowed  # acquire(..., tokens=) is the way


async def test_an_object_with_an_async_call_gets_an_async_wrapper(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=1)

    class Model:
        async def __call__(self, prompt: str) -> str:
            return prompt.upper()

    wrapped = rl(Model())
    assert await wrapped("hi") == "HI"
    with pytest.raises(RateLimitError):
        await wrapped("again")


def test_call_sync_refuses_a_function_that_returns_a_coroutine(clock: FakeClock) -> None:
    rl = limiter(clock, max_rpm=5)

    async def fetch() -> str:
        return "late"

    with pytest.raises(ConfigurationError, match=r"returned an awaitable.*await limiter\.call"):
        rl.call_sync(fetch)


def test_repr_names_the_limits(clock: FakeClock) -> None:
    rl = limiter(clock, name="quota", max_rpm=10, max_tpm=500)
    assert "quota" in repr(rl)
    assert "max_tpm=500" in repr(rl)
    assert repr(rl.backend) == "SlidingWindowLog(limits=(10.0, 500.0), window=60.0)"


# --- validation -------------------------------------------------------------------------------


def test_defaults() -> None:
    config = RateLimitConfig()
    assert (config.max_rpm, config.max_tpm, config.window) == (60, None, 60.0)
    assert (config.mode, config.max_wait, config.key, config.tokens) == ("reject", 10.0, None, None)
    assert RateLimiter().config == config


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"max_rpm": 0}, "max_rpm"),
        ({"max_rpm": 0.5}, "max_rpm"),
        ({"max_rpm": -3}, "max_rpm"),
        ({"max_rpm": math.inf}, "max_rpm"),
        ({"max_rpm": math.nan}, "max_rpm"),
        ({"max_rpm": True}, "max_rpm"),
        ({"max_rpm": "60"}, "max_rpm"),
        ({"max_tpm": 0}, "max_tpm"),
        ({"max_tpm": -1.0}, "max_tpm"),
        ({"max_tpm": math.inf}, "max_tpm"),
        ({"max_tpm": math.nan}, "max_tpm"),
        ({"max_rpm": None, "max_tpm": None}, "max_rpm or max_tpm"),
        ({"window": 0}, "window"),
        ({"window": -1}, "window"),
        ({"window": math.inf}, "window"),
        ({"window": math.nan}, "window"),
        ({"window": None}, "window"),
        ({"mode": "block"}, "mode"),
        ({"max_wait": -0.1}, "max_wait"),
        ({"max_wait": math.inf}, "max_wait"),
        ({"max_wait": False}, "max_wait"),
        ({"key": "user"}, "key"),
        ({"tokens": 12}, "tokens"),
    ],
)
def test_every_option_is_validated(options: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigurationError, match=names) as info:
        RateLimitConfig(**options)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"limits": (), "window": 1}, "at least one"),
        ({"limits": (0,), "window": 1}, r"limits\[0\]"),
        ({"limits": (1, "2"), "window": 1}, r"limits\[1\]"),
        ({"limits": (1,), "window": 0}, "window"),
        ({"limits": (1,), "window": "1"}, "window"),
        ({"limits": (1,), "window": 1, "names": ("a", "b")}, "names"),
    ],
)
def test_the_log_validates_its_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SlidingWindowLog(**options)


def test_the_log_wants_one_cost_per_limit() -> None:
    log = SlidingWindowLog(limits=(1, 2), window=1)
    with pytest.raises(ConfigurationError, match="one cost per limit"):
        log.decide("k", (1.0,), 0.0)
    with pytest.raises(ConfigurationError, match=r"limits\[1\]"):
        log.decide("k", (1.0, 3.0), 0.0)


def test_retry_after_survives_float_rounding() -> None:
    window, now = 56.77651987687741, 8.962288758721403
    assert now + (window - now) < window  # plain subtraction would fall one step short
    log = SlidingWindowLog(limits=(1,), window=window)
    assert log.decide("k", (1.0,), 0.0).allowed
    refused = log.decide("k", (1.0,), now)
    assert not refused.allowed
    assert log.decide("k", (1.0,), now + refused.retry_after).allowed
