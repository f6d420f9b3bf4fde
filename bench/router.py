"""Per-call overhead of FallbackChain over calling the same model directly.

The model is an in-process ChatModel that answers at once, so every
microsecond measured is the router's own: ordering, the per-model breaker and
retry pipeline, attempt bookkeeping, and copying the completion. Variants are
interleaved in rounds and the median per-call time is reported, with the
overhead over the direct call.

Run:  python bench/router.py [--calls N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from bastion.models import (
    ChatRequest,
    Completion,
    FallbackChain,
    ModelChoice,
    StreamChunk,
    Usage,
)

REQUEST = ChatRequest.of("Where is my order?")


class InstantModel:
    """Answers immediately with a fixed completion: the cost of the model itself is ~0."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._completion = Completion(
            text="ok",
            model=name,
            finish_reason="stop",
            usage=Usage(input_tokens=5, output_tokens=1),
        )

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ChatRequest) -> Completion:
        return self._completion

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(text="ok", model=self._name, finish_reason="stop")


async def per_call_us(call: Callable[[ChatRequest], Awaitable[Completion]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call(REQUEST)
    return (time.perf_counter() - started) / calls * 1e6


async def main(calls: int, rounds: int) -> dict[str, float]:
    direct = InstantModel("primary")
    single = FallbackChain([direct])
    two = FallbackChain([InstantModel("a"), InstantModel("b")])
    weighted = FallbackChain(
        [
            ModelChoice(model=InstantModel("w1"), weight=3),
            ModelChoice(model=InstantModel("w2"), weight=1),
            InstantModel("backup"),
        ]
    )
    variants: dict[str, Callable[[ChatRequest], Awaitable[Completion]]] = {
        "direct model call": direct.complete,
        "FallbackChain, one model": single.complete,
        "FallbackChain, two models": two.complete,
        "FallbackChain, weighted pool + backup": weighted.complete,
    }
    for call in variants.values():  # warm-up
        await per_call_us(call, 1000)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            samples[name].append(await per_call_us(call, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(main(args.calls, args.rounds))
    base = results["direct model call"]
    if args.json:
        json.dump(
            {"per_call_us": results, "overhead_us": {k: v - base for k, v in results.items()}},
            sys.stdout,
        )
        sys.exit(0)
    print(f"Python {platform.python_version()} on {platform.machine()} ({platform.platform()})")
    print(f"{'variant':42} {'µs/call':>9} {'overhead µs':>12}")
    for name, value in results.items():
        print(f"{name:42} {value:9.2f} {value - base:12.2f}")
