"""How every route is wrapped: handed to the pipeline, which checks its key and answers failures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from cortex_gateway.errors import ErrorKind, GatewayError, Surface
from cortex_gateway.pipeline import Handler, RouteSpec
from cortex_gateway.state import Gateway

__all__ = ["Endpoint", "Handler", "endpoint", "unrouted"]

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
    spec = RouteSpec(handler, surface, public=public, admin=admin)

    async def run(request: Request) -> Response:
        return await gateway.pipeline.handle(request, spec, work)

    return run


def unrouted(gateway: Gateway) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette's own 404 and 405 (plain text otherwise), answered in the API's envelopes."""

    async def answer(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        surface = (
            Surface.ANTHROPIC if request.url.path.startswith("/v1/messages") else Surface.OPENAI
        )
        if status == 405:
            error = GatewayError(
                405, ErrorKind.BAD_REQUEST, f"{request.method} is not allowed here"
            )
        else:
            error = GatewayError(404, ErrorKind.NOT_FOUND, "no such route")
        return gateway.pipeline.refuse(request, "unrouted", surface, error)

    return {404: answer, 405: answer}
