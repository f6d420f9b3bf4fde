"""Retry: what is retried, how long it waits, when it stops, and what it raises then."""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import math
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    Event,
    EventBus,
    RateLimitError,
    Retry,
    RetryBudget,
    RetryBudgetExhausted,
    RetryConfig,
    RetryScheduled,
    retry,
)
from bastion.resilience import RetryState
from bastion.testing import FakeClock

# -- small stand-ins for what SDKs and HTTP clients raise -----------------------------------------


class APIStatusError(Exception):
    """Like an SDK's status error: carries ``status_code`` and maybe ``retry_after``."""

    def __init__(self, status_code: int, *, retry_after: object = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after


class ClientResponseError(Exception):
    """Like an HTTP client's error: carries ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


class Response:
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class HTTPError(Exception):
    """Like an HTTP client's error that holds the response (with its headers)."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.response = Response(status_code, headers or {})


class Flaky:
    """Raises the given errors in order, then returns ``"ok"``; counts calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return "ok"

    async def acall(self) -> str:
        return self()


def collect(bus: EventBus) -> list[Event]:
    seen: list[Event] = []
    bus.subscribe(seen.append)
    return seen


def no_wait(**options: Any) -> RetryConfig:
    return RetryConfig(backoff=0.0, **options)


# -- the happy path and the basic loop ------------------------------------------------------------


def test_defaults() -> None:
    config = RetryConfig()

    assert config.max_retries == 2
    assert (config.backoff, config.multiplier, config.max_backoff) == (0.5, 2.0, 5.0)
    assert config.jitter == "full"
    assert config.deadline is None
    assert config.retry_on is None
    assert config.max_retry_after == 60.0
    assert (config.budget_ratio, config.budget_min_per_second, config.budget_window) == (
        0.2,
        1.0,
        10.0,
    )
    policy = Retry()
    assert policy.name == "retry"
    assert policy.budget is not None
    assert (policy.budget.ratio, policy.budget.min_per_second, policy.budget.window) == (
        0.2,
        1.0,
        10.0,
    )


async def test_success_on_first_attempt_makes_one_call_and_no_noise(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    seen = collect(bus)
    flaky = Flaky()

    result = await Retry(clock=auto_clock, bus=bus).call(flaky.acall)

    assert result == "ok"
    assert flaky.calls == 1
    assert auto_clock.sleeps == []
    assert seen == []


async def test_transient_failures_are_retried_until_success(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    seen = collect(bus)
    flaky = Flaky(ConnectionResetError("reset"), APIStatusError(503))
    policy = Retry(RetryConfig(jitter="none"), name="llm", clock=auto_clock, bus=bus)

    assert await policy.call(flaky.acall) == "ok"

    assert flaky.calls == 3
    assert auto_clock.sleeps == [0.5, 1.0]
    assert seen == [
        RetryScheduled(source="llm", attempt=1, delay=0.5, error_type="ConnectionResetError"),
        RetryScheduled(source="llm", attempt=2, delay=1.0, error_type="APIStatusError"),
    ]


def test_sync_call_retries_with_sleep_sync(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(TimeoutError("slow"), TimeoutError("slow"))
    policy = Retry(RetryConfig(jitter="none", backoff=1.0), clock=auto_clock, bus=bus)

    assert policy.call_sync(flaky) == "ok"

    assert flaky.calls == 3
    assert auto_clock.sleeps == [1.0, 2.0]


async def test_arguments_reach_the_function(auto_clock: FakeClock, bus: EventBus) -> None:
    async def add(a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    policy = Retry(clock=auto_clock, bus=bus)

    assert await policy.call(add, 1, 2, scale=10) == 30
    assert policy.call_sync(lambda x, y: x * y, 6, 7) == 42


# -- giving up: the caller's own exception, with a note -------------------------------------------


async def test_gives_up_after_max_retries_and_reraises_the_last_error(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    errors = [APIStatusError(500), APIStatusError(502), APIStatusError(503)]
    flaky = Flaky(*errors)

    with pytest.raises(APIStatusError) as info:
        await Retry(clock=auto_clock, bus=bus).call(flaky.acall)

    assert info.value is errors[-1]
    assert info.value.__notes__ == ["bastion: gave up after 3 attempts (max_retries=2)"]
    assert flaky.calls == 3
    assert len(auto_clock.sleeps) == 2


def test_sync_gives_up_the_same_way(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(*(ConnectionError("down") for _ in range(5)))

    with pytest.raises(ConnectionError) as info:
        Retry(RetryConfig(max_retries=3), clock=auto_clock, bus=bus).call_sync(flaky)

    assert info.value is flaky.raised[-1]
    assert info.value.__notes__ == ["bastion: gave up after 4 attempts (max_retries=3)"]
    assert flaky.calls == 4


def test_max_retries_zero_makes_one_attempt_and_adds_no_note(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    flaky = Flaky(ConnectionError("down"))

    with pytest.raises(ConnectionError) as info:
        Retry(RetryConfig(max_retries=0), clock=auto_clock, bus=bus).call_sync(flaky)

    assert flaky.calls == 1
    assert not hasattr(info.value, "__notes__")


def test_a_permanent_error_after_retries_is_noted(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(APIStatusError(503), APIStatusError(400))

    with pytest.raises(APIStatusError) as info:
        Retry(clock=auto_clock, bus=bus).call_sync(flaky)

    assert info.value.status_code == 400
    assert info.value.__notes__ == [
        "bastion: gave up after 2 attempts: APIStatusError is not retried"
    ]
    assert flaky.calls == 2


# -- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_are_retried(auto_clock: FakeClock, bus: EventBus, status: int) -> None:
    flaky = Flaky(APIStatusError(status), ClientResponseError(status), HTTPError(status))

    assert Retry(RetryConfig(max_retries=3), clock=auto_clock, bus=bus).call_sync(flaky) == "ok"
    assert flaky.calls == 4


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError("reset by peer"),
        ConnectionRefusedError("refused"),
        TimeoutError("read timed out"),
        CallTimeoutError("llm", timeout=2.0),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_errors_and_timeouts_are_retried(
    auto_clock: FakeClock, bus: EventBus, error: Exception
) -> None:
    flaky = Flaky(error)

    assert Retry(clock=auto_clock, bus=bus).call_sync(flaky) == "ok"
    assert flaky.calls == 2


@pytest.mark.parametrize(
    "error",
    [
        APIStatusError(400),
        APIStatusError(401),
        APIStatusError(403),
        APIStatusError(404),
        APIStatusError(422),
        HTTPError(400),
        ValueError("bad input"),
        TypeError("bad call"),
        KeyError("missing"),
        RuntimeError("unknown"),
        CircuitOpenError("llm", retry_after=5.0),
        BulkheadFullError("llm", max_concurrent=1, max_queued=0, reason="queue full"),
        RateLimitError("k", retry_after=1.0, limit=10, remaining=0, window=1.0),
        ConfigurationError("bad option"),
    ],
    ids=repr,
)
def test_permanent_errors_and_local_rejections_are_raised_at_once(
    auto_clock: FakeClock, bus: EventBus, error: Exception
) -> None:
    seen = collect(bus)
    flaky = Flaky(error)

    with pytest.raises(type(error)) as info:
        Retry(clock=auto_clock, bus=bus).call_sync(flaky)

    assert info.value is error
    assert flaky.calls == 1
    assert auto_clock.sleeps == []
    assert seen == []
    assert not hasattr(error, "__notes__")


def test_retry_on_replaces_the_classification_entirely(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    def only_value_errors(exc: BaseException) -> bool:
        return isinstance(exc, ValueError)

    policy = Retry(RetryConfig(retry_on=only_value_errors), clock=auto_clock, bus=bus)

    retried = Flaky(ValueError("flaky parser"))
    assert policy.call_sync(retried) == "ok"
    assert retried.calls == 2

    not_retried = Flaky(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        policy.call_sync(not_retried)
    assert not_retried.calls == 1


# -- what is never retried: cancellation and process exits ----------------------------------------


async def test_cancelled_error_propagates_at_once(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(asyncio.CancelledError())

    with pytest.raises(asyncio.CancelledError):
        await Retry(RetryConfig(retry_on=lambda _: True), clock=auto_clock, bus=bus).call(
            flaky.acall
        )

    assert flaky.calls == 1
    assert auto_clock.sleeps == []


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)], ids=repr)
def test_keyboard_interrupt_and_system_exit_propagate_at_once(
    auto_clock: FakeClock, bus: EventBus, error: BaseException
) -> None:
    flaky = Flaky(error)

    with pytest.raises(type(error)):
        Retry(RetryConfig(retry_on=lambda _: True), clock=auto_clock, bus=bus).call_sync(flaky)

    assert flaky.calls == 1


@pytest.mark.parametrize(
    "error", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(0), GeneratorExit()]
)
def test_next_delay_refuses_base_exceptions(bus: EventBus, error: BaseException) -> None:
    state = Retry(RetryConfig(retry_on=lambda _: True), bus=bus).begin()

    assert state.next_delay(error) is None
    assert state.attempt == 1


async def test_cancelling_the_caller_during_backoff_stops_retrying(
    clock: FakeClock, bus: EventBus
) -> None:
    flaky = Flaky(ConnectionError("down"))
    task = asyncio.create_task(Retry(clock=clock, bus=bus).call(flaky.acall))
    await clock.wait_for_sleepers(1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    clock.advance(100.0)
    assert flaky.calls == 1


# -- backoff and jitter ---------------------------------------------------------------------------


def delays_for(policy: Retry, count: int) -> list[float]:
    state = policy.begin()
    delays = []
    for _ in range(count):
        delay = state.next_delay(ConnectionError("down"))
        assert delay is not None
        delays.append(delay)
    return delays


def test_backoff_grows_by_multiplier_and_is_capped(bus: EventBus) -> None:
    config = RetryConfig(
        max_retries=6,
        backoff=0.5,
        multiplier=2.0,
        max_backoff=3.0,
        jitter="none",
        budget_ratio=None,
    )

    assert delays_for(Retry(config, bus=bus), 6) == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_multiplier_one_keeps_the_delay_constant(bus: EventBus) -> None:
    config = RetryConfig(max_retries=4, backoff=0.25, multiplier=1.0, jitter="none")

    assert delays_for(Retry(config, bus=bus), 4) == [0.25] * 4


def test_zero_backoff_retries_without_waiting(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(ConnectionError("a"), ConnectionError("b"))

    assert Retry(no_wait(), clock=auto_clock, bus=bus).call_sync(flaky) == "ok"
    assert auto_clock.sleeps == [0.0, 0.0]
    assert auto_clock.monotonic() == 0.0


def test_huge_retry_numbers_stay_at_the_cap(bus: EventBus) -> None:
    config = RetryConfig(max_retries=5_000, jitter="none", budget_ratio=None)

    delays = delays_for(Retry(config, bus=bus), 2_000)

    assert delays[-1] == 5.0
    assert all(0.0 <= d <= 5.0 for d in delays)
    zero = RetryConfig(max_retries=5_000, backoff=0.0, jitter="none", budget_ratio=None)
    assert delays_for(Retry(zero, bus=bus), 2_000)[-1] == 0.0


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    jitter=st.sampled_from(["full", "equal"]),
    backoff=st.floats(min_value=0.0, max_value=10.0),
    multiplier=st.floats(min_value=1.0, max_value=5.0),
    max_backoff=st.floats(min_value=0.0, max_value=30.0),
    retries=st.integers(min_value=1, max_value=12),
)
def test_jittered_delays_stay_within_their_bounds(
    seed: int, jitter: Any, backoff: float, multiplier: float, max_backoff: float, retries: int
) -> None:
    config = RetryConfig(
        max_retries=retries,
        backoff=backoff,
        multiplier=multiplier,
        max_backoff=max_backoff,
        jitter=jitter,
        budget_ratio=None,
    )
    policy = Retry(config, bus=EventBus(), rng=random.Random(seed))

    for n, delay in enumerate(delays_for(policy, retries), start=1):
        base = min(max_backoff, backoff * multiplier ** (n - 1))
        low = 0.0 if jitter == "full" else base / 2
        assert low - 1e-9 <= delay <= base + 1e-9


def test_the_injected_rng_makes_jitter_reproducible(bus: EventBus) -> None:
    config = RetryConfig(max_retries=5, budget_ratio=None)

    first = delays_for(Retry(config, bus=bus, rng=random.Random(7)), 5)
    second = delays_for(Retry(config, bus=bus, rng=random.Random(7)), 5)

    assert first == second
    assert len(set(first)) == 5  # actually random, not a constant


# -- Retry-After ----------------------------------------------------------------------------------


async def test_retry_after_seconds_replaces_the_backoff(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    seen = collect(bus)
    flaky = Flaky(APIStatusError(429, retry_after=7), APIStatusError(429, retry_after="2.5"))

    assert await Retry(clock=auto_clock, bus=bus).call(flaky.acall) == "ok"

    assert auto_clock.sleeps == [7.0, 2.5]
    assert [e.delay for e in seen if isinstance(e, RetryScheduled)] == [7.0, 2.5]


def test_retry_after_header_as_seconds_or_http_date(auto_clock: FakeClock, bus: EventBus) -> None:
    at_30s = email.utils.formatdate(auto_clock.time() + 30, usegmt=True)
    flaky = Flaky(HTTPError(503, {"retry-after": "4"}), HTTPError(429, {"Retry-After": at_30s}))

    assert Retry(clock=auto_clock, bus=bus).call_sync(flaky) == "ok"
    # The date is absolute: after the first 4 s wait, 26 s are left until it.
    assert auto_clock.sleeps == [4.0, 26.0]


def test_retry_after_longer_than_the_maximum_gives_up_at_once(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    flaky = Flaky(APIStatusError(429, retry_after=120))

    with pytest.raises(APIStatusError) as info:
        Retry(clock=auto_clock, bus=bus).call_sync(flaky)

    assert flaky.calls == 1
    assert auto_clock.sleeps == []
    assert info.value.__notes__ == [
        "bastion: gave up after 1 attempt: the callee asked to wait 120s (Retry-After), "
        "longer than max_retry_after=60s"
    ]


def test_retry_after_counts_as_a_retry(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(APIStatusError(429, retry_after=1), APIStatusError(429, retry_after=1))

    with pytest.raises(APIStatusError) as info:
        Retry(RetryConfig(max_retries=1), clock=auto_clock, bus=bus).call_sync(flaky)

    assert flaky.calls == 2
    assert auto_clock.sleeps == [1.0]
    assert info.value.__notes__ == ["bastion: gave up after 2 attempts (max_retries=1)"]


def test_infinite_max_retry_after_always_waits_as_asked(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    flaky = Flaky(APIStatusError(503, retry_after=3600))
    config = RetryConfig(max_retry_after=math.inf)

    assert Retry(config, clock=auto_clock, bus=bus).call_sync(flaky) == "ok"
    assert auto_clock.sleeps == [3600.0]


# -- deadline -------------------------------------------------------------------------------------


async def test_deadline_stops_an_attempt_that_would_start_too_late(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    flaky = Flaky(*(ConnectionError("down") for _ in range(5)))
    config = RetryConfig(max_retries=10, backoff=1.0, jitter="none", deadline=2.5)

    with pytest.raises(ConnectionError) as info:
        await Retry(config, clock=auto_clock, bus=bus).call(flaky.acall)

    # t=0 fails, wait 1 -> t=1 fails, wait 2 would start at t=3 > 2.5.
    assert flaky.calls == 2
    assert auto_clock.sleeps == [1.0]
    assert info.value.__notes__ == [
        "bastion: gave up after 2 attempts: another attempt in 2s would start after the "
        "deadline (deadline=2.5s)"
    ]


def test_deadline_counts_from_begin_and_includes_time_spent_in_attempts(
    clock: FakeClock, bus: EventBus
) -> None:
    config = RetryConfig(backoff=1.0, jitter="none", deadline=4.0)
    policy = Retry(config, clock=clock, bus=bus)
    clock.advance(100.0)
    state = policy.begin()

    clock.advance(3.0)  # a slow first attempt
    assert state.next_delay(ConnectionError("down")) == 1.0  # starts at exactly 4.0: allowed

    clock.advance(1.0)
    error = ConnectionError("down")
    assert state.next_delay(error) is None
    assert "deadline=4s" in error.__notes__[0]


# -- the retry budget inside Retry ----------------------------------------------------------------


def test_a_full_outage_cannot_multiply_load(auto_clock: FakeClock, bus: EventBus) -> None:
    seen = collect(bus)
    attempts = 0

    def down() -> str:
        nonlocal attempts
        attempts += 1
        raise APIStatusError(503)

    policy = Retry(RetryConfig(backoff=0.0), clock=auto_clock, bus=bus)
    for _ in range(1_000):
        with pytest.raises(APIStatusError):
            policy.call_sync(down)

    assert auto_clock.monotonic() == 0.0  # all 1000 calls inside one window
    floor = 1.0 * 10.0
    assert attempts <= 1_000 * 1.2 + floor
    assert attempts >= 1_000 * 1.2  # the budget is spent, not hoarded
    assert sum(isinstance(e, RetryBudgetExhausted) for e in seen) > 1_000 - 210

    unbudgeted = Retry(RetryConfig(backoff=0.0, budget_ratio=None), clock=auto_clock, bus=bus)
    attempts = 0
    for _ in range(1_000):
        with pytest.raises(APIStatusError):
            unbudgeted.call_sync(down)
    assert attempts == 3_000  # what the budget prevents


async def test_a_full_outage_of_concurrent_tasks_cannot_multiply_load(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    attempts = 0

    async def down() -> str:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("down")

    policy = Retry(RetryConfig(backoff=0.0), clock=auto_clock, bus=bus)
    results = await asyncio.gather(*(policy.call(down) for _ in range(500)), return_exceptions=True)

    assert all(isinstance(r, ConnectionError) for r in results)
    assert 500 <= attempts <= 500 * 1.2 + 10


def test_budget_exhaustion_emits_an_event_and_notes_the_error(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    seen = collect(bus)
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=auto_clock)
    flaky = Flaky(ConnectionResetError("reset"))

    with pytest.raises(ConnectionResetError) as info:
        Retry(name="llm", clock=auto_clock, bus=bus, budget=budget).call_sync(flaky)

    assert flaky.calls == 1
    assert seen == [
        RetryBudgetExhausted(source="llm", attempt=1, error_type="ConnectionResetError")
    ]
    assert info.value.__notes__ == [
        "bastion: gave up after 1 attempt: the retry budget is spent (retries may add 0% to "
        "first attempts, plus 0/s); the callee looks down, so Bastion adds no load"
    ]


def test_policies_can_share_one_budget(auto_clock: FakeClock, bus: EventBus) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.2, window=10.0, clock=auto_clock)  # 2 retries
    first = Retry(no_wait(), name="a", clock=auto_clock, bus=bus, budget=budget)
    second = Retry(no_wait(budget_ratio=None), name="b", clock=auto_clock, bus=bus, budget=budget)
    assert first.budget is second.budget is budget

    one = Flaky(ConnectionError("down"), ConnectionError("down"))
    assert first.call_sync(one) == "ok"
    two = Flaky(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        second.call_sync(two)

    assert (one.calls, two.calls) == (3, 1)


def test_budget_ratio_none_turns_the_budget_off(auto_clock: FakeClock, bus: EventBus) -> None:
    policy = Retry(no_wait(budget_ratio=None), clock=auto_clock, bus=bus)

    assert policy.budget is None
    for _ in range(50):
        flaky = Flaky(ConnectionError("a"), ConnectionError("b"))
        assert policy.call_sync(flaky) == "ok"


def test_own_budget_follows_the_config_and_the_clock(clock: FakeClock, bus: EventBus) -> None:
    config = RetryConfig(budget_ratio=0.5, budget_min_per_second=0.0, budget_window=2.0)
    policy = Retry(config, clock=clock, bus=bus)
    assert policy.budget is not None
    for _ in range(4):
        policy.begin()

    assert policy.budget.available == 2.0
    clock.advance(2.0)
    assert policy.budget.available == 0.0


def test_begin_records_one_first_attempt_per_call(clock: FakeClock, bus: EventBus) -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, clock=clock)
    policy = Retry(clock=clock, bus=bus, budget=budget)

    for _ in range(3):
        assert policy.call_sync(lambda: 1) == 1

    assert budget.available == 3.0


# -- the pipeline's loop, driven by hand ----------------------------------------------------------


async def test_the_pipeline_loop_works_on_begin_and_next_delay(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    policy = Retry(RetryConfig(jitter="none"), clock=auto_clock, bus=bus)
    flaky = Flaky(APIStatusError(502))

    async def run() -> str:
        state = policy.begin()
        assert isinstance(state, RetryState)
        assert state.attempt == 1
        assert repr(state) == "<RetryState 'retry' attempt=1>"
        while True:
            try:
                return await flaky.acall()
            except Exception as exc:
                delay = state.next_delay(exc)
                if delay is None:
                    raise
                assert state.attempt == 2
                await auto_clock.sleep(delay)

    assert await run() == "ok"
    assert auto_clock.sleeps == [0.5]


# -- concurrency ----------------------------------------------------------------------------------


async def test_many_tasks_retry_independently(clock: FakeClock, bus: EventBus) -> None:
    failed_once: set[int] = set()

    async def work(i: int) -> int:
        if i not in failed_once:
            failed_once.add(i)
            raise ConnectionError(f"task {i}")
        return i

    config = RetryConfig(backoff=1.0, jitter="none", budget_ratio=None)
    policy = Retry(config, clock=clock, bus=bus)
    tasks = [asyncio.create_task(policy.call(work, i)) for i in range(50)]

    await clock.wait_for_sleepers(50)
    assert not any(t.done() for t in tasks)
    clock.advance(1.0)

    assert await asyncio.gather(*tasks) == list(range(50))


def test_many_threads_share_one_policy(auto_clock: FakeClock, bus: EventBus) -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=1.0, window=10.0, clock=auto_clock)
    policy = Retry(no_wait(), clock=auto_clock, bus=bus, budget=budget)
    lock = threading.Lock()
    failed_once: set[tuple[int, int]] = set()
    results: list[int] = []
    start = threading.Barrier(8)

    def work(key: tuple[int, int]) -> int:
        with lock:
            first = key not in failed_once
            failed_once.add(key)
        if first:
            raise ConnectionResetError(str(key))
        return 1

    def worker(t: int) -> None:
        start.wait()
        total = sum(policy.call_sync(work, (t, i)) for i in range(100))
        with lock:
            results.append(total)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [100] * 8
    # 800 first attempts and 800 retries: the floor of 10 is all that is left.
    assert budget.available == 10.0


# -- decorators -----------------------------------------------------------------------------------


async def test_decorator_keeps_async_functions_async(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(TimeoutError("slow"))
    policy = Retry(clock=auto_clock, bus=bus)

    @policy
    async def fetch(prefix: str) -> str:
        """Fetch it."""
        return prefix + await flaky.acall()

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch it."
    assert await fetch("say ") == "say ok"
    assert flaky.calls == 2


def test_decorator_keeps_sync_functions_sync(auto_clock: FakeClock, bus: EventBus) -> None:
    flaky = Flaky(ConnectionError("down"))

    @Retry(clock=auto_clock, bus=bus)
    def fetch(prefix: str) -> str:
        return prefix + flaky()

    assert not inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert fetch("say ") == "say ok"
    assert flaky.calls == 2


async def test_an_object_with_an_async_call_is_retried_when_awaited(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    class Provider:
        def __init__(self) -> None:
            self.calls = 0

        async def __call__(self, prompt: str) -> str:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("down")
            return prompt.upper()

    provider = Provider()
    complete = Retry(no_wait(), clock=auto_clock, bus=bus)(provider)
    assert inspect.iscoroutinefunction(complete)
    assert await complete("hi") == "HI"
    assert provider.calls == 2


def test_call_sync_refuses_a_function_that_returns_a_coroutine(
    auto_clock: FakeClock, bus: EventBus
) -> None:
    calls: list[int] = []

    async def fetch() -> str:
        calls.append(1)
        return "never awaited"

    policy = Retry(no_wait(retry_on=lambda _exc: True), clock=auto_clock, bus=bus)
    with pytest.raises(ConfigurationError, match=r"returned an awaitable.*await retry\.call"):
        policy.call_sync(fetch)
    assert calls == []  # the coroutine was closed, not run, and not retried either


async def test_retry_function_builds_a_decorator(auto_clock: FakeClock, bus: EventBus) -> None:
    seen = collect(bus)
    flaky = Flaky(*(APIStatusError(500) for _ in range(3)))

    @retry(max_retries=3, backoff=0.1, jitter="none", name="search", clock=auto_clock, bus=bus)
    def search() -> str:
        return flaky()

    @retry(max_retries=1, clock=auto_clock, bus=bus)
    async def lookup() -> str:
        raise APIStatusError(503)

    assert search() == "ok"
    assert auto_clock.sleeps == pytest.approx([0.1, 0.2, 0.4])
    assert {e.source for e in seen} == {"search"}
    with pytest.raises(APIStatusError) as info:
        await lookup()
    assert info.value.__notes__ == ["bastion: gave up after 2 attempts (max_retries=1)"]


def test_retry_function_passes_every_option() -> None:
    def never(exc: BaseException) -> bool:
        return False

    policy = retry(
        max_retries=4,
        backoff=0.2,
        multiplier=3.0,
        max_backoff=9.0,
        jitter="equal",
        deadline=30.0,
        retry_on=never,
        max_retry_after=10.0,
        budget_ratio=None,
        name="x",
    )

    assert isinstance(policy, Retry)
    assert policy.config == RetryConfig(
        max_retries=4,
        backoff=0.2,
        multiplier=3.0,
        max_backoff=9.0,
        jitter="equal",
        deadline=30.0,
        retry_on=never,
        max_retry_after=10.0,
        budget_ratio=None,
    )
    assert policy.budget is None
    assert policy.name == "x"
    assert "name='x'" in repr(policy)


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"backoff": -0.1}, "backoff"),
        ({"backoff": math.nan}, "backoff"),
        ({"backoff": math.inf}, "backoff"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": math.nan}, "multiplier"),
        ({"max_backoff": -1.0}, "max_backoff"),
        ({"max_backoff": math.nan}, "max_backoff"),
        ({"jitter": "fll"}, "jitter"),
        ({"jitter": None}, "jitter"),
        ({"deadline": 0.0}, "deadline"),
        ({"deadline": -3.0}, "deadline"),
        ({"deadline": math.nan}, "deadline"),
        ({"retry_on": "ConnectionError"}, "retry_on"),
        ({"max_retry_after": -1.0}, "max_retry_after"),
        ({"max_retry_after": math.nan}, "max_retry_after"),
        ({"budget_ratio": 1.2}, "budget_ratio"),
        ({"budget_ratio": -0.2}, "budget_ratio"),
        ({"budget_ratio": math.nan}, "budget_ratio"),
        ({"budget_min_per_second": -1.0}, "budget_min_per_second"),
        ({"budget_window": 0.0}, "budget_window"),
        ({"budget_window": math.nan}, "budget_window"),
    ],
)
def test_invalid_options_name_the_option_and_the_fix(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"RetryConfig\.{option} must be ") as info:
        RetryConfig(**options)

    assert repr(next(iter(options.values()))) in str(info.value)


def test_the_retry_function_validates_too() -> None:
    with pytest.raises(ConfigurationError, match=r"RetryConfig\.multiplier must be"):
        retry(multiplier=0.0)


def test_config_must_be_a_retry_config() -> None:
    bad: Callable[..., Retry] = Retry
    with pytest.raises(ConfigurationError, match=r"Retry\.config must be a RetryConfig"):
        bad(3)


def test_config_is_frozen() -> None:
    config = RetryConfig()

    with pytest.raises(AttributeError):
        config.max_retries = 5  # type: ignore[misc]
    assert config.max_retries == 2
