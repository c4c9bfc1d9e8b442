"""The dashboard's live feed: one per gateway process, whatever the number of pages open.

While a page is open, one task looks at the fleet every ``TICK_S`` (at once
when the timeline grows) and makes one :class:`Frame`: the snapshot as
admins and as other keys see it (each built only if a page of that kind is
open, and only when what it is made of changed), encoded row by row and
compared with the frame before. A page that took the frame before is sent
only what changed (a ``changes`` event: the node cards and model rows that
differ, by key); one that fell behind, or a frame whose rows came or went,
gets the whole ``snapshot``. Every page is sent the same bytes: nothing is
built or encoded per page.

Nothing is queued for a page: one that has not taken what it was sent
within ``SLOW_READER_S`` is dropped (the page reconnects). Past
``max_dashboard_streams`` pages open, another is a 503 with ``Retry-After``.
When the last page goes, the task and its frames go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cortex_core.wire import encode
from cortex_gateway import __version__
from cortex_gateway.activity import ALL, Event, Series, Timeline
from cortex_gateway.background import Background
from cortex_gateway.dashboard import redacted, snapshot, stamped
from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.fleet import FleetStatus
from cortex_gateway.sse import named_event

__all__ = ["HEARTBEAT_S", "SLOW_READER_S", "TICK_S", "Feed", "Frame", "Shown"]

TICK_S = 0.25
"""How often the feed looks for a change to send (it sends only what changed)."""
HEARTBEAT_S = 15.0
"""The longest a page goes without a whole snapshot (which also says the link is alive)."""
SLOW_READER_S = 10.0
"""How long a page may take to accept what it was sent before it is dropped."""
RETRY_AFTER_S = 5
"""What a page past the cap is told to wait."""


@dataclass(frozen=True, slots=True)
class Shown:
    """The snapshot as one kind of key sees it, encoded row by row."""

    source: tuple[object, ...]
    """What it was built from: the same source, the same snapshot."""
    head: bytes
    """``"version":...,"admin":...`` of the snapshot."""
    nodes: dict[str, bytes]
    """Each node's card, by name, in order."""
    models: dict[str, bytes]
    """Each model's (and alias's) row, by id, in order."""
    changes: bytes | None = None
    """What changed since the frame before (``b""``: nothing); None: send the whole snapshot."""

    @property
    def whole(self) -> bytes:
        """The whole snapshot, as :func:`~cortex_gateway.dashboard.stamped` takes it."""
        return (
            b"{"
            + self.head
            + b',"nodes":['
            + b",".join(self.nodes.values())
            + b'],"models":['
            + b",".join(self.models.values())
            + b"]}"
        )


@dataclass(slots=True)
class Frame:
    """What the pages are sent for one tick: one snapshot per kind of key, timeline, activity."""

    seq: int
    time: float
    shown: dict[bool, Shown] = field(default_factory=dict)
    """By admin flag, for the kinds of key with a page open."""
    timeline: int = 0
    """The newest timeline event it covers."""
    bucket: int = -1
    activity: bytes | None = None
    """The all-models series and the models that have one, as of its bucket."""
    _events: dict[tuple[str, bool], bytes] = field(default_factory=dict)

    def event(self, kind: str, admin: bool) -> bytes:
        """The ``snapshot`` or ``changes`` event for ``admin`` pages, made once for all of them."""
        key = (kind, admin)
        made = self._events.get(key)
        if made is None:
            shown = self.shown[admin]
            data = whole(shown, self.time) if kind == "snapshot" else shown.changes or b""
            made = self._events[key] = named_event(
                kind, data if kind == "snapshot" else stamped(data, self.time)
            )
        return made


def _same(before: tuple[object, ...], now: tuple[object, ...]) -> bool:
    """Whether a snapshot's sources are unchanged: fleet and catalogue by identity, the rest."""
    return before[0] is now[0] and before[1] is now[1] and before[2:] == now[2:]


def _changes(before: Shown, now: Shown) -> bytes | None:
    """What a page showing ``before`` needs to show ``now`` (None: the whole snapshot)."""
    if before.head != now.head or list(before.nodes) != list(now.nodes):
        return None
    if list(before.models) != list(now.models):
        return None
    nodes = [card for name, card in now.nodes.items() if before.nodes[name] != card]
    models = [row for key, row in now.models.items() if before.models[key] != row]
    if not nodes and not models:
        return b""
    return b'{"nodes":[' + b",".join(nodes) + b'],"models":[' + b",".join(models) + b"]}"


class Feed:
    """The frames every open dashboard page is sent, made once per tick for all of them."""

    def __init__(
        self,
        status: Callable[[], FleetStatus],
        timeline: Timeline,
        series: Series,
        limit: int,
    ) -> None:
        self._status = status
        self.timeline = timeline
        self.series = series
        self.limit = limit
        self.pages: dict[bool, int] = {True: 0, False: 0}
        """Open pages by admin flag."""
        self.frame: Frame | None = None
        self._next = asyncio.Event()
        self._woken = asyncio.Event()
        self._background = Background()
        self._ticking: asyncio.Task[None] | None = None

    # --- pages ------------------------------------------------------------------------

    @property
    def open(self) -> int:
        """Pages open now."""
        return self.pages[True] + self.pages[False]

    def join(self, admin: bool) -> None:
        """A page opens: counted (503 past the cap), and the feed ticks while any is open."""
        if self.open >= self.limit:
            raise GatewayError(
                503,
                ErrorKind.UNAVAILABLE,
                f"{self.limit} dashboards are open on this gateway process; try again later",
                # and the connection goes: a page waiting to retry holds nothing here
                headers={"retry-after": str(RETRY_AFTER_S), "connection": "close"},
                open=self.open,
            )
        self.pages[admin] += 1
        if self._ticking is None:
            self.timeline.listeners.append(self._wake)
            self._ticking = self._background.spawn(self._tick())
        elif self.frame is not None and admin not in self.frame.shown:
            self._woken.set()  # the first page of its kind: build its snapshot now

    def leave(self, admin: bool) -> None:
        """A page closed; the last one stops the feed and lets its frames go."""
        self.pages[admin] -= 1
        if self.open == 0 and self._ticking is not None:
            self._ticking.cancel()
            self._ticking = None
            self.timeline.listeners.remove(self._wake)
            self.frame = None

    async def close(self) -> None:
        """The gateway stops: the feed stops ticking."""
        self._ticking = None
        await self._background.close()

    async def next_frame(self, after: int, within_s: float) -> Frame | None:
        """The newest frame once it is newer than ``after`` (None if none came ``within_s``)."""
        deadline = time.monotonic() + within_s
        while self.frame is None or self.frame.seq <= after:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            waiting = self._next
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await waiting.wait()
        return self.frame

    # --- frames -----------------------------------------------------------------------

    def _wake(self, event: Event) -> None:
        self._woken.set()

    async def _tick(self) -> None:
        while True:
            self._woken.clear()
            self._publish(self.make(self.frame))
            # asyncio.timeout, not wait_for: 3.11's wait_for can miss a cancellation that
            # meets its own timeout, and the feed would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._woken.wait()

    def _publish(self, frame: Frame) -> None:
        self.frame = frame
        done, self._next = self._next, asyncio.Event()
        done.set()

    def make(self, before: Frame | None) -> Frame:
        """The frame after ``before``: each kind of snapshot a page shows, timeline, activity."""
        status = self._status()
        frame = Frame(
            seq=before.seq + 1 if before else 1, time=time.time(), timeline=self.timeline.last
        )
        for admin, count in self.pages.items():
            if count:
                old = before.shown.get(admin) if before else None
                frame.shown[admin] = self._shown(status, admin, old)
        frame.bucket = int(frame.time // self.series.bucket_s)
        if before is not None and before.bucket == frame.bucket:
            frame.activity = before.activity
        else:
            models = [m for m in self.series.models() if m != ALL]
            frame.activity = encode({"all": self.series.view(ALL), "models": models})
        return frame

    def _shown(self, status: FleetStatus, admin: bool, before: Shown | None) -> Shown:
        timeline = self.timeline
        source = (
            status.fleet,
            status.catalogue,
            status.leases_taken,
            timeline.last,
            sum(status.waiting.values()),
        )
        if before is not None and _same(before.source, source):
            return Shown(before.source, before.head, before.nodes, before.models, b"")
        shown = built(status, timeline.since(0), admin, source)
        if before is None:
            return shown
        return Shown(source, shown.head, shown.nodes, shown.models, _changes(before, shown))


def built(
    status: FleetStatus, events: list[Event], admin: bool, source: tuple[object, ...] = ()
) -> Shown:
    """The snapshot of ``status`` as ``admin`` (or another key) sees it, encoded row by row."""
    snap = snapshot(status, events=events, admin=admin, version=__version__)
    head = encode({"version": snap.version, "admin": snap.admin})[1:-1]
    return Shown(
        source,
        head,
        {card.name: encode(card) for card in snap.nodes},
        {row.id: encode(row) for row in snap.models},
    )


def timeline_events(events: list[Event], admin: bool) -> bytes:
    """Timeline events as a page of that kind of key is sent them (addresses hidden from others)."""
    return encode(events if admin else [redacted(event) for event in events])


def whole(shown: Shown, now: float) -> bytes:
    """The whole snapshot of ``shown``, stamped with ``now``."""
    return stamped(shown.whole, now)
