"""``GET /health`` on the API port, and ``GET /metrics`` on the metrics port."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_gateway import __version__
from cortex_gateway.errors import Surface
from cortex_gateway.pipeline import Call
from cortex_gateway.responses import json_response
from cortex_gateway.routes.endpoint import endpoint
from cortex_gateway.state import Gateway

__all__ = ["HealthRoutes"]


class HealthRoutes:
    """Liveness and metrics: open to anyone who can reach the port."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        """The API port's open route."""
        health = endpoint(self.gateway, "health", Surface.OPENAI, self.health, public=True)
        return [Route("/health", health, methods=["GET"])]

    def metrics_routes(self) -> list[Route]:
        """The metrics port's route."""
        scrape = endpoint(self.gateway, "metrics", Surface.OPENAI, self.scrape, public=True)
        return [Route("/metrics", scrape, methods=["GET"])]

    async def health(self, request: Request, call: Call) -> Response:
        """``GET /health``: the gateway answers, and its version."""
        return json_response({"status": "ok", "version": __version__})

    async def scrape(self, request: Request, call: Call) -> Response:
        """``GET /metrics``: Prometheus text (rendered off the event loop)."""
        registry = self.gateway.running.metrics.registry
        text = await asyncio.to_thread(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)
