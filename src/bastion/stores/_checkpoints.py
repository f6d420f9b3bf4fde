"""Checkpoints: resume a long agent run from its last finished step after a crash.

:class:`Checkpoints` keeps one JSON document per run on any
:class:`~bastion.stores.CheckpointStore`. Steps only move forward: saving a
step lower than the stored one is refused (``save`` returns False), so a
stale worker that wakes up late cannot roll a run back to older state. A
checkpoint expires ``ttl`` after its latest save (default one day), so
abandoned runs clean themselves up; ``delete`` drops it when the run is done.

The state is JSON rather than pickle: a checkpoint outlives the code that
wrote it and may be read by another process or version, and JSON can neither
run code on load nor silently carry objects the reader cannot rebuild.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bastion._core.clock import SYSTEM_CLOCK, Clock
from bastion._core.errors import ConfigurationError
from bastion._core.validate import invalid, invalid_content, optional_positive_number, text
from bastion.stores._checkpoint_store import CheckpointStore

__all__ = ["Checkpoints", "SavedState"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedState:
    """A loaded checkpoint: the run's step, its state, and how old it is (seconds)."""

    run_id: str
    step: int
    state: dict[str, Any]
    saved_at: float
    age: float


def _run_id(run_id: object, api: str) -> str:
    return text(run_id, f"{api}(run_id)")


class Checkpoints:
    """Save, load and delete the checkpoint of each run on ``store``.

    ``ttl`` (default one day; None: never): how long a checkpoint lives after
    its latest save. ``clock`` is what ``load`` measures a checkpoint's age on.
    """

    __slots__ = ("_clock", "_store", "_ttl")

    def __init__(
        self,
        store: CheckpointStore,
        *,
        ttl: float | None = 86_400.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(store, CheckpointStore):
            invalid("Checkpoints(store)", "a store with checkpoint support", store)
        self._store = store
        self._ttl = optional_positive_number(
            ttl, "Checkpoints.ttl", unit="seconds", none="for checkpoints that never expire"
        )
        self._clock = clock

    def scoped(self, name: str) -> Checkpoints:
        """The same checkpoints confined to scope ``name`` (a tenant): runs never cross it."""
        scoped = getattr(self._store, "scoped", None)
        if scoped is None:
            invalid("Checkpoints.scoped", "used on a store that supports scoped(name)", self._store)
        return Checkpoints(scoped(name), ttl=self._ttl, clock=self._clock)

    async def save(self, run_id: str, step: int, state: dict[str, Any]) -> bool:
        """Save ``state`` as ``run_id``'s step ``step``; False when a later step is stored."""
        _run_id(run_id, "Checkpoints.save")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            invalid("Checkpoints.save(step)", "a whole number >= 0", step)
        if not isinstance(state, dict):
            invalid_content("Checkpoints.save(state)", "a dict of JSON values", state)
        try:
            raw = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            invalid_content("Checkpoints.save(state)", f"a dict of JSON values ({exc})", state)
        return await self._store.save_checkpoint(run_id, step, raw, ttl=self._ttl)

    async def load(self, run_id: str) -> SavedState | None:
        """The latest saved step of ``run_id``, or None when there is none (or it expired).

        Raises ``ConfigurationError`` for a checkpoint that is not a JSON
        object: it was not written by :meth:`save`.
        """
        checkpoint = await self._store.load_checkpoint(_run_id(run_id, "Checkpoints.load"))
        if checkpoint is None:
            return None
        try:
            state = json.loads(checkpoint.state)
        except ValueError:  # not JSON, or not UTF-8
            state = None
        if not isinstance(state, dict):
            msg = (
                f"the checkpoint of run {run_id!r} is not a JSON object as Checkpoints.save "
                "writes it (another program wrote it under this run id?); delete it or use "
                "another run_id"
            )
            raise ConfigurationError(msg)
        return SavedState(
            run_id=checkpoint.run_id,
            step=checkpoint.step,
            state=state,
            saved_at=checkpoint.saved_at,
            age=max(0.0, self._clock.time() - checkpoint.saved_at),
        )

    async def delete(self, run_id: str) -> None:
        """Forget ``run_id``'s checkpoint, once the run is done (harmless when absent)."""
        await self._store.delete_checkpoint(_run_id(run_id, "Checkpoints.delete"))
