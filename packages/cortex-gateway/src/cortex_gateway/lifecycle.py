"""The lifecycle: a request's model routed onto the fleet, as a lease, or a wait for one.

It assembles the :class:`~cortex_gateway.poller.Poller` (the neurons' word),
the :class:`~cortex_gateway.loads.Loads` (every load and unload), the book
of :class:`~cortex_gateway.leases.Lease` s and the
:class:`~cortex_gateway.slots.Slots` (caps per node and model, and who
waits for a slot), and does three things with them: route
(``router.route`` on the fleet snapshot), lease (the node held in the same
step as the decision) and wait (for a load, for a node, for room, for a
slot; a load's waiters bounded by ``max_waiting`` per model, every wait by
``load_timeout_s``). A node
that restarts, or is down by evidence with its requests gone quiet (see
:mod:`~cortex_gateway.poller`), has its leases aborted at once; a slot that may
have come free (a request ended, the fleet changed) is offered to the
requests waiting for one, in fair order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.config import GatewayConfig
from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.events import Events
from cortex_gateway.fleet import Fleet, FleetStatus, NodeState
from cortex_gateway.leases import Lease, Leases
from cortex_gateway.loads import Loads, late
from cortex_gateway.neurons import Neurons
from cortex_gateway.poller import Poller
from cortex_gateway.prefix import PrefixIndex
from cortex_gateway.records import Transition
from cortex_gateway.router import (
    ColdLoad,
    Decision,
    Hold,
    NoNode,
    NotFound,
    Saturated,
    Serve,
    WaitForLoad,
    route,
)
from cortex_gateway.slots import Slots, Ticket

__all__ = ["Lifecycle"]

log = logging.getLogger(__name__)

RETRY_AFTER_S = 10
"""What a 429 for too many requests waiting on one load tells the client."""
NODE_DOWN = "the model server stopped answering"
SHUTTING_DOWN = "the gateway is shutting down"


class Lifecycle:
    """Routes each request's model onto the fleet and holds the node for it."""

    def __init__(
        self,
        config: GatewayConfig,
        neurons: Neurons,
        events: Events | None = None,
        *,
        tokens: Mapping[str, str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = config.cortex.gateway
        self.routing = config.cortex.routing
        self.events = Events() if events is None else events
        self.poller = Poller(
            config,
            neurons,
            self.events,
            tokens=tokens or {},
            on_change=self._node_changed,
            clock=clock,
        )
        self.leases = Leases(self.poller.nodes)
        self.prefixes = PrefixIndex(self.routing.prefix_index_blocks)
        """Which node was recently sent which prompt prefix (``[routing] policy = "prefix"``)."""
        self.loads = Loads(
            config, self.poller, self.leases, self.events, waiting_since=self._oldest, clock=clock
        )
        self.leases.on_release(self.loads.released)
        self.slots = Slots(config.cortex.scheduling, self.settings.workers, offer=self._offer)
        """Caps on requests in flight per node and model, and who waits for a slot."""
        self.leases.on_release(self.slots.released)
        self.catalogue: Catalogue = config.catalogue
        """The catalogue in force (:meth:`use` replaces it; requests keep what they resolved)."""
        self._waiting: Counter[str] = Counter()
        self._for_slots: Counter[str] = Counter()
        """Of those waiting, the ones that came for a slot (the model was ready, at its cap)."""
        self._arrivals: dict[str, list[float]] = {}
        """When each request waiting for a model arrived (monotonic), by model."""

    # --- what it shows -----------------------------------------------------------------

    def use(self, catalogue: Catalogue) -> None:
        """Route by ``catalogue`` from now on (``models.toml`` was read again)."""
        self.catalogue = self.loads.catalogue = catalogue

    @property
    def fleet(self) -> Fleet:
        """The fleet as last seen."""
        return self.poller.fleet

    @property
    def in_flight(self) -> Mapping[tuple[str, str], int]:
        """Requests in flight by ``(node, model)``, as the gateway's leases count them."""
        return self.leases.counts

    @property
    def waiting(self) -> Mapping[str, int]:
        """Requests waiting for a model that is not ready yet, by model."""
        return self._waiting

    @property
    def stopping(self) -> bool:
        """Whether the gateway is stopping (requests cut, waiters gone)."""
        return self.poller.changes.stopping

    def status(self) -> FleetStatus:
        """The fleet and the gateway's own counts, now."""
        return FleetStatus(
            catalogue=self.catalogue,
            fleet=self.poller.fleet,
            in_flight=self.leases.counts,
            waiting=self._waiting,
            loading=self.loads.loading,
            backoffs=self.loads.backoffs,
            since=self.poller.since(),
            leases_taken=self.leases.version,
        )

    # --- what an operator asks ---------------------------------------------------------

    async def refresh(self, name: str) -> NodeState:
        """Poll the node ``name`` now."""
        return await self.poller.refresh(name)

    async def refresh_all(self, within_s: float | None = None) -> Fleet:
        """Poll every node at once; with ``within_s``, answer by then with what came."""
        return await self.poller.refresh_all(within_s)

    async def load(self, profile: ModelProfile) -> str:
        """Load ``profile`` now (its failed loads forgotten), where it fits; the node."""
        self.loads.clear_backoff(profile.id)
        return await self.loads.ensure_loaded(profile)

    async def unload(self, model_id: str, node: str | None = None) -> list[str]:
        """Unload ``model_id`` from ``node``, or from everywhere it is ready or sleeps."""
        fleet = self.poller.fleet
        nodes = [node] if node else fleet.locations(model_id) + fleet.sleeping(model_id)
        nodes = [n for n in nodes if n in fleet.nodes and fleet.nodes[n].model(model_id)]
        for name in nodes:
            await self.loads.unload(name, model_id, "admin")
        return nodes

    # --- the fleet changed ---------------------------------------------------------------

    def _node_changed(self, name: str, transition: Transition) -> None:
        if transition.restarted:
            self.prefixes.forget(name)
        for model in transition.gone:
            self.prefixes.forget(name, model)
        if transition.void:
            aborted = self.leases.abort_node(name, NODE_DOWN)
            if aborted:
                log.warning(
                    "requests on a node that went down aborted",
                    extra={"node": name, "count": aborted},
                )
        self.slots.released()  # a node's models, or their caps, may have changed

    async def run(self) -> None:
        """Poll forever; after each round, keep pinned models loaded and unload idle ones."""
        interval = self.settings.poll_interval_s
        while True:
            try:
                await self.poller.refresh_all()
                await self.loads.maintain()
            except Exception:
                # The poll must outlive any bug: without it the fleet view freezes.
                log.exception("fleet poll failed")
            await asyncio.sleep(interval)

    # --- routing -----------------------------------------------------------------------

    def _route(
        self,
        model_id: str,
        exclude: frozenset[str],
        prefix: Sequence[int] = (),
        session: str | None = None,
        batch: bool = False,
    ) -> Decision:
        affinity = held = None
        fleet = self.poller.fleet
        counts = self.leases.counts
        if prefix:
            nodes = fleet.locations(model_id)
            affinity = self.prefixes.match(model_id, prefix, nodes, session)
            held = self.prefixes.holding
        return route(
            model_id,
            self.catalogue,
            fleet,
            counts,
            exclude=exclude,
            avoid=self.poller.broken(),
            gated=self.loads.gates(),
            full=self.slots.full(fleet, model_id, counts, batch=batch),
            blocks=len(prefix),
            affinity=affinity,
            held=held,
            prefill=self.leases.prefill,
            max_imbalance=self.routing.max_imbalance,
            min_match=self.routing.min_prefix_match,
        )

    def lease(
        self,
        model_id: str,
        *,
        exclude: frozenset[str] = frozenset(),
        arrived: float | None = None,
        prefix: Sequence[int] = (),
        session: str | None = None,
        key: str = "",
        batch: bool = False,
    ) -> Lease | asyncio.Task[Lease]:
        """A lease on the node to serve ``model_id`` now, or the wait for one (a task to await).

        The lease is taken in the same step as the decision, so nothing (an
        eviction, a burst) comes between them; ``prefix`` (the prompt's block
        hashes) weighs where it goes and is recorded there, with its ``session``
        (a client's conversation key, which keeps it on one node). A request that has
        to wait (for a load, for room, for a node) is bounded by ``max_waiting``
        per model (429), one waiting for a slot of a model that is ready only by
        the connections the gateway holds (it would have queued in the engine
        before the cap); both by ``load_timeout_s``. ``arrived``
        (monotonic) is when it came, for the swap policy. A request waiting for
        a slot waits in ``key``'s line of its class (``batch`` or interactive).
        """
        decision = self._route(model_id, exclude, prefix, session, batch)
        if isinstance(decision, Serve) and not self.slots.waiting(model_id):
            return self._take(decision.node, model_id, prefix, decision.matched, session)
        for_slot = isinstance(decision, Serve | Saturated)
        loads_waited = self._waiting[model_id] - self._for_slots[model_id]
        if not for_slot and loads_waited >= self.settings.max_waiting:
            raise GatewayError(
                429,
                ErrorKind.OVERLOADED,
                f"too many requests are waiting for model {model_id!r} to load",
                headers={"retry-after": str(RETRY_AFTER_S)},
            )
        arrival = time.monotonic() if arrived is None else arrived
        self._waiting[model_id] += 1
        self._for_slots[model_id] += for_slot
        self._arrivals.setdefault(model_id, []).append(arrival)
        ticket = Ticket(model_id, key, batch, exclude, prefix, session=session)
        waiting = asyncio.ensure_future(self._wait_for(ticket))
        waiting.add_done_callback(partial(self._waited, model_id, arrival, for_slot))
        return waiting

    def _take(
        self,
        node: str,
        model_id: str,
        prefix: Sequence[int],
        matched: int,
        session: str | None = None,
    ) -> Lease:
        if prefix:
            self.prefixes.record(model_id, prefix, node, session)
        lease = self.leases.take(node, model_id, len(prefix) - matched)
        lease.matched = matched
        return lease

    async def _wait_for(self, ticket: Ticket) -> Lease:
        model_id, prefix, batch = ticket.model, ticket.prefix, ticket.batch
        session = ticket.session
        deadline = time.monotonic() + self.settings.load_timeout_s
        while True:
            found = await self._resolve(model_id, ticket.exclude, prefix, session, batch, deadline)
            if found is not None:
                node, matched = found
                state = self.poller.fleet.nodes.get(node)
                if self.slots.room(state, model_id, self.leases.counts, batch=batch):
                    return self._take(node, model_id, prefix, matched, session)
            lease = await self._queue(ticket, deadline)
            if lease is not None:
                return lease
            ticket = Ticket(model_id, ticket.key, batch, ticket.exclude, prefix, session=session)

    # --- slots -------------------------------------------------------------------------

    async def _queue(self, ticket: Ticket, deadline: float) -> Lease | None:
        """Wait in line for a slot: the lease, or None to route again (the model moved)."""
        self.slots.push(ticket)
        self._offer(ticket.model)
        try:
            return await asyncio.wait_for(
                asyncio.shield(ticket.granted), max(deadline - time.monotonic(), 0)
            )
        except TimeoutError:
            self._give_up(ticket)
            raise GatewayError(
                503,
                ErrorKind.UNAVAILABLE,
                f"model {ticket.model!r} had no free slot in time: every node serving it"
                " has its cap of requests in flight",
                headers={"retry-after": str(RETRY_AFTER_S)},
            ) from None
        except BaseException:
            self._give_up(ticket)  # its client left, or the gateway stops
            raise

    def _give_up(self, ticket: Ticket) -> None:
        """A ticket's request stopped waiting: out of the line, or its lease given back."""
        granted = ticket.granted
        if not self.slots.drop(ticket) and granted.done() and not granted.cancelled():
            lease = granted.result()
            if lease is not None:
                lease.release()
        granted.cancel()

    def _offer(self, model_id: str) -> None:
        """Give each slot that is free to the next ticket of ``model_id``, in fair order."""
        while (ticket := self.slots.next(model_id, self._fits)) is not None:
            if ticket.granted.done():
                continue
            serve = ticket.serve
            if serve is None:
                ticket.granted.set_result(None)  # not a slot's wait any more: route again
            else:
                lease = self._take(
                    serve.node, model_id, ticket.prefix, serve.matched, ticket.session
                )
                ticket.granted.set_result(lease)

    def _fits(self, ticket: Ticket) -> bool:
        """Whether ``ticket`` can go now: a slot is its, or its model is no longer a slot's wait."""
        if ticket.granted.done():
            return True
        decision = self._route(
            ticket.model, ticket.exclude, ticket.prefix, ticket.session, ticket.batch
        )
        if isinstance(decision, Saturated):
            return False
        ticket.serve = decision if isinstance(decision, Serve) else None
        return True

    def _waited(self, model_id: str, arrival: float, for_slot: bool, _: object) -> None:
        """A wait ended, however it ended: it no longer counts."""
        self._waiting[model_id] -= 1
        if self._waiting[model_id] <= 0:
            del self._waiting[model_id]
        self._for_slots[model_id] -= for_slot
        if self._for_slots[model_id] <= 0:
            del self._for_slots[model_id]
        arrivals = self._arrivals.get(model_id, [])
        arrivals.remove(arrival)
        if not arrivals:
            self._arrivals.pop(model_id, None)

    def _oldest(self, model_id: str) -> float:
        """When the oldest request waiting for ``model_id`` arrived (now, if none does)."""
        return min(self._arrivals.get(model_id, ()), default=time.monotonic())

    async def _resolve(
        self,
        model_id: str,
        exclude: frozenset[str],
        prefix: Sequence[int],
        session: str | None,
        batch: bool,
        deadline: float,
    ) -> tuple[str, int] | None:
        """Where the request can go once its model is ready; None: every node is at its cap."""
        changes = self.poller.changes
        while True:
            if changes.stopping:
                raise GatewayError(503, ErrorKind.UNAVAILABLE, SHUTTING_DOWN)
            match self._route(model_id, exclude, prefix, session, batch):
                case Serve(node, matched):
                    return node, matched
                case Saturated(_):
                    return None
                case Hold(_):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise late(model_id)
                    await changes.wait(min(remaining, 1.0))
                case ColdLoad(profile):
                    node = await self.loads.ensure_loaded(profile, deadline - time.monotonic())
                    return node, 0
                case WaitForLoad(node):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise late(model_id)
                    await self.poller.wait_on(node, remaining)
                case NotFound(message):
                    raise GatewayError(404, ErrorKind.NOT_FOUND, message)
                case NoNode(message):
                    raise GatewayError(503, ErrorKind.UNAVAILABLE, message)

    # --- stopping ------------------------------------------------------------------------

    def stop(self) -> int:
        """The gateway is stopping: waiters give up and leases are aborted; how many."""
        self.poller.changes.stop()
        for ticket in self.slots.clear():
            if not ticket.granted.done():
                ticket.granted.set_result(None)  # it routes again, and finds the gateway stopping
        return self.leases.abort_all(SHUTTING_DOWN)

    async def close(self) -> None:
        """Cancel background work (loads under way on neurons carry on there)."""
        self.poller.changes.stop()
        await self.loads.close()
        await self.poller.close()
