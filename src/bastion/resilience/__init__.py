"""Resilience primitives: retry, circuit breaker, timeout, bulkhead, rate limiter, fallback.

Each works alone (as an object, a decorator, or through ``call``/``call_sync``);
:func:`with_resilience` composes them in the one order documented in the
pipeline module. Health lives here too: an agent's report, and the view of
shared stores (:class:`StoreHealth`, :func:`check_stores`) that reports and
readiness checks read.
"""

from bastion.resilience._agent import (
    ResilienceOptions,
    ResilientAgent,
    ResilientCallable,
    resilient,
    with_resilience,
)
from bastion.resilience._breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitMetrics,
    CircuitState,
    Permit,
    counts_against_callee,
)
from bastion.resilience._bulkhead import Bulkhead, BulkheadConfig
from bastion.resilience._classify import TRANSIENT_STATUSES, is_client_error, is_transient
from bastion.resilience._fallback import Fallback, FallbackResult, SkippedAlternative
from bastion.resilience._health import HealthConfig, HealthReport, HealthStatus
from bastion.resilience._ratelimit import (
    RateLimitConfig,
    RateLimitDecision,
    RateLimiter,
    RedisRateLimiter,
    estimate_tokens,
)
from bastion.resilience._registry import CircuitBreakerRegistry
from bastion.resilience._retry import Retry, RetryConfig, RetryState, retry
from bastion.resilience._retry_budget import RetryBudget
from bastion.resilience._shutdown import DrainReport
from bastion.resilience._store_health import DegradedStore, StoreCheck, StoreHealth, check_stores
from bastion.resilience._timeout import Timeout
from bastion.resilience._window_log import RateLimitBackend, SlidingWindowLog

__all__ = [
    "TRANSIENT_STATUSES",
    "Bulkhead",
    "BulkheadConfig",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerRegistry",
    "CircuitMetrics",
    "CircuitState",
    "DegradedStore",
    "DrainReport",
    "Fallback",
    "FallbackResult",
    "HealthConfig",
    "HealthReport",
    "HealthStatus",
    "Permit",
    "RateLimitBackend",
    "RateLimitConfig",
    "RateLimitDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "ResilienceOptions",
    "ResilientAgent",
    "ResilientCallable",
    "Retry",
    "RetryBudget",
    "RetryConfig",
    "RetryState",
    "SkippedAlternative",
    "SlidingWindowLog",
    "StoreCheck",
    "StoreHealth",
    "Timeout",
    "check_stores",
    "counts_against_callee",
    "estimate_tokens",
    "is_client_error",
    "is_transient",
    "resilient",
    "retry",
    "with_resilience",
]
