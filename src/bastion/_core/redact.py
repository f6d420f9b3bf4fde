"""Keeping secrets out of messages.

Store and provider URLs may carry a password (``postgresql://app:s3cret@db/x``).
Error messages, logs and CLI output name the URL so a user can see which one
is wrong -- through this function, so the password never appears with it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (and otherwise unchanged)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
