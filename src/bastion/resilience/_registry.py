"""One circuit breaker per callee, created on first use.

An agent talks to several providers and models, and they fail independently:
when one model's endpoint is down, calls to another must keep flowing. So a
breaker belongs to one key (``"openai/gpt-4o"``, ``"anthropic"``, a tool's
name), and every caller that uses the key must share the *same* breaker, or
each would count only its own failures and none would ever trip. The registry
hands out that shared instance, creating it on first use with a default
config, and lists them for health checks and operator actions.

A key's breaker keeps the config it was created with; asking for the key again
with a different config is an error rather than a silent surprise --
:meth:`CircuitBreakerRegistry.remove` it first to change it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.events import EventBus
from bastion._core.validate import instance_of
from bastion.resilience._breaker import CircuitBreaker, CircuitBreakerConfig

__all__ = ["CircuitBreakerRegistry"]


class CircuitBreakerRegistry:
    """Breakers by key, all on one clock and one event bus; thread-safe.

    >>> breakers = CircuitBreakerRegistry(CircuitBreakerConfig(failure_threshold=3))
    >>> breakers.get("openai/gpt-4o") is breakers.get("openai/gpt-4o")
    True
    """

    __slots__ = ("_breakers", "_bus", "_lock", "clock", "config")

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus | None = None,
    ) -> None:
        self.config = instance_of(config, CircuitBreakerConfig, "CircuitBreakerRegistry.config")
        self.clock = clock
        self._bus = bus
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def __repr__(self) -> str:
        return f"CircuitBreakerRegistry({len(self._breakers)} breaker(s))"

    def get(self, key: str, *, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
        """The breaker for ``key`` (named ``key``), created with ``config`` or the default.

        Raises :class:`ConfigurationError` when ``key`` already has a breaker
        with a config other than the ``config`` given.
        """
        breaker = self._breakers.get(key)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(key)
                if breaker is None:
                    breaker = CircuitBreaker(
                        config if config is not None else self.config,
                        name=key,
                        clock=self.clock,
                        bus=self._bus,
                    )
                    self._breakers[key] = breaker
                    return breaker
        if config is not None and config != breaker.config:
            msg = (
                f"circuit breaker {key!r} already exists with {breaker.config!r}, not the "
                f"config={config!r} asked for; remove({key!r}) it first to change its config, "
                "or call get() without config"
            )
            raise ConfigurationError(msg)
        return breaker

    def remove(self, key: str) -> CircuitBreaker | None:
        """Forget ``key``'s breaker (the next ``get`` makes a fresh one); return it, if any."""
        with self._lock:
            return self._breakers.pop(key, None)

    def reset_all(self) -> None:
        """Close every breaker with a clean window (operator action, and between tests)."""
        for breaker in self._snapshot().values():
            breaker.reset()

    def items(self) -> list[tuple[str, CircuitBreaker]]:
        """Every ``(key, breaker)`` pair at this moment, oldest first."""
        return list(self._snapshot().items())

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._snapshot()))

    def __len__(self) -> int:
        return len(self._breakers)

    def _snapshot(self) -> dict[str, CircuitBreaker]:
        with self._lock:
            return dict(self._breakers)
