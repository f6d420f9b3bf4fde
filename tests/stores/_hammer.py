"""A worker process for the multi-process tests: hammer one limiter and one budget, report.

Run as ``python -m tests.stores._hammer '<json options>'``. It opens the store,
prints ``ready``, waits for ``go`` on stdin (so every worker starts together,
without sleeping), then for ``duration`` seconds runs ``tasks`` tasks asking
a sliding and a fixed limiter for room, while ``reservations`` tasks reserve
against a shared $1 budget and settle. It prints one JSON line: the store
times of every admitted call per algorithm, and what each reservation settled.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from decimal import Decimal
from typing import Any

from bastion import BudgetExceededError
from bastion.stores import BudgetConfig, BudgetEnforcer, WindowSpec, open_store


async def main(options: dict[str, Any]) -> dict[str, Any]:
    store = open_store(
        options["url"],
        schema=options.get("schema"),
        namespace=options["namespace"],
        timeout=10.0,
    ).scoped(options["scope"])
    specs = {
        algorithm: WindowSpec(
            limits=(options["limit"],), window=options["window"], algorithm=algorithm, name="mp"
        )
        for algorithm in ("sliding", "fixed")
    }
    budget = BudgetEnforcer(BudgetConfig(max_usd_per_tenant=Decimal(1)), store=store)
    admitted: dict[str, list[float]] = {"sliding": [], "fixed": []}
    refused = {"sliding": 0, "fixed": 0}
    settled: list[str] = []
    rng = random.Random(options["seed"])
    await store.rate_limit("warm-up", (1.0,), specs["fixed"])  # connect and migrate first
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    deadline = time.monotonic() + options["duration"]

    async def hammer(algorithm: str) -> None:
        while time.monotonic() < deadline:
            verdict = await store.rate_limit("hot", (1.0,), specs[algorithm])
            if verdict.allowed:
                admitted[algorithm].append(verdict.now)
            else:
                refused[algorithm] += 1

    async def spend() -> None:
        ask = Decimal(rng.randint(10, 60)) / 1000
        try:
            held = await budget.reserve(ask, tenant_id="shared")
        except BudgetExceededError:
            return
        actual = ask * Decimal(rng.randint(50, 100)) / 100
        await held.settle(actual)
        settled.append(str(actual))

    await asyncio.gather(
        *(hammer(algorithm) for algorithm in specs for _ in range(options["tasks"])),
        *(spend() for _ in range(options["reservations"])),
    )
    await store.aclose()
    return {"admitted": admitted, "refused": refused, "settled": settled}


if __name__ == "__main__":
    result = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps(result), flush=True)
