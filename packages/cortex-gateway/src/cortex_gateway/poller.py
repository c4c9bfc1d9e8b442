"""The poller: one owner per neuron, keeping the gateway's picture of the fleet fresh.

Each configured neuron has one :class:`Node` that owns all the gateway keeps
about it, as llama-swap's ``Process`` owns one upstream: its management
client, one :class:`~cortex_gateway.records.NodeRecord` and the polls,
rechecks and watcher in flight. What a new answer changes is decided by
:func:`~cortex_gateway.records.observe` (pure), given the evidence the node
gathers beside its polls: whether its requests still receive bytes, whether
its breaker is open. The :class:`Poller` holds the nodes, the
:class:`~cortex_gateway.fleet.Fleet` snapshot routing reads, and the signal
that wakes whoever waits on a change.

A node whose poll failed is asked again every ``WATCH_EVERY_S`` until it
answers or is down (``down_after_failed_polls``); meanwhile routing uses it
only when no other node can serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace

from cortex_core.config import GatewayConfig
from cortex_gateway.background import Background
from cortex_gateway.events import Events
from cortex_gateway.fleet import Fleet, NodeState
from cortex_gateway.neurons import NeuronApi, NeuronCallError, Neurons
from cortex_gateway.records import (
    Evidence,
    NodeRecord,
    Transition,
    observe,
    rewrite_loopback,
)

__all__ = ["WATCH_EVERY_S", "Changes", "Node", "Poller"]

log = logging.getLogger(__name__)

WATCH_EVERY_S = 1.0
"""How often a node is asked again while requests wait for a load under way there."""
NOT_POLLED = "not polled yet"
ANSWERING_WINDOW_S = 5.0
"""The shortest look back for bytes from a node's requests when a poll of it fails: a stream
at a token a second is answering; one silent this long on a node failing its polls is not."""


class Changes:
    """Wakes everyone waiting on the fleet (a load elsewhere, a node back, room) to look again."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """Whether the gateway is stopping: nobody should wait any more."""
        return self._stopping.is_set()

    def notify(self) -> None:
        """Something changed: wake every waiter."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def stop(self) -> None:
        """The gateway stops: wake every waiter, now and from now on."""
        self._stopping.set()

    async def wait(self, within_s: float) -> None:
        """Wait for the next change (or for the gateway to stop), ``within_s`` at most."""
        waiters = {
            asyncio.ensure_future(self._changed.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


class Node:
    """One neuron: its client, its record, its polls and its watcher (one owner for all)."""

    def __init__(self, poller: Poller, name: str, endpoint: str, client: NeuronApi) -> None:
        self.name = name
        self.client = client
        self.record = NodeRecord(NodeState(name, endpoint, error=NOT_POLLED))
        self._poller = poller
        self._asked = 0
        """Polls started: each answer is numbered, so an older one never wins."""
        self._applied = 0
        self._watchers = 0
        self._watch: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self.heard_at = -float("inf")
        """When (monotonic) a request on the node last received bytes from it."""
        self._polled_at: float | None = None
        """When (monotonic) the latest poll began."""

    @property
    def state(self) -> NodeState:
        """The node as last seen."""
        return self.record.state

    async def refresh(self) -> NodeState:
        """Ask the neuron for its health, devices and models; mark it down if that fails.

        An answer older than one already applied is dropped: a slow poll
        never undoes what a later one saw.
        """
        self._asked += 1
        ticket = self._asked
        client = self.client
        began = time.monotonic()
        before, self._polled_at = self._polled_at, began
        evidence = Evidence()
        try:
            health, devices, models = await asyncio.gather(
                client.health(), client.devices(), client.models()
            )
        except NeuronCallError as exc:
            seen = self.state.down(str(exc))
            evidence = self._evidence(began, before)
        else:
            seen = NodeState(
                name=self.name,
                endpoint=self.state.endpoint,
                up=True,
                version=health.version,
                devices=tuple(devices.devices),
                models=tuple(models.models),
                last_seen=self._poller.clock(),
                started_at=health.started_at,
            )
        if ticket < self._applied:
            return self.state
        self._applied = ticket
        down_after = self._poller.down_after
        transition = observe(
            self.record, seen, self._poller.clock(), down_after=down_after, evidence=evidence
        )
        self._poller.apply(self, transition)
        if transition.record.suspect:
            if transition.record.failures == 1:
                log.warning(
                    "node poll failed",
                    extra={
                        "node": self.name,
                        "url": self.state.endpoint,
                        "error": seen.error,
                        "down_after": down_after,
                    },
                )
            self._recheck_soon()
        return seen

    def _evidence(self, began: float, before: float | None) -> Evidence:
        """What the node's requests and breaker say while a poll that began at ``began`` failed.

        Its requests count as answered when bytes came since the poll before
        this one began (or within ``ANSWERING_WINDOW_S``, whichever is longer).
        """
        window = max(began - before, ANSWERING_WINDOW_S) if before is not None else 0.0
        now = time.monotonic()
        return Evidence(
            answering=began - self.heard_at <= window, unreachable=self.record.broken(now)
        )

    def heard(self) -> None:
        """A request on the node received bytes from it: the node is there."""
        self.heard_at = time.monotonic()

    def _recheck_soon(self) -> None:
        """Ask a suspect node again every ``WATCH_EVERY_S`` until it answers or is down."""
        if self._recheck is None:
            self._recheck = self._poller.background.spawn(self._rechecking())

    async def _rechecking(self) -> None:
        try:
            while self.record.suspect:
                await asyncio.sleep(WATCH_EVERY_S)
                if self.record.suspect:
                    await self.refresh()
        finally:
            self._recheck = None

    async def endpoint(self, model: str) -> str:
        """The OpenAI base URL of ``model`` here (cached until the model leaves).

        A failed lookup polls the node before its :class:`NeuronCallError` goes
        on; one that is not a 404 (the node could not say) opens its breaker
        first, so a failed poll then is evidence enough that the node is down.
        """
        url = self.record.endpoints.get(model)
        if url is None:
            try:
                advertised = await self.client.endpoint(model)
            except NeuronCallError as exc:
                if exc.upstream_status != 404:
                    self.trip()
                await self.refresh()
                raise
            url = rewrite_loopback(advertised, self.state.endpoint)
            self.record = self.record.with_endpoint(model, url)
        return url

    def forget(self, model: str) -> None:
        """Forget ``model``'s endpoint (it is being unloaded)."""
        self.record = self.record.without_endpoint(model)

    async def invalidate(self, model: str) -> None:
        """After ``model``'s endpoint failed a request: forget it and ask the node again."""
        self.forget(model)
        await self.refresh()

    def trip(self) -> None:
        """A request could not reach the node: prefer other nodes for ``BREAKER_S``."""
        self.record = self.record.tripped(time.monotonic())
        self._poller.tripped(self.name)

    def reset(self) -> None:
        """A request reached the node."""
        self.heard_at = time.monotonic()
        if self.record.broken_until:
            self.record = replace(self.record, broken_until=0.0)

    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """While inside, the node is asked again every ``WATCH_EVERY_S`` (one task however many)."""
        self._watchers += 1
        if self._watch is None:
            self._watch = self._poller.background.spawn(self._watching())
        try:
            yield
        finally:
            self._watchers -= 1

    async def _watching(self) -> None:
        try:
            while self._watchers > 0:
                await asyncio.sleep(WATCH_EVERY_S)
                if self._watchers > 0:
                    await self.refresh()
        finally:
            self._watch = None


NodeChanged = Callable[[str, Transition], object]


class Poller:
    """Every configured neuron's :class:`Node`, and the fleet snapshot made of their records."""

    def __init__(
        self,
        config: GatewayConfig,
        neurons: Neurons,
        events: Events,
        *,
        tokens: Mapping[str, str | None],
        on_change: NodeChanged,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.events = events
        self.down_after = config.cortex.gateway.down_after_failed_polls
        """Failed polls in a row that mark a node down (``[gateway] down_after_failed_polls``)."""
        self.changes = Changes()
        self.background = Background()
        self.nodes = {
            n.name: Node(
                self, n.name, n.endpoint, neurons.client(n.name, n.endpoint, tokens.get(n.name))
            )
            for n in config.cortex.neurons
        }
        self.fleet = Fleet({name: node.state for name, node in self.nodes.items()})
        """The fleet as last seen: an immutable snapshot, replaced on every change."""
        self._on_change = on_change
        self._avoided: set[str] = set()
        """Nodes whose breaker may be open or that may be suspect (most of the time, none)."""

    def apply(self, node: Node, transition: Transition) -> None:
        """Take ``transition`` of ``node``: the fleet snapshot, the reaction, the events."""
        node.record = transition.record
        if transition.record.suspect:
            self._avoided.add(node.name)
        self.fleet = self.fleet.with_node(transition.record.state)
        self._on_change(node.name, transition)
        for event in transition.events:
            self.events.emit(event)
        self.changes.notify()

    async def refresh(self, name: str) -> NodeState:
        """Poll the node ``name`` now."""
        return await self.nodes[name].refresh()

    async def refresh_all(self, within_s: float | None = None) -> Fleet:
        """Poll every node at once; with ``within_s``, answer by then with what came."""
        await self.refresh_some(self.nodes, within_s)
        return self.fleet

    async def refresh_some(self, names: Iterable[str], within_s: float | None) -> None:
        """Poll the nodes ``names`` at once, waiting ``within_s`` at most (None: for all)."""
        tasks = [self.background.spawn(self.nodes[name].refresh()) for name in names]
        if tasks:
            await asyncio.wait(tasks, timeout=within_s)

    def tripped(self, name: str) -> None:
        """Note that ``name``'s breaker opened (called by its node)."""
        self._avoided.add(name)

    def broken(self) -> frozenset[str]:
        """Nodes to use only when no other can serve.

        Those that failed a request in the last ``BREAKER_S`` seconds, and
        those whose last poll failed (suspect, not yet down).
        """
        if not self._avoided:
            return frozenset()
        now = time.monotonic()
        self._avoided = {
            n for n in self._avoided if (r := self.nodes[n].record).broken(now) or r.suspect
        }
        return frozenset(self._avoided)

    def since(self) -> dict[str, float]:
        """When each node last went up or down (Unix seconds), as this gateway saw it."""
        return {n: s for n, node in self.nodes.items() if (s := node.record.since) is not None}

    async def wait_on(self, name: str, within_s: float) -> None:
        """Wait for the next change of the fleet, with the node ``name`` watched meanwhile."""
        with self.nodes[name].watched():
            await self.changes.wait(within_s)

    async def close(self) -> None:
        """Stop every poll and watcher."""
        self.changes.stop()
        await self.background.close()
