"""Routing, placement and eviction: pure decisions over a fleet snapshot.

The proxy and the lifecycle manager gather the facts (the fleet, requests in
flight, the catalogue) and act on what these functions decide; nothing here
does I/O, so every rule is testable with plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.neuron_api import MODEL_STATES, Device, ModelInfo
from cortex_core.text import printable
from cortex_core.units import GIB
from cortex_gateway.fleet import Fleet, NodeState

__all__ = [
    "FINAL_LOAD_ERRORS",
    "ColdLoad",
    "Decision",
    "EvictOne",
    "Exclude",
    "GiveUp",
    "Hold",
    "InFlight",
    "LoadFailure",
    "NoNode",
    "NotFound",
    "Placement",
    "PlanAgain",
    "Retry",
    "Serve",
    "Strategy",
    "Unplaceable",
    "WaitForLoad",
    "WaitForRoom",
    "after_failed_load",
    "defrag_candidates",
    "evictable",
    "eviction_order",
    "feasible_on",
    "idle_models",
    "place",
    "route",
]

InFlight = Mapping[tuple[str, str], int]
"""Requests the gateway has in flight, by ``(node, model)``."""

Strategy = Literal["lru", "priority"]


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
class ColdLoad:
    """The model is in the catalogue but loaded nowhere: place and load it."""

    profile: ModelProfile


@dataclass(frozen=True, slots=True)
class NotFound:
    """Neither in the catalogue nor loaded anywhere."""

    message: str


@dataclass(frozen=True, slots=True)
class NoNode:
    """Known, but no node can serve it now (its only nodes are down)."""

    message: str


Decision = Serve | Hold | WaitForLoad | ColdLoad | NotFound | NoNode


def _in_flight(node: NodeState, model_id: str, in_flight: InFlight) -> int:
    info = node.model(model_id)
    return max(in_flight.get((node.name, model_id), 0), info.in_flight if info else 0)


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
    load = {n.name: _in_flight(n, model_id, in_flight) for n in nodes}
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
    from the model is due there).

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
    preferred = [n for n in open_ if n.name not in avoid] or open_
    if preferred:
        weighed = _Affinity(
            affinity or {}, blocks, held or {}, prefill or {}, max_imbalance, min_match
        )
        return _choose(preferred, model_id, in_flight, weighed)
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
    profile = catalogue.profile(model_id)
    if profile is not None:
        return ColdLoad(profile)
    if any(n.model(model_id) is not None for n in fleet.nodes.values()):
        return NoNode(f"model '{printable(model_id)}' is only on nodes that are down or failed")
    return NotFound(f"model '{printable(model_id)}' does not exist")


# --- placement and eviction ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """Load on ``node`` after unloading ``evict`` there (in that order).

    ``waits_for``: the models among ``evict`` that have requests in flight; the
    load waits until they have drained. ``wake``: the model sleeps on ``node``,
    so the load is a wake (seconds, no engine start), not a cold load.
    """

    node: str
    evict: tuple[str, ...] = ()
    waits_for: tuple[str, ...] = ()
    wake: bool = False


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """No allowed node can take the model, even after evicting what may be evicted."""

    message: str


def _tp(profile: ModelProfile) -> int:
    value = profile.engine.get("tensor_parallel_size", 1)
    return value if isinstance(value, int) and value > 0 else 1


def _fits(free: Sequence[int], needed: int, tp: int) -> bool:
    share = -(-needed // tp)
    return sum(1 for f in free if f >= share) >= tp


def _sharing(victims: Sequence[ModelInfo], sleeper: ModelInfo) -> list[ModelInfo]:
    """The victims on a GPU the sleeper wakes on."""
    return [v for v in victims if not v.devices or set(v.devices) & set(sleeper.devices)]


def _room(free: Mapping[int, int], sleeper: ModelInfo | None, needed: int | None, tp: int) -> bool:
    """Room for a cold load of ``needed`` bytes, or for ``sleeper`` to wake on its own GPUs."""
    if sleeper is None:
        return needed is not None and _fits(list(free.values()), needed, tp)
    devices = sleeper.devices or list(free)[:1]
    share = -(-sleeper.memory_bytes // max(len(devices), 1))
    return all(free.get(index, 0) >= share for index in devices)


def evictable(
    node: NodeState,
    catalogue: Catalogue,
    in_flight: InFlight,
    *,
    keep: str | None = None,
    busy: bool = False,
) -> list[ModelInfo]:
    """Models on ``node`` that may be unloaded: ready, idle, not pinned, not ``keep``.

    With ``busy``, the ones that may go once they are done instead: ready with
    requests in flight, or still loading or unloading.
    """
    found = []
    for info in node.models:
        profile = catalogue.profile(info.id)
        if info.id == keep or (profile is not None and profile.pinned):
            continue
        if info.state == "ready":
            if (_in_flight(node, info.id, in_flight) > 0) != busy:
                continue
        elif not (busy and info.state in ("loading", "unloading")):
            continue
        found.append(info)
    return found


def eviction_order(
    victims: Sequence[ModelInfo], catalogue: Catalogue, strategy: Strategy
) -> list[ModelInfo]:
    """``lru``: least recently used first; ``priority``: lowest priority first, then LRU."""

    def key(info: ModelInfo) -> tuple[int, float]:
        profile = catalogue.profile(info.id)
        priority = profile.priority if profile is not None else 50
        last = info.last_used or info.loaded_at or 0.0
        return (priority if strategy == "priority" else 0, last)

    return sorted(victims, key=key)


def _free_after(devices: Sequence[Device], freed: Sequence[ModelInfo]) -> dict[int, int]:
    """Free memory by GPU index once ``freed`` are unloaded."""
    free = {d.index: d.memory_free for d in devices}
    for info in freed:
        share = info.memory_bytes // max(len(info.devices), 1)
        for index in info.devices or list(free)[:1]:
            if index in free:
                free[index] += share
    return free


def place(
    profile: ModelProfile,
    fleet: Fleet,
    catalogue: Catalogue,
    in_flight: InFlight,
    strategy: Strategy,
    *,
    needed_bytes: int | None = None,
    exclude: frozenset[str] = frozenset(),
    wait_for_busy: bool = False,
) -> Placement | Unplaceable:
    """Choose a node for a cold load of ``profile`` and what to evict there first.

    ``needed_bytes`` (from a neuron's preflight) overrides the catalogue's
    ``memory_gb``. Without either figure, or on a node without GPUs, the node's
    own preflight decides: the node is chosen without evictions. Among nodes
    that fit, the one needing the fewest evictions and then having the most
    free memory wins. With ``wait_for_busy``, models with requests in flight
    may be chosen too (after every idle one, and as few as possible): the load
    then waits for them to drain (``Placement.waits_for``).

    A node where the model sleeps wakes it (``Placement.wake``): its own
    devices must have room for what it takes back. A wake costs seconds where
    a cold load costs an engine start, so it wins over any cold load that does
    not keep requests waiting less, evictions or not.
    """
    needed = needed_bytes if needed_bytes is not None else profile.memory_bytes
    tp = _tp(profile)
    candidates = [n for n in fleet.up() if profile.allowed_on(n.name) and n.name not in exclude]
    if not candidates:
        allowed = ", ".join(profile.nodes) if profile.nodes else "any node"
        return Unplaceable(f"no node that may hold {profile.id!r} ({allowed}) is up")
    options: list[tuple[int, int, int, int, Placement]] = []
    for node in candidates:
        sleeper = node.asleep(profile.id)
        cost = 0 if sleeper is not None else 1  # a wake, far below a cold load
        if sleeper is None and (needed is None or not node.devices):
            options.append((0, cost, 0, -node.memory_free, Placement(node.name)))
            continue
        if sleeper is None and needed is not None and not node.could_hold(needed, tp):
            continue
        idle = eviction_order(
            evictable(node, catalogue, in_flight, keep=profile.id), catalogue, strategy
        )
        busy = (
            eviction_order(
                evictable(node, catalogue, in_flight, keep=profile.id, busy=True),
                catalogue,
                strategy,
            )
            if wait_for_busy
            else []
        )
        if sleeper is not None and sleeper.devices:
            # Room is needed on the sleeper's own GPUs: only what is there frees it.
            idle, busy = _sharing(idle, sleeper), _sharing(busy, sleeper)
        victims = idle + busy
        chosen: list[ModelInfo] = []
        while not _room(_free_after(node.devices, chosen), sleeper, needed, tp):
            if len(chosen) == len(victims):
                break
            chosen.append(victims[len(chosen)])
        else:
            free = sum(_free_after(node.devices, chosen).values())
            waits = tuple(v.id for v in chosen[len(idle) :])
            evict = tuple(v.id for v in chosen)
            placement = Placement(node.name, evict, waits, wake=sleeper is not None)
            options.append((len(waits), cost, len(chosen), -free, placement))
    if not options:
        figure = f" ({needed / GIB:.1f} GiB)" if needed else ""
        return Unplaceable(
            f"model {profile.id!r}{figure} cannot be placed: no allowed node has room,"
            " even after evicting every unpinned model"
        )
    return min(options, key=lambda o: o[:4])[4]


# --- after a failed load ---------------------------------------------------------------

FINAL_LOAD_ERRORS = frozenset(
    {"invalid_model_id", "unknown_source", "model_not_found", "unsupported_model", "invalid_option"}
)
"""Neuron error codes that say the model cannot be loaded anywhere: no retry elsewhere."""


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A load a neuron refused or failed: its error code and its own memory figure, if any."""

    node: str
    code: str | None
    message: str
    needed_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class PlanAgain:
    """Place again with the neuron's own figure of the memory the model needs."""

    needed_bytes: int


@dataclass(frozen=True, slots=True)
class EvictOne:
    """Unload ``model`` from ``node`` (whose free memory the gateway cannot see), then retry."""

    node: str
    model: str


@dataclass(frozen=True, slots=True)
class WaitForRoom:
    """Wait for ``victims`` on ``node`` (whose free memory the gateway cannot see) to drain."""

    node: str
    victims: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Exclude:
    """Leave ``node`` out and place again."""

    node: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No retry can help."""

    message: str


Retry = PlanAgain | EvictOne | WaitForRoom | Exclude | GiveUp


def after_failed_load(
    profile: ModelProfile,
    failure: LoadFailure,
    fleet: Fleet,
    catalogue: Catalogue,
    in_flight: InFlight,
    strategy: Strategy,
    *,
    needed_bytes: int | None,
) -> Retry:
    """What a cold load does next after ``failure``, planned with ``needed_bytes`` so far.

    ``insufficient_memory`` on a node without GPUs frees one model there by
    strategy (waits for one to drain when all are busy; leaves the node out
    when nothing may go); on a GPU node it
    plans again with the neuron's own figure, once per new figure. A
    configuration problem gives up; anything else leaves the node out.
    """
    if failure.code == "insufficient_memory":
        node = fleet.nodes.get(failure.node)
        if node is not None and not node.devices:
            victims = eviction_order(
                evictable(node, catalogue, in_flight, keep=profile.id), catalogue, strategy
            )
            if victims:
                return EvictOne(node.name, victims[0].id)
            busy = evictable(node, catalogue, in_flight, keep=profile.id, busy=True)
            if busy:
                ordered = eviction_order(busy, catalogue, strategy)
                return WaitForRoom(node.name, (ordered[0].id,))
            return Exclude(failure.node)
        if failure.needed_bytes is not None and failure.needed_bytes != needed_bytes:
            return PlanAgain(failure.needed_bytes)
    if failure.code in FINAL_LOAD_ERRORS:
        return GiveUp(f"model {profile.id!r} cannot be loaded: {failure.message}")
    return Exclude(failure.node)


def feasible_on(profile: ModelProfile | None, model_id: str, fleet: Fleet) -> list[str]:
    """Up, allowed nodes whose total device memory could hold the model, and where it is loaded.

    Without a memory figure, or on a node without GPUs (whose preflight is the
    judge), an allowed up node counts as feasible.
    """
    names = []
    needed = profile.memory_bytes if profile is not None else None
    tp = _tp(profile) if profile is not None else 1
    for node in fleet.nodes.values():
        if not node.up:
            continue
        if node.ready(model_id):
            names.append(node.name)
            continue
        if profile is None or not profile.allowed_on(node.name):
            continue
        if needed is None or not node.devices or node.could_hold(needed, tp):
            names.append(node.name)
    return names


def idle_models(
    fleet: Fleet, catalogue: Catalogue, in_flight: InFlight, now: float, idle_timeout_s: float
) -> list[tuple[str, str]]:
    """``(node, model)`` pairs idle for ``idle_timeout_s`` or longer (0 disables)."""
    if idle_timeout_s <= 0:
        return []
    found = []
    for node in fleet.up():
        for info in evictable(node, catalogue, in_flight):
            last = info.last_used or info.loaded_at
            if last is not None and now - last >= idle_timeout_s:
                found.append((node.name, info.id))
    return found


def defrag_candidates(
    fleet: Fleet, catalogue: Catalogue, in_flight: InFlight
) -> list[tuple[str, str]]:
    """Models to move so a fragmented node can hold a catalogue model again.

    A node is fragmented when some catalogue model allowed there (one GPU, known
    size, small enough for one of its GPUs) fits its free memory in total but on
    no single GPU. The node's smallest idle, unpinned model is the one to move.
    """
    moves = []
    for node in fleet.up():
        if len(node.devices) < 2:
            continue
        free = [d.memory_free for d in node.devices]
        stuck = [
            p
            for p in catalogue.models
            if p.allowed_on(node.name)
            and p.memory_bytes is not None
            and _tp(p) == 1
            and not node.model(p.id)
            and node.could_hold(p.memory_bytes)
            and p.memory_bytes <= sum(free)
            and not _fits(free, p.memory_bytes, 1)
        ]
        if not stuck:
            continue
        idle = [i for i in evictable(node, catalogue, in_flight) if i.memory_bytes > 0]
        if idle:
            smallest = min(idle, key=lambda i: (i.memory_bytes, i.id))
            moves.append((node.name, smallest.id))
    return moves
