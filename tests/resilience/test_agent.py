"""with_resilience and @resilient: defaults, the fixed order, and every kind of callee."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from bastion import (
    Bulkhead,
    BulkheadConfig,
    BulkheadFullError,
    CallTimeoutError,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    EventBus,
    Fallback,
    HealthConfig,
    RateLimitConfig,
    RateLimiter,
    RateLimitError,
    RequestTooLargeError,
    Retry,
    RetryConfig,
    RetryScheduled,
    ShuttingDownError,
    resilient,
    with_resilience,
)
from bastion.testing import FakeClock


class Unavailable(Exception):
    """A provider's 503, as an SDK would raise it."""

    status_code = 503


class Script:
    """An async agent that fails the first ``failures`` calls, then answers."""

    name = "scripted"

    def __init__(self, failures: int = 0, exc: Exception | None = None) -> None:
        self.failures = failures
        self.exc = exc or Unavailable("503")
        self.calls = 0
        self.hanging = 0
        self.seen: list[tuple[Any, dict[str, Any]]] = []

    async def run(self, question: str, **kwargs: Any) -> str:
        if kwargs.get("hang"):
            self.hanging += 1
            await asyncio.Event().wait()
        self.calls += 1
        self.seen.append((question, kwargs))
        if self.calls <= self.failures:
            raise self.exc
        return f"answer:{question}"


def quiet(**options: Any) -> dict[str, Any]:
    """Options every test wants: a private bus, no SIGTERM handler."""
    options.setdefault("graceful_shutdown", False)
    options.setdefault("bus", EventBus())
    return options


# -- defaults and callee kinds -------------------------------------------------------------


def test_defaults_match_the_documented_table() -> None:
    agent = with_resilience(Script(), graceful_shutdown=False)
    breaker, limiter, retry = agent.circuit_breaker, agent.rate_limiter, agent.retry
    assert breaker is not None
    assert limiter is not None
    assert retry is not None
    assert breaker.config.failure_threshold == 5
    assert breaker.config.reset_timeout == 30.0
    assert breaker.config.call_timeout == 60.0
    assert limiter.config.max_rpm == 60
    assert (retry.config.max_retries, retry.config.backoff, retry.config.max_backoff) == (
        2,
        0.5,
        5.0,
    )
    assert agent.bulkhead is None
    assert agent.fallback is None
    assert agent.name == "scripted"
    assert repr(agent) == "<ResilientAgent 'scripted'>"


def test_parts_can_be_switched_off() -> None:
    agent = with_resilience(
        Script(), circuit_breaker=False, rate_limit=False, retry=False, **quiet()
    )
    assert (agent.circuit_breaker, agent.rate_limiter, agent.retry) == (None, None, None)


class SyncAgent:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def run(self, question: str, *, user_id: str = "anon") -> str:
        self.threads.append(threading.get_ident())
        return f"{user_id}:{question}"


async def test_every_kind_of_callee() -> None:
    async def async_fn(question: str) -> str:
        return question.upper()

    def sync_fn(question: str) -> str:
        return question[::-1]

    sync_agent = SyncAgent()
    assert await with_resilience(Script(), **quiet()).run("q", lang="en") == "answer:q"
    assert await with_resilience(async_fn, **quiet()).run("abc") == "ABC"
    assert await with_resilience(sync_fn, **quiet()).run("abc") == "cba"
    assert await with_resilience(sync_agent, **quiet()).run("q", user_id="u1") == "u1:q"
    # A blocking agent runs in the executor, never on the loop's thread.
    assert sync_agent.threads[0] != threading.get_ident()


def test_run_sync_runs_sync_callees_in_the_calling_thread_pipeline() -> None:
    agent = with_resilience(SyncAgent(), **quiet())
    assert agent.run_sync("q", user_id="u2") == "u2:q"
    assert agent.health().total_runs == 1


def test_run_sync_on_an_async_agent_outside_a_loop() -> None:
    assert with_resilience(Script(), **quiet()).run_sync("q") == "answer:q"


async def test_run_sync_on_an_async_agent_inside_a_loop_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"await agent\.run"):
        with_resilience(Script(), **quiet()).run_sync("q")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"circuit_breaker": 5}, "circuit_breaker must be"),
        ({"rate_limit": "60/m"}, "rate_limit must be"),
        ({"retry": RetryConfig}, "retry must be"),
        ({"bulkhead": 3}, "bulkhead must be"),
        ({"health_check": "yes"}, "health_check must be"),
        ({"total_timeout": 0}, "total_timeout must be"),
        ({"shutdown_timeout": -1}, "shutdown_timeout must be"),
        ({"retries": 3}, "unknown option"),
    ],
)
def test_invalid_options_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        with_resilience(Script(), **options)


def test_things_that_cannot_run_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="cannot wrap"):
        with_resilience(42)  # type: ignore[call-overload]


# -- retry, breaker, timeout through the pipeline ------------------------------------------


async def test_transient_failures_are_retried_with_backoff() -> None:
    clock = FakeClock(auto_advance=True)
    bus = EventBus()
    retries: list[RetryScheduled] = []
    bus.subscribe(retries.append, RetryScheduled)
    script = Script(failures=2)
    agent = with_resilience(
        script, retry=RetryConfig(max_retries=2, jitter="none"), **quiet(clock=clock, bus=bus)
    )
    assert await agent.run("q") == "answer:q"
    assert script.calls == 3
    assert clock.sleeps == [0.5, 1.0]
    assert [r.attempt for r in retries] == [1, 2]


async def test_client_errors_are_not_retried_and_do_not_trip_the_breaker() -> None:
    script = Script(failures=100, exc=ValueError("bad input"))
    agent = with_resilience(script, **quiet(clock=FakeClock(auto_advance=True)))
    for _ in range(10):
        with pytest.raises(ValueError, match="bad input"):
            await agent.run("q")
    assert script.calls == 10
    assert agent.circuit_breaker is not None
    assert agent.circuit_breaker.state is CircuitState.CLOSED


async def test_open_circuit_fails_fast_without_calling_the_agent_or_retrying() -> None:
    clock = FakeClock(auto_advance=True)
    script = Script(failures=100)
    agent = with_resilience(
        script,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3, reset_timeout=30),
        retry=RetryConfig(max_retries=5, backoff=0.1, jitter="none"),
        **quiet(clock=clock),
    )
    # Three attempts open the breaker; the fourth is refused, so the caller gets the
    # callee's own failure (what is wrong), with a note naming the refusal.
    with pytest.raises(Unavailable) as info:
        await agent.run("q")
    assert script.calls == 3
    assert clock.sleeps == [0.1, 0.2, 0.4]
    assert any("circuit 'scripted' is open" in note for note in info.value.__notes__)
    # The next run is refused at once, without calling the agent.
    with pytest.raises(CircuitOpenError) as refused:
        await agent.run("q")
    assert refused.value.retry_after == pytest.approx(30 - 0.4)
    assert script.calls == 3
    health = agent.health()
    assert health.status == "unhealthy"
    assert health.circuit_state == "open"
    assert (health.total_failures, health.total_rejected) == (1, 1)
    assert health.last_error == "Unavailable: 503"


async def test_recovery_through_half_open() -> None:
    clock = FakeClock()
    script = Script(failures=3)
    agent = with_resilience(
        script,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3, reset_timeout=10),
        retry=False,
        **quiet(clock=clock),
    )
    for _ in range(3):
        with pytest.raises(Unavailable):
            await agent.run("q")
    with pytest.raises(CircuitOpenError):
        await agent.run("q")
    clock.advance(10)
    assert agent.health().status == "degraded"  # half-open
    assert await agent.run("q") == "answer:q"
    assert agent.health().circuit_state == "closed"


async def test_slow_attempt_times_out_counts_as_failure_and_is_retried() -> None:
    clock = FakeClock()
    calls = 0

    async def slow_then_fast(question: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await clock.sleep(1000)
        return "fast"

    agent = with_resilience(
        slow_then_fast,
        circuit_breaker=CircuitBreakerConfig(call_timeout=5),
        retry=RetryConfig(backoff=0),
        **quiet(clock=clock),
    )
    task = asyncio.create_task(agent.run("q"))
    await clock.wait_for_sleepers(1)
    clock.advance(5)
    assert await task == "fast"
    assert calls == 2
    assert agent.circuit_breaker is not None
    assert agent.circuit_breaker.metrics().failures == 1


async def test_total_timeout_bounds_every_attempt_and_backoff() -> None:
    clock = FakeClock()
    attempts = 0

    async def hangs(question: str) -> str:
        nonlocal attempts
        attempts += 1
        await clock.sleep(1000)
        return "never"

    agent = with_resilience(
        hangs,
        circuit_breaker=CircuitBreakerConfig(call_timeout=4, failure_threshold=10),
        retry=RetryConfig(max_retries=10, backoff=1, multiplier=1, jitter="none"),
        total_timeout=10,
        **quiet(clock=clock),
    )
    task = asyncio.create_task(agent.run("q"))
    while not task.done():
        await asyncio.sleep(0)
        if clock.pending_sleepers:
            clock.advance(1)
    with pytest.raises(CallTimeoutError) as info:
        await task
    # Attempts at 0-4 s and 5-9 s timed out; a backoff ending at 10 s would reach the
    # deadline, so the run ends at 9 s instead of sleeping into it.
    assert info.value.scope == "total"
    assert attempts == 2
    assert clock.monotonic() == 9
    assert agent.circuit_breaker is not None
    assert agent.circuit_breaker.metrics().failures == 2


async def test_an_attempt_cut_by_the_deadline_is_not_held_against_the_breaker() -> None:
    clock = FakeClock()

    async def hangs(question: str) -> str:
        await clock.sleep(1000)
        return "never"

    agent = with_resilience(
        hangs,
        circuit_breaker=CircuitBreakerConfig(call_timeout=60, failure_threshold=1),
        retry=False,
        total_timeout=5,
        **quiet(clock=clock),
    )
    task = asyncio.create_task(agent.run("q"))
    await clock.wait_for_sleepers(1)
    clock.advance(5)
    with pytest.raises(CallTimeoutError, match="total timeout"):
        await task
    assert agent.circuit_breaker is not None
    assert agent.circuit_breaker.state is CircuitState.CLOSED


def test_sync_total_timeout_stops_retrying_in_the_callers_thread() -> None:
    clock = FakeClock(auto_advance=True)
    calls = 0

    @resilient(
        circuit_breaker=CircuitBreakerConfig(call_timeout=None, failure_threshold=100),
        retry=RetryConfig(max_retries=50, backoff=2, multiplier=1, jitter="none"),
        total_timeout=7,
        **quiet(clock=clock),
    )
    def flaky() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionResetError

    with pytest.raises(CallTimeoutError, match="total timeout"):
        flaky()
    assert calls == 4  # at 0, 2, 4 and 6 s; the next backoff would pass the 7 s deadline
    assert clock.sleeps == [2, 2, 2]


async def test_without_breaker_there_is_no_attempt_timeout() -> None:
    clock = FakeClock()

    async def slow(question: str) -> str:
        await clock.sleep(100)
        return "done"

    agent = with_resilience(slow, circuit_breaker=False, retry=False, **quiet(clock=clock))
    task = asyncio.create_task(agent.run("q"))
    await clock.wait_for_sleepers(1)
    clock.advance(100)
    assert await task == "done"


# -- admission, bulkhead, fallback ---------------------------------------------------------


async def test_rate_limit_is_checked_once_per_run_not_per_attempt() -> None:
    clock = FakeClock(auto_advance=True)
    script = Script(failures=1)
    agent = with_resilience(
        script,
        rate_limit=RateLimitConfig(max_rpm=2),
        retry=RetryConfig(backoff=0),
        **quiet(clock=clock),
    )
    assert await agent.run("a") == "answer:a"  # two attempts, one admission
    assert await agent.run("b") == "answer:b"
    with pytest.raises(RateLimitError) as info:
        await agent.run("c")
    assert info.value.limit == 2
    assert script.calls == 3
    assert agent.health().total_rejected == 1


async def test_per_key_limits_and_token_costs() -> None:
    clock = FakeClock()
    agent = with_resilience(
        Script(),
        rate_limit=RateLimitConfig(
            max_rpm=100,
            max_tpm=10,
            key=lambda question, **kw: kw["user_id"],
            tokens=lambda question, **kw: len(question),
        ),
        **quiet(clock=clock),
    )
    assert await agent.run("12345678", user_id="ann") == "answer:12345678"
    with pytest.raises(RateLimitError, match="'ann'"):
        await agent.run("123", user_id="ann")  # 8 + 3 tokens > 10
    assert await agent.run("123", user_id="bob") == "answer:123"


async def test_bulkhead_refusal_gives_back_the_breaker_permit() -> None:
    clock = FakeClock()
    gate = asyncio.Event()

    async def blocked(question: str) -> str:
        await gate.wait()
        return "done"

    agent = with_resilience(
        blocked,
        bulkhead=BulkheadConfig(max_concurrent=1, max_queued=0),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1),
        **quiet(clock=clock),
    )
    first = asyncio.create_task(agent.run("a"))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError):
        await agent.run("b")
    gate.set()
    assert await first == "done"
    assert agent.circuit_breaker is not None
    metrics = agent.circuit_breaker.metrics()
    assert (metrics.state, metrics.failures) == (CircuitState.CLOSED, 0)


async def test_fallback_answers_refusals_and_exhausted_retries() -> None:
    clock = FakeClock(auto_advance=True)
    script = Script(failures=100)

    def cache(question: str) -> str:
        return f"cached:{question}"

    agent = with_resilience(
        script,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=3),
        retry=RetryConfig(max_retries=2, backoff=0),
        fallback=[cache],
        **quiet(clock=clock),
    )
    first = await agent.run_detailed("q1")  # three failed attempts open the breaker
    assert (first.value, first.served_by, first.degraded) == ("cached:q1", "cache", True)
    assert first.skipped[0].name == "scripted"
    second = await agent.run_detailed("q2")
    assert isinstance(second.skipped[0].error, CircuitOpenError)
    assert script.calls == 3
    health = agent.health()
    assert (health.total_runs, health.fallback_runs, health.total_failures) == (2, 2, 0)


async def test_fallback_instance_with_static_answer() -> None:
    agent = with_resilience(
        Script(failures=100),
        retry=False,
        fallback=Fallback(static="try later"),
        **quiet(clock=FakeClock()),
    )
    assert await agent.run("q") == "try later"


async def test_shared_instances_are_shared() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2), name="gpt", clock=clock)
    limiter = RateLimiter(RateLimitConfig(max_rpm=100), clock=clock)
    retry = Retry(RetryConfig(max_retries=0), clock=clock)
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=5), clock=clock)
    options = quiet(
        circuit_breaker=breaker, rate_limit=limiter, retry=retry, bulkhead=bulkhead, clock=clock
    )
    one = with_resilience(Script(failures=1), **options)
    two = with_resilience(Script(failures=1), **options)
    assert one.circuit_breaker is two.circuit_breaker is breaker
    for agent in (one, two):
        with pytest.raises(Unavailable):
            await agent.run("q")
    assert breaker.state is CircuitState.OPEN  # one failure from each agent


# -- cancellation, health, shutdown --------------------------------------------------------


async def test_cancelled_probe_frees_the_half_open_slot() -> None:
    clock = FakeClock()
    script = Script(failures=1)
    agent = with_resilience(
        script,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, reset_timeout=5),
        retry=False,
        **quiet(clock=clock),
    )
    with pytest.raises(Unavailable):
        await agent.run("q")
    clock.advance(5)
    probe = asyncio.create_task(agent.run("probe", hang=True))
    await asyncio.sleep(0)
    assert script.hanging == 1
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await agent.run("next") == "answer:next"


async def test_health_report_counts_runs(clock: FakeClock) -> None:
    agent = with_resilience(
        Script(failures=1),
        retry=False,
        health_check=HealthConfig(min_runs=1, recent_runs=2),
        **quiet(clock=clock),
    )
    with pytest.raises(Unavailable):
        await agent.run("q")
    health = agent.health()
    assert (health.total_runs, health.total_failures, health.status) == (1, 1, "degraded")
    assert health.last_error == "Unavailable: 503"
    await agent.run("q")
    await agent.run("q")
    assert agent.health().status == "healthy"


async def test_health_can_be_switched_off() -> None:
    agent = with_resilience(Script(), health_check=False, **quiet())
    assert await agent.run("q") == "answer:q"
    with pytest.raises(ConfigurationError, match="health checks are off"):
        agent.health()


async def test_shutdown_drains_and_refuses(clock: FakeClock) -> None:
    gate = asyncio.Event()

    async def waits(question: str) -> str:
        await gate.wait()
        return "finished"

    agent = with_resilience(waits, **quiet(clock=clock))
    running = asyncio.create_task(agent.run("q"))
    await asyncio.sleep(0)
    drain = asyncio.create_task(agent.shutdown())
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDownError):
        await agent.run("late")
    assert agent.health().status == "unhealthy"
    gate.set()
    report = await drain
    assert await running == "finished"
    assert (report.completed, report.cancelled) == (1, 0)


# -- @resilient ----------------------------------------------------------------------------


async def test_decorator_keeps_async_functions_async() -> None:
    clock = FakeClock(auto_advance=True)
    attempts = 0

    @resilient(retry=RetryConfig(backoff=0), **quiet(clock=clock))
    async def answer(question: str, *, style: str = "plain") -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionResetError
        return f"{style}:{question}"

    assert asyncio.iscoroutinefunction(answer)
    assert answer.__name__ == "answer"
    assert await answer("q", style="bold") == "bold:q"
    assert answer.resilience.health().total_runs == 1


def test_decorator_keeps_sync_functions_sync() -> None:
    @resilient(rate_limit=RateLimitConfig(max_rpm=1), **quiet(clock=FakeClock()))
    def double(x: int) -> int:
        return x * 2

    assert not asyncio.iscoroutinefunction(double)
    assert double(21) == 42
    with pytest.raises(RateLimitError):
        double(1)


def test_sync_pipeline_retries_and_opens_the_breaker() -> None:
    clock = FakeClock(auto_advance=True)
    calls = 0

    @resilient(
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, call_timeout=None),
        retry=RetryConfig(max_retries=5, backoff=0.1, jitter="none"),
        **quiet(clock=clock),
    )
    def always_down() -> None:
        nonlocal calls
        calls += 1
        raise Unavailable("down")

    with pytest.raises(Unavailable, match="down"):
        always_down()
    assert calls == 2
    assert clock.sleeps == [0.1, 0.2]
    with pytest.raises(CircuitOpenError):
        always_down()
    assert calls == 2


def test_sync_pipeline_with_bulkhead_and_fallback() -> None:
    @resilient(
        bulkhead=True,
        total_timeout=30,
        fallback=[lambda x: -1],
        retry=False,
        **quiet(clock=FakeClock()),
    )
    def inverse(x: float) -> float:
        return 1 / x

    assert inverse(4) == 0.25
    with pytest.raises(ZeroDivisionError):  # a programming error is not fallen back on
        inverse(0)


def test_decorator_validates_options_at_decoration_time() -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        resilient(colour="red")  # type: ignore[call-arg]


# -- review regressions --------------------------------------------------------------------


def test_run_sync_without_attempt_timeout_keeps_the_callee_in_this_thread() -> None:
    agent = with_resilience(
        SyncAgent(), circuit_breaker=CircuitBreakerConfig(call_timeout=None), **quiet()
    )
    agent.run_sync("q")
    assert isinstance(agent.wrapped, SyncAgent)
    assert agent.wrapped.threads == [threading.get_ident()]


def test_run_sync_with_attempt_timeout_uses_a_worker_of_its_own() -> None:
    names: list[str] = []

    def where(question: str) -> str:
        names.append(threading.current_thread().name)
        return question

    agent = with_resilience(where, name="lookup", **quiet())
    assert agent.run_sync("q") == "q"
    assert names == ["bastion-lookup"]


async def test_fallback_serving_still_shows_the_primary_as_degraded() -> None:
    agent = with_resilience(
        Script(failures=100),
        retry=False,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1000),
        fallback=[lambda question: "backup"],
        **quiet(),
    )
    for _ in range(10):
        assert await agent.run("q") == "backup"
    health = agent.health()
    assert health.status == "degraded"
    assert (health.total_runs, health.total_failures, health.fallback_runs) == (10, 0, 10)
    assert health.recent_failure_rate == 1.0
    assert health.last_error == "Unavailable: 503"


async def test_rate_limit_refusals_are_not_served_by_the_fallback() -> None:
    agent = with_resilience(
        Script(), rate_limit=RateLimitConfig(max_rpm=1), fallback=[lambda q: "backup"], **quiet()
    )
    assert await agent.run("a") == "answer:a"
    with pytest.raises(RateLimitError):
        await agent.run("b")


async def test_input_too_large_for_the_token_limit_is_a_clear_client_error() -> None:
    script = Script()
    agent = with_resilience(
        script,
        rate_limit=RateLimitConfig(max_rpm=100, max_tpm=100),
        fallback=[lambda q: "backup"],
        **quiet(),
    )
    with pytest.raises(RequestTooLargeError) as info:
        await agent.run("x" * 4000)  # about 1000 tokens against a 100-token limit
    assert info.value.http_status == 413
    assert script.calls == 0
    assert agent.health().total_rejected == 1


def test_a_sync_callee_with_async_fallbacks_is_refused_before_an_outage() -> None:
    async def backup(question: str) -> str:
        return "backup"

    with pytest.raises(ConfigurationError, match="async"):

        @resilient(fallback=[backup], **quiet())
        def primary(question: str) -> str:
            return question

    agent = with_resilience(SyncAgent(), fallback=[backup], **quiet())
    with pytest.raises(ConfigurationError, match="async"):
        agent.run_sync("q")  # at once, not only when the primary fails


async def test_key_and_tokens_see_the_callables_own_arguments() -> None:
    seen: list[tuple[Any, ...]] = []

    def key(*args: Any, **kwargs: Any) -> str:
        seen.append(args)
        return "k"

    class Bot:
        @resilient(rate_limit=RateLimitConfig(max_rpm=10, key=key), **quiet())
        async def answer(self, question: str) -> str:
            return question

    bot = Bot()
    assert await bot.answer("hi") == "hi"
    assert seen == [(bot, "hi")]


def test_classes_are_refused_with_a_hint() -> None:
    with pytest.raises(
        ConfigurationError, match=r"pass an instance, e\.g\. with_resilience\(Script"
    ):
        with_resilience(Script)


def test_shutdown_timeout_needs_a_bound() -> None:
    with pytest.raises(ConfigurationError, match="shutdown_timeout"):
        with_resilience(Script(), shutdown_timeout=None)  # type: ignore[typeddict-item]
