"""Running blocking work beside the caller, so the caller can stop waiting for it.

Each call gets a daemon thread of its own rather than a slot in a shared pool:
a pool of N threads is starved by N hung callees, and then every other call
through it times out while queued -- tripping breakers on healthy services.
Starting a thread costs tens of microseconds, nothing next to a model call.
Daemon threads never hold up interpreter exit.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

__all__ = ["start_in_thread"]

T = TypeVar("T")


def start_in_thread(fn: Callable[[], T], *, name: str) -> Future[T]:
    """Run ``fn()`` in a new daemon thread, with the caller's context variables."""
    future: Future[T] = Future()
    ctx = contextvars.copy_context()

    def runner() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = ctx.run(fn)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=runner, name=f"bastion-{name}", daemon=True).start()
    return future
