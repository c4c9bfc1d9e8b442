"""``/ui``: the fleet dashboard, its assets, and the live stream that feeds it.

The page and its assets are open (they hold no data, and without a key the
page shows only its key prompt); the data routes take an API key like every
inference route, and the page's actions go through ``/admin/models/*`` with
their own checks. Every answer here carries a strict Content-Security-Policy:
scripts and styles from this origin only, nothing inline, no frames.

``GET /ui/events`` is one server-sent-event stream: ``snapshot`` (the whole
fleet, :mod:`cortex_gateway.dashboard`) when it changes and at least every
``HEARTBEAT_S``; ``timeline`` (fleet events not yet sent); ``activity`` (the
all-models series and the models that have one) every bucket. The page
reads it with ``fetch`` (so the key goes in a header, never in a URL) and
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.wire import encode
from cortex_gateway import __version__
from cortex_gateway.activity import ALL, Event
from cortex_gateway.calls import Call
from cortex_gateway.dashboard import snapshot, stamped
from cortex_gateway.errors import ErrorKind, GatewayError, Surface
from cortex_gateway.responses import JSON, ClosingStream, json_response
from cortex_gateway.routes.endpoint import Handler, endpoint
from cortex_gateway.sse import named_event
from cortex_gateway.state import Gateway

__all__ = ["SECURITY_HEADERS", "UiRoutes"]

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
PAGE = "index.html"
TICK_S = 0.25
"""How often the stream looks for a change to send (it sends only what changed)."""
HEARTBEAT_S = 15.0
"""The longest the stream stays silent: a snapshot goes out at least this often."""
RETRY_MS = 2000


def _asset(name: str) -> bytes:
    return resources.files("cortex_gateway").joinpath("ui", name).read_bytes()


async def _nothing() -> None:
    """A stream of the dashboard holds nothing to give back when it ends."""


def _same(before: tuple[object, ...], now: tuple[object, ...]) -> bool:
    """Whether a snapshot's sources are unchanged: fleet and catalogue by identity, the rest."""
    return before[0] is now[0] and before[1] is now[1] and before[2:] == now[2:]


class UiRoutes:
    """The dashboard over a :class:`~cortex_gateway.state.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._files = {name: _asset(name) for name in (PAGE, *ASSETS)}
        self._shared: dict[bool, tuple[tuple[object, ...], bytes]] = {}
        """The encoded snapshot per admin flag, and what it was taken from (kept alive)."""

    def routes(self) -> list[Route]:
        """The page and assets (open), the snapshot, activity and event stream (keyed)."""

        def r(path: str, handler: str, work: Handler, *, public: bool = False) -> Route:
            wrapped = endpoint(self.gateway, handler, Surface.OPENAI, work, public=public)
            return Route(path, wrapped, methods=["GET"])

        return [
            r("/ui", "ui", self.page, public=True),
            r("/ui/", "ui", self.page, public=True),
            *(r(f"/ui/{name}", "ui", self.asset, public=True) for name in ASSETS),
            r("/ui/snapshot", "ui_snapshot", self.snapshot),
            r("/ui/activity", "ui_activity", self.activity),
            r("/ui/events", "ui_events", self.events),
        ]

    async def page(self, request: Request, call: Call) -> Response:
        """``GET /ui``: the page (no data in it)."""
        return Response(
            self._files[PAGE], media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
        )

    async def asset(self, request: Request, call: Call) -> Response:
        """``GET /ui/app.js`` and the other assets, from the installed package."""
        name = request.url.path.rsplit("/", 1)[1]
        return Response(self._files[name], media_type=ASSETS[name], headers=SECURITY_HEADERS)

    def _admin(self, request: Request) -> bool:
        return self.gateway.pipeline.keys.admits(request, admin=True)

    def _snapshot(self, admin: bool) -> bytes:
        """The encoded snapshot, built again only when what it shows may have changed.

        Shared by every open page: a fleet of 200 models takes milliseconds to
        snapshot, and the event loop carries every request's tokens.
        """
        status, timeline = self.gateway.lifecycle.status(), self.gateway.timeline
        # The fleet and catalogue themselves, compared by identity: an id alone could be
        # reused by a newer snapshot once the one it named is gone.
        source = (
            status.fleet,
            status.catalogue,
            status.leases_taken,
            timeline.last,
            sum(status.waiting.values()),
        )
        shared = self._shared.get(admin)
        if shared is not None and _same(shared[0], source):
            return shared[1]
        encoded = encode(
            snapshot(
                status,
                events=timeline.since(0),
                admin=admin,
                version=__version__,
            )
        )
        self._shared[admin] = (source, encoded)
        return encoded

    async def snapshot(self, request: Request, call: Call) -> Response:
        """``GET /ui/snapshot``: what the page shows, once (``/ui/events`` streams it)."""
        body = stamped(self._snapshot(self._admin(request)), time.time())
        return Response(body, media_type=JSON, headers=SECURITY_HEADERS)

    async def activity(self, request: Request, call: Call) -> Response:
        """``GET /ui/activity?model=ID``: one model's last minutes (all models without one)."""
        model = request.query_params.get("model", ALL)
        series = self.gateway.series
        known = model == ALL or model in series.models() or model in self.gateway.config.catalogue
        if not known:
            raise GatewayError(404, ErrorKind.NOT_FOUND, "no activity for that model")
        return json_response(series.view(model), headers=SECURITY_HEADERS)

    async def events(self, request: Request, call: Call) -> Response:
        """``GET /ui/events``: the live stream (see the module's docstring)."""
        return ClosingStream(self.stream(self._admin(request)), SECURITY_HEADERS, _nothing)

    async def stream(self, admin: bool) -> AsyncIterator[bytes]:
        """The events of ``GET /ui/events`` until the gateway drains or stops.

        Every timeline event kept comes first; a new one wakes the stream at once.
        """
        gateway, life = self.gateway, self.gateway.lifecycle
        series = gateway.series
        woken = asyncio.Event()

        def wake(event: Event) -> None:
            woken.set()

        timeline = gateway.timeline
        timeline.listeners.append(wake)
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            sent_snapshot = b""
            sent_at = 0.0
            bucket = -1
            seq = 0
            while not (life.stopping or gateway.draining):
                now = time.monotonic()
                data = self._snapshot(admin)
                if data != sent_snapshot or now - sent_at >= HEARTBEAT_S:
                    yield named_event("snapshot", stamped(data, time.time()))
                    sent_snapshot, sent_at = data, now
                fresh = timeline.since(seq)
                if fresh:
                    seq = fresh[-1].seq
                    yield named_event("timeline", encode(fresh))
                current = int(time.time() // series.bucket_s)
                if current != bucket:
                    bucket = current
                    models = [m for m in series.models() if m != ALL]
                    payload = {"all": series.view(ALL), "models": models}
                    yield named_event("activity", encode(payload))
                woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), TICK_S)
        finally:
            timeline.listeners.remove(wake)
