"""The poller: one owner per neuron, keeping the gateway's picture of the fleet fresh.

Each configured neuron has one :class:`Node` that owns all the gateway keeps
about it, as llama-swap's ``Process`` owns one upstream: its management
client, one :class:`NodeRecord` (the last answer, when it went up or down,
its breaker, the endpoints of its models) and the polls and watcher in
flight. What a new answer changes is decided by :func:`observe`, a pure
function of the old record and the answer: the new record, the fleet events
to emit, whether requests there are void, which prompt prefixes it forgot.
The :class:`Poller` holds the nodes, the :class:`~cortex_gateway.fleet.Fleet`
snapshot routing reads, and the signal that wakes whoever waits on a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from cortex_core.config import GatewayConfig
from cortex_gateway.background import Background
from cortex_gateway.events import Events, FleetEvent
from cortex_gateway.fleet import Fleet, NodeState
from cortex_gateway.neurons import NeuronApi, NeuronCallError, Neurons

__all__ = [
    "BREAKER_S",
    "WATCH_EVERY_S",
    "Changes",
    "Node",
    "NodeRecord",
    "Poller",
    "Transition",
    "observe",
    "rewrite_loopback",
]

LOOPBACK = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})
WATCH_EVERY_S = 1.0
"""How often a node is asked again while requests wait for a load under way there."""
BREAKER_S = 10.0
"""How long a node that failed a request is used only when no other node can serve."""
NOT_POLLED = "not polled yet"


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


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """Everything the gateway knows of one neuron, as one value."""

    state: NodeState
    since: float | None = None
    """When it last went up or down (Unix seconds), as this gateway saw it."""
    endpoints: Mapping[str, str] = field(default_factory=dict)
    """The OpenAI base URL of each model ready there, once asked for."""
    broken_until: float = 0.0
    """Until when (monotonic) it is used only if no other node can serve: it failed a request."""

    def broken(self, now: float) -> bool:
        """Whether the breaker is open at ``now`` (monotonic)."""
        return self.broken_until > now

    def tripped(self, now: float) -> NodeRecord:
        """The record after a request could not reach the node at ``now`` (monotonic)."""
        return replace(self, broken_until=now + BREAKER_S)

    def with_endpoint(self, model: str, url: str) -> NodeRecord:
        """The record with ``model``'s endpoint known."""
        return replace(self, endpoints={**self.endpoints, model: url})

    def without_endpoint(self, model: str) -> NodeRecord:
        """The record with ``model``'s endpoint forgotten (it failed a request, or left)."""
        if model not in self.endpoints:
            return self
        return replace(self, endpoints={m: u for m, u in self.endpoints.items() if m != model})


@dataclass(frozen=True, slots=True)
class Transition:
    """What one answer (or failed poll) of a node changes."""

    record: NodeRecord
    events: tuple[FleetEvent, ...] = ()
    void: bool = False
    """The node went down or restarted: the requests on it cannot finish."""
    restarted: bool = False
    """A new process: whatever the old one held (prompt caches) is gone."""
    gone: frozenset[str] = frozenset()
    """Models no longer ready on a node still up: their prompt caches went with them."""


def _ready(node: NodeState) -> set[str]:
    return {m.id for m in node.models if m.state == "ready"}


def observe(record: NodeRecord, seen: NodeState, now: float) -> Transition:
    """The record after ``seen`` (a node's answer, or it marked down), and what that changes.

    A node is announced up when it answers after not answering; down when
    it stops answering, or when one never seen up fails differently; a
    restart when its ``started_at`` changes. An endpoint is kept only while
    its model is ready there.
    """
    old, url = record.state, seen.endpoint
    events: list[FleetEvent] = []
    since = record.since
    if seen.up and not old.up:
        since = now
        events.append(FleetEvent("node_up", seen.name, url=url, version=seen.version))
    elif not seen.up and (old.up or old.last_seen is None) and old.error != seen.error:
        if old.up or since is None:
            since = now
        events.append(FleetEvent("node_down", seen.name, error=seen.error, url=url))
    restarted = old.started_at is not None and seen.started_at not in (None, old.started_at)
    gone: frozenset[str] = frozenset()
    if restarted:
        since = now
        events.append(FleetEvent("node_restarted", seen.name))
        endpoints: Mapping[str, str] = {}
    else:
        endpoints = {m: u for m, u in record.endpoints.items() if seen.ready(m)}
        if seen.up:
            gone = frozenset(_ready(old) - _ready(seen))
    return Transition(
        NodeRecord(seen, since, endpoints, record.broken_until),
        tuple(events),
        void=(old.up and not seen.up) or restarted,
        restarted=restarted,
        gone=gone,
    )


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
        try:
            health, devices, models = await asyncio.gather(
                client.health(), client.devices(), client.models()
            )
        except NeuronCallError as exc:
            seen = self.state.down(str(exc))
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
        self._poller.apply(self, observe(self.record, seen, self._poller.clock()))
        return seen

    async def endpoint(self, model: str) -> str:
        """The OpenAI base URL of ``model`` here (cached until the model leaves).

        A failed lookup polls the node before its :class:`NeuronCallError` goes on.
        """
        url = self.record.endpoints.get(model)
        if url is None:
            try:
                advertised = await self.client.endpoint(model)
            except NeuronCallError:
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
        self._tripped: set[str] = set()
        """Nodes whose breaker may be open (an index: most of the time, none)."""

    def apply(self, node: Node, transition: Transition) -> None:
        """Take ``transition`` of ``node``: the fleet snapshot, the reaction, the events."""
        node.record = transition.record
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
        self._tripped.add(name)

    def broken(self) -> frozenset[str]:
        """Nodes that failed a request in the last ``BREAKER_S`` seconds."""
        if not self._tripped:
            return frozenset()
        now = time.monotonic()
        self._tripped = {n for n in self._tripped if self.nodes[n].record.broken(now)}
        return frozenset(self._tripped)

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
