"""The last minutes of the gateway, in its own memory: what the dashboard charts and lists.

Two bounded rings, fed as things happen and read by ``/ui``:

- :class:`Series`: per model (catalogue ids and aliases; anything else is
  ``other``) and for all models together, requests, errors, completion
  tokens and a sample of times to first token in fixed buckets
  (``bucket_s``), over ``window_s``. A bucket is reused when its slot comes
  round again, so memory is fixed per model whatever the traffic.
- :class:`Timeline`: fleet events (loads with their duration, unloads and
  evictions with their reason, nodes up, down and restarted), the newest
  ``size``, each numbered so a reader can ask for what it has not seen.

No Prometheus is needed to look at a fleet: these are what one gateway
process saw (with ``[gateway] workers`` > 1, the worker that answers).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from msgspec import Struct

from cortex_core.text import printable
from cortex_gateway.events import EventKind, FleetEvent

__all__ = ["ALL", "Event", "Series", "SeriesView", "Timeline"]

ALL = ""
"""The key of every model's requests together."""

REASON_CHARS = 300
"""The longest failure text an event keeps."""
TTFT_SAMPLES = 64
"""Times to first token kept per bucket and model: enough for a p95 of a few seconds' traffic."""


@dataclass(slots=True)
class _Bucket:
    start: int = -1
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)

    def reset(self, start: int) -> None:
        self.start = start
        self.requests = self.errors = self.tokens = 0
        self.ttft.clear()


class SeriesView(Struct, kw_only=True):
    """One model's (or all models') last ``window_s``: one value per bucket, oldest first.

    Rates are per second; a bucket with no time to first token has ``None``.
    """

    model: str
    start: float
    """Unix seconds at the start of the first bucket."""
    step: float
    requests: list[float]
    errors: list[float]
    tokens: list[float]
    ttft_p50: list[float | None]
    ttft_p95: list[float | None]


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Series:
    """Requests, errors, tokens and times to first token per model, in a ring of buckets."""

    def __init__(
        self,
        window_s: int = 900,
        bucket_s: int = 5,
        clock: Callable[[], float] = time.time,
        max_models: int = 1024,
    ) -> None:
        self.bucket_s = bucket_s
        self.slots = max(1, window_s // bucket_s)
        self.clock = clock
        self.max_models = max_models
        self._rings: dict[str, list[_Bucket]] = {}

    def _bucket(self, model: str, now: float) -> _Bucket | None:
        ring = self._rings.get(model)
        if ring is None:
            if len(self._rings) >= self.max_models:
                return None
            ring = self._rings[model] = [_Bucket() for _ in range(self.slots)]
        start = int(now // self.bucket_s)
        bucket = ring[start % self.slots]
        if bucket.start != start:
            bucket.reset(start)
        return bucket

    def record(self, model: str, *, ok: bool, tokens: int = 0, ttft: float | None = None) -> None:
        """One finished request of ``model`` (counted under :data:`ALL` too)."""
        now = self.clock()
        for key in (ALL, model) if model != ALL else (ALL,):
            bucket = self._bucket(key, now)
            if bucket is None:
                continue
            bucket.requests += 1
            if not ok:
                bucket.errors += 1
            bucket.tokens += tokens
            if ttft is not None and len(bucket.ttft) < TTFT_SAMPLES:
                bucket.ttft.append(ttft)

    def models(self) -> list[str]:
        """The models with a ring (any request in this process's life), :data:`ALL` first."""
        return sorted(self._rings)

    def view(self, model: str = ALL) -> SeriesView:
        """The last window of ``model``; all zeros for a model never seen."""
        now = self.clock()
        last = int(now // self.bucket_s)
        first = last - self.slots + 1
        ring = self._rings.get(model)
        step = float(self.bucket_s)
        requests, errors, tokens = [], [], []
        p50: list[float | None] = []
        p95: list[float | None] = []
        for start in range(first, last + 1):
            bucket = ring[start % self.slots] if ring is not None else None
            if bucket is None or bucket.start != start:
                requests.append(0.0)
                errors.append(0.0)
                tokens.append(0.0)
                p50.append(None)
                p95.append(None)
                continue
            requests.append(bucket.requests / step)
            errors.append(bucket.errors / step)
            tokens.append(bucket.tokens / step)
            p50.append(_quantile(bucket.ttft, 0.5))
            p95.append(_quantile(bucket.ttft, 0.95))
        return SeriesView(
            model=model,
            start=first * step,
            step=step,
            requests=requests,
            errors=errors,
            tokens=tokens,
            ttft_p50=p50,
            ttft_p95=p95,
        )


class Event(Struct, kw_only=True):
    """Something that happened to the fleet."""

    seq: int
    time: float
    """Unix seconds."""
    kind: EventKind
    node: str
    model: str | None = None
    reason: str | None = None
    """Why: an unload's reason (``lru``, ``priority``, ``idle``, ``defrag``, ``admin``), a
    failed load's or a down node's error (client-safe text)."""
    seconds: float | None = None
    """How long a load (or a wake) took."""
    wake: bool = False
    """A load that wakes a sleeping model (no engine start)."""
    host_bytes: int | None = None
    """What a model that ``slept`` holds in host memory."""


class Timeline:
    """The newest ``size`` fleet events, numbered from 1."""

    def __init__(self, size: int = 500, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self.last = 0
        """The newest event's number (0: none yet)."""
        self.clock = clock
        self.listeners: list[Callable[[Event], object]] = []
        """Called with each event as it is added (the dashboard's streams)."""

    def add(
        self,
        kind: EventKind,
        node: str,
        model: str | None = None,
        *,
        reason: str | None = None,
        seconds: float | None = None,
        wake: bool = False,
        host_bytes: int | None = None,
    ) -> Event:
        """Record an event and tell the listeners."""
        self.last += 1
        event = Event(
            seq=self.last,
            time=self.clock(),
            kind=kind,
            node=node,
            model=model,
            reason=reason,
            seconds=None if seconds is None else round(seconds, 2),
            wake=wake,
            host_bytes=host_bytes,
        )
        self._events.append(event)
        for listener in list(self.listeners):
            listener(event)
        return event

    def record(self, event: FleetEvent) -> Event:
        """Keep a fleet event (the stream's listener): why it happened, in client-safe text."""
        reason = event.reason
        if reason is None and event.error is not None:
            reason = printable(event.error, REASON_CHARS)
        return self.add(
            event.kind,
            event.node,
            event.model,
            reason=reason,
            seconds=event.seconds,
            wake=event.wake,
            host_bytes=event.host_bytes,
        )

    def since(self, seq: int = 0) -> list[Event]:
        """The events after ``seq``, oldest first."""
        return [event for event in self._events if event.seq > seq]
