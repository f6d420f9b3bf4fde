"""Serve the answer from somewhere else when the first choice fails.

A :class:`Fallback` holds an ordered list of alternatives -- functions, agents,
models, anything :func:`~bastion.with_resilience` accepts -- and optionally a
static answer to give when every alternative failed. The result says which one
served and why each earlier one was passed over, because "it worked" is not
enough to run a service: an operator needs to see that the backup is carrying
the traffic.

Which failures move on to the next alternative is a predicate,
``fallback_on``. By default every failure does, except two. The caller's own
mistakes (a 400/404/422 or a ``ValueError``): the next alternative would get
the same bad input, and the caller deserves that error, not a degraded answer.
And an admission refusal (:class:`RateLimitError`): a caller over its limit
must be told so, not served by backups that have no limit.

When everything failed and there is no static answer, the *first* error --
the primary's, usually the most telling -- is re-raised unchanged, with a note
per alternative saying how it failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bastion._core.errors import (
    ConfigurationError,
    RateLimitError,
    ShuttingDownError,
    summarize,
)
from bastion._core.events import EventBus, FallbackUsed, default_bus
from bastion.resilience._classify import is_client_error
from bastion.resilience._invoke import Target, resolve_target

__all__ = ["Fallback", "FallbackResult", "SkippedAlternative"]

T = TypeVar("T")

_NO_STATIC: Any = object()


@dataclass(frozen=True, slots=True)
class SkippedAlternative:
    """An alternative that did not serve, and the reason in one line."""

    name: str
    reason: str
    error: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class FallbackResult(Generic[T]):
    """What a fallback-protected call returned, and who produced it.

    ``degraded`` is true whenever the primary did not serve: the answer came
    from a backup or from the static answer.
    """

    value: T
    served_by: str
    index: int
    skipped: tuple[SkippedAlternative, ...] = ()
    degraded: bool = False


def _default_fallback_on(exc: BaseException) -> bool:
    return not is_client_error(exc) and not isinstance(exc, ShuttingDownError | RateLimitError)


class Fallback:
    """An ordered list of alternatives, then an optional static answer.

    Used alone, the first alternative is the primary::

        fallback = Fallback([call_gpt, call_claude], static="Please try again later.")
        result = await fallback.call("hello")
        result.value, result.served_by, result.skipped

    Inside :func:`~bastion.with_resilience` the wrapped agent (with its whole
    resilience stack) is the primary and these are the backups.
    """

    def __init__(
        self,
        alternatives: Sequence[object] = (),
        *,
        static: Any = _NO_STATIC,
        fallback_on: Callable[[BaseException], bool] | None = None,
        name: str = "fallback",
        bus: EventBus | None = None,
    ) -> None:
        if isinstance(alternatives, str | bytes) or not isinstance(alternatives, Sequence):
            msg = (
                "Fallback(alternatives=...) must be a list of agents or callables, "
                f"got {alternatives!r}"
            )
            raise ConfigurationError(msg)
        if not alternatives and static is _NO_STATIC:
            msg = "Fallback needs at least one alternative or a static= answer"
            raise ConfigurationError(msg)
        predicate: object = fallback_on
        if predicate is not None and not callable(predicate):
            msg = f"fallback_on must be a predicate taking the exception, got {fallback_on!r}"
            raise ConfigurationError(msg)
        self.targets: tuple[Target, ...] = tuple(resolve_target(a) for a in alternatives)
        self.static = static
        self.has_static = static is not _NO_STATIC
        self.fallback_on = fallback_on or _default_fallback_on
        self.name = name
        self._bus = bus

    def __repr__(self) -> str:
        names = [t.name for t in self.targets]
        return f"Fallback({names!r}, static={self.has_static})"

    async def call(self, *args: Any, **kwargs: Any) -> FallbackResult[Any]:
        """Try each alternative with these arguments, in order; the first to succeed serves."""
        if not self.targets:
            return self._serve_static(0, ())
        first, *rest = self.targets
        return await self.serve(first.bind_async(args, kwargs), first.name, args, kwargs, rest)

    def call_sync(self, *args: Any, **kwargs: Any) -> FallbackResult[Any]:
        """:meth:`call` for sync alternatives, in the calling thread."""
        if not self.targets:
            return self._serve_static(0, ())
        first, *rest = self.targets
        return self.serve_sync(first.bind_sync(args, kwargs), first.name, args, kwargs, rest)

    async def serve(
        self,
        primary: Callable[[], Awaitable[T]],
        primary_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        backups: Sequence[Target] | None = None,
    ) -> FallbackResult[Any]:
        """Run ``primary``; on a failure that ``fallback_on`` accepts, move down the list."""
        try:
            return FallbackResult(await primary(), primary_name, 0)
        except Exception as exc:
            if not self.fallback_on(exc):
                raise
            first_error = exc
            skipped = [SkippedAlternative(primary_name, summarize(exc), exc)]
        for index, target in enumerate(self.targets if backups is None else backups, start=1):
            try:
                value = await target.bind_async(args, kwargs)()
            except Exception as exc:
                skipped.append(SkippedAlternative(target.name, summarize(exc), exc))
                continue
            return self._served(value, target.name, index, skipped)
        return self._last_resort(first_error, skipped)

    def serve_sync(
        self,
        primary: Callable[[], T],
        primary_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        backups: Sequence[Target] | None = None,
    ) -> FallbackResult[Any]:
        """:meth:`serve` for sync callables."""
        try:
            return FallbackResult(primary(), primary_name, 0)
        except Exception as exc:
            if not self.fallback_on(exc):
                raise
            first_error = exc
            skipped = [SkippedAlternative(primary_name, summarize(exc), exc)]
        for index, target in enumerate(self.targets if backups is None else backups, start=1):
            try:
                value = target.bind_sync(args, kwargs)()
            except ConfigurationError:
                raise
            except Exception as exc:
                skipped.append(SkippedAlternative(target.name, summarize(exc), exc))
                continue
            return self._served(value, target.name, index, skipped)
        return self._last_resort(first_error, skipped)

    def _served(
        self, value: Any, served_by: str, index: int, skipped: list[SkippedAlternative]
    ) -> FallbackResult[Any]:
        (self._bus or default_bus()).emit(
            FallbackUsed(
                source=self.name, served_by=served_by, skipped=tuple(s.name for s in skipped)
            )
        )
        return FallbackResult(value, served_by, index, tuple(skipped), degraded=True)

    def _serve_static(
        self, index: int, skipped: tuple[SkippedAlternative, ...]
    ) -> FallbackResult[Any]:
        return self._served(self.static, "static", index, list(skipped))

    def _last_resort(
        self, first_error: Exception, skipped: list[SkippedAlternative]
    ) -> FallbackResult[Any]:
        if self.has_static:
            return self._served(self.static, "static", len(skipped), skipped)
        for alternative in skipped[1:]:
            first_error.add_note(
                f"bastion: fallback {alternative.name!r} failed too: {alternative.reason}"
            )
        raise first_error
