"""The gateway's HTTP routes, one module per API surface, all over one pipeline."""

from __future__ import annotations

from starlette.routing import Route

from cortex_gateway.routes.admin import AdminRoutes
from cortex_gateway.routes.anthropic import AnthropicRoutes
from cortex_gateway.routes.endpoint import unrouted
from cortex_gateway.routes.health import HealthRoutes
from cortex_gateway.routes.openai import OpenAIRoutes
from cortex_gateway.routes.responses import ResponsesRoutes
from cortex_gateway.routes.ui import UiRoutes
from cortex_gateway.state import Gateway

__all__ = ["api_routes", "metrics_routes", "unrouted"]


def api_routes(gateway: Gateway) -> list[Route]:
    """Every route of the API port."""
    return [
        *HealthRoutes(gateway).routes(),
        *OpenAIRoutes(gateway).routes(),
        *ResponsesRoutes(gateway).routes(),
        *AnthropicRoutes(gateway).routes(),
        *AdminRoutes(gateway).routes(),
        *UiRoutes(gateway).routes(),
    ]


def metrics_routes(gateway: Gateway) -> list[Route]:
    """The metrics port's one route."""
    return HealthRoutes(gateway).metrics_routes()
