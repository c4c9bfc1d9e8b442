"""The OpenAI Responses API: ``POST /v1/responses`` (Codex CLI, the Agents SDK) over the pipeline.

Routed as chat is (aliases, cold loads, retries before the first byte, the
same errors and limits): the body goes to the neuron as it came but for its
``model``, and the neuron serves it with vLLM's own Responses layer. The
prompt that prefix-aware routing compares is the instructions and the input,
led by the request's ``prompt_cache_key`` when it has one.

No response is kept. vLLM keeps stored responses in the memory of the engine
that made them, without bound, and they go when that engine is unloaded,
evicted or restarted, which in a fleet that swaps models is any time; so a
request that needs a stored response (``store: true``, ``background: true``,
``previous_response_id``) is a 400 saying so, and ``GET /v1/responses/{id}``
a 404. Clients that send the whole conversation every turn with ``store:
false`` (Codex CLI does) are served in full.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.text import printable
from cortex_gateway.bodies import ResponsesView, rewrite_model
from cortex_gateway.calls import Call
from cortex_gateway.errors import ErrorKind, GatewayError, Surface
from cortex_gateway.incoming import decode_body, read_body
from cortex_gateway.metering import Meter
from cortex_gateway.openai_responses import ResponsesStream, responses_usage
from cortex_gateway.pipeline import EarlyStart
from cortex_gateway.responses import JSON
from cortex_gateway.routes.endpoint import endpoint
from cortex_gateway.state import Gateway

__all__ = ["ResponsesForward", "ResponsesRoutes", "not_kept"]

NOT_KEPT = "this gateway keeps no responses"
_RESEND = "send the whole conversation in `input` with `store: false` (as Codex CLI does)"


def not_kept(view: ResponsesView) -> str | None:
    """Why a request cannot be served without a kept response; ``None`` if it can."""
    if view.previous_response_id is not None:
        return f"previous_response_id is not supported: {NOT_KEPT}; {_RESEND}"
    if view.background:
        return f"background responses are not supported: {NOT_KEPT}; {_RESEND}"
    if view.store:
        return f"store: true is not supported: {NOT_KEPT}; {_RESEND} or leave `store` out"
    return None


class ResponsesForward:
    """A Responses request, forwarded as it came but for its model (the adapter)."""

    path = "/responses"
    early_start: EarlyStart | None = None
    """A stream starts once the upstream has answered: its status is a real status."""

    def __init__(self, body: bytes, view: ResponsesView, block_chars: int) -> None:
        self.model = view.model
        self.streaming = view.stream
        self._body = body
        self._view = view
        self._block_chars = block_chars
        self._stream = ResponsesStream(view.model)

    def prompt(self) -> bytes:
        """The cache key (whole blocks of it), the instructions, then the input."""
        return self._view.rendered(self._block_chars)

    def prepare(self, model: str, priority: int, cache_salt: str | None) -> bytes:
        """The body as it came, with ``model``."""
        self._stream.model = model
        return rewrite_model(self._body, model, priority=priority, cache_salt=cache_salt)

    def answer(self, call: Call, status: int, data: bytes, meter: Meter) -> Response:
        """The upstream's answer, byte for byte; its usage read in the Responses API's terms."""
        meter.usage = responses_usage(data)
        return Response(data, status_code=status, media_type=JSON, headers=call.headers())

    def stream(
        self, call: Call, chunks: AsyncIterator[bytes], meter: Meter
    ) -> AsyncIterator[bytes]:
        """The upstream's named events, metered as they pass."""
        return self._stream.relay(chunks, meter)

    def render_error(self, error: GatewayError) -> bytes:
        """``response.failed``, ending the stream with the error."""
        return self._stream.failed(error)


class ResponsesRoutes:
    """``/v1/responses`` over a :class:`~cortex_gateway.state.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        """The routes, wrapped."""
        gateway, openai = self.gateway, Surface.OPENAI
        return [
            Route(
                "/v1/responses",
                endpoint(gateway, "responses", openai, self.create),
                methods=["POST"],
            ),
            Route(
                "/v1/responses/{response_id:path}",
                endpoint(gateway, "retrieve_response", openai, self.retrieve),
                methods=["GET"],
            ),
        ]

    async def create(self, request: Request, call: Call) -> Response:
        """``POST /v1/responses``."""
        body = await read_body(request, self.gateway.settings)
        view = decode_body(body, ResponsesView)
        if (refusal := not_kept(view)) is not None:
            call.name(self.gateway.lifecycle.catalogue, view.model)  # for its log line and metrics
            raise GatewayError(400, ErrorKind.BAD_REQUEST, refusal)
        blocks = self.gateway.lifecycle.routing.prefix_block_chars
        forward = ResponsesForward(body, view, blocks)
        return await self.gateway.pipeline.forward(request, call, forward)

    async def retrieve(self, request: Request, call: Call) -> Response:
        """``GET /v1/responses/{id}``: never found, since no response is kept."""
        response_id = printable(request.path_params["response_id"], 200)
        raise GatewayError(
            404, ErrorKind.NOT_FOUND, f"response '{response_id}' not found: {NOT_KEPT}"
        )
