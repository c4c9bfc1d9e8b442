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

import asyncio
import hmac
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cortex_core.config import GatewaySection
from cortex_core.text import printable
from cortex_core.wire import WireError, decode
from cortex_gateway.activity import ALL, Series
from cortex_gateway.bodies import relayable_message
from cortex_gateway.errors import (
    ErrorKind,
    GatewayError,
    Surface,
    internal_error,
    upstream_refusal,
)
from cortex_gateway.leases import Lease
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metering import Meter
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.neurons import NeuronCallError, Neurons, Upstream, UpstreamError
from cortex_gateway.responses import (
    NODE_HEADER,
    REQUEST_ID_HEADER,
    ClosingStream,
    json_response,
)
from cortex_gateway.sse import EventTooLarge

__all__ = [
    "CLIENT_GONE",
    "INFERENCE_ROUTES",
    "Call",
    "ClientGone",
    "Connection",
    "Pipeline",
    "Unsent",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

INFERENCE_ROUTES = frozenset({"chat_completions", "completions", "messages", "count_tokens"})
"""Handlers whose name is their metrics ``route`` label; every other route is ``other``."""
CHARTED_ROUTES = INFERENCE_ROUTES - {"count_tokens"}
"""Routes the dashboard's activity counts: those that run a model."""
UNREACHABLE = "the model server could not be reached"
BROKEN_STREAM = "the model server stopped answering"
NO_ANSWER = "the model server did not answer in time"
SILENT = "the model server went silent"
CLIENT_GONE = 499
"""nginx's status for a client that went away before its answer: nobody reads it."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


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
    prefix: list[int] | None = None
    """The prompt's prefix hashes, for prefix-aware routing (None: not scored)."""

    @property
    def route(self) -> str:
        """The metrics ``route`` label."""
        return self.handler if self.handler in INFERENCE_ROUTES else "other"

    def fields(self) -> dict[str, str]:
        """The log fields known so far (what the client named, made printable and bounded)."""
        found = {"model": self.model, "alias": self.alias, "node": self.node}
        return {k: printable(v) for k, v in found.items() if v is not None}

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

    def __post_init__(self) -> None:
        # A node that goes down (or a gateway that stops) drops the connection: the
        # reader then fails at once instead of waiting out a timeout.
        self.lease.on_abort(self.upstream.close)

    def close(self) -> None:
        """Drop the upstream request (if still open) and release the lease."""
        try:
            self.upstream.close()
        finally:
            self.lease.release()


class Unsent(Exception):
    """Nothing reached the model server's client side yet: another node may take the request.

    ``error`` is what to answer if no other node does.
    """

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class ClientGone(Exception):
    """The client left before its request was sent on: it is not sent on."""


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
        self.series = Series()
        """The last minutes of inference requests, per model: the dashboard's charts."""

    # --- the request -----------------------------------------------------------------

    def begin(self, request: Request, handler: str, surface: Surface) -> Call:
        """Start the bookkeeping of one request, with its request id (the client's, or new)."""
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _REQUEST_ID.fullmatch(given) else _new_request_id()
        return Call(handler, surface, request_id, time.monotonic())

    def authorize(self, request: Request, *, admin: bool = False) -> None:
        """Refuse a request without a key its route takes (when keys are set).

        ``api_keys`` admit every route but ``/admin/*`` when ``admin_keys`` is
        set; then only an admin key does there (an API key is a 403). An admin
        key admits every route. Keys are compared in constant time.
        """
        api_keys, admin_keys = self.settings.api_keys, self.settings.admin_keys
        if not api_keys and not admin_keys:
            return
        given = _presented_key(request)
        if given is not None and _one_of(given, admin_keys):
            return
        if admin and admin_keys:
            if given is not None and _one_of(given, api_keys):
                raise GatewayError(403, ErrorKind.FORBIDDEN, "this key may not use the admin API")
            raise GatewayError(401, ErrorKind.UNAUTHORIZED, "missing or invalid admin key")
        if not api_keys and not admin:
            return  # only the admin API is keyed
        if given is None or not _one_of(given, api_keys):
            raise GatewayError(401, ErrorKind.UNAUTHORIZED, "missing or invalid API key")

    @staticmethod
    def require_json(request: Request) -> None:
        """Refuse a POST whose body is not declared JSON (a web page cannot send one unasked).

        A POST with neither a body nor a content type (``POST /admin/reload``) passes.
        """
        headers = request.headers
        if (
            "content-type" not in headers
            and headers.get("content-length", "0") == "0"
            and "transfer-encoding" not in headers
        ):
            return
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json" and not (
            kind.startswith("application/") and kind.endswith("+json")
        ):
            raise GatewayError(
                415, ErrorKind.BAD_REQUEST, "the body must be JSON (content-type: application/json)"
            )

    async def read_body(self, request: Request) -> bytes:
        """The body, refused past ``max_body_bytes`` (413) or ``body_timeout_s`` (408)."""
        limit = self.settings.max_body_bytes
        too_large = GatewayError(413, ErrorKind.TOO_LARGE, f"request body exceeds {limit} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        receive = request.receive  # not request.stream(): a generator per request costs
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect
                    chunk: bytes = message.get("body", b"")
                    if not body and not message.get("more_body", False):
                        if len(chunk) > limit:
                            raise too_large
                        return chunk  # the whole body in one message: no copy
                    body += chunk
                    if len(body) > limit:
                        raise too_large
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise GatewayError(
                408,
                ErrorKind.BAD_REQUEST,
                "the request body did not arrive in time",
                received_bytes=len(body),
            ) from None
        return bytes(body)

    @staticmethod
    def decode(body: bytes, type_: type[T]) -> T:
        """``body`` decoded as ``type_``; a 400 naming what is wrong otherwise."""
        try:
            return decode(body, type_)
        except WireError as exc:
            raise GatewayError(400, ErrorKind.BAD_REQUEST, printable(exc.message, 500)) from exc

    def name(self, call: Call, asked: str) -> str:
        """Record the model asked for (and the alias, if one was used); return its concrete id."""
        model = call.model = self.life.catalogue.resolve_alias(asked)
        call.alias = asked if asked != model else None
        return model

    # --- routing and connecting ------------------------------------------------------

    async def acquire(
        self,
        call: Call,
        *,
        request: Request | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> Lease:
        """Route the call's model (cold-loading it if need be) and hold the node for it.

        With ``request``, a client that leaves while its model loads is noticed
        (:class:`ClientGone`) and its request never goes on.
        """
        assert call.model is not None, "name the model first"
        prefix = call.prefix or ()
        lease = self.life.lease_ready(call.model, exclude, prefix)
        if lease is None:
            acquiring = asyncio.ensure_future(
                self.life.acquire(call.model, exclude, arrived=call.started, prefix=prefix)
            )
            lease = await (acquiring if request is None else _unless_gone(acquiring, request))
        call.node = lease.node
        call.routed = time.monotonic()
        if prefix:
            self.metrics.observe_prefix(call.model, hit=lease.matched > 0)
        return lease

    def score(self, call: Call, render: Callable[[], bytes]) -> None:
        """Give the call its prompt's prefix hashes (with prefix-aware routing on).

        ``render`` gives the prompt as routing compares it; it runs only then.
        """
        if call.model is not None and self.life.routing.policy == "prefix":
            call.prefix = self.life.prefix_of(call.model, render()) or None

    async def connect(
        self, call: Call, path: str, body: bytes, *, request: Request | None = None
    ) -> Connection:
        """Route, lease and send ``body`` to ``path`` of the model's OpenAI API on its node.

        Answers once the upstream's status is in and is a success. A request
        that failed before anything was sent back (the node unreachable, the
        model gone from it) goes once more, to another node if one has the
        model; every failure is a :class:`GatewayError`.
        """
        failed: set[str] = set()
        for attempt in (1, 2):
            lease = await self.acquire(call, request=request, exclude=frozenset(failed))
            try:
                return await self._open(call, lease, path, body)
            except Unsent as exc:
                if attempt == 2 or self.life.stopping:
                    raise exc.error from exc
                failed.add(lease.node)
        raise AssertionError("unreachable: the second attempt answers or raises")

    async def _open(self, call: Call, lease: Lease, path: str, body: bytes) -> Connection:
        node, model = lease.node, lease.model
        try:
            try:
                base = await self.life.endpoint(node, model)
            except NeuronCallError as exc:
                if exc.upstream_status != 404:
                    self.life.trip(node)
                raise Unsent(
                    GatewayError(
                        502,
                        ErrorKind.UPSTREAM,
                        UNREACHABLE,
                        error=str(exc),
                        upstream_status=exc.upstream_status,
                    )
                ) from exc
            call.url = url = f"{base.rstrip('/')}{path}"
            upstream = await self._first_byte(lease, url, body, call.request_id)
        except BaseException:
            lease.release()
            raise
        if upstream.status < 400:
            self.life.reset(node)
            return Connection(lease, upstream)
        try:
            data = await self._read(upstream)
        finally:
            lease.release()
        relayed = relayable_message(data) if upstream.relayable else None
        error = upstream_refusal(upstream.status, relayed and printable(relayed, 500))
        if upstream.status == 404:
            # The model left the node after it was routed there.
            await self.life.invalidate(node, model)
            raise Unsent(error)
        raise error

    async def _first_byte(self, lease: Lease, url: str, body: bytes, request_id: str) -> Upstream:
        """Open the upstream request, bounded by ``first_byte_timeout_s`` and by the lease."""
        headers = {"content-type": "application/json", REQUEST_ID_HEADER: request_id}
        opening = asyncio.ensure_future(self.neurons.open(lease.node, url, body, headers))
        lease.on_abort(opening.cancel)
        try:
            done, _ = await asyncio.wait({opening}, timeout=self.settings.first_byte_timeout_s)
        except BaseException:
            _abandon(opening)
            raise
        if not done:
            _abandon(opening)
            raise GatewayError(
                504,
                ErrorKind.TIMEOUT,
                NO_ANSWER,
                timeout_s=self.settings.first_byte_timeout_s,
            )
        if opening.cancelled():  # the lease was aborted: the node went down, or we stop
            error = GatewayError(502, ErrorKind.UPSTREAM, lease.aborted or BROKEN_STREAM)
            if self.life.stopping:
                raise GatewayError(503, ErrorKind.UNAVAILABLE, lease.aborted or BROKEN_STREAM)
            raise Unsent(error)
        try:
            return opening.result()
        except UpstreamError as exc:
            self.life.trip(lease.node)
            await self.life.invalidate(lease.node, lease.model)
            error = GatewayError(502, ErrorKind.UPSTREAM, UNREACHABLE, error=str(exc))
            raise Unsent(error) from exc

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
        """A streaming answer as it arrives, bounded by ``stream_idle_timeout_s`` between chunks.

        A break, a silence or an aborted lease is a :class:`GatewayError`.
        """
        idle = self.settings.stream_idle_timeout_s
        source = conn.upstream.chunks()
        watch = _Silence(idle)
        try:
            while True:
                watch.waiting()
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    break
                if conn.lease.prefill:  # the first chunk: the node has computed the prompt
                    conn.lease.prefilled()
                # No deadline while the client takes the chunk: only the neuron is timed.
                watch.waiting_for = None
                yield chunk
        except asyncio.CancelledError:
            if not watch.fired:
                raise
            watch.task.uncancel()
            raise GatewayError(504, ErrorKind.TIMEOUT, SILENT, idle_s=idle) from None
        except UpstreamError as exc:
            aborted = conn.lease.aborted
            if aborted is not None and self.life.stopping:
                raise GatewayError(503, ErrorKind.UNAVAILABLE, aborted) from exc
            raise GatewayError(
                502, ErrorKind.UPSTREAM, aborted or BROKEN_STREAM, error=str(exc)
            ) from exc
        finally:
            watch.stop()
            await source.aclose()  # type: ignore[attr-defined]

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
            except EventTooLarge as exc:
                error = GatewayError(502, ErrorKind.UPSTREAM, BROKEN_STREAM, error=str(exc))
                failure.append(error)
                yield render(error)
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
        headers = {**call.headers(), **error.headers}
        return json_response(error.envelope(call.surface), error.status, headers)

    # --- outcomes --------------------------------------------------------------------

    def fail(self, call: Call, error: GatewayError) -> None:
        """Record a failed request: its metrics and its one log line."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
        self.metrics.observe_failure(labels, error.status, error.kind)
        if labels.route in CHARTED_ROUTES:
            self.series.record(_series_key(labels.model), ok=False)
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

    def gone(self, call: Call) -> Response:
        """Record a client that left before its answer (nothing was sent on for it)."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
        self.metrics.observe_gone(labels)
        log.info(
            "client gone",
            extra={"request_id": call.request_id, "handler": call.handler, **call.fields()},
        )
        return Response(status_code=CLIENT_GONE)

    def finish(self, call: Call, status: int, meter: Meter) -> None:
        """Record an answered request: its metrics and its one log line."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
        latency = time.monotonic() - call.started
        waited = (call.routed or call.started) - call.started
        self.metrics.observe_success(labels, status, meter, latency, waited)
        usage = meter.usage
        if labels.route in CHARTED_ROUTES:
            tokens = usage.completion_tokens if usage else 0
            self.series.record(_series_key(labels.model), ok=True, tokens=tokens, ttft=meter.ttft)
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


def _series_key(label: str) -> str:
    return ALL if label == "none" else label


_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


def _new_request_id() -> str:
    """A request id unique to this process's life (random prefix, then a count): no syscall."""
    return f"{_ID_PREFIX}{next(_ids):016x}"


class _Silence:
    """The idle deadline of a stream, for the price of reading the clock once per chunk.

    A timer that is re-armed for every chunk costs two timer operations per
    chunk; this one fires at most once per ``limit`` and looks at when the
    current wait began. A silence of ``limit`` while the neuron is waited on
    cancels the streaming task, with :attr:`fired` set to tell it why.
    """

    __slots__ = ("fired", "handle", "limit", "loop", "task", "waiting_for")

    def __init__(self, limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "streams are read by a task"
        self.task = task
        self.limit = limit
        self.fired = False
        self.waiting_for: float | None = None
        """When the wait for the current chunk began; None while the client takes one."""
        self.handle = self.loop.call_later(limit, self._check)

    def waiting(self) -> None:
        self.waiting_for = self.loop.time()

    def _check(self) -> None:
        since = self.waiting_for
        now = self.loop.time()
        if since is not None and now - since >= self.limit:
            self.fired = True
            self.task.cancel()
            return
        due = since + self.limit if since is not None else now + self.limit
        self.handle = self.loop.call_at(due, self._check)

    def stop(self) -> None:
        self.handle.cancel()


def _presented_key(request: Request) -> str | None:
    bearer = request.headers.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip()
    return request.headers.get("x-api-key")


def _one_of(given: str, keys: list[str]) -> bool:
    """Whether ``given`` is one of ``keys``, comparing every key in constant time."""
    presented = given.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key.encode())
    return found


def _abandon(opening: asyncio.Future[Upstream]) -> None:
    """Stop waiting for an upstream; if it still arrives, drop it."""
    opening.cancel()

    def drop(done: asyncio.Future[Upstream]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().close()

    opening.add_done_callback(drop)


async def _unless_gone(routing: asyncio.Future[Lease], request: Request) -> Lease:
    """``routing``'s lease, unless the client disconnects first (then it is cancelled).

    A lease that arrives after all is released at once.
    """
    gone = asyncio.ensure_future(_disconnected(request))
    either: set[asyncio.Future[Any]] = {routing, gone}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not routing.done():
            routing.cancel()
            routing.add_done_callback(_release_late)
    if not routing.done():
        raise ClientGone
    return routing.result()


def _release_late(routing: asyncio.Future[Lease]) -> None:
    if not routing.cancelled() and routing.exception() is None:
        routing.result().release()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
