"""The OpenAI API: ``/v1/models``, chat and legacy completions, embeddings, rerank and score.

The body is read bounded and only ``model``, ``stream`` and
``stream_options`` are decoded; the model is rewritten to its concrete id in
the raw bytes and everything else is forwarded as it came. Answers come back
byte for byte; streams pass event by event while the metering reads them.
Embeddings, rerank and score go to models with ``task = "embed"``: they
generate nothing, so they count prompt tokens only and have no time to first
token. (``/v1/responses`` has its own module: ``routes/responses.py``.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.wire import encode
from cortex_gateway.bodies import RequestView, rewrite_model
from cortex_gateway.calls import Call
from cortex_gateway.catalogue_view import find_model, list_models
from cortex_gateway.errors import ErrorKind, GatewayError, Surface, no_such_model
from cortex_gateway.incoming import decode_body, read_body
from cortex_gateway.metering import Meter, meter_stream, usage_of
from cortex_gateway.pipeline import EarlyStart
from cortex_gateway.responses import JSON, json_response
from cortex_gateway.routes.endpoint import Handler, endpoint
from cortex_gateway.state import Gateway

__all__ = ["OpenAIRequest", "OpenAIRoutes", "PoolingRequest"]


class OpenAIRequest:
    """An OpenAI inference request, forwarded as it came but for its model (the adapter)."""

    early_start: EarlyStart | None = None
    """A stream starts once the upstream has answered: its status is a real status."""

    def __init__(self, path: str, body: bytes, view: RequestView) -> None:
        self.path = path
        self.model = view.model
        self.streaming = view.stream
        self._body = body
        self._view = view
        # Ask for usage on streams, to count tokens; the extra chunk goes again on the way back.
        self._strip_usage = view.stream and not view.wants_usage

    def prompt(self) -> bytes:
        """The raw JSON of the messages (or the prompt)."""
        return self._view.rendered

    def prepare(self, model: str, priority: int, cache_salt: str | None) -> bytes:
        """The body as it came, with ``model`` (and the usage chunk asked for on a stream)."""
        return rewrite_model(
            self._body,
            model,
            include_usage=self._strip_usage,
            priority=priority,
            cache_salt=cache_salt,
        )

    def answer(self, call: Call, status: int, data: bytes, meter: Meter) -> Response:
        """The upstream's answer, byte for byte."""
        meter.usage = usage_of(data)
        return Response(data, status_code=status, media_type=JSON, headers=call.headers())

    def stream(
        self, call: Call, chunks: AsyncIterator[bytes], meter: Meter
    ) -> AsyncIterator[bytes]:
        """The upstream's events, metered as they pass."""
        return meter_stream(chunks, meter, strip_usage=self._strip_usage)

    def render_error(self, error: GatewayError) -> bytes:
        """A data event holding the OpenAI error envelope."""
        return b"data: " + encode(error.openai()) + b"\n\n"


class PoolingRequest(OpenAIRequest):
    """An embeddings, rerank or score request: forwarded as it came; it generates nothing."""

    def prompt(self) -> bytes:
        """Nothing to route by: a pooling request goes to the least busy node."""
        return b""

    def answer(self, call: Call, status: int, data: bytes, meter: Meter) -> Response:
        """The upstream's answer, byte for byte; its usage is prompt tokens only."""
        meter.generated = False
        return super().answer(call, status, data, meter)


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
            r("/v1/embeddings", "embeddings", self.embeddings, ["POST"]),
            r("/v1/rerank", "rerank", self.rerank, ["POST"]),
            r("/v1/score", "score", self.score, ["POST"]),
        ]

    async def models(self, request: Request, call: Call) -> Response:
        """``GET /v1/models``: the catalogue merged with what the fleet has loaded.

        A key with an allow-list sees only the models it may use.
        """
        status = self.gateway.lifecycle.status()
        listing = list_models(status.catalogue, status.fleet, status.backoffs, time.time())
        if call.tenant.allowed is not None:
            allows = call.tenant.allows
            listing.data = [m for m in listing.data if allows(m.id, m.alias_of or m.id)]
        return json_response(listing)

    async def model(self, request: Request, call: Call) -> Response:
        """``GET /v1/models/{id}``: one entry (ids with a slash arrive %2F-encoded or not)."""
        status = self.gateway.lifecycle.status()
        model_id = call.model = request.path_params["model"]
        entry = find_model(model_id, status.catalogue, status.fleet, status.backoffs, time.time())
        if entry is not None and not call.tenant.allows(model_id, entry.alias_of or entry.id):
            entry = None  # a model this key may not use does not exist for it
        if entry is None:
            raise GatewayError(404, ErrorKind.NOT_FOUND, no_such_model(model_id))
        return json_response(entry)

    async def chat(self, request: Request, call: Call) -> Response:
        """``POST /v1/chat/completions``."""
        return await self._forward(request, call, "/chat/completions")

    async def completions(self, request: Request, call: Call) -> Response:
        """``POST /v1/completions``."""
        return await self._forward(request, call, "/completions")

    async def embeddings(self, request: Request, call: Call) -> Response:
        """``POST /v1/embeddings``."""
        return await self._forward(request, call, "/embeddings", PoolingRequest)

    async def rerank(self, request: Request, call: Call) -> Response:
        """``POST /v1/rerank``."""
        return await self._forward(request, call, "/rerank", PoolingRequest)

    async def score(self, request: Request, call: Call) -> Response:
        """``POST /v1/score``."""
        return await self._forward(request, call, "/score", PoolingRequest)

    async def _forward(
        self,
        request: Request,
        call: Call,
        path: str,
        adapter: type[OpenAIRequest] = OpenAIRequest,
    ) -> Response:
        body = await read_body(request, self.gateway.settings)
        view = decode_body(body, RequestView)
        return await self.gateway.pipeline.forward(request, call, adapter(path, body, view))
