"""What can go wrong talking to a model provider, as errors the resilience core understands.

Every provider maps its wire failures to these, so retry, the breaker and the
router never parse HTTP themselves. ``transient`` says whether the same
request may succeed later (read by retry); ``status_code`` is the upstream
HTTP status when there was one (read by the breaker: a 4xx is the caller's
fault and does not count against the model).

::

    ProviderError
    ├── ProviderRateLimited       429; retry_after from the provider's headers   transient
    ├── ProviderUnavailable       5xx, 529 (overloaded)                           transient
    ├── ProviderTimeout           connect / first_token / idle / total            transient
    ├── ProviderConnectionError   refused, reset, closed with no response          transient
    ├── StreamInterrupted         a stream broke after some text was delivered     transient
    ├── MalformedResponse         a body or event that cannot be read
    ├── ContextLengthExceeded     the request does not fit the model's window
    ├── ContentPolicyViolation    the provider refused on safety grounds
    ├── AuthenticationFailed      401 / 403: a key problem, not a model problem
    └── ProviderBadRequest        any other 4xx
"""

from __future__ import annotations

from bastion._core.errors import BastionError

__all__ = [
    "AuthenticationFailed",
    "ContentPolicyViolation",
    "ContextLengthExceeded",
    "MalformedResponse",
    "ProviderBadRequest",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "StreamInterrupted",
]


class ProviderError(BastionError):
    """A model provider failed to answer; ``provider`` and ``model`` say which."""

    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.status_code = status_code
        where = f"{provider}/{model}" if model else provider
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{where}{status}: {message}")


class ProviderRateLimited(ProviderError):
    """The provider throttled us; ``retry_after`` is how long it asked us to wait, if it said."""

    http_status = 429
    transient = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        status_code: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, provider=provider, model=model, status_code=status_code)


class ProviderUnavailable(ProviderError):
    """The provider is down or overloaded (5xx, 529)."""

    http_status = 503
    transient = True


class ProviderTimeout(ProviderError):
    """The provider was too slow; ``kind`` says which limit fired.

    ``connect``: no connection; ``first_token``: a stream connected but sent
    no first content chunk in time; ``idle``: a stream stalled between chunks;
    ``total``: the whole answer took too long (the only limit on a non-streamed
    call once connected, since its headers arrive with the finished answer).
    """

    http_status = 504
    transient = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        kind: str,
        timeout: float,
    ) -> None:
        self.kind = kind
        self.timeout = timeout
        super().__init__(message, provider=provider, model=model)


class ProviderConnectionError(ProviderError):
    """The connection failed: refused, reset, or closed before any response."""

    http_status = 502
    transient = True


class StreamInterrupted(ProviderError):
    """A stream broke or stalled after part of the answer was delivered.

    ``delivered_text`` is everything the caller already received, so a
    router can continue the answer elsewhere instead of starting over.
    """

    http_status = 502
    transient = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None = None,
        delivered_text: str,
        delivered_chunks: int,
    ) -> None:
        self.delivered_text = delivered_text
        self.delivered_chunks = delivered_chunks
        super().__init__(
            f"{message} after {delivered_chunks} chunk(s), {len(delivered_text)} characters",
            provider=provider,
            model=model,
        )


class MalformedResponse(ProviderError):
    """The provider answered something that is not a valid response of its API."""

    http_status = 502


class ContextLengthExceeded(ProviderError):
    """The request is longer than the model's context window; a larger model may take it."""

    http_status = 400


class ContentPolicyViolation(ProviderError):
    """The provider refused the request or the answer on safety grounds.

    Not retried and not routed to another model unless the caller opts in:
    routing around a safety decision must be a deliberate choice.
    """

    http_status = 400


class AuthenticationFailed(ProviderError):
    """The provider rejected our credentials (401/403); check the API key."""

    http_status = 502


class ProviderBadRequest(ProviderError):
    """The provider rejected the request as invalid (a 4xx other than the ones above)."""

    http_status = 400
