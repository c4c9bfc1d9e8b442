"""A Responses stream as it passes: bytes kept, tokens and usage read, a failure in its terms."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from cortex_core.scripted import response_events
from cortex_gateway.bodies import ResponsesView
from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.metering import Meter
from cortex_gateway.openai_responses import ResponsesStream, responses_usage
from cortex_gateway.sse import SseParser

REQUEST = {"model": "m", "input": "What is the capital of France?"}
EVENTS = b"".join(response_events(REQUEST, "The capital of France is Paris."))


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        yield data[start:cut]
        start = cut


def relay(stream: ResponsesStream, data: bytes, cuts: list[int], meter: Meter) -> bytes:
    """Everything the stream passes on when ``data`` arrives cut at ``cuts``."""

    async def run() -> bytes:
        return b"".join([piece async for piece in stream.relay(_chunks(data, cuts), meter)])

    return asyncio.run(run())


@given(st.lists(st.integers(min_value=1, max_value=len(EVENTS) - 1), max_size=12))
def test_the_stream_passes_as_it_came_however_it_is_cut(cuts: list[int]) -> None:
    """Bytes out are bytes in; the response id, last number, tokens and usage are read."""
    meter = Meter(started=0.0)
    stream = ResponsesStream("m")
    assert relay(stream, EVENTS, cuts, meter) == EVENTS
    assert stream.response_id == "resp_scripted"
    assert stream.sequence == EVENTS.count(b"event: ") - 1
    assert meter.first_token is not None
    assert meter.usage is not None
    assert (meter.usage.prompt_tokens, meter.usage.completion_tokens) == (6, 6)


def test_text_that_mentions_a_delta_is_no_token() -> None:
    """Only a delta event is a token: its type quoted inside a text is not."""
    sneaky = (
        b'event: response.in_progress\ndata: {"type":"response.in_progress",'
        b'"text":"\\"type\\":\\"response.output_text.delta\\""}\n\n'
    )
    meter = Meter(started=0.0)
    relay(ResponsesStream("m"), sneaky, [], meter)
    assert meter.first_token is None


def test_a_failure_is_response_failed_with_the_id_and_the_next_number() -> None:
    """``response.failed`` carries the response id seen, the next number and the error."""
    stream = ResponsesStream("m")
    cut = EVENTS.index(b"event: response.output_text.delta")
    relay(stream, EVENTS[:cut], [], Meter(started=0.0))
    error = GatewayError(502, ErrorKind.UPSTREAM, "the model server stopped answering")
    (event,) = SseParser().feed(stream.failed(error))
    assert event.raw.startswith(b"event: response.failed\n")
    assert event.data is not None
    failed = json.loads(event.data)
    assert failed["type"] == "response.failed"
    assert failed["sequence_number"] == 4
    assert failed["response"]["id"] == "resp_scripted"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "upstream_error",
        "message": "the model server stopped answering",
    }


def test_a_failure_before_any_event_still_names_a_response() -> None:
    """A stream that failed before response.created ends with a failed response all the same."""
    failed = json.loads(
        ResponsesStream("m")
        .failed(GatewayError(504, ErrorKind.TIMEOUT, "slow"))
        .split(b"data: ")[1]
    )
    assert failed["sequence_number"] == 0
    assert failed["response"]["id"]
    assert failed["response"]["error"]["code"] == "timeout"


def test_the_usage_of_a_whole_answer() -> None:
    """A complete answer's usage in chat terms; none when it has none or is not JSON."""
    body = json.dumps(
        {
            "id": "r",
            "usage": {
                "input_tokens": 7,
                "output_tokens": 2,
                "input_tokens_details": {"cached_tokens": 5},
            },
        }
    ).encode()
    usage = responses_usage(body)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 2, 9)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert responses_usage(b'{"id": "r"}') is None
    assert responses_usage(b"<html>") is None


def test_the_cache_key_leads_the_prompt_in_whole_blocks() -> None:
    """A prompt_cache_key is padded to whole blocks before the instructions and input."""
    instructions, given = msgspec.Raw(b'"Be brief."'), msgspec.Raw(b'"hi"')
    keyed = ResponsesView(
        model="m", prompt_cache_key="conv-1", instructions=instructions, input=given
    )
    rendered = keyed.rendered(64)
    assert len(rendered) == 64 + len(b'"Be brief.""hi"')
    assert rendered.endswith(b'"Be brief.""hi"')
    other = ResponsesView(model="m", prompt_cache_key="conv-2")
    assert other.rendered(64)[:64] != rendered[:64]
    plain = ResponsesView(model="m", instructions=instructions, input=given)
    assert plain.rendered(64) == b'"Be brief.""hi"'
