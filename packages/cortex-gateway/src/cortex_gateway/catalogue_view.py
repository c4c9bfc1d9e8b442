"""``GET /v1/models``: the catalogue merged with what the fleet has loaded."""

from __future__ import annotations

from collections.abc import Mapping

from msgspec import Struct, field

from cortex_core.catalogue import Catalogue
from cortex_gateway.fleet import Fleet
from cortex_gateway.placement import feasible_on
from cortex_gateway.scheduling import Backoff

__all__ = [
    "BackoffEntry",
    "FleetModel",
    "FleetModelList",
    "find_model",
    "list_models",
    "model_task",
]


class BackoffEntry(Struct, kw_only=True):
    """A node where the model's loads failed recently: not tried there again until ``until``."""

    node: str
    failures: int
    until: float
    """Unix seconds."""


class FleetModel(Struct, kw_only=True):
    """An OpenAI model object with where the model is and where it could go."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "cortex"
    loaded: bool = False
    locations: list[str] = field(default_factory=list)
    feasible_on: list[str] = field(default_factory=list)
    alias_of: str | None = None
    pinned: bool = False
    backoff: list[BackoffEntry] = field(default_factory=list)
    task: str = "generate"
    """``generate`` (chat, completions, responses) or ``embed`` (embeddings, rerank, score)."""


class FleetModelList(Struct, kw_only=True):
    """The OpenAI list envelope."""

    data: list[FleetModel]
    object: str = "list"


Backoffs = Mapping[tuple[str, str], Backoff]


def model_task(model_id: str, catalogue: Catalogue, fleet: Fleet) -> str:
    """What ``model_id`` is for: its catalogue entry's task, else what a neuron serving it says."""
    profile = catalogue.profile(model_id)
    if profile is not None:
        return profile.task
    for node in fleet.nodes.values():
        if (info := node.model(model_id)) is not None:
            return info.task
    return "generate"


def _entry(
    model_id: str, catalogue: Catalogue, fleet: Fleet, backoffs: Backoffs, now: float
) -> FleetModel:
    profile = catalogue.profile(model_id)
    locations = fleet.locations(model_id)
    loaded_at = [
        int(info.loaded_at)
        for name in locations
        if (info := fleet.nodes[name].model(model_id)) is not None and info.loaded_at
    ]
    return FleetModel(
        id=model_id,
        created=min(loaded_at, default=0),
        loaded=bool(locations),
        locations=locations,
        feasible_on=feasible_on(profile, model_id, fleet),
        pinned=bool(profile and profile.pinned),
        task=model_task(model_id, catalogue, fleet),
        backoff=[
            BackoffEntry(node=node, failures=state.failures, until=state.until)
            for (node, model), state in backoffs.items()
            if model == model_id and state.until > now
        ],
    )


def list_models(
    catalogue: Catalogue, fleet: Fleet, backoffs: Backoffs | None = None, now: float = 0.0
) -> FleetModelList:
    """Every catalogue model, every model loaded anywhere, then one entry per alias.

    ``backoffs`` (failed loads still pausing at ``now``, Unix seconds) show on their models.
    """
    ids = [p.id for p in catalogue.models]
    ids += [m for m in fleet.loaded_ids() if m not in ids]
    backoffs = backoffs or {}
    entries = {model_id: _entry(model_id, catalogue, fleet, backoffs, now) for model_id in ids}
    data = list(entries.values())
    for alias, target in catalogue.aliases.items():
        mirror = entries[target]
        data.append(
            FleetModel(
                id=alias,
                created=mirror.created,
                loaded=mirror.loaded,
                locations=list(mirror.locations),
                feasible_on=list(mirror.feasible_on),
                alias_of=target,
                pinned=mirror.pinned,
                backoff=list(mirror.backoff),
                task=mirror.task,
            )
        )
    return FleetModelList(data=data)


def find_model(
    model_id: str,
    catalogue: Catalogue,
    fleet: Fleet,
    backoffs: Backoffs | None = None,
    now: float = 0.0,
) -> FleetModel | None:
    """The entry ``GET /v1/models/{id}`` shows, or ``None``."""
    listing = list_models(catalogue, fleet, backoffs, now)
    return next((m for m in listing.data if m.id == model_id), None)
