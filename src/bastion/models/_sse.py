"""Server-sent events, read leniently where that is safe and strictly where it matters.

Both OpenAI and Anthropic stream answers as ``text/event-stream``: lines of
``field: value``, one blank line ending each event. This parser turns raw
bytes, cut wherever the network cut them, into whole events. It does no I/O,
so every provider shares it and tests feed it bytes directly.

*Lenient*: an event whose bytes are not UTF-8 is dropped and counted in
:attr:`SSEParser.skipped` instead of failing the whole answer -- one garbled
event should not cost the user the rest of a long reply. Providers do the
same for an event whose data is not JSON, and report each skip as a
:class:`StreamEventSkipped` event.

*Strict about cuts*: an event is only ever dispatched once its terminating
blank line has arrived. Whatever is left when the bytes end is an incomplete
event; it is never guessed at, and :attr:`SSEParser.truncated` says it was
there. Whether a stream that ends early is a finished answer is the
provider's call (it is, when a finish reason came first).
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion._core.events import Event

__all__ = ["SSEEvent", "SSEParser", "StreamEventSkipped", "StreamTooLarge"]

_MAX_EVENT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type (``"message"`` unless the server named one) and data."""

    data: str
    event: str = "message"
    id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEventSkipped(Event):
    """A provider dropped one undecodable stream event and went on reading the rest.

    ``position`` counts the stream's events from 0; ``reason`` says what was wrong
    (never the event's content, which may hold user data).
    """

    model: str
    position: int
    reason: str


class StreamTooLarge(ValueError):
    """One event grew past the parser's limit without ending: the stream is not SSE."""


class SSEParser:
    """Feed it bytes as they arrive; it hands back every event completed so far.

    >>> parser = SSEParser()
    >>> parser.feed(b'data: {"a"')
    []
    >>> parser.feed(b': 1}\\n\\n')
    [SSEEvent(data='{"a": 1}', event='message', id=None)]
    """

    __slots__ = ("_buffer", "_data", "_event", "_id", "_max", "events", "skipped")

    def __init__(self, *, max_event_bytes: int = _MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._id: bytes | None = None
        self._max = max_event_bytes
        self.events = 0
        """Events dispatched so far (skipped ones not included)."""
        self.skipped = 0
        """Events dropped because their bytes were not UTF-8."""

    @property
    def truncated(self) -> bool:
        """Whether an event had begun but not ended: the bytes stopped mid-event."""
        return bool(self._data or self._event is not None or self._buffer.strip(b"\r\n"))

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk`` (any slice of the stream) and return the events it completed."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if buffer.endswith(b"\r"):
            # Maybe the first half of a CRLF: wait for the next byte to know.
            buffer, self._buffer = buffer[:-1], b"\r"
        else:
            self._buffer = b""
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        rest = lines.pop()
        if rest:
            if len(rest) > self._max:
                msg = f"a stream line grew past {self._max} bytes without ending"
                raise StreamTooLarge(msg)
            self._buffer = rest + self._buffer
        found: list[SSEEvent] = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    found.append(event)
            elif line[0] != 58:  # lines starting with ":" are comments (keep-alives)
                self._field(line)
        return found

    def close(self) -> list[SSEEvent]:
        """The bytes have ended: a line end held back (a lone CR) completes its event, if any."""
        if self._buffer == b"\r":
            self._buffer = b""
            return self.feed(b"\n")
        return []

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            if len(self._data) > 1 and sum(map(len, self._data)) > self._max:
                msg = f"a stream event grew past {self._max} bytes without ending"
                raise StreamTooLarge(msg)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            self._id = value
        # "retry" and unknown fields carry nothing a model stream needs.

    def _dispatch(self) -> SSEEvent | None:
        data, event, event_id = self._data, self._event, self._id
        self._data, self._event = [], None
        if not data:
            return None  # an event with no data is not dispatched
        try:
            text = data[0].decode() if len(data) == 1 else b"\n".join(data).decode()
            name = event.decode() if event else "message"
            ident = event_id.decode() if event_id is not None else None
        except UnicodeDecodeError:
            self.skipped += 1
            return None
        self.events += 1
        return SSEEvent(text, name, ident)
