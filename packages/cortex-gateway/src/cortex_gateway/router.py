"""Routing: where a request goes, a pure decision over a fleet snapshot.

:func:`route` answers ``Serve | Saturated | Hold | WaitForLoad | ColdLoad |
NotFound | NoNode`` from the fleet, the gateway's requests in flight and the prompt's
prefix history; the lifecycle gathers those facts and acts on the decision.
Where a cold load goes and what it evicts is :mod:`cortex_gateway.placement`.
Nothing here does I/O, so every rule is testable with plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.neuron_api import MODEL_STATES
from cortex_core.tasks import Task
from cortex_core.text import printable
from cortex_gateway.errors import no_such_model
from cortex_gateway.fleet import Fleet, InFlight, NodeState, in_flight_on

__all__ = [
    "ColdLoad",
    "Decision",
    "Hold",
    "NoNode",
    "NotFound",
    "Saturated",
    "Serve",
    "WaitForLoad",
    "route",
]


@dataclass(frozen=True, slots=True)
class Serve:
    """The model is ready on ``node``: send the request there.

    ``matched``: when the prompt's prefix chose the node, how many leading
    blocks of it the node was recently sent; 0 when load chose it.
    """

    node: str
    matched: int = 0


@dataclass(frozen=True, slots=True)
class WaitForLoad:
    """The model is loading on ``node`` (started elsewhere): wait for it."""

    node: str


@dataclass(frozen=True, slots=True)
class Hold:
    """The model is ready on ``node`` but admits no new request there: wait, route again.

    A swap away from it is due there, or under way.
    """

    node: str


@dataclass(frozen=True, slots=True)
class Saturated:
    """The model is ready, but every node that admits it has its cap in flight: wait for a slot."""

    node: str


@dataclass(frozen=True, slots=True)
class ColdLoad:
    """The model is in the catalogue, or sleeps somewhere, but is ready nowhere: place it.

    Placement wakes it where it sleeps (``Placement.wake``) or loads it cold.
    """

    profile: ModelProfile


@dataclass(frozen=True, slots=True)
class NotFound:
    """Neither in the catalogue nor loaded anywhere."""

    message: str


@dataclass(frozen=True, slots=True)
class NoNode:
    """Known, but no node can serve it now (its only nodes are down)."""

    message: str


Decision = Serve | Saturated | Hold | WaitForLoad | ColdLoad | NotFound | NoNode


@dataclass(frozen=True, slots=True)
class _Affinity:
    matched: Mapping[str, int]
    blocks: int
    held: Mapping[str, int]
    prefill: Mapping[tuple[str, str], int]
    max_imbalance: int
    min_match: float


def _choose(
    nodes: Sequence[NodeState], model_id: str, in_flight: InFlight, affinity: _Affinity
) -> Serve:
    load = {n.name: in_flight_on(n, model_id, in_flight) for n in nodes}
    held = affinity.held
    matched, blocks = affinity.matched, affinity.blocks
    if matched and blocks:
        least = min(load.values())
        floor = max(1, affinity.min_match * blocks)
        useful = {name: m for name, m in matched.items() if m >= floor}
        if useful:
            prefill = affinity.prefill

            def cost(node: NodeState) -> tuple[int, int, int]:
                # The prompt work queued there (sent, no first token yet), then this
                # prompt's own beyond what the node holds: a match wins while it saves
                # more prefill than waiting behind the node's queue costs.
                queued = prefill.get((node.name, model_id), 0)
                own = blocks - useful.get(node.name, 0)
                return queued + own, load[node.name], held.get(node.name, 0)

            within = [n for n in nodes if load[n.name] - least <= affinity.max_imbalance]
            best = min(within, key=cost)
            if best.name in useful:
                return Serve(best.name, useful[best.name])
    chosen = min(nodes, key=lambda n: (load[n.name], held.get(n.name, 0)))
    return Serve(chosen.name)


def route(
    model_id: str,
    catalogue: Catalogue,
    fleet: Fleet,
    in_flight: InFlight,
    *,
    exclude: frozenset[str] = frozenset(),
    avoid: frozenset[str] = frozenset(),
    gated: frozenset[tuple[str, str]] = frozenset(),
    full: frozenset[tuple[str, str]] = frozenset(),
    blocks: int = 0,
    affinity: Mapping[str, int] | None = None,
    held: Mapping[str, int] | None = None,
    prefill: Mapping[tuple[str, str], int] | None = None,
    max_imbalance: int = 0,
    min_match: float = 0.0,
) -> Decision:
    """Where a request for the concrete ``model_id`` goes (aliases already resolved).

    ``exclude``: nodes this request already failed on; ``avoid``: nodes that
    failed recently, used only when no other node has the model ready;
    ``gated``: ``(node, model)`` pairs admitting no new request (a swap away
    from the model is due there); ``full``: pairs with their cap of requests
    in flight (``Saturated`` when every open one is).

    Prefix-aware routing (``affinity``: leading blocks of the request's
    prompt each node was sent, of ``blocks``; ``held``: blocks each node
    holds in all; ``prefill``: prompt blocks sent by ``(node, model)`` and
    not yet computed): a match counts if it covers at least ``min_match`` of
    the prompt. Among the nodes with at most ``max_imbalance`` requests in
    flight above the least busy, the one where the prompt's first token
    comes soonest by that count: the blocks queued there plus this prompt's
    blocks beyond its match (ties to the fewer in flight, then the node
    holding less). If that node holds no match, or none matches, the least
    busy node serves, ties to the node holding the least (so new
    conversations spread even one at a time), then configuration order.
    """
    ready = [fleet.nodes[name] for name in fleet.locations(model_id) if name not in exclude]
    open_ = [n for n in ready if (n.name, model_id) not in gated]
    room = [n for n in open_ if (n.name, model_id) not in full] if full else open_
    preferred = [n for n in room if n.name not in avoid] or room
    if preferred:
        weighed = _Affinity(
            affinity or {}, blocks, held or {}, prefill or {}, max_imbalance, min_match
        )
        return _choose(preferred, model_id, in_flight, weighed)
    if open_:
        return Saturated(open_[0].name)
    if ready:
        return Hold(ready[0].name)
    loading = [name for name in fleet.loading(model_id) if name not in exclude]
    if loading:
        return WaitForLoad(loading[0])
    for node in fleet.up():
        info = node.model(model_id)
        if info is not None and info.state not in MODEL_STATES:
            # A newer neuron's state: this gateway cannot tell what it allows.
            return NoNode(
                f"model '{printable(model_id)}' is '{printable(info.state, 32)}' on"
                f" {node.name!r}, a state this gateway cannot route to"
            )
    profile = catalogue.profile(model_id) or _sleeper(model_id, fleet)
    if profile is not None:
        return ColdLoad(profile)
    if any(n.model(model_id) is not None for n in fleet.nodes.values()):
        return NoNode(f"model '{printable(model_id)}' is only on nodes that are down or failed")
    return NotFound(no_such_model(model_id))


def _sleeper(model_id: str, fleet: Fleet) -> ModelProfile | None:
    """How to wake a model outside the catalogue (loaded by hand, then evicted to sleep).

    Only where it sleeps: the gateway never loads such a model cold by itself.
    """
    nodes = fleet.sleeping(model_id)
    info = fleet.nodes[nodes[0]].model(model_id) if nodes else None
    if info is None:
        return None
    task: Task = "embed" if info.task == "embed" else "generate"
    return ModelProfile(id=model_id, source=info.source, nodes=nodes, task=task)
