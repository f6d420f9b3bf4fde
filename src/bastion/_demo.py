"""``bastion demo``: a flaky agent, a full outage, and the resilience stack riding it out.

Runs on the real clock in a few seconds, with no network and nothing to
start: the "provider" is an in-process agent that fails the way providers do
(connection resets, 503s, a slow answer now and then, then a full outage).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from bastion._core.events import CircuitStateChanged, Event, EventBus, FallbackUsed, RetryScheduled
from bastion.resilience._agent import with_resilience
from bastion.resilience._breaker import CircuitBreakerConfig
from bastion.resilience._health import HealthConfig
from bastion.resilience._ratelimit import RateLimitConfig
from bastion.resilience._retry import RetryConfig

__all__ = ["FlakyAgent", "run_demo"]


class ProviderUnavailable(Exception):
    """What a provider's 503 looks like to the resilience stack."""

    status_code = 503


@dataclass
class FlakyAgent:
    """An agent that fails like a real provider: mostly fine, sometimes not, then not at all."""

    name: str = "flaky-agent"
    failure_rate: float = 0.3
    down: bool = False
    calls: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def run(self, question: str) -> str:
        self.calls += 1
        await asyncio.sleep(0.002)
        if self.down:
            raise ProviderUnavailable("503 Service Unavailable")
        roll = self.rng.random()
        if roll < self.failure_rate / 2:
            raise ConnectionResetError("connection reset by peer")
        if roll < self.failure_rate:
            raise ProviderUnavailable("503 Service Unavailable")
        return f"answer to {question!r}"


def cached_answer(question: str) -> str:
    """The backup: an older answer from a cache, better than an error page."""
    return f"(cached) answer to {question!r}"


async def run_demo(console: Console | None = None, *, requests: int = 20) -> dict[str, int]:
    """Drive the scenario and print what happened; returns counts for tests."""
    out = console or Console()
    bus = EventBus()
    counts = {"retries": 0, "fallbacks": 0, "transitions": 0}

    def on_event(event: Event) -> None:
        if isinstance(event, RetryScheduled):
            counts["retries"] += 1
        elif isinstance(event, FallbackUsed):
            counts["fallbacks"] += 1
        elif isinstance(event, CircuitStateChanged):
            counts["transitions"] += 1
            change = f"{event.from_state} -> {event.to_state}"
            out.print(f"  [bold magenta]circuit {change}[/] ({event.reason})")

    bus.subscribe(on_event)
    agent = FlakyAgent()
    resilient = with_resilience(
        agent,
        retry=RetryConfig(max_retries=3, backoff=0.01, max_backoff=0.05),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=3, reset_timeout=0.5, call_timeout=1.0
        ),
        rate_limit=RateLimitConfig(max_rpm=600),
        fallback=[cached_answer],
        health_check=HealthConfig(recent_runs=10, min_runs=5),
        graceful_shutdown=False,
        bus=bus,
    )

    out.rule("1. a flaky provider: 30 % of calls fail")
    for n in range(requests):
        result = await resilient.run_detailed(f"question {n}")
        style = "green" if not result.degraded else "yellow"
        out.print(f"  [{style}]{result.served_by:>13}[/]  {result.value}")
    out.print(f"  retries scheduled so far: {counts['retries']}")

    out.rule("2. the provider goes down")
    agent.down = True
    for n in range(6):
        result = await resilient.run_detailed(f"outage question {n}")
        out.print(f"  [yellow]{result.served_by:>13}[/]  {result.value}")
    out.print(f"  calls that reached the provider in total: {agent.calls}")

    out.rule("3. the provider recovers; the breaker probes and closes")
    agent.down = False
    agent.failure_rate = 0.0
    await asyncio.sleep(0.6)
    served: dict[str, int] = {}
    for n in range(12):
        result = await resilient.run_detailed(f"recovered question {n}")
        served[result.served_by] = served.get(result.served_by, 0) + 1
        if n < 3:
            out.print(f"  [green]{result.served_by:>13}[/]  {result.value}")
    out.print(f"  ... 12 requests served by: {served}")

    health = resilient.health()
    table = Table(title=f"health of {health.name!r}")
    table.add_column("field")
    table.add_column("value")
    for key, value in health.to_dict().items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    out.print(table)
    return counts
