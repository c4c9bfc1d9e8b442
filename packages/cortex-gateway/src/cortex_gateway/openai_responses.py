"""Answers of the OpenAI Responses API as they pass: metered, and a failure ended in its terms.

A Responses stream is named events (``event: response.output_text.delta``,
``data: {...}``) that pass as the bytes they came in, cut only at event
boundaries. The metering scans those bytes: a token is a text, reasoning,
refusal or tool-argument delta, and only the events a client must decode
anyway are decoded: ``response.created`` (for its id) and the one that ends
the stream (``response.completed``, ``incomplete`` or ``failed``, for its
usage). A stream that fails after it started ends with ``response.failed``,
carrying the response id the client already has.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from functools import partial

import msgspec

from cortex_core.openai import Usage
from cortex_core.responses_api import ResponseUsage
from cortex_core.wire import encode
from cortex_gateway.errors import GatewayError
from cortex_gateway.metering import Meter, pass_events
from cortex_gateway.sse import SseParser, named_event

__all__ = ["ResponsesStream", "responses_usage"]

_DELTA = re.compile(
    rb'"type"\s*:\s*"response\.(?:output_text|refusal|reasoning_text|reasoning_summary_text'
    rb'|function_call_arguments)\.delta"'
)
"""A token in Responses stream bytes (a quote inside a JSON string is escaped: no false match)."""
_DECODED = re.compile(rb'"type"\s*:\s*"response\.(?:created|completed|incomplete|failed)"')
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


class _Answer(msgspec.Struct):
    id: str = ""
    model: str = ""
    usage: ResponseUsage | None = None


class _Event(msgspec.Struct):
    type: str = ""
    response: _Answer | None = None


_answer = msgspec.json.Decoder(_Answer)
_event = msgspec.json.Decoder(_Event)


def responses_usage(body: bytes) -> Usage | None:
    """The usage of a complete Responses answer, as a chat completion's counts, if it has one."""
    try:
        usage = _answer.decode(body).usage
    except msgspec.DecodeError:
        return None
    return usage.as_usage() if usage is not None else None


class ResponsesStream:
    """One Responses stream on its way to the client: what it said so far, and its failure."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.response_id = ""
        """The id ``response.created`` gave (empty until then)."""
        self.sequence = -1
        """The last ``sequence_number`` passed on."""

    def relay(self, chunks: AsyncIterator[bytes], meter: Meter) -> AsyncIterator[bytes]:
        """Pass the stream's bytes on at event boundaries, metering into ``meter``."""
        return pass_events(chunks, meter, partial(self._scan, meter))

    def _scan(self, meter: Meter, events: bytes, now: float) -> bytes:
        if _DELTA.search(events) is not None:
            meter.token(now)
        if (numbers := _SEQUENCE.findall(events)) and (last := int(numbers[-1])) > self.sequence:
            self.sequence = last
        if _DECODED.search(events) is not None:
            self._decode(events, meter)
        return events

    def _decode(self, events: bytes, meter: Meter) -> None:
        for event in SseParser().feed(events):
            if event.data is None or _DECODED.search(event.data) is None:
                continue
            try:
                response = _event.decode(event.data).response
            except msgspec.DecodeError:
                continue
            if response is None:
                continue
            self.response_id = self.response_id or response.id
            if response.usage is not None:
                meter.usage = response.usage.as_usage()

    def failed(self, error: GatewayError) -> bytes:
        """``response.failed``: the response (its id, if it had one yet) with the error."""
        self.sequence += 1
        response = {
            "id": self.response_id or "resp_failed",
            "object": "response",
            "created_at": int(time.time()),
            "model": self.model,
            "status": "failed",
            "output": [],
            "error": {"code": error.openai().error.type, "message": error.message},
            "usage": None,
        }
        event = {"type": "response.failed", "sequence_number": self.sequence, "response": response}
        return named_event("response.failed", encode(event))
