"""Forwarding inference requests to neurons: bytes in, bytes out, streams unbuffered.

Only ``model`` is rewritten (to the concrete id the neuron knows); every other
byte of the body goes as it came. Streams pass through chunk by chunk, and a
client that disconnects closes the upstream request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import msgspec

from cortex_core.openai import error_envelope
from cortex_core.wire import WireError, encode

__all__ = ["Upstream", "UpstreamError", "open_upstream", "relayable_message", "rewrite_model"]

log = logging.getLogger(__name__)

_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=600)
"""Connect fast; a model may think for minutes between bytes on a long generation."""
MAX_RELAYED_MESSAGE = 500


def rewrite_model(body: bytes, model: str, *, include_usage: bool = False) -> bytes:
    """``body`` with its top-level ``model`` set to ``model``; other values kept byte for byte.

    With ``include_usage``, ``stream_options.include_usage`` is also set, so a
    stream ends with the token counts the gateway's metrics need.
    """
    try:
        fields = _raw_object.decode(body)
        fields["model"] = msgspec.Raw(encode(model))
        if include_usage:
            raw = fields.get("stream_options")
            options = _raw_object.decode(raw) if raw is not None and raw != b"null" else {}
            options["include_usage"] = msgspec.Raw(b"true")
            fields["stream_options"] = msgspec.Raw(encode(options))
    except msgspec.DecodeError as exc:
        raise WireError(f"body is not a JSON object: {exc}") from exc
    return encode(fields)


class UpstreamError(Exception):
    """The neuron could not be reached or failed; ``status`` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upstream:
    """An open upstream response: its status, whether it streams, and its body."""

    status: int
    streaming: bool
    response: aiohttp.ClientResponse
    started: float

    async def read(self) -> bytes:
        """The whole body (non-streaming answers)."""
        try:
            return await self.response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"reading the answer failed: {type(exc).__name__}") from exc
        finally:
            self.response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a broken stream ends with an OpenAI-style error event."""
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "upstream stream broke",
                extra={"url": str(self.response.url), "error": f"{type(exc).__name__}: {exc}"},
            )
            event = error_envelope("the model server stopped answering", "server_error", code=502)
            yield b"data: " + encode(event) + b"\n\n"
        finally:
            # Closing (not releasing) drops the connection: the neuron sees the
            # client go and aborts generation.
            self.response.close()


async def open_upstream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
) -> Upstream:
    """POST ``body`` to ``url`` and return once the status and headers are in."""
    started = time.monotonic()
    try:
        response = await session.post(url, data=body, headers=headers, timeout=UPSTREAM_TIMEOUT)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
    streaming = response.headers.get("content-type", "").startswith("text/event-stream")
    return Upstream(response.status, streaming, response, started)


def relayable_message(body: bytes) -> str | None:
    """The ``message`` of an OpenAI error envelope, if ``body`` is one; nothing else of it.

    This is how a request the model server refused (a prompt longer than the
    context, say) still tells the client why.
    """
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return message[:MAX_RELAYED_MESSAGE] if isinstance(message, str) else None
