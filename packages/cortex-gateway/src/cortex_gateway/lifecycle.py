"""The fleet's model lifecycle: polling, cold loads, evictions, pinned and idle models.

This is the I/O shell around ``router``: it keeps the fleet snapshot fresh
from the neurons' own answers, acts on the router's decisions, and makes
sure there is exactly one ``/models/load`` per model however many requests
wait for it. A client that gives up does not cancel a load.

It also owns what the gateway itself knows of each ``(node, model)`` it
serves: the requests in flight there (``leases``) and the cached endpoint.
A node that goes down has its leases aborted at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.config import GatewayConfig
from cortex_core.neuron_api import LoadRequest
from cortex_core.text import printable
from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.events import EventKind, Events, FleetEvent
from cortex_gateway.fleet import Fleet, NodeState
from cortex_gateway.leases import Lease, Leases
from cortex_gateway.neurons import NeuronApi, NeuronCallError, Neurons
from cortex_gateway.prefix import PrefixIndex, prefix_hashes
from cortex_gateway.router import (
    ColdLoad,
    Decision,
    EvictOne,
    Exclude,
    GiveUp,
    Hold,
    LoadFailure,
    NoNode,
    NotFound,
    Placement,
    PlanAgain,
    Serve,
    Strategy,
    Unplaceable,
    WaitForLoad,
    WaitForRoom,
    after_failed_load,
    defrag_candidates,
    idle_models,
    place,
    route,
)
from cortex_gateway.scheduling import Backoff, Blocked, backoff_s, closed_gates, in_backoff

__all__ = ["EvictionReason", "Lifecycle", "rewrite_loopback"]

log = logging.getLogger(__name__)

EvictionReason = Literal["lru", "priority", "idle", "defrag", "admin"]
LOOPBACK = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})
WATCH_EVERY_S = 1.0
"""How often a node is asked again while requests wait for a load under way there."""
PLACEMENT_POLL_S = 2.0
"""How long a cold load waits for fresh answers from its candidate nodes before it decides."""
BREAKER_S = 10.0
"""How long a node that failed a request is used only when no other node can serve."""
RETRY_AFTER_S = 10
"""What a 429 for too many requests waiting on one load tells the client."""
NODE_DOWN = "the model server stopped answering"
SHUTTING_DOWN = "the gateway is shutting down"


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
        events: Events | None = None,
        *,
        tokens: Mapping[str, str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = config.cortex.gateway
        self.catalogue: Catalogue = config.catalogue
        tokens = tokens or {}
        self.clients: dict[str, NeuronApi] = {
            n.name: neurons.client(n.name, n.endpoint, tokens.get(n.name))
            for n in config.cortex.neurons
        }
        self.fleet = Fleet.configured((n.name, n.endpoint) for n in config.cortex.neurons)
        self.leases = Leases(on_release=self._released)
        self.routing = config.cortex.routing
        self.prefixes = PrefixIndex(self.routing.prefix_index_blocks)
        """Which node was recently sent which prompt prefix (``[routing] policy = "prefix"``)."""
        self.events = Events() if events is None else events
        """Loads, unloads, evictions, nodes up and down, as they happen."""
        self.since: dict[str, float] = {}
        """When each node last went up or down (Unix seconds), as this gateway saw it."""
        self._clock = clock
        self._loads: dict[str, asyncio.Task[str]] = {}
        self._endpoints: dict[tuple[str, str], str] = {}
        self._eviction_cycles = 0
        self._evicting: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._polls: Counter[str] = Counter()
        self._applied: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._waiting: Counter[str] = Counter()
        self._watched: Counter[str] = Counter()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._broken: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._blocked: dict[str, Blocked] = {}
        """Cold loads waiting for room, by model."""
        self._arrivals: dict[str, list[float]] = {}
        """When each request waiting for a model arrived (monotonic), by model."""
        self._callers: Counter[str] = Counter()
        """Who waits on each cold load (requests, admin loads, pinned models)."""
        self.backoffs: dict[tuple[str, str], Backoff] = {}
        """Failed loads by ``(node, model)``: not tried there again until ``until``."""

    @property
    def in_flight(self) -> Mapping[tuple[str, str], int]:
        """Requests in flight by ``(node, model)``, as the gateway's leases count them."""
        return self.leases.counts

    @property
    def strategy(self) -> Strategy:
        """The eviction strategy."""
        return self.config.cortex.eviction.strategy

    @property
    def stopping(self) -> bool:
        """Whether the gateway is stopping (requests cut, waiters gone)."""
        return self._stopping.is_set()

    @property
    def waiting(self) -> Mapping[str, int]:
        """Requests waiting for a model that is not ready yet, by model."""
        return self._waiting

    # --- fleet state ------------------------------------------------------------------

    def _apply(self, node: NodeState) -> None:
        old = self.fleet.nodes[node.name]
        self.fleet = self.fleet.with_node(node)
        # An endpoint is only good while its model is ready there.
        for key in [k for k in self._endpoints if k[0] == node.name and not node.ready(k[1])]:
            del self._endpoints[key]
        restarted = (
            old.started_at is not None
            and node.started_at is not None
            and node.started_at != old.started_at
        )
        if restarted:
            # What the old process held is gone with it, whatever the poll missed.
            self.events.emit(FleetEvent("node_restarted", node.name))
            self.since[node.name] = self._clock()
            for key in [k for k in self._endpoints if k[0] == node.name]:
                del self._endpoints[key]
            self.prefixes.forget(node.name)
        elif node.up:
            # A model no longer ready there took its engine's prefix cache with it.
            was = {m.id for m in old.models if m.state == "ready"}
            for model in was - {m.id for m in node.models if m.state == "ready"}:
                self.prefixes.forget(node.name, model)
        if (old.up and not node.up) or restarted:
            aborted = self.leases.abort_node(node.name, NODE_DOWN)
            if aborted:
                log.warning(
                    "requests on a node that went down aborted",
                    extra={"node": node.name, "count": aborted},
                )
        self._notify()

    def _notify(self) -> None:
        """Everyone waiting on the fleet (a load elsewhere, a node back, room) looks again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _released(self) -> None:
        # A request ended: a model a cold load waits on may be idle now.
        if self._blocked:
            self._notify()

    async def refresh(self, name: str) -> NodeState:
        """Ask one neuron for its health, devices and models; mark it down if it fails.

        An answer older than one already applied is dropped: a slow poll
        never undoes what a later one saw.
        """
        client = self.clients[name]
        self._polls[name] += 1
        ticket = self._polls[name]
        try:
            health, devices, models = await asyncio.gather(
                client.health(), client.devices(), client.models()
            )
        except NeuronCallError as exc:
            node = self.fleet.nodes[name].down(str(exc))
        else:
            node = NodeState(
                name=name,
                endpoint=self.fleet.nodes[name].endpoint,
                up=True,
                version=health.version,
                devices=tuple(devices.devices),
                models=tuple(models.models),
                last_seen=self._clock(),
                started_at=health.started_at,
            )
        if ticket < self._applied.get(name, 0):
            return self.fleet.nodes[name]
        self._applied[name] = ticket
        old = self.fleet.nodes[name]
        if node.up and not old.up:
            self.since[name] = self._clock()
            up = FleetEvent("node_up", name, url=client.base_url, version=node.version)
            self.events.emit(up)
        elif not node.up and (old.up or old.last_seen is None) and old.error != node.error:
            if old.up or name not in self.since:
                self.since[name] = self._clock()
            self.events.emit(FleetEvent("node_down", name, error=node.error, url=client.base_url))
        self._apply(node)
        return node

    async def refresh_all(self, within_s: float | None = None) -> Fleet:
        """Refresh every neuron at once; with ``within_s``, answer by then with what came."""
        await self._refresh(self.clients, within_s)
        return self.fleet

    async def _refresh(self, names: Iterable[str], within_s: float | None) -> None:
        tasks = [self._spawn(self.refresh(name)) for name in names]
        if tasks:
            await asyncio.wait(tasks, timeout=within_s)

    async def run(self) -> None:
        """Poll forever; after each round, keep pinned models loaded and unload idle ones."""
        interval = self.settings.poll_interval_s
        while True:
            try:
                await self.refresh_all()
                await self._maintain()
            except Exception:
                # The poll must outlive any bug: without it the fleet view freezes.
                log.exception("fleet poll failed")
            await asyncio.sleep(interval)

    async def _maintain(self) -> None:
        for profile in self.catalogue.models:
            missing = not self.fleet.locations(profile.id) and not self.fleet.loading(profile.id)
            if profile.pinned and profile.id not in self._loads and missing:
                log.info("loading pinned model", extra={"model": profile.id})
                self._spawn(self._load_quietly(profile))
        idle_s = self.config.cortex.eviction.idle_timeout_s
        for node, model in idle_models(
            self.fleet, self.catalogue, self._busy(), self._clock(), idle_s
        ):
            await self.unload(node, model, "idle")

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _load_quietly(self, profile: ModelProfile) -> None:
        try:
            await self.ensure_loaded(profile)
        except GatewayError as exc:
            log.warning(
                "pinned model not loaded", extra={"model": profile.id, "error": exc.message}
            )

    def _busy(self) -> Mapping[tuple[str, str], int]:
        """What may not be chosen to go: models in flight, being evicted, or awaited.

        A model that requests wait to be loaded (or just were) has work queued:
        evicting it the moment its load ends would waste the load.
        """
        extra = set(self._evicting)
        for model in self._callers:
            for node in self.fleet.nodes.values():
                info = node.model(model)
                if info is not None and info.state in ("ready", "loading"):
                    extra.add((node.name, model))
        if not extra:
            return self.leases.counts
        counts = dict(self.leases.counts)
        for key in extra:
            counts[key] = counts.get(key, 0) + 1
        return counts

    # --- routing --------------------------------------------------------------------------

    def broken(self) -> frozenset[str]:
        """Nodes that failed a request in the last ``BREAKER_S`` seconds."""
        now = time.monotonic()
        for node in [n for n, until in self._broken.items() if until <= now]:
            del self._broken[node]
        return frozenset(self._broken)

    def trip(self, node: str) -> None:
        """A request could not reach ``node``: prefer other nodes for a while."""
        self._broken[node] = time.monotonic() + BREAKER_S

    def reset(self, node: str) -> None:
        """A request reached ``node``."""
        self._broken.pop(node, None)

    def gates(self) -> frozenset[tuple[str, str]]:
        """``(node, model)`` pairs admitting no new request: a swap away is due or under way."""
        scheduling = self.config.cortex.scheduling
        closed = closed_gates(
            self._blocked.values(),
            time.monotonic(),
            scheduling.policy,
            scheduling.max_swap_wait_s,
        )
        return closed | frozenset(self._evicting) if self._evicting else closed

    def _route(
        self, model_id: str, exclude: frozenset[str], prefix: Sequence[int] = ()
    ) -> Decision:
        affinity = held = None
        if prefix:
            affinity = self.prefixes.match(model_id, prefix, self.fleet.locations(model_id))
            held = self.prefixes.holding
        return route(
            model_id,
            self.catalogue,
            self.fleet,
            self.leases.counts,
            exclude=exclude,
            avoid=self.broken(),
            gated=self.gates() if self._blocked or self._evicting else frozenset(),
            blocks=len(prefix),
            affinity=affinity,
            held=held,
            prefill=self.leases.prefill,
            max_imbalance=self.routing.max_imbalance,
            min_match=self.routing.min_prefix_match,
        )

    def prefix_of(self, model_id: str, rendered: bytes) -> list[int]:
        """The prefix hashes of a prompt rendered for routing."""
        return prefix_hashes(model_id, rendered, self.routing.prefix_block_chars)

    def serving(self, model_id: str, exclude: frozenset[str] = frozenset()) -> str | None:
        """The node to serve ``model_id`` on right now, if it is ready somewhere."""
        decision = self._route(model_id, exclude)
        return decision.node if isinstance(decision, Serve) else None

    def lease_ready(
        self, model_id: str, exclude: frozenset[str] = frozenset(), prefix: Sequence[int] = ()
    ) -> Lease | None:
        """A lease where ``model_id`` is ready now (weighing ``prefix``), or None."""
        decision = self._route(model_id, exclude, prefix)
        if not isinstance(decision, Serve):
            return None
        return self._take(decision.node, model_id, prefix, decision.matched)

    def _take(self, node: str, model_id: str, prefix: Sequence[int], matched: int) -> Lease:
        if prefix:
            self.prefixes.record(model_id, prefix, node)
        lease = self.leases.take(node, model_id, len(prefix) - matched)
        lease.matched = matched
        return lease

    async def acquire(
        self,
        model_id: str,
        exclude: frozenset[str] = frozenset(),
        arrived: float | None = None,
        prefix: Sequence[int] = (),
    ) -> Lease:
        """A lease on the node that will serve ``model_id`` now, loading it first if need be.

        The lease is taken in the same step as the decision, so nothing (an
        eviction, a burst) comes between them. Requests that have to wait (for
        a load, for room, for a node) are bounded by ``max_waiting`` per model
        and by ``load_timeout_s``; ``arrived`` (monotonic) is when the request
        came, for the swap policy.
        """
        ready = self.lease_ready(model_id, exclude, prefix)
        if ready is not None:
            return ready
        if self._waiting[model_id] >= self.settings.max_waiting:
            raise GatewayError(
                429,
                ErrorKind.OVERLOADED,
                f"too many requests are waiting for model {model_id!r} to load",
                headers={"retry-after": str(RETRY_AFTER_S)},
            )
        self._waiting[model_id] += 1
        arrival = time.monotonic() if arrived is None else arrived
        arrivals = self._arrivals.setdefault(model_id, [])
        arrivals.append(arrival)
        try:
            node, matched = await self._resolve(model_id, exclude, prefix)
            return self._take(node, model_id, prefix, matched)
        finally:
            self._waiting[model_id] -= 1
            if self._waiting[model_id] <= 0:
                del self._waiting[model_id]
            arrivals.remove(arrival)
            if not arrivals:
                self._arrivals.pop(model_id, None)

    def _oldest(self, model_id: str) -> float:
        """When the oldest request waiting for ``model_id`` arrived (now, if none does)."""
        return min(self._arrivals.get(model_id, ()), default=time.monotonic())

    async def _resolve(
        self, model_id: str, exclude: frozenset[str], prefix: Sequence[int]
    ) -> tuple[str, int]:
        deadline = time.monotonic() + self.settings.load_timeout_s
        while True:
            if self._stopping.is_set():
                raise GatewayError(503, ErrorKind.UNAVAILABLE, SHUTTING_DOWN)
            match self._route(model_id, exclude, prefix):
                case Serve(node, matched):
                    return node, matched
                case Hold(_):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise _late(model_id)
                    await self._wait_change(min(remaining, 1.0))
                case ColdLoad(profile):
                    return await self.ensure_loaded(profile, deadline - time.monotonic()), 0
                case WaitForLoad(node):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise _late(model_id)
                    await self._wait_on(node, remaining)
                case NotFound(message):
                    raise GatewayError(404, ErrorKind.NOT_FOUND, message)
                case NoNode(message):
                    raise GatewayError(503, ErrorKind.UNAVAILABLE, message)

    async def _wait_on(self, node: str, within_s: float) -> None:
        """Wait for the next change of the fleet view, with ``node`` watched meanwhile.

        However many requests wait on a node, one task asks it again every
        ``WATCH_EVERY_S``; every waiter wakes on each new answer.
        """
        waiters = {
            asyncio.ensure_future(self._changed.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        self._watched[node] += 1
        if node not in self._watchers:
            self._watchers[node] = self._spawn(self._watch(node))
        try:
            await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._watched[node] -= 1
            if self._watched[node] <= 0:
                del self._watched[node]
            for waiter in waiters:
                waiter.cancel()

    async def _wait_change(self, within_s: float) -> None:
        """Wait for the next change of the fleet or its requests (or for the gateway to stop)."""
        waiters = {
            asyncio.ensure_future(self._changed.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _watch(self, node: str) -> None:
        try:
            while self._watched[node] > 0:
                await asyncio.sleep(WATCH_EVERY_S)
                if self._watched[node] > 0:
                    await self.refresh(node)
        finally:
            self._watchers.pop(node, None)

    async def ensure_loaded(self, profile: ModelProfile, within_s: float | None = None) -> str:
        """Load ``profile`` somewhere (one load however many callers) and return the node."""
        task = self._loads.get(profile.id)
        if task is None:
            task = asyncio.create_task(self._cold_load(profile))
            self._loads[profile.id] = task
            task.add_done_callback(lambda _: self._loads.pop(profile.id, None))
            # Someone always retrieves the outcome, even if every caller gave up.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        timeout = self.settings.load_timeout_s if within_s is None else max(within_s, 0)
        self._callers[profile.id] += 1
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise _late(profile.id) from None
        finally:
            self._callers[profile.id] -= 1
            if self._callers[profile.id] <= 0:
                del self._callers[profile.id]

    @property
    def loading(self) -> frozenset[str]:
        """Models the gateway is loading right now."""
        return frozenset(self._loads)

    async def _cold_load(self, profile: ModelProfile) -> str:
        try:
            return await self._place_and_load(profile)
        finally:
            self._blocked.pop(profile.id, None)

    async def _place_and_load(self, profile: ModelProfile) -> str:
        needed: int | None = None
        exclude: set[str] = set()
        last_error = "no attempt made"
        attempts = 0
        fresh = True
        deadline = time.monotonic() + self.settings.load_timeout_s
        while attempts < len(self.clients) + 16:
            cooling = in_backoff(self.backoffs, profile.id, self._clock())
            candidates = [
                n
                for n in self.clients
                if n not in exclude and n not in cooling and profile.allowed_on(n)
            ]
            if not candidates and cooling and not attempts:
                # Every node that could take it failed to load it recently: no new try yet.
                raise self._cooling_down(profile.id, cooling)
            if fresh:
                # Fresh answers from the nodes that could take it, in parallel and bounded:
                # a slow node is judged on its last answer, not waited for.
                await self._refresh(candidates, PLACEMENT_POLL_S)
                fresh = False
            # Deciding and claiming the victims happens without a pause, so two cold
            # loads never choose the same victims; the unloads then run unlocked.
            decision = place(
                profile,
                self.fleet,
                self.catalogue,
                self._busy(),
                self.strategy,
                needed_bytes=needed,
                exclude=frozenset(exclude | cooling.keys()),
                wait_for_busy=True,
            )
            if isinstance(decision, Unplaceable):
                message = decision.message
                if exclude:
                    message = f"model {profile.id!r} cannot be placed: {last_error}"
                log.warning("model cannot be placed", extra={"model": profile.id, "error": message})
                raise GatewayError(
                    503, ErrorKind.UNAVAILABLE, message, headers=_retry_after(cooling)
                )
            if decision.waits_for:
                await self._wait_for_room(profile, decision.node, decision.waits_for, deadline)
                continue
            self._blocked.pop(profile.id, None)
            await self._evict_for(decision)
            attempts += 1
            failure = await self._load_on(decision.node, profile)
            if failure is None:
                self.backoffs.pop((decision.node, profile.id), None)
                return decision.node
            last_error = f"{failure.node} answered {failure.code or 'no answer'}"
            fresh = True  # plan again on what the nodes say now (another load may be under way)
            retry = after_failed_load(
                profile,
                failure,
                self.fleet,
                self.catalogue,
                self._busy(),
                self.strategy,
                needed_bytes=needed,
            )
            match retry:
                case PlanAgain(needed_bytes):
                    needed = needed_bytes  # the neuron's own figure: plan evictions with it
                case EvictOne(node, victim):
                    await self.unload(node, victim, self._reason)
                case WaitForRoom(node, victims):
                    await self._wait_for_room(profile, node, victims, deadline)
                case Exclude(node):
                    self._back_off(node, profile.id)
                    exclude.add(node)
                case GiveUp(_):
                    self._back_off(failure.node, profile.id)
                    # The neuron's own words stay in the log (its "load failed" line).
                    message = f"model {profile.id!r} cannot be loaded: {last_error}"
                    cooling = in_backoff(self.backoffs, profile.id, self._clock())
                    raise GatewayError(
                        503, ErrorKind.UNAVAILABLE, message, headers=_retry_after(cooling)
                    )
        message = f"model {profile.id!r} cannot be placed: {last_error}"
        cooling = in_backoff(self.backoffs, profile.id, self._clock())
        raise GatewayError(503, ErrorKind.UNAVAILABLE, message, headers=_retry_after(cooling))

    async def _wait_for_room(
        self, profile: ModelProfile, node: str, victims: tuple[str, ...], deadline: float
    ) -> None:
        """Wait while ``victims`` on ``node`` have requests in flight.

        The swap policy decides when they stop taking new ones.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _late(profile.id)
        if not self._callers.get(profile.id) and not profile.pinned:
            raise GatewayError(503, ErrorKind.UNAVAILABLE, "nobody waits for this load any more")
        self._blocked[profile.id] = Blocked(profile.id, node, victims, self._oldest(profile.id))
        if all(not self.leases.counts.get((node, v)) for v in victims):
            # Idle by the gateway's count: the neuron's own count is from its last poll.
            await self.refresh(node)
        else:
            await self._wait_change(min(remaining, 1.0))

    def _back_off(self, node: str, model_id: str) -> None:
        """A load of ``model_id`` failed on ``node``: pause loads of it there, longer each time."""
        failures = (
            self.backoffs[(node, model_id)].failures + 1 if (node, model_id) in self.backoffs else 1
        )
        pause = backoff_s(failures)
        self.backoffs[(node, model_id)] = Backoff(failures, self._clock() + pause)
        log.warning(
            "load backing off",
            extra={"model": model_id, "node": node, "failures": failures, "seconds": pause},
        )

    def clear_backoff(self, model_id: str) -> None:
        """An operator asks for ``model_id``: forget its failed loads everywhere."""
        for key in [k for k in self.backoffs if k[1] == model_id]:
            del self.backoffs[key]

    def _cooling_down(self, model_id: str, cooling: Mapping[str, float]) -> GatewayError:
        wait = min(cooling.values())
        return GatewayError(
            503,
            ErrorKind.UNAVAILABLE,
            f"model {model_id!r} failed to load recently; the next try is in {math.ceil(wait)} s",
            headers=_retry_after(cooling),
        )

    @property
    def _reason(self) -> EvictionReason:
        return "priority" if self.strategy == "priority" else "lru"

    async def _evict_for(self, decision: Placement) -> None:
        if not decision.evict:
            return
        claimed = [(decision.node, victim) for victim in decision.evict]
        self._evicting.update(claimed)
        try:
            for victim in decision.evict:
                await self.unload(decision.node, victim, self._reason)
        finally:
            self._evicting.difference_update(claimed)
        self._eviction_cycles += 1
        every = self.config.cortex.eviction.defrag_after_cycles
        if every and self._eviction_cycles % every == 0:
            self._spawn(self.defragment())

    async def _load_on(self, node: str, profile: ModelProfile) -> LoadFailure | None:
        """Ask ``node`` to load; ``None`` on success, else what went wrong."""
        client = self.clients[node]
        request = LoadRequest(model=profile.qualified_id, options=dict(profile.engine))
        started = time.monotonic()
        self.events.emit(FleetEvent("load_started", node, profile.id, source=profile.source))
        try:
            await client.load(request, self.settings.load_timeout_s)
        except NeuronCallError as exc:
            failed = FleetEvent(
                "load_failed",
                node,
                profile.id,
                error=str(exc),
                seconds=time.monotonic() - started,
                url=client.base_url,
                status=exc.upstream_status,
                code=exc.code,
            )
            self.events.emit(failed)
            if exc.upstream_status is None:
                await self.refresh(node)
            details = exc.error.error.details if exc.error else {}
            needed = details.get("needed_bytes")
            code = printable(exc.code, 64) if exc.code else None
            return LoadFailure(node, code, str(exc), needed if isinstance(needed, int) else None)
        seconds = time.monotonic() - started
        self.events.emit(FleetEvent("loaded", node, profile.id, seconds=seconds))
        await self.refresh(node)
        return None

    # --- unloading ------------------------------------------------------------------------

    async def unload(self, node: str, model_id: str, reason: EvictionReason) -> None:
        """Unload ``model_id`` from ``node`` and forget its endpoint."""
        client = self.clients[node]
        self._endpoints.pop((node, model_id), None)
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
        kind: EventKind = "unloaded" if reason == "admin" else "evicted"
        self.events.emit(FleetEvent(kind, node, model_id, reason=reason))
        await self.refresh(node)

    async def defragment(self) -> None:
        """Repack fragmented nodes: move each chosen idle model off and back on its node."""
        for node, model in defrag_candidates(self.fleet, self.catalogue, self._busy()):
            profile = self.catalogue.profile(model)
            log.info("defragmenting", extra={"node": node, "model": model})
            await self.unload(node, model, "defrag")
            if profile is not None:
                self._spawn(self._load_quietly(profile))

    # --- serving ------------------------------------------------------------------------

    async def endpoint(self, node: str, model_id: str) -> str:
        """The OpenAI base URL of ``model_id`` on ``node`` (cached until the model leaves).

        A failed lookup polls the node before its :class:`NeuronCallError` goes on.
        """
        key = (node, model_id)
        url = self._endpoints.get(key)
        if url is None:
            try:
                advertised = await self.clients[node].endpoint(model_id)
            except NeuronCallError:
                await self.refresh(node)
                raise
            url = rewrite_loopback(advertised, self.fleet.nodes[node].endpoint)
            self._endpoints[key] = url
        return url

    async def invalidate(self, node: str, model_id: str) -> None:
        """After an endpoint failed a request: forget it and ask the node again."""
        self._endpoints.pop((node, model_id), None)
        await self.refresh(node)

    def stop(self) -> int:
        """The gateway is stopping: waiters give up and leases are aborted; how many."""
        self._stopping.set()
        return self.leases.abort_all(SHUTTING_DOWN)

    async def close(self) -> None:
        """Cancel background work (loads under way on neurons carry on there)."""
        self._stopping.set()
        tasks = [*self._background, *self._loads.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _late(model_id: str) -> GatewayError:
    return GatewayError(
        503, ErrorKind.UNAVAILABLE, f"model {model_id!r} did not finish loading in time"
    )


def _retry_after(cooling: Mapping[str, float]) -> dict[str, str]:
    """``Retry-After`` for the soonest node to come out of backoff (none if none cools down)."""
    return {"retry-after": str(math.ceil(min(cooling.values())))} if cooling else {}
