"""What happened to the fleet, said once: loads, wakes, unloads, evictions, sleeps, nodes.

The poller and the loads emit each :class:`FleetEvent` on one :class:`Events`
stream, and whoever needs to know subscribes (llama-swap's ``event.On``): the
metrics count loads and unloads, the dashboard's timeline keeps the newest few
hundred, and :func:`log_event` writes each as one log line. Whoever emits
knows nobody who listens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["EventKind", "Events", "FleetEvent", "Listener", "log_event"]

log = logging.getLogger(__name__)

EventKind = Literal[
    "load_started",
    "loaded",
    "load_failed",
    "unloaded",
    "evicted",
    "slept",
    "node_up",
    "node_down",
    "node_restarted",
]
"""``unloaded``: an operator asked (reason ``admin``); ``evicted``: the gateway decided;
``slept``: the gateway evicted it and the neuron put it to sleep instead of unloading it."""


@dataclass(frozen=True, slots=True)
class FleetEvent:
    """One thing that happened to a node or to a model on it."""

    kind: EventKind
    node: str
    model: str | None = None
    reason: str | None = None
    """Why an unload happened: ``lru``, ``priority``, ``idle``, ``defrag``, ``admin``."""
    error: str | None = None
    """Why a load failed or a node went down, in the gateway's words."""
    seconds: float | None = None
    """How long a load took (or took to fail)."""
    url: str | None = None
    """The neuron's configured address (for the log)."""
    status: int | None = None
    """The neuron's HTTP status, when a call it answered failed."""
    code: str | None = None
    """The neuron's error code, when it sent one."""
    version: str | None = None
    """The neuron's version, when it came up."""
    source: str | None = None
    """The model's source, when a load started."""
    wake: bool = False
    """A load (started, done or failed) that wakes a sleeping model: no engine starts."""
    host_bytes: int | None = None
    """Host memory a model that ``slept`` holds there."""


Listener = Callable[[FleetEvent], object]


class Events:
    """One stream of fleet events: every listener hears every event, in order, at once."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def on(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns what stops that."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: FleetEvent) -> None:
        """Tell every listener; one that fails is logged and the others still hear it."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed", extra={"kind": event.kind})


def log_event(event: FleetEvent) -> None:
    """Write ``event`` as its one log line, with the fields an operator looks for."""
    fields: dict[str, object] = {"node": event.node}
    if event.model is not None:
        fields["model"] = event.model
    match event.kind:
        case "load_started":
            what = "waking model" if event.wake else "loading model"
            log.info(what, extra={**fields, "source": event.source})
        case "loaded":
            seconds = None if event.seconds is None else round(event.seconds, 1)
            log.info(
                "model woken" if event.wake else "model loaded",
                extra={**fields, "seconds": seconds},
            )
        case "load_failed":
            failure = {"url": event.url, "status": event.status, "code": event.code}
            what = "wake failed" if event.wake else "load failed"
            log.warning(what, extra={**fields, **failure, "error": event.error})
        case "unloaded" | "evicted":
            log.info(f"model {event.kind}", extra={**fields, "reason": event.reason})
        case "slept":
            held = {"reason": event.reason, "host_memory_bytes": event.host_bytes}
            log.info("model slept", extra={**fields, **held})
        case "node_up":
            log.info("neuron up", extra={**fields, "url": event.url, "version": event.version})
        case "node_down":
            log.warning("neuron down", extra={**fields, "url": event.url, "error": event.error})
        case "node_restarted":
            log.warning("neuron restarted", extra=fields)
