"""The four ways an LLM call is too slow, each with its own limit.

One number cannot describe a model call. Connecting should take milliseconds;
a large model may think for twenty seconds before its first token and then
stream for minutes; a stream that has gone quiet for thirty seconds in the
middle of an answer has stalled, even though the call as a whole is young.
So a provider watches four limits, and the error it raises
(:class:`~bastion.models._errors.ProviderTimeout`) names the one that fired
in ``kind``, because each calls for a different reaction: a connect timeout
says the host is unreachable, a first-token timeout says the model accepted
the request and is not answering (move to another model now), an idle
timeout says the answer broke midway (continue it elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion._core.validate import optional_positive_number

__all__ = ["ModelTimeouts"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelTimeouts:
    """Time limits for one model call, in seconds; None switches a limit off.

    ``connect``: opening the TCP (and TLS) connection. ``first_token``: from
    the request being sent to the response headers (a non-streamed call) or
    to the first chunk that carries part of the answer (a stream).
    ``idle``: the longest quiet gap while reading a response, between stream
    chunks or while the body of a non-streamed answer arrives. ``total``:
    the whole call, from the first byte sent to the last byte read.
    """

    connect: float | None = 10.0
    first_token: float | None = 30.0
    idle: float | None = 30.0
    total: float | None = 600.0

    def __post_init__(self) -> None:
        for option in ("connect", "first_token", "idle", "total"):
            value = optional_positive_number(
                getattr(self, option),
                f"ModelTimeouts.{option}",
                unit="seconds",
                none="for no limit",
            )
            object.__setattr__(self, option, value)
