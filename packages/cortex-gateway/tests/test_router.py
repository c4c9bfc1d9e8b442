"""Routing and placement (eviction, idleness, defragmentation) over plain fleet snapshots."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import pytest

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.neuron_api import Device, ModelInfo, ModelState
from cortex_core.units import GIB
from cortex_gateway.fleet import Fleet, InFlight, NodeState
from cortex_gateway.placement import (
    EvictOne,
    Exclude,
    GiveUp,
    LoadFailure,
    Placement,
    PlanAgain,
    Retry,
    Unplaceable,
    WaitForRoom,
    after_failed_load,
    defrag_candidates,
    evictable,
    eviction_order,
    feasible_on,
    idle_models,
    place,
)
from cortex_gateway.router import (
    ColdLoad,
    Hold,
    NoNode,
    NotFound,
    Saturated,
    Serve,
    WaitForLoad,
    route,
)

NOW = 1_750_000_000.0

SMALL = "Qwen/Qwen3-1.7B"
MEDIUM = "Qwen/Qwen3-8B"
LARGE = "meta-llama/Llama-3.3-70B-Instruct"
NO_IN_FLIGHT: InFlight = {}


# --- builders --------------------------------------------------------------------------


def loaded(
    model_id: str,
    gib: float = 4.0,
    *,
    state: ModelState | str = "ready",
    devices: Sequence[int] = (0,),
    last_used: float | None = None,
    loaded_at: float | None = NOW - 3600,
    in_flight: int = 0,
    host_gib: float = 0.0,
) -> ModelInfo:
    """A model as a neuron's ``GET /models`` reports it."""
    return ModelInfo(
        id=model_id,
        state=state,
        devices=list(devices),
        memory_bytes=int(gib * GIB),
        loaded_at=loaded_at,
        last_used=last_used,
        in_flight=in_flight,
        host_memory_bytes=int(host_gib * GIB),
    )


def asleep(model_id: str, gib: float = 6.5, **fields: Any) -> ModelInfo:
    """A sleeping model: its weights in host memory, ``gib`` to take back on waking."""
    return loaded(model_id, gib, state="sleeping", host_gib=gib * 0.8, **fields)


def node(
    name: str,
    gpus_gib: Sequence[float] = (),
    models: Iterable[ModelInfo] = (),
    *,
    up: bool = True,
) -> NodeState:
    """A polled neuron whose GPUs' used memory is what its models hold (sleepers: none)."""
    infos = tuple(models)
    used = [0] * len(gpus_gib)
    for info in infos:
        if info.state == "sleeping":
            continue
        for index in info.devices:
            used[index] += info.memory_bytes // len(info.devices)
    devices = tuple(
        Device(
            index=i,
            name="NVIDIA GeForce RTX 4090",
            uuid=f"GPU-{name}-{i}",
            memory_total=int(total * GIB),
            memory_used=used[i],
            memory_free=int(total * GIB) - used[i],
        )
        for i, total in enumerate(gpus_gib)
    )
    return NodeState(
        name=name,
        endpoint=f"http://{name}.internal:13131",
        up=up,
        version="0.1.0",
        devices=devices,
        models=infos,
        last_seen=NOW if up else NOW - 60,
        error=None if up else "connection refused",
    )


def fleet(*nodes: NodeState) -> Fleet:
    """A fleet of ``nodes`` in configuration order."""
    return Fleet({n.name: n for n in nodes})


def profile(model_id: str, memory_gb: float | None = None, **fields: Any) -> ModelProfile:
    """A catalogue profile."""
    return ModelProfile(id=model_id, memory_gb=memory_gb, **fields)


def beast(*models: ModelInfo, up: bool = True) -> NodeState:
    """Two 24 GiB GPUs."""
    return node("beast", (24, 24), models, up=up)


def benjy(*models: ModelInfo, up: bool = True) -> NodeState:
    """One 12 GiB GPU."""
    return node("benjy", (12,), models, up=up)


def ratbox(*models: ModelInfo, up: bool = True) -> NodeState:
    """No GPUs: the CPU engine."""
    return node("ratbox", (), models, up=up)


CATALOGUE = Catalogue(
    [
        profile(SMALL, 6.5),
        profile(MEDIUM, 18.0, source="helexa"),
        profile(LARGE, 40.0, nodes=["beast"], engine={"tensor_parallel_size": 2}),
    ],
    {"helexa/small": SMALL},
)


# --- route -------------------------------------------------------------------------------


def test_route_serves_from_the_only_ready_node() -> None:
    """A model ready on one node is served there."""
    snapshot = fleet(beast(loaded(MEDIUM, 18)), benjy())
    assert route(MEDIUM, CATALOGUE, snapshot, NO_IN_FLIGHT) == Serve("beast")


def test_route_prefers_the_node_with_fewer_gateway_requests() -> None:
    """Between two ready nodes the one with fewer gateway requests in flight wins."""
    snapshot = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    assert route(SMALL, CATALOGUE, snapshot, {("beast", SMALL): 2, ("benjy", SMALL): 1}) == Serve(
        "benjy"
    )
    assert route(SMALL, CATALOGUE, snapshot, {("beast", SMALL): 1, ("benjy", SMALL): 3}) == Serve(
        "beast"
    )


def test_route_passes_over_full_nodes_and_is_saturated_when_all_are() -> None:
    """A node at its cap takes nothing more; with every open node full the request waits."""
    snapshot = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    busy = {("beast", SMALL): 0, ("benjy", SMALL): 3}
    beast_full = frozenset({("beast", SMALL)})
    assert route(SMALL, CATALOGUE, snapshot, busy, full=beast_full) == Serve("benjy")
    both = frozenset({("beast", SMALL), ("benjy", SMALL)})
    assert route(SMALL, CATALOGUE, snapshot, busy, full=both) == Saturated("beast")
    # A node admitting nothing (a swap is due) is a hold, whatever its cap.
    gated = frozenset({("beast", SMALL), ("benjy", SMALL)})
    assert route(SMALL, CATALOGUE, snapshot, busy, full=both, gated=gated) == Hold("beast")
    only_gated = frozenset({("benjy", SMALL)})
    assert route(SMALL, CATALOGUE, snapshot, busy, full=beast_full, gated=only_gated) == Saturated(
        "beast"
    )


def test_route_counts_the_neurons_in_flight_when_higher() -> None:
    """A neuron's own in-flight count counts when it is higher than the gateway's."""
    snapshot = fleet(beast(loaded(SMALL, in_flight=5)), benjy(loaded(SMALL)))
    assert route(SMALL, CATALOGUE, snapshot, {("benjy", SMALL): 2}) == Serve("benjy")


def test_route_takes_the_higher_of_the_two_counts_per_node() -> None:
    """Per node the higher of the gateway's and the neuron's counts is compared, not the sum."""
    snapshot = fleet(beast(loaded(SMALL, in_flight=1)), benjy(loaded(SMALL, in_flight=0)))
    # beast: max(1, 1) = 1; benjy: max(2, 0) = 2.
    counts = {("beast", SMALL): 1, ("benjy", SMALL): 2}
    assert route(SMALL, CATALOGUE, snapshot, counts) == Serve("beast")


def test_route_breaks_ties_by_configuration_order() -> None:
    """Equally busy nodes: the one configured first wins."""
    first = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    second = fleet(benjy(loaded(SMALL)), beast(loaded(SMALL)))
    assert route(SMALL, CATALOGUE, first, NO_IN_FLIGHT) == Serve("beast")
    assert route(SMALL, CATALOGUE, second, NO_IN_FLIGHT) == Serve("benjy")


def test_route_prefix_match_wins_at_equal_load() -> None:
    """The node that was sent most of the prompt serves it, all else equal."""
    snapshot = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    chosen = route(
        SMALL, CATALOGUE, snapshot, NO_IN_FLIGHT, blocks=10, affinity={"benjy": 8}, min_match=0.5
    )
    assert chosen == Serve("benjy", 8)


def test_route_prefix_match_below_min_match_spreads_by_what_nodes_hold() -> None:
    """A short shared prefix is no affinity: the least busy node holding less takes it."""
    snapshot = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    chosen = route(
        SMALL,
        CATALOGUE,
        snapshot,
        NO_IN_FLIGHT,
        blocks=10,
        affinity={"beast": 2},
        held={"beast": 40, "benjy": 12},
        min_match=0.5,
    )
    assert chosen == Serve("benjy")


def test_route_prefix_match_loses_to_the_prompt_work_queued_there() -> None:
    """A match saves its blocks; prompt blocks not yet computed on that node cost as many."""
    snapshot = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    counts = {("beast", SMALL): 1}

    def chosen(queued: int) -> object:
        return route(
            SMALL,
            CATALOGUE,
            snapshot,
            counts,
            blocks=10,
            affinity={"beast": 6},
            prefill={("beast", SMALL): queued},
            max_imbalance=4,
            min_match=0.5,
        )

    assert chosen(5) == Serve("beast", 6)  # 5 queued + 4 of its own, against 10 on benjy
    assert chosen(6) == Serve("benjy")  # as soon either way: the one with less in flight
    assert chosen(30) == Serve("benjy")


def test_route_prefix_match_loses_past_max_imbalance() -> None:
    """However long the match, a node that many requests busier than the least is passed over."""
    snapshot = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    for busy, expected in ((2, Serve("beast", 10)), (3, Serve("benjy"))):
        chosen = route(
            SMALL,
            CATALOGUE,
            snapshot,
            {("beast", SMALL): busy},
            blocks=10,
            affinity={"beast": 10},
            max_imbalance=2,
            min_match=0.5,
        )
        assert chosen == expected


def test_route_a_burst_sharing_a_system_prompt_spreads() -> None:
    """New prompts that share half their blocks, routed while none has its first token."""
    snapshot = fleet(beast(loaded(SMALL)), benjy(loaded(SMALL)))
    counts: dict[tuple[str, str], int] = {}
    prefill: dict[tuple[str, str], int] = {}
    held: dict[str, int] = {}
    homes = []
    for _ in range(6):
        affinity = dict.fromkeys(held, 5)  # everyone who was sent one holds the system
        chosen = route(
            SMALL,
            CATALOGUE,
            snapshot,
            counts,
            blocks=10,
            affinity=affinity,
            held=held,
            prefill=prefill,
            max_imbalance=4,
            min_match=0.5,
        )
        assert isinstance(chosen, Serve)
        key = (chosen.node, SMALL)
        counts[key] = counts.get(key, 0) + 1
        prefill[key] = prefill.get(key, 0) + 10 - chosen.matched
        held[chosen.node] = held.get(chosen.node, 0) + 10
        homes.append(chosen.node)
    assert homes.count("beast") == homes.count("benjy") == 3, homes

    """A model loading somewhere (and ready nowhere) is waited for there."""
    snapshot = fleet(beast(), benjy(loaded(SMALL, state="loading")))
    assert route(SMALL, CATALOGUE, snapshot, NO_IN_FLIGHT) == WaitForLoad("benjy")


def test_route_waits_for_a_load_of_a_model_outside_the_catalogue() -> None:
    """A model not in the catalogue but loading on an up node is waited for too."""
    snapshot = fleet(beast(loaded("org/adhoc", state="loading")))
    assert route("org/adhoc", CATALOGUE, snapshot, NO_IN_FLIGHT) == WaitForLoad("beast")


def test_route_prefers_ready_over_loading() -> None:
    """A ready copy is served even while another node is still loading one."""
    snapshot = fleet(beast(loaded(SMALL, state="loading")), benjy(loaded(SMALL)))
    assert route(SMALL, CATALOGUE, snapshot, NO_IN_FLIGHT) == Serve("benjy")


def test_route_cold_loads_a_catalogue_model_loaded_nowhere() -> None:
    """A catalogue model loaded nowhere is a cold load carrying its profile."""
    snapshot = fleet(beast(), benjy())
    decision = route(MEDIUM, CATALOGUE, snapshot, NO_IN_FLIGHT)
    assert decision == ColdLoad(CATALOGUE.models[1])
    assert isinstance(decision, ColdLoad)
    assert decision.profile.qualified_id == "helexa:Qwen/Qwen3-8B"


def test_route_cold_loads_when_the_only_copy_failed() -> None:
    """A failed or unloading copy does not serve: a catalogue model is cold-loaded."""
    for state in ("failed", "unloading"):
        snapshot = fleet(beast(loaded(SMALL, state=state)))
        assert route(SMALL, CATALOGUE, snapshot, NO_IN_FLIGHT) == ColdLoad(CATALOGUE.models[0])


def test_route_unknown_model_is_not_found() -> None:
    """A model neither in the catalogue nor on any node is not found, named in the message."""
    decision = route("org/nothing", CATALOGUE, fleet(beast(), benjy()), NO_IN_FLIGHT)
    assert isinstance(decision, NotFound)
    assert "org/nothing" in decision.message


def test_route_model_only_on_a_down_node_has_no_node() -> None:
    """A non-catalogue model known only on a down node has no node to serve it."""
    snapshot = fleet(beast(loaded("org/adhoc"), up=False), benjy())
    decision = route("org/adhoc", CATALOGUE, snapshot, NO_IN_FLIGHT)
    assert isinstance(decision, NoNode)
    assert "org/adhoc" in decision.message


def test_route_model_failed_on_an_up_node_has_no_node() -> None:
    """A non-catalogue model whose only copy failed has no node (not 'not found')."""
    snapshot = fleet(beast(loaded("org/adhoc", state="failed")))
    assert isinstance(route("org/adhoc", CATALOGUE, snapshot, NO_IN_FLIGHT), NoNode)


def test_route_a_state_from_a_newer_neuron_is_not_routable() -> None:
    """A model in an unknown state is neither served nor loaded again: 503 naming the state."""
    snapshot = fleet(beast(loaded(SMALL, state="migrating")), benjy(loaded(MEDIUM)))
    decision = route(SMALL, CATALOGUE, snapshot, NO_IN_FLIGHT)
    assert isinstance(decision, NoNode)
    assert "'migrating'" in decision.message
    assert route(MEDIUM, CATALOGUE, snapshot, NO_IN_FLIGHT) == Serve("benjy")
    elsewhere = fleet(beast(loaded(SMALL, state="migrating")), benjy(loaded(SMALL)))
    assert route(SMALL, CATALOGUE, elsewhere, NO_IN_FLIGHT) == Serve("benjy")


def test_route_never_serves_from_a_down_node() -> None:
    """A down node's ready model is not served; an up copy is, else the model is cold-loaded."""
    both = fleet(beast(loaded(SMALL), up=False), benjy(loaded(SMALL)))
    assert route(SMALL, CATALOGUE, both, {("benjy", SMALL): 9}) == Serve("benjy")
    only_down = fleet(beast(loaded(SMALL), up=False), benjy())
    assert route(SMALL, CATALOGUE, only_down, NO_IN_FLIGHT) == ColdLoad(CATALOGUE.models[0])


def test_route_does_not_wait_on_a_down_nodes_load() -> None:
    """A load in progress on a down node is not waited for."""
    snapshot = fleet(beast(loaded(SMALL, state="loading"), up=False), benjy())
    assert route(SMALL, CATALOGUE, snapshot, NO_IN_FLIGHT) == ColdLoad(CATALOGUE.models[0])


# --- place: choosing the node --------------------------------------------------------------


def test_place_fits_without_eviction() -> None:
    """A model that fits the free memory of an allowed node is placed there with no evictions."""
    snapshot = fleet(beast(), benjy())
    medium = CATALOGUE.models[1]
    assert place(medium, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("beast", ())


def test_place_prefers_the_node_with_most_free_memory() -> None:
    """Among nodes that fit without evictions the one with the most free memory wins."""
    small = CATALOGUE.models[0]
    assert place(small, fleet(benjy(), beast()), CATALOGUE, NO_IN_FLIGHT, "lru") == Placement(
        "beast"
    )
    # beast keeps 8 + 8 GiB free, benjy 10 GiB: a tie on evictions, and beast has more.
    busy = fleet(beast(loaded("a/x", 16), loaded("b/y", 16, devices=[1])), benjy(loaded("c/z", 2)))
    assert place(small, busy, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("beast")


def test_place_prefers_fewer_evictions_over_more_free_memory() -> None:
    """A node that fits without evicting beats one with more memory that needs an eviction."""
    small = CATALOGUE.models[0]
    snapshot = fleet(
        beast(loaded("a/x", 20, last_used=NOW - 100), loaded("b/y", 20, devices=[1])),
        benjy(),
    )
    assert place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("benjy", ())


def test_place_evicts_when_nothing_fits_and_counts_free_memory_after() -> None:
    """When every node needs evictions the fewest win, and the free memory after them decides."""
    small = CATALOGUE.models[0]
    snapshot = fleet(
        benjy(loaded("c/z", 10, last_used=NOW - 10)),
        beast(
            loaded("a/x", 20, last_used=NOW - 100),
            loaded("b/y", 20, devices=[1], last_used=NOW - 50),
        ),
    )
    # One eviction on either: beast then has 24 + 4 GiB free, benjy 12.
    assert place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("beast", ("a/x",))


def test_place_respects_allowed_nodes() -> None:
    """A profile's ``nodes`` list restricts placement even when another node has more room."""
    pinned_to_benjy = profile(SMALL, 6.5, nodes=["benjy"])
    catalogue = Catalogue([pinned_to_benjy])
    snapshot = fleet(beast(), benjy())
    assert place(pinned_to_benjy, snapshot, catalogue, NO_IN_FLIGHT, "lru") == Placement("benjy")


def test_place_respects_exclude() -> None:
    """Excluded nodes (say, one whose load just failed) are not chosen."""
    small = CATALOGUE.models[0]
    snapshot = fleet(beast(), benjy())
    chosen = place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru", exclude=frozenset({"beast"}))
    assert chosen == Placement("benjy")


def test_place_excluding_every_node_is_unplaceable() -> None:
    """Excluding the only allowed node leaves nowhere to place the model."""
    small = profile(SMALL, 6.5, nodes=["benjy"])
    snapshot = fleet(beast(), benjy())
    chosen = place(
        small, snapshot, Catalogue([small]), NO_IN_FLIGHT, "lru", exclude=frozenset({"benjy"})
    )
    assert isinstance(chosen, Unplaceable)


def test_place_all_allowed_nodes_down_is_unplaceable() -> None:
    """When every allowed node is down the answer is unplaceable, naming the model and nodes."""
    medium = profile(MEDIUM, 18.0, nodes=["beast"])
    snapshot = fleet(beast(up=False), benjy())
    chosen = place(medium, snapshot, Catalogue([medium]), NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)
    assert MEDIUM in chosen.message
    assert "beast" in chosen.message
    assert "up" in chosen.message


def test_place_whole_fleet_down_is_unplaceable() -> None:
    """With every node down there is nowhere to place anything."""
    snapshot = fleet(beast(up=False), benjy(up=False))
    chosen = place(CATALOGUE.models[0], snapshot, CATALOGUE, NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)
    assert SMALL in chosen.message


def test_place_model_larger_than_any_node_is_unplaceable() -> None:
    """A model bigger than every node's GPUs is unplaceable, its size in the message."""
    huge = profile("org/huge", 60.0)
    snapshot = fleet(beast(), benjy())
    chosen = place(huge, snapshot, Catalogue([huge]), NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)
    assert "org/huge" in chosen.message
    assert "60.0 GiB" in chosen.message


def test_place_model_larger_than_one_gpu_without_tensor_parallelism_is_unplaceable() -> None:
    """Without tensor parallelism a model must fit one GPU, not the node's sum."""
    big = profile("org/big", 30.0, nodes=["beast"])
    chosen = place(big, fleet(beast()), Catalogue([big]), NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)


def test_place_needed_bytes_overrides_the_catalogue_figure() -> None:
    """A preflight's ``needed_bytes`` replaces ``memory_gb`` when judging what fits."""
    small = CATALOGUE.models[0]
    snapshot = fleet(benjy(), beast(loaded("a/x", 22), loaded("b/y", 22, devices=[1])))
    # By the catalogue (6.5 GiB) benjy fits as is; by the preflight (14 GiB) only beast can.
    assert place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("benjy")
    chosen = place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru", needed_bytes=14 * GIB)
    assert chosen == Placement("beast", ("a/x",))


def test_place_needed_bytes_without_a_catalogue_figure() -> None:
    """``needed_bytes`` applies when the profile has no ``memory_gb`` at all."""
    unknown = profile("org/unsized")
    snapshot = fleet(benjy(loaded("c/z", 8)))
    chosen = place(unknown, snapshot, Catalogue([unknown]), NO_IN_FLIGHT, "lru", needed_bytes=GIB)
    assert chosen == Placement("benjy", ())
    chosen = place(
        unknown, snapshot, Catalogue([unknown]), NO_IN_FLIGHT, "lru", needed_bytes=6 * GIB
    )
    assert chosen == Placement("benjy", ("c/z",))


def test_place_without_a_memory_figure_never_evicts() -> None:
    """Without any memory figure the node's preflight decides: no evictions are planned."""
    unknown = profile("org/unsized")
    full = fleet(benjy(loaded("c/z", 12, last_used=NOW - 9999)))
    assert place(unknown, full, Catalogue([unknown]), NO_IN_FLIGHT, "lru") == Placement("benjy")


def test_place_without_a_memory_figure_prefers_most_free_memory() -> None:
    """Without a memory figure the node with the most free memory is chosen."""
    unknown = profile("org/unsized")
    snapshot = fleet(benjy(), beast(loaded("a/x", 20)))
    assert place(unknown, snapshot, Catalogue([unknown]), NO_IN_FLIGHT, "lru") == Placement("beast")


def test_place_on_a_cpu_only_node_never_evicts() -> None:
    """A node without GPUs is chosen without evictions whatever it holds."""
    small = profile(SMALL, 6.5, nodes=["ratbox"])
    snapshot = fleet(ratbox(loaded("c/z", 30, devices=[]), loaded("d/w", 30, devices=[])))
    assert place(small, snapshot, Catalogue([small]), NO_IN_FLIGHT, "lru") == Placement("ratbox")


def test_place_prefers_a_gpu_node_with_room_over_a_cpu_node() -> None:
    """A GPU node that fits without evictions beats a CPU-only node (no free GPU memory)."""
    small = CATALOGUE.models[0]
    snapshot = fleet(ratbox(), benjy())
    assert place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("benjy")


# --- place: tensor parallelism ------------------------------------------------------------


def test_place_tensor_parallel_splits_across_gpus() -> None:
    """``tensor_parallel_size`` splits the figure: 40 GiB over two GPUs needs 20 GiB on each."""
    large = CATALOGUE.models[2]
    assert place(large, fleet(beast(), benjy()), CATALOGUE, NO_IN_FLIGHT, "lru") == Placement(
        "beast"
    )
    # Without the split no single 24 GiB GPU holds 40 GiB.
    single = profile(LARGE, 40.0, nodes=["beast"])
    chosen = place(single, fleet(beast()), Catalogue([single]), NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)


def test_place_tensor_parallel_needs_room_on_every_gpu() -> None:
    """A tensor-parallel model evicts what blocks any one of its GPUs."""
    large = CATALOGUE.models[2]
    snapshot = fleet(beast(loaded(MEDIUM, 18, last_used=NOW - 60)))
    chosen = place(large, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru")
    assert chosen == Placement("beast", (MEDIUM,))


def test_place_more_tensor_parallel_ranks_than_gpus_is_unplaceable() -> None:
    """A model split over more GPUs than a node has cannot go there."""
    wide = profile("org/wide", 8.0, engine={"tensor_parallel_size": 4})
    chosen = place(wide, fleet(beast(), benjy()), Catalogue([wide]), NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)


@pytest.mark.parametrize("value", [0, -2, "2", None])
def test_place_ignores_an_invalid_tensor_parallel_size(value: object) -> None:
    """A tensor_parallel_size that is not a positive integer counts as 1."""
    odd = profile("org/odd", 30.0, nodes=["beast"], engine={"tensor_parallel_size": value})
    chosen = place(odd, fleet(beast()), Catalogue([odd]), NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)


def test_place_evicting_a_tensor_parallel_model_frees_every_gpu() -> None:
    """Unloading a model spread over two GPUs frees its share on each of them."""
    medium = CATALOGUE.models[1]
    snapshot = fleet(beast(loaded(LARGE, 40, devices=[0, 1], last_used=NOW - 60)))
    chosen = place(medium, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru")
    assert chosen == Placement("beast", (LARGE,))


# --- place: eviction order and what may be evicted ---------------------------------------------


def _benjy_full() -> Fleet:
    """The benjy node's 12 GiB taken by three idle 4 GiB models used at different times."""
    return fleet(
        benjy(
            loaded("org/a", 4, last_used=NOW - 300),
            loaded("org/b", 4, last_used=NOW - 900),
            loaded("org/c", 4, last_used=NOW - 600),
        )
    )


def test_place_lru_evicts_the_least_recently_used_first() -> None:
    """Under ``lru`` the model used longest ago goes first."""
    need4 = profile("org/new", 4.0)
    chosen = place(need4, _benjy_full(), Catalogue([need4]), NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/b",))


def test_place_evicts_just_enough() -> None:
    """Evictions stop as soon as the model fits, in least-recently-used order."""
    need6 = profile("org/new", 6.5)
    chosen = place(need6, _benjy_full(), Catalogue([need6]), NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/b", "org/c"))
    need12 = profile("org/new", 12.0)
    chosen = place(need12, _benjy_full(), Catalogue([need12]), NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/b", "org/c", "org/a"))


def test_place_lru_falls_back_to_load_time() -> None:
    """A model never used is as old as its load time."""
    need4 = profile("org/new", 4.0)
    snapshot = fleet(
        benjy(
            loaded("org/a", 6, last_used=NOW - 100, loaded_at=NOW - 5000),
            loaded("org/b", 6, last_used=None, loaded_at=NOW - 200),
        )
    )
    chosen = place(need4, snapshot, Catalogue([need4]), NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/b",))


def test_place_priority_evicts_lowest_priority_first() -> None:
    """Under ``priority`` the lowest priority goes first whatever its last use."""
    need6 = profile("org/new", 6.5)
    catalogue = Catalogue(
        [
            need6,
            profile("org/a", 4.0, priority=10),
            profile("org/b", 4.0, priority=90),
            profile("org/c", 4.0, priority=50),
        ]
    )
    chosen = place(need6, _benjy_full(), catalogue, NO_IN_FLIGHT, "priority")
    assert chosen == Placement("benjy", ("org/a", "org/c"))
    # The same fleet under lru ignores priorities.
    chosen = place(need6, _benjy_full(), catalogue, NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/b", "org/c"))


def test_place_priority_breaks_ties_by_lru() -> None:
    """Equal priorities fall back to least recently used first."""
    need4 = profile("org/new", 4.0)
    catalogue = Catalogue(
        [
            need4,
            profile("org/a", 4.0, priority=20),
            profile("org/b", 4.0, priority=80),
            profile("org/c", 4.0, priority=20),
        ]
    )
    # org/a (used 300 s ago) and org/c (600 s ago) share the lowest priority: org/c goes.
    chosen = place(need4, _benjy_full(), catalogue, NO_IN_FLIGHT, "priority")
    assert chosen == Placement("benjy", ("org/c",))


def test_place_priority_of_a_model_outside_the_catalogue_is_the_default() -> None:
    """A loaded model without a profile counts as priority 50."""
    need4 = profile("org/new", 4.0)
    catalogue = Catalogue([need4, profile("org/a", 4.0, priority=60), profile("org/c", 4.0)])
    # org/b has no profile (50) and org/c the default 50; org/b is older.
    chosen = place(need4, _benjy_full(), catalogue, NO_IN_FLIGHT, "priority")
    assert chosen == Placement("benjy", ("org/b",))
    higher = Catalogue([need4, profile("org/b", 4.0, priority=70), profile("org/c", 4.0)])
    chosen = place(need4, _benjy_full(), higher, NO_IN_FLIGHT, "priority")
    assert chosen == Placement("benjy", ("org/c",))


def test_place_never_evicts_a_pinned_model() -> None:
    """A pinned model stays even when it is the least recently used."""
    need4 = profile("org/new", 4.0)
    catalogue = Catalogue([need4, profile("org/b", 4.0, pinned=True)])
    chosen = place(need4, _benjy_full(), catalogue, NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/c",))


def test_place_never_evicts_a_model_with_gateway_requests_in_flight() -> None:
    """A model the gateway has requests in flight to stays."""
    need4 = profile("org/new", 4.0)
    counts = {("benjy", "org/b"): 1}
    chosen = place(need4, _benjy_full(), Catalogue([need4]), counts, "lru")
    assert chosen == Placement("benjy", ("org/c",))


def test_place_never_evicts_a_model_the_neuron_reports_busy() -> None:
    """A model whose neuron reports requests in flight stays, even if the gateway sent none."""
    need4 = profile("org/new", 4.0)
    snapshot = fleet(
        benjy(
            loaded("org/a", 4, last_used=NOW - 300),
            loaded("org/b", 4, last_used=NOW - 900, in_flight=2),
            loaded("org/c", 4, last_used=NOW - 600),
        )
    )
    chosen = place(need4, snapshot, Catalogue([need4]), NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/c",))


def test_place_never_evicts_a_model_that_is_not_ready() -> None:
    """Loading, unloading and failed models are not eviction victims."""
    need4 = profile("org/new", 4.0)
    snapshot = fleet(
        benjy(
            loaded("org/a", 3, state="loading", last_used=None, loaded_at=None),
            loaded("org/b", 3, state="unloading", last_used=NOW - 900),
            loaded("org/c", 3, state="failed", last_used=NOW - 900),
            loaded("org/d", 3, last_used=NOW - 10),
        )
    )
    chosen = place(need4, snapshot, Catalogue([need4]), NO_IN_FLIGHT, "lru")
    # Evicting org/d frees only 3 GiB: nothing else may go, so benjy cannot take it.
    assert isinstance(chosen, Unplaceable)
    need3 = profile("org/new", 3.0)
    chosen = place(need3, snapshot, Catalogue([need3]), NO_IN_FLIGHT, "lru")
    assert chosen == Placement("benjy", ("org/d",))


def test_place_never_evicts_the_model_itself() -> None:
    """Placing a model never plans to unload another copy of that same model."""
    itself = profile("org/self", 6.5, nodes=["benjy"])
    snapshot = fleet(
        benjy(
            loaded("org/self", 8, last_used=NOW - 9000),
            loaded("org/other", 4, last_used=NOW - 10),
        )
    )
    chosen = place(itself, snapshot, Catalogue([itself]), NO_IN_FLIGHT, "lru")
    assert isinstance(chosen, Unplaceable)


def test_place_unplaceable_when_only_protected_models_block() -> None:
    """When pinned and busy models hold the memory the model cannot be placed."""
    need4 = profile("org/new", 4.0)
    catalogue = Catalogue([need4, profile("org/a", 4.0, pinned=True)])
    counts = {("benjy", "org/b"): 1, ("benjy", "org/c"): 3}
    chosen = place(need4, _benjy_full(), catalogue, counts, "lru")
    assert isinstance(chosen, Unplaceable)
    assert "org/new" in chosen.message


# --- evictable and eviction_order directly -------------------------------------------------


def test_evictable_lists_only_ready_idle_unpinned_models() -> None:
    """Only ready, idle, unpinned models other than ``keep`` may be evicted."""
    holder = beast(
        loaded("org/idle"),
        loaded("org/pinned"),
        loaded("org/busy-gateway"),
        loaded("org/busy-neuron", in_flight=1),
        loaded("org/loading", state="loading"),
        loaded("org/keep"),
    )
    catalogue = Catalogue([profile("org/pinned", pinned=True)])
    counts = {("beast", "org/busy-gateway"): 1, ("benjy", "org/idle"): 4}
    found = evictable(holder, catalogue, counts, keep="org/keep")
    assert [i.id for i in found] == ["org/idle"]


def test_eviction_order_by_strategy() -> None:
    """``lru`` sorts by last use alone; ``priority`` by priority, then last use."""
    victims = [
        loaded("org/new-low", last_used=NOW - 10),
        loaded("org/old-high", last_used=NOW - 1000),
        loaded("org/mid-low", last_used=NOW - 500),
    ]
    catalogue = Catalogue(
        [
            profile("org/new-low", priority=5),
            profile("org/old-high", priority=95),
            profile("org/mid-low", priority=5),
        ]
    )
    lru = [i.id for i in eviction_order(victims, catalogue, "lru")]
    assert lru == ["org/old-high", "org/mid-low", "org/new-low"]
    by_priority = [i.id for i in eviction_order(victims, catalogue, "priority")]
    assert by_priority == ["org/mid-low", "org/new-low", "org/old-high"]


# --- feasible_on ----------------------------------------------------------------------------


def test_feasible_on_judges_total_memory_not_free_memory() -> None:
    """A node whose GPUs could hold the model counts even while other models fill them."""
    medium = CATALOGUE.models[1]
    snapshot = fleet(beast(loaded("a/x", 24), loaded("b/y", 24, devices=[1])), benjy())
    assert feasible_on(medium, MEDIUM, snapshot) == ["beast"]


def test_feasible_on_counts_cpu_nodes_and_unsized_models() -> None:
    """A CPU-only node, or any node for a model without a memory figure, is feasible."""
    medium = CATALOGUE.models[1]
    snapshot = fleet(beast(), benjy(), ratbox())
    assert feasible_on(medium, MEDIUM, snapshot) == ["beast", "ratbox"]
    unsized = profile("org/unsized")
    assert feasible_on(unsized, "org/unsized", snapshot) == ["beast", "benjy", "ratbox"]


def test_feasible_on_leaves_out_down_and_disallowed_nodes() -> None:
    """Down nodes and nodes outside the profile's ``nodes`` are not feasible."""
    small = profile(SMALL, 6.5, nodes=["beast", "benjy"])
    snapshot = fleet(beast(up=False), benjy(), ratbox())
    assert feasible_on(small, SMALL, snapshot) == ["benjy"]


def test_feasible_on_tensor_parallel() -> None:
    """A tensor-parallel model is feasible where enough GPUs each hold its share."""
    large = profile(LARGE, 40.0, engine={"tensor_parallel_size": 2})
    assert feasible_on(large, LARGE, fleet(beast(), benjy())) == ["beast"]
    whole = profile(LARGE, 40.0)
    assert feasible_on(whole, LARGE, fleet(beast(), benjy())) == []


def test_feasible_on_includes_where_it_is_loaded() -> None:
    """Nodes where the model is ready count, whatever its profile says; a down one does not."""
    small = profile(SMALL, 6.5, nodes=["beast"])
    snapshot = fleet(beast(), benjy(loaded(SMALL)), ratbox(loaded(SMALL, devices=[]), up=False))
    assert feasible_on(small, SMALL, snapshot) == ["beast", "benjy"]


def test_feasible_on_without_a_profile_is_where_it_is_loaded() -> None:
    """A model outside the catalogue is feasible only where it is ready."""
    snapshot = fleet(beast(), benjy(loaded("org/adhoc")), ratbox())
    assert feasible_on(None, "org/adhoc", snapshot) == ["benjy"]
    assert feasible_on(None, "org/nothing", snapshot) == []


# --- idle_models ------------------------------------------------------------------------------


def test_idle_models_zero_timeout_disables() -> None:
    """A timeout of 0 (or less) never reports anything idle."""
    snapshot = fleet(beast(loaded(SMALL, last_used=NOW - 10**6)))
    assert idle_models(snapshot, CATALOGUE, NO_IN_FLIGHT, NOW, 0) == []
    assert idle_models(snapshot, CATALOGUE, NO_IN_FLIGHT, NOW, -1) == []


def test_idle_models_reports_models_unused_for_the_timeout() -> None:
    """Models unused for at least the timeout are reported; more recent ones are not."""
    snapshot = fleet(
        beast(
            loaded("org/old", last_used=NOW - 900),
            loaded("org/exact", last_used=NOW - 600),
            loaded("org/recent", last_used=NOW - 599),
            loaded("org/never-used-old", last_used=None, loaded_at=NOW - 700),
            loaded("org/never-used-new", last_used=None, loaded_at=NOW - 10),
            loaded("org/no-times", last_used=None, loaded_at=None),
        ),
        benjy(loaded("org/benjy-old", last_used=NOW - 5000)),
    )
    found = idle_models(snapshot, CATALOGUE, NO_IN_FLIGHT, NOW, 600)
    assert found == [
        ("beast", "org/old"),
        ("beast", "org/exact"),
        ("beast", "org/never-used-old"),
        ("benjy", "org/benjy-old"),
    ]


def test_idle_models_never_reports_pinned_busy_or_unready_models() -> None:
    """Pinned, in-flight (either count), non-ready models and down nodes are never idle."""
    old = NOW - 10_000
    snapshot = fleet(
        beast(
            loaded("org/pinned", last_used=old),
            loaded("org/busy-gateway", last_used=old),
            loaded("org/busy-neuron", last_used=old, in_flight=1),
            loaded("org/loading", state="loading", last_used=old),
            loaded("org/idle", last_used=old),
        ),
        benjy(loaded("org/down", last_used=old), up=False),
    )
    catalogue = Catalogue([profile("org/pinned", pinned=True)])
    counts = {("beast", "org/busy-gateway"): 1}
    assert idle_models(snapshot, catalogue, counts, NOW, 60) == [("beast", "org/idle")]


# --- defrag_candidates ----------------------------------------------------------------------


def _fragmented_beast(*extra: ModelInfo) -> NodeState:
    """The beast node with 8 GiB free on GPU 0 and 12 on GPU 1: 20 GiB in all, 12 on one."""
    return beast(
        loaded("org/a", 14, devices=[0]),
        loaded("org/b", 2, devices=[0]),
        loaded("org/c", 12, devices=[1]),
        *extra,
    )


def test_defrag_moves_the_smallest_idle_model_on_a_fragmented_node() -> None:
    """A 1-GPU model that fits the node's free sum but no single GPU moves the smallest idle one."""
    # MEDIUM (18 GiB) fits 8 + 12 GiB free in total but neither GPU alone.
    snapshot = fleet(_fragmented_beast(), benjy())
    assert defrag_candidates(snapshot, CATALOGUE, NO_IN_FLIGHT) == [("beast", "org/b")]


def test_defrag_skips_pinned_and_busy_models() -> None:
    """The smallest model is skipped when pinned or in flight; the next smallest moves."""
    snapshot = fleet(_fragmented_beast())
    pinned = Catalogue([*CATALOGUE.models, profile("org/b", pinned=True)])
    assert defrag_candidates(snapshot, pinned, NO_IN_FLIGHT) == [("beast", "org/c")]
    busy = {("beast", "org/b"): 1}
    assert defrag_candidates(snapshot, CATALOGUE, busy) == [("beast", "org/c")]


def test_defrag_nothing_when_a_single_gpu_has_room() -> None:
    """A node where some GPU holds every catalogue model's share is not fragmented."""
    snapshot = fleet(beast(loaded("org/a", 20, devices=[0])))
    assert defrag_candidates(snapshot, CATALOGUE, NO_IN_FLIGHT) == []


def test_defrag_nothing_when_the_free_sum_is_too_small() -> None:
    """A model that does not fit even the node's total free memory is not a defrag case."""
    snapshot = fleet(beast(loaded("org/a", 22, devices=[0]), loaded("org/c", 22, devices=[1])))
    assert defrag_candidates(snapshot, CATALOGUE, NO_IN_FLIGHT) == []


def test_defrag_ignores_single_gpu_nodes_and_down_nodes() -> None:
    """Nodes with fewer than two GPUs, and down nodes, are never defragmented."""
    one_gpu = Catalogue([profile("org/ten", 10.0)])
    # Each node has 8 GiB free on every GPU it has: 10 GiB fits only beast's 16 GiB sum.
    fragmented = [loaded("org/a", 16), loaded("org/c", 16, devices=[1])]
    others = (benjy(loaded("org/x", 4)), ratbox(loaded("org/y", 4, devices=[])))
    snapshot = fleet(*others, beast(*fragmented, up=False))
    assert defrag_candidates(snapshot, one_gpu, NO_IN_FLIGHT) == []
    snapshot = fleet(*others, beast(*fragmented))
    assert defrag_candidates(snapshot, one_gpu, NO_IN_FLIGHT) == [("beast", "org/a")]


def test_defrag_ignores_models_it_cannot_help() -> None:
    """Loaded, tensor-parallel, unsized or disallowed catalogue models do not trigger a move."""
    snapshot = fleet(_fragmented_beast(loaded("org/medium-here", 0.5, devices=[1])))
    # 8 + 11.5 GiB free: each profile below would otherwise be stuck.
    cases = [
        Catalogue([profile("org/medium-here", 18.0)]),
        Catalogue([profile("org/tp", 18.0, engine={"tensor_parallel_size": 2})]),
        Catalogue([profile("org/unsized")]),
        Catalogue([profile("org/elsewhere", 18.0, nodes=["benjy"])]),
    ]
    for catalogue in cases:
        assert defrag_candidates(snapshot, catalogue, NO_IN_FLIGHT) == []
    stuck = Catalogue([profile("org/stuck", 18.0)])
    assert defrag_candidates(snapshot, stuck, NO_IN_FLIGHT) == [("beast", "org/medium-here")]


def test_defrag_nothing_without_an_idle_model() -> None:
    """A fragmented node whose models are all pinned or busy has nothing to move."""
    snapshot = fleet(_fragmented_beast())
    counts = {("beast", "org/a"): 1, ("beast", "org/b"): 1, ("beast", "org/c"): 1}
    assert defrag_candidates(snapshot, CATALOGUE, counts) == []


def test_defrag_ignores_a_model_no_single_gpu_could_ever_hold() -> None:
    """A 1-GPU model larger than every GPU's total is not a reason to move anything."""
    # 30 GiB fits beast's 30 GiB free in total, but no 24 GiB GPU could hold it even empty:
    # moving models off beast can never make it loadable there.
    too_big = Catalogue([profile("org/thirty", 30.0, nodes=["beast"])])
    snapshot = fleet(beast(loaded("org/a", 16, devices=[0]), loaded("org/b", 2, devices=[1])))
    assert defrag_candidates(snapshot, too_big, NO_IN_FLIGHT) == []


# --- after a failed load -----------------------------------------------------------------

MEDIUM_PINNED = "org/pinned"
CPU_FULL = ratbox(
    loaded("org/old", devices=(), last_used=NOW - 50),
    loaded("org/older", devices=(), last_used=NOW - 500),
)


@pytest.mark.parametrize(
    ("failure", "snapshot", "planned", "expected"),
    [
        pytest.param(
            LoadFailure("beast", "insufficient_memory", "too big", needed_bytes=20 * GIB),
            fleet(beast()),
            None,
            PlanAgain(20 * GIB),
            id="gpu node: plan with the neuron's figure",
        ),
        pytest.param(
            LoadFailure("beast", "insufficient_memory", "too big", needed_bytes=20 * GIB),
            fleet(beast()),
            20 * GIB,
            Exclude("beast"),
            id="gpu node: the same figure again leaves the node out",
        ),
        pytest.param(
            LoadFailure("beast", "insufficient_memory", "too big"),
            fleet(beast()),
            None,
            Exclude("beast"),
            id="gpu node: no figure leaves the node out",
        ),
        pytest.param(
            LoadFailure("ratbox", "insufficient_memory", "too big", needed_bytes=GIB),
            fleet(CPU_FULL),
            None,
            EvictOne("ratbox", "org/older"),
            id="cpu node: free the least recently used",
        ),
        pytest.param(
            LoadFailure("ratbox", "insufficient_memory", "too big"),
            fleet(ratbox(loaded("org/old", devices=(), in_flight=1))),
            None,
            WaitForRoom("ratbox", ("org/old",)),
            id="cpu node: everything busy, wait for one to drain",
        ),
        pytest.param(
            LoadFailure("ratbox", "insufficient_memory", "too big"),
            fleet(ratbox(loaded(MEDIUM_PINNED, devices=()))),
            None,
            Exclude("ratbox"),
            id="cpu node: nothing may go",
        ),
        pytest.param(
            LoadFailure("beast", "model_not_found", "no such repo"),
            fleet(beast()),
            None,
            GiveUp(f"model {SMALL!r} cannot be loaded: no such repo"),
            id="a configuration problem gives up",
        ),
        pytest.param(
            LoadFailure("beast", "load_failed", "engine died"),
            fleet(beast()),
            None,
            Exclude("beast"),
            id="an engine failure tries elsewhere",
        ),
        pytest.param(
            LoadFailure("beast", None, "TimeoutError"),
            fleet(beast(up=False)),
            None,
            Exclude("beast"),
            id="an unreachable node is left out",
        ),
    ],
)
def test_after_failed_load(
    failure: LoadFailure, snapshot: Fleet, planned: int | None, expected: Retry
) -> None:
    """What a cold load does after each kind of failure."""
    catalogue = Catalogue([*CATALOGUE.models, profile(MEDIUM_PINNED, 2.0, pinned=True)])
    decision = after_failed_load(
        CATALOGUE.models[0], failure, snapshot, catalogue, NO_IN_FLIGHT, "lru", needed_bytes=planned
    )
    assert decision == expected


@pytest.mark.parametrize(
    ("gpus", "needed", "tp", "holds"),
    [
        ((24,), 24, 1, True),
        ((24,), 25, 1, False),
        ((12, 24), 20, 1, True),
        ((12, 24), 30, 2, False),  # 15 each: the 12 GiB GPU cannot take its half
        ((16, 24, 16), 30, 2, True),
        ((24,), 10, 2, False),  # two ranks, one GPU
        ((), 1, 1, False),
    ],
)
def test_could_hold_is_tensor_parallel_fit_on_empty_gpus(
    gpus: tuple[float, ...], needed: float, tp: int, holds: bool
) -> None:
    """A node holds a model if ``tp`` of its GPUs each take an even share of it."""
    assert node("n", gpus).could_hold(int(needed * GIB), tp) is holds


def test_a_node_finds_its_models_by_id_first_entry_winning() -> None:
    """``model`` answers from an index built once per snapshot, as the scan did."""
    first, second = loaded(SMALL, 1), ModelInfo(id=SMALL, state="failed")
    polled = node("n", (24,), [first, second])
    assert polled.model(SMALL) is first
    assert polled.model(MEDIUM) is None


# --- sleeping models ---------------------------------------------------------------------


def test_the_fleet_sees_where_a_model_sleeps_and_what_sleepers_hold() -> None:
    """Sleepers are neither ready nor loading; their host memory adds up per node."""
    snapshot = fleet(beast(asleep(SMALL), asleep(MEDIUM, 10)), benjy(asleep(SMALL), up=False))
    assert snapshot.sleeping(SMALL) == ["beast"]
    assert (snapshot.locations(SMALL), snapshot.loading(SMALL)) == ([], [])
    assert snapshot.nodes["beast"].sleeping_bytes == int(6.5 * 0.8 * GIB) + int(8 * GIB)
    assert snapshot.nodes["benjy"].asleep(SMALL) is None  # down: nothing to wake there
    assert snapshot.loaded_ids() == []


def test_route_a_sleeping_catalogue_model_is_a_cold_load_that_placement_wakes() -> None:
    """A model asleep is not served (not ready) but placed: waking it is the placement's call."""
    snapshot = fleet(beast(asleep(SMALL)), benjy())
    assert route(SMALL, CATALOGUE, snapshot, NO_IN_FLIGHT) == ColdLoad(CATALOGUE.models[0])


def test_route_a_sleeper_outside_the_catalogue_is_woken_only_where_it_sleeps() -> None:
    """Its own task and source, placed only on the nodes where it sleeps (up ones)."""
    sleeper = msgspec.structs.replace(asleep("org/adhoc"), task="embed", source="local")
    snapshot = fleet(beast(sleeper), benjy())
    decision = route("org/adhoc", CATALOGUE, snapshot, NO_IN_FLIGHT)
    assert decision == ColdLoad(
        ModelProfile(id="org/adhoc", source="local", nodes=["beast"], task="embed")
    )
    gone = fleet(beast(sleeper, up=False), benjy())
    assert isinstance(route("org/adhoc", CATALOGUE, gone, NO_IN_FLIGHT), NoNode)


def test_place_wakes_a_sleeper_rather_than_load_it_elsewhere() -> None:
    """Waking where it sleeps (one eviction) beats a cold load on a node with room and none."""
    small = CATALOGUE.models[0]
    snapshot = fleet(
        beast(
            asleep(SMALL, devices=[0]),
            loaded("a/x", 20, last_used=NOW - 100),
            loaded("b/y", 20, devices=[1]),
        ),
        benjy(),
    )
    placement = place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru")
    assert placement == Placement("beast", ("a/x",), wake=True)
    without = fleet(
        beast(loaded("a/x", 20, last_used=NOW - 100), loaded("b/y", 20, devices=[1])), benjy()
    )
    assert place(small, without, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("benjy")


def test_place_a_wake_needs_room_on_the_sleepers_own_gpu() -> None:
    """A sleeper on GPU 1 wakes there: GPU 0's free memory does not count, GPU 1's model goes."""
    small = CATALOGUE.models[0]
    snapshot = fleet(
        beast(
            asleep(SMALL, devices=[1]),
            loaded("a/x", 4, last_used=NOW - 500),
            loaded("b/y", 20, devices=[1], last_used=NOW - 10),
        )
    )
    assert place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement(
        "beast", ("b/y",), wake=True
    )


def test_place_a_wake_without_a_catalogue_figure_uses_the_sleepers_own() -> None:
    """The neuron knows what its sleeper takes back: no memory_gb is needed to place a wake."""
    adhoc = ModelProfile(id="org/adhoc")
    snapshot = fleet(beast(asleep("org/adhoc", 30, devices=[0, 1])), benjy())
    assert place(adhoc, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("beast", wake=True)


def test_place_a_wake_that_keeps_requests_waiting_loses_to_a_cold_load() -> None:
    """Requests held for a drain cost more than a cold load on a free node."""
    small = CATALOGUE.models[0]
    snapshot = fleet(
        beast(
            asleep(SMALL, devices=[0]),
            loaded("a/x", 20, in_flight=2),
            loaded("b/y", 20, devices=[1], in_flight=1),
        ),
        benjy(),
    )
    assert place(small, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru", wait_for_busy=True) == (
        Placement("benjy")
    )


def test_sleepers_are_never_evicted_to_make_room() -> None:
    """A sleeper holds no device memory: evicting it would free nothing, so it is not a victim."""
    medium = CATALOGUE.models[1]
    snapshot = fleet(beast(asleep(SMALL, 6.5), loaded("a/x", 20, last_used=NOW - 5)))
    assert [i.id for i in evictable(snapshot.nodes["beast"], CATALOGUE, NO_IN_FLIGHT)] == ["a/x"]
    assert place(medium, snapshot, CATALOGUE, NO_IN_FLIGHT, "lru") == Placement("beast")
