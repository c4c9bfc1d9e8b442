"""The lifecycle in-process: cold loads, evictions, retries, pinned and idle models, new states."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gateway_harness import serve, until

from cortex_core.neuron_api import ModelInfo, ModelsResponse
from cortex_core.wire import decode
from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def quick_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifecycle's fixed waits, shortened: the tests are about what happens, not when."""
    monkeypatch.setattr("cortex_gateway.poller.WATCH_EVERY_S", 0.1)
    monkeypatch.setattr("cortex_gateway.state.FLUSH_S", 0.05)


def catalogue(*entries: str) -> str:
    """A models.toml of ``[[models]]`` entries given as TOML bodies."""
    return "".join(f"[[models]]\n{entry}\n" for entry in entries)


async def test_concurrent_requests_for_a_cold_model_load_it_once(tmp_path: Path) -> None:
    """Ten requests for an unloaded model: one load, ten answers."""
    models = [ScriptedModel("fake/a", memory_gib=4, load_s=0.2)]
    async with serve(
        tmp_path, [ScriptedNode("beast")], catalogue('id = "fake/a"'), models=models
    ) as gw:
        answers = await asyncio.gather(*(gw.chat("fake/a") for _ in range(10)))
        assert [a.status_code for a in answers] == [200] * 10
        assert gw.node("beast").calls.count("load fake/a") == 1
        loads = await gw.metric("cortex_model_loads_total", model="fake/a", outcome="ready")
        assert loads == 1


async def test_lru_eviction_never_takes_the_pinned_model(tmp_path: Path) -> None:
    """A full GPU: the least recently used unpinned model goes, the pinned one stays."""
    models = [ScriptedModel(f"fake/{n}", memory_gib=8) for n in "pabc"]
    toml = catalogue(
        'id = "fake/p"\nmemory_gb = 8\npinned = true',
        'id = "fake/a"\nmemory_gb = 8',
        'id = "fake/b"\nmemory_gb = 8',
        'id = "fake/c"\nmemory_gb = 8',
    )
    async with serve(tmp_path, [ScriptedNode("beast", gpus=[24])], toml, models=models) as gw:
        await until(lambda: gw.node("beast").ready("fake/p"))
        await gw.chat("fake/a")
        await gw.chat("fake/b")  # the GPU is full now: p, a, b
        await gw.chat("fake/a")  # a used after b
        assert (await gw.chat("fake/c")).status_code == 200
        assert sorted(gw.node("beast").models) == ["fake/a", "fake/c", "fake/p"]
        evictions = await gw.metric("cortex_model_evictions_total", model="fake/b", reason="lru")
        assert evictions == 1


async def test_priority_eviction_takes_the_lowest_priority(tmp_path: Path) -> None:
    """With strategy priority, the lowest priority goes first, however recently it was used."""
    models = [ScriptedModel(f"fake/{n}", memory_gib=12) for n in "abc"]
    toml = catalogue(
        'id = "fake/a"\nmemory_gb = 12\npriority = 10',
        'id = "fake/b"\nmemory_gb = 12\npriority = 90',
        'id = "fake/c"\nmemory_gb = 12',
    )
    async with serve(
        tmp_path,
        [ScriptedNode("beast", gpus=[24])],
        toml,
        models=models,
        eviction={"strategy": "priority"},
    ) as gw:
        await gw.chat("fake/b")
        await gw.chat("fake/a")
        assert (await gw.chat("fake/c")).status_code == 200
        assert sorted(gw.node("beast").models) == ["fake/b", "fake/c"]
        assert await gw.metric("cortex_model_evictions_total", reason="priority") == 1


async def test_the_neurons_own_figure_replans_the_evictions(tmp_path: Path) -> None:
    """The catalogue says 4 GiB, the neuron needs 16: the gateway plans again and evicts."""
    models = [ScriptedModel("fake/a", memory_gib=10), ScriptedModel("fake/b", memory_gib=16)]
    toml = catalogue('id = "fake/a"\nmemory_gb = 10', 'id = "fake/b"\nmemory_gb = 4')
    async with serve(tmp_path, [ScriptedNode("beast", gpus=[24])], toml, models=models) as gw:
        await gw.chat("fake/a")
        assert (await gw.chat("fake/b")).status_code == 200
        assert list(gw.node("beast").models) == ["fake/b"]
        assert gw.node("beast").calls.count("load fake/b") == 2


async def test_a_cpu_node_frees_one_model_at_a_time_until_it_fits(tmp_path: Path) -> None:
    """A CPU neuron's memory is only known to it: evict by strategy and ask again."""
    models = [ScriptedModel(f"fake/{n}", memory_gib=4) for n in "abc"]
    toml = catalogue('id = "fake/a"', 'id = "fake/b"', 'id = "fake/c"')
    node = ScriptedNode("cpu", gpus=[], host_memory_gib=8)
    async with serve(tmp_path, [node], toml, models=models) as gw:
        await gw.chat("fake/a")
        await gw.chat("fake/b")
        assert (await gw.chat("fake/c")).status_code == 200
        assert sorted(node.models) == ["fake/b", "fake/c"]


async def test_a_cpu_node_with_nothing_to_evict_is_left_out(tmp_path: Path) -> None:
    """Nothing may go on the only node: the model cannot be placed (503)."""
    models = [ScriptedModel("fake/big", memory_gib=16)]
    node = ScriptedNode("cpu", gpus=[], host_memory_gib=8)
    async with serve(tmp_path, [node], catalogue('id = "fake/big"'), models=models) as gw:
        response = await gw.chat("fake/big")
        assert response.status_code == 503
        assert "cannot be placed" in response.json()["error"]["message"]


async def test_a_failed_load_moves_to_another_node(tmp_path: Path) -> None:
    """A load that fails on one node is tried on the next; the failure is counted."""
    first = ScriptedNode("first", gpus=[24])
    second = ScriptedNode("second", gpus=[24])
    models = [ScriptedModel("fake/a", memory_gib=4)]
    toml = catalogue('id = "fake/a"\nmemory_gb = 4')
    async with serve(tmp_path, [first, second], toml, models=models) as gw:
        first.stop()
        await gw.state.lifecycle.refresh("first")
        first.start()  # up again, but the gateway's poll has not seen it yet
        response = await gw.chat("fake/a")
        assert response.status_code == 200
        assert response.headers["x-cortex-node"] in {"first", "second"}


async def test_load_failures_exclude_the_node_then_give_up(tmp_path: Path) -> None:
    """A model whose engine fails everywhere: each node tried once, then 503 naming why."""
    models = [ScriptedModel("fake/a", memory_gib=4, fail="load_failed")]
    nodes = [ScriptedNode("one", gpus=[24]), ScriptedNode("two", gpus=[24])]
    async with serve(tmp_path, nodes, catalogue('id = "fake/a"'), models=models) as gw:
        response = await gw.chat("fake/a")
        assert response.status_code == 503
        assert nodes[0].calls.count("load fake/a") == 1
        assert nodes[1].calls.count("load fake/a") == 1
        failed = await gw.metric("cortex_model_loads_total", model="fake/a", outcome="failed")
        assert failed == 2


async def test_a_load_slower_than_load_timeout_is_a_503(tmp_path: Path) -> None:
    """The client waits load_timeout_s at most; the load itself carries on."""
    models = [ScriptedModel("fake/a", load_s=0.5)]
    async with serve(
        tmp_path,
        [ScriptedNode("beast")],
        catalogue('id = "fake/a"'),
        models=models,
        load_timeout_s=0.1,
    ) as gw:
        response = await gw.chat("fake/a")
        assert response.status_code == 503
        assert "did not finish loading in time" in response.json()["error"]["message"]


async def test_a_model_loading_elsewhere_is_waited_for(tmp_path: Path) -> None:
    """A load started by someone else: requests wait for it instead of loading again."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], catalogue('id = "fake/a"'), poll_interval_s=3600
    ) as gw:
        beast = gw.node("beast")
        beast.put("fake/a", "loading")
        await gw.state.lifecycle.refresh("beast")

        async def finish_loading() -> None:
            await asyncio.sleep(0.3)
            beast.put("fake/a", "ready")

        waiting = asyncio.ensure_future(finish_loading())
        response = await gw.chat("fake/a")
        await waiting
        assert response.status_code == 200
        assert "load fake/a" not in beast.calls


async def test_idle_models_are_unloaded(tmp_path: Path) -> None:
    """A model unused for idle_timeout_s goes; a pinned one stays."""
    models = [ScriptedModel("fake/a"), ScriptedModel("fake/p")]
    toml = catalogue('id = "fake/a"', 'id = "fake/p"\npinned = true')
    async with serve(
        tmp_path,
        [ScriptedNode("beast")],
        toml,
        models=models,
        eviction={"idle_timeout_s": 0.2},
    ) as gw:
        await gw.chat("fake/a")
        await until(lambda: "fake/a" not in gw.node("beast").models)
        assert list(gw.node("beast").models) == ["fake/p"]
        assert await gw.metric("cortex_model_evictions_total", reason="idle") == 1


async def test_defragmenting_moves_the_smallest_idle_model(tmp_path: Path) -> None:
    """Free memory split over two GPUs so a one-GPU model fits nowhere: the smallest moves."""
    models = [
        ScriptedModel("fake/x", memory_gib=6),
        ScriptedModel("fake/y", memory_gib=8),
        ScriptedModel("fake/z", memory_gib=8),
        ScriptedModel("fake/w", memory_gib=10),
    ]
    toml = catalogue(
        'id = "fake/x"\nmemory_gb = 6',
        'id = "fake/y"\nmemory_gb = 8',
        'id = "fake/z"\nmemory_gb = 8',
        'id = "fake/w"\nmemory_gb = 10',
    )
    async with serve(
        tmp_path,
        [ScriptedNode("beast", gpus=[12, 12])],
        toml,
        models=models,
        poll_interval_s=3600,
    ) as gw:
        life = gw.state.lifecycle
        beast = gw.node("beast")
        await gw.chat("fake/x")
        await gw.chat("fake/y")
        await life.loads.defragment()  # 6 + 8 on separate GPUs: 6 and 4 free, so 10 fits nowhere
        assert beast.calls.count("unload fake/x") == 1
        await until(lambda: beast.ready("fake/x"))
        assert await gw.metric("cortex_model_evictions_total", reason="defrag") == 1


async def test_a_newer_neurons_unknown_state_keeps_the_node_up(tmp_path: Path) -> None:
    """A model in a state this gateway does not know: 503 for it, the node and the rest serve."""
    toml = catalogue('id = "fake/a"', 'id = "fake/b"')
    models = [ScriptedModel("fake/a"), ScriptedModel("fake/b")]
    async with serve(
        tmp_path, [ScriptedNode("beast")], toml, models=models, poll_interval_s=3600
    ) as gw:
        beast = gw.node("beast")
        beast.put("fake/a", "migrating")
        await gw.state.lifecycle.refresh("beast")
        assert gw.state.lifecycle.fleet.nodes["beast"].up
        migrating = await gw.chat("fake/a")
        assert migrating.status_code == 503
        assert "'migrating'" in migrating.json()["error"]["message"]
        assert (await gw.chat("fake/b")).status_code == 200
        listing = (await gw.http.get("/v1/models")).json()["data"]
        assert [m["loaded"] for m in listing] == [False, True]


def test_a_future_neurons_models_answer_decodes() -> None:
    """A /models answer from a newer neuron: unknown states and fields decode, known ones too."""
    answer = b"""{"models": [
        {"id": "a", "state": "migrating", "resume_s": 2, "memory_bytes": 5},
        {"id": "b", "state": "ready", "quantization": {"bits": 4}}
    ], "cluster": "x"}"""
    models = decode(answer, ModelsResponse).models
    assert [(m.id, m.state) for m in models] == [("a", "migrating"), ("b", "ready")]
    assert isinstance(models[0], ModelInfo)


async def test_a_node_coming_back_is_seen_by_the_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Down, then up: one log line each way, and its models are routed again."""
    caplog.set_level("INFO", "cortex_gateway")
    async with serve(
        tmp_path,
        [ScriptedNode("beast")],
        catalogue('id = "fake/a"'),
        models=[ScriptedModel("fake/a")],
    ) as gw:
        await gw.chat("fake/a")
        life = gw.state.lifecycle
        gw.node("beast").stop()
        await until(lambda: not life.fleet.nodes["beast"].up)
        down = await gw.chat("fake/a")
        assert down.status_code == 503
        gw.node("beast").start()
        await until(lambda: life.fleet.nodes["beast"].up)
        assert (await gw.chat("fake/a")).status_code == 200
    events = [r.getMessage() for r in caplog.records if r.getMessage().startswith("neuron")]
    assert events == ["neuron up", "neuron down", "neuron up"]  # the first poll, then each change
