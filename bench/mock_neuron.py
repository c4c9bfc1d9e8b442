"""A neuron fast enough not to be what a benchmark measures.

It speaks the neuron's management API (``/health``, ``/devices``,
``/models``, ``/models/load``, ``/models/unload``,
``/models/<id>/endpoint``) with two models always ready, ``bench/fast`` and
``bench/paced``, and the OpenAI inference routes (``/v1/chat/completions``,
``/v1/completions``): JSON answers, and SSE streams of ``max_tokens`` token
events (16 if not given), back to back for ``bench/fast`` and ``delay_s``
apart for ``bench/paced``, with the usage chunk when
``stream_options.include_usage`` asks for it. What can be is made once at
start; each token carries the text ``tk``, which the load generator looks for
to time tokens.

    PYTHONPATH=. .venv/bin/python bench/mock_neuron.py --port 18080 [--delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import cast

import msgspec

from bench.http11 import Head, parse_head
from cortex_core.neuron_api import (
    Device,
    DevicesResponse,
    EndpointResponse,
    Health,
    ModelInfo,
    ModelsResponse,
    UnloadResponse,
)
from cortex_core.runtime.loops import run as run_loop
from cortex_core.wire import encode

__all__ = ["FAST", "MODELS", "PACED", "MockNeuron", "serve"]

FAST = "bench/fast"
PACED = "bench/paced"
MODELS = (FAST, PACED)
TOKEN = "tk "
DEFAULT_TOKENS = 16
GIB = 1 << 30


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _Asked(msgspec.Struct):
    model: str = FAST
    max_tokens: int | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


_asked = msgspec.json.Decoder(_Asked)
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_DONE = b"data: [DONE]\n\n"


def _answer(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}


class _Kind:
    """One inference route's answers: the stream's events, and complete answers by length."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            token: dict[str, object] = {"delta": {"content": TOKEN}, "index": 0}
            end: dict[str, object] = {"delta": {}, "index": 0, "finish_reason": "length"}
            self.first = _chunk(
                self.event([{"delta": {"role": "assistant", "content": ""}, "index": 0}])
            )
        else:
            token = {"text": TOKEN, "index": 0}
            end = {"text": "", "index": 0, "finish_reason": "length"}
            self.first = b""
        self.token = _chunk(self.event([{**token, "finish_reason": None}]))
        self.end = _chunk(self.event([end]))
        self._complete: dict[int, bytes] = {}

    def event(self, choices: list[object], **extra: object) -> bytes:
        body = {"id": "cmpl-mock", "object": self.object, "created": self.created, "model": FAST}
        return b"data: " + encode({**body, "choices": choices, **extra}) + b"\n\n"

    def last(self, tokens: int, usage: bool) -> bytes:
        """What ends a stream of ``tokens`` tokens: the finish event, the usage, [DONE]."""
        tail = self.end
        if usage:
            tail += _chunk(self.event([], usage=_usage(tokens)))
        return tail + _chunk(_DONE) + b"0\r\n\r\n"

    def complete(self, tokens: int) -> bytes:
        """The whole answer of ``tokens`` tokens (made once per length)."""
        answer = self._complete.get(tokens)
        if answer is None:
            text = TOKEN * tokens
            if self.chat:
                choice: dict[str, object] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length",
                }
                name = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "finish_reason": "length"}
                name = "text_completion"
            body = {
                "id": "cmpl-mock",
                "object": name,
                "created": self.created,
                "model": FAST,
                "choices": [choice],
                "usage": _usage(tokens),
            }
            answer = self._complete[tokens] = _answer("200 OK", encode(body))
        return answer


class MockNeuron:
    """The answers, made once; :meth:`protocol` serves one connection with them."""

    def __init__(self, host: str, port: int, delay_s: float) -> None:
        self.delays = {FAST: 0.0, PACED: delay_s}
        self.polls = 0
        base = f"http://{host}:{port}"
        now = time.time()
        ready = [
            ModelInfo(
                id=m,
                state="ready",
                devices=[0],
                memory_bytes=2 * GIB,
                loaded_at=now,
                max_model_len=4096,
            )
            for m in MODELS
        ]
        device = Device(
            index=0, name="mock", memory_total=80 * GIB, memory_used=4 * GIB, memory_free=76 * GIB
        )
        self.get = {
            "/health": _answer(
                "200 OK", encode(Health(name="mock", version="bench", started_at=now))
            ),
            "/devices": _answer("200 OK", encode(DevicesResponse(devices=[device]))),
            "/models": _answer("200 OK", encode(ModelsResponse(models=ready))),
        }
        for m in MODELS:
            self.get[f"/models/{m}/endpoint"] = _answer(
                "200 OK", encode(EndpointResponse(url=f"{base}/v1"))
            )
        self.post = {
            "/models/load": _answer("200 OK", encode(ready[0])),
            "/models/unload": _answer("200 OK", encode(UnloadResponse(id=FAST))),
        }
        self.kinds = {
            "/v1/chat/completions": _Kind(chat=True),
            "/v1/completions": _Kind(chat=False),
        }
        self.not_found = _answer(
            "404 Not Found", b'{"error":{"code":"model_not_found","message":"no such route"}}'
        )

    def protocol(self) -> _Connection:
        """A protocol instance for one connection."""
        return _Connection(self)


class _Connection(asyncio.Protocol):
    def __init__(self, mock: MockNeuron) -> None:
        self.mock = mock
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.head: Head | None = None
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self.streaming is None:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.head = parse_head(self.buffer[:end])
                self.buffer = self.buffer[end + 4 :]
            length = self.head.length
            if len(self.buffer) < length:
                return
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            head, self.head = self.head, None
            self.answer(head, body)

    def answer(self, head: Head, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        method, path, _ = head.first.split(" ", 2)
        mock = self.mock
        kind = mock.kinds.get(path)
        if kind is not None:
            asked = _asked.decode(body)
            tokens = asked.max_tokens or DEFAULT_TOKENS
            if asked.stream:
                usage = bool(asked.stream_options and asked.stream_options.include_usage)
                delay = mock.delays.get(asked.model, 0.0)
                self.streaming = asyncio.ensure_future(
                    self.stream(kind, tokens, delay, usage, head.keep_alive)
                )
                return
            transport.write(kind.complete(tokens))
        else:
            mock.polls += 1
            table = mock.get if method == "GET" else mock.post
            transport.write(table.get(path, mock.not_found))
        if not head.keep_alive:
            transport.close()

    async def stream(
        self, kind: _Kind, tokens: int, delay: float, usage: bool, keep_alive: bool
    ) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(_HEAD + kind.first)
        token = kind.token
        if delay:
            for _ in range(tokens):
                await asyncio.sleep(delay)
                if transport.is_closing():
                    return
                transport.write(token)
        else:
            transport.write(token * tokens)
        transport.write(kind.last(tokens, usage))
        self.streaming = None
        if not keep_alive:
            transport.close()
        elif self.buffer:
            self.data_received(b"")


async def serve(host: str, port: int, delay_s: float) -> asyncio.Server:
    """Start a mock neuron on ``host:port``."""
    mock = MockNeuron(host, port, delay_s)
    loop = asyncio.get_running_loop()
    return await loop.create_server(mock.protocol, host, port, reuse_address=True, backlog=1024)


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument(
        "--delay", type=float, default=0.02, help="seconds between bench/paced's tokens"
    )
    args = parser.parse_args()

    async def run() -> None:
        server = await serve(args.host, args.port, args.delay)
        print(f"mock neuron on http://{args.host}:{args.port}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        run_loop(run())


if __name__ == "__main__":
    main()
