"""Sleep as an eviction tier, in-process: evictions ask to sleep, requests wake, sleepers win.

The scripted nodes sleep and wake as a neuron with ``sleep_memory_gb`` does
(``ScriptedNode(sleep_memory_gib=...)``): an unload asking to sleep keeps the
model's engine, holding host memory; its next load is a wake, not an engine
start (``node.wakes``, not ``node.loads``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from gateway_harness import Harness, serve, until

from cortex_core.units import GIB
from cortex_gateway.cli import render_status
from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE = """
[[models]]
id = "fake/a"
memory_gb = 16

[[models]]
id = "fake/b"
memory_gb = 16
"""
MODELS = [
    ScriptedModel("fake/a", memory_gib=16, wake_s=0.05),
    ScriptedModel("fake/b", memory_gib=16),
]


def sleepy(name: str = "beast", sleep_gib: float | None = 64) -> ScriptedNode:
    """A one-GPU node (24 GiB: one model at a time) that lets models sleep in ``sleep_gib``."""
    return ScriptedNode(name, gpus=[24], sleep_memory_gib=sleep_gib)


async def a_then_b(gw: Harness) -> None:
    """Serve fake/a, then fake/b: fake/a is evicted (lru) to make room."""
    assert (await gw.chat("fake/a")).status_code == 200
    assert (await gw.chat("fake/b")).status_code == 200


async def test_an_lru_eviction_puts_the_model_to_sleep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The victim sleeps (its GPU memory freed, its weights in host memory): said once each."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, [sleepy()], CATALOGUE, models=MODELS) as gw:
        await a_then_b(gw)
        beast = gw.node("beast")
        assert "sleep fake/a" in beast.calls
        assert beast.models["fake/a"].state == "sleeping"
        held = beast.models["fake/a"].host_memory_bytes
        assert held == 16 * GIB
        slept = [e for e in gw.state.timeline.since() if e.kind == "slept"]
        assert [(e.node, e.model, e.reason, e.host_bytes) for e in slept] == [
            ("beast", "fake/a", "lru", held)
        ]
        labels = {"model": "fake/a", "reason": "lru"}
        assert await gw.metric("cortex_model_evictions_total", outcome="slept", **labels) == 1
        assert await gw.metric("cortex_model_evictions_total", outcome="unloaded") == 0
        assert await gw.metric("cortex_model_unloads_total", outcome="slept", **labels) == 1
        assert await gw.metric("cortex_node_sleeping_bytes", node="beast") == held
        [line] = [r for r in caplog.records if r.getMessage() == "model slept"]
        assert vars(line)["host_memory_bytes"] == held


async def test_a_request_wakes_the_sleeper_without_an_engine_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A request for a sleeping model wakes it where it sleeps: a wake, timed as one."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, [sleepy()], CATALOGUE, models=MODELS) as gw:
        await a_then_b(gw)
        answer = await gw.chat("fake/a")
        assert answer.status_code == 200
        assert answer.headers["x-cortex-node"] == "beast"
        beast = gw.node("beast")
        assert (beast.loads, beast.wakes) == (2, 1)
        assert beast.models["fake/b"].state == "sleeping"  # it made room in turn
        timeline = gw.state.timeline.since()
        woke = [e for e in timeline if e.kind == "loaded" and e.model == "fake/a"]
        assert [e.wake for e in woke] == [False, True]
        assert woke[1].seconds is not None
        started = [e.wake for e in timeline if e.kind == "load_started" and e.model == "fake/a"]
        assert started == [False, True]
        assert await gw.metric("cortex_model_loads_total", model="fake/a", kind="wake") == 1
        assert await gw.metric("cortex_model_loads_total", model="fake/a", kind="cold") == 1
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("waking model") == 1
        assert messages.count("model woken") == 1


async def test_a_sleeper_is_woken_rather_than_loaded_cold_on_a_free_node(tmp_path: Path) -> None:
    """The model sleeps on beast, benjy has more room and nothing loaded: beast wakes it."""
    beast, benjy = sleepy("beast"), sleepy("benjy")
    beast.put("fake/a", "sleeping", memory_gib=16)
    beast.put("fake/s", "ready", memory_gib=4)  # less free memory than benjy
    async with serve(tmp_path, [beast, benjy], CATALOGUE, models=MODELS) as gw:
        answer = await gw.chat("fake/a")
        assert answer.status_code == 200
        assert answer.headers["x-cortex-node"] == "beast"
        assert (beast.wakes, benjy.loads) == (1, 0)
        assert "load fake/a" not in benjy.calls


async def test_without_room_to_sleep_the_neuron_unloads_and_the_gateway_says_evicted(
    tmp_path: Path,
) -> None:
    """The gateway asks; a neuron without sleep_memory_gb unloads: the answer's state decides."""
    async with serve(tmp_path, [sleepy(sleep_gib=None)], CATALOGUE, models=MODELS) as gw:
        await a_then_b(gw)
        beast = gw.node("beast")
        assert "sleep fake/a" in beast.calls
        assert "fake/a" not in beast.models
        kinds = [e.kind for e in gw.state.timeline.since() if e.model == "fake/a"]
        assert "evicted" in kinds
        assert "slept" not in kinds
        assert await gw.metric("cortex_model_evictions_total", outcome="unloaded") == 1
        assert await gw.metric("cortex_model_evictions_total", outcome="slept") == 0


async def test_an_idle_model_sleeps_and_an_operators_unload_never_asks_to(
    tmp_path: Path,
) -> None:
    """Idle evictions sleep; an admin unload removes for good, sleepers included."""
    async with serve(
        tmp_path, [sleepy()], CATALOGUE, models=MODELS, eviction={"idle_timeout_s": 0.2}
    ) as gw:
        assert (await gw.chat("fake/a")).status_code == 200
        beast = gw.node("beast")
        await until(lambda: "fake/a" in beast.models and beast.models["fake/a"].state == "sleeping")
        assert await gw.metric("cortex_model_evictions_total", reason="idle", outcome="slept") == 1
        await gw.state.lifecycle.refresh("beast")
        unloaded = await gw.http.post("/admin/models/unload", json={"model": "fake/a"})
        assert unloaded.status_code == 200
        assert unloaded.json()["nodes"] == ["beast"]
        assert "unload fake/a" in beast.calls
        assert "fake/a" not in beast.models


async def test_a_model_outside_the_catalogue_wakes_only_where_it_sleeps(tmp_path: Path) -> None:
    """Loaded by hand, evicted to sleep: a request wakes it there, never loads it cold elsewhere."""
    beast, benjy = sleepy("beast"), sleepy("benjy")
    beast.put("fake/x", "sleeping", memory_gib=4)
    models = [*MODELS, ScriptedModel("fake/x", memory_gib=4)]
    async with serve(tmp_path, [beast, benjy], CATALOGUE, models=models) as gw:
        answer = await gw.chat("fake/x")
        assert answer.status_code == 200
        assert answer.headers["x-cortex-node"] == "beast"
        assert beast.wakes == 1
        assert "load fake/x" not in benjy.calls


async def test_the_dashboard_and_cortex_status_show_a_sleepers_host_memory(
    tmp_path: Path,
) -> None:
    """A sleeper is host memory beside the GPU bar, row state sleeping; status says how much."""
    async with serve(tmp_path, [sleepy()], CATALOGUE, models=MODELS) as gw:
        await a_then_b(gw)
        await gw.state.lifecycle.refresh("beast")
        snap = (await gw.http.get("/ui/snapshot")).json()
        [card] = snap["nodes"]
        held = 16 * GIB
        assert card["host_models"] == [{"kind": "sleeping", "bytes": held, "model": "fake/a"}]
        bar_models = [s.get("model") for d in card["devices"] for s in d["segments"]]
        assert bar_models == ["fake/b"]
        row = next(r for r in snap["models"] if r["id"] == "fake/a")
        [place] = row["placements"]
        assert (place["state"], place["host_memory_bytes"]) == ("sleeping", held)
        fleet = (await gw.http.get("/admin/fleet")).json()
        assert fleet["nodes"][0]["sleeping_bytes"] == held
        text = render_status(fleet)
        assert "host memory held by sleeping models: 16.0 GiB" in text
        assert "sleeping (16.0 GiB host)" in text
