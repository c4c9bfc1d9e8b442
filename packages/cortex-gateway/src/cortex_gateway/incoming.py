"""The client's side of a request: its body read bounded and decoded, and its going away noticed.

Nothing is sent on for a client that is gone: a body that does not arrive in
time is a 408, one too large a 413, one that is not JSON a 415, one that
does not decode a 400 naming what is wrong; a client that leaves while its
model loads is :class:`ClientGone`.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request

from cortex_core.config import GatewaySection
from cortex_core.text import printable
from cortex_core.wire import WireError, decode
from cortex_gateway.errors import ErrorKind, GatewayError

__all__ = ["ClientGone", "decode_body", "read_body", "require_json", "unless_gone"]

T = TypeVar("T")


class ClientGone(Exception):
    """The client left before its request was sent on: it is not sent on."""


def require_json(request: Request) -> None:
    """Refuse a POST whose body is not declared JSON (a web page cannot send one unasked).

    A POST without a body needs the content type too: a cross-site request
    with no body and no content type is what a page may send unasked
    (``POST /admin/reload`` takes an empty body).
    """
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json" and not (
        kind.startswith("application/") and kind.endswith("+json")
    ):
        raise GatewayError(
            415, ErrorKind.BAD_REQUEST, "the body must be JSON (content-type: application/json)"
        )


async def read_body(request: Request, settings: GatewaySection) -> bytes:
    """The body, refused past ``max_body_bytes`` (413) or ``body_timeout_s`` (408)."""
    limit = settings.max_body_bytes
    too_large = GatewayError(413, ErrorKind.TOO_LARGE, f"request body exceeds {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    receive = request.receive  # not request.stream(): a generator per request costs
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect
                chunk: bytes = message.get("body", b"")
                if not body and not message.get("more_body", False):
                    if len(chunk) > limit:
                        raise too_large
                    return chunk  # the whole body in one message: no copy
                body += chunk
                if len(body) > limit:
                    raise too_large
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise GatewayError(
            408,
            ErrorKind.BAD_REQUEST,
            "the request body did not arrive in time",
            received_bytes=len(body),
        ) from None
    return bytes(body)


def decode_body(body: bytes, type_: type[T]) -> T:
    """``body`` decoded as ``type_``; a 400 naming what is wrong otherwise."""
    try:
        return decode(body, type_)
    except WireError as exc:
        raise GatewayError(400, ErrorKind.BAD_REQUEST, printable(exc.message, 500)) from exc


async def unless_gone(waiting: asyncio.Future[T], request: Request) -> T:
    """``waiting``'s result, unless the client disconnects first (then it is cancelled).

    A result that arrives after all is for ``waiting``'s done callbacks to give back.
    """
    gone = asyncio.ensure_future(_disconnected(request))
    either: set[asyncio.Future[Any]] = {waiting, gone}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():
            waiting.cancel()
    if not waiting.done() or waiting.cancelled():
        raise ClientGone
    return waiting.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
