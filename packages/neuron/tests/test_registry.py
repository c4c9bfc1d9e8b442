"""The registry's model lifecycle, driven through a scripted engine at the protocol seam."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

import neuron.registry as registry_module
from cortex_core.config import NeuronConfig, NeuronSection, SourceConfig
from cortex_core.neuron_api import Device, LoadRequest, ModelInfo, UnloadResponse
from cortex_core.units import GIB
from neuron.errors import NeuronError
from neuron.preflight import CPU_OVERHEAD_BYTES, GPU_OVERHEAD_BYTES, MIN_KV_BYTES
from neuron.registry import LoadEvent, Registry
from neuron.sources import Sources
from neuron.testing.models import write_fake_model
from neuron.testing.scripted import ScriptedEngine, ScriptedFactory

WEIGHTS_BYTES = 4096
NEEDED_CPU = WEIGHTS_BYTES + MIN_KV_BYTES + CPU_OVERHEAD_BYTES
"""What preflight plans for one test model on the CPU: weights, the minimum KV cache, overhead."""
NEEDED_GPU = WEIGHTS_BYTES + MIN_KV_BYTES + GPU_OVERHEAD_BYTES


def write_model(root: Path, concrete: str, **overrides: Any) -> Path:
    """Write a model folder (config.json and fake weights) under a path source's root."""
    return write_fake_model(root, concrete, WEIGHTS_BYTES, **overrides)


@dataclass
class Setup:
    """A neuron configuration over a local source holding test models."""

    config: NeuronConfig
    models: Path

    def registry(
        self,
        factory: ScriptedFactory,
        *,
        host_free: int = 64 * GIB,
        devices: Callable[[], list[Device]] = list,
    ) -> Registry:
        """A registry over this configuration; build it inside the test's event loop."""
        return Registry(
            self.config,
            factory,
            Sources(self.config),
            devices=devices,
            host_free=lambda: host_free,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A local source with test/tiny, test/other and test/exotic (an unsupported architecture)."""
    models = tmp_path / "models"
    write_model(models, "test/tiny")
    write_model(models, "test/other")
    write_model(models, "test/exotic", architectures=["MambaForCausalLM"])
    config = NeuronConfig(
        neuron=NeuronSection(name="t", cache_dir=str(tmp_path / "cache"), default_source="local"),
        sources={"local": SourceConfig(path=str(models))},
        engine={"enforce_eager": True},
    )
    return Setup(config=config, models=models)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one async test body in a fresh event loop."""
    asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds, failing after about five seconds."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached in time")


def is_stopped(engine: ScriptedEngine) -> bool:
    """Whether ``engine`` was shut down (read afresh, not narrowed by an earlier assert)."""
    return engine.stopped


def state_of(registry: Registry, model_id: str) -> str | None:
    """The state ``models()`` shows for ``model_id``, or ``None`` when it is absent."""
    return next((m.state for m in registry.models() if m.id == model_id), None)


def gated() -> ScriptedFactory:
    """A factory whose engine starts wait until its gate is set."""
    return ScriptedFactory(gate=asyncio.Event())


# --- loading ---------------------------------------------------------------------------


def test_load_returns_ready_info(setup: Setup) -> None:
    """A load with wait answers the ready model with its plan, context length and times."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        info = await registry.load(LoadRequest(model="test/tiny"))
        assert info.id == "test/tiny"
        assert info.source == "local"
        assert info.state == "ready"
        assert info.devices == []
        assert info.memory_bytes == NEEDED_CPU
        assert info.max_model_len == 2048
        assert info.loaded_at is not None
        assert info.last_used == info.loaded_at
        assert info.in_flight == 0
        assert info.error is None
        assert info.phase is None
        assert registry.models() == [info]
        assert factory.starts == 1
        assert factory.started[0].spec.path == setup.models / "test" / "tiny"
        await registry.close()

    run(main)


def test_load_merges_engine_defaults_under_request_options(setup: Setup) -> None:
    """The neuron's [engine] options reach the engine, with the load's own options on top."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        info = await registry.load(
            LoadRequest(model="test/tiny", options={"max_model_len": 1024, "dtype": "bfloat16"})
        )
        assert info.max_model_len == 1024
        options = factory.started[0].spec.options
        assert options["enforce_eager"] is True
        assert options["dtype"] == "bfloat16"
        assert options["max_model_len"] == 1024
        assert options["kv_cache_memory_bytes"] == MIN_KV_BYTES
        await registry.close()

    run(main)


def test_load_of_a_ready_model_answers_at_once(setup: Setup) -> None:
    """Loading a model that is already ready starts nothing and answers it as it is."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        first = await registry.load(LoadRequest(model="test/tiny"))
        second = await registry.load(LoadRequest(model="test/tiny"))
        assert second.state == "ready"
        assert second.loaded_at == first.loaded_at
        assert factory.starts == 1
        await registry.close()

    run(main)


def test_concurrent_loads_join(setup: Setup) -> None:
    """Two loads of a model still loading share one engine start and both end ready."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory)
        first = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await until(lambda: factory.starts == 1)
        second = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await asyncio.sleep(0.01)
        assert not first.done()
        assert not second.done()
        assert factory.gate is not None
        factory.gate.set()
        infos = await asyncio.gather(first, second)
        assert [i.state for i in infos] == ["ready", "ready"]
        assert factory.starts == 1
        assert len(registry.models()) == 1
        await registry.close()

    run(main)


def test_qualified_and_concrete_ids_join(setup: Setup) -> None:
    """``local:test/tiny`` and ``test/tiny`` (local being the default) are one model."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory)
        first = asyncio.create_task(registry.load(LoadRequest(model="local:test/tiny")))
        await until(lambda: factory.starts == 1)
        second = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await asyncio.sleep(0.01)
        assert factory.gate is not None
        factory.gate.set()
        infos = await asyncio.gather(first, second)
        assert {i.id for i in infos} == {"test/tiny"}
        assert factory.starts == 1
        assert [m.id for m in registry.models()] == ["test/tiny"]
        await registry.close()

    run(main)


def test_load_without_wait_answers_loading_then_becomes_ready(setup: Setup) -> None:
    """With wait=False the answer comes once preflight passed, in state loading."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory)
        info = await registry.load(LoadRequest(model="test/tiny", wait=False))
        assert info.state == "loading"
        assert info.memory_bytes == NEEDED_CPU
        await until(lambda: factory.starts == 1)
        [shown] = registry.models()
        assert shown.state == "loading"
        assert shown.phase == "starting"
        assert factory.gate is not None
        factory.gate.set()
        await until(lambda: state_of(registry, "test/tiny") == "ready")
        await registry.close()

    run(main)


def test_load_without_wait_reports_preflight_failures(setup: Setup) -> None:
    """With wait=False a preflight refusal is still raised, not answered as loading."""

    async def main() -> None:
        registry = setup.registry(ScriptedFactory())
        with pytest.raises(NeuronError) as caught:
            await registry.load(LoadRequest(model="test/missing", wait=False))
        assert caught.value.code == "model_not_found"
        assert registry.models() == []
        await registry.close()

    run(main)


def test_cancelled_caller_does_not_cancel_the_load(setup: Setup) -> None:
    """A caller that goes away while waiting leaves the load running to ready."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory)
        waiter = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await until(lambda: factory.starts == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert state_of(registry, "test/tiny") == "loading"
        assert factory.gate is not None
        factory.gate.set()
        await until(lambda: state_of(registry, "test/tiny") == "ready")
        assert factory.starts == 1
        await registry.close()

    run(main)


@pytest.mark.parametrize(
    ("request_", "code", "status"),
    [
        (LoadRequest(model="not-an-id"), "invalid_model_id", 422),
        (LoadRequest(model="a/b/c"), "invalid_model_id", 422),
        (LoadRequest(model="nowhere:test/tiny"), "unknown_source", 422),
        (LoadRequest(model="test/missing"), "model_not_found", 404),
        (LoadRequest(model="test/exotic"), "unsupported_model", 422),
        (LoadRequest(model="test/tiny", options={"bogus": 1}), "invalid_option", 422),
        (LoadRequest(model="test/tiny", options={"max_model_len": 4096}), "invalid_option", 422),
        (LoadRequest(model="test/tiny", devices=[0]), "invalid_request", 400),
    ],
    ids=[
        "invalid-id",
        "two-slashes",
        "unknown-source",
        "missing",
        "unsupported",
        "unknown-option",
        "too-long-context",
        "gpu-on-cpu-host",
    ],
)
def test_preflight_refusals_leave_no_entry(
    setup: Setup, request_: LoadRequest, code: str, status: int
) -> None:
    """A load refused before any memory is touched raises its code and leaves nothing behind."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        with pytest.raises(NeuronError) as caught:
            await registry.load(request_)
        assert caught.value.code == code
        assert caught.value.status == status
        assert registry.models() == []
        assert factory.starts == 0
        await registry.close()

    run(main)


def test_insufficient_host_memory_is_refused_with_details(setup: Setup) -> None:
    """A model that does not fit the host's free memory is refused with what it needs."""

    async def main() -> None:
        registry = setup.registry(ScriptedFactory(), host_free=NEEDED_CPU - 1)
        with pytest.raises(NeuronError) as caught:
            await registry.load(LoadRequest(model="test/tiny"))
        assert caught.value.code == "insufficient_memory"
        assert caught.value.status == 409
        assert caught.value.details["needed_bytes"] == NEEDED_CPU
        assert caught.value.details["devices"] == []
        assert registry.models() == []
        await registry.close()

    run(main)


def test_engine_failure_leaves_a_failed_entry(setup: Setup) -> None:
    """An engine that fails to start raises load_failed (500) and shows a failed entry."""

    async def main() -> None:
        factory = ScriptedFactory(fail_with="out of cheese")
        registry = setup.registry(factory)
        with pytest.raises(NeuronError) as caught:
            await registry.load(LoadRequest(model="test/tiny"))
        assert caught.value.code == "load_failed"
        assert caught.value.status == 500
        assert "out of cheese" in caught.value.message
        [info] = registry.models()
        assert info.state == "failed"
        assert info.error is not None
        assert "out of cheese" in info.error
        assert info.max_model_len is None
        with pytest.raises(NeuronError) as not_ready:
            registry.acquire("test/tiny")
        assert not_ready.value.code == "not_loaded"
        await registry.close()

    run(main)


def test_load_after_failure_retries(setup: Setup) -> None:
    """Loading a model whose last load failed starts the engine again."""

    async def main() -> None:
        factory = ScriptedFactory(fail_with="transient")
        registry = setup.registry(factory)
        with pytest.raises(NeuronError):
            await registry.load(LoadRequest(model="test/tiny"))
        factory.fail_with = None
        info = await registry.load(LoadRequest(model="test/tiny"))
        assert info.state == "ready"
        assert info.error is None
        assert factory.starts == 2
        await registry.close()

    run(main)


def test_load_events_report_outcomes_and_phases(setup: Setup) -> None:
    """Subscribers hear every load's model, outcome, duration and seconds per phase."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        seen: list[LoadEvent] = []
        registry.subscribe(seen.append)
        ready = await registry.load(LoadRequest(model="test/tiny"))
        factory.fail_with = "nope"
        with pytest.raises(NeuronError):
            await registry.load(LoadRequest(model="test/other"))
        assert [(e.model, e.outcome, e.kind) for e in seen] == [
            ("test/tiny", "ready", "load"),
            ("test/other", "failed", "load"),
        ]
        assert all(e.seconds >= 0 for e in seen)
        assert list(seen[0].phases) == ["preflight", "fetching", "starting", "serving"]
        assert ready.phase_seconds == seen[0].phases
        assert sum(seen[0].phases.values()) <= seen[0].seconds + 0.01
        # The failed start got as far as starting it; /models keeps the figures.
        assert list(seen[1].phases) == ["preflight", "fetching", "starting"]
        assert registry.entries()["test/other"].info().phase_seconds == seen[1].phases
        await registry.close()

    run(main)


def test_phase_shows_while_loading_and_seconds_once_ready(setup: Setup) -> None:
    """/models names the phase a load is in; once ready, the seconds each phase took instead."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory)
        task = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await until(lambda: factory.starts == 1)
        [loading] = registry.models()
        assert (loading.state, loading.phase, loading.phase_seconds) == ("loading", "starting", {})
        assert factory.gate is not None
        factory.gate.set()
        ready = await task
        assert ready.phase is None
        assert set(ready.phase_seconds) == {"preflight", "fetching", "starting", "serving"}
        await registry.close()

    run(main)


# --- memory reservation ------------------------------------------------------------------


def test_concurrent_loads_do_not_count_the_same_free_memory(setup: Setup) -> None:
    """A load under way reserves its memory: a second load that would not fit is refused."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory, host_free=NEEDED_CPU * 3 // 2)
        first = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await until(lambda: factory.starts == 1)
        with pytest.raises(NeuronError) as caught:
            await registry.load(LoadRequest(model="test/other"))
        assert caught.value.code == "insufficient_memory"
        assert caught.value.details["needed_bytes"] == NEEDED_CPU
        assert [m.id for m in registry.models()] == ["test/tiny"]
        assert factory.gate is not None
        factory.gate.set()
        assert (await first).state == "ready"
        assert factory.starts == 1
        await registry.close()

    run(main)


def test_concurrent_gpu_loads_do_not_count_the_same_free_memory(setup: Setup) -> None:
    """On a GPU, a load under way reserves its share of the device's free memory."""
    gpu = Device(
        index=0,
        name="fake",
        memory_total=8 * GIB,
        memory_free=NEEDED_GPU * 3 // 2,
        memory_used=8 * GIB - NEEDED_GPU * 3 // 2,
    )

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory, devices=lambda: [gpu])
        first = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await until(lambda: factory.starts == 1)
        with pytest.raises(NeuronError) as caught:
            await registry.load(LoadRequest(model="test/other"))
        assert caught.value.code == "insufficient_memory"
        assert caught.value.details["devices"] == [
            {"index": 0, "free_bytes": gpu.memory_free - NEEDED_GPU}
        ]
        assert factory.gate is not None
        factory.gate.set()
        info = await first
        assert info.devices == [0]
        assert info.memory_bytes == NEEDED_GPU
        assert factory.started[0].spec.devices == (0,)
        await registry.close()

    run(main)


def test_failed_start_gives_its_reservation_back(setup: Setup) -> None:
    """Memory reserved for a load whose engine failed is free for the next load."""

    async def main() -> None:
        factory = ScriptedFactory(fail_with="boom")
        registry = setup.registry(factory, host_free=NEEDED_CPU * 3 // 2)
        with pytest.raises(NeuronError):
            await registry.load(LoadRequest(model="test/tiny"))
        factory.fail_with = None
        info = await registry.load(LoadRequest(model="test/other"))
        assert info.state == "ready"
        await registry.close()

    run(main)


def test_load_cancelled_by_close_gives_its_reservation_back(setup: Setup) -> None:
    """A load abandoned at shutdown releases its reservation and leaves no entry."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory, host_free=NEEDED_CPU * 3 // 2)
        waiter = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await until(lambda: factory.starts == 1)
        await registry.close()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert registry.models() == []
        assert factory.gate is not None
        factory.gate.set()
        info = await registry.load(LoadRequest(model="test/other"))
        assert info.state == "ready"
        await registry.close()

    run(main)


# --- serving -----------------------------------------------------------------------------


def test_acquire_and_release_count_requests_in_flight(setup: Setup) -> None:
    """Acquiring hands out the engine and counts the request; releasing uncounts it."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))
        entry, engine = registry.acquire("test/tiny")
        assert engine is factory.started[0]
        assert registry.models()[0].in_flight == 1
        registry.release(entry)
        assert registry.models()[0].in_flight == 0
        assert entry.drained.is_set()
        await registry.close()

    run(main)


def test_acquire_of_a_model_not_ready_is_not_loaded(setup: Setup) -> None:
    """Only ready models can be acquired: unknown and loading ones answer not_loaded."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory)
        with pytest.raises(NeuronError) as unknown:
            registry.acquire("test/tiny")
        assert unknown.value.code == "not_loaded"
        assert unknown.value.status == 404
        await registry.load(LoadRequest(model="test/tiny", wait=False))
        with pytest.raises(NeuronError) as loading:
            registry.acquire("test/tiny")
        assert loading.value.code == "not_loaded"
        assert "loading" in loading.value.message
        assert factory.gate is not None
        factory.gate.set()
        await until(lambda: state_of(registry, "test/tiny") == "ready")
        await registry.close()

    run(main)


async def _source(log: list[str], *chunks: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    try:
        for chunk in chunks:
            yield chunk
        if fail:
            raise RuntimeError("engine broke mid-stream")
    finally:
        log.append("closed")


def test_unload_stops_the_engine_and_removes_the_entry(setup: Setup) -> None:
    """Unloading a ready model shuts its engine down and forgets it."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))
        response = await registry.unload("test/tiny")
        assert response == UnloadResponse(id="test/tiny", state="unloaded", freed_bytes=0)
        assert factory.started[0].stopped
        assert registry.models() == []
        with pytest.raises(NeuronError) as caught:
            registry.acquire("test/tiny")
        assert caught.value.code == "not_loaded"
        await registry.close()

    run(main)


def test_unload_reports_gpu_memory_given_back(setup: Setup) -> None:
    """freed_bytes is the device memory in use before the shutdown less that after it."""
    used = [3 * GIB]

    def devices() -> list[Device]:
        return [
            Device(
                index=0,
                memory_total=8 * GIB,
                memory_used=used[0],
                memory_free=8 * GIB - used[0],
            )
        ]

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory, devices=devices)
        await registry.load(LoadRequest(model="test/tiny"))
        engine = factory.started[0]
        original = engine.shutdown

        async def shutdown() -> None:
            await original()
            used[0] = 1 * GIB

        engine.shutdown = shutdown  # type: ignore[method-assign]
        response = await registry.unload("test/tiny")
        assert response.freed_bytes == 2 * GIB
        await registry.close()

    run(main)


def test_unload_waits_for_requests_in_flight(setup: Setup) -> None:
    """An unload stays unloading, engine running, until the last request is released."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))
        entry, _ = registry.acquire("test/tiny")
        unload = asyncio.create_task(registry.unload("test/tiny"))
        await asyncio.sleep(0.02)
        assert not unload.done()
        assert state_of(registry, "test/tiny") == "unloading"
        assert not is_stopped(factory.started[0])
        with pytest.raises(NeuronError) as caught:
            registry.acquire("test/tiny")
        assert caught.value.code == "not_loaded"
        registry.release(entry)
        response = await unload
        assert response.id == "test/tiny"
        assert is_stopped(factory.started[0])
        assert registry.models() == []
        await registry.close()

    run(main)


def test_unload_stops_the_engine_after_the_drain_timeout(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that never finish delay an unload only up to the drain timeout."""
    monkeypatch.setattr(registry_module, "DRAIN_TIMEOUT_S", 0.02)

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))
        registry.acquire("test/tiny")
        response = await asyncio.wait_for(registry.unload("test/tiny"), 2.0)
        assert response.id == "test/tiny"
        assert factory.started[0].stopped
        assert registry.models() == []
        await registry.close()

    run(main)


def test_concurrent_unloads_join(setup: Setup) -> None:
    """A second unload of a model already unloading waits for the first and shares its answer."""

    async def main() -> None:
        registry = setup.registry(ScriptedFactory())
        await registry.load(LoadRequest(model="test/tiny"))
        entry, _ = registry.acquire("test/tiny")
        first = asyncio.create_task(registry.unload("test/tiny"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(registry.unload("test/tiny"))
        await asyncio.sleep(0.01)
        registry.release(entry)
        answers = await asyncio.gather(first, second)
        assert answers[0] == answers[1]
        assert registry.models() == []
        await registry.close()

    run(main)


def test_load_during_unload_waits_and_loads_afresh(setup: Setup) -> None:
    """A load of a model being unloaded waits for the unload, then starts a new engine."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))
        entry, _ = registry.acquire("test/tiny")
        unload = asyncio.create_task(registry.unload("test/tiny"))
        await asyncio.sleep(0.01)
        load = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await asyncio.sleep(0.01)
        assert not load.done()
        registry.release(entry)
        await unload
        info = await load
        assert info.state == "ready"
        assert factory.starts == 2
        assert factory.started[0].stopped
        assert not factory.started[1].stopped
        await registry.close()

    run(main)


def test_unload_of_an_unknown_model_is_not_loaded(setup: Setup) -> None:
    """Unloading a model this neuron does not hold answers not_loaded (404)."""

    async def main() -> None:
        registry = setup.registry(ScriptedFactory())
        with pytest.raises(NeuronError) as caught:
            await registry.unload("test/tiny")
        assert caught.value.code == "not_loaded"
        assert caught.value.status == 404
        await registry.close()

    run(main)


def test_unload_of_a_failed_model_clears_it(setup: Setup) -> None:
    """Unloading a failed model answers not_loaded and forgets the failure."""

    async def main() -> None:
        registry = setup.registry(ScriptedFactory(fail_with="boom"))
        with pytest.raises(NeuronError):
            await registry.load(LoadRequest(model="test/tiny"))
        assert state_of(registry, "test/tiny") == "failed"
        with pytest.raises(NeuronError) as caught:
            await registry.unload("test/tiny")
        assert caught.value.code == "not_loaded"
        assert registry.models() == []
        await registry.close()

    run(main)


def test_model_is_not_stuck_unloading_after_a_failed_shutdown(setup: Setup) -> None:
    """After an engine shutdown that raised, a load of the model still ends ready."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))

        async def broken() -> None:
            raise RuntimeError("shutdown failed")

        factory.started[0].shutdown = broken  # type: ignore[method-assign]
        with contextlib.suppress(RuntimeError):  # how the unload reports it is its own choice
            await registry.unload("test/tiny")
        info = await registry.load(LoadRequest(model="test/tiny"))
        assert info.state == "ready"
        await registry.close()

    run(main)


def test_unload_while_loading_is_busy(setup: Setup) -> None:
    """A model still loading cannot be unloaded: busy (409), and the load carries on."""

    async def main() -> None:
        factory = gated()
        registry = setup.registry(factory)
        load = asyncio.create_task(registry.load(LoadRequest(model="test/tiny")))
        await until(lambda: factory.starts == 1)
        with pytest.raises(NeuronError) as caught:
            await registry.unload("test/tiny")
        assert caught.value.code == "busy"
        assert caught.value.status == 409
        assert factory.gate is not None
        factory.gate.set()
        assert (await load).state == "ready"
        await registry.close()

    run(main)


# --- health and shutdown -------------------------------------------------------------------


def test_watch_marks_a_dead_engine_failed(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The health watch turns a model whose engine died into a failed entry and reaps it."""
    monkeypatch.setattr(registry_module, "HEALTH_INTERVAL_S", 0.001)

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))
        await registry.load(LoadRequest(model="test/other"))
        watch = asyncio.create_task(registry.watch())
        try:
            dead: ScriptedEngine = factory.started[0]
            dead.dead = True
            await until(lambda: state_of(registry, "test/tiny") == "failed")
            [info] = [m for m in registry.models() if m.id == "test/tiny"]
            assert info.error == "engine died"
            assert dead.stopped
            assert state_of(registry, "test/other") == "ready"
            assert not factory.started[1].stopped
            with pytest.raises(NeuronError):
                registry.acquire("test/tiny")
        finally:
            watch.cancel()
        # A failed model can be loaded again.
        info = await registry.load(LoadRequest(model="test/tiny"))
        assert info.state == "ready"
        assert factory.starts == 3
        await registry.close()

    run(main)


def test_close_stops_every_engine(setup: Setup) -> None:
    """Closing the registry stops every engine and abandons loads under way."""

    async def main() -> None:
        factory = ScriptedFactory()
        registry = setup.registry(factory)
        await registry.load(LoadRequest(model="test/tiny"))
        await registry.load(LoadRequest(model="test/other"))
        factory.gate = asyncio.Event()
        write_model(setup.models, "test/third")
        pending = asyncio.create_task(registry.load(LoadRequest(model="test/third")))
        await until(lambda: factory.starts == 3)
        await registry.close()
        assert all(engine.stopped for engine in factory.started)
        assert len(factory.started) == 2
        assert registry.models() == []
        with pytest.raises(asyncio.CancelledError):
            await pending

    run(main)


def test_models_view_is_a_snapshot(setup: Setup) -> None:
    """entries() and models() are copies: changing them does not change the registry."""

    async def main() -> None:
        registry = setup.registry(ScriptedFactory())
        await registry.load(LoadRequest(model="test/tiny"))
        entries = registry.entries()
        assert list(entries) == ["test/tiny"]
        cast(dict[str, Any], entries).clear()
        models: list[ModelInfo] = registry.models()
        models.clear()
        assert [m.id for m in registry.models()] == ["test/tiny"]
        await registry.close()

    run(main)


def test_memory_limit_caps_what_is_planned(setup: Setup) -> None:
    """With memory_limit_gb, a load that would exceed it with the models held is refused."""

    async def scenario() -> None:
        limited = setup.config
        limited.neuron.memory_limit_gb = 3.0
        registry = setup.registry(ScriptedFactory())
        first = await registry.load(LoadRequest(model="test/tiny"))
        assert first.state == "ready"
        with pytest.raises(NeuronError) as info:
            await registry.load(LoadRequest(model="test/other"))
        assert info.value.code == "insufficient_memory"
        assert "test/other" not in {m.id for m in registry.models()}
        await registry.unload("test/tiny")
        assert (await registry.load(LoadRequest(model="test/other"))).state == "ready"

    asyncio.run(scenario())
