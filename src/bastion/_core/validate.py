"""Checks for option values, shared by every config so a bad value reads the same everywhere.

A misconfigured limiter or breaker should fail when the process starts, with
a message that names the option, says what it accepts and shows what it got:
``RetryConfig.max_retries must be a whole number >= 0; got -1``. Each check
below raises :class:`ConfigurationError` in exactly that shape
(``"{option} must be {what}; got {value!r}"``) and returns the value in its
canonical type, so configs validate and normalise in one step.

Booleans are refused wherever a number is expected: ``True`` is an ``int`` to
Python, but ``max_retries=True`` is a mistake, never an intent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn, TypeGuard, TypeVar

from bastion._core.errors import ConfigurationError

__all__ = [
    "at_least",
    "awaitable_returned",
    "callable_or_none",
    "fraction",
    "instance_of",
    "invalid",
    "invalid_content",
    "non_negative_number",
    "one_of",
    "optional_fraction",
    "optional_positive_number",
    "optional_whole_number",
    "positive_number",
    "text",
    "whole_number",
]

C = TypeVar("C")


def invalid(option: str, what: str, value: object) -> NoReturn:
    """Raise the one error shape every check uses: ``{option} must be {what}; got {value!r}``."""
    raise ConfigurationError(f"{option} must be {what}; got {value!r}")


def invalid_content(option: str, what: str, value: object) -> NoReturn:
    """Like :func:`invalid`, but names only the type of ``value``, never its contents.

    For values that may carry a user's prompt, a tool's arguments or a secret:
    an error message travels into logs and HTTP responses, and those must
    never hold such data.
    """
    raise ConfigurationError(
        f"{option} must be {what}; got a {type(value).__name__} (contents not shown)"
    )


def text(value: object, option: str, *, empty: bool = False) -> str:
    """A string; a non-empty one unless ``empty`` (an id, a name, a reason)."""
    if not isinstance(value, str) or (not value and not empty):
        invalid(option, "a string" if empty else "a non-empty string", value)
    return value


def _is_real(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _what(base: str, *, none: str | None = None, hint: str = "") -> str:
    text = base
    if none is not None:
        text += f", or None{' ' + none if none else ''}"
    if hint:
        text += f" ({hint})"
    return text


def _number_text(bound: str, minimum: float, *, unit: str, finite: bool) -> str:
    noun = f"number of {unit}" if unit else "number"
    return f"a {'finite ' if finite else ''}{noun} {bound} {minimum:g}"


def _positive(value: object) -> TypeGuard[int | float]:
    return _is_real(value) and 0 < value < math.inf


def _fraction(value: object, allow_zero: bool) -> TypeGuard[int | float]:
    return _is_real(value) and (value >= 0 if allow_zero else value > 0) and value <= 1


def positive_number(value: object, option: str, *, unit: str = "", hint: str = "") -> float:
    """A finite number > 0 (a duration, a limit), as a float."""
    if _positive(value):
        return float(value)
    invalid(option, _what(_number_text(">", 0, unit=unit, finite=True), hint=hint), value)


def optional_positive_number(
    value: object, option: str, *, unit: str = "", none: str = "", hint: str = ""
) -> float | None:
    """:func:`positive_number`, or None; ``none`` says what None means (``"for no timeout"``)."""
    if value is None:
        return None
    if _positive(value):
        return float(value)
    what = _what(_number_text(">", 0, unit=unit, finite=True), none=none, hint=hint)
    invalid(option, what, value)


def non_negative_number(
    value: object, option: str, *, unit: str = "", hint: str = "", finite: bool = True
) -> float:
    """A number >= 0, as a float; ``finite=False`` also admits ``math.inf`` ("no cap")."""
    if _is_real(value) and value >= 0 and (not finite or value < math.inf):
        return float(value)
    invalid(option, _what(_number_text(">=", 0, unit=unit, finite=finite), hint=hint), value)


def at_least(
    value: object, option: str, minimum: float, *, unit: str = "", hint: str = ""
) -> float:
    """A finite number >= ``minimum`` (a growth factor, a limit of at least one), as a float."""
    if _is_real(value) and minimum <= value < math.inf:
        return float(value)
    invalid(option, _what(_number_text(">=", minimum, unit=unit, finite=True), hint=hint), value)


def whole_number(value: object, option: str, *, minimum: int = 1, hint: str = "") -> int:
    """An ``int`` >= ``minimum`` (a count); floats such as ``3.0`` are refused."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    invalid(option, _what(f"a whole number >= {minimum}", hint=hint), value)


def optional_whole_number(
    value: object, option: str, *, minimum: int = 1, none: str = "", hint: str = ""
) -> int | None:
    """:func:`whole_number`, or None; ``none`` says what None means."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    invalid(option, _what(f"a whole number >= {minimum}", none=none, hint=hint), value)


def _fraction_text(allow_zero: bool) -> str:
    return f"a fraction in {'[' if allow_zero else '('}0, 1]"


def fraction(value: object, option: str, *, allow_zero: bool = False, hint: str = "") -> float:
    """A number in (0, 1], or [0, 1] with ``allow_zero``, as a float (a rate, a share)."""
    if _fraction(value, allow_zero):
        return float(value)
    invalid(option, _what(_fraction_text(allow_zero), hint=hint), value)


def optional_fraction(
    value: object, option: str, *, allow_zero: bool = False, none: str = "", hint: str = ""
) -> float | None:
    """:func:`fraction`, or None; ``none`` says what None means (``"to turn the rule off"``)."""
    if value is None:
        return None
    if _fraction(value, allow_zero):
        return float(value)
    invalid(option, _what(_fraction_text(allow_zero), none=none, hint=hint), value)


def callable_or_none(value: object, option: str, *, what: str = "a callable") -> None:
    """A callable hook, or None for the default; ``what`` describes the expected signature."""
    if value is not None and not callable(value):
        invalid(option, f"{what}, or None", value)


def one_of(value: object, option: str, choices: Sequence[str]) -> None:
    """One of a few fixed strings (a mode, a jitter kind)."""
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices[:-1])
        invalid(option, f"one of {listed} or {choices[-1]!r}", value)


def instance_of(value: object, cls: type[C], option: str) -> C:
    """A config object of class ``cls``, or ``cls()`` when ``value`` is None.

    Catches ``CircuitBreaker(5)`` at construction instead of an
    ``AttributeError`` on the first call.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    name = cls.__name__
    invalid(option, f"a {name} (e.g. {name}()) or None for the defaults", value)


def awaitable_returned(result: object, api: str, *, instead: str) -> ConfigurationError:
    """The error for a sync shell (``api``) whose callable handed back an awaitable.

    ``instead`` is the async call to use, e.g. ``"await breaker.call(...)"``.

    A sync shell cannot wait for it, and counting the call as a success when
    the coroutine is merely created would lie to every guard involved. The
    coroutine is closed first, so Python does not also warn that it was never
    awaited.
    """
    close = getattr(result, "close", None)
    if callable(close):
        close()
    return ConfigurationError(
        f"the function given to {api} returned an awaitable ({type(result).__name__}), which "
        f"a sync call cannot wait for; use `{instead}` for async callables"
    )
