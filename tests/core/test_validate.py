"""Option checks: one message shape everywhere, and the value back in its canonical type."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bastion import (
    BulkheadConfig,
    CircuitBreakerConfig,
    ConfigurationError,
    HealthConfig,
    RateLimitConfig,
    RateLimiter,
    RetryBudget,
    RetryConfig,
)
from bastion._core.validate import (
    at_least,
    awaitable_returned,
    callable_or_none,
    fraction,
    instance_of,
    non_negative_number,
    one_of,
    optional_fraction,
    optional_positive_number,
    optional_whole_number,
    positive_number,
    whole_number,
)


def message(check: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigurationError) as info:
        check(*args, **kwargs)
    return str(info.value)


def test_every_check_says_option_what_and_got() -> None:
    assert message(positive_number, 0, "A.b", unit="seconds") == (
        "A.b must be a finite number of seconds > 0; got 0"
    )
    assert message(optional_positive_number, -1, "A.b", none="for no limit") == (
        "A.b must be a finite number > 0, or None for no limit; got -1"
    )
    assert message(non_negative_number, math.nan, "A.b", finite=False, hint="inf: no cap") == (
        "A.b must be a number >= 0 (inf: no cap); got nan"
    )
    assert message(at_least, 0.5, "A.b", 1) == "A.b must be a finite number >= 1; got 0.5"
    assert (
        message(whole_number, 2.0, "A.b", minimum=0) == "A.b must be a whole number >= 0; got 2.0"
    )
    assert message(optional_whole_number, 0, "A.b", none="to turn it off") == (
        "A.b must be a whole number >= 1, or None to turn it off; got 0"
    )
    assert message(fraction, 0, "A.b") == "A.b must be a fraction in (0, 1]; got 0"
    assert message(optional_fraction, 1.5, "A.b", allow_zero=True) == (
        "A.b must be a fraction in [0, 1], or None; got 1.5"
    )
    assert message(callable_or_none, "x", "A.b") == "A.b must be a callable, or None; got 'x'"
    assert message(one_of, "c", "A.b", ("a", "b")) == "A.b must be one of 'a' or 'b'; got 'c'"


def test_checks_return_the_value_in_its_canonical_type() -> None:
    assert positive_number(2, "A.b") == 2.0
    assert isinstance(positive_number(2, "A.b"), float)
    assert optional_positive_number(None, "A.b") is None
    assert non_negative_number(math.inf, "A.b", finite=False) == math.inf
    assert whole_number(0, "A.b", minimum=0) == 0
    assert fraction(0, "A.b", allow_zero=True) == 0.0
    assert optional_fraction(None, "A.b") is None
    assert optional_whole_number(None, "A.b") is None


@pytest.mark.parametrize("value", [True, False, "1", None, math.nan, math.inf, -math.inf])
def test_booleans_strings_and_non_finite_values_are_not_numbers(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^A\.b must be "):
        positive_number(value, "A.b")


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: RetryConfig(max_retries=-1), "RetryConfig.max_retries"),
        (lambda: RetryBudget(window=0), "RetryBudget.window"),
        (lambda: CircuitBreakerConfig(reset_timeout=0), "CircuitBreakerConfig.reset_timeout"),
        (lambda: BulkheadConfig(max_queued=-1), "BulkheadConfig.max_queued"),
        (lambda: RateLimitConfig(window=-1), "RateLimitConfig.window"),
        (lambda: HealthConfig(min_runs=0), "HealthConfig.min_runs"),
        (lambda: RateLimiter(RetryConfig()), "RateLimiter.config"),  # type: ignore[arg-type]
    ],
)
def test_every_config_speaks_the_same_format(build: Any, option: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{option} must be .+; got .+$"):
        build()


def test_instance_of_defaults_and_refuses_other_types() -> None:
    assert instance_of(None, BulkheadConfig, "X.config") == BulkheadConfig()
    config = BulkheadConfig(max_concurrent=3)
    assert instance_of(config, BulkheadConfig, "X.config") is config
    assert message(instance_of, 3, BulkheadConfig, "X.config") == (
        "X.config must be a BulkheadConfig (e.g. BulkheadConfig()) or None for the defaults; got 3"
    )


def test_an_awaitable_handed_to_a_sync_shell_is_closed_and_explained() -> None:
    async def fetch() -> str:
        return "never awaited"

    coroutine = fetch()
    error = awaitable_returned(coroutine, "X.call_sync", instead="await x.call(...)")
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning follows
    assert str(error) == (
        "the function given to X.call_sync returned an awaitable (coroutine), which a sync call "
        "cannot wait for; use `await x.call(...)` for async callables"
    )
