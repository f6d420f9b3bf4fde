"""The rate-limit concern of a store: one atomic decision per call, on the store's clock.

A limiter shared by many processes cannot use its caller's clock: monotonic
clocks of two processes do not even share an origin, and wall clocks of two
machines drift. So a shared store *owns time*: Redis reads ``TIME`` inside the
Lua script that decides, the SQL store uses the wall clock it was given
(``clock.time()`` of the process that runs the transaction; keep machines on
NTP), and the memory store its own monotonic clock. The limiter passes what it
wants (key, costs, :class:`WindowSpec`) and gets a
:class:`~bastion.stores.WindowDecision` back.

:class:`WindowSpec` says which limits over which window with which algorithm.
It is also part of every stored key, so two limiters share counts exactly when
their specs are equal: same name, algorithm, window and limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from bastion._core.validate import one_of
from bastion.stores._fixed_window import FixedWindowCounter
from bastion.stores._keys import escape
from bastion.stores._window_log import (
    RateLimitBackend,
    SlidingWindowLog,
    WindowDecision,
    check_window_options,
)

__all__ = ["ALGORITHMS", "Algorithm", "RateLimitStore", "WindowSpec"]

Algorithm = Literal["sliding", "fixed"]
ALGORITHMS: tuple[Algorithm, ...] = ("sliding", "fixed")


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowSpec:
    """Which limits a decision checks, over which window, with which algorithm.

    ``limits[i]`` is the most weight limit ``i`` admits per ``window`` seconds;
    a call passes one cost per limit. ``names`` label the limits in errors
    (``max_rpm``, ``max_tpm``); ``name`` is the limiter's, and separates the
    counts of differently named limiters in one store.
    """

    limits: tuple[float, ...]
    window: float
    algorithm: Algorithm = "sliding"
    name: str = "rate_limit"
    names: tuple[str, ...] = ()
    tag: str = field(init=False, repr=False, compare=False)
    """The spec's part of every stored key (derived)."""

    def __post_init__(self) -> None:
        limits, window, names = check_window_options(
            "WindowSpec", self.limits, self.window, self.names or None
        )
        one_of(self.algorithm, "WindowSpec.algorithm", ALGORITHMS)
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "names", names)
        shape = "/".join(repr(limit) for limit in limits)
        tag = f"{escape(self.name)}:{self.algorithm}:{window!r}:{shape}"
        object.__setattr__(self, "tag", tag)

    def local(self) -> RateLimitBackend:
        """A fresh in-process log or counter for this spec (what the memory store keeps)."""
        if self.algorithm == "fixed":
            return FixedWindowCounter(limits=self.limits, window=self.window, names=self.names)
        return SlidingWindowLog(limits=self.limits, window=self.window, names=self.names)


@runtime_checkable
class RateLimitStore(Protocol):
    """A store that decides rate limits atomically for every process that shares it."""

    @property
    def backend(self) -> str:
        """The backend's name, for errors and logs."""
        ...

    async def rate_limit(
        self, key: str, costs: Sequence[float], spec: WindowSpec
    ) -> WindowDecision:
        """Admit a call costing ``costs[i]`` against ``spec.limits[i]`` now, or refuse it.

        Atomic across every process using the store: the check and the record
        are one step. Raises :class:`~bastion._core.errors.StoreUnavailableError`
        when the store does not answer within its timeout, and
        :class:`~bastion._core.errors.ConfigurationError` for costs that could
        never be admitted.
        """
        ...
