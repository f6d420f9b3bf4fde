"""Rate-limit decisions per second on Redis: Bastion's store against the ``limits`` library.

What it measures: how many rate-limit decisions per second one process, and
four processes side by side, get out of one Redis server -- for Bastion's
``RedisStore`` (one Lua script per decision, exact sliding log or fixed
window) and for ``limits`` (``MovingWindowRateLimiter`` and
``FixedWindowRateLimiter`` on its async Redis storage), with the same limit,
the same window, the same keys and the same Redis, in the same run. And
whether either ever admitted too much.

How: every variant gets a fresh key prefix. Each process runs ``--tasks``
tasks that, for ``--seconds`` seconds, pick one of ``--keys`` keys at random
and ask for one call under ``--limit`` per ``--window`` seconds. Processes
start together (a barrier) and count their decisions and the admissions per
key. With the default window (60 s) longer than a run, a sliding/moving
limiter may admit at most ``limit`` per key over the whole run; a fixed
window as well unless the run crosses a window boundary (then 2x, one window
each side). ``over`` counts keys admitted beyond that: it must be 0.

The default mix (1000 keys x 30 per minute, 32 tasks) sends some keys past
their limit during a run, so both admissions and refusals are timed.
Bastion's refusals also compute the exact ``retry_after``; ``limits``'
``hit`` answers only yes or no.

Where Bastion's lead comes from: the Redis store coalesces the decisions that
pile up during one round trip into the next single script call (each decision
still atomic), so a process pays redis-py's per-command cost once per batch,
not once per decision. ``--unbatched`` adds rows with that switched off
(``RedisStore(batch=False)``, as on Redis Cluster), so the script alone can be
compared too; those rows are shown, not judged.

How to read it: ``decisions/s`` is the sum over processes; ``vs limits`` is
Bastion's rate over the ``limits`` variant of the same algorithm and process
count (the goal is >= 1.5x with zero over-admission). Absolute numbers move
with the machine; compare ratios from one run.

Run: ``.venv/bin/pip install 'limits[async-redis]'`` then
``.venv/bin/python bench/limiter.py [--url redis://127.0.0.1:6379/0] [--seconds 3]
[--processes 1 4] [--implementation redispy|coredis] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

VARIANTS = ("bastion sliding", "limits moving", "bastion fixed", "limits fixed")
UNBATCHED = ("bastion sliding unbatched", "bastion fixed unbatched")
PAIRS = {
    "bastion sliding": "limits moving",
    "bastion fixed": "limits fixed",
    "bastion sliding unbatched": "limits moving",
    "bastion fixed unbatched": "limits fixed",
}


@dataclass
class Row:
    variant: str
    processes: int
    decisions: int
    seconds: float
    admitted: int
    keys_over: int
    crossed_boundary: bool

    @property
    def rate(self) -> float:
        return self.decisions / self.seconds


async def _make_decider(variant: str, options: dict[str, Any], prefix: str) -> Any:
    """An async ``decide(key) -> bool`` for the variant, and a closer."""
    if variant.startswith("bastion"):
        from bastion.stores import RedisStore, WindowSpec

        store = RedisStore(
            options["url"],
            namespace=prefix,
            max_connections=options["tasks"],
            batch=not variant.endswith("unbatched"),
        )
        spec = WindowSpec(
            limits=(options["limit"],),
            window=options["window"],
            algorithm="fixed" if "fixed" in variant else "sliding",
            name="bench",
        )
        cost = (1.0,)

        async def decide(key: str) -> bool:
            return bool((await store.rate_limit(key, cost, spec)).allowed)

        return decide, store.aclose
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    storage = RedisStorage(
        options["url"].replace("redis://", "async+redis://", 1),
        implementation=options["implementation"],
        key_prefix=prefix,
    )
    kind = FixedWindowRateLimiter if "fixed" in variant else MovingWindowRateLimiter
    limiter = kind(storage)
    item = RateLimitItemPerSecond(int(options["limit"]), int(options["window"]))

    async def hit(key: str) -> bool:
        return await limiter.hit(item, key)

    async def close() -> None:
        await storage.reset()

    return hit, close


async def _hammer(
    variant: str, options: dict[str, Any], prefix: str, barrier: Any, seed: int
) -> dict[str, Any]:
    decide, close = await _make_decider(variant, options, prefix)
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(options["keys"])]
    await decide("warm-up")  # connect and load scripts before the clock starts
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    start = time.time()
    deadline = time.monotonic() + options["seconds"]
    decisions = 0
    admitted: Counter[str] = Counter()

    async def task() -> None:
        nonlocal decisions
        while time.monotonic() < deadline:
            key = rng.choice(keys)
            if await decide(key):
                admitted[key] += 1
            decisions += 1

    await asyncio.gather(*(task() for _ in range(options["tasks"])))
    end = time.time()
    if variant.startswith("bastion"):
        await close()
    return {"decisions": decisions, "admitted": dict(admitted), "start": start, "end": end}


def _worker(
    variant: str, options: dict[str, Any], prefix: str, barrier: Any, seed: int, results: Any
) -> None:
    results.put(asyncio.run(_hammer(variant, options, prefix, barrier, seed)))


def run_variant(variant: str, processes: int, options: dict[str, Any]) -> Row:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    workers = [
        context.Process(target=_worker, args=(variant, options, prefix, barrier, n, results))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    outs = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    asyncio.run(_cleanup(options["url"], prefix))
    admitted: Counter[str] = Counter()
    for out in outs:
        admitted.update(out["admitted"])
    start = min(out["start"] for out in outs)
    end = max(out["end"] for out in outs)
    window = options["window"]
    crossed = "fixed" in variant and int(start // window) != int(end // window)
    allowed = options["limit"] * (2 if crossed else 1)
    return Row(
        variant=variant,
        processes=processes,
        decisions=sum(out["decisions"] for out in outs),
        seconds=options["seconds"],
        admitted=sum(admitted.values()),
        keys_over=sum(1 for count in admitted.values() if count > allowed),
        crossed_boundary=crossed,
    )


async def _cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--limit", type=float, default=30)
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--implementation", default="redispy", choices=["redispy", "coredis"])
    parser.add_argument(
        "--unbatched",
        action="store_true",
        help="also time Bastion with batching off (RedisStore(batch=False)): one call per decision",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    options = {
        "url": args.url,
        "seconds": args.seconds,
        "tasks": args.tasks,
        "keys": args.keys,
        "limit": args.limit,
        "window": args.window,
        "implementation": args.implementation,
    }
    rows = [
        run_variant(variant, processes, options)
        for processes in args.processes
        for variant in (*VARIANTS, *(UNBATCHED if args.unbatched else ()))
    ]
    by = {(row.variant, row.processes): row for row in rows}
    verdicts = []
    ratios: dict[tuple[str, int], float] = {}
    for row in rows:
        peer = PAIRS.get(row.variant)
        if peer is not None:
            ratio = row.rate / by[(peer, row.processes)].rate
            ok = ratio >= 1.5 and row.keys_over == 0 and by[(peer, row.processes)].keys_over == 0
            if not row.variant.endswith("unbatched"):
                verdicts.append((row, peer, ratio, ok))
            ratios[(row.variant, row.processes)] = ratio
    if args.json:
        print(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "machine": platform.platform(),
                    "options": options,
                    "rows": [{**asdict(row), "rate": row.rate} for row in rows],
                    "passed": all(ok for *_, ok in verdicts),
                },
                indent=2,
            )
        )
        return
    print(
        f"Python {sys.version.split()[0]} on {platform.platform()}; limits over {args.url} "
        f"with implementation={args.implementation}"
    )
    print(
        f"{args.keys} keys x {args.limit:g} per {args.window:g}s, {args.tasks} tasks/process, "
        f"{args.seconds:g}s per run\n"
    )
    header = f"{'variant':<28}{'procs':>6}{'decisions/s':>14}{'admitted':>10}{'over':>6}"
    print(f"{header}{'vs limits':>11}")
    for row in rows:
        found = ratios.get((row.variant, row.processes))
        shown = f"{found:.2f}x" if found is not None else ""
        print(
            f"{row.variant:<28}{row.processes:>6}{row.rate:>14,.0f}{row.admitted:>10,}"
            f"{row.keys_over:>6}{shown:>11}"
        )
    print()
    for row, peer, ratio, ok in verdicts:
        print(
            f"{'PASS' if ok else 'MISS'}  {row.variant} x{row.processes}: {ratio:.2f}x "
            f"{peer} (goal >= 1.5x), over-admitted keys {row.keys_over}"
        )


if __name__ == "__main__":
    main()
