"""The swap policy and the load backoff as tables; the router's side of them."""

from __future__ import annotations

import pytest

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.neuron_api import Device, ModelInfo
from cortex_core.units import GIB
from cortex_gateway.fleet import Fleet, NodeState
from cortex_gateway.placement import Placement, Unplaceable, place
from cortex_gateway.router import Hold, Serve, route
from cortex_gateway.scheduling import (
    Backoff,
    Blocked,
    Policy,
    backoff_s,
    closed_gates,
    in_backoff,
)

NOW = 1000.0
B_ON_GPU = Blocked("b", "gpu", ("a",), since=NOW - 5)
C_ON_GPU = Blocked("c", "gpu", ("a", "x"), since=NOW - 40)
D_ON_CPU = Blocked("d", "cpu", ("y",), since=NOW - 31)


@pytest.mark.parametrize(
    ("blocked", "policy", "closed"),
    [
        pytest.param([], "grouped", set(), id="nothing waits: every gate open"),
        pytest.param([], "fifo", set(), id="nothing waits, fifo: every gate open"),
        pytest.param(
            [B_ON_GPU], "grouped", set(), id="grouped: the loaded model goes on for a while"
        ),
        pytest.param([B_ON_GPU], "fifo", {("gpu", "a")}, id="fifo: later requests queue behind"),
        pytest.param(
            [C_ON_GPU],
            "grouped",
            {("gpu", "a"), ("gpu", "x")},
            id="grouped: waited past the cap, every victim stops taking requests",
        ),
        pytest.param(
            [B_ON_GPU, C_ON_GPU, D_ON_CPU],
            "grouped",
            {("gpu", "a"), ("gpu", "x"), ("cpu", "y")},
            id="grouped: each waiter judged on its own wait",
        ),
        pytest.param(
            [Blocked("b", "gpu", ("a",), since=NOW - 30)],
            "grouped",
            {("gpu", "a")},
            id="grouped: exactly at the cap closes",
        ),
    ],
)
def test_closed_gates(blocked: list[Blocked], policy: Policy, closed: set[tuple[str, str]]) -> None:
    """Which (node, model) pairs stop admitting requests, by policy, with a 30 s cap."""
    assert closed_gates(blocked, NOW, policy, 30.0) == closed


def test_a_zero_cap_makes_grouped_swap_at_once() -> None:
    """max_swap_wait_s = 0: grouped holds nothing back for the loaded model's sake."""
    assert closed_gates([B_ON_GPU], NOW, "grouped", 0.0) == {("gpu", "a")}


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 160.0), (6, 300.0), (40, 300.0)],
)
def test_backoff_doubles_from_10_s_to_5_min(failures: int, seconds: float) -> None:
    """10 s after the first failure, doubling, never more than 5 minutes."""
    assert backoff_s(failures) == seconds


def test_in_backoff_lists_the_nodes_still_cooling_for_that_model() -> None:
    """Only unexpired backoffs of the model asked about count, with the seconds left."""
    backoffs = {
        ("gpu", "a"): Backoff(1, NOW + 10),
        ("cpu", "a"): Backoff(3, NOW - 1),
        ("gpu", "b"): Backoff(1, NOW + 99),
    }
    assert in_backoff(backoffs, "a", NOW) == {"gpu": 10.0}
    assert in_backoff(backoffs, "c", NOW) == {}


# --- the router's side -------------------------------------------------------------------


def gpu_node(*models: ModelInfo) -> NodeState:
    """One 24 GiB GPU holding ``models``."""
    used = sum(m.memory_bytes for m in models)
    device = Device(index=0, memory_total=24 * GIB, memory_used=used, memory_free=24 * GIB - used)
    return NodeState("gpu", "http://gpu:1", up=True, devices=(device,), models=models)


def ready(model_id: str, gib: float) -> ModelInfo:
    """A ready model on GPU 0."""
    return ModelInfo(
        id=model_id, state="ready", devices=[0], memory_bytes=int(gib * GIB), last_used=NOW
    )


CATALOGUE = Catalogue(
    [
        ModelProfile(id="m/a", memory_gb=16),
        ModelProfile(id="m/b", memory_gb=16),
        ModelProfile(id="m/p", memory_gb=4, pinned=True),
    ]
)


def test_route_holds_a_request_at_a_closed_gate() -> None:
    """A ready model whose gate is closed holds the request; an open one serves it."""
    fleet = Fleet({"gpu": gpu_node(ready("m/a", 16))})
    assert route("m/a", CATALOGUE, fleet, {}) == Serve("gpu")
    assert route("m/a", CATALOGUE, fleet, {}, gated=frozenset({("gpu", "m/a")})) == Hold("gpu")


def test_place_waits_for_busy_models_only_when_asked() -> None:
    """A busy model blocks the placement; with wait_for_busy it becomes what the load waits for."""
    fleet = Fleet({"gpu": gpu_node(ready("m/a", 16))})
    busy = {("gpu", "m/a"): 2}
    profile = CATALOGUE.profile("m/b")
    assert profile is not None
    assert isinstance(place(profile, fleet, CATALOGUE, busy, "lru"), Unplaceable)
    assert place(profile, fleet, CATALOGUE, busy, "lru", wait_for_busy=True) == Placement(
        "gpu", evict=("m/a",), waits_for=("m/a",)
    )
    assert place(profile, fleet, CATALOGUE, {}, "lru", wait_for_busy=True) == Placement(
        "gpu", evict=("m/a",)
    )


def test_place_prefers_idle_victims_and_never_waits_on_pinned_ones() -> None:
    """Idle models go first; a pinned model is never waited for."""
    fleet = Fleet({"gpu": gpu_node(ready("m/p", 4), ready("m/a", 8), ready("m/x", 8))})
    busy = {("gpu", "m/a"): 1}
    profile = ModelProfile(id="m/b", memory_gb=14)
    decision = place(profile, fleet, CATALOGUE, busy, "lru", wait_for_busy=True)
    assert decision == Placement("gpu", evict=("m/x", "m/a"), waits_for=("m/a",))
    big = ModelProfile(id="m/b", memory_gb=22)
    assert isinstance(place(big, fleet, CATALOGUE, busy, "lru", wait_for_busy=True), Unplaceable)
