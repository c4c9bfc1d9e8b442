"""What each request cost: tokens, time to first token, decode rate, read off the answer.

Non-streaming answers are read once they are complete. OpenAI streams pass as
the bytes they came in, cut only at event boundaries, and are measured by
scanning those bytes: a token is a non-empty ``content``/``text``/reasoning
string or a tool call, and only an event holding a ``usage`` object (one per
stream) is decoded, to count the tokens and, when the gateway asked for it on
the client's behalf, to take it out again. Nothing else is decoded, so a
relayed chunk costs a few byte searches. (The Anthropic route decodes every
chunk anyway, to translate it, and meters the decoded chunks.)
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

import msgspec

from cortex_core.openai import ChatCompletionChunk, Usage
from cortex_gateway.sse import EventFramer, SseParser

__all__ = ["Meter", "meter_stream", "pass_events", "usage_of"]

_TOKEN = re.compile(
    rb'"(?:content|text|reasoning_content|reasoning|refusal)"\s*:\s*"(?!")'
    rb'|"tool_calls"\s*:\s*\[\s*\{'
)
"""A token in OpenAI stream bytes: a non-empty text field, or a tool call.

Inside a JSON string every quote is escaped, so text that merely mentions
``"content":"`` cannot match."""
_USAGE = re.compile(rb'"usage"\s*:\s*\{')


class _UsageView(msgspec.Struct):
    usage: Usage | None = None


class _ChunkView(msgspec.Struct):
    choices: list[msgspec.Raw] = msgspec.field(default_factory=list)
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
    generated: bool = True
    """False for an answer that generated nothing (embeddings): it has no time to first token."""

    @property
    def ttft(self) -> float | None:
        """Time to first token (streams) or to the first byte (complete answers)."""
        if not self.generated:
            return None
        first = self.first_token if self.first_token is not None else self.first_byte
        return None if first is None else first - self.started

    def token(self, now: float) -> None:
        """A token passed at ``now``: the first one's time, and the last one's so far."""
        if self.first_token is None:
            self.first_token = now
        self.last_token = now

    @property
    def decode_rate(self) -> float | None:
        """Completion tokens per second from the first token to the last."""
        if self.usage is None or self.first_token is None or self.last_token is None:
            return None
        span = self.last_token - self.first_token
        tokens = self.usage.completion_tokens - 1  # the first token opens the span
        return tokens / span if span > 0 and tokens > 0 else None

    def scan(self, events: bytes, now: float, *, strip_usage: bool) -> bytes:
        """Measure whole events of an OpenAI stream seen at ``now``; return what goes on.

        That is ``events`` as they came, less a usage-only event when
        ``strip_usage`` (the gateway asked for it, not the client).
        """
        if _TOKEN.search(events) is not None:
            self.token(now)
        if _USAGE.search(events) is None:
            return events
        kept = []
        for event in SseParser().feed(events):
            data = event.data
            if data is not None and b'"usage"' in data and self._usage_only(data) and strip_usage:
                continue  # a usage chunk the client did not ask for: the gateway did
            kept.append(event.raw)
        return b"".join(kept)

    def _usage_only(self, data: bytes) -> bool:
        try:
            view = _chunk.decode(data)
        except msgspec.DecodeError:
            return False
        if view.usage is None:
            return False
        self.usage = view.usage
        return not view.choices

    def observe_chunk(self, chunk: ChatCompletionChunk, now: float) -> None:
        """Measure one decoded stream chunk seen at ``now`` (the Anthropic route's)."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content or delta.refusal or delta.thinking or delta.tool_calls:
                self.token(now)
                return


async def pass_events(
    chunks: AsyncIterator[bytes], meter: Meter, scan: Callable[[bytes, float], bytes]
) -> AsyncIterator[bytes]:
    """Pass SSE bytes through at event boundaries; ``scan`` measures each batch of whole events.

    ``scan`` gets the events and when they arrived, and returns what goes on.
    """
    framer = EventFramer()
    async for chunk in chunks:
        now = time.monotonic()
        if meter.first_byte is None:
            meter.first_byte = now
        events = framer.feed(chunk)
        if events and (events := scan(events, now)):
            yield events
    if rest := framer.rest():
        yield rest


def meter_stream(
    chunks: AsyncIterator[bytes], meter: Meter, *, strip_usage: bool
) -> AsyncIterator[bytes]:
    """Pass SSE bytes through at event boundaries, measuring; drop the usage-only chunk if asked."""
    return pass_events(chunks, meter, partial(meter.scan, strip_usage=strip_usage))
