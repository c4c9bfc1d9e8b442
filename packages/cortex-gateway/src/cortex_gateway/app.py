"""The gateway's two ASGI apps: the API (OpenAI, Anthropic, admin) and Prometheus metrics.

This module only assembles: routes from ``routes/``, state from ``state``,
and the lifespan that starts and stops it. How the gateway reaches its
neurons is injected (``neurons``): HTTP by default, a scripted in-process
fleet in tests (``cortex_gateway.testing``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette

from cortex_core.config import GatewayConfig
from cortex_gateway.neurons import Neurons
from cortex_gateway.routes import api_routes, metrics_routes, unrouted
from cortex_gateway.state import Gateway, NeuronsFactory
from cortex_gateway.transport import HttpNeurons

__all__ = ["create_apps", "http_neurons"]


def http_neurons(config: GatewayConfig) -> Neurons:
    """The neurons over HTTP, as ``cortex.toml`` says to reach them."""
    return HttpNeurons(config.cortex.gateway.connect_timeout_s)


def create_apps(
    config: GatewayConfig,
    *,
    neurons: NeuronsFactory = http_neurons,
    environ: Mapping[str, str] | None = None,
) -> tuple[Starlette, Starlette, Gateway]:
    """The API app, the metrics app (its own listener), and their shared state.

    ``neurons`` is called once the API app starts, in its event loop;
    ``environ`` (default ``os.environ``) holds the neurons' tokens.
    """
    gateway = Gateway(config, neurons, environ)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    api = Starlette(
        routes=api_routes(gateway),
        lifespan=lifespan,
        exception_handlers=unrouted(gateway),
    )
    metrics = Starlette(routes=metrics_routes(gateway))
    return api, metrics, gateway
