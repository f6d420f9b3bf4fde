"""Token usage: what a model call consumed, in the unit providers bill by.

It lives in the base layer because budgets, rate limits on tokens, pricing and
audit all need it, and none of them should depend on the model layer to get it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Usage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens read and written by one call (or summed over many with ``+``).

    ``cached_tokens`` is the part of ``input_tokens`` served from the
    provider's prompt cache, billed at a lower price; it is included in
    ``input_tokens``, never added on top.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "cached_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                msg = f"Usage.{name} must be a whole number of tokens >= 0, got {value!r}"
                raise ValueError(msg)
        if self.cached_tokens > self.input_tokens:
            msg = (
                f"Usage.cached_tokens ({self.cached_tokens}) cannot exceed input_tokens "
                f"({self.input_tokens}): cached tokens are part of the input"
            )
            raise ValueError(msg)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )
