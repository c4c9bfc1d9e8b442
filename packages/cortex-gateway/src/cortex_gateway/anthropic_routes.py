"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic clients on OpenAI neurons.

The same routing, aliases, cold loads, metrics and errors as the OpenAI
routes (Anthropic's envelope instead of OpenAI's); the body is translated by
``translate.anthropic`` on the way in and the answer on the way out. A stream
that has to wait for a cold load starts at once and sends ``ping`` events
while the client waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cortex_core.anthropic import CountTokensRequest, CountTokensResponse, MessagesRequest
from cortex_core.neuron_api import TokenizeRequest
from cortex_core.openai import ChatCompletion
from cortex_core.wire import WireError, decode, encode
from cortex_gateway.app import JSON, BodyTooLarge, Call, Gateway, _json, _TrackedStream
from cortex_gateway.lifecycle import RouteError
from cortex_gateway.metering import Meter, meter_stream
from cortex_gateway.neuron_client import NeuronCallError
from cortex_gateway.proxy import Upstream
from cortex_gateway.router import Serve, route
from cortex_gateway.translate.anthropic import (
    SseDecoder,
    StreamTranslator,
    error_type_for_status,
    from_openai,
    openai_messages_for_tokenize,
    sse_event,
    to_openai,
)

__all__ = ["AnthropicRoutes"]

log = logging.getLogger(__name__)

T = TypeVar("T", MessagesRequest, CountTokensRequest)

PING_EVERY_S = 2.0
"""While a cold load keeps a stream waiting, a ``ping`` event this often."""


class AnthropicRoutes:
    """The Anthropic Messages routes over a :class:`Gateway`'s routing and proxy."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _body(self, request: Request, call: Call) -> bytes | Response:
        try:
            return await self.gateway.read_body(request)
        except BodyTooLarge:
            limit = self.gateway.settings.max_body_bytes
            return self.gateway.reject(
                call, 413, f"request body exceeds {limit} bytes", "invalid_request_error"
            )
        except ClientDisconnect:
            return Response(status_code=499)

    async def _read(self, request: Request, call: Call, type_: type[T]) -> T | Response:
        """The body decoded as ``type_``, its model named on ``call``; or the error answered."""
        body = await self._body(request, call)
        if isinstance(body, Response):
            return body
        try:
            decoded = decode(body, type_)
        except WireError as exc:
            return self.gateway.reject(call, 400, exc.message, "invalid_request_error")
        call.name(self.gateway.life.catalogue, decoded.model)
        return decoded

    async def _resolve(self, call: Call) -> Response | None:
        assert call.model is not None
        try:
            call.node = await self.gateway.life.resolve(call.model)
        except RouteError as exc:
            return self.gateway.reject(call, exc.status, exc.message, "service_unavailable")
        call.routed = time.monotonic()
        return None

    async def messages(self, request: Request) -> Response:
        """``POST /v1/messages``."""
        gateway = self.gateway
        call = gateway.begin(request, "messages")
        message = await self._read(request, call, MessagesRequest)
        if isinstance(message, Response):
            return message
        assert call.model is not None
        forwarded = encode(to_openai(message, call.model))
        if message.stream:
            return await self._stream(call, message, forwarded)
        for attempt in (1, 2):
            if (failed := await self._resolve(call)) is not None:
                return failed
            meter = Meter(started=call.started)
            upstream = await gateway.connect(
                call, "/chat/completions", forwarded, retry=attempt == 1
            )
            if upstream is None:
                continue
            if not isinstance(upstream, Upstream):
                return upstream
            meter.first_byte = time.monotonic()
            data = await gateway.read_answer(call, upstream, retry=attempt == 1)
            if data is None:
                continue
            if not isinstance(data, bytes):
                return data
            try:
                answer = decode(data, ChatCompletion)
            except WireError as exc:
                return gateway.reject(
                    call,
                    502,
                    "the model server's answer was malformed",
                    "upstream_error",
                    log_error=exc.message,
                )
            meter.usage = answer.usage
            gateway.finish(call, 200, meter)
            translated = from_openai(answer, call.model, message.stop_sequences)
            return Response(
                encode(translated), media_type=JSON, headers=gateway.reply_headers(call)
            )
        return gateway.reject(
            call, 503, f"model {call.model!r} is not available", "service_unavailable"
        )

    async def _stream(self, call: Call, message: MessagesRequest, forwarded: bytes) -> Response:
        gateway = self.gateway
        assert call.model is not None
        life = gateway.life
        decision = route(call.model, life.catalogue, life.fleet, life.in_flight)
        if not isinstance(decision, Serve):
            # Unknown models and placements that fail at once still get a status;
            # a cold load that takes time is waited for inside the stream.
            task = asyncio.ensure_future(life.resolve(call.model))
            finished, _ = await asyncio.wait({task}, timeout=1.0)
            if finished and task.exception() is not None:
                exc = task.exception()
                if isinstance(exc, RouteError):
                    return gateway.reject(call, exc.status, exc.message, "service_unavailable")
                raise exc  # type: ignore[misc]
        else:
            task = None
        translator = StreamTranslator(call.model, stop_sequences=message.stop_sequences)
        meter = Meter(started=call.started)
        outcome = {"status": 200}

        async def events() -> AsyncIterator[bytes]:
            for event in translator.start():
                yield sse_event(event)
            waiting = task or asyncio.ensure_future(life.resolve(call.model or ""))
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=PING_EVERY_S)
                if done:
                    break
                yield b'event: ping\ndata: {"type": "ping"}\n\n'
            try:
                call.node = waiting.result()
            except RouteError as exc:
                outcome["status"] = exc.status
                self._log_failure(call, exc.status, exc.message)
                for event in translator.fail(exc.message, error_type_for_status(exc.status)):
                    yield sse_event(event)
                return
            call.routed = time.monotonic()
            upstream = await gateway.connect(call, "/chat/completions", forwarded, retry=False)
            if not isinstance(upstream, Upstream):
                outcome["status"] = upstream.status_code if upstream is not None else 503
                for event in translator.fail("the model server could not be reached", "api_error"):
                    yield sse_event(event)
                return
            if upstream.status >= 400:
                data = await gateway.read_answer(call, upstream, retry=False)
                outcome["status"] = data.status_code if isinstance(data, Response) else 502
                for event in translator.fail(
                    f"the model server refused the request (upstream status {upstream.status})",
                    error_type_for_status(upstream.status),
                ):
                    yield sse_event(event)
                return
            meter.first_byte = time.monotonic()
            decoder = SseDecoder()
            async for chunk in meter_stream(upstream.chunks(), meter, strip_usage=False):
                for payload in decoder.feed(chunk):
                    for event in translator.feed_payload(payload):
                        yield sse_event(event)
                if translator.done:
                    break
            if not translator.done:
                for event in translator.finish():
                    yield sse_event(event)

        async def done() -> None:
            call.release()
            if outcome["status"] == 200:
                gateway.finish(call, 200, meter)
            elif gateway.metrics is not None:
                labels = gateway.metrics.labels(call.model, call.alias, call.node, call.handler)
                gateway.metrics.observe_failure(labels, outcome["status"], "upstream_error")

        headers = {"x-request-id": call.request_id, "cache-control": "no-cache"}
        if call.node:
            headers["x-cortex-node"] = call.node
        return _TrackedStream(events(), headers, done)

    def _log_failure(self, call: Call, status: int, message: str) -> None:
        log.warning(
            "request failed",
            extra={
                "handler": call.handler,
                "status": status,
                "error": message,
                "request_id": call.request_id,
                **call.fields(),
            },
        )

    async def count_tokens(self, request: Request) -> Response:
        """``POST /v1/messages/count_tokens``, counted by the routed model's own tokenizer."""
        gateway = self.gateway
        call = gateway.begin(request, "count_tokens")
        counted = await self._read(request, call, CountTokensRequest)
        if isinstance(counted, Response):
            return counted
        assert call.model is not None
        if (failed := await self._resolve(call)) is not None:
            return failed
        assert call.node is not None
        messages, tools = openai_messages_for_tokenize(counted)
        tokenize = TokenizeRequest(model=call.model, messages=messages, tools=tools)
        try:
            answer = await gateway.life.clients[call.node].tokenize(tokenize)
        except NeuronCallError as exc:
            status = 400 if exc.status == 400 else 502
            message = "the model server could not count the tokens"
            return gateway.reject(call, status, message, "upstream_error", log_error=str(exc))
        gateway.finish(call, 200, Meter(started=call.started))
        return _json(CountTokensResponse(input_tokens=answer.count), node=call.node)
