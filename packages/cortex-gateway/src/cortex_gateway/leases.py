"""Requests in flight, by ``(node, model)``: who holds what, so it can be counted and taken back.

Every request the gateway sends to a neuron holds a :class:`Lease` from the
moment it is routed (so a burst of requests is spread by counts that are
already up to date) until it ends, however it ends. When a node goes down,
or the gateway stops, the leases there are aborted: whatever each request
registered (closing its upstream connection, cancelling its wait for
headers) runs at once, so nothing waits out a timeout on a dead node.

A lease also carries what its request tells the node's owner (the poller's
``Node``): the model's endpoint there, and whether the node was reached, could
not be reached, or no longer has the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from cortex_gateway.neurons import NeuronApi

__all__ = ["Lease", "Leases", "NodeReports"]


class NodeReports(Protocol):
    """What a lease asks of, and tells, the owner of its node."""

    @property
    def client(self) -> NeuronApi:
        """The node's management client."""
        ...

    async def endpoint(self, model: str) -> str:
        """The OpenAI base URL of ``model`` there (cached until the model leaves)."""
        ...

    async def invalidate(self, model: str) -> None:
        """``model``'s endpoint failed a request: forget it and ask the node again."""
        ...

    def trip(self) -> None:
        """A request could not reach the node: prefer other nodes for a while."""
        ...

    def reset(self) -> None:
        """A request reached the node."""
        ...

    def heard(self) -> None:
        """A request received bytes from the node (it is not gone, whatever its polls say)."""
        ...


class Lease:
    """One request's hold on ``(node, model)``, counted in flight until released."""

    __slots__ = (
        "_aborts",
        "_book",
        "_reports",
        "aborted",
        "matched",
        "model",
        "node",
        "prefill",
        "stopping",
        "url",
    )

    def __init__(
        self, book: Leases, node: str, model: str, reports: NodeReports | None = None
    ) -> None:
        self.node = node
        self.model = model
        self.url = ""
        """The model's OpenAI base URL on the node, once known."""
        self.matched = 0
        """Leading prompt blocks the node was recently sent (prefix-aware routing)."""
        self.prefill = 0
        """Prompt blocks the node has still to compute, until the first token (or the end)."""
        self.aborted: str | None = None
        """Why the lease was taken back (the node went down, the gateway stops), if it was."""
        self.stopping = False
        """Taken back because the gateway stops: no other node will take the request."""
        self._book: Leases | None = book
        self._reports = reports
        self._aborts: list[Callable[[], object]] = []

    @property
    def held(self) -> bool:
        """Whether the lease still counts its request in flight."""
        return self._book is not None

    def on_abort(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` if the lease is aborted (at once if it already was)."""
        if self.aborted is not None:
            callback()
        else:
            self._aborts.append(callback)

    def abort(self, reason: str, *, stopping: bool = False) -> None:
        """Take the lease back: run what was registered with :meth:`on_abort`."""
        if self.aborted is not None or self._book is None:
            return
        self.aborted = reason
        self.stopping = stopping
        callbacks, self._aborts = self._aborts, []
        for callback in callbacks:
            callback()

    @property
    def client(self) -> NeuronApi:
        """The management client of the lease's node."""
        return self._node().client

    def _node(self) -> NodeReports:
        if self._reports is None:
            raise RuntimeError(f"lease on {self.node!r}: no node to report to")
        return self._reports

    async def endpoint(self) -> str:
        """The model's OpenAI base URL on the node (:attr:`url` from then on).

        A node that could not say (anything but a 404) has its breaker opened
        by its owner; the :class:`~cortex_gateway.neurons.NeuronCallError` goes on.
        """
        self.url = await self._node().endpoint(self.model)
        return self.url

    def reached(self) -> None:
        """The node answered the request."""
        self._node().reset()

    def heard(self) -> None:
        """A chunk of the answer came: the node is there."""
        if self._reports is not None:
            self._reports.heard()

    async def unreachable(self) -> None:
        """The request could not reach the node: its breaker opens, the endpoint is asked again."""
        node = self._node()
        node.trip()
        await node.invalidate(self.model)

    async def moved(self) -> None:
        """The node no longer has the model: its endpoint is forgotten and the node polled."""
        await self._node().invalidate(self.model)

    def prefilled(self) -> None:
        """The node has computed the prompt (its first token came): stop counting that work."""
        if self.prefill and self._book is not None:
            self._book.prefilled(self)
        self.prefill = 0

    def release(self) -> None:
        """Stop counting the request in flight (once, however often it is called)."""
        self.prefilled()
        book, self._book = self._book, None
        self._aborts = []
        if book is not None:
            book.released(self)


class Leases:
    """The book of leases: counts by ``(node, model)`` and the leases held on each node."""

    def __init__(self, nodes: Mapping[str, NodeReports] | None = None) -> None:
        """A book of leases on ``nodes`` (their owners, by name), reported to as requests go."""
        self._nodes: Mapping[str, NodeReports] = nodes or {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._prefill: Counter[tuple[str, str]] = Counter()
        self.version = 0
        """Counts every lease taken and released: a change to look at."""
        self._held: dict[str, set[Lease]] = {}
        self._listeners: list[Callable[[], object]] = []

    @property
    def counts(self) -> Mapping[tuple[str, str], int]:
        """Requests in flight by ``(node, model)``."""
        return self._counts

    @property
    def prefill(self) -> Mapping[tuple[str, str], int]:
        """Prompt blocks sent by ``(node, model)`` and not yet computed (no first token yet)."""
        return self._prefill

    def on_release(self, listener: Callable[[], object]) -> None:
        """Call ``listener`` after every release (a cold load waiting for room looks again)."""
        self._listeners.append(listener)

    def __len__(self) -> int:
        return sum(len(held) for held in self._held.values())

    def take(self, node: str, model: str, prefill: int = 0) -> Lease:
        """A new lease, counted at once (with ``prefill`` prompt blocks still to compute)."""
        lease = Lease(self, node, model, self._nodes.get(node))
        self.version += 1
        self._counts[(node, model)] += 1
        if prefill > 0:
            lease.prefill = prefill
            self._prefill[(node, model)] += prefill
        self._held.setdefault(node, set()).add(lease)
        return lease

    def prefilled(self, lease: Lease) -> None:
        """Stop counting a lease's prompt blocks (called by :class:`Lease`)."""
        key = (lease.node, lease.model)
        self._prefill[key] -= lease.prefill
        if self._prefill[key] <= 0:
            del self._prefill[key]

    def released(self, lease: Lease) -> None:
        """Forget a released lease (called by :meth:`Lease.release`)."""
        key = (lease.node, lease.model)
        self.version += 1
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]
        held = self._held.get(lease.node)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[lease.node]
        for listener in self._listeners:
            listener()

    def abort_node(self, node: str, reason: str, *, stopping: bool = False) -> int:
        """Abort every lease on ``node``; how many there were."""
        leases = list(self._held.get(node, ()))
        for lease in leases:
            lease.abort(reason, stopping=stopping)
        return len(leases)

    def abort_all(self, reason: str) -> int:
        """Abort every lease, the gateway stopping; how many there were."""
        return sum(self.abort_node(node, reason, stopping=True) for node in list(self._held))
