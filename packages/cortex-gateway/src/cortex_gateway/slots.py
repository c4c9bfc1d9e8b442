"""Slots: how many requests one model may have in flight on one node, and who waits for one.

``[scheduling] max_in_flight_per_model`` caps a ``(node, model)``'s requests
in flight (0: the engine's own batch limit, the ``max_num_seqs`` its neuron
reports; no cap where it reports none). Of the cap, ``interactive_slots``
are for interactive requests only: a batch request never takes them, so a
batch flood leaves an interactive request a slot to start in at once
instead of behind a long generation (batch requests keep at least one). With
``workers = N`` each worker holds its share of the cap (at least one), so
the engine sees the cap as a whole.

A request for a model whose every node is at its cap waits here, as a
:class:`Ticket` in that model's :class:`~cortex_gateway.fairqueue.FairQueue`
(interactive first, then round-robin across keys), counting toward nothing
on the engine. The lifecycle offers the tickets a slot whenever one may
have come free (a request ended, the fleet changed) and grants it by taking
the lease for the ticket. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cortex_core.config import SchedulingSection
from cortex_gateway.fairqueue import FairQueue
from cortex_gateway.fleet import Fleet, InFlight, NodeState
from cortex_gateway.leases import Lease
from cortex_gateway.router import Serve

__all__ = ["Slots", "Ticket"]


@dataclass(eq=False, slots=True)
class Ticket:
    """One request waiting for a slot of its model (compared by identity)."""

    model: str
    key: str
    """Its key's name: the line it waits in."""
    batch: bool
    exclude: frozenset[str]
    """Nodes it already failed on."""
    prefix: Sequence[int]
    granted: asyncio.Future[Lease | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    """Its lease once a slot is its; ``None``: route again (the model is no longer ready)."""
    serve: Serve | None = None
    """Where the slot offered is (set while it is offered)."""
    session: str | None = None
    """The client's conversation key (Claude Code's session), kept on one node by prefix routing."""


class Slots:
    """Each ``(node, model)``'s cap, and the tickets waiting, by model."""

    def __init__(
        self,
        settings: SchedulingSection,
        workers: int = 1,
        offer: Callable[[str], None] | None = None,
    ) -> None:
        """Caps as ``settings`` say, shared by ``workers``; ``offer(model)`` hands out its slots."""
        self.cap = settings.max_in_flight_per_model
        self.reserved = settings.interactive_slots
        self.workers = workers
        self._queues: dict[str, FairQueue[Ticket]] = {}
        self._offer = offer

    def released(self) -> None:
        """A slot may have come free (a request ended, the fleet changed): offer it to who waits."""
        if self._queues and self._offer is not None:
            for model in list(self._queues):
                self._offer(model)

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def limit(self, node: NodeState, model: str, *, batch: bool) -> int | None:
        """How many requests of this class ``node`` may have of ``model`` (None: no cap)."""
        cap = self.cap
        if not cap:
            info = node.model(model)
            cap = info.max_num_seqs or 0 if info is not None else 0
        if not cap:
            return None
        share = max(cap // self.workers, 1)
        return max(share - self.reserved, 1) if batch else share

    def full(
        self, fleet: Fleet, model: str, in_flight: InFlight, *, batch: bool
    ) -> frozenset[tuple[str, str]]:
        """The ``(node, model)`` pairs where ``model`` is ready and its cap for the class is met."""
        return frozenset(
            (name, model)
            for name in fleet.locations(model)
            if (limit := self.limit(fleet.nodes[name], model, batch=batch)) is not None
            and in_flight.get((name, model), 0) >= limit
        )

    def room(self, node: NodeState | None, model: str, in_flight: InFlight, *, batch: bool) -> bool:
        """Whether ``node`` has a slot for one more of this class now (nobody waiting first)."""
        if model in self._queues:
            return False  # whoever waits goes first
        if node is None:
            return True  # just loaded, not polled yet: its cap is not known
        limit = self.limit(node, model, batch=batch)
        return limit is None or in_flight.get((node.name, model), 0) < limit

    def waiting(self, model: str) -> bool:
        """Whether requests wait for a slot of ``model``."""
        return model in self._queues

    def push(self, ticket: Ticket) -> None:
        """Queue ``ticket`` behind its key's earlier tickets."""
        queue = self._queues.setdefault(ticket.model, FairQueue())
        queue.push(ticket, ticket.key, batch=ticket.batch)

    def next(self, model: str, fits: Callable[[Ticket], bool]) -> Ticket | None:
        """The next ticket of ``model`` that ``fits`` what came free, in fair order; taken out."""
        queue = self._queues.get(model)
        if queue is None:
            return None
        ticket = queue.pop(fits)
        if not queue:
            del self._queues[model]
        return ticket

    def clear(self) -> list[Ticket]:
        """Take every ticket out (the gateway stops); them."""
        tickets = []
        for model in list(self._queues):
            while (ticket := self.next(model, lambda _: True)) is not None:
                tickets.append(ticket)
        return tickets

    def drop(self, ticket: Ticket) -> bool:
        """Take a ticket out whose request gave up; False if it was already granted."""
        queue = self._queues.get(ticket.model)
        if queue is None or not queue.remove(ticket):
            return False
        if not queue:
            del self._queues[ticket.model]
        return True
