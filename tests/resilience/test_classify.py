"""One reading of exceptions for retry and breaker, whatever library raised them."""

from __future__ import annotations

import email.utils
import errno
import socket
from typing import Any

import pytest

from bastion import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    RateLimitError,
    RequestTooLargeError,
)
from bastion.resilience import TRANSIENT_STATUSES, is_client_error, is_transient
from bastion.resilience._classify import retry_after_of, status_of


class APIStatusError(Exception):
    """Shaped like an SDK's status error: the status sits on the exception."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.response = _Response(status_code, headers or {})


class _Response:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class ClientResponseError(Exception):
    """Shaped like an HTTP client's error: ``status`` instead of ``status_code``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@pytest.mark.parametrize("status", sorted(TRANSIENT_STATUSES))
def test_transient_statuses_are_retried(status: int) -> None:
    assert is_transient(APIStatusError(status))
    assert is_transient(ClientResponseError(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_statuses_are_not_retried(status: int) -> None:
    assert not is_transient(APIStatusError(status))
    assert is_client_error(APIStatusError(status))


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        ConnectionRefusedError(),
        TimeoutError(),
        CallTimeoutError("x", timeout=1),
    ],
)
def test_connection_errors_and_timeouts_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)
    assert not is_client_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError(),
        TypeError(),
        KeyError(),
        RuntimeError("unknown"),
        ConfigurationError("bad option"),
        CircuitOpenError("m", retry_after=1),
        BulkheadFullError("b", max_concurrent=1, max_queued=0, reason="full"),
        RateLimitError("k", retry_after=1, limit=1, remaining=0, window=1),
    ],
)
def test_programming_errors_unknown_errors_and_refusals_are_not_transient(
    exc: BaseException,
) -> None:
    assert not is_transient(exc)


def test_client_errors_are_the_callers_fault() -> None:
    assert is_client_error(ValueError())
    assert is_client_error(ConfigurationError("x"))
    assert not is_client_error(APIStatusError(429))
    assert not is_client_error(APIStatusError(408))
    assert not is_client_error(APIStatusError(503))
    assert not is_client_error(RuntimeError())


def test_status_of_ignores_nonsense() -> None:
    class Weird(Exception):
        status_code = True
        status = "500"

    assert status_of(Weird()) is None
    assert status_of(APIStatusError(503)) == 503


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2, 2.0), (1.5, 1.5), ("3", 3.0), (" 4.5 ", 4.5), (-1, 0.0), ("soon", None), (None, None)],
)
def test_retry_after_from_attribute(value: Any, expected: float | None) -> None:
    class Throttled(Exception):
        retry_after = value

    assert retry_after_of(Throttled(), now=0) == expected


def test_retry_after_from_http_date_header() -> None:
    now = 1_750_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_of(APIStatusError(429, {"retry-after": header}), now=now) == 30.0


def test_retry_after_from_seconds_header() -> None:
    assert retry_after_of(APIStatusError(429, {"retry-after": "7"}), now=0) == 7.0
    assert retry_after_of(APIStatusError(429), now=0) is None


def test_retry_after_rejects_infinite_and_nan() -> None:
    class Bad(Exception):
        retry_after = float("inf")

    assert retry_after_of(Bad(), now=0) is None


def _foreign(module: str, name: str, base: type[Exception] = Exception) -> Exception:
    """An exception class that looks as if it came from another library."""
    cls = type(name, (base,), {"__module__": module})
    return cls("boom")


@pytest.mark.parametrize(
    "exc",
    [
        socket.gaierror(-3, "Temporary failure in name resolution"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError(errno.ECONNRESET, "reset"),
        _foreign("aiohttp.client_exceptions", "ClientConnectionError"),
        _foreign("httpx", "TransportError"),
        _foreign("requests.exceptions", "ConnectionError"),
    ],
)
def test_transport_errors_of_common_clients_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


def test_subclasses_of_client_transport_errors_are_transient() -> None:
    base = type("ClientConnectionError", (Exception,), {"__module__": "aiohttp.client_exceptions"})
    sub = type("ServerDisconnectedError", (base,), {"__module__": "aiohttp.client_exceptions"})
    assert is_transient(sub())


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(errno.ENOENT, "missing"),
        PermissionError(errno.EACCES, "denied"),
        _foreign("httpx", "InvalidURL"),
        _foreign("mylib", "TransportError"),
    ],
)
def test_other_os_and_client_errors_are_not(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_an_input_too_large_is_the_callers_fault() -> None:
    exc = RequestTooLargeError("k", cost=5000, limit=100, unit="tokens")
    assert is_client_error(exc)
    assert not is_transient(exc)
