"""``/ui``: the page and its assets (open, strict CSP), the data routes (keyed), the stream."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import serve, until

from cortex_gateway.routes.ui import UiRoutes
from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE = """
[[models]]
id = "fake/small"
memory_gb = 4
priority = 70

[[models]]
id = "fake/big"
memory_gb = 21
nodes = ["a"]

[[models]]
id = "fake/broken"
memory_gb = 2

[aliases]
"helexa/fast" = "fake/small"
"""
MODELS = [
    ScriptedModel("fake/small", memory_gib=4),
    ScriptedModel("fake/big", memory_gib=21),
    ScriptedModel("fake/broken", memory_gib=2, fail="load_failed"),
]


def fleet() -> list[ScriptedNode]:
    a, cpu = ScriptedNode("a", (24,)), ScriptedNode("cpu", ())
    a.put("fake/small", "ready", memory_gib=4)
    return [a, cpu]


async def test_the_page_and_assets_are_open_with_a_strict_policy_and_no_inline_code(
    tmp_path: Path,
) -> None:
    """No key needed for the page; scripts and styles only from files; nothing inline."""
    async with serve(tmp_path, fleet(), CATALOGUE, models=MODELS, api_keys=["k"]) as gw:
        page = await gw.http.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        html = page.text
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/ui/app.js" defer>']
        assert "</script>" in html
        assert '<script src="/ui/app.js" defer></script>' in html
        assert " style=" not in html
        assert "<style" not in html
        assert " on" + "click=" not in html
        for name, kind in (("app.js", "javascript"), ("app.css", "css"), ("icon.svg", "svg")):
            asset = await gw.http.get(f"/ui/{name}")
            assert asset.status_code == 200
            assert kind in asset.headers["content-type"]
            assert asset.headers["x-content-type-options"] == "nosniff"
        script = (await gw.http.get("/ui/app.js")).text
        assert "innerHTML" not in script
        assert "insertAdjacentHTML" not in script
        assert "eval(" not in script
        missing = await gw.http.get("/ui/nothing.js")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"]


async def test_data_routes_take_a_key_and_say_whether_it_is_an_admin_one(tmp_path: Path) -> None:
    """An API key sees the fleet (no endpoints); an admin key also gets the actions."""
    async with serve(
        tmp_path, fleet(), CATALOGUE, models=MODELS, api_keys=["user"], admin_keys=["root"]
    ) as gw:
        assert (await gw.http.get("/ui/snapshot")).status_code == 401
        assert (await gw.http.get("/ui/events")).status_code == 401
        assert (await gw.http.get("/ui/activity")).status_code == 401
        user = await gw.http.get("/ui/snapshot", headers={"authorization": "Bearer user"})
        root = await gw.http.get("/ui/snapshot", headers={"authorization": "Bearer root"})
        assert user.status_code == root.status_code == 200
        assert user.json()["admin"] is False
        assert root.json()["admin"] is True
        assert {n["endpoint"] for n in user.json()["nodes"]} == {None}
        assert None not in {n["endpoint"] for n in root.json()["nodes"]}


async def test_the_snapshot_shows_bars_cpu_hosts_models_aliases_and_failures(
    tmp_path: Path,
) -> None:
    """Device segments per loaded model, CPU hosts as such, rows for models and aliases."""
    async with serve(tmp_path, fleet(), CATALOGUE, models=MODELS) as gw:
        failed = await gw.http.post("/admin/models/load", json={"model": "fake/broken"})
        assert failed.status_code >= 500
        life = gw.state.lifecycle
        await until(lambda: any(n.model("fake/broken") for n in life.fleet.nodes.values()))
        snap = (await gw.http.get("/ui/snapshot")).json()
        nodes = {n["name"]: n for n in snap["nodes"]}
        (gpu,) = nodes["a"]["devices"]
        assert gpu["total"] == 24 << 30
        assert {"kind": "ready", "bytes": 4 << 30, "model": "fake/small"} in gpu["segments"]
        assert nodes["cpu"]["cpu_only"] is True
        assert nodes["cpu"]["devices"] == []
        assert nodes["a"]["up"] is True
        assert nodes["a"]["since"] is not None
        rows = {m["id"]: m for m in snap["models"]}
        assert rows["fake/small"]["priority"] == 70
        assert rows["fake/small"]["placements"][0]["node"] == "a"
        assert rows["fake/small"]["placements"][0]["state"] == "ready"
        assert rows["fake/big"]["feasible_on"] == ["a"]
        assert rows["helexa/fast"]["alias_of"] == "fake/small"
        broken = [p for p in rows["fake/broken"]["placements"] if p["state"] == "failed"]
        assert broken
        assert "scripted failure" in broken[0]["error"]


async def test_the_snapshot_says_each_models_task(tmp_path: Path) -> None:
    """Rows carry the model's task (the page tags embedding models, and chats only with others)."""
    catalogue = CATALOGUE + '\n[[models]]\nid = "fake/embedder"\nmemory_gb = 1\ntask = "embed"\n'
    async with serve(tmp_path, fleet(), catalogue, models=MODELS) as gw:
        snap = (await gw.http.get("/ui/snapshot")).json()
        tasks = {m["id"]: m["task"] for m in snap["models"]}
        assert tasks["fake/embedder"] == "embed"
        assert tasks["fake/small"] == tasks["helexa/fast"] == "generate"


async def test_a_down_nodes_models_show_as_unavailable_until_it_is_back(tmp_path: Path) -> None:
    """What a node said of its models before it went down is not shown as ready."""
    nodes = fleet()
    async with serve(
        tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600, down_after_failed_polls=1
    ) as gw:

        async def placement() -> tuple[bool, str]:
            snap = (await gw.http.get("/ui/snapshot")).json()
            card = next(n for n in snap["nodes"] if n["name"] == "a")
            row = next(m for m in snap["models"] if m["id"] == "fake/small")
            return card["up"], row["placements"][0]["state"]

        assert await placement() == (True, "ready")
        nodes[0].stop()
        await gw.state.lifecycle.refresh("a")
        assert await placement() == (False, "unavailable")
        nodes[0].start()
        await gw.state.lifecycle.refresh("a")
        assert await placement() == (True, "ready")


async def test_the_timeline_records_loads_unloads_evictions_and_nodes(tmp_path: Path) -> None:
    """Each with what an operator asks: how long a load took, why a model went."""
    nodes = fleet()
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS) as gw:
        timeline = gw.state.timeline
        assert (
            await gw.http.post("/admin/models/load", json={"model": "fake/big"})
        ).status_code == 200
        unloaded = await gw.http.post(
            "/admin/models/unload", json={"model": "fake/big", "node": "a"}
        )
        assert unloaded.status_code == 200
        nodes[1].stop()
        await until(lambda: any(e.kind == "node_down" for e in timeline.since()))
        events = [(e.kind, e.node, e.model, e.reason) for e in timeline.since()]
        assert ("evicted", "a", "fake/small", "lru") in events
        assert ("load_started", "a", "fake/big", None) in events
        assert ("unloaded", "a", "fake/big", "admin") in events
        (down,) = [e for e in timeline.since() if e.kind == "node_down"]
        assert down.node == "cpu"
        assert down.reason
        assert "cannot connect" in down.reason
        loaded = [e for e in timeline.since() if e.kind == "loaded"]
        assert loaded
        assert loaded[0].seconds is not None


async def test_activity_counts_inference_requests_per_model(tmp_path: Path) -> None:
    """Answered and failed requests, tokens and TTFT, for the model and for all."""
    async with serve(tmp_path, fleet(), CATALOGUE, models=MODELS) as gw:
        for _ in range(3):
            assert (await gw.chat("helexa/fast")).status_code == 200
        assert (await gw.chat("nobody/none")).status_code == 404
        small = (await gw.http.get("/ui/activity", params={"model": "fake/small"})).json()
        every = (await gw.http.get("/ui/activity")).json()
        assert sum(small["requests"]) * small["step"] == pytest.approx(3)
        assert sum(every["requests"]) * every["step"] == pytest.approx(4)
        assert sum(every["errors"]) * every["step"] == pytest.approx(1)
        assert sum(small["tokens"]) > 0
        assert any(v is not None for v in small["ttft_p50"])
        big = await gw.http.get("/ui/activity", params={"model": "fake/big"})
        assert big.status_code == 200
        assert sum(big.json()["requests"]) == 0
        unknown = await gw.http.get("/ui/activity", params={"model": "no/such"})
        assert unknown.status_code == 404


def events(chunks: list[bytes]) -> list[tuple[str, Any]]:
    """``(event, data)`` of each server-sent event in ``chunks``."""
    found = []
    for block in b"".join(chunks).split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"event" in lines:
            found.append((lines[b"event"].decode(), json.loads(lines[b"data"])))
    return found


async def test_the_stream_sends_snapshot_timeline_and_activity_then_changes_only(
    tmp_path: Path,
) -> None:
    """The first events carry everything; then only what changed (a node down); a drain ends it."""
    nodes = fleet()
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS) as gw:
        ui = UiRoutes(gw.state)
        ui.feed.join(admin=True)
        stream = ui.stream(admin=True)
        chunks = [await anext(stream) for _ in range(4)]
        assert chunks[0].startswith(b"retry: ")
        first = events(chunks)
        assert [kind for kind, _ in first] == ["snapshot", "timeline", "activity"]
        assert {n["name"] for n in first[0][1]["nodes"]} == {"a", "cpu"}
        assert {e["kind"] for e in first[1][1]} == {"node_up"}
        assert first[2][1]["all"]["step"] == 5.0
        nodes[1].stop()
        later: list[bytes] = []
        while not any(kind == "timeline" for kind, _ in events(later)):
            later.append(await anext(stream))
        sent = events(later)
        assert "snapshot" not in [kind for kind, _ in sent]
        timeline = [data for kind, data in sent if kind == "timeline"]
        assert [e["kind"] for e in timeline[-1]] == ["node_down"]
        changed = [data for kind, data in sent if kind == "changes"]
        assert {n["name"]: n["up"] for c in changed for n in c["nodes"]} == {"cpu": False}
        assert all(c["time"] > 0 for c in changed)
        gw.state.draining = True
        rest = [chunk async for chunk in stream]
        assert len(rest) <= 3  # what was due; then the stream ends
        gw.state.draining = False
        ui.feed.leave(admin=True)


async def test_a_key_that_is_not_an_admin_key_sees_no_address(tmp_path: Path) -> None:
    """Neither as a node's endpoint nor inside its error text or a timeline event's reason."""
    nodes = fleet()
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, down_after_failed_polls=1) as gw:
        nodes[1].stop()
        await gw.state.lifecycle.refresh("cpu")
        ui = UiRoutes(gw.state)
        for admin in (True, False):
            ui.feed.join(admin)
            stream = ui.stream(admin)
            sent = dict(events([await anext(stream) for _ in range(4)]))
            card = {n["name"]: n for n in sent["snapshot"]["nodes"]}["cpu"]
            reasons = [e["reason"] for e in sent["timeline"] if e["kind"] == "node_down"]
            if admin:
                assert "cannot connect to http://cpu.scripted:13131" in card["error"]
                assert card["endpoint"] == "http://cpu.scripted:13131"
                assert "http://cpu.scripted:13131" in reasons[0]
            else:
                assert card["endpoint"] is None
                assert card["error"] == "ClientConnectorError: cannot connect to <address>"
                assert reasons == ["ClientConnectorError: cannot connect to <address>"]
            await stream.aclose()  # type: ignore[attr-defined]
            ui.feed.leave(admin)
