"""The gateway's two ASGI apps: the API (OpenAI, Anthropic, admin) and Prometheus metrics.

This module only assembles: routes from ``routes/``, state from ``state``,
and the lifespan that starts and stops it. How the gateway reaches its
neurons is injected (``neurons``): HTTP by default, a scripted in-process
fleet in tests (``cortex_gateway.testing``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette

from cortex_core.config import GatewayConfig
from cortex_gateway.neurons import Neurons
from cortex_gateway.routes import api_routes, metrics_routes
from cortex_gateway.state import Gateway
from cortex_gateway.transport import HttpNeurons

__all__ = ["create_apps"]


def create_apps(
    config: GatewayConfig, *, neurons: Callable[[], Neurons] = HttpNeurons
) -> tuple[Starlette, Starlette, Gateway]:
    """The API app, the metrics app (its own listener), and their shared state.

    ``neurons`` is called once the API app starts, in its event loop.
    """
    gateway = Gateway(config, neurons)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    api = Starlette(routes=api_routes(gateway), lifespan=lifespan)
    metrics = Starlette(routes=metrics_routes(gateway))
    return api, metrics, gateway
