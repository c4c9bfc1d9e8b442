"""The OpenAI API: ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``.

The body is read bounded and only ``model``, ``stream`` and
``stream_options`` are decoded; the model is rewritten to its concrete id in
the raw bytes and everything else is forwarded as it came. Answers come back
byte for byte; streams pass event by event while the metering reads them.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.text import printable
from cortex_core.wire import WireError, encode
from cortex_gateway.bodies import RequestView, rewrite_model
from cortex_gateway.catalogue_view import find_model, list_models
from cortex_gateway.errors import ErrorKind, GatewayError, Surface
from cortex_gateway.metering import Meter, meter_stream, usage_of
from cortex_gateway.pipeline import Call
from cortex_gateway.responses import JSON, json_response
from cortex_gateway.routes.endpoint import Handler, endpoint
from cortex_gateway.state import Gateway

__all__ = ["OpenAIRoutes"]


def _stream_error(error: GatewayError) -> bytes:
    return b"data: " + encode(error.openai()) + b"\n\n"


class OpenAIRoutes:
    """The OpenAI routes over a :class:`~cortex_gateway.state.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        """The routes, wrapped."""

        def r(path: str, handler: str, work: Handler, methods: list[str]) -> Route:
            return Route(
                path, endpoint(self.gateway, handler, Surface.OPENAI, work), methods=methods
            )

        return [
            r("/v1/models", "models", self.models, ["GET"]),
            r("/v1/models/{model:path}", "models", self.model, ["GET"]),
            r("/v1/chat/completions", "chat_completions", self.chat, ["POST"]),
            r("/v1/completions", "completions", self.completions, ["POST"]),
        ]

    async def models(self, request: Request, call: Call) -> Response:
        """``GET /v1/models``: the catalogue merged with what the fleet has loaded."""
        status = self.gateway.lifecycle.status()
        return json_response(
            list_models(status.catalogue, status.fleet, status.backoffs, time.time())
        )

    async def model(self, request: Request, call: Call) -> Response:
        """``GET /v1/models/{id}``: one entry (ids with a slash arrive %2F-encoded or not)."""
        status = self.gateway.lifecycle.status()
        model_id = call.model = request.path_params["model"]
        entry = find_model(model_id, status.catalogue, status.fleet, status.backoffs, time.time())
        if entry is None:
            raise GatewayError(
                404, ErrorKind.NOT_FOUND, f"model '{printable(model_id)}' does not exist"
            )
        return json_response(entry)

    async def chat(self, request: Request, call: Call) -> Response:
        """``POST /v1/chat/completions``."""
        return await self._forward(request, call, "/chat/completions")

    async def completions(self, request: Request, call: Call) -> Response:
        """``POST /v1/completions``."""
        return await self._forward(request, call, "/completions")

    async def _forward(self, request: Request, call: Call, path: str) -> Response:
        pipeline = self.gateway.pipeline
        body = await pipeline.read_body(request)
        view = pipeline.decode(body, RequestView)
        model = pipeline.name(call, view.model)
        pipeline.score(call, lambda: view.rendered)
        # Ask for usage on streams, to count tokens; the extra chunk goes again on the way back.
        strip_usage = view.stream and not view.wants_usage
        try:
            forwarded = rewrite_model(body, model, include_usage=strip_usage)
        except WireError as exc:
            raise GatewayError(400, ErrorKind.BAD_REQUEST, exc.message) from exc
        conn = await pipeline.connect(call, path, forwarded, request=request)
        meter = Meter(started=call.started, first_byte=time.monotonic())
        if not conn.upstream.streaming:
            data = await pipeline.read(conn)
            meter.usage = usage_of(data)
            pipeline.finish(call, conn.upstream.status, meter)
            return Response(
                data, status_code=conn.upstream.status, media_type=JSON, headers=call.headers()
            )
        events = meter_stream(pipeline.chunks(conn), meter, strip_usage=strip_usage)
        return pipeline.stream(call, events, meter, render=_stream_error, close=conn.close)
