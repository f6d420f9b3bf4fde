"""The one place where model providers touch HTTP.

Providers build bodies and read answers; this module moves the bytes. It is
the only client-side module that imports aiohttp, so changing HTTP client
means changing one file. aiohttp was chosen by measurement: against a
zero-latency server on a 2-core machine it spends a fraction of the CPU per
request that httpx's async client does, and a gateway pays that on every call.

One :class:`Transport` holds one pooled ``aiohttp.ClientSession`` for one
provider and base URL. The session is created lazily, on the event loop
that makes the first call (a session belongs to one loop), keeps
connections alive between calls, and is closed by :meth:`Transport.aclose`.

Time limits come from :class:`~bastion.models._timeouts.ModelTimeouts` and
are watched on the injected clock. One watchdog per call follows the call
through its phases -- connecting, waiting for the first token, reading --
and, when the limit of the current phase (or the total) passes while the
call is waiting on the network, cancels the wait and raises
:class:`ProviderTimeout` naming the limit. A non-streamed call has only two
phases: connecting, then waiting for the answer under the total limit alone,
because its headers come only once the whole answer is written -- a long
answer is not a silent provider. While a stream's consumer is busy
with a chunk, nothing is cancelled, and the idle limit restarts at every wait:
only waiting on the provider counts as the provider being slow (the total
limit alone counts everything).

Network failures become :class:`ProviderConnectionError` (refused, reset,
closed early) or :class:`MalformedResponse` (not HTTP); aiohttp's exceptions
never leak past this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from bastion._core.clock import SYSTEM_CLOCK, Cancellable, Clock, SystemClock
from bastion._core.errors import ConfigurationError
from bastion._core.validate import whole_number
from bastion.models._errors import (
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
)
from bastion.models._timeouts import ModelTimeouts
from bastion.resilience._classify import _parse_retry_after
from bastion.resilience._timeout import _on_loop

__all__ = ["HttpReply", "HttpStream", "Transport", "parse_duration", "retry_after_from_headers"]

_NO_AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None)


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A whole response: status, headers and body, with when the headers came (clock time)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    started_at: float
    headers_at: float


class Transport:
    """A pooled HTTP client for one provider at one base URL.

    ``provider`` names the provider in errors. ``headers`` go on every request
    (authentication, content type). ``query`` is added to every URL (Azure's
    ``api-version``).
    """

    __slots__ = (
        "_base",
        "_clock",
        "_headers",
        "_loop",
        "_max_connections",
        "_query",
        "_session",
        "_system_clock",
        "_timeouts",
        "_urls",
        "provider",
    )

    def __init__(
        self,
        base_url: str,
        *,
        provider: str,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        timeouts: ModelTimeouts | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_connections: int = 100,
    ) -> None:
        url = URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            msg = (
                f"base_url must be an http:// or https:// URL with a host; got {base_url!r} "
                "(e.g. 'https://api.openai.com/v1' or 'http://127.0.0.1:8000/v1')"
            )
            raise ConfigurationError(msg)
        whole_number(max_connections, "max_connections")
        self._base = url
        self.provider = provider
        self._headers = dict(headers or {})
        self._query = dict(query or {})
        self._timeouts = timeouts if timeouts is not None else ModelTimeouts()
        self._clock = clock
        self._system_clock = type(clock) is SystemClock
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[str, URL] = {}

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "idle"
        return f"Transport({str(self._base)!r}, provider={self.provider!r}, {state})"

    @property
    def base_url(self) -> str:
        return str(self._base)

    @property
    def timeouts(self) -> ModelTimeouts:
        return self._timeouts

    def url(self, path: str) -> str:
        """The full URL a request to ``path`` goes to."""
        return str(self._url(path))

    async def post(self, path: str, body: bytes, *, model: str | None) -> HttpReply:
        """POST ``body`` (JSON) and read the whole answer, within the call's time limits.

        Only ``connect`` and ``total`` apply: the headers of a non-streamed answer
        arrive when the model has finished writing it, so the wait for headers and
        body is the model's whole generation time, which only ``total`` bounds.
        """
        session = self._session_for(asyncio.get_running_loop())
        watch = _Watchdog(self._clock, self._timeouts, self._system_clock, connected=_ANSWER)
        token = _CURRENT.set(watch)
        try:
            response = await session.post(
                self._url(path),
                data=_payload(body),
                allow_redirects=False,
                timeout=_NO_AIOHTTP_TIMEOUT,
            )
            try:
                headers_at = self._clock.monotonic()
                data = await response.read()
            finally:
                response.release()
        except asyncio.CancelledError:
            timeout = watch.timeout_for_cancel(self.provider, model)
            if timeout is None:
                raise
            raise timeout from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _network_error(exc, self.provider, model, self._base) from exc
        finally:
            watch.stop()
            _CURRENT.reset(token)
        return HttpReply(response.status, response.headers, data, watch.started_at, headers_at)

    async def open_stream(self, path: str, body: bytes, *, model: str | None) -> HttpStream:
        """POST ``body`` and return once the response headers are in; read it with ``read()``.

        The first-token limit keeps running after the headers, until the provider
        calls :meth:`HttpStream.first_token`. Always ``close()`` the stream.
        """
        session = self._session_for(asyncio.get_running_loop())
        watch = _Watchdog(self._clock, self._timeouts, self._system_clock)
        token = _CURRENT.set(watch)
        opened = False
        try:
            response = await session.post(
                self._url(path),
                data=_payload(body),
                headers=_STREAM_HEADERS,
                allow_redirects=False,
                timeout=_NO_AIOHTTP_TIMEOUT,
            )
            opened = True
        except asyncio.CancelledError:
            timeout = watch.timeout_for_cancel(self.provider, model)
            if timeout is None:
                raise
            raise timeout from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _network_error(exc, self.provider, model, self._base) from exc
        finally:
            _CURRENT.reset(token)
            if not opened:
                watch.stop()
        watch.pause()
        return HttpStream(self, response, watch, model, self._clock.monotonic())

    async def aclose(self) -> None:
        """Close the pooled connections. A later call opens a new pool."""
        session, loop = self._session, self._loop
        self._session = self._loop = None
        if session is None or session.closed:
            return
        if loop is asyncio.get_running_loop():
            await session.close()
        elif loop is not None and not loop.is_closed():
            self._session, self._loop = session, loop
            msg = (
                f"{self!r} was opened on another event loop that is still running; "
                "call aclose() from that loop"
            )
            raise RuntimeError(msg)
        else:
            _detach(session)

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = URL(str(self._base) + path)
            if self._query:
                url = url.update_query(self._query)
            self._urls[path] = url
        return url

    def _session_for(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        session = self._session
        if session is not None and self._loop is loop and not session.closed:
            return session
        if session is not None and self._loop is not loop:
            old = self._loop
            if old is not None and not old.is_closed():
                msg = (
                    f"{self!r} is in use on another event loop that is still open; "
                    "use one model object per event loop, or aclose() it on the old loop first"
                )
                raise RuntimeError(msg)
            # The old loop is gone and its sockets with it: forget that pool.
            _detach(session)
        connector = _WatchedConnector(limit=self._max_connections, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=_NO_AIOHTTP_TIMEOUT,
            raise_for_status=False,
        )
        self._loop = loop
        return self._session


class HttpStream:
    """A response being read piece by piece, under the idle, first-token and total limits."""

    __slots__ = ("_model", "_response", "_transport", "_watch", "headers_at")

    def __init__(
        self,
        transport: Transport,
        response: aiohttp.ClientResponse,
        watch: _Watchdog,
        model: str | None,
        headers_at: float,
    ) -> None:
        self._transport = transport
        self._response = response
        self._watch = watch
        self._model = model
        self.headers_at = headers_at

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def started_at(self) -> float:
        return self._watch.started_at

    def first_token(self) -> None:
        """Part of the answer arrived: from now on the idle limit replaces the first-token one."""
        self._watch.enter("idle")

    async def read(self) -> bytes:
        """The next bytes the provider sent (whatever has arrived); ``b""`` when it is done."""
        watch = self._watch
        watch.resume(self._transport.provider, self._model)
        try:
            data = await self._response.content.readany()
        except asyncio.CancelledError:
            timeout = watch.timeout_for_cancel(self._transport.provider, self._model)
            if timeout is None:
                raise
            raise timeout from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _network_error(
                exc, self._transport.provider, self._model, self._transport._base
            ) from exc
        finally:
            watch.pause()
        return data

    async def read_all(self) -> bytes:
        """The rest of the body at once (an error response, or a body that is not a stream)."""
        chunks = []
        while chunk := await self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Release the connection: back to the pool when the body was read, else closed."""
        self._watch.stop()
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()


_STREAM_HEADERS = {"Accept": "text/event-stream"}

_LARGE_BODY = 1 << 20


def _payload(body: bytes) -> bytes | io.BytesIO:
    """``body`` as aiohttp should send it: bytes, or a buffer it writes piecewise when large.

    aiohttp writes a bytes body in one go and warns (``ResourceWarning``) above
    1 MiB; a long prompt is an ordinary request, so it goes as a buffer that
    aiohttp writes in chunks, yielding to the event loop between them.
    """
    return io.BytesIO(body) if len(body) > _LARGE_BODY else body


_CURRENT: contextvars.ContextVar[_Watchdog | None] = contextvars.ContextVar(
    "bastion_transport_watchdog", default=None
)


class _WatchedConnector(aiohttp.TCPConnector):
    """Tells the current call's watchdog when its connection is ready (pooled or new)."""

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        watch = _CURRENT.get()
        if watch is not None:
            watch.enter(watch.connected)
        return connection


_INF = math.inf
_ANSWER = "answer"
"""The phase of a non-streamed call after connecting: no limit of its own, only the total."""


class _Watchdog:
    """The time limits of one call, as phases with deadlines on the injected clock.

    A single timer is kept at or before the nearest deadline. When it fires
    early (the deadline moved later, as the idle deadline does with every
    chunk), it re-arms instead of cancelling, so a long stream costs a clock
    read per chunk, not a timer per chunk.
    """

    __slots__ = (
        "_baseline",
        "_clock",
        "_handle",
        "_limits",
        "_phase",
        "_phase_at",
        "_system",
        "_task",
        "_timer_at",
        "_total_at",
        "connected",
        "fired",
        "started_at",
    )

    def __init__(
        self, clock: Clock, limits: ModelTimeouts, system: bool, *, connected: str = "first_token"
    ) -> None:
        now = clock.monotonic()
        self.connected = connected
        """The phase entered once the connection is ready."""
        self._clock = clock
        self._limits = limits
        self._system = system
        self.started_at = now
        self._total_at = now + limits.total if limits.total is not None else _INF
        self._phase = "connect"
        self._phase_at = now + limits.connect if limits.connect is not None else _INF
        self.fired: str | None = None
        self._handle: Cancellable | None = None
        self._timer_at = _INF
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio forbids awaiting outside a task
            msg = "model calls must run inside an asyncio task"
            raise RuntimeError(msg)
        self._task: asyncio.Task[Any] | None = task
        self._baseline = task.cancelling()
        self._arm(now)

    def enter(self, phase: str) -> float:
        """Start ``phase`` now (its limit counts from here); returns the clock time."""
        now = self._clock.monotonic()
        limit: float | None = None if phase == _ANSWER else getattr(self._limits, phase)
        self._phase = phase
        self._phase_at = now + limit if limit is not None else _INF
        if self._task is not None:
            self._arm(now)
        return now

    def pause(self) -> None:
        """The caller is busy with what it read: its time is not the provider's fault."""
        self._task = None

    def resume(self, provider: str, model: str | None) -> None:
        """About to wait on the provider again: the deadline may cancel this wait.

        The idle limit counts from here: a consumer that took its time with the
        previous chunk has not made the provider slow.
        """
        now = self._clock.monotonic()
        if self._phase == "idle" and self._limits.idle is not None:
            self._phase_at = now + self._limits.idle
        at, kind = self._deadline()
        if now >= at:
            self.fired = kind
            raise self._error(kind, provider, model)
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio forbids awaiting outside a task
            msg = "model streams must be read inside an asyncio task"
            raise RuntimeError(msg)
        self._task = task
        self._baseline = task.cancelling()
        self._arm(now)

    def stop(self) -> None:
        self._task = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._timer_at = _INF

    def timeout_for_cancel(self, provider: str, model: str | None) -> ProviderTimeout | None:
        """The timeout a cancellation of the waiting task stands for; None if it is not ours."""
        task = asyncio.current_task()
        kind = self.fired
        if kind is None or task is None or task.uncancel() > self._baseline:
            return None
        return self._error(kind, provider, model)

    def _error(self, kind: str, provider: str, model: str | None) -> ProviderTimeout:
        limit: float = getattr(self._limits, kind)
        text = _TIMEOUT_TEXT[kind]
        return ProviderTimeout(text, provider=provider, model=model, kind=kind, timeout=limit)

    def _deadline(self) -> tuple[float, str]:
        if self._phase_at <= self._total_at:
            return self._phase_at, self._phase
        return self._total_at, "total"

    def _arm(self, now: float) -> None:
        at = self._phase_at if self._phase_at <= self._total_at else self._total_at
        if at >= self._timer_at or at == _INF:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._timer_at = at
        if self._system:
            self._handle = asyncio.get_running_loop().call_later(at - now, self._fire)
        else:
            loop = asyncio.get_running_loop()
            self._handle = self._clock.call_later(at - now, _on_loop(loop, self._fire))

    def _fire(self) -> None:
        self._handle = None
        self._timer_at = _INF
        task = self._task
        if task is None or task.done():
            return  # not waiting on the provider now; resume() checks the deadline
        now = self._clock.monotonic()
        at, kind = self._deadline()
        if now < at:
            self._arm(now)
            return
        self.fired = kind
        task.cancel()


_TIMEOUT_TEXT = {
    "connect": "could not connect in time",
    "first_token": "connected, but the first token did not arrive in time",
    "idle": "the response stalled: nothing arrived for too long",
    "total": "the whole call took too long",
}


def _network_error(
    exc: BaseException, provider: str, model: str | None, base: URL
) -> ProviderError:
    where = f"{base.host}:{base.port}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return ProviderConnectionError(
            f"could not connect to {where}: {reason}", provider=provider, model=model
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProviderConnectionError(
            f"{where} closed the connection without a complete response",
            provider=provider,
            model=model,
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProviderConnectionError(
            f"the connection to {where} broke before the response was complete",
            provider=provider,
            model=model,
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return MalformedResponse(
            f"{where} did not answer with valid HTTP ({exc.message})",
            provider=provider,
            model=model,
        )
    detail = str(exc) or type(exc).__name__
    return ProviderConnectionError(
        f"network error talking to {where}: {detail}", provider=provider, model=model
    )


def _detach(session: aiohttp.ClientSession) -> None:
    """Mark a session whose loop has closed as closed, without touching its dead sockets."""
    connector = session.connector
    session.detach()
    if connector is not None:
        connector._close()


# -- Retry-After ---------------------------------------------------------------------------


def retry_after_from_headers(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds a throttled provider asked us to wait, from whichever header it used.

    In order of precision: ``retry-after-ms`` (milliseconds), ``retry-after``
    (seconds or an HTTP date, measured from ``now``, wall-clock seconds), then
    the reset headers OpenAI-style servers send
    (``x-ratelimit-reset-requests`` / ``-tokens``, durations such as ``"1s"``,
    ``"6m0s"`` or ``"20ms"``): the one whose ``x-ratelimit-remaining-*`` is 0,
    else the longer. None when no header says anything usable.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    seconds = _parse_retry_after(headers.get("retry-after"), now=now)
    if seconds is not None:
        return seconds
    resets: list[float] = []
    exhausted: list[float] = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        delay = parse_duration(reset) if reset is not None else None
        if delay is None:
            continue
        resets.append(delay)
        if headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            exhausted.append(delay)
    if exhausted:
        return max(exhausted)
    return max(resets) if resets else None


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``"1h2m3.5s"``, ``"20ms"``) or a bare number of seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        bare = float(text)
    except ValueError:
        pass
    else:
        return bare if math.isfinite(bare) and bare >= 0 else None
    total, i, n = 0.0, 0, len(text)
    while i < n:
        start = i
        while i < n and (text[i].isdigit() or text[i] == "."):
            i += 1
        number = text[start:i]
        start = i
        while i < n and not (text[i].isdigit() or text[i] == "."):
            i += 1
        unit = _UNITS.get(text[start:i])
        if not number or unit is None:
            return None
        try:
            total += float(number) * unit
        except ValueError:
            return None
    return total
