"""How every route is wrapped: its API key checked, its failures answered and recorded once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cortex_gateway.errors import ErrorKind, GatewayError, Surface, internal_error
from cortex_gateway.pipeline import Call, ClientGone
from cortex_gateway.state import Gateway

__all__ = ["Endpoint", "Handler", "endpoint", "unrouted"]

log = logging.getLogger(__name__)

Handler = Callable[[Request, Call], Awaitable[Response]]
"""A route's own work, given the request and its :class:`~cortex_gateway.pipeline.Call`."""
Endpoint = Callable[[Request], Awaitable[Response]]


def endpoint(
    gateway: Gateway,
    handler: str,
    surface: Surface,
    work: Handler,
    *,
    public: bool = False,
    admin: bool = False,
) -> Endpoint:
    """The Starlette endpoint running ``work``: raise a GatewayError anywhere, it is answered.

    Every route but the ``public`` ones takes a key (an admin key on ``admin``
    routes); every POST must declare a JSON body.
    """

    async def run(request: Request) -> Response:
        pipeline = gateway.pipeline
        call = pipeline.begin(request, handler, surface)
        try:
            if not public:
                pipeline.authorize(request, admin=admin)
            if request.method == "POST":
                pipeline.require_json(request)
            return await work(request, call)
        except GatewayError as exc:
            return pipeline.error_response(call, exc)
        except (ClientDisconnect, ClientGone):
            return pipeline.gone(call)
        except Exception as exc:
            error = internal_error()
            error.__cause__ = exc
            return pipeline.error_response(call, error)

    return run


def unrouted(gateway: Gateway) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette's own 404 and 405 (plain text otherwise), answered in the API's envelopes."""

    async def answer(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        path = request.url.path
        surface = Surface.ANTHROPIC if path.startswith("/v1/messages") else Surface.OPENAI
        pipeline = gateway.pipeline
        call = pipeline.begin(request, "unrouted", surface)
        if status == 405:
            error = GatewayError(
                405, ErrorKind.BAD_REQUEST, f"{request.method} is not allowed here"
            )
        else:
            error = GatewayError(404, ErrorKind.NOT_FOUND, "no such route")
        return pipeline.error_response(call, error)

    return {404: answer, 405: answer}
