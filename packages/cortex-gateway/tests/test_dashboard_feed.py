"""The dashboard's feed: one snapshot per tick for every page, small changes, bounded pages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import serve, until
from starlette.types import Message

from cortex_gateway import dashboard
from cortex_gateway.dashboard_feed import whole
from cortex_gateway.responses import ClosingStream
from cortex_gateway.routes.ui import UiRoutes
from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE = "".join(f'[[models]]\nid = "fake/m{i}"\nmemory_gb = 1\n' for i in range(50))
MODELS = [ScriptedModel(f"fake/m{i}", memory_gib=1) for i in range(50)]


def nodes() -> list[ScriptedNode]:
    """One node with every model ready."""
    node = ScriptedNode("a", (80,))
    for i in range(50):
        node.put(f"fake/m{i}", "ready")
    return [node]


async def test_one_snapshot_is_shared_and_then_only_changes_are(tmp_path: Path) -> None:
    """Frames reuse an unchanged snapshot, send the rows that changed, and share their bytes."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=60) as gw:
        feed = UiRoutes(gw.state).feed
        feed.join(admin=True)
        feed.join(admin=False)
        first = feed.make(None)
        second = feed.make(first)
        assert second.shown[True].changes == b""
        assert second.shown[True].models is first.shown[True].models
        assert b'"endpoint":"http' in second.shown[True].whole
        assert b'"endpoint":"http' not in second.shown[False].whole
        lease = gw.state.lifecycle.leases.take("a", "fake/m7")
        third = feed.make(second)
        changes = json.loads(third.shown[True].changes or b"")
        assert changes["nodes"] == []
        assert [(m["id"], m["in_flight"]) for m in changes["models"]] == [("fake/m7", 1)]
        assert third.event("changes", True) is third.event("changes", True)
        assert len(third.event("changes", True)) < len(third.event("snapshot", True)) / 10
        lease.release()
        sent = json.loads(whole(feed.make(third).shown[True], 1234.5))
        assert sent["time"] == 1234.5
        assert sent["models"][7]["in_flight"] == 0
        feed.leave(admin=True)
        feed.leave(admin=False)


async def test_fifty_pages_under_traffic_cost_one_snapshot_per_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tick builds the snapshot once, whatever the number of pages; all get the same bytes.

    Before, each page built and encoded its own whenever a lease changed (and
    sent the whole of it): 50 pages, 50 builds and 50 snapshots a change.
    """
    builds = 0
    snapshot = dashboard.snapshot

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal builds
        builds += 1
        return snapshot(*args, **kwargs)

    monkeypatch.setattr("cortex_gateway.dashboard_feed.snapshot", counted)
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=60) as gw:
        ui = UiRoutes(gw.state)
        received: list[list[bytes]] = [[] for _ in range(50)]

        async def page(out: list[bytes]) -> None:
            ui.feed.join(admin=True)
            try:
                async for chunk in ui.stream(admin=True):
                    out.append(chunk)
            finally:
                ui.feed.leave(admin=True)

        pages = [asyncio.ensure_future(page(out)) for out in received]
        leases = gw.state.lifecycle.leases
        for i in range(40):  # traffic: a lease taken or released every 25 ms
            held = leases.take("a", f"fake/m{i % 50}")
            await asyncio.sleep(0.025)
            held.release()
        await until(lambda: all(len(out) > 3 for out in received))
        frames = ui.feed.frame.seq if ui.feed.frame else 0
        for task in pages:
            task.cancel()
        await asyncio.gather(*pages, return_exceptions=True)
        assert ui.feed.frame is None  # the last page gone, its frames went too
    assert builds <= frames + 1
    assert frames < 80  # a frame a tick (0.25 s), not one per lease taken or released (80)
    firsts = {id(out[1]) for out in received}
    assert len(firsts) <= 2  # one snapshot event (two if a tick fell among the joins)
    changes = [chunk for out in received for chunk in out if chunk.startswith(b"event: changes")]
    assert changes
    assert all(len(chunk) < 4000 for chunk in changes)


async def test_pages_past_the_cap_are_503_with_retry_after(tmp_path: Path) -> None:
    """Past max_dashboard_streams pages, the next is told to come back; the last out stops it."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, max_dashboard_streams=2) as gw:
        feed = gw.state.feed
        feed.join(admin=True)
        feed.join(admin=False)
        refused = await gw.http.get("/ui/events")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.headers["connection"] == "close"
        message = refused.json()["error"]["message"]
        assert message == "2 dashboards are open on this gateway process; try again later"
        await until(lambda: feed.frame is not None)
        feed.leave(admin=False)
        feed.leave(admin=True)
        assert feed.open == 0
        assert feed.frame is None


async def test_a_page_that_does_not_read_is_dropped_not_buffered_for() -> None:
    """A send that waits longer than slow_s ends the stream; its clean-up runs once."""
    ended: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1000

    async def done() -> None:
        ended.append("done")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if len(sent) > 2:
            await asyncio.Event().wait()  # the client stopped reading

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    stream = ClosingStream(chunks(), {}, done, slow_s=0.1, on_slow=lambda: ended.append("slow"))
    await asyncio.wait_for(stream({"type": "http"}, receive, send), 5)
    assert ended == ["slow", "done"]
    assert len(sent) == 3
    assert not any(m.get("more_body") is False for m in sent)


async def test_a_page_of_a_new_kind_waits_for_the_next_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user page joining while only admin pages are open gets its snapshot at the next tick.

    It waits for that frame: it does not spin on the one it cannot use (which
    would hold the event loop, and the feed with it, for good).
    """
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=60) as gw:
        ui = UiRoutes(gw.state)
        feed = ui.feed
        feed.join(admin=True)
        await until(lambda: feed.frame is not None)
        asked = 0
        next_frame = feed.next_frame

        async def counted(after: int, within_s: float) -> Any:
            nonlocal asked
            asked += 1
            assert asked < 50, "the stream asks for frames without waiting"
            return await next_frame(after, within_s)

        monkeypatch.setattr(feed, "next_frame", counted)
        feed.join(admin=False)
        stream = ui.stream(admin=False)
        assert (await anext(stream)).startswith(b"retry: ")
        snapshot = await anext(stream)  # at once: nothing lets the feed tick in between
        assert snapshot.startswith(b"event: snapshot")
        assert b'"admin":false' in snapshot
        await stream.aclose()  # type: ignore[attr-defined]
        feed.leave(admin=False)
        feed.leave(admin=True)


async def test_the_feed_stops_with_the_gateway_while_pages_are_open(tmp_path: Path) -> None:
    """A gateway stopping with dashboards open stops the feed, even as a new kind of page wakes it.

    (Python 3.11's wait_for, which the tick once waited in, returned the
    wake-up and dropped the cancellation that came with it: the feed, and the
    gateway's stop, never ended.)
    """
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=60) as gw:
        feed = gw.state.feed
        feed.join(admin=True)
        await until(lambda: feed.frame is not None)
        feed.join(admin=False)  # wakes the tick at once, for its snapshot
        closing = asyncio.ensure_future(feed.close())
        done, _ = await asyncio.wait({closing}, timeout=5)
        assert done, "the feed did not stop"
        feed.leave(admin=False)
        feed.leave(admin=True)
