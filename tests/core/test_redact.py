"""Passwords never leave through a URL in a message."""

from __future__ import annotations

import pytest

from bastion._core.redact import redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("redis://:s3cret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("sqlite:///bastion.db", "sqlite:///bastion.db"),
        ("http://[::1", "<unparseable URL>"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
