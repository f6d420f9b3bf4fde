"""Which failures are worth another try, and which are the caller's fault.

Retry and circuit breaker both need to read an exception the same way, whatever
library raised it: Bastion's own errors, an SDK's ``APIStatusError`` with a
``status_code``, an HTTP client's ``ClientResponseError`` with a ``status``, or a
plain ``ConnectionError``. The rules live here once.

Transient (worth retrying): connection errors, timeouts, and HTTP statuses 408,
409, 429, 500, 502, 503, 504 and 529. Connection errors include socket-level
``OSError``s with a network errno (reset, refused, unreachable, DNS failure)
and the transport errors of the common HTTP clients (aiohttp, httpx,
httpcore, requests, urllib3), recognised by class name so none of them has to
be installed. Everything else -- other 4xx, validation and programming errors,
unknown exceptions -- is not retried unless a ``retry_on=`` predicate says so.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import math
import socket
from typing import Any

from bastion._core.errors import (
    BastionError,
    ConfigurationError,
    RejectedError,
    RequestTooLargeError,
)

__all__ = [
    "TRANSIENT_STATUSES",
    "is_client_error",
    "is_transient",
    "retry_after_of",
    "status_of",
]

TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
"""HTTP statuses that say "try again": timeouts, conflicts, throttling and server trouble."""

_NEVER_TRANSIENT = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NameError,
    LookupError,
    ArithmeticError,
    AssertionError,
    NotImplementedError,
    RecursionError,
)


_NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "EPIPE",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
    )
    if hasattr(errno, name)
)

# Transport failures of HTTP clients, by the module they come from and their class name.
_CLIENT_TRANSPORT_ERRORS = {
    "aiohttp": frozenset(
        {
            "ClientConnectionError",
            "ClientPayloadError",
            "ServerTimeoutError",
            "ConnectionTimeoutError",
            "SocketTimeoutError",
        }
    ),
    "httpx": frozenset({"TransportError", "TimeoutException"}),
    "httpcore": frozenset({"NetworkError", "TimeoutException", "RemoteProtocolError"}),
    "requests": frozenset({"ConnectionError", "Timeout", "ChunkedEncodingError"}),
    "urllib3": frozenset({"ProtocolError", "NewConnectionError", "TimeoutError"}),
}


def _is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, socket.gaierror):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    for cls in type(exc).__mro__:
        names = _CLIENT_TRANSPORT_ERRORS.get(cls.__module__.partition(".")[0])
        if names is not None and cls.__name__ in names:
            return True
    return False


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (``status_code``, ``status``, ``response``)."""
    for holder in (exc, getattr(exc, "response", None)):
        if holder is None:
            continue
        for attr in ("status_code", "status"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if sent again after a pause."""
    if isinstance(exc, RejectedError):
        # Refused by a local guard (open circuit, full bulkhead): retrying in a
        # loop would only hammer the guard. Fallbacks handle these.
        return False
    if isinstance(exc, BastionError):
        # Bastion's own errors say it themselves (a provider error sets it from
        # the upstream status it carries).
        return exc.transient
    status = status_of(exc)
    if status is not None:
        return status in TRANSIENT_STATUSES
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError):
        return True
    return _is_transport_error(exc)


def is_client_error(exc: BaseException) -> bool:
    """Whether the failure is the caller's fault, so it says nothing about the callee's health.

    4xx statuses other than 408 (timeout) and 429 (throttled), and validation or
    programming errors raised before anything was sent.
    """
    status = status_of(exc)
    if status is not None:
        return 400 <= status < 500 and status not in (408, 429)
    if isinstance(exc, BastionError):
        return isinstance(exc, ConfigurationError | RequestTooLargeError)
    return isinstance(exc, _NEVER_TRANSIENT)


def retry_after_of(exc: BaseException, *, now: float) -> float | None:
    """Seconds the callee asked us to wait, from ``exc.retry_after`` or a ``Retry-After`` header.

    Accepts seconds (number or numeric string) and HTTP dates (turned into a
    delay from ``now``, wall-clock seconds). Unparseable values are ignored.
    """
    value: Any = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(
            exc, "headers", None
        )
        if headers is not None:
            try:
                value = headers.get("retry-after") or headers.get("Retry-After")
            except (AttributeError, TypeError):
                value = None
    return _parse_retry_after(value, now=now)


def _parse_retry_after(value: Any, *, now: float) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - now
    else:
        return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(seconds, 0.0)
