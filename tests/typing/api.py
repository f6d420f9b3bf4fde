"""Typical calls of the public API, checked by mypy --strict and never executed.

If a change makes a normal use of Bastion a type error, this file fails CI.
"""

from __future__ import annotations

from typing import Any, assert_type

from bastion import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    DegradedStore,
    DrainReport,
    Fallback,
    FallbackResult,
    HealthConfig,
    HealthReport,
    RateLimitConfig,
    RateLimitDecision,
    RateLimiter,
    ResilientAgent,
    Retry,
    RetryConfig,
    StoreCheck,
    StoreHealth,
    Timeout,
    check_stores,
    resilient,
    retry,
    with_resilience,
)
from bastion.agents import Agent, RunResult
from bastion.models import ScriptedModel
from bastion.stores import Approval, ApprovalPage, Approvals, Checkpoints, MemoryStore, open_store
from bastion.testing import FakeClock


class AsyncAgent:
    async def run(self, question: str, *, user_id: str = "") -> str:
        return question


class SyncAgent:
    def run(self, question: str) -> int:
        return len(question)


async def async_fn(question: str) -> bytes:
    return question.encode()


def sync_fn(question: str) -> float:
    return 1.0


async def agents() -> None:
    a = with_resilience(AsyncAgent())
    assert_type(a, ResilientAgent[str])
    assert_type(await a.run("q", user_id="u"), str)
    assert_type(await a.run_detailed("q"), FallbackResult[str])
    b = with_resilience(SyncAgent(), retry=False, circuit_breaker=CircuitBreakerConfig())
    assert_type(b.run_sync("q"), int)
    assert_type(await with_resilience(async_fn, total_timeout=10).run("q"), bytes)
    assert_type(await with_resilience(sync_fn, name="f").run("q"), float)
    assert_type(a.health(), HealthReport)
    assert_type(await a.shutdown(5), DrainReport)
    with_resilience(
        AsyncAgent(),
        rate_limit=RateLimitConfig(max_rpm=10, key=lambda q, **kw: str(kw["user_id"])),
        retry=RetryConfig(max_retries=3),
        fallback=[async_fn, SyncAgent()],
        clock=FakeClock(),
    )


@resilient(retry=RetryConfig(max_retries=1))
async def decorated_async(x: int) -> str:
    return str(x)


@resilient(rate_limit=False)
def decorated_sync(x: int) -> str:
    return str(x)


async def decorators() -> None:
    assert_type(await decorated_async(1), str)
    assert_type(decorated_sync(2), str)
    assert_type(decorated_sync.resilience, ResilientAgent[Any])


@retry(max_retries=2)
async def retried(x: int) -> int:
    return x


@Timeout(2.0)
def timed(x: int) -> int:
    return x


breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=3), name="gpt")


@breaker
async def guarded(x: int) -> int:
    return x


async def primitives() -> None:
    assert_type(await retried(1), int)
    assert_type(timed(1), int)
    assert_type(await guarded(1), int)
    assert_type(await Retry().call(retried, 1), int)
    assert_type(RateLimiter().try_acquire("k"), RateLimitDecision)
    assert_type(CircuitBreakerRegistry().get("model"), CircuitBreaker)
    assert_type(await Fallback([async_fn]).call("q"), FallbackResult[Any])


async def resumable_agents() -> None:
    checkpoints = Checkpoints(open_store("sqlite:///runs.db"), ttl=3600.0)
    agent = Agent(name="a", model=ScriptedModel(["hi"]), checkpoints=checkpoints)
    assert_type(await agent.run("q", run_id="job-42"), RunResult)
    assert_type(agent.checkpoints, Checkpoints | None)


async def store_health() -> None:
    store = open_store("redis://localhost:6379/0")
    checks = await check_stores(store, open_store("memory://"), timeout=0.5)
    assert_type(checks, tuple[StoreCheck, ...])
    assert_type(checks[0].ok, bool)
    assert_type(checks[0].to_dict(), dict[str, Any])
    watch = StoreHealth(sources=["api"], degraded_for=10.0, clock=FakeClock())
    assert_type(watch.degraded(), tuple[DegradedStore, ...])
    watch.close()
    report = with_resilience(
        AsyncAgent(),
        rate_limit=RateLimiter(RateLimitConfig(on_store_failure="closed"), backend=store),
        health_check=HealthConfig(store_degraded_for=15.0),
    ).health()
    assert_type(report.degraded_stores, tuple[DegradedStore, ...])


async def approvals() -> None:
    approvals = Approvals(MemoryStore(), ttl=600.0)
    asked = await approvals.create(
        run_id="r", agent_name="ops", tool_name="delete_repo", tool_arguments={"repo": "x"}
    )
    assert_type(asked, Approval)
    assert_type(await approvals.list(status="pending"), ApprovalPage)
    decided = await approvals.wait(asked.approval_id, 30.0)
    allowed: bool = decided.permits(
        agent_name="ops", run_id="r", tool_name="delete_repo", tool_arguments={"repo": "x"}
    )
    assert_type(allowed, bool)
    await approvals.decide(asked.approval_id, approved=False, by="op", reason="no")
