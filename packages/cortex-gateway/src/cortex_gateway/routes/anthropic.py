"""The Anthropic API: ``POST /v1/messages`` and ``/v1/messages/count_tokens`` on OpenAI neurons.

The same pipeline as the OpenAI routes (aliases, routing, cold loads,
metrics, errors in Anthropic's envelope); the body is translated by
``translate.anthropic`` on the way in and the answer on the way out. A stream
whose model is not ready within a second starts at once and sends ``ping``
events while the client waits. Claude Code's billing block is dropped first
(``[anthropic] strip_billing_header``), and its session header keeps a
conversation on one node (``[anthropic] session_affinity``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.anthropic import (
    CountTokensRequest,
    CountTokensResponse,
    MessagesRequest,
    ThinkingAdaptive,
    ThinkingEnabled,
)
from cortex_core.config import AnthropicSection
from cortex_core.neuron_api import TokenizeRequest, TokenizeResponse
from cortex_core.openai import ChatCompletion
from cortex_core.wire import WireError, decode, encode
from cortex_gateway.bodies import MessagesView, stamp
from cortex_gateway.calls import Call
from cortex_gateway.errors import ErrorKind, GatewayError, Surface, anthropic_type
from cortex_gateway.incoming import decode_body, read_body
from cortex_gateway.metering import Meter
from cortex_gateway.neurons import NeuronApi, NeuronCallError
from cortex_gateway.pipeline import EarlyStart
from cortex_gateway.responses import json_response
from cortex_gateway.routes.endpoint import Handler, endpoint
from cortex_gateway.state import Gateway
from cortex_gateway.translate.anthropic import (
    SESSION_HEADER,
    StreamTranslator,
    from_openai,
    openai_messages_for_tokenize,
    relay,
    sse_event,
    to_openai,
    without_billing_header,
)

__all__ = ["AnthropicRoutes", "MessagesForward"]

CHAT = "/chat/completions"
READY_WITHIN_S = 1.0
"""A stream whose model is ready starts with a status; one still waiting after this, at once."""
PING_EVERY_S = 2.0
"""While a cold load keeps a stream waiting, a ``ping`` event this often."""


class MessagesForward:
    """An Anthropic message sent as an OpenAI chat request, its answer back (the adapter)."""

    path = CHAT

    def __init__(
        self, body: bytes, message: MessagesRequest, *, strip_billing_header: bool = True
    ) -> None:
        self.model = message.model
        self.streaming = bool(message.stream)
        self._body = body
        stripped = without_billing_header(message) if strip_billing_header else message
        self._stripped = stripped is not message
        self._message = stripped
        self._concrete = message.model
        self._translator: StreamTranslator | None = None
        thinking = stripped.thinking
        self._omit_thinking = (
            isinstance(thinking, ThinkingEnabled | ThinkingAdaptive)
            and thinking.display == "omitted"
        )

    @property
    def early_start(self) -> EarlyStart:
        """A stream starts before its model is ready, and pings while it waits."""
        return EarlyStart(READY_WITHIN_S, PING_EVERY_S)

    def prompt(self) -> bytes:
        """The raw JSON of the system prompt (less the billing block), then of the messages."""
        view = decode_body(self._body, MessagesView)
        if self._stripped:
            return encode(self._message.system) + bytes(view.messages)
        return view.rendered

    def prepare(self, model: str, priority: int, cache_salt: str | None) -> bytes:
        """The OpenAI chat request for ``model``, with the key's priority and cache salt."""
        self._concrete = model
        body = encode(to_openai(self._message, model))
        if not priority and cache_salt is None:
            return body  # built here: it carries neither
        return stamp(body, priority, cache_salt)

    def answer(self, call: Call, status: int, data: bytes, meter: Meter) -> Response:
        """The chat completion as an Anthropic message (a malformed one is a 502)."""
        try:
            answer = decode(data, ChatCompletion)
        except WireError as exc:
            raise GatewayError(
                502,
                ErrorKind.UPSTREAM,
                "the model server's answer was malformed",
                error=exc.message,
            ) from exc
        meter.usage = answer.usage
        message = from_openai(
            answer,
            self._concrete,
            self._message.stop_sequences,
            omit_thinking=self._omit_thinking,
        )
        return json_response(message, headers=call.headers())

    def stream(
        self, call: Call, chunks: AsyncIterator[bytes], meter: Meter
    ) -> AsyncIterator[bytes]:
        """The chunk stream as Anthropic stream events."""
        self._translator = translator = StreamTranslator(
            self._concrete,
            stop_sequences=self._message.stop_sequences,
            omit_thinking=self._omit_thinking,
        )
        return relay(translator, chunks, meter)

    def render_error(self, error: GatewayError) -> bytes:
        """One bare ``error`` event (nothing if the message already ended)."""
        assert self._translator is not None, "a stream fails only once it has started"
        failed = self._translator.fail(
            error.anthropic().error.message, anthropic_type(error.status)
        )
        return b"".join(sse_event(event) for event in failed)


async def _count(counted: CountTokensRequest, client: NeuronApi, model: str) -> TokenizeResponse:
    """The prompt's tokens, by the model's own tokenizer and chat template on its node."""
    messages, tools, template_kwargs = openai_messages_for_tokenize(counted)
    request = TokenizeRequest(
        model=model, messages=messages, tools=tools, chat_template_kwargs=template_kwargs
    )
    try:
        return await client.tokenize(request)
    except NeuronCallError as exc:
        raise GatewayError(
            400 if exc.upstream_status == 400 else 502,
            ErrorKind.UPSTREAM,
            "the model server could not count the tokens",
            error=str(exc),
            url=client.base_url,
            upstream_status=exc.upstream_status,
        ) from exc


class AnthropicRoutes:
    """The Anthropic Messages routes over a :class:`~cortex_gateway.state.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        """The routes, wrapped."""

        def r(path: str, handler: str, work: Handler) -> Route:
            wrapped = endpoint(self.gateway, handler, Surface.ANTHROPIC, work)
            return Route(path, wrapped, methods=["POST"])

        return [
            r("/v1/messages", "messages", self.messages),
            r("/v1/messages/count_tokens", "count_tokens", self.count_tokens),
        ]

    @property
    def settings(self) -> AnthropicSection:
        """``[anthropic]`` of ``cortex.toml``."""
        return self.gateway.config.cortex.anthropic

    async def messages(self, request: Request, call: Call) -> Response:
        """``POST /v1/messages``."""
        body = await read_body(request, self.gateway.settings)
        message = decode_body(body, MessagesRequest)
        if self.settings.session_affinity:
            call.session = request.headers.get(SESSION_HEADER) or None
        forward = MessagesForward(
            body, message, strip_billing_header=self.settings.strip_billing_header
        )
        return await self.gateway.pipeline.forward(request, call, forward)

    async def count_tokens(self, request: Request, call: Call) -> Response:
        """``POST /v1/messages/count_tokens``, counted by the routed model's own tokenizer."""
        counted = decode_body(await read_body(request, self.gateway.settings), CountTokensRequest)
        if self.settings.strip_billing_header:
            counted = without_billing_header(counted)
        question = partial(_count, counted)
        answer = await self.gateway.pipeline.ask(request, call, counted.model, question)
        return json_response(CountTokensResponse(input_tokens=answer.count), headers=call.headers())
