"""One neuron as the gateway knows it, as a value, and what an answer of it changes (pure).

A :class:`NodeRecord` holds the last answer, when the node went up or down,
its failed polls in a row, its breaker and the endpoints of its models.
:func:`observe` takes a record, a new answer (or the node marked down) and
the :class:`Evidence` beside it, and returns the :class:`Transition`: the new
record, the fleet events to emit, whether the requests there are void, which
prompt prefixes it forgot. The poller's ``Node`` owns one record and applies
each transition; nothing here does I/O.

A node is down by evidence, not by one poll: a failed poll only makes it a
node to use when no other can serve (suspect), until it answers again;
``down_after`` failures in a row, or a failed poll while its breaker is open
(a request could not reach it), mark it down. Its requests are void only
when they too have gone quiet: a node whose requests still receive bytes is
not gone, whatever its management API says. A restart (a new
``started_at``) voids them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from cortex_gateway.events import FleetEvent
from cortex_gateway.fleet import NodeState

__all__ = [
    "BREAKER_S",
    "Evidence",
    "NodeRecord",
    "Transition",
    "observe",
    "rewrite_loopback",
]

LOOPBACK = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1"})
BREAKER_S = 10.0
"""How long a node that failed a request is used only when no other node can serve."""


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
    failures: int = 0
    """Polls that failed in a row, while it is not (yet) down: 0 once it answers."""

    def broken(self, now: float) -> bool:
        """Whether the breaker is open at ``now`` (monotonic)."""
        return self.broken_until > now

    @property
    def suspect(self) -> bool:
        """Up, but its last poll failed: used only when no other node can serve."""
        return self.failures > 0 and self.state.up

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


@dataclass(frozen=True, slots=True)
class Evidence:
    """What else the gateway knew of a node when a poll of it failed."""

    answering: bool = False
    """Requests on the node received bytes since shortly before the poll: it is not gone."""
    unreachable: bool = False
    """A request could not reach the node lately (its breaker is open)."""


def _ready(node: NodeState) -> set[str]:
    return {m.id for m in node.models if m.state == "ready"}


def observe(
    record: NodeRecord,
    seen: NodeState,
    now: float,
    *,
    down_after: int = 1,
    evidence: Evidence = Evidence(),
) -> Transition:
    """The record after ``seen`` (a node's answer, or it marked down), and what that changes.

    A node that was up and fails a poll stays up, suspect, until
    ``down_after`` polls failed in a row or ``evidence`` says a request could
    not reach it; then it is down. A node down (or restarted) has its requests
    void, unless ``evidence`` says they are still answered. A node is
    announced up when it answers after not answering; down once, or when one
    never seen up fails differently; a restart when its ``started_at``
    changes. An endpoint is kept only while its model is ready there.
    """
    if not seen.up:
        failures = record.failures + 1
        if record.state.up and failures < down_after and not evidence.unreachable:
            return Transition(replace(record, failures=failures))
        down = _changed(record, seen, now)
        # Requests still answered there are left to finish: only a node gone has them failed.
        void = record.state.last_seen is not None and not evidence.answering
        return replace(down, record=replace(down.record, failures=failures), void=void)
    return _changed(record, seen, now)


def _changed(record: NodeRecord, seen: NodeState, now: float) -> Transition:
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
