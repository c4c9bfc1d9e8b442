"""The gateway's HTTP API: one OpenAI-compatible endpoint for the whole fleet.

Routes are thin: read the body (bounded), decode only ``model`` and
``stream``, ask the lifecycle where the model is (loading it if need be),
and hand the bytes to the proxy. Every failure answers with the route's
error envelope and is logged once with the same fields everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cortex_core.anthropic import error_envelope as anthropic_error
from cortex_core.catalogue import Catalogue
from cortex_core.config import GatewayConfig
from cortex_core.openai import StreamOptions, error_envelope
from cortex_core.wire import WireError, decode, encode
from cortex_gateway import __version__
from cortex_gateway.catalogue_view import find_model, list_models
from cortex_gateway.lifecycle import Lifecycle, RouteError
from cortex_gateway.metering import Meter, meter_stream, usage_of
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.neuron_client import NeuronCallError
from cortex_gateway.proxy import (
    Upstream,
    UpstreamError,
    open_upstream,
    relayable_message,
    rewrite_model,
)
from cortex_gateway.translate.anthropic import error_type_for_status

__all__ = ["Gateway", "create_apps"]

log = logging.getLogger(__name__)

JSON = "application/json"
NODE_HEADER = "x-cortex-node"


UNREACHABLE = "the model server could not be reached"
ANTHROPIC_HANDLERS = frozenset({"messages", "count_tokens"})
ROUTES = {
    "/v1/chat/completions": "chat_completions",
    "/v1/completions": "completions",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
}
"""Route label values for metrics: the inference routes, everything else is ``other``."""


class RequestView(msgspec.Struct):
    """What the gateway reads of an inference body; the rest passes as it came."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None


@dataclass
class Call:
    """One inference request on its way through the gateway."""

    handler: str
    request_id: str
    started: float
    model: str | None = None
    alias: str | None = None
    node: str | None = None
    routed: float | None = None
    strip_usage: bool = False
    url: str | None = None
    release: Callable[[], None] = field(default=lambda: None)

    def name(self, catalogue: Catalogue, asked: str) -> str:
        """Record the model asked for (the alias too, if one was used); return its concrete id."""
        model = self.model = catalogue.resolve_alias(asked)
        self.alias = asked if asked != model else None
        return model

    def fields(self) -> dict[str, str]:
        """The log fields known so far."""
        found = {"model": self.model, "alias": self.alias, "node": self.node}
        return {k: v for k, v in found.items() if v is not None}


def _nothing() -> None:
    pass


class BodyTooLarge(Exception):
    """A request body over ``max_body_bytes``."""


def _json(value: Any, status: int = 200, node: str | None = None) -> Response:
    headers = {NODE_HEADER: node} if node else None
    return Response(encode(value), status_code=status, media_type=JSON, headers=headers)


class _TrackedStream(StreamingResponse):
    """A pass-through stream whose clean-up runs however the response ends.

    The clean-up lives in the response (not the body iterator), so it also
    runs for a client gone before the first chunk, when the iterator never starts.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        headers: dict[str, str],
        done: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(chunks, media_type="text/event-stream", headers=headers)
        self._chunks = chunks
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            finally:
                await self._done()


class Gateway:
    """Route handlers over one lifecycle and one HTTP session; no global state."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.settings = config.cortex.gateway
        self.session: aiohttp.ClientSession | None = None
        self.lifecycle: Lifecycle | None = None
        self.metrics: GatewayMetrics | None = None

    # --- plumbing --------------------------------------------------------------------

    def start(self, session: aiohttp.ClientSession) -> Lifecycle:
        """Build the lifecycle and metrics over ``session`` (called from the lifespan)."""
        self.session = session
        self.lifecycle = Lifecycle(self.config, session)
        self.metrics = GatewayMetrics(self.lifecycle)
        return self.lifecycle

    @property
    def life(self) -> Lifecycle:
        """The lifecycle (present once the app has started)."""
        assert self.lifecycle is not None
        return self.lifecycle

    def authorized(self, request: Request) -> bool:
        """Whether the request carries one of ``api_keys`` (always, when there are none)."""
        keys = self.settings.api_keys
        if not keys:
            return True
        bearer = request.headers.get("authorization", "")
        given = bearer[7:].strip() if bearer.lower().startswith("bearer ") else None
        return given in keys or request.headers.get("x-api-key") in keys

    async def read_body(self, request: Request) -> bytes:
        """The body, refused past ``max_body_bytes`` without reading all of it."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge
        return bytes(body)

    def fail(
        self,
        status: int,
        message: str,
        kind: str,
        *,
        handler: str,
        log_error: str | None = None,
        anthropic: bool = False,
        **fields: Any,
    ) -> Response:
        """An error envelope (OpenAI's, or Anthropic's), logged once with the operator's fields."""
        log.warning(
            "request failed",
            extra={"handler": handler, "status": status, "error": log_error or message, **fields},
        )
        node = fields.get("node")
        envelope: Any = (
            anthropic_error(error_type_for_status(status), message)
            if anthropic
            else error_envelope(message, kind, code=status)
        )
        return _json(envelope, status, node if isinstance(node, str) else None)

    # --- public routes -------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok", "version": __version__})

    async def models(self, request: Request) -> Response:
        return _json(list_models(self.life.catalogue, self.life.fleet))

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model"]
        entry = find_model(model_id, self.life.catalogue, self.life.fleet)
        if entry is None:
            return self.fail(
                404,
                f"model {model_id!r} does not exist",
                "not_found_error",
                handler="models",
                model=model_id,
            )
        return _json(entry)

    async def chat(self, request: Request) -> Response:
        return await self._inference(request, "chat_completions", "/chat/completions")

    async def completions(self, request: Request) -> Response:
        return await self._inference(request, "completions", "/completions")

    def begin(self, request: Request, handler: str) -> Call:
        """The bookkeeping of one inference request, with its request id."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        return Call(handler=handler, request_id=request_id[:128], started=time.monotonic())

    def reject(self, call: Call, status: int, message: str, kind: str, **log: Any) -> Response:
        """Fail one inference request: metrics, one log line, the OpenAI envelope."""
        assert self.metrics is not None
        labels = self.metrics.labels(call.model, call.alias, call.node, call.handler)
        self.metrics.observe_failure(labels, status, kind)
        response = self.fail(
            status,
            message,
            kind,
            handler=call.handler,
            anthropic=call.handler in ANTHROPIC_HANDLERS,
            request_id=call.request_id,
            **call.fields(),
            **log,
        )
        response.headers["x-request-id"] = call.request_id
        return response

    async def _inference(self, request: Request, handler: str, path: str) -> Response:
        call = self.begin(request, handler)
        try:
            body = await self.read_body(request)
        except BodyTooLarge:
            limit = self.settings.max_body_bytes
            return self.reject(
                call, 413, f"request body exceeds {limit} bytes", "invalid_request_error"
            )
        except ClientDisconnect:
            return Response(status_code=499)
        try:
            view = decode(body, RequestView)
        except WireError as exc:
            return self.reject(call, 400, exc.message, "invalid_request_error")
        model = call.name(self.life.catalogue, view.model)
        # Ask for usage on streams, to count tokens; the extra chunk goes again on the way back.
        call.strip_usage = view.stream and not (
            view.stream_options and view.stream_options.include_usage
        )
        try:
            forwarded = rewrite_model(body, model, include_usage=call.strip_usage)
        except WireError as exc:
            return self.reject(call, 400, exc.message, "invalid_request_error")
        for attempt in (1, 2):
            try:
                call.node = await self.life.resolve(model)
            except RouteError as exc:
                kind = "not_found_error" if exc.status == 404 else "service_unavailable"
                return self.reject(call, exc.status, exc.message, kind)
            call.routed = time.monotonic()
            response = await self._forward(request, call, path, forwarded, retry=attempt == 1)
            if response is not None:
                return response
        return self.reject(
            call, 503, f"model {call.model!r} is not available", "service_unavailable"
        )

    async def connect(self, call: Call, path: str, body: bytes, *, retry: bool) -> Connected:
        """Open the request to the routed node's OpenAI API.

        Answers the open upstream (its request counted in flight until
        ``call.release()``), ``None`` when the model left the node and routing
        should start again, or the error response already made.
        """
        assert self.session is not None
        life, node, model = self.life, call.node, call.model
        assert node is not None
        assert model is not None
        try:
            base = await life.endpoint(node, model)
        except NeuronCallError as exc:
            await life.refresh(node)
            if exc.status == 404 and retry:
                return None
            return self.reject(
                call,
                502,
                UNREACHABLE,
                "upstream_error",
                log_error=str(exc),
                upstream_status=exc.status,
            )
        call.url = f"{base.rstrip('/')}{path}"
        headers = {"content-type": "application/json", "x-request-id": call.request_id}
        key = (node, model)
        life.in_flight[key] += 1

        def release() -> None:
            if call.release is release:
                call.release = _nothing
                life.in_flight[key] -= 1
                if life.in_flight[key] <= 0:
                    del life.in_flight[key]

        call.release = release
        try:
            upstream = await open_upstream(self.session, call.url, body, headers)
        except UpstreamError as exc:
            release()
            life.forget_endpoint(node, model)
            await life.refresh(node)
            return self.reject(
                call, 502, UNREACHABLE, "upstream_error", log_error=str(exc), url=call.url
            )
        except BaseException:
            release()
            raise
        return upstream

    async def read_answer(
        self, call: Call, upstream: Upstream, *, retry: bool
    ) -> bytes | Response | None:
        """The complete body of a successful answer, or the error response for a failed one.

        ``None``: the model left the node after it was routed there; route again.
        """
        assert call.node is not None
        assert call.model is not None
        try:
            data = await upstream.read()
        except UpstreamError as exc:
            return self.reject(
                call,
                502,
                "the model server failed while answering",
                "upstream_error",
                log_error=str(exc),
                url=call.url,
            )
        finally:
            call.release()
        if upstream.status == 404 and retry:
            self.life.forget_endpoint(call.node, call.model)
            await self.life.refresh(call.node)
            return None
        if upstream.status >= 500:
            return self.reject(
                call,
                502,
                f"the model server failed (upstream status {upstream.status})",
                "upstream_error",
                url=call.url,
                upstream_status=upstream.status,
            )
        if upstream.status >= 400:
            message = relayable_message(data) or (
                f"the model server refused the request (upstream status {upstream.status})"
            )
            return self.reject(
                call, upstream.status, message, "invalid_request_error", url=call.url
            )
        return data

    def reply_headers(self, call: Call) -> dict[str, str]:
        """Headers every answer carries: the serving node and the request id."""
        return {NODE_HEADER: call.node or "", "x-request-id": call.request_id}

    async def _forward(
        self, request: Request, call: Call, path: str, body: bytes, *, retry: bool
    ) -> Response | None:
        """Send to the routed node; ``None`` asks the caller to route again (the model moved)."""
        meter = Meter(started=call.started)
        upstream = await self.connect(call, path, body, retry=retry)
        if not isinstance(upstream, Upstream):
            return upstream
        meter.first_byte = time.monotonic()
        if upstream.status >= 400 or not upstream.streaming:
            data = await self.read_answer(call, upstream, retry=retry)
            if not isinstance(data, bytes):
                return data
            meter.usage = usage_of(data)
            self.finish(call, upstream.status, meter)
            return Response(
                data, status_code=upstream.status, media_type=JSON, headers=self.reply_headers(call)
            )

        async def done() -> None:
            call.release()
            self.finish(call, upstream.status, meter)

        chunks = meter_stream(upstream.chunks(), meter, strip_usage=call.strip_usage)
        headers = {**self.reply_headers(call), "cache-control": "no-cache"}
        return _TrackedStream(chunks, headers, done)

    def finish(self, call: Call, status: int, meter: Meter) -> None:
        """Record a request that was answered: metrics and its one log line."""
        assert self.metrics is not None
        labels = self.metrics.labels(call.model, call.alias, call.node, call.handler)
        latency = time.monotonic() - call.started
        waited = (call.routed or call.started) - call.started
        self.metrics.observe_success(labels, status, meter, latency, waited)
        usage = meter.usage
        log.info(
            "request",
            extra={
                "request_id": call.request_id,
                "handler": call.handler,
                **call.fields(),
                "status": status,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "ttft_s": round(meter.ttft, 3) if meter.ttft is not None else None,
                "latency_s": round(latency, 3),
            },
        )

    async def scrape(self, request: Request) -> Response:
        assert self.metrics is not None
        text = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


Handler = Callable[[Request], Awaitable[Response]]
Connected = Upstream | Response | None


def _guard(gateway: Gateway, handler: Handler, *, public: bool = False) -> Handler:
    """Check the API key, and answer an unexpected exception with a logged 500 envelope."""

    async def guarded(request: Request) -> Response:
        anthropic = request.url.path.startswith("/v1/messages")
        if not public and not gateway.authorized(request):
            if gateway.metrics is not None:
                route = ROUTES.get(request.url.path, "other")
                labels = gateway.metrics.labels(None, None, None, route)
                gateway.metrics.observe_failure(labels, 401, "authentication_error")
            return gateway.fail(
                401,
                "missing or invalid API key",
                "authentication_error",
                handler=request.url.path,
                anthropic=anthropic,
            )
        try:
            return await handler(request)
        except Exception:
            log.exception("unhandled error", extra={"handler": request.url.path})
            if anthropic:
                return _json(anthropic_error("api_error", "internal error"), 500)
            return _json(error_envelope("internal error", "server_error", code=500), 500)

    return guarded


def create_apps(config: GatewayConfig) -> tuple[Starlette, Starlette, Gateway]:
    """The API app, the metrics app (its own listener), and the handlers' state."""
    # Both build on this module's Gateway.
    from cortex_gateway.admin_routes import AdminRoutes
    from cortex_gateway.anthropic_routes import AnthropicRoutes

    gateway = Gateway(config)
    anthropic = AnthropicRoutes(gateway)
    admin = AdminRoutes(gateway)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            life = gateway.start(session)
            await life.refresh_all()
            poller = asyncio.create_task(life.run())
            log.info(
                "gateway started",
                extra={
                    "version": __version__,
                    "neurons": [n.name for n in config.cortex.neurons],
                    "models": len(config.catalogue),
                },
            )
            try:
                yield
            finally:
                poller.cancel()
                await life.close()
                log.info("gateway stopped")

    def r(
        path: str, handler: Handler, methods: list[str] | None = None, *, public: bool = False
    ) -> Route:
        return Route(path, _guard(gateway, handler, public=public), methods=methods)

    api = Starlette(
        routes=[
            r("/health", gateway.health, public=True),
            r("/v1/models", gateway.models),
            r("/v1/models/{model:path}", gateway.model),
            r("/v1/chat/completions", gateway.chat, ["POST"]),
            r("/v1/completions", gateway.completions, ["POST"]),
            r("/v1/messages", anthropic.messages, ["POST"]),
            r("/v1/messages/count_tokens", anthropic.count_tokens, ["POST"]),
            r("/admin/fleet", admin.fleet),
            r("/admin/models/load", admin.load, ["POST"]),
            r("/admin/models/unload", admin.unload, ["POST"]),
        ],
        lifespan=lifespan,
    )
    metrics = Starlette(routes=[Route("/metrics", _guard(gateway, gateway.scrape, public=True))])
    return api, metrics, gateway
