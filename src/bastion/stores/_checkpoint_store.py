"""The checkpoint concern of a store: the latest saved step of a run, kept for a while.

A run that crashes resumes from its checkpoint, so a checkpoint must never
move backwards: a save whose ``step`` is lower than the stored one is
ignored (and says so), which makes a slow duplicate writer -- a retried
task, a worker that lost its lease -- harmless. An equal step overwrites, so
re-saving a step after a retry is fine. That compare-and-set is the one
read-check-write, so every backend does it in one atomic step (a lock, one
upsert, a Lua script).

A checkpoint past its expiry counts as absent (and a lower step may then be
saved again). Time is the store's: its clock for the memory and SQL stores,
the server's (or the test clock given) for Redis. ``ttl=None`` keeps a
checkpoint until it is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Checkpoint", "CheckpointStore", "newer_or_same"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A run's latest saved step: its opaque ``state`` and when it was saved (store time)."""

    run_id: str
    step: int
    state: bytes
    saved_at: float


def newer_or_same(stored_step: int | None, step: int) -> bool:
    """Whether a save of ``step`` may replace the live stored one (None: nothing stored)."""
    return stored_step is None or step >= stored_step


@runtime_checkable
class CheckpointStore(Protocol):
    """A store that keeps the latest checkpoint of each run, never rolling one back."""

    @property
    def backend(self) -> str:
        """The backend's name, for errors and logs."""
        ...

    async def save_checkpoint(
        self, run_id: str, step: int, state: bytes, *, ttl: float | None
    ) -> bool:
        """Keep ``state`` as ``run_id``'s checkpoint unless a live one has a higher step.

        Whether it was kept. The checkpoint expires ``ttl`` seconds from now
        (never when None).
        """
        ...

    async def load_checkpoint(self, run_id: str) -> Checkpoint | None:
        """The live checkpoint of ``run_id``, or None."""
        ...

    async def delete_checkpoint(self, run_id: str) -> None:
        """Forget ``run_id``'s checkpoint (harmless when there is none)."""
        ...
