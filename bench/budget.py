"""Budget reserve + settle pairs per second on SQLite and PostgreSQL (Redis and memory alongside).

What it measures: how many "reserve the worst case, then settle the real
cost" pairs per second ``BudgetEnforcer`` completes against each store, from
one process and from several side by side -- the cost a gateway pays twice
per model call. Every reservation counts against three caps at once (the
user's day, the tenant's day and the global month), like a real request.

How: each process runs ``--tasks`` tasks for ``--seconds`` seconds; each task
picks a user (of ``--users``, spread over ``--tenants`` tenants), reserves a
random amount of $0.001-$0.05 and settles 50-100% of it. Caps are set high
enough that nothing is refused: this is the throughput of the bookkeeping,
not of refusals. Processes start together (a barrier). The PostgreSQL run
uses a schema of its own, dropped afterwards; SQLite a temporary file. After
each run the bench checks that the settled money in the store equals what the
workers settled (nothing lost, nothing counted twice).

How to read it: ``pairs/s`` is the sum over processes; ``p50 ms`` the median
time of one reserve + settle pair. SQLite runs one writer at a time across
every process on the file, so it does not scale with processes; PostgreSQL
row-locks per cap, so contention is on the hot caps (the month cap is shared
by every call). Compare rows from one run only.

Run: ``.venv/bin/python bench/budget.py [--seconds 3] [--processes 1 4]
[--backends sqlite postgresql redis memory] [--postgres-url ...] [--redis-url ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Row:
    backend: str
    processes: int
    pairs: int
    seconds: float
    p50_ms: float
    settled_ok: bool | None
    """Whether the store's month total equals what the workers settled (None: not checkable,
    the memory store dies with its process)."""

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds


def _enforcer(options: dict[str, Any]) -> Any:
    from bastion.stores import BudgetConfig, BudgetEnforcer, open_store

    store = open_store(
        options["url"],
        schema=options.get("schema"),
        namespace=options["namespace"],
        timeout=30.0,
    ).scoped(options["scope"])
    config = BudgetConfig(
        max_usd_per_user=Decimal(10**6),
        max_usd_per_tenant=Decimal(10**7),
        max_usd_per_month=Decimal(10**8),
    )
    return BudgetEnforcer(config, store=store)


async def _hammer(options: dict[str, Any], barrier: Any, seed: int) -> dict[str, Any]:
    budget = _enforcer(options)
    rng = random.Random(seed)
    users = [(f"user-{i}", f"tenant-{i % options['tenants']}") for i in range(options["users"])]
    await (await budget.reserve(Decimal(0), user_id="warm", tenant_id="warm")).release()
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    deadline = time.monotonic() + options["seconds"]
    latencies: list[float] = []
    settled = Decimal(0)

    async def task() -> None:
        nonlocal settled
        while time.monotonic() < deadline:
            user, tenant = rng.choice(users)
            ask = Decimal(rng.randint(1, 50)) / 1000
            started = time.perf_counter()
            held = await budget.reserve(ask, user_id=user, tenant_id=tenant)
            actual = ask * Decimal(rng.randint(50, 100)) / 100
            await held.settle(actual)
            latencies.append(time.perf_counter() - started)
            settled += actual

    await asyncio.gather(*(task() for _ in range(options["tasks"])))
    await budget.store.aclose()
    return {"latencies": latencies, "settled": str(settled)}


def _worker(options: dict[str, Any], barrier: Any, seed: int, results: Any) -> None:
    results.put(asyncio.run(_hammer(options, barrier, seed)))


async def _month_total(options: dict[str, Any]) -> Decimal:
    budget = _enforcer(options)
    try:
        total: Decimal = (await budget.spent())["month"]
        return total
    finally:
        await budget.store.aclose()


def run(backend: str, processes: int, options: dict[str, Any]) -> Row:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    options = {**options, "scope": f"bench-{uuid.uuid4().hex[:8]}"}
    workers = [
        context.Process(target=_worker, args=(options, barrier, n, results))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    outs = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join()
    latencies = [t for out in outs for t in out["latencies"]]
    settled = sum((Decimal(out["settled"]) for out in outs), Decimal(0))
    stored = None if backend == "memory" else asyncio.run(_month_total(options))
    return Row(
        backend=backend,
        processes=processes,
        pairs=len(latencies),
        seconds=options["seconds"],
        p50_ms=statistics.median(latencies) * 1000 if latencies else float("nan"),
        settled_ok=None if stored is None else stored == settled,
    )


async def _postgres(url: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    parts = urlsplit(url)
    conn = await asyncpg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username or "postgres",
        database=parts.path.lstrip("/") or "postgres",
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgresql", "redis", "memory"]
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = {
        "seconds": args.seconds,
        "tasks": args.tasks,
        "users": args.users,
        "tenants": args.tenants,
        "namespace": f"bastion-bench-{uuid.uuid4().hex[:8]}",
    }
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            options = dict(base)
            schema = None
            if backend == "sqlite":
                options["url"] = f"sqlite:///{Path(tmp) / 'budget.db'}"
            elif backend == "postgresql":
                from bastion.stores import upgrade

                schema = f"bastion_bench_{uuid.uuid4().hex[:8]}"
                asyncio.run(_postgres(args.postgres_url, f'CREATE SCHEMA "{schema}"'))
                asyncio.run(upgrade(args.postgres_url, schema=schema))
                options["url"], options["schema"] = args.postgres_url, schema
            elif backend == "redis":
                options["url"] = args.redis_url
            else:
                options["url"] = "memory://"
            try:
                counts = [1] if backend == "memory" else args.processes  # memory is per process
                rows += [run(backend, processes, options) for processes in counts]
            finally:
                if schema is not None:
                    asyncio.run(_postgres(args.postgres_url, f'DROP SCHEMA "{schema}" CASCADE'))
    if args.json:
        payload = {
            "python": sys.version.split()[0],
            "machine": platform.platform(),
            "options": base,
            "rows": [{**asdict(row), "rate": row.rate} for row in rows],
        }
        print(json.dumps(payload, indent=2))
        return
    print(f"Python {sys.version.split()[0]} on {platform.platform()}")
    print(
        f"{args.tasks} tasks/process, {args.users} users in {args.tenants} tenants, "
        f"3 caps per reservation, {args.seconds:g}s per run\n"
    )
    print(f"{'backend':<12}{'procs':>6}{'pairs/s':>10}{'p50 ms':>9}  settled == stored")
    for row in rows:
        print(
            f"{row.backend:<12}{row.processes:>6}{row.rate:>10,.0f}{row.p50_ms:>9.2f}  "
            f"{ {True: 'yes', False: 'NO', None: 'n/a'}[row.settled_ok] }"
        )


if __name__ == "__main__":
    main()
