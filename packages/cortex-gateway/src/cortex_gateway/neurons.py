"""What the gateway needs from its neurons, independent of how it reaches them.

The lifecycle and the request pipeline talk only to these protocols;
``transport`` implements them over one aiohttp session, and
``cortex_gateway.testing`` with a scripted in-process fleet for tests and for
anyone embedding the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from cortex_core.neuron_api import (
    DevicesResponse,
    ErrorResponse,
    Health,
    LoadRequest,
    ModelInfo,
    ModelsResponse,
    TokenizeRequest,
    TokenizeResponse,
    UnloadResponse,
)

__all__ = ["NeuronApi", "NeuronCallError", "Neurons", "Upstream", "UpstreamError"]


class NeuronCallError(Exception):
    """A management call that failed: the neuron was unreachable, or answered an error.

    ``upstream_status`` is the neuron's HTTP status (``None`` when nothing
    came back) and ``error`` its structured error, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        error: ErrorResponse | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.error = error

    @property
    def code(self) -> str | None:
        """The neuron's error code, when it answered with one."""
        return self.error.error.code if self.error else None


class UpstreamError(Exception):
    """An inference request that could not be sent, or whose answer broke off."""


class NeuronApi(Protocol):
    """The management calls the gateway makes to one neuron."""

    @property
    def name(self) -> str:
        """The neuron's configured name."""
        ...

    @property
    def base_url(self) -> str:
        """The neuron's management API, as configured."""
        ...

    async def health(self) -> Health:
        """``GET /health``."""
        ...

    async def devices(self) -> DevicesResponse:
        """``GET /devices``."""
        ...

    async def models(self) -> ModelsResponse:
        """``GET /models``."""
        ...

    async def load(self, request: LoadRequest, limit_s: float) -> ModelInfo:
        """``POST /models/load``, waiting up to ``limit_s`` seconds for the model to be ready."""
        ...

    async def unload(self, model_id: str, *, sleep: bool = False) -> UnloadResponse:
        """``POST /models/unload``; with ``sleep`` the neuron may put the model to sleep instead.

        The answer's ``state`` says which it did: ``unloaded`` or ``sleeping``.
        """
        ...

    async def endpoint(self, model_id: str) -> str:
        """The OpenAI base URL the neuron advertises for ``model_id``."""
        ...

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """``POST /tokenize``."""
        ...


class Upstream(Protocol):
    """An inference request whose status and headers are in; its body still to come."""

    @property
    def status(self) -> int:
        """The upstream's HTTP status."""
        ...

    @property
    def streaming(self) -> bool:
        """Whether the body is a server-sent-event stream."""
        ...

    @property
    def relayable(self) -> bool:
        """Whether the neuron marked its error message safe to show the client."""
        ...

    async def read(self) -> bytes:
        """The whole body; raises :class:`UpstreamError` if it breaks off."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises :class:`UpstreamError` if it breaks off."""
        ...

    def close(self) -> None:
        """Drop the request: the neuron sees the client go and stops generating."""
        ...


class Neurons(Protocol):
    """How the gateway reaches its fleet: a client per neuron, and inference requests."""

    def client(self, name: str, endpoint: str, token: str | None = None) -> NeuronApi:
        """The management client of the neuron ``name`` at ``endpoint`` (sending ``token``)."""
        ...

    async def open(self, node: str, url: str, body: bytes, headers: Mapping[str, str]) -> Upstream:
        """POST ``body`` to ``url`` (an OpenAI route of ``node``); return once headers are in.

        Raises :class:`UpstreamError` when nothing came back.
        """
        ...

    async def aclose(self) -> None:
        """Give back connections; called once when the gateway stops."""
        ...
