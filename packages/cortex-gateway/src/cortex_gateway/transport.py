"""The neurons over HTTP: the :mod:`~cortex_gateway.neurons` protocols on one aiohttp session.

Management calls decode the neuron's answers into ``cortex_core.neuron_api``
types; inference requests are sent as bytes and come back as bytes, streams
chunk by chunk as they arrive, never buffered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from cortex_core.neuron_api import (
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
from cortex_core.wire import WireError, decode, encode
from cortex_gateway.neurons import NeuronCallError, UpstreamError

__all__ = ["HttpNeurons", "HttpUpstream", "NeuronClient"]

T = TypeVar("T")

POLL_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)
UNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=5)
TOKENIZE_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=5)
INFERENCE_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=600)
"""Connect fast; a model may think for minutes between bytes on a long generation."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class NeuronClient:
    """The management calls to one neuron, over the gateway's session."""

    def __init__(self, session: aiohttp.ClientSession, name: str, endpoint: str) -> None:
        self.session = session
        self.name = name
        self.base_url = endpoint.rstrip("/")

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
        headers = {"content-type": "application/json"} if data is not None else None
        try:
            async with self.session.request(
                method, url, data=data, headers=headers, timeout=limits
            ) as response:
                raw = await response.read()
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

    async def unload(self, model_id: str) -> UnloadResponse:
        """``POST /models/unload``."""
        request = UnloadRequest(model=model_id)
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
    """The fleet over one aiohttp session (made here, so in the running loop)."""

    def __init__(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(connector=connector)

    def client(self, name: str, endpoint: str) -> NeuronClient:
        """The management client of one neuron."""
        return NeuronClient(self.session, name, endpoint)

    async def open(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpUpstream:
        """POST ``body`` to ``url`` and return once the status and headers are in."""
        try:
            response = await self.session.post(
                url, data=body, headers=dict(headers), timeout=INFERENCE_TIMEOUT
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(_describe(exc)) from exc
        return HttpUpstream(response)

    async def aclose(self) -> None:
        """Close the session and its connections."""
        await self.session.close()
