"""An OpenAI chunk stream relayed as an Anthropic Messages stream: the chunk loop.

The stream opens with ``message_start`` at once; while the answer has not
started (an empty chunk: the model still loading) a ``ping`` goes out; each
upstream SSE event is translated by the :class:`StreamTranslator` and metered
from the chunk it decoded; the message ends with ``[DONE]``, or when the
upstream stream ends without one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from cortex_gateway.metering import Meter
from cortex_gateway.sse import SseParser
from cortex_gateway.translate.anthropic.stream import StreamTranslator, sse_event

__all__ = ["PING", "relay"]

PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def _translate(
    events: SseParser, chunk: bytes, translator: StreamTranslator, meter: Meter
) -> bytes:
    """The Anthropic events of one upstream chunk (up to the stream's end, if it is in it)."""
    now = time.monotonic()
    out = []
    for event in events.feed(chunk):
        if event.data is None:
            continue
        translated, decoded = translator.feed_data(event.data)
        if decoded is not None:
            meter.observe_chunk(decoded, now)
        out += [sse_event(e) for e in translated]
        if translator.done:
            break
    return b"".join(out)


async def relay(
    translator: StreamTranslator, chunks: AsyncIterator[bytes], meter: Meter
) -> AsyncIterator[bytes]:
    """The Anthropic stream of ``chunks`` (OpenAI SSE bytes), metered into ``meter``."""
    for started in translator.start():
        yield sse_event(started)
    events = SseParser()
    async for chunk in chunks:
        if not chunk:
            yield PING
            continue
        if out := _translate(events, chunk, translator, meter):
            yield out
        if translator.done:
            return
    for translated in translator.finish():
        yield sse_event(translated)
