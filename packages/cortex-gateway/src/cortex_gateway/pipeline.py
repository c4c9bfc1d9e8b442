"""The forwarding pipeline: the one path every inference request takes through the gateway.

    read body → name the model → resolve (route, maybe cold-load) → lease
    → connect → answer or stream → finish

The routes of each API surface decode their bodies and build what they send;
everything else is here, once: the "model moved, route again once" rule, the
in-flight lease released however the request ends, and the outcome of every
request recorded once (metrics and one log line), a success by
:meth:`Pipeline.finish`, a failure by :meth:`Pipeline.fail`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from cortex_core.config import GatewaySection
from cortex_core.wire import WireError, decode
from cortex_gateway.bodies import relayable_message
from cortex_gateway.errors import (
    ErrorKind,
    GatewayError,
    Surface,
    internal_error,
    upstream_refusal,
)
from cortex_gateway.lifecycle import Lease, Lifecycle, ModelMoved
from cortex_gateway.metering import Meter
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.neurons import Neurons, Upstream, UpstreamError
from cortex_gateway.responses import (
    NODE_HEADER,
    REQUEST_ID_HEADER,
    ClosingStream,
    json_response,
)

__all__ = ["INFERENCE_ROUTES", "Call", "Connection", "Pipeline"]

log = logging.getLogger(__name__)

T = TypeVar("T")

INFERENCE_ROUTES = frozenset({"chat_completions", "completions", "messages", "count_tokens"})
"""Handlers whose name is their metrics ``route`` label; every other route is ``other``."""
BROKEN_STREAM = "the model server stopped answering"


@dataclass
class Call:
    """One request on its way through the gateway: what is known of it so far."""

    handler: str
    surface: Surface
    request_id: str
    started: float
    model: str | None = None
    alias: str | None = None
    node: str | None = None
    url: str | None = None
    routed: float | None = None

    @property
    def route(self) -> str:
        """The metrics ``route`` label."""
        return self.handler if self.handler in INFERENCE_ROUTES else "other"

    def fields(self) -> dict[str, str]:
        """The log fields known so far."""
        found = {"model": self.model, "alias": self.alias, "node": self.node}
        return {k: v for k, v in found.items() if v is not None}

    def headers(self) -> dict[str, str]:
        """Headers every answer to this request carries: its id, and the node if one was chosen."""
        headers = {REQUEST_ID_HEADER: self.request_id}
        if self.node:
            headers[NODE_HEADER] = self.node
        return headers


@dataclass(eq=False)
class Connection:
    """An inference request open on a neuron: the lease it holds and the answer on its way."""

    lease: Lease
    upstream: Upstream

    def close(self) -> None:
        """Drop the upstream request (if still open) and release the lease."""
        try:
            self.upstream.close()
        finally:
            self.lease.release()


class Pipeline:
    """Requests in, neurons' answers out, over one lifecycle and one way to reach the neurons."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        neurons: Neurons,
        metrics: GatewayMetrics,
        settings: GatewaySection,
    ) -> None:
        self.life = lifecycle
        self.neurons = neurons
        self.metrics = metrics
        self.settings = settings

    # --- the request -----------------------------------------------------------------

    def begin(self, request: Request, handler: str, surface: Surface) -> Call:
        """Start the bookkeeping of one request, with its request id (the client's, or new)."""
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        return Call(handler, surface, request_id[:128], time.monotonic())

    def authorize(self, request: Request) -> None:
        """Refuse a request without one of ``api_keys`` (when there are any)."""
        keys = self.settings.api_keys
        if not keys:
            return
        bearer = request.headers.get("authorization", "")
        given = bearer[7:].strip() if bearer.lower().startswith("bearer ") else None
        if given not in keys and request.headers.get("x-api-key") not in keys:
            raise GatewayError(401, ErrorKind.UNAUTHORIZED, "missing or invalid API key")

    async def read_body(self, request: Request) -> bytes:
        """The body, refused past ``max_body_bytes`` without reading all of it."""
        limit = self.settings.max_body_bytes
        too_large = GatewayError(413, ErrorKind.TOO_LARGE, f"request body exceeds {limit} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    @staticmethod
    def decode(body: bytes, type_: type[T]) -> T:
        """``body`` decoded as ``type_``; a 400 naming what is wrong otherwise."""
        try:
            return decode(body, type_)
        except WireError as exc:
            raise GatewayError(400, ErrorKind.BAD_REQUEST, exc.message) from exc

    def name(self, call: Call, asked: str) -> str:
        """Record the model asked for (and the alias, if one was used); return its concrete id."""
        model = call.model = self.life.catalogue.resolve_alias(asked)
        call.alias = asked if asked != model else None
        return model

    # --- routing and connecting ------------------------------------------------------

    async def resolve(self, call: Call) -> str:
        """Route the call's model to a node (cold-loading it if need be); record the node."""
        assert call.model is not None, "name the model first"
        call.node = await self.life.resolve(call.model)
        call.routed = time.monotonic()
        return call.node

    async def connect(self, call: Call, path: str, body: bytes) -> Connection:
        """Route, lease and send ``body`` to ``path`` of the model's OpenAI API on its node.

        Answers once the upstream's status is in and is a success. A model that
        left its node after routing is routed again, once; every failure is a
        :class:`GatewayError`.
        """
        for last in (False, True):
            await self.resolve(call)
            try:
                return await self._open(call, path, body, last=last)
            except ModelMoved:
                continue
        raise AssertionError("unreachable: the last attempt does not raise ModelMoved")

    async def _open(self, call: Call, path: str, body: bytes, *, last: bool) -> Connection:
        assert call.node is not None
        assert call.model is not None
        lease = await self.life.lease(call.node, call.model, may_move=not last)
        call.url = url = f"{lease.url.rstrip('/')}{path}"
        headers = {"content-type": "application/json", REQUEST_ID_HEADER: call.request_id}
        try:
            upstream = await self.neurons.open(url, body, headers)
        except UpstreamError as exc:
            lease.release()
            await self.life.invalidate(lease)
            raise GatewayError(
                502, ErrorKind.UPSTREAM, "the model server could not be reached", error=str(exc)
            ) from exc
        except BaseException:
            lease.release()
            raise
        if upstream.status < 400:
            return Connection(lease, upstream)
        try:
            data = await self._read(upstream)
        finally:
            lease.release()
        if upstream.status == 404 and not last:
            await self.life.invalidate(lease)
            raise ModelMoved
        raise upstream_refusal(upstream.status, relayable_message(data))

    async def _read(self, upstream: Upstream) -> bytes:
        try:
            return await upstream.read()
        except UpstreamError as exc:
            raise GatewayError(
                502, ErrorKind.UPSTREAM, "the model server failed while answering", error=str(exc)
            ) from exc

    async def read(self, conn: Connection) -> bytes:
        """The whole answer of a connection (then released)."""
        try:
            return await self._read(conn.upstream)
        finally:
            conn.lease.release()

    async def chunks(self, conn: Connection) -> AsyncIterator[bytes]:
        """A streaming answer as it arrives; a break is a 502 :class:`GatewayError`."""
        try:
            async for chunk in conn.upstream.chunks():
                yield chunk
        except UpstreamError as exc:
            raise GatewayError(502, ErrorKind.UPSTREAM, BROKEN_STREAM, error=str(exc)) from exc

    # --- answering -------------------------------------------------------------------

    def stream(
        self,
        call: Call,
        events: AsyncIterator[bytes],
        meter: Meter,
        *,
        render: Callable[[GatewayError], bytes],
        close: Callable[[], None],
    ) -> ClosingStream:
        """Answer with ``events`` as a stream that ends well whatever happens.

        A :class:`GatewayError` raised while streaming becomes the surface's
        error event (``render``) and is recorded as the request's failure;
        ``close`` then gives back what the stream held (upstream, lease).
        """
        failure: list[GatewayError] = []

        async def body() -> AsyncIterator[bytes]:
            try:
                async for piece in events:
                    yield piece
            except GatewayError as exc:
                failure.append(exc)
                yield render(exc)
            except Exception as exc:
                error = internal_error()
                error.__cause__ = exc
                failure.append(error)
                yield render(error)
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        async def done() -> None:
            close()
            if failure:
                self.fail(call, failure[0])
            else:
                self.finish(call, 200, meter)

        return ClosingStream(body(), call.headers(), done)

    def error_response(self, call: Call, error: GatewayError) -> Response:
        """Record ``error`` as the call's outcome and answer it in the call's surface."""
        self.fail(call, error)
        return json_response(error.envelope(call.surface), error.status, call.headers())

    # --- outcomes --------------------------------------------------------------------

    def fail(self, call: Call, error: GatewayError) -> None:
        """Record a failed request: its metrics and its one log line."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
        self.metrics.observe_failure(labels, error.status, error.kind)
        fields: dict[str, Any] = {
            "request_id": call.request_id,
            "handler": call.handler,
            **call.fields(),
            "status": error.status,
            "kind": error.kind.value,
            "error": error.message,
        }
        if call.url:
            fields["url"] = call.url
        fields.update(error.log)
        if error.kind is ErrorKind.INTERNAL:
            log.error("request failed", extra=fields, exc_info=error.__cause__)
        else:
            log.warning("request failed", extra=fields)

    def finish(self, call: Call, status: int, meter: Meter) -> None:
        """Record an answered request: its metrics and its one log line."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
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
