"""Requests in flight, by ``(node, model)``: who holds what, so it can be counted and taken back.

Every request the gateway sends to a neuron holds a :class:`Lease` from the
moment it is routed (so a burst of requests is spread by counts that are
already up to date) until it ends, however it ends. When a node goes down,
or the gateway stops, the leases there are aborted: whatever each request
registered (closing its upstream connection, cancelling its wait for
headers) runs at once, so nothing waits out a timeout on a dead node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

__all__ = ["Lease", "Leases"]


class Lease:
    """One request's hold on ``(node, model)``, counted in flight until released."""

    __slots__ = ("_aborts", "_book", "aborted", "matched", "model", "node", "prefill", "url")

    def __init__(self, book: Leases, node: str, model: str) -> None:
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
        self._book: Leases | None = book
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

    def abort(self, reason: str) -> None:
        """Take the lease back: run what was registered with :meth:`on_abort`."""
        if self.aborted is not None or self._book is None:
            return
        self.aborted = reason
        callbacks, self._aborts = self._aborts, []
        for callback in callbacks:
            callback()

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

    def __init__(self) -> None:
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
        lease = Lease(self, node, model)
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

    def abort_node(self, node: str, reason: str) -> int:
        """Abort every lease on ``node``; how many there were."""
        leases = list(self._held.get(node, ()))
        for lease in leases:
            lease.abort(reason)
        return len(leases)

    def abort_all(self, reason: str) -> int:
        """Abort every lease; how many there were."""
        return sum(self.abort_node(node, reason) for node in list(self._held))
