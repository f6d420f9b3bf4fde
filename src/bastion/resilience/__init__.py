"""Resilience primitives: retry, circuit breaker, timeout, bulkhead, rate limiter, fallback."""
