"""Send the requests that pile up during one round trip as the next single call.

A Redis client in Python spends more time packing, sending and parsing a
command than Redis spends running a small script, so one process doing many
concurrent decisions is bound by its own per-command cost. Coalescing is the
cure without adding latency: the first request goes out at once; requests
that arrive while it is in flight wait for it and then go out together, as
one call, and so on. Nobody waits for a timer, and under load each round trip
carries many requests.

It stays correct because the receiving script still makes each decision
atomically, one after another; only the transport is shared. A caller that
gives up (its timeout, a cancellation) is dropped from the next batch, or --
if its request is already on the wire -- simply never reads its answer.

The sending runs in its own task so that one caller's cancellation can never
cancel a call that carries other callers' requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

Q = TypeVar("Q")
R = TypeVar("R")


class Coalescer(Generic[Q, R]):
    """Turns concurrent ``submit(request)`` calls into batched ``send(requests)`` calls.

    ``send`` must return one result per request, in order. At most one send is
    in flight per coalescer; a batch holds at most ``max_batch`` requests and is
    bounded by ``timeout`` seconds. Bound to the event loop it is first used
    in; a call from another loop while a batch is in flight is sent on its own.
    """

    __slots__ = ("_busy", "_loop", "_max_batch", "_pending", "_send", "_task", "_timeout")

    def __init__(
        self,
        send: Callable[[list[Q]], Awaitable[list[R]]],
        *,
        timeout: float,
        max_batch: int = 256,
    ) -> None:
        self._send = send
        self._timeout = timeout
        self._max_batch = max_batch
        self._pending: list[tuple[Q, asyncio.Future[R]]] = []
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: Q) -> R:
        """The result of ``request``, sent alone or together with others in flight."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._busy:
                return (await self._send([request]))[0]
            self._loop = loop
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((request, future))
        if not self._busy:
            self._busy = True
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        live: list[tuple[Q, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                live = [(request, future) for request, future in batch if not future.done()]
                if not live:
                    continue
                try:
                    async with asyncio.timeout(self._timeout):
                        results = await self._send([request for request, _ in live])
                    if len(results) != len(live):
                        msg = f"sent {len(live)} requests but got {len(results)} results"
                        raise RuntimeError(msg)
                except Exception as exc:
                    for _, future in live:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(live, results, strict=False):
                    if not future.done():
                        future.set_result(result)
        except BaseException:
            for _, future in [*live, *self._pending]:
                future.cancel()
            self._pending.clear()
            raise
        finally:
            self._busy = False
            self._task = None
