"""What the dashboard (``/ui``) shows, as plain data: one snapshot of the fleet, pure.

:func:`snapshot` turns the gateway's :class:`~cortex_gateway.fleet.FleetStatus`
(nodes, devices, models, loads, requests in flight, backoffs) into the JSON
the page renders: one card per neuron with a memory bar per device, one row
per catalogue model and alias.
Texts that came from the fleet (model ids, errors) stay texts: the page
never inserts them as HTML; here they are only made printable and bounded.
Keys that are not admin keys see no node's address: not as its endpoint,
nor inside an error text (:func:`without_addresses`).
"""

from __future__ import annotations

import re
import time
from collections import Counter

import msgspec
from msgspec import Struct, field

from cortex_core.neuron_api import ModelInfo
from cortex_core.text import printable
from cortex_gateway.activity import Event
from cortex_gateway.catalogue_view import list_models
from cortex_gateway.fleet import FleetStatus, NodeState

__all__ = [
    "DeviceBar",
    "ModelRow",
    "NodeCard",
    "Placement",
    "Segment",
    "Snapshot",
    "redacted",
    "snapshot",
    "stamped",
    "without_addresses",
]

ERROR_CHARS = 300
"""The longest error text shown (the rest is cut)."""
HOLDING = ("ready", "loading", "unloading")
"""The states in which a model holds (or is taking) device memory (a CPU node's: host memory)."""
SLEEPING = "sleeping"
"""A model asleep holds host memory only: drawn beside the GPUs, never in their bars."""
UNAVAILABLE = "unavailable"
"""A model's state on a node that is down."""


class Segment(Struct, kw_only=True):
    """A part of a device's memory.

    A model's (``ready``/``unloading``), a load's reservation (``loading``), a
    sleeping model's weights in host memory (``sleeping``), or memory in use by
    nothing the neuron reports (``other``).
    """

    kind: str
    bytes: int
    model: str | None = None


class DeviceBar(Struct, kw_only=True):
    """One GPU: its memory, in the order the bar draws it (free is what is left)."""

    index: int
    name: str
    total: int
    used: int
    segments: list[Segment] = field(default_factory=list)
    utilization: float = 0.0


class NodeCard(Struct, kw_only=True):
    """One neuron as the fleet card shows it."""

    name: str
    up: bool
    since: float | None = None
    """When it last went up or down (Unix seconds), as this gateway saw it."""
    version: str = ""
    endpoint: str | None = None
    """Admin keys only: where the neuron is."""
    error: str | None = None
    cpu_only: bool = False
    devices: list[DeviceBar] = field(default_factory=list)
    host_models: list[Segment] = field(default_factory=list)
    """What models hold in host memory: every model on a CPU-only node; sleepers anywhere."""


class Placement(Struct, kw_only=True):
    """A model on one node."""

    node: str
    state: str
    """What the node said of it, or ``unavailable`` while the node is down."""
    phase: str | None = None
    since: float | None = None
    """Ready: when it was loaded; loading: when the gateway asked (if it did)."""
    error: str | None = None
    in_flight: int = 0
    last_used: float | None = None
    memory_bytes: int = 0
    host_memory_bytes: int = 0
    """While ``sleeping``: the host memory its weights hold."""


class ModelRow(Struct, kw_only=True):
    """A catalogue model, a model loaded outside the catalogue, or an alias."""

    id: str
    alias_of: str | None = None
    catalogued: bool = False
    pinned: bool = False
    priority: int | None = None
    memory_bytes: int | None = None
    feasible_on: list[str] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    in_flight: int = 0
    waiting: int = 0
    last_used: float | None = None
    backoff: list[str] = field(default_factory=list)
    """Nodes where its loads failed recently, paused."""
    task: str = "generate"
    """``generate`` or ``embed`` (the chat box offers only models that generate)."""


class Snapshot(Struct, kw_only=True):
    """The whole page's data (sent with the time it was taken: :func:`stamped`)."""

    version: str
    admin: bool
    nodes: list[NodeCard]
    models: list[ModelRow]


ADDRESS = "<address>"
_ADDRESSES = re.compile(
    r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+"  # a URL
    r"|\[[0-9a-f:.]+\](?::\d+)?"  # [v6]:port
    # v6 as aiohttp writes it (::1:13131): with a "::" or four colons, unlike a time
    r"|(?<![\w:])(?=[0-9a-f:]*::|(?:[0-9a-f]*:){4})(?:[0-9a-f]{0,4}:){2,8}[0-9a-f]{0,5}(?![\w:])"
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"  # v4(:port)
    # host:port, the host with a letter in it (a time such as 10:30:12 is not an address)
    r"|\b(?=[a-z0-9.-]*[a-z])[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r":\d{1,5}\b",
    re.IGNORECASE,
)


def without_addresses(text: str) -> str:
    """``text`` with every URL, IP address and ``host:port`` in it replaced by ``<address>``.

    For keys that may not see where the nodes are: aiohttp's errors name the
    host and port they could not reach ("Cannot connect to host 10.0.0.5:13131").
    """
    return _ADDRESSES.sub(ADDRESS, text)


def _text(value: str | None, admin: bool = True) -> str | None:
    if value is None:
        return None
    return printable(value if admin else without_addresses(value), ERROR_CHARS)


def redacted(event: Event) -> Event:
    """A timeline event as a key that is not an admin key sees it: no address in its reason."""
    if event.reason is None:
        return event
    return msgspec.structs.replace(event, reason=without_addresses(event.reason))


def _bar(node: NodeState) -> list[DeviceBar]:
    bars = {
        d.index: DeviceBar(
            index=d.index,
            name=printable(d.name, 80),
            total=d.memory_total,
            used=d.memory_used,
            utilization=d.utilization,
        )
        for d in node.devices
    }
    for info in node.models:
        if info.state not in HOLDING or not info.devices:
            continue
        share = info.memory_bytes // len(info.devices)
        for index in info.devices:
            if (bar := bars.get(index)) is not None and share:
                segment = Segment(kind=info.state, bytes=share, model=printable(info.id))
                bar.segments.append(segment)
    for bar in bars.values():
        # What a load reserves may already be in use (an engine allocating as it starts).
        known = sum(s.bytes for s in bar.segments)
        if (other := bar.used - known) > 0:
            bar.segments.append(Segment(kind="other", bytes=other))
    return list(bars.values())


def _card(node: NodeState, since: float | None, admin: bool) -> NodeCard:
    cpu_only = not node.devices
    return NodeCard(
        name=node.name,
        up=node.up,
        since=since,
        version=printable(node.version, 64),
        endpoint=node.endpoint if admin else None,
        error=None if node.up else _text(node.error, admin),
        cpu_only=cpu_only,
        devices=_bar(node),
        host_models=_host_models(node),
    )


def _host_models(node: NodeState) -> list[Segment]:
    """Models in host memory: sleepers (their weights), and every model on a CPU-only node."""
    found = []
    for info in node.models:
        if info.state == SLEEPING:
            held = info.host_memory_bytes
        elif not node.devices and info.state in HOLDING:
            held = info.memory_bytes
        else:
            continue
        found.append(Segment(kind=info.state, bytes=held, model=printable(info.id)))
    return found


def _placement(node: NodeState, info: ModelInfo, started: float | None, admin: bool) -> Placement:
    since = info.loaded_at if info.state == "ready" else started
    # A down node serves nothing, whatever it said of its models before it went.
    state = printable(info.state, 32) if node.up else UNAVAILABLE
    return Placement(
        node=node.name,
        state=state,
        phase=_text(info.phase, admin),
        since=since,
        error=_text(info.error, admin) if info.state == "failed" else None,
        in_flight=info.in_flight,
        last_used=info.last_used,
        memory_bytes=info.memory_bytes,
        host_memory_bytes=info.host_memory_bytes if info.state == SLEEPING else 0,
    )


def snapshot(
    status: FleetStatus,
    *,
    events: list[Event],
    admin: bool,
    version: str,
    now: float | None = None,
) -> Snapshot:
    """The dashboard's data: every node's card, every model's and alias's row.

    ``events`` (the timeline) gives when each load under way was asked for.
    """
    now = time.time() if now is None else now
    catalogue, fleet = status.catalogue, status.fleet
    started: dict[tuple[str, str], float] = {}
    for event in events:
        if event.kind == "load_started" and event.model is not None:
            started[(event.node, event.model)] = event.time
    gateway_counts: Counter[str] = Counter()
    for (_, model_id), count in status.in_flight.items():
        gateway_counts[model_id] += count
    rows: list[ModelRow] = []
    listing = list_models(catalogue, fleet, status.backoffs, now)
    for entry in listing.data:
        concrete = entry.alias_of or entry.id
        profile = catalogue.profile(concrete)
        placements = [
            _placement(node, info, started.get((node.name, concrete)), admin)
            for node in fleet.nodes.values()
            if (info := node.model(concrete)) is not None
        ]
        used = [p.last_used for p in placements if p.last_used is not None]
        rows.append(
            ModelRow(
                id=printable(entry.id),
                alias_of=entry.alias_of,
                catalogued=profile is not None,
                pinned=entry.pinned,
                priority=profile.priority if profile is not None else None,
                memory_bytes=profile.memory_bytes if profile is not None else None,
                feasible_on=entry.feasible_on,
                placements=placements,
                in_flight=max(gateway_counts[concrete], sum(p.in_flight for p in placements)),
                waiting=status.waiting.get(concrete, 0),
                last_used=max(used, default=None),
                backoff=[b.node for b in entry.backoff],
                task=printable(entry.task, 32),
            )
        )
    return Snapshot(
        version=version,
        admin=admin,
        nodes=[_card(node, status.since.get(node.name), admin) for node in fleet.nodes.values()],
        models=rows,
    )


def stamped(encoded: bytes, now: float) -> bytes:
    """An encoded :class:`Snapshot` with ``"time"`` (Unix seconds) put first.

    The snapshot is encoded once per change and shared by every open page;
    only the time differs from one sending to the next.
    """
    return b'{"time":' + repr(round(now, 3)).encode() + b"," + encoded[1:]
