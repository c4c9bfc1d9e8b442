"""``GET /v1/models``: catalogue models, loaded extras and alias entries over a fleet snapshot."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.neuron_api import Device, ModelInfo, ModelState
from cortex_core.units import GIB
from cortex_core.wire import encode
from cortex_gateway.catalogue_view import FleetModel, find_model, list_models
from cortex_gateway.fleet import Fleet, NodeState
from cortex_gateway.scheduling import Backoff

NOW = 1_750_000_000.0

SMALL = "Qwen/Qwen3-1.7B"
MEDIUM = "Qwen/Qwen3-8B"
LARGE = "meta-llama/Llama-3.3-70B-Instruct"
EXTRA = "unsloth/gemma-3-4b-it"


def loaded(
    model_id: str,
    gib: float = 4.0,
    *,
    state: ModelState = "ready",
    devices: Sequence[int] = (0,),
    loaded_at: float | None = NOW - 3600,
) -> ModelInfo:
    """A model as a neuron's ``GET /models`` reports it."""
    return ModelInfo(
        id=model_id,
        state=state,
        devices=list(devices),
        memory_bytes=int(gib * GIB),
        loaded_at=loaded_at,
        last_used=None,
    )


def node(
    name: str, gpus_gib: Sequence[float], models: Iterable[ModelInfo] = (), *, up: bool = True
) -> NodeState:
    """A polled neuron with GPUs of the given sizes (nothing counted as used)."""
    devices = tuple(
        Device(index=i, memory_total=int(g * GIB), memory_free=int(g * GIB))
        for i, g in enumerate(gpus_gib)
    )
    return NodeState(
        name=name,
        endpoint=f"http://{name}.internal:13131",
        up=up,
        devices=devices,
        models=tuple(models),
        error=None if up else "connection refused",
    )


CATALOGUE = Catalogue(
    [
        ModelProfile(id=SMALL, memory_gb=6.5, pinned=True),
        ModelProfile(id=MEDIUM, memory_gb=18.0, source="helexa"),
        ModelProfile(id=LARGE, memory_gb=40.0, nodes=["beast"], engine={"tensor_parallel_size": 2}),
    ],
    {"helexa/small": SMALL, "helexa/large": LARGE},
)


def snapshot() -> Fleet:
    """A fleet: beast (2 x 24 GiB) serves SMALL and an extra, benjy SMALL; the CPU node is down."""
    beast = node(
        "beast",
        (24, 24),
        [
            loaded(SMALL, loaded_at=NOW - 500),
            loaded(EXTRA, 8, devices=[1]),
            loaded("org/still-loading", state="loading", loaded_at=None),
            loaded("org/broken", state="failed", loaded_at=None),
        ],
    )
    benjy = node("benjy", (12,), [loaded(SMALL, loaded_at=NOW - 900)])
    ratbox = node("ratbox", (), [loaded("org/down-only", devices=[])], up=False)
    return Fleet({n.name: n for n in (beast, benjy, ratbox)})


def by_id(entries: Iterable[FleetModel]) -> dict[str, FleetModel]:
    """Entries keyed by id."""
    return {e.id: e for e in entries}


def test_list_models_order_catalogue_then_loaded_then_aliases() -> None:
    """Catalogue models come first, then models loaded outside it, then one entry per alias."""
    listing = list_models(CATALOGUE, snapshot())
    assert listing.object == "list"
    assert [m.id for m in listing.data] == [
        SMALL,
        MEDIUM,
        LARGE,
        EXTRA,
        "helexa/small",
        "helexa/large",
    ]


def test_list_models_leaves_out_models_not_ready_on_an_up_node() -> None:
    """Models only loading, failed or on a down node are not listed unless in the catalogue."""
    ids = {m.id for m in list_models(CATALOGUE, snapshot()).data}
    assert "org/still-loading" not in ids
    assert "org/broken" not in ids
    assert "org/down-only" not in ids


def test_list_models_loaded_catalogue_model() -> None:
    """A catalogue model ready on two nodes lists both, with its earliest load time."""
    small = by_id(list_models(CATALOGUE, snapshot()).data)[SMALL]
    assert small.loaded is True
    assert small.locations == ["beast", "benjy"]
    assert small.feasible_on == ["beast", "benjy"]
    assert small.alias_of is None
    assert small.pinned is True
    assert small.object == "model"
    assert small.created == int(NOW - 900)


def test_list_models_catalogue_model_loaded_nowhere() -> None:
    """A catalogue model loaded nowhere lists where it could go by total device memory."""
    entries = by_id(list_models(CATALOGUE, snapshot()).data)
    medium = entries[MEDIUM]
    assert medium.loaded is False
    assert medium.locations == []
    assert medium.feasible_on == ["beast"]
    assert medium.created == 0
    assert medium.pinned is False
    large = entries[LARGE]
    assert large.feasible_on == ["beast"]


def test_list_models_model_loaded_outside_the_catalogue() -> None:
    """A model loaded outside the catalogue is listed where it is ready and feasible only there."""
    extra = by_id(list_models(CATALOGUE, snapshot()).data)[EXTRA]
    assert extra.loaded is True
    assert extra.locations == ["beast"]
    assert extra.feasible_on == ["beast"]
    assert extra.alias_of is None
    assert extra.pinned is False


def test_list_models_alias_mirrors_its_target() -> None:
    """An alias entry carries ``alias_of`` and its target's loaded, locations and feasible_on."""
    entries = by_id(list_models(CATALOGUE, snapshot()).data)
    for alias, target in CATALOGUE.aliases.items():
        entry, mirrored = entries[alias], entries[target]
        assert entry.alias_of == target
        assert entry.loaded == mirrored.loaded
        assert entry.locations == mirrored.locations
        assert entry.feasible_on == mirrored.feasible_on
        assert entry.pinned == mirrored.pinned
        assert entry.created == mirrored.created
    assert entries["helexa/small"].locations == ["beast", "benjy"]
    assert entries["helexa/large"].loaded is False


def test_list_models_alias_lists_are_copies() -> None:
    """Changing an alias entry's lists leaves its target's entry as it was."""
    entries = by_id(list_models(CATALOGUE, snapshot()).data)
    entries["helexa/small"].locations.append("elsewhere")
    assert entries[SMALL].locations == ["beast", "benjy"]


def test_list_models_down_node_is_neither_location_nor_feasible() -> None:
    """A model ready only on a down node is neither loaded there nor feasible there."""
    beast = node("beast", (24, 24), [loaded(SMALL)], up=False)
    benjy = node("benjy", (12,))
    fleet = Fleet({"beast": beast, "benjy": benjy})
    small = by_id(list_models(CATALOGUE, fleet).data)[SMALL]
    assert small.loaded is False
    assert small.locations == []
    assert small.feasible_on == ["benjy"]


def test_list_models_empty_catalogue_and_fleet() -> None:
    """With nothing configured or loaded the list is empty."""
    listing = list_models(Catalogue(), Fleet())
    assert listing.data == []


def test_list_models_wire_shape() -> None:
    """The list encodes as an OpenAI list of model objects with the fleet fields."""
    body = json.loads(encode(list_models(CATALOGUE, snapshot())))
    assert body["object"] == "list"
    alias = next(m for m in body["data"] if m["id"] == "helexa/small")
    assert alias == {
        "id": "helexa/small",
        "object": "model",
        "created": int(NOW - 900),
        "owned_by": "cortex",
        "loaded": True,
        "locations": ["beast", "benjy"],
        "feasible_on": ["beast", "benjy"],
        "alias_of": SMALL,
        "pinned": True,
        "backoff": [],
        "task": "generate",
    }


def test_find_model_by_id_alias_and_extra() -> None:
    """``find_model`` returns the same entry the list shows, for ids, aliases and extras."""
    fleet = snapshot()
    listed = by_id(list_models(CATALOGUE, fleet).data)
    for model_id in (SMALL, MEDIUM, EXTRA, "helexa/small", "helexa/large"):
        assert find_model(model_id, CATALOGUE, fleet) == listed[model_id]
    alias = find_model("helexa/large", CATALOGUE, fleet)
    assert alias is not None
    assert alias.alias_of == LARGE


def test_find_model_unknown_is_none() -> None:
    """An id that is neither listed nor an alias is not found."""
    fleet = snapshot()
    assert find_model("org/nothing", CATALOGUE, fleet) is None
    assert find_model("org/still-loading", CATALOGUE, fleet) is None
    assert find_model("org/down-only", CATALOGUE, fleet) is None


def test_grafana_dashboard_uses_only_documented_metrics() -> None:
    """Every metric the Grafana dashboard queries is one docs/metrics.md documents."""
    repo = Path(__file__).parents[3]
    dashboard = json.loads((repo / "configs" / "grafana" / "cortex.json").read_text())
    documented = (repo / "docs" / "metrics.md").read_text()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b((?:cortex|neuron)_[a-z_]+)", e)}
    assert names
    for name in names:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert f"`{base}`" in documented or base in documented, name


def test_backoffs_show_on_their_model_and_its_aliases_while_they_last() -> None:
    """A model's unexpired backoffs are listed on it and on the aliases that point at it."""
    backoffs = {
        ("benjy", SMALL): Backoff(2, NOW + 15),
        ("beast", SMALL): Backoff(1, NOW - 1),
        ("beast", MEDIUM): Backoff(3, NOW + 60),
    }
    listed = by_id(list_models(CATALOGUE, snapshot(), backoffs, NOW).data)
    assert [(b.node, b.failures, b.until) for b in listed[SMALL].backoff] == [
        ("benjy", 2, NOW + 15)
    ]
    assert listed["helexa/small"].backoff == listed[SMALL].backoff
    assert [b.node for b in listed[MEDIUM].backoff] == ["beast"]
    assert listed[EXTRA].backoff == []
