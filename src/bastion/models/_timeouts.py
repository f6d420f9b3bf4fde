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
timeout says the answer broke midway (continue it elsewhere). Only a stream
can tell the two middle cases apart: a non-streamed answer shows nothing
until it is complete, so it is bounded by the connect and total limits alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion._core.validate import optional_positive_number

__all__ = ["ModelTimeouts"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelTimeouts:
    """Time limits for one model call, in seconds; None switches a limit off.

    ``connect``: from the start of the call to a ready connection (pooled or
    new, TLS included). ``total``: the whole call, from its start to the last
    byte read (a stream's consumer's time included).

    The other two apply to streams only. ``first_token``: from the connection
    being ready to the first event that carries part of the answer (text, a
    tool call or a finish reason); the headers arriving does not stop it.
    ``idle``: after that, the longest wait for the next bytes of the stream;
    it restarts at every wait, so a consumer busy with a chunk is not counted.

    A non-streamed call is bounded by ``connect`` and ``total`` alone: the
    provider sends its headers only once the whole answer is written, so the
    wait for headers and body is the model's generation time, and a long
    answer is no sign of a silent provider. Give a call that must fail fast
    a smaller ``total``, or stream it.
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
