"""The gateway's picture of the fleet: what each neuron said when last asked.

Snapshots are immutable and rebuilt from the neurons' own answers on every
poll (and after every load or unload), so a stale entry never outlives the
neuron's word. :class:`FleetStatus` adds what the gateway itself knows (its
requests in flight and waiting, its loads, its backoffs): what the routes
show and the metrics scrape, through :class:`FleetView`. Nothing here does
I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from cortex_core.catalogue import Catalogue
from cortex_core.neuron_api import Device, ModelInfo
from cortex_gateway.scheduling import Backoff

__all__ = ["Fleet", "FleetStatus", "FleetView", "InFlight", "NodeState", "in_flight_on"]

InFlight = Mapping[tuple[str, str], int]
"""Requests the gateway has in flight, by ``(node, model)``."""


@dataclass(frozen=True, slots=True)
class NodeState:
    """One neuron as last seen."""

    name: str
    endpoint: str
    up: bool = False
    version: str = ""
    devices: tuple[Device, ...] = ()
    models: tuple[ModelInfo, ...] = ()
    last_seen: float | None = None
    error: str | None = None
    """Why the last poll failed, while the node is down."""
    started_at: float | None = None
    """When the neuron's process started, as it says: a new value means it restarted."""
    _by_id: Mapping[str, ModelInfo] = field(init=False, repr=False, compare=False)
    _largest: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Looked up for every request routed and every model listed: by id, not by scan.
        object.__setattr__(self, "_by_id", {m.id: m for m in reversed(self.models)})
        largest = sorted((d.memory_total for d in self.devices), reverse=True)
        object.__setattr__(self, "_largest", tuple(largest))

    def model(self, model_id: str) -> ModelInfo | None:
        """The node's entry for ``model_id`` in any state."""
        return self._by_id.get(model_id)

    def could_hold(self, needed: int, tp: int = 1) -> bool:
        """Whether ``tp`` of its GPUs, empty, hold ``needed`` bytes split evenly among them."""
        largest = self._largest
        return len(largest) >= tp and largest[tp - 1] >= -(-needed // tp)

    def ready(self, model_id: str) -> bool:
        """Whether the node is up and serving ``model_id``."""
        info = self.model(model_id)
        return self.up and info is not None and info.state == "ready"

    def asleep(self, model_id: str) -> ModelInfo | None:
        """``model_id``'s entry if it sleeps here (up): a wake, not a cold load, brings it back.

        A sleeper holds host memory (``host_memory_bytes``), not device memory; its
        ``memory_bytes`` and ``devices`` are what waking takes back.
        """
        info = self.model(model_id)
        return info if self.up and info is not None and info.state == "sleeping" else None

    @property
    def sleeping_bytes(self) -> int:
        """Host memory the node's sleeping models hold, all together."""
        return sum(m.host_memory_bytes for m in self.models if m.state == "sleeping")

    @property
    def memory_total(self) -> int:
        """Device memory on this node, all GPUs together (0 for a CPU-only node)."""
        return sum(d.memory_total for d in self.devices)

    @property
    def memory_free(self) -> int:
        """Free device memory, all GPUs together."""
        return sum(d.memory_free for d in self.devices)

    def down(self, error: str) -> NodeState:
        """A copy of the node marked down: its models are no longer served from it."""
        return replace(self, up=False, error=error)


def in_flight_on(node: NodeState, model_id: str, in_flight: InFlight) -> int:
    """Requests on ``model_id`` at ``node``: the gateway's count, or the neuron's if higher."""
    info = node.model(model_id)
    return max(in_flight.get((node.name, model_id), 0), info.in_flight if info else 0)


@dataclass(frozen=True, slots=True)
class Fleet:
    """Every configured neuron, by name, in configuration order."""

    nodes: Mapping[str, NodeState] = field(default_factory=dict)

    @classmethod
    def configured(cls, neurons: Iterable[tuple[str, str]]) -> Fleet:
        """A fleet of nodes not yet polled (all down) from ``(name, endpoint)`` pairs."""
        return cls(
            {name: NodeState(name, endpoint, error="not polled yet") for name, endpoint in neurons}
        )

    def with_node(self, node: NodeState) -> Fleet:
        """The fleet with ``node`` replaced."""
        return Fleet({**self.nodes, node.name: node})

    def up(self) -> list[NodeState]:
        """The nodes answering right now."""
        return [n for n in self.nodes.values() if n.up]

    def locations(self, model_id: str) -> list[str]:
        """Up nodes where ``model_id`` is ready."""
        return [n.name for n in self.nodes.values() if n.ready(model_id)]

    def sleeping(self, model_id: str) -> list[str]:
        """Up nodes where ``model_id`` sleeps."""
        return [n.name for n in self.nodes.values() if n.asleep(model_id) is not None]

    def loading(self, model_id: str) -> list[str]:
        """Up nodes where ``model_id`` is loading."""
        return [
            n.name
            for n in self.nodes.values()
            if n.up and (info := n.model(model_id)) is not None and info.state == "loading"
        ]

    def loaded_ids(self) -> list[str]:
        """Every model id ready on some up node, in first-seen order."""
        seen: dict[str, None] = {}
        for node in self.up():
            for info in node.models:
                if info.state == "ready":
                    seen.setdefault(info.id)
        return list(seen)


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The fleet as the gateway sees it at one moment: the neurons' word and its own counts.

    The mappings are the gateway's live books: read them before the next await.
    """

    catalogue: Catalogue
    fleet: Fleet
    in_flight: InFlight
    """Requests in flight by ``(node, model)``, as the gateway's leases count them."""
    waiting: Mapping[str, int]
    """Requests waiting for a model that is not ready yet, by model."""
    loading: frozenset[str]
    """Models the gateway is loading."""
    backoffs: Mapping[tuple[str, str], Backoff]
    """Failed loads by ``(node, model)``, paused until ``until``."""
    since: Mapping[str, float]
    """When each node last went up or down (Unix seconds), as this gateway saw it."""
    leases_taken: int
    """Counts every lease taken and released: a change to look at."""


class FleetView(Protocol):
    """Who reads the gateway's view of the fleet (the metrics, the routes) reads it here."""

    @property
    def catalogue(self) -> Catalogue:
        """The catalogue in force."""
        ...

    def status(self) -> FleetStatus:
        """The fleet and the gateway's own counts, now."""
        ...
