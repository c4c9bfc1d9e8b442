"""The neuron's HTTP API: management routes and the OpenAI inference routes.

Routes are thin: they decode, ask the registry or an engine, and encode.
Management errors use the neuron's ``{"error": {"code", "message", "details"}}``;
``/v1`` routes use the OpenAI envelope. Every failure is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cortex_core.config import NeuronConfig
from cortex_core.neuron_api import (
    CONTEXT_LENGTH_EXCEEDED,
    RELAYABLE_HEADER,
    ContextLengthErrorEnvelope,
    Device,
    DevicesResponse,
    EndpointResponse,
    Health,
    LoadRequest,
    ModelsResponse,
    TokenizeRequest,
    UnloadRequest,
    error_response,
)
from cortex_core.openai import ErrorEnvelope, ModelList, ModelObject, error_envelope
from cortex_core.tasks import wrong_task
from cortex_core.text import printable
from cortex_core.wire import RouteView, WireError, decode, encode
from neuron import __version__
from neuron.devices import read_devices
from neuron.engine import Engine, EngineFactory, JsonReply, Reply
from neuron.errors import NeuronError
from neuron.metrics import NeuronMetrics
from neuron.registry import Entry, Registry
from neuron.sources import Sources

__all__ = ["create_app"]

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(value: Any, status: int = 200) -> Response:
    return Response(encode(value), status_code=status, media_type=JSON)


def _neuron_error(error: NeuronError, handler: str, **fields: Any) -> Response:
    log.warning(
        "request failed",
        extra={
            "handler": handler,
            "status": error.status,
            "code": error.code,
            "error": error.message,
            **fields,
        },
    )
    return _json(error.response(), error.status)


def _openai_error(status: int, message: str, kind: str, handler: str, **fields: Any) -> Response:
    log.warning(
        "request failed", extra={"handler": handler, "status": status, "error": message, **fields}
    )
    return _json(error_envelope(message, kind, code=status), status)


class NeuronApp:
    """Route handlers over one registry; state lives here, not in globals."""

    def __init__(
        self,
        config: NeuronConfig,
        registry: Registry,
        devices: Callable[[], list[Device]],
    ) -> None:
        self.config = config
        self.registry = registry
        self.devices = devices
        self.metrics = NeuronMetrics(registry, devices)
        self.started_at = time.time()

    # --- management ----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return _json(
            Health(
                status="ok",
                name=self.config.neuron.name,
                version=__version__,
                started_at=self.started_at,
            )
        )

    async def list_devices(self, request: Request) -> Response:
        return _json(DevicesResponse(devices=await asyncio.to_thread(self.devices)))

    async def list_models(self, request: Request) -> Response:
        return _json(ModelsResponse(models=self.registry.models()))

    async def load(self, request: Request) -> Response:
        try:
            body = decode(await request.body(), LoadRequest)
        except WireError as exc:
            return _neuron_error(NeuronError("invalid_request", exc.message), "load")
        try:
            info = await self.registry.load(body)
        except NeuronError as exc:
            return _neuron_error(exc, "load", model=body.model)
        return _json(info, 200 if info.state == "ready" else 202)

    async def unload(self, request: Request) -> Response:
        try:
            body = decode(await request.body(), UnloadRequest)
        except WireError as exc:
            return _neuron_error(NeuronError("invalid_request", exc.message), "unload")
        try:
            return _json(await self.registry.unload(body.model, sleep=body.sleep))
        except NeuronError as exc:
            return _neuron_error(exc, "unload", model=body.model)

    async def endpoint(self, request: Request) -> Response:
        model_id = request.path_params["model"]
        try:
            self.registry.ready(model_id)
        except NeuronError as exc:
            return _neuron_error(exc, "endpoint", model=model_id)
        url = self.config.neuron.advertise_url.rstrip("/") + "/v1"
        return _json(EndpointResponse(url=url))

    async def tokenize(self, request: Request) -> Response:
        try:
            body = decode(await request.body(), TokenizeRequest)
        except WireError as exc:
            return _neuron_error(NeuronError("invalid_request", exc.message), "tokenize")
        if (body.messages is None) == (body.prompt is None):
            error = NeuronError("invalid_request", "give exactly one of `messages` or `prompt`")
            return _neuron_error(error, "tokenize", model=body.model)
        try:
            await self.registry.woken(body.model)
            entry, engine = self.registry.acquire(body.model)
        except NeuronError as exc:
            return _neuron_error(exc, "tokenize", model=body.model)
        try:
            return _json(await engine.tokenize(body))
        except ValueError as exc:
            return _neuron_error(
                NeuronError("invalid_request", str(exc)), "tokenize", model=body.model
            )
        finally:
            self.registry.release(entry)

    async def scrape(self, request: Request) -> Response:
        text = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    # --- OpenAI inference ---------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._infer(request, "chat_completions", lambda e, b: e.chat(b))

    async def completions(self, request: Request) -> Response:
        return await self._infer(request, "completions", lambda e, b: e.completion(b))

    async def responses(self, request: Request) -> Response:
        return await self._infer(request, "responses", lambda e, b: e.responses(b))

    async def embeddings(self, request: Request) -> Response:
        return await self._infer(request, "embeddings", lambda e, b: e.embeddings(b))

    async def rerank(self, request: Request) -> Response:
        return await self._infer(request, "rerank", lambda e, b: e.rerank(b))

    async def score(self, request: Request) -> Response:
        return await self._infer(request, "score", lambda e, b: e.score(b))

    async def _infer(
        self, request: Request, handler: str, call: Callable[[Engine, bytes], Awaitable[Reply]]
    ) -> Response:
        body = await request.body()
        # The gateway's request id, so one request can be followed across both logs.
        rid = {"request_id": request.headers.get("x-request-id", "")}
        try:
            route = decode(body, RouteView)
        except WireError as exc:
            return _openai_error(400, exc.message, "invalid_request_error", handler, **rid)
        try:
            # A request wakes a sleeping model (and waits for it), as a load does.
            await self.registry.woken(route.model)
            entry, engine = self.registry.acquire(route.model)
        except NeuronError as exc:
            if exc.code != "not_loaded":
                # The wake failed or found no room: the neuron's status, the OpenAI envelope.
                return _openai_error(
                    exc.status, exc.message, "server_error", handler, model=route.model, **rid
                )
            return _openai_error(
                404, exc.message, "not_found_error", handler, model=route.model, **rid
            )
        if (wrong := wrong_task(route.model, entry.model_task, request.url.path)) is not None:
            self.registry.release(entry)
            return _refused(
                400,
                error_envelope(wrong, "invalid_request_error", code=400),
                handler,
                route.model,
                rid,
            )
        started = time.monotonic()
        try:
            reply = await call(engine, body)
        except Exception:
            self.registry.release(entry)
            log.exception("engine failed", extra={"handler": handler, "model": route.model, **rid})
            return _json(error_envelope("the engine failed", "server_error", code=500), 500)
        if isinstance(reply, JsonReply):
            self.registry.release(entry)
            if 400 <= reply.status < 500:
                # The engine's reason for refusing a request (a prompt over the context
                # length, a bad parameter) is about the request: the gateway may show it.
                envelope = _refusal(reply.body, reply.status)
                return _refused(reply.status, envelope, handler, route.model, rid)
            if reply.status >= 400:
                log.warning(
                    "engine refused request",
                    extra={"handler": handler, "model": route.model, "status": reply.status, **rid},
                )
            else:
                log.debug(
                    "served",
                    extra={
                        "handler": handler,
                        "model": route.model,
                        "seconds": round(time.monotonic() - started, 3),
                        **rid,
                    },
                )
            return Response(reply.body, status_code=reply.status, media_type=JSON)
        return _ReleasingStream(self.registry, entry, reply.chunks)

    async def openai_models(self, request: Request) -> Response:
        ready = [m for m in self.registry.models() if m.state == "ready"]
        created = int(min((m.loaded_at or 0 for m in ready), default=0))
        data = [
            ModelObject(
                id=m.id, created=int(m.loaded_at or created), owned_by=self.config.neuron.name
            )
            for m in ready
        ]
        return _json(ModelList(data=data))


class _ReleasingStream(StreamingResponse):
    """An SSE response that closes the engine's stream and releases its request, always.

    Releasing from the response itself (not from inside the body iterator)
    also covers a client gone before the first chunk, when Starlette never
    starts the iterator at all.
    """

    def __init__(self, registry: Registry, entry: Entry, chunks: AsyncIterator[bytes]) -> None:
        super().__init__(chunks, media_type="text/event-stream")
        self._registry = registry
        self._entry = entry
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            finally:
                self._registry.release(self._entry)


def _refused(
    status: int,
    envelope: ErrorEnvelope | ContextLengthErrorEnvelope,
    handler: str,
    model: str,
    rid: Mapping[str, str],
) -> Response:
    """A 4xx about the request itself, logged once: its message is safe to show the client."""
    log.warning(
        "engine refused request",
        extra={
            "handler": handler,
            "model": model,
            "status": status,
            "error": envelope.error.message,
            **rid,
        },
    )
    return Response(
        encode(envelope), status_code=status, media_type=JSON, headers={RELAYABLE_HEADER: "1"}
    )


def _refusal(body: bytes, status: int) -> ErrorEnvelope | ContextLengthErrorEnvelope:
    """The engine's refusal in a fresh envelope, its message printable and bounded.

    A generic message if it gave none; a prompt too long for the context keeps its figures.
    """
    try:
        overflow = decode(body, ContextLengthErrorEnvelope)
    except WireError:
        pass
    else:
        if overflow.error.code == CONTEXT_LENGTH_EXCEEDED:
            overflow.error.message = printable(overflow.error.message, 500)
            return overflow
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if not isinstance(message, str) or not message.strip():
        message = f"the engine refused the request (status {status})"
    return error_envelope(printable(message, 500), "invalid_request_error", code=status)


Handler = Callable[[Request], Awaitable[Response]]
OPEN_ROUTES = frozenset({"/health", "/metrics"})
"""What answers without the token: liveness and metrics."""


def _bearer(header: str) -> bytes:
    """The credentials of an ``Authorization: Bearer`` header; the scheme is any case (RFC 7235)."""
    scheme, _, credentials = header.strip().partition(" ")
    return credentials.strip().encode() if scheme.lower() == "bearer" else b""


def _guard(handler: Handler, token: str | None = None) -> Handler:
    """Check the token (when one is set); answer an unexpected exception with a logged 500."""
    expected = token.encode() if token else None

    async def guarded(request: Request) -> Response:
        if expected is not None and request.url.path not in OPEN_ROUTES:
            given = _bearer(request.headers.get("authorization", ""))
            if not hmac.compare_digest(given, expected):
                log.warning(
                    "request refused",
                    extra={"handler": request.url.path, "status": 401, "error": "bad token"},
                )
                if request.url.path.startswith("/v1/"):
                    envelope = error_envelope(
                        "missing or invalid token", "authentication_error", code=401
                    )
                    return _json(envelope, 401)
                return _json(error_response("unauthorized", "missing or invalid token"), 401)
        try:
            return await handler(request)
        except Exception:
            log.exception("unhandled error", extra={"handler": request.url.path})
            if request.url.path.startswith("/v1/"):
                return _json(error_envelope("internal error", "server_error", code=500), 500)
            return _json(NeuronError("internal_error", "internal error").response(), 500)

    return guarded


def create_app(
    config: NeuronConfig,
    factory: EngineFactory,
    *,
    sources: Sources | None = None,
    devices: Callable[[], list[Device]] = read_devices,
    host_free: Callable[[], int] | None = None,
    token: str | None = None,
) -> Starlette:
    """The neuron's ASGI app; its lifespan prepares the engine and stops every engine at exit.

    With ``token``, every route but ``/health`` and ``/metrics`` needs
    ``Authorization: Bearer <token>``.
    """
    kwargs: dict[str, Any] = {"devices": devices}
    if host_free is not None:
        kwargs["host_free"] = host_free
    registry = Registry(config, factory, sources or Sources(config), **kwargs)
    app_state = NeuronApp(config, registry, devices)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        prepare = asyncio.create_task(factory.prepare())
        watch = asyncio.create_task(registry.watch())
        log.info(
            "neuron started",
            extra={
                "neuron": config.neuron.name,
                "version": __version__,
                "sources": Sources(config).names,
            },
        )
        try:
            yield
        finally:
            watch.cancel()
            prepare.cancel()
            await registry.close()
            log.info("neuron stopped")

    def r(path: str, handler: Handler, methods: list[str] | None = None) -> Route:
        return Route(path, _guard(handler, token), methods=methods)

    routes = [
        r("/health", app_state.health),
        r("/devices", app_state.list_devices),
        r("/models", app_state.list_models),
        r("/models/load", app_state.load, ["POST"]),
        r("/models/unload", app_state.unload, ["POST"]),
        r("/models/{model:path}/endpoint", app_state.endpoint),
        r("/tokenize", app_state.tokenize, ["POST"]),
        r("/metrics", app_state.scrape),
        r("/v1/chat/completions", app_state.chat, ["POST"]),
        r("/v1/completions", app_state.completions, ["POST"]),
        r("/v1/responses", app_state.responses, ["POST"]),
        r("/v1/embeddings", app_state.embeddings, ["POST"]),
        r("/v1/rerank", app_state.rerank, ["POST"]),
        r("/v1/score", app_state.score, ["POST"]),
        r("/v1/models", app_state.openai_models),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.neuron = app_state
    return app
