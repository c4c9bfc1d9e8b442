"""Placement and eviction: where a cold load goes, what leaves for it, what to do when it fails.

:func:`place` picks a node and the models to evict there (by strategy,
``lru`` or ``priority``; pinned models never); :func:`after_failed_load`
decides what a cold load does after a neuron refused or failed it;
:func:`idle_models` and :func:`defrag_candidates` what to unload on their own.
The loads gather the facts and act on these decisions; nothing here does
I/O, so every rule is testable with plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.neuron_api import Device, ModelInfo
from cortex_core.units import GIB
from cortex_gateway.fleet import Fleet, InFlight, NodeState, in_flight_on

__all__ = [
    "FINAL_LOAD_ERRORS",
    "EvictOne",
    "Exclude",
    "GiveUp",
    "LoadFailure",
    "Placement",
    "PlanAgain",
    "Retry",
    "Strategy",
    "Unplaceable",
    "WaitForRoom",
    "after_failed_load",
    "defrag_candidates",
    "evictable",
    "eviction_order",
    "feasible_on",
    "idle_models",
    "place",
]

Strategy = Literal["lru", "priority"]


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
            if (in_flight_on(node, info.id, in_flight) > 0) != busy:
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
