"""``/ui``: the fleet dashboard, its assets, and the live stream that feeds it.

The page and its assets are open (they hold no data, and without a key the
page shows only its key prompt); the data routes take an API key like every
inference route, and the page's actions go through ``/admin/models/*`` with
their own checks. Every answer here carries a strict Content-Security-Policy:
scripts and styles from this origin only, nothing inline, no frames.

``GET /ui/events`` is one server-sent-event stream, fed by the process's one
:class:`~cortex_gateway.dashboard_feed.Feed`: ``snapshot`` (the whole fleet,
:mod:`cortex_gateway.dashboard`) first, when rows come or go, after the page
fell behind, and at least every ``HEARTBEAT_S``; ``changes`` (the node cards
and model rows that changed, by key) otherwise; ``timeline`` (fleet events not
yet sent); ``activity`` (the all-models series and the models that have one)
every bucket. The page reads it with ``fetch`` (so the key goes in a header,
never in a URL) and reconnects by itself; past ``max_dashboard_streams``
pages it is told 503 and tries again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_gateway.activity import ALL
from cortex_gateway.calls import Call
from cortex_gateway.dashboard_feed import (
    HEARTBEAT_S,
    SLOW_READER_S,
    Feed,
    Frame,
    built,
    timeline_events,
    whole,
)
from cortex_gateway.errors import ErrorKind, GatewayError, Surface
from cortex_gateway.responses import JSON, ClosingStream, json_response
from cortex_gateway.routes.endpoint import Handler, endpoint
from cortex_gateway.sse import named_event
from cortex_gateway.state import Gateway

__all__ = ["SECURITY_HEADERS", "UiRoutes"]

log = logging.getLogger(__name__)

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
RETRY_MS = 2000


def _asset(name: str) -> bytes:
    return resources.files("cortex_gateway").joinpath("ui", name).read_bytes()


class UiRoutes:
    """The dashboard over a :class:`~cortex_gateway.state.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._files = {name: _asset(name) for name in (PAGE, *ASSETS)}

    @property
    def feed(self) -> Feed:
        """The process's dashboard feed."""
        return self.gateway.feed

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

    async def snapshot(self, request: Request, call: Call) -> Response:
        """``GET /ui/snapshot``: what the page shows, once (``/ui/events`` streams it)."""
        admin = self._admin(request)
        frame = self.feed.frame
        shown = frame.shown.get(admin) if frame is not None else None
        if shown is None:  # no page of this kind open: nothing built to share
            shown = built(self.gateway.lifecycle.status(), self.gateway.timeline.since(0), admin)
        return Response(whole(shown, time.time()), media_type=JSON, headers=SECURITY_HEADERS)

    async def activity(self, request: Request, call: Call) -> Response:
        """``GET /ui/activity?model=ID``: one model's last minutes (all models without one)."""
        model = request.query_params.get("model", ALL)
        series = self.gateway.series
        known = model == ALL or model in series.models() or model in self.gateway.config.catalogue
        if not known:
            raise GatewayError(404, ErrorKind.NOT_FOUND, "no activity for that model")
        return json_response(series.view(model), headers=SECURITY_HEADERS)

    async def events(self, request: Request, call: Call) -> Response:
        """``GET /ui/events``: the live stream (see the module's docstring); 503 past the cap."""
        admin = self._admin(request)
        feed = self.feed
        feed.join(admin)

        async def leave() -> None:
            feed.leave(admin)

        def slow() -> None:
            log.warning(
                "dashboard stream dropped",
                extra={"handler": call.handler, "error": "the page reads too slowly"},
            )

        return ClosingStream(
            self.stream(admin), SECURITY_HEADERS, leave, slow_s=SLOW_READER_S, on_slow=slow
        )

    async def stream(self, admin: bool) -> AsyncIterator[bytes]:
        """The events of ``GET /ui/events`` until the gateway drains or stops.

        Every timeline event kept comes first. The page must have joined the feed.
        """
        gateway, life, feed = self.gateway, self.gateway.lifecycle, self.feed
        yield f"retry: {RETRY_MS}\n\n".encode()
        sent = _Sent()
        seen = 0
        while not (life.stopping or gateway.draining):
            frame = await feed.next_frame(seen, HEARTBEAT_S)
            if frame is None:
                continue
            seen = frame.seq
            if admin in frame.shown:  # else the page came between two frames: the next has it
                for event in sent.due(frame, admin, feed):
                    yield event


class _Sent:
    """What one page was sent: the frame, its last whole snapshot, timeline, activity."""

    __slots__ = ("activity", "frame", "timeline", "whole_at")

    def __init__(self) -> None:
        self.frame = 0
        self.whole_at = -HEARTBEAT_S
        self.timeline = 0
        self.activity = -1

    def due(self, frame: Frame, admin: bool, feed: Feed) -> list[bytes]:
        """The events ``frame`` owes this page."""
        out = []
        shown = frame.shown[admin]
        now = time.monotonic()
        follows = self.frame == frame.seq - 1 and now - self.whole_at < HEARTBEAT_S
        if follows and shown.changes is not None:
            if shown.changes:
                out.append(frame.event("changes", admin))
        else:
            out.append(frame.event("snapshot", admin))
            self.whole_at = now
        self.frame = frame.seq
        if frame.timeline > self.timeline:
            fresh = feed.timeline.since(self.timeline)
            if fresh:
                self.timeline = fresh[-1].seq
                out.append(named_event("timeline", timeline_events(fresh, admin)))
        if frame.bucket != self.activity and frame.activity is not None:
            self.activity = frame.bucket
            out.append(named_event("activity", frame.activity))
        return out
