"""Bastion: make LLM agents survive production.

The public API lives here and in the subpackages' ``__init__`` modules;
everything in a module whose name starts with an underscore is private and
may change without notice.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from bastion._core.clock import SYSTEM_CLOCK, Clock, SystemClock
from bastion._core.errors import (
    BastionError,
    BudgetExceededError,
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    RateLimitError,
    RejectedError,
    RequestTooLargeError,
    ShuttingDownError,
    StoreUnavailableError,
)
from bastion._core.events import (
    BudgetExceeded,
    CallRejected,
    CallTimedOut,
    CircuitStateChanged,
    Event,
    EventBus,
    FallbackUsed,
    RetryBudgetExhausted,
    RetryScheduled,
    ShutdownStarted,
    default_bus,
)
from bastion.resilience import (
    Bulkhead,
    BulkheadConfig,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    CircuitState,
    DrainReport,
    Fallback,
    FallbackResult,
    HealthConfig,
    HealthReport,
    HealthStatus,
    RateLimitConfig,
    RateLimitDecision,
    RateLimiter,
    ResilienceOptions,
    ResilientAgent,
    Retry,
    RetryBudget,
    RetryConfig,
    SkippedAlternative,
    Timeout,
    counts_against_callee,
    estimate_tokens,
    resilient,
    retry,
    with_resilience,
)

try:
    __version__ = _version("bastion")
except _PackageNotFoundError:  # pragma: no cover - only from a bare source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "SYSTEM_CLOCK",
    "BastionError",
    "BudgetExceeded",
    "BudgetExceededError",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadFullError",
    "CallRejected",
    "CallTimedOut",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerRegistry",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateChanged",
    "Clock",
    "ConfigurationError",
    "DrainReport",
    "Event",
    "EventBus",
    "Fallback",
    "FallbackResult",
    "FallbackUsed",
    "HealthConfig",
    "HealthReport",
    "HealthStatus",
    "RateLimitConfig",
    "RateLimitDecision",
    "RateLimitError",
    "RateLimiter",
    "RejectedError",
    "RequestTooLargeError",
    "ResilienceOptions",
    "ResilientAgent",
    "Retry",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryConfig",
    "RetryScheduled",
    "ShutdownStarted",
    "ShuttingDownError",
    "SkippedAlternative",
    "StoreUnavailableError",
    "SystemClock",
    "Timeout",
    "__version__",
    "counts_against_callee",
    "default_bus",
    "estimate_tokens",
    "resilient",
    "retry",
    "with_resilience",
]
