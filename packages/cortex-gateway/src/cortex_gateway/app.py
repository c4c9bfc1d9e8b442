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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cortex_core.catalogue import ModelProfile
from cortex_core.config import GatewayConfig
from cortex_core.ids import InvalidModelId, parse_model_id
from cortex_core.openai import error_envelope
from cortex_core.wire import RouteView, WireError, decode, encode, to_builtins
from cortex_gateway import __version__
from cortex_gateway.catalogue_view import find_model, list_models
from cortex_gateway.lifecycle import Lifecycle, RouteError
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.neuron_client import NeuronCallError
from cortex_gateway.proxy import UpstreamError, open_upstream, relayable_message, rewrite_model

__all__ = ["Gateway", "create_apps"]

log = logging.getLogger(__name__)

JSON = "application/json"
NODE_HEADER = "x-cortex-node"


class BodyTooLarge(Exception):
    """A request body over ``max_body_bytes``."""


class AdminRequest(msgspec.Struct):
    """``POST /admin/models/load|unload``."""

    model: str
    node: str | None = None


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
        **fields: Any,
    ) -> Response:
        """An OpenAI error envelope, logged once with the operator's fields."""
        log.warning(
            "request failed",
            extra={"handler": handler, "status": status, "error": log_error or message, **fields},
        )
        node = fields.get("node")
        return _json(
            error_envelope(message, kind, code=status),
            status,
            node if isinstance(node, str) else None,
        )

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

    async def _inference(self, request: Request, handler: str, path: str) -> Response:
        started = time.monotonic()
        try:
            body = await self.read_body(request)
        except BodyTooLarge:
            limit = self.settings.max_body_bytes
            return self.fail(
                413, f"request body exceeds {limit} bytes", "invalid_request_error", handler=handler
            )
        except ClientDisconnect:
            return Response(status_code=499)
        try:
            view = decode(body, RouteView)
        except WireError as exc:
            return self.fail(400, exc.message, "invalid_request_error", handler=handler)
        asked = view.model
        model_id = self.life.catalogue.resolve_alias(asked)
        alias = asked if asked != model_id else None
        fields = {"model": model_id, "alias": alias} if alias else {"model": model_id}
        try:
            forwarded = rewrite_model(body, model_id)
        except WireError as exc:
            return self.fail(400, exc.message, "invalid_request_error", handler=handler, **fields)
        for attempt in (1, 2):
            try:
                node = await self.life.resolve(model_id)
            except RouteError as exc:
                kind = "not_found_error" if exc.status == 404 else "service_unavailable"
                return self.fail(exc.status, exc.message, kind, handler=handler, **fields)
            response = await self._forward(
                request,
                handler,
                path,
                node,
                model_id,
                alias,
                forwarded,
                started,
                retry=attempt == 1,
            )
            if response is not None:
                return response
        return self.fail(
            503,
            f"model {model_id!r} is not available",
            "service_unavailable",
            handler=handler,
            **fields,
        )

    async def _forward(
        self,
        request: Request,
        handler: str,
        path: str,
        node: str,
        model_id: str,
        alias: str | None,
        body: bytes,
        started: float,
        *,
        retry: bool,
    ) -> Response | None:
        """Send to ``node``; ``None`` asks the caller to route again (the model moved)."""
        assert self.session is not None
        assert self.metrics is not None
        life = self.life
        fields: dict[str, Any] = {"model": model_id, "node": node}
        if alias:
            fields["alias"] = alias
        try:
            base = await life.endpoint(node, model_id)
        except NeuronCallError as exc:
            await life.refresh(node)
            if exc.status == 404 and retry:
                return None
            return self.fail(
                502,
                "the model server could not be reached",
                "upstream_error",
                handler=handler,
                log_error=str(exc),
                status_upstream=exc.status,
                **fields,
            )
        url = f"{base.rstrip('/')}{path}"
        headers = {"content-type": "application/json"}
        if request_id := request.headers.get("x-request-id"):
            headers["x-request-id"] = request_id
        key = (node, model_id)
        life.in_flight[key] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                life.in_flight[key] -= 1
                if life.in_flight[key] <= 0:
                    del life.in_flight[key]

        try:
            upstream = await open_upstream(self.session, url, body, headers)
        except UpstreamError as exc:
            release()
            life.forget_endpoint(node, model_id)
            await life.refresh(node)
            return self.fail(
                502,
                "the model server could not be reached",
                "upstream_error",
                handler=handler,
                log_error=str(exc),
                url=url,
                **fields,
            )
        except BaseException:
            release()
            raise
        labels = (self.metrics.model_label(model_id), self.metrics.node_label(node), handler)
        if upstream.status >= 400 or not upstream.streaming:
            try:
                data = await upstream.read()
            except UpstreamError as exc:
                return self.fail(
                    502,
                    "the model server failed while answering",
                    "upstream_error",
                    handler=handler,
                    log_error=str(exc),
                    url=url,
                    **fields,
                )
            finally:
                release()
            if upstream.status == 404 and retry:
                # The model left that node after we routed: route again.
                life.forget_endpoint(node, model_id)
                await life.refresh(node)
                return None
            if upstream.status >= 500:
                return self.fail(
                    502,
                    f"the model server failed (upstream status {upstream.status})",
                    "upstream_error",
                    handler=handler,
                    url=url,
                    upstream_status=upstream.status,
                    **fields,
                )
            if upstream.status >= 400:
                message = (
                    relayable_message(data)
                    or f"the model server refused the request (upstream status {upstream.status})"
                )
                return self.fail(
                    upstream.status,
                    message,
                    "invalid_request_error",
                    handler=handler,
                    url=url,
                    **fields,
                )
            seconds = time.monotonic() - started
            self._observe(labels, alias, upstream.status, seconds)
            log.info(
                "proxied",
                extra={
                    "handler": handler,
                    **fields,
                    "status": upstream.status,
                    "seconds": round(seconds, 3),
                },
            )
            return Response(
                data, status_code=upstream.status, media_type=JSON, headers={NODE_HEADER: node}
            )

        async def done() -> None:
            release()
            seconds = time.monotonic() - started
            self._observe(labels, alias, upstream.status, seconds)
            log.info(
                "proxied stream",
                extra={
                    "handler": handler,
                    **fields,
                    "status": upstream.status,
                    "seconds": round(seconds, 3),
                },
            )

        return _TrackedStream(
            upstream.chunks(), {NODE_HEADER: node, "cache-control": "no-cache"}, done
        )

    def _observe(
        self, labels: tuple[str, str, str], alias: str | None, status: int, seconds: float
    ) -> None:
        assert self.metrics is not None
        model, node, route = labels
        alias_label = self.metrics.model_label(alias) if alias else ""
        self.metrics.requests.labels(model, alias_label, node, route, str(status)).inc()
        self.metrics.latency.labels(model, node, route).observe(seconds)

    # --- admin ------------------------------------------------------------------------------

    async def fleet(self, request: Request) -> Response:
        life = self.life
        nodes = []
        for node in life.fleet.nodes.values():
            nodes.append(
                {
                    "name": node.name,
                    "endpoint": node.endpoint,
                    "up": node.up,
                    "version": node.version,
                    "last_seen": node.last_seen,
                    "error": node.error,
                    "devices": to_builtins(list(node.devices)),
                    "models": to_builtins(list(node.models)),
                }
            )
        in_flight = [
            {"node": node, "model": model, "count": count}
            for (node, model), count in life.in_flight.items()
        ]
        return _json({"nodes": nodes, "loading": sorted(life.loading), "in_flight": in_flight})

    async def admin_load(self, request: Request) -> Response:
        try:
            body = decode(await request.body(), AdminRequest)
            model = parse_model_id(self.life.catalogue.resolve_alias(body.model))
        except (WireError, InvalidModelId) as exc:
            return self.fail(400, str(exc), "invalid_request_error", handler="admin_load")
        profile = self.life.catalogue.profile(model.concrete) or ModelProfile(
            id=model.concrete, source=model.source
        )
        if model.source and profile.source != model.source:
            profile = ModelProfile(id=model.concrete, source=model.source, engine=profile.engine)
        if body.node is not None:
            if body.node not in self.life.clients:
                return self.fail(
                    404, f"no neuron named {body.node!r}", "not_found_error", handler="admin_load"
                )
            profile = ModelProfile(
                id=profile.id,
                source=profile.source,
                engine=profile.engine,
                nodes=[body.node],
                priority=profile.priority,
                memory_gb=profile.memory_gb,
            )
        try:
            node = await self.life.ensure_loaded(profile)
        except RouteError as exc:
            return self.fail(
                exc.status,
                exc.message,
                "service_unavailable",
                handler="admin_load",
                model=model.concrete,
            )
        return _json({"model": model.concrete, "node": node, "state": "ready"}, node=node)

    async def admin_unload(self, request: Request) -> Response:
        try:
            body = decode(await request.body(), AdminRequest)
        except WireError as exc:
            return self.fail(400, exc.message, "invalid_request_error", handler="admin_unload")
        model_id = self.life.catalogue.resolve_alias(body.model)
        nodes = [body.node] if body.node else self.life.fleet.locations(model_id)
        nodes = [
            n for n in nodes if n in self.life.clients and self.life.fleet.nodes[n].model(model_id)
        ]
        if not nodes:
            return self.fail(
                404,
                f"model {model_id!r} is not loaded",
                "not_found_error",
                handler="admin_unload",
                model=model_id,
            )
        try:
            for node in nodes:
                await self.life.unload(node, model_id, "admin")
        except RouteError as exc:
            return self.fail(
                exc.status, exc.message, "upstream_error", handler="admin_unload", model=model_id
            )
        return _json({"model": model_id, "nodes": nodes, "state": "unloaded"})

    async def scrape(self, request: Request) -> Response:
        assert self.metrics is not None
        text = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


Handler = Callable[[Request], Awaitable[Response]]


def _guard(gateway: Gateway, handler: Handler, *, public: bool = False) -> Handler:
    """Check the API key, and answer an unexpected exception with a logged 500 envelope."""

    async def guarded(request: Request) -> Response:
        if not public and not gateway.authorized(request):
            return gateway.fail(
                401, "missing or invalid API key", "authentication_error", handler=request.url.path
            )
        try:
            return await handler(request)
        except Exception:
            log.exception("unhandled error", extra={"handler": request.url.path})
            return _json(error_envelope("internal error", "server_error", code=500), 500)

    return guarded


def create_apps(config: GatewayConfig) -> tuple[Starlette, Starlette, Gateway]:
    """The API app, the metrics app (its own listener), and the handlers' state."""
    gateway = Gateway(config)

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
            r("/admin/fleet", gateway.fleet),
            r("/admin/models/load", gateway.admin_load, ["POST"]),
            r("/admin/models/unload", gateway.admin_unload, ["POST"]),
        ],
        lifespan=lifespan,
    )
    metrics = Starlette(routes=[Route("/metrics", _guard(gateway, gateway.scrape, public=True))])
    return api, metrics, gateway
