"""The fleet's model lifecycle: polling, cold loads, evictions, pinned and idle models, leases.

This is the I/O shell around ``router``: it keeps the fleet snapshot fresh
from the neurons' own answers, acts on the router's decisions, and makes
sure there is exactly one ``/models/load`` per model however many requests
wait for it. A client that gives up does not cancel a load.

It also owns what the gateway itself knows of each ``(node, model)`` it
serves: the requests in flight there and the cached endpoint. Requests hold a
:class:`Lease` for both, released however they end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.config import GatewayConfig
from cortex_core.neuron_api import LoadRequest
from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.fleet import Fleet, NodeState
from cortex_gateway.neurons import NeuronCallError, Neurons
from cortex_gateway.router import (
    ColdLoad,
    EvictOne,
    Exclude,
    GiveUp,
    LoadFailure,
    NoNode,
    NotFound,
    Placement,
    PlanAgain,
    Serve,
    Strategy,
    Unplaceable,
    WaitForLoad,
    after_failed_load,
    defrag_candidates,
    idle_models,
    place,
    route,
)

__all__ = ["UNREACHABLE", "EvictionReason", "Lease", "Lifecycle", "ModelMoved", "rewrite_loopback"]

log = logging.getLogger(__name__)

EvictionReason = Literal["lru", "priority", "idle", "defrag", "admin"]
LOOPBACK = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})
UNREACHABLE = "the model server could not be reached"


class ModelMoved(Exception):
    """The model left the node after the request was routed there: route it again."""


class Lease:
    """A request's hold on ``(node, model)``: where to send it, counted in flight until released."""

    __slots__ = ("_counts", "model", "node", "url")

    def __init__(self, node: str, model: str, url: str, counts: Counter[tuple[str, str]]) -> None:
        self.node = node
        self.model = model
        self.url = url
        """The model's OpenAI base URL on the node."""
        self._counts: Counter[tuple[str, str]] | None = counts
        counts[(node, model)] += 1

    @property
    def held(self) -> bool:
        """Whether the lease still counts its request in flight."""
        return self._counts is not None

    def release(self) -> None:
        """Stop counting the request in flight (once, however often it is called)."""
        counts, self._counts = self._counts, None
        if counts is None:
            return
        key = (self.node, self.model)
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]


def rewrite_loopback(url: str, neuron_endpoint: str) -> str:
    """Put the neuron's configured host in place of a loopback host, keeping port and path."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return url
    host = urlsplit(neuron_endpoint).hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Lifecycle:
    """Owns the fleet snapshot and every load and unload the gateway makes."""

    def __init__(
        self,
        config: GatewayConfig,
        neurons: Neurons,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.catalogue: Catalogue = config.catalogue
        self.clients = {n.name: neurons.client(n.name, n.endpoint) for n in config.cortex.neurons}
        self.fleet = Fleet.configured((n.name, n.endpoint) for n in config.cortex.neurons)
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._clock = clock
        self._loads: dict[str, asyncio.Task[str]] = {}
        self._placement = asyncio.Lock()
        self._endpoints: dict[tuple[str, str], str] = {}
        self._eviction_cycles = 0
        self._background: set[asyncio.Task[object]] = set()
        self.on_eviction: Callable[[str, str, str], None] = lambda node, model, reason: None
        """Called for every unload the gateway decides on, with its reason."""
        self.on_load: Callable[[str, str, str, float], None] = lambda node, model, outcome, s: None
        """Called after every load the gateway asks for: node, model, outcome, seconds."""

    @property
    def in_flight(self) -> Mapping[tuple[str, str], int]:
        """Requests in flight by ``(node, model)``, as the gateway's leases count them."""
        return self._in_flight

    @property
    def strategy(self) -> Strategy:
        """The eviction strategy."""
        return self.config.cortex.eviction.strategy

    # --- fleet state ------------------------------------------------------------------

    async def refresh(self, name: str) -> NodeState:
        """Ask one neuron for its health, devices and models; mark it down if it fails."""
        client = self.clients[name]
        old = self.fleet.nodes[name]
        try:
            health, devices, models = await asyncio.gather(
                client.health(), client.devices(), client.models()
            )
        except NeuronCallError as exc:
            node = old.down(str(exc))
            if old.up or old.last_seen is None:
                log.warning(
                    "neuron down", extra={"node": name, "url": client.base_url, "error": str(exc)}
                )
        else:
            node = NodeState(
                name=name,
                endpoint=old.endpoint,
                up=True,
                version=health.version,
                devices=tuple(devices.devices),
                models=tuple(models.models),
                last_seen=self._clock(),
            )
            if not old.up:
                log.info(
                    "neuron up",
                    extra={"node": name, "url": client.base_url, "version": health.version},
                )
        self.fleet = self.fleet.with_node(node)
        # An endpoint is only good while its model is ready there.
        for key in [k for k in self._endpoints if k[0] == name and not node.ready(k[1])]:
            del self._endpoints[key]
        return node

    async def refresh_all(self) -> Fleet:
        """Refresh every neuron at once."""
        await asyncio.gather(*(self.refresh(name) for name in self.clients))
        return self.fleet

    async def run(self) -> None:
        """Poll forever; after each round, keep pinned models loaded and unload idle ones."""
        interval = self.config.cortex.gateway.poll_interval_s
        while True:
            await self.refresh_all()
            try:
                await self._maintain()
            except Exception:
                log.exception("fleet maintenance failed")
            await asyncio.sleep(interval)

    async def _maintain(self) -> None:
        for profile in self.catalogue.models:
            missing = not self.fleet.locations(profile.id) and not self.fleet.loading(profile.id)
            if profile.pinned and profile.id not in self._loads and missing:
                log.info("loading pinned model", extra={"model": profile.id})
                self._spawn(self._load_quietly(profile))
        idle_s = self.config.cortex.eviction.idle_timeout_s
        for node, model in idle_models(
            self.fleet, self.catalogue, self._in_flight, self._clock(), idle_s
        ):
            await self.unload(node, model, "idle")

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load_quietly(self, profile: ModelProfile) -> None:
        try:
            await self.ensure_loaded(profile)
        except GatewayError as exc:
            log.warning(
                "pinned model not loaded", extra={"model": profile.id, "error": exc.message}
            )

    # --- routing --------------------------------------------------------------------------

    async def resolve(self, model_id: str) -> str:
        """The node that will serve ``model_id`` now, loading it first if need be."""
        deadline = time.monotonic() + self.config.cortex.gateway.load_timeout_s
        while True:
            decision = route(model_id, self.catalogue, self.fleet, self._in_flight)
            match decision:
                case Serve(node):
                    return node
                case ColdLoad(profile):
                    return await self.ensure_loaded(profile)
                case WaitForLoad(node):
                    if time.monotonic() > deadline:
                        raise _late(model_id)
                    await asyncio.sleep(1.0)
                    await self.refresh(node)
                case NotFound(message):
                    raise GatewayError(404, ErrorKind.NOT_FOUND, message)
                case NoNode(message):
                    raise GatewayError(503, ErrorKind.UNAVAILABLE, message)

    async def ensure_loaded(self, profile: ModelProfile) -> str:
        """Load ``profile`` somewhere (one load however many callers) and return the node."""
        task = self._loads.get(profile.id)
        if task is None:
            task = asyncio.create_task(self._cold_load(profile))
            self._loads[profile.id] = task
            task.add_done_callback(lambda _: self._loads.pop(profile.id, None))
            # Someone always retrieves the outcome, even if every caller gave up.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        timeout = self.config.cortex.gateway.load_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise _late(profile.id) from None

    @property
    def loading(self) -> frozenset[str]:
        """Models the gateway is loading right now."""
        return frozenset(self._loads)

    async def _cold_load(self, profile: ModelProfile) -> str:
        needed: int | None = None
        exclude: set[str] = set()
        last_error = "no attempt made"
        for _ in range(len(self.clients) + 16):
            async with self._placement:
                for name in self.clients:
                    if name not in exclude:
                        await self.refresh(name)
                decision = place(
                    profile,
                    self.fleet,
                    self.catalogue,
                    self._in_flight,
                    self.strategy,
                    needed_bytes=needed,
                    exclude=frozenset(exclude),
                )
                if isinstance(decision, Unplaceable):
                    # With nodes left out after failed loads, their failure is the reason.
                    message = (
                        f"model {profile.id!r} cannot be placed: {last_error}"
                        if exclude
                        else decision.message
                    )
                    log.warning(
                        "model cannot be placed", extra={"model": profile.id, "error": message}
                    )
                    raise GatewayError(503, ErrorKind.UNAVAILABLE, message)
                await self._evict_for(decision)
            failure = await self._load_on(decision.node, profile)
            if failure is None:
                return decision.node
            last_error = failure.message
            retry = after_failed_load(
                profile,
                failure,
                self.fleet,
                self.catalogue,
                self._in_flight,
                self.strategy,
                needed_bytes=needed,
            )
            match retry:
                case PlanAgain(needed_bytes):
                    needed = needed_bytes  # the neuron's own figure: plan evictions with it
                case EvictOne(node, victim):
                    await self.unload(node, victim, self._reason)
                case Exclude(node):
                    exclude.add(node)
                case GiveUp(message):
                    raise GatewayError(503, ErrorKind.UNAVAILABLE, message)
        message = f"model {profile.id!r} cannot be placed: {last_error}"
        raise GatewayError(503, ErrorKind.UNAVAILABLE, message)

    @property
    def _reason(self) -> EvictionReason:
        return "priority" if self.strategy == "priority" else "lru"

    async def _evict_for(self, decision: Placement) -> None:
        if not decision.evict:
            return
        for victim in decision.evict:
            await self.unload(decision.node, victim, self._reason)
        self._eviction_cycles += 1
        every = self.config.cortex.eviction.defrag_after_cycles
        if every and self._eviction_cycles % every == 0:
            self._spawn(self.defragment())

    async def _load_on(self, node: str, profile: ModelProfile) -> LoadFailure | None:
        """Ask ``node`` to load; ``None`` on success, else what went wrong."""
        client = self.clients[node]
        request = LoadRequest(model=profile.qualified_id, options=dict(profile.engine))
        started = time.monotonic()
        log.info(
            "loading model", extra={"model": profile.id, "node": node, "source": profile.source}
        )
        try:
            await client.load(request, self.config.cortex.gateway.load_timeout_s)
        except NeuronCallError as exc:
            seconds = time.monotonic() - started
            self.on_load(node, profile.id, "failed", seconds)
            log.warning(
                "load failed",
                extra={
                    "model": profile.id,
                    "node": node,
                    "url": client.base_url,
                    "status": exc.upstream_status,
                    "code": exc.code,
                    "error": str(exc),
                },
            )
            if exc.upstream_status is None:
                await self.refresh(node)
            details = exc.error.error.details if exc.error else {}
            needed = details.get("needed_bytes")
            return LoadFailure(
                node, exc.code, str(exc), needed if isinstance(needed, int) else None
            )
        seconds = time.monotonic() - started
        self.on_load(node, profile.id, "ready", seconds)
        log.info(
            "model loaded", extra={"model": profile.id, "node": node, "seconds": round(seconds, 1)}
        )
        await self.refresh(node)
        return None

    # --- unloading ------------------------------------------------------------------------

    async def unload(self, node: str, model_id: str, reason: EvictionReason) -> None:
        """Unload ``model_id`` from ``node`` and forget its endpoint."""
        client = self.clients[node]
        self._endpoints.pop((node, model_id), None)
        log.info("unloading model", extra={"model": model_id, "node": node, "reason": reason})
        try:
            await client.unload(model_id)
        except NeuronCallError as exc:
            if exc.upstream_status != 404:
                log.warning(
                    "unload failed",
                    extra={
                        "model": model_id,
                        "node": node,
                        "url": client.base_url,
                        "status": exc.upstream_status,
                        "error": str(exc),
                    },
                )
                await self.refresh(node)
                message = f"unloading {model_id!r} from {node!r} failed"
                raise GatewayError(502, ErrorKind.UPSTREAM, message) from exc
        self.on_eviction(node, model_id, reason)
        await self.refresh(node)

    async def defragment(self) -> None:
        """Repack fragmented nodes: move each chosen idle model off and back on its node."""
        for node, model in defrag_candidates(self.fleet, self.catalogue, self._in_flight):
            profile = self.catalogue.profile(model)
            log.info("defragmenting", extra={"node": node, "model": model})
            await self.unload(node, model, "defrag")
            if profile is not None:
                self._spawn(self._load_quietly(profile))

    # --- serving ------------------------------------------------------------------------

    async def lease(self, node: str, model_id: str, *, may_move: bool = True) -> Lease:
        """Hold ``(node, model_id)`` for one request: its endpoint, counted in flight.

        Raises :class:`ModelMoved` when the node no longer has the model (if
        ``may_move``; else a 502 like any other failure to reach it).
        """
        key = (node, model_id)
        url = self._endpoints.get(key)
        if url is None:
            client = self.clients[node]
            try:
                advertised = await client.endpoint(model_id)
            except NeuronCallError as exc:
                await self.refresh(node)
                if exc.upstream_status == 404 and may_move:
                    raise ModelMoved from exc
                raise GatewayError(
                    502,
                    ErrorKind.UPSTREAM,
                    UNREACHABLE,
                    error=str(exc),
                    url=client.base_url,
                    upstream_status=exc.upstream_status,
                ) from exc
            url = rewrite_loopback(advertised, self.fleet.nodes[node].endpoint)
            self._endpoints[key] = url
        return Lease(node, model_id, url, self._in_flight)

    async def invalidate(self, lease: Lease) -> None:
        """After ``lease``'s endpoint failed a request: forget it and ask the node again."""
        self._endpoints.pop((lease.node, lease.model), None)
        await self.refresh(lease.node)

    async def close(self) -> None:
        """Cancel background work (loads under way on neurons carry on there)."""
        for task in [*self._background, *self._loads.values()]:
            task.cancel()


def _late(model_id: str) -> GatewayError:
    return GatewayError(
        503, ErrorKind.UNAVAILABLE, f"model {model_id!r} did not finish loading in time"
    )
