"""The gateway's two kinds of answer: JSON, and a stream whose clean-up always runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from cortex_core.wire import encode

__all__ = ["JSON", "NODE_HEADER", "REQUEST_ID_HEADER", "ClosingStream", "json_response"]

JSON = "application/json"
NODE_HEADER = "x-cortex-node"
"""On every answer a neuron took part in: which one."""
REQUEST_ID_HEADER = "x-request-id"


def json_response(
    value: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``value`` (a wire struct, or plain dicts and lists) encoded as JSON."""
    return Response(encode(value), status_code=status, media_type=JSON, headers=headers)


class ClosingStream(StreamingResponse):
    """A server-sent-event stream whose ``done`` runs once, however the response ends.

    The clean-up lives in the response (not the body iterator), so it also
    runs for a client gone before the first chunk, when the iterator never
    starts; the iterator is closed first.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        headers: Mapping[str, str],
        done: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(
            chunks, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
        )
        self._chunks = chunks
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            finally:
                await self._done()
