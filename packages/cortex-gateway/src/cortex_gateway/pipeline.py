"""The pipeline: the sequence every request takes through the gateway, written once.

    every route      call → key → JSON body → the route's work → outcome      (handle)
    inference        name → prefix → route and lease → send → answer/stream   (forward)

A route parses its surface's request and hands it to :meth:`Pipeline.forward`
with a small :class:`Adapter` saying what differs between surfaces: the body
to send, the answer, the stream, the error event. The rest is here, once:
aliases, prefix-aware routing, the lease (a cold load first if need be), the
"failed before anything came back: once more on another node" rule, and the
outcome of every request recorded once (``outcomes``), whichever way it ends.
Management calls on the routed node (``count_tokens``) go through
:meth:`Pipeline.ask`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cortex_core.config import GatewaySection
from cortex_core.tasks import wrong_task
from cortex_core.wire import WireError
from cortex_gateway.auth import Keys
from cortex_gateway.calls import Call
from cortex_gateway.errors import ErrorKind, GatewayError, Surface, internal_error, no_such_model
from cortex_gateway.incoming import ClientGone, require_json, unless_gone
from cortex_gateway.leases import Lease
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metering import Meter
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.neurons import NeuronApi, Neurons
from cortex_gateway.outcomes import Outcomes
from cortex_gateway.prefix import prefix_hashes
from cortex_gateway.quotas import Quotas, Refusal, over_limit
from cortex_gateway.upstream import Connection, Opening, Unsent, Upstreams

__all__ = ["Adapter", "EarlyStart", "Handler", "Pipeline", "RouteSpec"]

T = TypeVar("T")

Handler = Callable[[Request, Call], Awaitable[Response]]
"""A route's own work, given the request and its :class:`~cortex_gateway.calls.Call`."""


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What :meth:`Pipeline.handle` needs to know of a route."""

    handler: str
    """The route's name in logs (and, for inference routes, its metrics ``route``)."""
    surface: Surface
    """Whose error envelope it answers in."""
    public: bool = False
    """Open without a key."""
    admin: bool = False
    """Takes an admin key (when ``admin_keys`` is set)."""


@dataclass(frozen=True, slots=True)
class EarlyStart:
    """A stream that may start before its model is ready, with keep-alives while it waits."""

    within_s: float
    """How long a request still waiting for its model may hold back the stream's start."""
    heartbeat_s: float
    """How often the stream says it is still there while it waits."""


class Adapter(Protocol):
    """What one API surface does differently with an inference request it forwards."""

    @property
    def path(self) -> str:
        """The neuron's OpenAI route the request goes to (``/chat/completions``)."""
        ...

    @property
    def model(self) -> str:
        """The model the client asked for (an alias or a concrete id)."""
        ...

    @property
    def streaming(self) -> bool:
        """Whether the client asked for a stream."""
        ...

    @property
    def early_start(self) -> EarlyStart | None:
        """For streams: whether they may start before the model is ready (None: never)."""
        ...

    def prompt(self) -> bytes:
        """The prompt as prefix-aware routing compares it (asked only when that is on)."""
        ...

    def prepare(self, model: str, priority: int, cache_salt: str | None) -> bytes:
        """The body to send the node, for the concrete id ``model`` (a WireError: a 400).

        ``priority`` and ``cache_salt`` are the key's: set, and a client's own dropped.
        """
        ...

    def answer(self, call: Call, status: int, data: bytes, meter: Meter) -> Response:
        """The client's answer to a complete upstream answer (its usage read into ``meter``)."""
        ...

    def stream(
        self, call: Call, chunks: AsyncIterator[bytes], meter: Meter
    ) -> AsyncIterator[bytes]:
        """The client's stream of the upstream's chunks (an empty chunk: still waiting)."""
        ...

    def render_error(self, error: GatewayError) -> bytes:
        """The error event that ends a stream that failed after it started."""
        ...


class Pipeline:
    """Requests in, neurons' answers out, over one lifecycle and one way to reach the neurons."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        neurons: Neurons,
        metrics: GatewayMetrics,
        settings: GatewaySection,
        outcomes: Outcomes,
        keys: Keys,
        quotas: Quotas,
    ) -> None:
        self.life = lifecycle
        self.metrics = metrics
        self.keys = keys
        """Who each request's key is (replaced on reload)."""
        self.quotas = quotas
        """Where limited keys' requests are counted in (shared by ``workers = N``)."""
        self.outcomes = outcomes
        self.upstreams = Upstreams(neurons, settings)
        self.routing = lifecycle.routing

    # --- every route -----------------------------------------------------------------

    async def handle(self, request: Request, spec: RouteSpec, work: Handler) -> Response:
        """Run a route's ``work`` on ``request``: its key checked, its failure answered, once.

        Every route but the ``public`` ones takes a key (an admin key on
        ``admin`` routes); every POST must declare a JSON body. A
        :class:`GatewayError` raised anywhere is answered in the route's
        envelope; any other exception is a logged 500.
        """
        call = Call.begin(request, spec.handler, spec.surface)
        try:
            if not spec.public:
                call.tenant = self.keys.authorize(request, admin=spec.admin)
            if request.method == "POST":
                require_json(request)
            return await work(request, call)
        except GatewayError as exc:
            return self.outcomes.error_response(call, exc)
        except (ClientDisconnect, ClientGone):
            return self.outcomes.gone(call)
        except Exception as exc:
            error = internal_error()
            error.__cause__ = exc
            return self.outcomes.error_response(call, error)

    def refuse(
        self, request: Request, handler: str, surface: Surface, error: GatewayError
    ) -> Response:
        """Answer (and record) ``error`` for a request no route took."""
        return self.outcomes.error_response(Call.begin(request, handler, surface), error)

    # --- inference -------------------------------------------------------------------

    async def forward(self, request: Request, call: Call, adapter: Adapter) -> Response:
        """Send the request to a node serving its model and answer as the adapter's surface does.

        The model's alias is resolved, its task checked against the route's
        (an embedding model serves no chat: 400), the prompt scored for
        prefix-aware routing, and the request routed (the model cold-loaded if need be)
        and sent; one that failed before anything came back goes once more,
        to another node. Every failure is a :class:`GatewayError`.
        """
        model = self._name(call, adapter.model)
        # A model outside the catalogue (loaded on a neuron by hand) is refused by its neuron.
        profile = self.life.catalogue.profile(model)
        if profile is not None and (wrong := wrong_task(model, profile.task, adapter.path)):
            raise GatewayError(400, ErrorKind.BAD_REQUEST, wrong, task=profile.task)
        await self._admit(call)
        tenant = call.tenant
        if self.routing.policy == "prefix":
            blocks = self.routing.prefix_block_chars
            # A key that isolates its cache has prefixes of its own: no other key's match them.
            space = model if tenant.cache_salt is None else f"{model}\x00{tenant.cache_salt}"
            call.prefix = prefix_hashes(space, adapter.prompt(), blocks) or None
        try:
            body = adapter.prepare(model, tenant.priority, tenant.cache_salt)
        except WireError as exc:
            raise GatewayError(400, ErrorKind.BAD_REQUEST, exc.message) from exc
        meter = Meter(started=call.started)
        early = adapter.early_start if adapter.streaming else None
        if early is not None:
            return await self._stream_early(call, adapter, body, meter, early)
        conn = await self._connect(call, adapter.path, body, request)
        meter.first_byte = time.monotonic()
        if not conn.upstream.streaming:
            data = await self.upstreams.read(conn)
            response = adapter.answer(call, conn.upstream.status, data, meter)
            self.outcomes.finish(call, response.status_code, meter)
            return response
        events = adapter.stream(call, self.upstreams.chunks(conn), meter)
        return self.outcomes.stream(
            call, events, meter, render=adapter.render_error, close=conn.close
        )

    async def _stream_early(
        self, call: Call, adapter: Adapter, body: bytes, meter: Meter, early: EarlyStart
    ) -> Response:
        """A stream that starts once its answer does, or at once if its model is still loading.

        The client then gets the surface's keep-alives while it waits; a
        failure from then on ends the stream with its error event.
        """
        connecting = asyncio.ensure_future(self._connect(call, adapter.path, body))
        opening = Opening(connecting, self.upstreams, meter, early.heartbeat_s)
        try:
            await opening.settle(early.within_s, call)
        except BaseException:
            opening.close()
            raise
        events = adapter.stream(call, opening.chunks(), meter)
        return self.outcomes.stream(
            call, events, meter, render=adapter.render_error, close=opening.close
        )

    async def ask(
        self,
        request: Request,
        call: Call,
        asked: str,
        question: Callable[[NeuronApi, str], Awaitable[T]],
    ) -> T:
        """Route ``asked`` as an inference request would be, and put ``question`` to its node.

        ``question`` gets the node's management client and the concrete id.
        """
        model = self._name(call, asked)
        await self._admit(call)
        lease = await self._lease(call, request)
        try:
            answer = await question(lease.client, model)
        finally:
            lease.release()
        self.outcomes.finish(call, 200, Meter(started=call.started))
        return answer

    # --- the key's part --------------------------------------------------------------

    def _name(self, call: Call, asked: str) -> str:
        """The concrete id of ``asked``; 404 if the call's key may not use it (as if unknown)."""
        model = call.name(self.life.catalogue, asked)
        if not call.tenant.allows(asked, model):
            raise GatewayError(404, ErrorKind.NOT_FOUND, no_such_model(asked))
        return model

    async def _admit(self, call: Call) -> None:
        """Count the call in against its key's limits (429 over one); outcomes count it out."""
        tenant = call.tenant
        if not tenant.limited:
            return
        admitted = await self.quotas.admit(tenant)
        if isinstance(admitted, Refusal):
            raise over_limit(tenant, admitted)
        call.admission = admitted

    # --- routing and connecting ------------------------------------------------------

    async def _connect(
        self, call: Call, path: str, body: bytes, request: Request | None = None
    ) -> Connection:
        """Route, lease and send; once more, elsewhere, if nothing came back the first time."""
        failed: set[str] = set()
        for attempt in (1, 2):
            lease = await self._lease(call, request, frozenset(failed))
            try:
                return await self.upstreams.open(call, lease, path, body)
            except Unsent as exc:
                if attempt == 2 or self.life.stopping:
                    raise exc.error from exc
                failed.add(lease.node)
        raise AssertionError("unreachable: the second attempt answers or raises")

    async def _lease(
        self, call: Call, request: Request | None, exclude: frozenset[str] = frozenset()
    ) -> Lease:
        """Route the call's model (cold-loading it if need be) and hold the node for it.

        With ``request``, a client that leaves while its model loads is noticed
        (:class:`ClientGone`) and its request never goes on.
        """
        assert call.model is not None, "name the model first"
        prefix = call.prefix or ()
        tenant = call.tenant
        got = self.life.lease(
            call.model,
            exclude=exclude,
            arrived=call.started,
            prefix=prefix,
            session=call.session,
            key=tenant.name,
            batch=tenant.batch,
        )
        lease = got if isinstance(got, Lease) else await _waited(got, request)
        call.node = lease.node
        call.routed = time.monotonic()
        if prefix:
            self.metrics.observe_prefix(call.model, hit=lease.matched > 0)
        return lease


async def _waited(waiting: asyncio.Future[Lease], request: Request | None) -> Lease:
    """The lease a request waits for; one that arrives after the request gave up is given back."""
    try:
        return await (waiting if request is None else unless_gone(waiting, request))
    except BaseException:
        waiting.add_done_callback(_release_late)
        raise


def _release_late(waiting: asyncio.Future[Lease]) -> None:
    if not waiting.cancelled() and waiting.exception() is None:
        waiting.result().release()
