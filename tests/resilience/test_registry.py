"""One shared breaker per key, so every caller of a model counts against the same circuit."""

from __future__ import annotations

import threading

import pytest

from bastion import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    CircuitOpenError,
    CircuitState,
    CircuitStateChanged,
    ConfigurationError,
    EventBus,
)
from bastion.testing import FakeClock


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold or 1):
        permit = breaker.acquire()
        breaker.record_failure(permit, ConnectionError("down"), 0.1)


def test_same_key_same_breaker_named_after_the_key(clock: FakeClock, bus: EventBus) -> None:
    registry = CircuitBreakerRegistry(
        CircuitBreakerConfig(failure_threshold=2), clock=clock, bus=bus
    )
    breaker = registry.get("openai/gpt-4o")
    assert registry.get("openai/gpt-4o") is breaker
    assert breaker.name == "openai/gpt-4o"
    assert breaker.clock is clock
    assert breaker.config.failure_threshold == 2
    assert registry.get("anthropic") is not breaker


def test_breakers_fail_independently(clock: FakeClock, bus: EventBus) -> None:
    seen: list[CircuitStateChanged] = []
    bus.subscribe(seen.append, CircuitStateChanged)
    registry = CircuitBreakerRegistry(
        CircuitBreakerConfig(failure_threshold=1), clock=clock, bus=bus
    )
    trip(registry.get("a"))
    assert registry.get("a").state is CircuitState.OPEN
    assert registry.get("b").state is CircuitState.CLOSED
    with pytest.raises(CircuitOpenError) as info:
        registry.get("a").acquire()
    assert info.value.name == "a"
    assert [(e.source, e.to_state) for e in seen] == [("a", "open")]


def test_a_key_can_have_its_own_config(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    special = CircuitBreakerConfig(failure_threshold=1, reset_timeout=5)
    assert registry.get("flaky", config=special).config is special
    assert registry.get("flaky").config is special
    assert registry.get("flaky", config=CircuitBreakerConfig(failure_threshold=1, reset_timeout=5))
    assert registry.get("other").config == CircuitBreakerConfig()


def test_a_different_config_for_an_existing_key_is_an_error(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    registry.get("m")
    with pytest.raises(ConfigurationError, match=r"'m' already exists.*remove\('m'\)"):
        registry.get("m", config=CircuitBreakerConfig(failure_threshold=9))


def test_container_protocol(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    first, second = registry.get("x"), registry.get("y")
    assert "x" in registry
    assert "z" not in registry
    assert len(registry) == 2
    assert list(registry) == ["x", "y"]
    assert registry.items() == [("x", first), ("y", second)]
    assert repr(registry) == "CircuitBreakerRegistry(2 breaker(s))"


def test_remove_forgets_a_key(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(CircuitBreakerConfig(failure_threshold=1), clock=clock)
    old = registry.get("m")
    trip(old)
    assert registry.remove("m") is old
    assert registry.remove("m") is None
    assert "m" not in registry
    fresh = registry.get("m", config=CircuitBreakerConfig(failure_threshold=3))
    assert fresh is not old
    assert fresh.state is CircuitState.CLOSED


def test_reset_all_closes_every_breaker(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(CircuitBreakerConfig(failure_threshold=1), clock=clock)
    trip(registry.get("a"))
    registry.get("b").force_open()
    registry.get("c").disable()
    registry.reset_all()
    assert {key: b.state for key, b in registry.items()} == {
        "a": CircuitState.CLOSED,
        "b": CircuitState.CLOSED,
        "c": CircuitState.CLOSED,
    }


def test_iterating_while_others_add_keys_is_safe(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    registry.get("first")
    keys = []
    for key in registry:
        registry.get(f"{key}-child")
        keys.append(key)
    assert keys == ["first"]
    assert len(registry) == 2


def test_threads_racing_for_a_key_share_one_breaker(clock: FakeClock) -> None:
    registry = CircuitBreakerRegistry(clock=clock)
    start = threading.Barrier(16)
    got: list[CircuitBreaker] = []
    guard = threading.Lock()

    def grab() -> None:
        start.wait()
        for i in range(200):
            breaker = registry.get(f"model-{i % 5}")
            if i % 5 == 0:
                with guard:
                    got.append(breaker)

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry) == 5
    assert len({id(b) for b in got}) == 1
    assert got[0] is registry.get("model-0")
