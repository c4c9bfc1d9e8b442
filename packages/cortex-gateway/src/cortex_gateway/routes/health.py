"""``GET /health`` on the API port, and ``GET /metrics`` on the metrics port."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.wire import encode
from cortex_gateway import __version__
from cortex_gateway.calls import Call
from cortex_gateway.errors import Surface
from cortex_gateway.openapi import openapi_document
from cortex_gateway.responses import json_response
from cortex_gateway.routes.endpoint import endpoint
from cortex_gateway.state import Gateway

__all__ = ["HealthRoutes"]


class HealthRoutes:
    """Liveness and metrics: open to anyone who can reach the port."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._document = encode(openapi_document())

    def routes(self) -> list[Route]:
        """The API port's open routes: liveness and the API's description."""
        health = endpoint(self.gateway, "health", Surface.OPENAI, self.health, public=True)
        described = endpoint(self.gateway, "openapi", Surface.OPENAI, self.openapi, public=True)
        return [
            Route("/health", health, methods=["GET"]),
            Route("/openapi.json", described, methods=["GET"]),
        ]

    def metrics_routes(self) -> list[Route]:
        """The metrics port's route."""
        scrape = endpoint(self.gateway, "metrics", Surface.OPENAI, self.scrape, public=True)
        return [Route("/metrics", scrape, methods=["GET"])]

    async def health(self, request: Request, call: Call) -> Response:
        """``GET /health``: the gateway answers, and its version; 503 while it drains."""
        if self.gateway.draining:
            return json_response({"status": "draining", "version": __version__}, 503)
        return json_response({"status": "ok", "version": __version__})

    async def openapi(self, request: Request, call: Call) -> Response:
        """``GET /openapi.json``: this API as OpenAPI 3.1."""
        return Response(self._document, media_type="application/json")

    async def scrape(self, request: Request, call: Call) -> Response:
        """``GET /metrics``: Prometheus text (rendered off the event loop)."""
        if not self.gateway.started:  # the metrics port opens before the gateway has started
            return Response("starting\n", status_code=503, media_type="text/plain")
        registry = self.gateway.running.metrics.registry
        text = await asyncio.to_thread(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)
