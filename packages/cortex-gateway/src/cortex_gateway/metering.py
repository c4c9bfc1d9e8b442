"""What each request cost: tokens, time to first token, decode rate, read off the answer.

Non-streaming answers are read once they are complete. Streams are watched
event by event as they pass, never held back; the usage chunk the gateway
asked for on the client's behalf is taken out again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec

from cortex_core.openai import Usage
from cortex_gateway.sse import SseParser

__all__ = ["Meter", "meter_stream", "usage_of"]


class _UsageView(msgspec.Struct):
    usage: Usage | None = None


class _DeltaView(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None


class _ChoiceView(msgspec.Struct):
    delta: _DeltaView | None = None
    text: str | None = None


class _ChunkView(msgspec.Struct):
    choices: list[_ChoiceView] = msgspec.field(default_factory=list)
    usage: Usage | None = None


_usage = msgspec.json.Decoder(_UsageView)
_chunk = msgspec.json.Decoder(_ChunkView)


def usage_of(body: bytes) -> Usage | None:
    """The ``usage`` of a complete OpenAI answer, if it has one."""
    try:
        return _usage.decode(body).usage
    except msgspec.DecodeError:
        return None


@dataclass
class Meter:
    """Measurements of one request, filled in as its answer passes."""

    started: float
    first_byte: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    usage: Usage | None = None

    @property
    def ttft(self) -> float | None:
        """Time to first token (streams) or to the first byte (complete answers)."""
        first = self.first_token if self.first_token is not None else self.first_byte
        return None if first is None else first - self.started

    @property
    def decode_rate(self) -> float | None:
        """Completion tokens per second from the first token to the last."""
        if self.usage is None or self.first_token is None or self.last_token is None:
            return None
        span = self.last_token - self.first_token
        tokens = self.usage.completion_tokens - 1  # the first token opens the span
        return tokens / span if span > 0 and tokens > 0 else None

    def observe(self, data: bytes, now: float) -> bool:
        """Read one stream event's ``data`` seen at ``now``; true if it is a usage-only chunk."""
        try:
            view = _chunk.decode(data)
        except msgspec.DecodeError:
            return False
        if _has_token(view):
            self.first_token = self.first_token or now
            self.last_token = now
        if view.usage is not None:
            self.usage = view.usage
            return not view.choices
        return False


def _has_token(chunk: _ChunkView) -> bool:
    for choice in chunk.choices:
        if choice.text:
            return True
        delta = choice.delta
        if delta is not None and (
            delta.content or delta.reasoning or delta.reasoning_content or delta.tool_calls
        ):
            return True
    return False


async def meter_stream(
    chunks: AsyncIterator[bytes], meter: Meter, *, strip_usage: bool
) -> AsyncIterator[bytes]:
    """Pass SSE bytes through event by event, measuring; drop the usage-only chunk if asked."""
    parser = SseParser()
    async for chunk in chunks:
        now = time.monotonic()
        if meter.first_byte is None:
            meter.first_byte = now
        out = []
        for event in parser.feed(chunk):
            data = event.data
            if data is not None and data != b"[DONE]" and meter.observe(data, now) and strip_usage:
                continue  # a usage chunk the client did not ask for: the gateway did
            out.append(event.raw)
        if out:
            yield b"".join(out)
    if rest := parser.rest():
        yield rest
