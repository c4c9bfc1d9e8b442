"""Talking to neurons' management API over the gateway's one aiohttp session."""

from __future__ import annotations

import logging
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

__all__ = ["NeuronCallError", "NeuronClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)


class NeuronCallError(Exception):
    """A neuron call that failed: unreachable, or answered with an error."""

    def __init__(
        self, message: str, *, status: int | None = None, error: ErrorResponse | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error

    @property
    def code(self) -> str | None:
        """The neuron's error code, when it answered with one."""
        return self.error.error.code if self.error else None


class NeuronClient:
    """The management calls the gateway makes to one neuron."""

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
            raise NeuronCallError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if status >= 400:
            try:
                error: ErrorResponse | None = decode(raw, ErrorResponse)
            except WireError:
                error = None
            message = error.error.message if error else f"HTTP {status}"
            raise NeuronCallError(message, status=status, error=error)
        try:
            return decode(raw, answer)
        except WireError as exc:
            raise NeuronCallError(f"unexpected answer: {exc.message}", status=status) from exc

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
        return await self._call(
            "POST",
            "/models/load",
            ModelInfo,
            request,
            aiohttp.ClientTimeout(total=limit_s, connect=5),
        )

    async def unload(self, model_id: str, limit_s: float = 120.0) -> UnloadResponse:
        """``POST /models/unload``."""
        return await self._call(
            "POST",
            "/models/unload",
            UnloadResponse,
            UnloadRequest(model=model_id),
            aiohttp.ClientTimeout(total=limit_s, connect=5),
        )

    async def endpoint(self, model_id: str) -> str:
        """The OpenAI base URL the neuron advertises for ``model_id``."""
        path = "/models/" + quote(model_id, safe="/") + "/endpoint"
        return (await self._call("GET", path, EndpointResponse)).url

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """``POST /tokenize``."""
        return await self._call(
            "POST", "/tokenize", TokenizeResponse, request, aiohttp.ClientTimeout(total=60)
        )
