"""The gateway's two kinds of answer: JSON, and a stream whose clean-up always runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import Response
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


class ClosingStream(Response):
    """A server-sent-event stream whose ``done`` runs once, however the response ends.

    The clean-up lives in the response (not the body iterator), so it also
    runs for a client gone before the first chunk, when the iterator never
    starts; the iterator is closed first. A client that disconnects cancels
    the stream where it waits (for the neuron, or to send), so the upstream
    request is dropped at once. This is Starlette's ``StreamingResponse``
    without its task group per stream: one watcher task, and each chunk sent
    as it comes.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        headers: Mapping[str, str],
        done: Callable[[], Awaitable[None]],
        *,
        slow_s: float | None = None,
        on_slow: Callable[[], object] | None = None,
    ) -> None:
        """With ``slow_s``, a client that takes longer to accept a chunk is dropped.

        Nothing is buffered for it: the stream ends there (``on_slow`` is told),
        the connection is closed, and ``done`` runs.
        """
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache"})
        self._chunks = chunks
        self._done = done
        self._slow_s = slow_s
        self._on_slow = on_slow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"sending": True, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            state["gone"] = True
            if state["sending"]:
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            try:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                async for chunk in self._chunks:
                    body = {"type": "http.response.body", "body": chunk, "more_body": True}
                    if self._slow_s is None:
                        await send(body)
                        continue
                    try:
                        async with asyncio.timeout(self._slow_s):
                            await send(body)
                    except TimeoutError:
                        if self._on_slow is not None:
                            self._on_slow()
                        return  # unfinished: the server closes the connection
                state["sending"] = False
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except asyncio.CancelledError:
                if not state["gone"]:
                    raise
                task.uncancel()
            except OSError:  # a server that says so when the client is gone (ASGI 2.4)
                pass
        finally:
            state["sending"] = False
            watcher.cancel()
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            finally:
                await self._done()
