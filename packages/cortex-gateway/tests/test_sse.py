"""The gateway's one SSE parser (every upstream stream) and the Anthropic event writer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from translate_support import RECORDED, payloads, recorded_lines, sse_bytes

from cortex_core import anthropic as an
from cortex_gateway.sse import EventFramer, EventTooLarge, SseParser
from cortex_gateway.translate.anthropic import sse_event


def test_sse_event_writes_event_and_data_lines() -> None:
    """Each event is framed as `event: <type>`, `data: <json>` and a blank line."""
    assert sse_event(an.Ping()) == b'event: ping\ndata: {"type":"ping"}\n\n'
    delta = an.ContentBlockDelta(index=2, delta=an.TextDelta(text="hé"))
    assert sse_event(delta) == (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":2,'
        b'"delta":{"type":"text_delta","text":"h\xc3\xa9"}}\n\n'
    )


CASES = [
    ([b"data: a\n\ndata: b\n\n"], ["a", "b"]),
    ([b"data: a\r\n\r\ndata: b\r\n\r\n"], ["a", "b"]),
    ([b"data: a\r\rdata: b\r\r"], ["a", "b"]),
    ([b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"], ["a", "b"]),
    ([b"data: a\r", b"\ndata: b\n\n"], ["a\nb"]),
    ([b": comment\nevent: x\nid: 7\nretry: 10\ndata: a\n\n"], ["a"]),
    ([b'data: {\ndata:  "k": 1\ndata: }\n\n'], ['{\n "k": 1\n}']),
    ([b"data:a\ndata\n\n"], ["a\n"]),
    ([b"\xef\xbb\xbfdata: a\n\n"], ["a"]),
    ([b"\xef", b"\xbb\xbf", b"data: a\n\n"], ["a"]),
    ([b"data: caf\xc3", b"\xa9\n\n"], ["caf\u00e9"]),
    ([b"\n\n: only a comment\n\n"], []),
    ([b"data: a\n\ndata: [DONE]\n\ndata: b\n\n"], ["a", "[DONE]", "b"]),
    ([b"data: [DONE]\r\n\r\n"], ["[DONE]"]),
    ([b"data: a\n\ndata: unfinished\n"], ["a"]),
    (["data: a\u2028b\n\n".encode()], ["a\u2028b"]),
    ([b"\n"], []),
    ([b"\xef\xbb", b"\xbf\n", b"data: a\n\n"], ["a"]),
    ([b"data: a\n\n", b"\n", b"data: b\n\n"], ["a", "b"]),
    ([b"data: a\n\n", b"\xef\xbb\xbf\r\n\r\n"], ["a"]),
]


@pytest.mark.parametrize(("pieces", "expected"), CASES)
def test_parser_cases(pieces: list[bytes], expected: list[str]) -> None:
    """Line endings, comments, fields, multi-line data, BOM, UTF-8 cuts, unfinished events."""
    parser = SseParser()
    assert [p for piece in pieces for p in payloads(parser, piece)] == expected


@pytest.mark.parametrize(("pieces", "expected"), CASES)
def test_raw_events_and_rest_give_back_every_byte(pieces: list[bytes], expected: list[str]) -> None:
    """A pass-through forwards exactly what came: the raw events and the rest are the input."""
    parser = SseParser()
    raw = b"".join(event.raw for piece in pieces for event in parser.feed(piece))
    assert raw + parser.rest() == b"".join(pieces)


def test_an_event_is_reported_as_soon_as_its_blank_line_arrives() -> None:
    """A lone CR ends a line at once; an LF that follows it in the next chunk is skipped."""
    parser = SseParser()
    assert [e.text for e in parser.feed(b"data: a\r\r")] == ["a"]
    assert [e.raw for e in parser.feed(b"\ndata: b\n\n")] == [b"\ndata: b\n\n"]


def test_events_without_data_are_reported_with_none() -> None:
    """Comments and stray blank lines come back as events without data, to be passed on."""
    parser = SseParser()
    events = parser.feed(b": keep-alive\n\n\ndata: x\n\n")
    assert [(e.raw, e.data) for e in events] == [
        (b": keep-alive\n\n", None),
        (b"\n", None),
        (b"data: x\n\n", b"x"),
    ]


def delicate_cuts(data: bytes) -> list[int]:
    """Every place where a cut can matter: near a line break, inside a multi-byte character."""
    return [
        cut
        for cut in range(len(data) + 1)
        if any(b in b"\r\n" or b >= 0x80 for b in data[max(cut - 2, 0) : cut + 2])
    ]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_cut_anywhere_delicate(name: str) -> None:
    """Cut in two near every line break and inside every UTF-8 character: the same payloads."""
    lines = recorded_lines(name)
    data = sse_bytes(lines, "vllm")
    expected = [*lines, "[DONE]"]
    for cut in delicate_cuts(data):
        parser = SseParser()
        assert payloads(parser, data[:cut]) + payloads(parser, data[cut:]) == expected, cut


@given(
    name=st.sampled_from(sorted(RECORDED)),
    style=st.sampled_from(["vllm", "crlf", "multiline"]),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=12),
)
def test_any_framing_in_any_fragments_parses_the_same(
    name: str, style: str, cuts: list[float]
) -> None:
    """VLLM's framing, CRLF with comments, or multi-line data, cut anywhere: the same payloads."""
    data = sse_bytes(recorded_lines(name), style)
    points = sorted({int(cut * len(data)) for cut in cuts})
    fragments = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    parser = SseParser()
    whole = SseParser()
    assert [p for f in fragments for p in payloads(parser, f)] == payloads(whole, data)


@pytest.mark.parametrize(("pieces", "expected"), CASES)
def test_framer_passes_whole_events_as_they_came(pieces: list[bytes], expected: list[str]) -> None:
    """The framer's output is the parser's events' raw bytes, cut at event boundaries only."""
    framer, parser = EventFramer(), SseParser()
    framed = b"".join(framer.feed(piece) for piece in pieces)
    raw = b"".join(event.raw for piece in pieces for event in parser.feed(piece))
    assert framed == raw
    assert framed + framer.rest() == b"".join(pieces)


@given(st.lists(st.binary(max_size=40), max_size=12), st.data())
def test_framer_is_the_parser_cut_anywhere(parts: list[bytes], data: st.DataObject) -> None:
    """Any bytes cut anywhere: all of them come out, whole events first, the rest at the end."""
    stream = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer, parser = EventFramer(), SseParser()
    framed = b"".join(framer.feed(piece) for piece in pieces)
    raw = b"".join(event.raw for piece in pieces for event in parser.feed(piece))
    assert framed == raw
    assert framed + framer.rest() == stream


def test_framer_bounds_an_event_without_end() -> None:
    """An event that never ends is refused past the bound, on both paths."""
    framer = EventFramer(max_event_bytes=64)
    assert framer.feed(b"data: a\n\n") == b"data: a\n\n"
    with pytest.raises(EventTooLarge):
        framer.feed(b"data: " + b"x" * 100)
    crlf = EventFramer(max_event_bytes=64)
    crlf.feed(b"data: a\r\n\r\n")
    with pytest.raises(EventTooLarge):
        crlf.feed(b"data: " + b"x" * 100)
