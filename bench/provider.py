"""What one model call costs the caller: Bastion's OpenAIModel against the official openai SDK.

A gateway makes a provider call for every request it serves, so the CPU the
HTTP client burns per call is paid on every one of them. This benchmark
measures it for :class:`bastion.models._openai.OpenAIModel` and for the
official ``openai`` SDK's ``AsyncOpenAI`` client, side by side, in the same
run, against the same server.

How: the chaos server runs in a *separate process* (``bastion._chaos_cli``)
with zero latency, answering every ``POST /v1/chat/completions`` with a short
non-streamed completion. In this process, each client sends ``--requests``
calls at concurrency 1, 8 and 64 (that many tasks pulling from one counter),
after a warm-up. For each run it records the wall time and
``time.process_time()`` -- the CPU used by *this* process only, so the
server's work is not counted. Rounds interleave the clients; the table shows
the median over ``--rounds``.

Columns: ``req/s`` (calls per wall-clock second; at high concurrency the
single-process server may be the limit, for every client alike) and ``CPU
ms/req`` (client CPU per call: the number that matters for a gateway).
``vs SDK`` is the SDK's CPU per call divided by Bastion's.

Run: ``.venv/bin/python bench/provider.py [--requests N] [--rounds R] [--json]``
(needs the ``bench`` extra for the openai SDK).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass

from bastion.models._openai import OpenAIModel
from bastion.models._types import ChatRequest

CONCURRENCY = (1, 8, 64)
PROMPT = "Say hello in five words."
MODEL = "gpt-4o-mini"

Call = Callable[[], Awaitable[object]]


@dataclass
class Sample:
    client: str
    concurrency: int
    requests: int
    wall_s: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s * 1000 / self.requests


@contextlib.contextmanager
def chaos_server() -> Iterator[str]:
    """The chaos server in its own process; yields its base URL (with ``/v1``)."""
    code = (
        "from bastion._chaos_cli import chaos_server_command; chaos_server_command('127.0.0.1', 0)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            msg = f"the chaos server did not start: {line!r}"
            raise RuntimeError(msg)
        yield line.rsplit(" ", 1)[-1].strip() + "/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def drive(call: Call, requests: int, concurrency: int) -> tuple[float, float]:
    """Make ``requests`` calls with ``concurrency`` workers; return (wall, cpu) seconds."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def clients(
    url: str,
) -> tuple[dict[str, Call], list[Callable[[], Awaitable[None]]], list[str]]:
    """The calls to compare, how to close their clients, and notes on rows left out."""
    model = OpenAIModel(MODEL, base_url=url, api_key="bench")
    request = ChatRequest.of(PROMPT)
    calls: dict[str, Call] = {"bastion OpenAIModel (aiohttp)": lambda: model.complete(request)}
    closers: list[Callable[[], Awaitable[None]]] = [model.aclose]
    notes: list[str] = []
    try:
        import openai
    except ImportError:
        notes.append("openai SDK not installed: pip install -e '.[bench]'")
        return calls, closers, notes
    messages = [{"role": "user", "content": PROMPT}]
    sdk = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)

    async def sdk_call() -> object:
        return await sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]

    calls[f"openai {openai.__version__} AsyncOpenAI (default httpx)"] = sdk_call
    closers.append(sdk.close)
    try:
        aio = openai.AsyncOpenAI(
            base_url=url, api_key="bench", max_retries=0, http_client=openai.DefaultAioHttpClient()
        )
    except (RuntimeError, ImportError, AttributeError) as exc:
        notes.append(f"openai with its aiohttp backend left out: {exc}")
    else:

        async def aio_call() -> object:
            return await aio.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]

        calls[f"openai {openai.__version__} AsyncOpenAI (DefaultAioHttpClient)"] = aio_call
        closers.append(aio.close)
    return calls, closers, notes


async def run(requests: int, rounds: int, url: str) -> tuple[list[Sample], list[str]]:
    calls, closers, notes = await clients(url)
    try:
        for call in calls.values():  # warm-up: connections, caches, lazy imports
            await drive(call, min(200, requests), 8)
        samples: list[Sample] = []
        for round_number in range(rounds):
            names = list(calls)
            if round_number % 2:
                names.reverse()
            for concurrency in CONCURRENCY:
                for name in names:
                    wall, cpu = await drive(calls[name], requests, concurrency)
                    samples.append(Sample(name, concurrency, requests, wall, cpu))
    finally:
        for close in closers:
            await close()
    return samples, notes


def summarise(samples: list[Sample]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    keys = sorted(
        {(s.concurrency, s.client) for s in samples},
        key=lambda k: (k[0], "bastion" not in k[1], k[1]),
    )
    for concurrency, client in keys:
        mine = [s for s in samples if s.client == client and s.concurrency == concurrency]
        rows.append(
            {
                "client": client,
                "concurrency": concurrency,
                "rps": statistics.median(s.rps for s in mine),
                "cpu_ms": statistics.median(s.cpu_ms for s in mine),
                "cpu_ms_min": min(s.cpu_ms for s in mine),
            }
        )
    for row in rows:
        base = next(
            r
            for r in rows
            if r["concurrency"] == row["concurrency"] and str(r["client"]).startswith("bastion")
        )
        row["cpu_vs_bastion"] = float(row["cpu_ms"]) / float(base["cpu_ms"])  # type: ignore[arg-type]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests", type=int, default=1000, help="calls per client per concurrency per round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with chaos_server() as url:
        samples, notes = asyncio.run(run(args.requests, args.rounds, url))
    rows = summarise(samples)
    environment = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(
            json.dumps(
                {
                    "environment": environment,
                    "rows": rows,
                    "samples": [asdict(s) for s in samples],
                    "notes": notes,
                },
                indent=2,
            )
        )
        return
    print(
        f"Python {environment['python']} on {environment['cpus']} CPU(s); "
        f"{args.requests} calls x {args.rounds} rounds per cell; chaos server in its own process\n"
    )
    width = max(len(str(r["client"])) for r in rows)
    header = ("conc", "req/s", "CPU ms/req", "min", "CPU vs bastion")
    print(
        f"{'client':<{width}}  {header[0]:>4}  {header[1]:>7}  {header[2]:>10}  {header[3]:>6}  "
        f"{header[4]:>14}"
    )
    for row in rows:
        print(
            f"{row['client']!s:<{width}}  {row['concurrency']:>4}  {row['rps']:>7.0f}  "
            f"{row['cpu_ms']:>10.3f}  {row['cpu_ms_min']:>6.3f}  {row['cpu_vs_bastion']:>13.2f}x"
        )
    for note in notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
