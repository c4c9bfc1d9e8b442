"""Streams measured by scanning their bytes: tokens, time to first token, the usage chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cortex_core.openai import ChatCompletionChunk
from cortex_core.wire import decode
from cortex_gateway.metering import Meter, meter_stream

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"Paris"}}]}\n\n'
QUOTED = b'data: {"choices":[{"index":0,"delta":{"content":"say \\"content\\":\\"x"}}]}\n\n'
TOOL = b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c"}]}}]}\n\n'
TEXT = b'data: {"choices":[{"index":0,"text":"Par","finish_reason":null}]}\n\n'
REASONING = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}\n\n'
END = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
USAGE = (
    b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\n\n'
)
DONE = b"data: [DONE]\n\n"
HEAD = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'


@pytest.mark.parametrize(
    ("events", "token"),
    [
        (ROLE, False),
        (END, False),
        (USAGE, False),
        (DONE, False),
        (TOKEN, True),
        (TOOL, True),
        (TEXT, True),
        (REASONING, True),
        (b'data: {"choices": [{"delta": {"content" : "spaced"}}]}\n\n', True),
    ],
)
def test_a_token_is_found_in_the_bytes(events: bytes, token: bool) -> None:
    """Non-empty text, reasoning or a tool call is a token; roles, ends and usage are not."""
    meter = Meter(started=0.0)
    meter.scan(events, 1.0, strip_usage=False)
    assert (meter.first_token == 1.0) is token


async def _relay(pieces: list[bytes], *, strip_usage: bool) -> tuple[bytes, list[bytes], Meter]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    meter = Meter(started=0.0)
    out = [chunk async for chunk in meter_stream(source(), meter, strip_usage=strip_usage)]
    return b"".join(out), out, meter


@pytest.mark.anyio
async def test_usage_is_read_and_taken_out_when_the_gateway_asked() -> None:
    """The usage chunk counts the tokens; it goes on only if the client asked for it."""
    stream = [ROLE, TOKEN[:20], TOKEN[20:] + END, USAGE[:30], USAGE[30:] + DONE]
    whole = b"".join(stream)
    kept, _, meter = await _relay(stream, strip_usage=False)
    assert kept == whole
    assert meter.usage is not None
    assert meter.usage.completion_tokens == 3
    stripped, chunks, meter = await _relay(stream, strip_usage=True)
    assert stripped == ROLE + TOKEN + END + DONE
    assert meter.usage is not None
    assert meter.usage.prompt_tokens == 9
    assert all(chunk for chunk in chunks)  # nothing empty is sent on


@pytest.mark.anyio
async def test_text_that_quotes_json_is_not_a_token_by_itself() -> None:
    """Escaped quotes inside content cannot fake a field; the content itself is a token."""
    meter = Meter(started=0.0)
    meter.scan(ROLE + END, 1.0, strip_usage=False)
    assert meter.first_token is None
    meter.scan(QUOTED, 2.0, strip_usage=False)
    assert meter.first_token == 2.0


@pytest.mark.anyio
async def test_a_usage_lookalike_in_text_is_passed_on() -> None:
    """Content mentioning usage is not mistaken for the usage chunk."""
    fake = b'data: {"choices":[{"index":0,"delta":{"content":"\\"usage\\":{"}}]}\n\n'
    out, _, meter = await _relay([fake, DONE], strip_usage=True)
    assert out == fake + DONE
    assert meter.usage is None


def test_decoded_chunks_are_metered_alike() -> None:
    """The Anthropic route's decoded chunks give the same token times and usage."""
    meter = Meter(started=0.0)
    for at, event in enumerate([ROLE, TOKEN, END, USAGE]):
        complete = HEAD + event.removeprefix(b"data: {")
        meter.observe_chunk(decode(complete[6:-2], ChatCompletionChunk), float(at))
    assert (meter.first_token, meter.last_token) == (1.0, 1.0)
    assert meter.usage is not None
    assert meter.usage.total_tokens == 12
