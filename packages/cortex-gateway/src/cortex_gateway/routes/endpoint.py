"""How every route is wrapped: its API key checked, its failures answered and recorded once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cortex_gateway.errors import GatewayError, Surface, internal_error
from cortex_gateway.pipeline import Call
from cortex_gateway.state import Gateway

__all__ = ["Endpoint", "Handler", "endpoint"]

log = logging.getLogger(__name__)

Handler = Callable[[Request, Call], Awaitable[Response]]
"""A route's own work, given the request and its :class:`~cortex_gateway.pipeline.Call`."""
Endpoint = Callable[[Request], Awaitable[Response]]

CLIENT_CLOSED = 499
"""nginx's status for a client that went away before its answer: nobody reads it."""


def endpoint(
    gateway: Gateway, handler: str, surface: Surface, work: Handler, *, public: bool = False
) -> Endpoint:
    """The Starlette endpoint running ``work``: raise a GatewayError anywhere, it is answered."""

    async def run(request: Request) -> Response:
        pipeline = gateway.pipeline
        call = pipeline.begin(request, handler, surface)
        try:
            if not public:
                pipeline.authorize(request)
            return await work(request, call)
        except GatewayError as exc:
            return pipeline.error_response(call, exc)
        except ClientDisconnect:
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:
            error = internal_error()
            error.__cause__ = exc
            return pipeline.error_response(call, error)

    return run
