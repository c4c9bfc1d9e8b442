"""The gateway's two ASGI apps: the API (OpenAI, Anthropic, admin) and Prometheus metrics.

This module only assembles: routes from ``routes/``, state from ``state``,
and the lifespan that starts and stops it. How the gateway reaches its
neurons is injected (``neurons``): HTTP by default, a scripted in-process
fleet in tests (``cortex_gateway.testing``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cortex_core.config import GatewayConfig
from cortex_gateway.neurons import Neurons
from cortex_gateway.quotas import LocalQuotas
from cortex_gateway.routes import api_routes, metrics_routes, unrouted
from cortex_gateway.state import Gateway, NeuronsFactory, QuotasFactory
from cortex_gateway.transport import HttpNeurons

__all__ = ["GatewayApp", "create_apps", "http_neurons"]


class GatewayApp(Starlette):
    """Starlette, with the routes whose path is fixed answered without its middleware and router.

    Every endpoint of the gateway answers its own errors (the pipeline's
    ``handle``), so Starlette's own error middleware has nothing to do for
    them, and matching a dozen path patterns costs more than one dictionary
    lookup. Routes with path parameters, unknown paths and methods (404/405)
    and the lifespan go through Starlette as usual.

    The gateway has no middleware of its own, by design: what every request
    needs (keys, the request id, outcomes) is a step of the pipeline. Should
    one be added all the same (``add_middleware``), the fast path steps aside
    and every path goes through it.
    """

    def __init__(self, *, routes: list[Route], **kwargs: Any) -> None:
        super().__init__(routes=routes, **kwargs)
        self.exact = {
            (method, route.path): route.endpoint
            for route in routes
            if not route.param_convertors
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.user_middleware:
            endpoint = self.exact.get((scope["method"], scope["path"]))
            if endpoint is not None:
                scope["app"] = self
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def http_neurons(config: GatewayConfig) -> Neurons:
    """The neurons over HTTP, as ``cortex.toml`` says to reach them."""
    return HttpNeurons(config.cortex.gateway.connect_timeout_s)


def create_apps(
    config: GatewayConfig,
    *,
    neurons: NeuronsFactory = http_neurons,
    environ: Mapping[str, str] | None = None,
    quotas: QuotasFactory = LocalQuotas,
) -> tuple[GatewayApp, Starlette, Gateway]:
    """The API app, the metrics app (its own listener), and their shared state.

    ``neurons`` is called once the API app starts, in its event loop;
    ``environ`` (default ``os.environ``) holds the neurons' tokens and the
    ``key_env`` keys; ``quotas`` makes where limited keys are counted (a
    worker's: its supervisor's shared count).
    """
    gateway = Gateway(config, neurons, environ, quotas)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    api = GatewayApp(
        routes=api_routes(gateway),
        lifespan=lifespan,
        exception_handlers=unrouted(gateway),
    )
    metrics = Starlette(routes=metrics_routes(gateway))
    return api, metrics, gateway
