"""The Anthropic API: ``POST /v1/messages`` and ``/v1/messages/count_tokens`` on OpenAI neurons.

The same pipeline as the OpenAI routes (aliases, routing, cold loads,
metrics, errors in Anthropic's envelope); the body is translated by
``translate.anthropic`` on the way in and the answer on the way out. A stream
whose model is not ready within a second starts at once and sends ``ping``
events while the client waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.anthropic import CountTokensRequest, CountTokensResponse, MessagesRequest
from cortex_core.neuron_api import TokenizeRequest
from cortex_core.openai import ChatCompletion
from cortex_core.wire import WireError, decode, encode
from cortex_gateway.bodies import MessagesView
from cortex_gateway.errors import ErrorKind, GatewayError, Surface, anthropic_type
from cortex_gateway.metering import Meter
from cortex_gateway.neurons import NeuronCallError
from cortex_gateway.pipeline import Call, Connection
from cortex_gateway.responses import json_response
from cortex_gateway.routes.endpoint import Handler, endpoint
from cortex_gateway.sse import SseParser
from cortex_gateway.state import Gateway
from cortex_gateway.translate.anthropic import (
    StreamTranslator,
    from_openai,
    openai_messages_for_tokenize,
    sse_event,
    to_openai,
)

__all__ = ["AnthropicRoutes"]

CHAT = "/chat/completions"
READY_WITHIN_S = 1.0
"""A stream whose upstream answers this fast starts with a status; later, it starts at once."""
PING_EVERY_S = 2.0
"""While a cold load keeps a stream waiting, a ``ping`` event this often."""
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


class AnthropicRoutes:
    """The Anthropic Messages routes over a :class:`~cortex_gateway.state.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        """The routes, wrapped."""

        def r(path: str, handler: str, work: Handler) -> Route:
            wrapped = endpoint(self.gateway, handler, Surface.ANTHROPIC, work)
            return Route(path, wrapped, methods=["POST"])

        return [
            r("/v1/messages", "messages", self.messages),
            r("/v1/messages/count_tokens", "count_tokens", self.count_tokens),
        ]

    async def messages(self, request: Request, call: Call) -> Response:
        """``POST /v1/messages``."""
        pipeline = self.gateway.pipeline
        body = await pipeline.read_body(request)
        message = pipeline.decode(body, MessagesRequest)
        model = pipeline.name(call, message.model)
        pipeline.score(call, lambda: pipeline.decode(body, MessagesView).rendered)
        forwarded = encode(to_openai(message, model))
        if message.stream:
            return await self._stream(call, message, forwarded)
        conn = await pipeline.connect(call, CHAT, forwarded, request=request)
        meter = Meter(started=call.started, first_byte=time.monotonic())
        data = await pipeline.read(conn)
        try:
            answer = decode(data, ChatCompletion)
        except WireError as exc:
            raise GatewayError(
                502,
                ErrorKind.UPSTREAM,
                "the model server's answer was malformed",
                error=exc.message,
            ) from exc
        meter.usage = answer.usage
        pipeline.finish(call, 200, meter)
        return json_response(
            from_openai(answer, model, message.stop_sequences), headers=call.headers()
        )

    async def _stream(self, call: Call, message: MessagesRequest, forwarded: bytes) -> Response:
        pipeline = self.gateway.pipeline
        assert call.model is not None
        connecting: asyncio.Future[Connection] = asyncio.ensure_future(
            pipeline.connect(call, CHAT, forwarded)
        )
        if self.gateway.lifecycle.serving(call.model) is not None:
            # Ready somewhere: commit to a stream only once the upstream has answered,
            # so a refusal or a failure is a real HTTP status.
            await connecting
        else:
            # A load to wait for: failures that come at once still get a status; a
            # load that takes time is waited for inside the stream, with pings.
            await asyncio.wait({connecting}, timeout=READY_WITHIN_S)
            if connecting.done() and connecting.exception() is not None:
                connecting.result()
        translator = StreamTranslator(call.model, stop_sequences=message.stop_sequences)
        meter = Meter(started=call.started)

        async def events() -> AsyncIterator[bytes]:
            for started in translator.start():
                yield sse_event(started)
            while not connecting.done():
                await asyncio.wait({connecting}, timeout=PING_EVERY_S)
                if not connecting.done():
                    yield PING
            conn = connecting.result()
            meter.first_byte = time.monotonic()
            parser = SseParser()
            async for chunk in pipeline.chunks(conn):
                now = time.monotonic()
                out = []
                for sse in parser.feed(chunk):
                    if sse.data is None:
                        continue
                    events_of, decoded = translator.feed_data(sse.data)
                    if decoded is not None:
                        meter.observe_chunk(decoded, now)
                    out += [sse_event(event) for event in events_of]
                    if translator.done:
                        break
                if out:
                    yield b"".join(out)
                if translator.done:
                    return
            for translated in translator.finish():
                yield sse_event(translated)

        def render(error: GatewayError) -> bytes:
            failed = translator.fail(error.message, anthropic_type(error.status))
            return b"".join(sse_event(event) for event in failed)

        def close() -> None:
            if not connecting.done():
                connecting.cancel()  # the load it may wait for carries on
            elif not connecting.cancelled() and connecting.exception() is None:
                connecting.result().close()
            else:
                with contextlib.suppress(BaseException):
                    connecting.exception()  # retrieved: no "never retrieved" warning

        return pipeline.stream(call, events(), meter, render=render, close=close)

    async def count_tokens(self, request: Request, call: Call) -> Response:
        """``POST /v1/messages/count_tokens``, counted by the routed model's own tokenizer."""
        pipeline = self.gateway.pipeline
        counted = pipeline.decode(await pipeline.read_body(request), CountTokensRequest)
        model = pipeline.name(call, counted.model)
        lease = await pipeline.acquire(call, request=request)
        messages, tools = openai_messages_for_tokenize(counted)
        client = self.gateway.lifecycle.poller.nodes[lease.node].client
        try:
            answer = await client.tokenize(
                TokenizeRequest(model=model, messages=messages, tools=tools)
            )
        except NeuronCallError as exc:
            raise GatewayError(
                400 if exc.upstream_status == 400 else 502,
                ErrorKind.UPSTREAM,
                "the model server could not count the tokens",
                error=str(exc),
                url=client.base_url,
                upstream_status=exc.upstream_status,
            ) from exc
        finally:
            lease.release()
        pipeline.finish(call, 200, Meter(started=call.started))
        return json_response(CountTokensResponse(input_tokens=answer.count), headers=call.headers())
