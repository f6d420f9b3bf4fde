"""Per-call overhead of the ``with_resilience`` stack, against the bare call and a peer stack.

What it measures: the time one *successful* call spends in the resilience
machinery. The callee is ``async def call(x): return x`` -- it never awaits,
so everything above the bare row is the cost of the wrappers, not of I/O.
Every variant runs on one event loop in one process, in the same run, so the
rows are comparable: the same interpreter, the same CPU frequency, the same
heap.

How: after a warm-up, each round times ``--calls`` sequential awaits of every
variant, with the variants in a different (seeded) order each round, and the
table reports the median and the minimum over ``--rounds`` rounds of the mean
time per call. ``overhead`` is the variant's median minus the bare call's
median: the microseconds the wrapper adds. Every 256 calls the loop yields
once (``asyncio.sleep(0)``), in every variant alike, so the event loop can
drop the cancelled timers of the timeout layers as it would between real
calls instead of letting them pile up in its heap.

The rows:

- ``bare``: ``await call(i)``; the floor the others are measured against.
- ``bastion default``: ``with_resilience(call)`` with its default parts
  (circuit breaker with the 60 s per-attempt timeout, retry, rate limit,
  health tracking) and a limit too large ever to refuse; SIGTERM handling off.
- ``bastion full``: the default plus a bulkhead, a total timeout and a
  fallback list -- every part switched on.
- ``bastion ...``: the default with one thing changed, and the pipeline with
  one part alone (``floor`` has every part off), so each layer's share is
  visible as its row minus ``floor``.
- ``peer stack``: the same composition (limiter -> retry -> breaker ->
  per-attempt timeout -> call) from aiolimiter + tenacity + purgatory, written
  the way each library documents; a second peer stack swaps purgatory for
  aiobreaker. ``peer ...`` rows time one peer part alone.

How to read it: trust the median; the minimum shows the noise. The goals are
that the full stack adds < 20 us per call, and that its overhead is at most
half the peer stack's (the ``ratio`` column is Bastion overhead / overhead of
the purgatory peer stack). The two ``goal`` lines judge the full stack, against
the worse of the two peer stacks; the indented lines under them judge the
default and the full stack against each peer stack. Absolute numbers move with
the machine and the Python version; the ratios move much less.

Run: ``.venv/bin/python bench/overhead.py [--calls N] [--rounds R] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import tenacity
from aiobreaker import CircuitBreaker as AioBreaker  # type: ignore[import-untyped]
from aiolimiter import AsyncLimiter
from purgatory import AsyncCircuitBreakerFactory

from bastion import (
    BulkheadConfig,
    CircuitBreakerConfig,
    RateLimitConfig,
    resilient,
    with_resilience,
)

Call = Callable[[int], Awaitable[object]]

GOAL_ADDED_US = 20.0
"""The full stack must add less than this per successful call."""
GOAL_PEER_RATIO = 0.5
"""Bastion's overhead must be at most this fraction of the peer stack's."""
YIELD_EVERY = 256
"""Yield to the event loop once per this many calls (a power of two: the check is a mask)."""

HUGE_RATE = 10**12
"""A request limit no benchmark can reach, so the limiters admit every call without waiting."""
LIMIT_WINDOW = 1.0
"""Bastion's limiter window in seconds: short, so the log reaches its steady state (each call
admits one entry and expires about one) within the run, as it does in production."""
TRANSIENT = (ConnectionError, TimeoutError, OSError)
"""What the peer retry retries: the transient errors, as Bastion's default does."""


async def call(x: int) -> int:
    """The callee: succeeds at once and never suspends."""
    return x


async def backup(x: int) -> int:
    """The fallback alternative of the full stack (never reached: ``call`` succeeds)."""
    return x


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    fn: Call


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    label: str
    median_us: float
    min_us: float
    overhead_us: float
    ratio_to_peer: float | None


# -- the variants ------------------------------------------------------------------------------


def _limit() -> RateLimitConfig:
    return RateLimitConfig(max_rpm=HUGE_RATE, window=LIMIT_WINDOW)


def bastion_variants() -> list[Variant]:
    """The Bastion rows: the whole stack in several shapes, then each part alone."""
    off: dict[str, Any] = {
        "circuit_breaker": False,
        "rate_limit": False,
        "retry": False,
        "health_check": False,
        "graceful_shutdown": False,
    }
    default = with_resilience(call, graceful_shutdown=False, rate_limit=_limit())
    full = with_resilience(
        call,
        graceful_shutdown=False,
        rate_limit=_limit(),
        bulkhead=BulkheadConfig(max_concurrent=100),
        total_timeout=120,
        fallback=[backup],
    )
    no_health = with_resilience(
        call, graceful_shutdown=False, rate_limit=_limit(), health_check=False
    )
    decorated = resilient(graceful_shutdown=False, rate_limit=_limit())(call)
    floor = with_resilience(call, **off)
    retry_only = with_resilience(call, **{**off, "retry": True})
    breaker_only = with_resilience(
        call, **{**off, "circuit_breaker": CircuitBreakerConfig(call_timeout=None)}
    )
    breaker_timeout = with_resilience(call, **{**off, "circuit_breaker": True})
    limiter_only = with_resilience(call, **{**off, "rate_limit": _limit()})
    timeout_only = with_resilience(call, **{**off, "total_timeout": 60})
    bulkhead_only = with_resilience(call, **{**off, "bulkhead": BulkheadConfig(max_concurrent=100)})
    fallback_only = with_resilience(call, **{**off, "fallback": [backup]})
    health_only = with_resilience(call, **{**off, "health_check": True})
    return [
        Variant("bastion_default", "bastion default (with_resilience)", default.run),
        Variant("bastion_full", "bastion full (+bulkhead, total timeout, fallback)", full.run),
        Variant("bastion_no_health", "bastion default, health_check=False", no_health.run),
        Variant("bastion_decorator", "bastion default as @resilient", decorated),
        Variant("bastion_floor", "bastion floor (every part off)", floor.run),
        Variant("bastion_retry", "bastion retry only", retry_only.run),
        Variant("bastion_breaker", "bastion breaker only (no timeout)", breaker_only.run),
        Variant("bastion_breaker_timeout", "bastion breaker + 60 s timeout", breaker_timeout.run),
        Variant("bastion_limiter", "bastion rate limit only", limiter_only.run),
        Variant("bastion_timeout", "bastion total timeout only", timeout_only.run),
        Variant("bastion_bulkhead", "bastion bulkhead only", bulkhead_only.run),
        Variant("bastion_fallback", "bastion fallback only", fallback_only.run),
        Variant("bastion_health", "bastion health tracking only", health_only.run),
    ]


def _peer_retry() -> tenacity.AsyncRetrying:
    """tenacity's equivalent of Bastion's default retry: 3 attempts, full-jitter backoff."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=5),
        retry=tenacity.retry_if_exception_type(TRANSIENT),
        reraise=True,
    )


def _peer_stack(breaker: Callable[[Call], Call], limiter: AsyncLimiter) -> Call:
    """limiter -> retry -> breaker -> per-attempt timeout -> call, as Bastion composes them."""

    @breaker
    async def attempt(x: int) -> object:
        async with asyncio.timeout(60):
            return await call(x)

    retried = _peer_retry().wraps(attempt)

    async def peer(x: int) -> object:
        async with limiter:
            return await retried(x)

    return peer


def peer_variants() -> list[Variant]:
    """The peer rows: two whole stacks, then each peer part alone around the callee."""
    purgatory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    purgatory_breaker: Callable[[Call], Call] = purgatory("bench")
    aiobreaker = AioBreaker(fail_max=5, timeout_duration=timedelta(seconds=30))
    aiobreaker_breaker: Callable[[Call], Call] = aiobreaker

    async def timeout_only(x: int) -> object:
        async with asyncio.timeout(60):
            return await call(x)

    limiter_alone = AsyncLimiter(HUGE_RATE, 60)

    async def limiter_only(x: int) -> object:
        async with limiter_alone:
            return await call(x)

    return [
        Variant(
            "peer_purgatory",
            "peer stack (aiolimiter+tenacity+purgatory)",
            _peer_stack(purgatory_breaker, AsyncLimiter(HUGE_RATE, 60)),
        ),
        Variant(
            "peer_aiobreaker",
            "peer stack (aiolimiter+tenacity+aiobreaker)",
            _peer_stack(aiobreaker_breaker, AsyncLimiter(HUGE_RATE, 60)),
        ),
        Variant("peer_tenacity", "peer tenacity only", _peer_retry().wraps(call)),
        Variant(
            "peer_purgatory_only",
            "peer purgatory only",
            AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)("bench")(call),
        ),
        Variant(
            "peer_aiobreaker_only",
            "peer aiobreaker only",
            AioBreaker(fail_max=5, timeout_duration=timedelta(seconds=30))(call),
        ),
        Variant("peer_aiolimiter_only", "peer aiolimiter only", limiter_only),
        Variant("peer_timeout_only", "peer asyncio.timeout only", timeout_only),
    ]


# -- timing ------------------------------------------------------------------------------------


async def time_block(fn: Call, calls: int) -> float:
    """Mean microseconds per call over ``calls`` sequential awaits of ``fn``."""
    mask = YIELD_EVERY - 1
    perf = time.perf_counter_ns
    start = perf()
    for i in range(calls):
        await fn(i)
        if not i & mask:
            await asyncio.sleep(0)
    return (perf() - start) / calls / 1000


async def measure(variants: Sequence[Variant], calls: int, rounds: int) -> dict[str, list[float]]:
    """Warm every variant up, then time all of them once per round, shuffled per round."""
    for variant in variants:
        await time_block(variant.fn, max(calls // 5, 1000))
    samples: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(rounds):
        order = list(variants)
        random.Random(r).shuffle(order)
        for variant in order:
            gc.collect()
            samples[variant.key].append(await time_block(variant.fn, calls))
    return samples


def build_rows(variants: Sequence[Variant], samples: dict[str, list[float]]) -> list[Row]:
    bare = statistics.median(samples["bare"])
    peer = statistics.median(samples["peer_purgatory"]) - bare
    rows = []
    for v in variants:
        median = statistics.median(samples[v.key])
        overhead = median - bare
        ratio = overhead / peer if v.key.startswith("bastion") and peer > 0 else None
        rows.append(Row(v.key, v.label, median, min(samples[v.key]), overhead, ratio))
    return rows


# -- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    goal: str
    subject: str
    value: float
    limit: float
    unit: str
    passed: bool


def verdicts(rows: Sequence[Row]) -> list[Verdict]:
    """Both goals, for the default and the full stack, against both peer stacks."""
    by_key = {r.key: r for r in rows}
    out: list[Verdict] = []
    for subject in ("bastion_default", "bastion_full"):
        added = by_key[subject].overhead_us
        out.append(Verdict("added", subject, added, GOAL_ADDED_US, "us", added < GOAL_ADDED_US))
    for subject in ("bastion_default", "bastion_full"):
        for peer in ("peer_purgatory", "peer_aiobreaker"):
            ratio = by_key[subject].overhead_us / by_key[peer].overhead_us
            out.append(
                Verdict(
                    f"ratio vs {peer}",
                    subject,
                    ratio,
                    GOAL_PEER_RATIO,
                    "x",
                    ratio <= GOAL_PEER_RATIO,
                )
            )
    return out


# -- output ------------------------------------------------------------------------------------


def environment(loop_name: str) -> dict[str, str]:
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "event_loop": loop_name,
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def print_table(rows: Sequence[Row], found: Sequence[Verdict], env: dict[str, str]) -> None:
    print(f"Python {env['python']} on {env['platform']} ({env['machine']}, {env['processor']})")
    print(f"event loop: {env['event_loop']}")
    print()
    width = max(len(r.label) for r in rows)
    print(f"{'variant':<{width}}  {'median':>8}  {'min':>8}  {'overhead':>8}  {'ratio':>6}")
    print(f"{'':<{width}}  {'us/call':>8}  {'us/call':>8}  {'us':>8}  {'x peer':>6}")
    for r in rows:
        ratio = f"{r.ratio_to_peer:6.2f}" if r.ratio_to_peer is not None else f"{'':>6}"
        print(
            f"{r.label:<{width}}  {r.median_us:8.2f}  {r.min_us:8.2f}  "
            f"{r.overhead_us:8.2f}  {ratio}"
        )
    print()
    print("ratio = Bastion overhead / overhead of peer stack (aiolimiter+tenacity+purgatory)")
    print()
    print(summary(found))
    print()
    for v in found:
        mark = "PASS" if v.passed else "MISS"
        if v.unit == "us":
            what = f"adds {v.value:.2f} us per call (goal < {v.limit:g} us)"
        else:
            what = f"{v.goal}: {v.value:.2f}x (goal <= {v.limit:g}x)"
        print(f"  {mark}  {v.subject}: {what}")


def summary(found: Sequence[Verdict]) -> str:
    """The two headline lines: each goal judged on the full stack, worst case over the peers."""
    full = [v for v in found if v.subject == "bastion_full"]
    added = next(v for v in full if v.unit == "us")
    worst = max((v for v in full if v.unit == "x"), key=lambda v: v.value)
    return (
        f"{'PASS' if added.passed else 'MISS'}  goal 1: the full stack adds < {added.limit:g} us "
        f"per call: {added.value:.2f} us\n"
        f"{'PASS' if worst.passed else 'MISS'}  goal 2: its overhead is <= {worst.limit:g}x the "
        f"peer stack's: {worst.value:.2f}x (worst of both peer stacks)"
    )


def _rounded(record: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median is reported)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be >= 1")

    variants = [Variant("bare", "bare call", call), *bastion_variants(), *peer_variants()]
    started = time.perf_counter()
    loop_name = ""

    async def run() -> dict[str, list[float]]:
        nonlocal loop_name
        loop_name = type(asyncio.get_running_loop()).__name__
        return await measure(variants, args.calls, args.rounds)

    samples = asyncio.run(run())
    elapsed = time.perf_counter() - started
    rows = build_rows(variants, samples)
    found = verdicts(rows)
    env = environment(loop_name)
    if args.json:
        report = {
            **env,
            "calls": args.calls,
            "rounds": args.rounds,
            "seconds": round(elapsed, 2),
            "rows": [_rounded(asdict(r)) for r in rows],
            "samples_us": {k: [round(x, 4) for x in v] for k, v in samples.items()},
            "goals": [_rounded(asdict(v)) for v in found],
            "passed": all(v.passed for v in found),
        }
        print(json.dumps(report, indent=2))
    else:
        print_table(rows, found, env)
        print(f"\n{args.rounds} rounds x {args.calls} calls per variant, {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
