"""The neurons over HTTP: the :mod:`~cortex_gateway.neurons` protocols on one aiohttp session.

Management calls decode the neuron's answers into ``cortex_core.neuron_api``
types, each read up to ``MAX_ANSWER_BYTES`` (a larger one fails the call, as a
node error) and decoded in a thread when large; inference requests are sent as
bytes and come back as bytes, streams chunk by chunk as they arrive, never
buffered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from cortex_core.neuron_api import (
    RELAYABLE_HEADER,
    DevicesResponse,
    EndpointResponse,
    ErrorResponse,
    Health,
    LoadRequest,
    ModelInfo,
    ModelsResponse,
    TokenizeRequest,
    TokenizeResponse,
    UnloadRequest,
    UnloadResponse,
)
from cortex_core.runtime.serving import UPSTREAM_KEEP_ALIVE_S
from cortex_core.wire import WireError, decode, encode
from cortex_gateway.neurons import NeuronCallError, UpstreamError

__all__ = ["HttpNeurons", "HttpUpstream", "NeuronClient"]

T = TypeVar("T")

POLL_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)
MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The largest management answer read from a neuron; past it, the call fails (a node error)."""
DECODE_OFF_LOOP_BYTES = 256 * 1024
"""Answers at least this large are decoded in a thread: the loop carries every request."""
UNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=5)
TOKENIZE_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=5)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    """The body, up to ``MAX_ANSWER_BYTES``; a larger one fails the call before it is all read."""
    too_large = NeuronCallError(
        f"answer too large: over {MAX_ANSWER_BYTES >> 20} MiB", upstream_status=response.status
    )
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise too_large
    return bytes(body)


class NeuronClient:
    """The management calls to one neuron, over the gateway's session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        name: str,
        endpoint: str,
        auth: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.name = name
        self.base_url = endpoint.rstrip("/")
        self.auth = auth or {}
        """The ``Authorization`` header this neuron needs, if any."""

    async def _call(
        self,
        method: str,
        path: str,
        answer: type[T],
        body: Any = None,
        limits: aiohttp.ClientTimeout = POLL_TIMEOUT,
    ) -> T:
        url = f"{self.base_url}{path}"
        data = encode(body) if body is not None else None
        headers = (
            {"content-type": "application/json", **self.auth} if data is not None else self.auth
        )
        try:
            async with self.session.request(
                method, url, data=data, headers=headers, timeout=limits
            ) as response:
                raw = await _bounded(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NeuronCallError(_describe(exc)) from exc
        if status >= 400:
            try:
                error: ErrorResponse | None = decode(raw, ErrorResponse)
            except WireError:
                error = None
            message = error.error.message if error else f"HTTP {status}"
            raise NeuronCallError(message, upstream_status=status, error=error)
        try:
            if len(raw) >= DECODE_OFF_LOOP_BYTES:
                return await asyncio.to_thread(decode, raw, answer)
            return decode(raw, answer)
        except WireError as exc:
            raise NeuronCallError(
                f"unexpected answer: {exc.message}", upstream_status=status
            ) from exc

    async def health(self) -> Health:
        """``GET /health``."""
        return await self._call("GET", "/health", Health)

    async def devices(self) -> DevicesResponse:
        """``GET /devices``."""
        return await self._call("GET", "/devices", DevicesResponse)

    async def models(self) -> ModelsResponse:
        """``GET /models``."""
        return await self._call("GET", "/models", ModelsResponse)

    async def load(self, request: LoadRequest, limit_s: float) -> ModelInfo:
        """``POST /models/load``, waiting up to ``limit_s`` seconds."""
        limits = aiohttp.ClientTimeout(total=limit_s, connect=5)
        return await self._call("POST", "/models/load", ModelInfo, request, limits)

    async def unload(self, model_id: str, *, sleep: bool = False) -> UnloadResponse:
        """``POST /models/unload``; with ``sleep``, the model may sleep instead (see the answer)."""
        request = UnloadRequest(model=model_id, sleep=sleep)
        return await self._call("POST", "/models/unload", UnloadResponse, request, UNLOAD_TIMEOUT)

    async def endpoint(self, model_id: str) -> str:
        """The OpenAI base URL the neuron advertises for ``model_id``."""
        path = "/models/" + quote(model_id, safe="/") + "/endpoint"
        return (await self._call("GET", path, EndpointResponse)).url

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """``POST /tokenize``."""
        return await self._call("POST", "/tokenize", TokenizeResponse, request, TOKENIZE_TIMEOUT)


class HttpUpstream:
    """An inference answer on its way from a neuron."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.streaming = response.headers.get("content-type", "").startswith("text/event-stream")
        self.relayable = response.headers.get(RELAYABLE_HEADER) == "1"

    async def read(self) -> bytes:
        """The whole body (complete answers)."""
        try:
            return await self.response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"reading the answer failed: {_describe(exc)}") from exc
        finally:
            self.response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"upstream stream broke: {_describe(exc)}") from exc

    def close(self) -> None:
        """Close (not release) the connection: the neuron sees the client go."""
        self.response.close()


class HttpNeurons:
    """The fleet over aiohttp (sessions made here, so in the running loop).

    Inference keeps a pool of connections; management calls open one each.
    aiohttp hands out pooled connections oldest first, so frequent polls over a
    pool would keep every connection a burst ever opened alive forever; a few
    polls a second on a fresh connection cost nothing by comparison.
    """

    def __init__(self, connect_timeout_s: float = 5.0) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=60, keepalive_timeout=UPSTREAM_KEEP_ALIVE_S
            )
        )
        self.management = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, force_close=True)
        )
        # The first byte and the silences of a stream are timed by the pipeline, not here.
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self._auth: dict[str, dict[str, str]] = {}

    def client(self, name: str, endpoint: str, token: str | None = None) -> NeuronClient:
        """The management client of one neuron."""
        auth = self._auth[name] = {"authorization": f"Bearer {token}"} if token else {}
        return NeuronClient(self.management, name, endpoint, auth)

    async def open(
        self, node: str, url: str, body: bytes, headers: Mapping[str, str]
    ) -> HttpUpstream:
        """POST ``body`` to ``url`` and return once the status and headers are in."""
        try:
            response = await self.session.post(
                url,
                data=body,
                headers={**headers, **self._auth.get(node, {})},
                timeout=self.timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(_describe(exc)) from exc
        return HttpUpstream(response)

    async def aclose(self) -> None:
        """Close the sessions and their connections."""
        await self.session.close()
        await self.management.close()
