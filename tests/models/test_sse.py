"""The SSE parser: whole events only, wherever the network cut the bytes; bad events skipped."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.models._sse import SSEEvent, SSEParser, StreamTooLarge

STREAM = (
    b'data: {"n": 1}\n\n'
    b": keep-alive comment\n\n"
    b"event: content_block_delta\n"
    b"id: 7\n"
    b'data: {"n": 2}\n\n'
    b"data: first line\n"
    b"data: second line\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"n": 1}'),
    SSEEvent('{"n": 2}', "content_block_delta", "7"),
    SSEEvent("first line\nsecond line", "message", "7"),
    SSEEvent("[DONE]", "message", "7"),
]


def parse_all(*chunks: bytes) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    return events, parser


def test_a_whole_stream_in_one_piece() -> None:
    events, parser = parse_all(STREAM)
    assert events == EXPECTED
    assert parser.events == 4
    assert parser.skipped == 0
    assert not parser.truncated


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    events, parser = parse_all(*(STREAM[i : i + 1] for i in range(len(STREAM))))
    assert events == EXPECTED
    assert not parser.truncated


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    events, _ = parse_all(*chunks)
    assert events == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_every_line_ending_the_spec_allows(newline: bytes) -> None:
    raw = STREAM.replace(b"\n", newline)
    whole, _ = parse_all(raw)
    bytewise, parser = parse_all(*(raw[i : i + 1] for i in range(len(raw))))
    assert whole == EXPECTED
    assert bytewise == EXPECTED
    assert not parser.truncated


def test_a_carriage_return_at_a_chunk_edge_is_not_a_blank_line() -> None:
    events, _ = parse_all(b"data: a\r", b"\ndata: b\r\n\r\n")
    assert events == [SSEEvent("a\nb")]


def test_field_details() -> None:
    events, _ = parse_all(
        b"data:no space\n\n"  # the space after the colon is optional
        b"data:  two spaces\n\n"  # only one space is removed
        b"data\n\n"  # a field with no colon has an empty value
        b"event: named\n\n"  # an event with no data is not dispatched
        b"retry: 100\nunknown: x\ndata: kept\n\n"
    )
    assert [e.data for e in events] == ["no space", " two spaces", "", "kept"]
    assert events[-1].event == "message"


def test_a_multibyte_character_split_across_chunks_survives() -> None:
    raw = 'data: {"text": "héllo wörld ✓"}\n\n'.encode()
    cut = raw.index("✓".encode()) + 1
    events, parser = parse_all(raw[:cut], raw[cut:])
    assert events == [SSEEvent('{"text": "héllo wörld ✓"}')]
    assert parser.skipped == 0


def test_an_event_that_is_not_utf8_is_skipped_and_counted() -> None:
    events, parser = parse_all(b"data: one\n\ndata: \xff\xfe broken\n\ndata: three\n\n")
    assert [e.data for e in events] == ["one", "three"]
    assert parser.skipped == 1
    assert parser.events == 2


@pytest.mark.parametrize(
    ("tail", "truncated"),
    [
        (b"", False),
        (b"data: half an ev", True),  # a line without its newline
        (b"data: whole line, no blank line after\n", True),  # an event without its end
        (b"event: only a name\n", True),
        (b"\r", False),  # a lone CR held back at the end is no event
    ],
)
def test_a_cut_is_reported_never_dispatched(tail: bytes, truncated: bool) -> None:
    events, parser = parse_all(b"data: complete\n\n", tail)
    assert events == [SSEEvent("complete")]
    assert parser.truncated is truncated


def test_close_without_a_held_line_end_adds_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.close() == []
    assert parser.truncated


def test_an_endless_line_is_refused() -> None:
    parser = SSEParser(max_event_bytes=64)
    with pytest.raises(StreamTooLarge):
        parser.feed(b"data: " + b"x" * 100)


def test_an_endless_event_is_refused() -> None:
    parser = SSEParser(max_event_bytes=64)
    with pytest.raises(StreamTooLarge):
        parser.feed(b"data: " + b"x" * 40 + b"\n" + b"data: " + b"y" * 40 + b"\n")
