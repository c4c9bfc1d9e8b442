"""Sleep as an eviction tier, on scripted engines and pretend GPUs (vLLM's sleep mode is GPU-only).

An unload that asks to sleep keeps the engine, asleep, its weights in host
memory; a request or a load wakes it without starting an engine. Sleepers
share ``sleep_memory_gb`` (and the host's free memory), least recently used
first out; a CPU host refuses the setting.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from cortex_core.config import NeuronConfig, NeuronSection, SourceConfig
from cortex_core.neuron_api import Device
from cortex_core.units import GIB
from neuron.app import NeuronApp, create_app
from neuron.cli import main
from neuron.registry import Registry
from neuron.sleep import CPU_HOST_REFUSAL, Sleeper, SleepPlan, plan_sleep, refusal
from neuron.testing.fakegpu import FakeGpus
from neuron.testing.models import write_fake_model
from neuron.testing.scripted import ScriptedEngine, ScriptedFactory

WEIGHTS_BYTES = 1 << 20
MODELS = ("test/a", "test/b", "test/c")
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


def write_model(root: Path, concrete: str, weights_bytes: int = WEIGHTS_BYTES) -> None:
    """A model folder whose weights (what it holds in host memory asleep) are this size."""
    write_fake_model(root, concrete, weights_bytes)


def neuron_config(tmp_path: Path, sleep_memory_gb: float | None) -> NeuronConfig:
    """A neuron over a local source holding test/a, test/b and test/c."""
    models = tmp_path / "models"
    for model in MODELS:
        write_model(models, model)
    return NeuronConfig(
        neuron=NeuronSection(
            name="t",
            cache_dir=str(tmp_path / "cache"),
            default_source="local",
            sleep_memory_gb=sleep_memory_gb,
        ),
        sources={"local": SourceConfig(path=str(models))},
    )


class Host:
    """A neuron app on one 24 GiB pretend GPU, its client, factory and registry."""

    def __init__(self, client: TestClient, factory: ScriptedFactory, gpus: FakeGpus) -> None:
        self.client = client
        self.factory = factory
        self.gpus = gpus

    @property
    def registry(self) -> Registry:
        """The app's registry."""
        app: Any = self.client.app
        return cast(NeuronApp, app.state.neuron).registry

    def load(self, model: str) -> dict[str, Any]:
        """Load ``model`` on GPU 0; it must answer ready."""
        answer = self.client.post("/models/load", json={"model": model, "devices": [0]})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def unload(self, model: str, *, sleep: bool = True) -> dict[str, Any]:
        """Evict ``model`` (asking it to sleep unless told otherwise)."""
        answer = self.client.post("/models/unload", json={"model": model, "sleep": sleep})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def models(self) -> dict[str, dict[str, Any]]:
        """``GET /models`` by id."""
        return {m["id"]: m for m in self.client.get("/models").json()["models"]}

    def engine(self, model: str) -> ScriptedEngine:
        """The (last) engine started for ``model``."""
        return [e for e in self.factory.started if e.spec.model_id == model][-1]

    def used(self) -> int:
        """GPU 0's memory in use."""
        return self.gpus.devices()[0].memory_used


@contextlib.contextmanager
def serve(
    config: NeuronConfig,
    factory: ScriptedFactory | None = None,
    *,
    host_free: Callable[[], int] = lambda: 64 * GIB,
    devices: Callable[[FakeGpus], Callable[[], list[Device]]] | None = None,
) -> Iterator[Host]:
    """A neuron app over scripted engines on one 24 GiB pretend GPU."""
    factory = factory or ScriptedFactory()
    gpus = FakeGpus([24 * GIB])
    seen = devices(gpus) if devices is not None else gpus.devices
    app = create_app(config, factory, devices=seen, host_free=host_free)
    gpus.bind(cast(NeuronApp, app.state.neuron).registry)
    with TestClient(app) as client:
        yield Host(client, factory, gpus)


# --- sleep on eviction ---------------------------------------------------------------------


def test_an_eviction_that_asks_puts_the_engine_to_sleep(tmp_path: Path) -> None:
    """Asked to sleep, the engine sleeps (not stopped): GPU memory back, weights in host memory."""
    with serve(neuron_config(tmp_path, sleep_memory_gb=1)) as host:
        loaded = host.load("test/a")
        assert host.used() == loaded["memory_bytes"] > 0
        answer = host.unload("test/a")
        assert answer == {
            "id": "test/a",
            "state": "sleeping",
            "freed_bytes": loaded["memory_bytes"],
            "host_memory_bytes": WEIGHTS_BYTES,
        }
        engine = host.engine("test/a")
        assert (engine.asleep, engine.stopped, engine.spec.sleep) == (True, False, True)
        listed = host.models()["test/a"]
        assert (listed["state"], listed["host_memory_bytes"]) == ("sleeping", WEIGHTS_BYTES)
        assert listed["memory_bytes"] == loaded["memory_bytes"]  # what waking needs
        assert host.used() == 0
        assert host.client.get("/models/test/a/endpoint").status_code == 404
        assert [m["id"] for m in host.client.get("/v1/models").json()["data"]] == []


def test_without_sleep_memory_gb_an_eviction_unloads(tmp_path: Path) -> None:
    """Sleep is opt-in: without sleep_memory_gb, asking to sleep unloads; the engine never could."""
    with serve(neuron_config(tmp_path, sleep_memory_gb=None)) as host:
        host.load("test/a")
        answer = host.unload("test/a")
        assert (answer["state"], answer["host_memory_bytes"]) == ("unloaded", 0)
        engine = host.engine("test/a")
        assert (engine.stopped, engine.spec.sleep, engine.sleeps) == (True, False, 0)
        assert host.models() == {}


def test_an_unload_without_sleep_and_a_sleepers_unload_stop_the_engine(tmp_path: Path) -> None:
    """A plain unload still stops the engine; unloading a sleeper stops it for good."""
    with serve(neuron_config(tmp_path, sleep_memory_gb=1)) as host:
        host.load("test/a")
        assert host.unload("test/a", sleep=False)["state"] == "unloaded"
        assert host.engine("test/a").stopped
        host.load("test/b")
        host.unload("test/b")
        assert host.unload("test/b", sleep=True)["state"] == "unloaded"
        assert host.engine("test/b").stopped
        assert host.models() == {}


# --- wake on request -------------------------------------------------------------------


def test_a_request_wakes_a_sleeping_model(tmp_path: Path) -> None:
    """A chat request for a sleeper wakes it (no engine start) and is answered."""
    with serve(neuron_config(tmp_path, sleep_memory_gb=1)) as host:
        loaded = host.load("test/a")
        host.unload("test/a")
        answer = host.client.post("/v1/chat/completions", json={"model": "test/a", **CHAT})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == host.factory.reply
        engine = host.engine("test/a")
        assert (engine.wakes, engine.asleep, host.factory.starts) == (1, False, 1)
        listed = host.models()["test/a"]
        assert (listed["state"], listed["host_memory_bytes"]) == ("ready", 0)
        assert list(listed["phase_seconds"]) == ["waking"]
        assert host.used() == loaded["memory_bytes"]
        scraped = host.client.get("/metrics").text
        wakes = [
            s.value
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
            if s.name == "neuron_load_seconds_count" and s.labels.get("phase") == "waking"
        ]
        assert wakes == [1.0]


def test_a_load_wakes_a_sleeping_model(tmp_path: Path) -> None:
    """A load of a sleeper answers ready once awake, and starts no engine."""
    with serve(neuron_config(tmp_path, sleep_memory_gb=1)) as host:
        host.load("test/a")
        host.unload("test/a")
        woken = host.load("test/a")
        assert woken["state"] == "ready"
        assert (host.engine("test/a").wakes, host.factory.starts) == (1, 1)


def test_requests_arriving_together_share_one_wake(tmp_path: Path) -> None:
    """Two requests for a sleeper while it wakes: one wake, both answered."""
    factory = ScriptedFactory(wake_delay=0.3)
    with serve(neuron_config(tmp_path, sleep_memory_gb=1), factory) as host:
        host.load("test/a")
        host.unload("test/a")
        statuses: list[int] = []

        def ask() -> None:
            body = {"model": "test/a", **CHAT}
            statuses.append(host.client.post("/v1/chat/completions", json=body).status_code)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200, 200]
        assert host.engine("test/a").wakes == 1


def test_a_load_without_wait_answers_loading_while_it_wakes(tmp_path: Path) -> None:
    """wait=false on a sleeper: 202 with state loading, phase waking; then ready."""
    factory = ScriptedFactory(wake_delay=0.2)
    with serve(neuron_config(tmp_path, sleep_memory_gb=1), factory) as host:
        host.load("test/a")
        host.unload("test/a")
        answer = host.client.post("/models/load", json={"model": "test/a", "wait": False})
        assert answer.status_code == 202
        assert (answer.json()["state"], answer.json()["phase"]) == ("loading", "waking")
        assert host.load("test/a")["state"] == "ready"  # joins the wake
        assert host.engine("test/a").wakes == 1


def test_an_engine_that_fails_to_wake_is_failed_and_stopped(tmp_path: Path) -> None:
    """A wake that raises: load_failed, the model failed, its engine stopped."""
    with serve(neuron_config(tmp_path, sleep_memory_gb=1)) as host:
        host.load("test/a")
        host.unload("test/a")
        engine = host.engine("test/a")

        async def broken() -> None:
            raise RuntimeError("device lost")

        engine.wake_up = broken  # type: ignore[method-assign]
        answer = host.client.post("/models/load", json={"model": "test/a"})
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "load_failed"
        assert "device lost" in answer.json()["error"]["message"]
        assert host.models()["test/a"]["state"] == "failed"
        assert engine.stopped


# --- host memory accounting -------------------------------------------------------------


def test_sleepers_share_sleep_memory_gb_least_recently_used_out_first(tmp_path: Path) -> None:
    """Room for two sleepers: a third to sleep unloads the least recently used one."""
    budget_gb = (2 * WEIGHTS_BYTES + WEIGHTS_BYTES // 2) / GIB
    with serve(neuron_config(tmp_path, sleep_memory_gb=budget_gb)) as host:
        for model in MODELS:
            host.load(model)
        chat = host.client.post("/v1/chat/completions", json={"model": "test/a", **CHAT})
        assert chat.status_code == 200
        host.unload("test/b")
        host.unload("test/a")
        assert {m: i["state"] for m, i in host.models().items()} == {
            "test/a": "sleeping",
            "test/b": "sleeping",
            "test/c": "ready",
        }
        assert host.unload("test/c")["state"] == "sleeping"
        # test/b was used least recently (test/a answered after it loaded): it goes.
        listed = host.models()
        assert {m: i["state"] for m, i in listed.items()} == {
            "test/a": "sleeping",
            "test/c": "sleeping",
        }
        assert sum(i["host_memory_bytes"] for i in listed.values()) == 2 * WEIGHTS_BYTES
        assert host.engine("test/b").stopped
        scraped = host.client.get("/metrics").text
        held = {
            s.labels["model"]: s.value
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
            if s.name == "neuron_model_host_memory_bytes"
        }
        assert held == {"test/a": WEIGHTS_BYTES, "test/c": WEIGHTS_BYTES}


def write_big_model(tmp_path: Path) -> None:
    """test/big: twice the weights of the others."""
    write_model(tmp_path / "models", "test/big", 2 * WEIGHTS_BYTES)


def test_a_model_larger_than_sleep_memory_gb_is_unloaded(tmp_path: Path) -> None:
    """Weights beyond the whole budget: unloaded, and no sleeper is sacrificed for nothing."""
    with serve(neuron_config(tmp_path, sleep_memory_gb=WEIGHTS_BYTES * 1.5 / GIB)) as host:
        host.load("test/a")
        host.load("test/b")
        host.unload("test/a")
        write_big_model(tmp_path)
        host.load("test/big")
        assert host.unload("test/big")["state"] == "unloaded"
        assert host.models()["test/a"]["state"] == "sleeping"


def test_short_host_memory_unloads_sleepers_first(tmp_path: Path) -> None:
    """The host has room for one sleeper's weights: the next to sleep unloads the older one."""
    free = 64 * GIB

    with serve(neuron_config(tmp_path, sleep_memory_gb=1), host_free=lambda: free) as host:
        host.load("test/a")
        host.load("test/b")
        host.unload("test/a")
        free = WEIGHTS_BYTES // 2  # test/a's weights took what there was
        assert host.unload("test/b")["state"] == "sleeping"
        assert set(host.models()) == {"test/b"}
        free = 0
        write_big_model(tmp_path)
        host.load("test/big")
        # Unloading test/b would give back half what test/big needs: it stays asleep.
        assert host.unload("test/big")["state"] == "unloaded"
        assert host.models()["test/b"]["state"] == "sleeping"


def test_short_device_memory_unloads_sleepers_first(tmp_path: Path) -> None:
    """Sleepers keep a little device memory (CUDA's context): a load that lacks it frees them."""

    def with_residue(gpus: FakeGpus) -> Callable[[], list[Device]]:
        def devices() -> list[Device]:
            sleeping = 0
            if gpus.registry is not None:
                states = [e.state for e in gpus.registry.entries().values()]
                sleeping = states.count("sleeping") * (23 * GIB // 2)
            return [
                Device(
                    index=d.index,
                    memory_total=d.memory_total,
                    memory_used=d.memory_used + sleeping,
                    memory_free=d.memory_free - sleeping,
                )
                for d in gpus.devices()
            ]

        return devices

    with serve(neuron_config(tmp_path, sleep_memory_gb=1), devices=with_residue) as host:
        host.load("test/a")
        host.unload("test/a")
        host.load("test/b")
        host.unload("test/b")
        assert host.load("test/c")["state"] == "ready"  # 24 - 2 x 11.5 GiB: too little
        assert set(host.models()) == {"test/b", "test/c"}
        assert host.engine("test/a").stopped


def test_plan_sleep_drops_as_few_as_make_room() -> None:
    """The least recently used go first, only as many as needed, and none when none would do."""
    sleepers = [Sleeper("old", 4, 1.0), Sleeper("new", 4, 3.0), Sleeper("mid", 4, 2.0)]
    assert plan_sleep(4, 16, 100, sleepers) == SleepPlan(())
    assert plan_sleep(4, 12, 100, sleepers) == SleepPlan(("old",))
    assert plan_sleep(8, 12, 100, sleepers) == SleepPlan(("old", "mid"))
    assert plan_sleep(4, 100, 0, sleepers) == SleepPlan(("old",))
    assert plan_sleep(13, 12, 100, sleepers) is None
    assert plan_sleep(4, 100, -9, sleepers) is None


# --- refusal on CPU hosts ----------------------------------------------------------------


def test_sleep_memory_gb_is_refused_on_a_host_without_gpus(tmp_path: Path) -> None:
    """A CPU host refuses the setting when the neuron is made; so does an engine unable to sleep."""
    config = neuron_config(tmp_path, sleep_memory_gb=4)
    with pytest.raises(ValueError, match=r"neuron\.sleep_memory_gb: vLLM's sleep mode needs GPUs"):
        create_app(config, ScriptedFactory(), devices=list)
    gpus = FakeGpus([24 * GIB])
    cpu_build = ScriptedFactory(sleep_refusal="no sleep mode in this build")
    with pytest.raises(ValueError, match="no sleep mode in this build"):
        create_app(config, cpu_build, devices=gpus.devices)
    create_app(neuron_config(tmp_path, sleep_memory_gb=None), ScriptedFactory(), devices=list)
    assert refusal(None, 0, "any") is None
    assert refusal(4, 0, None) == CPU_HOST_REFUSAL
    assert refusal(4, 1, None) is None


def test_neuron_serve_refuses_sleep_on_a_cpu_host_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host where NVML sees no GPU, `neuron serve` exits 2: one line, file, key and why."""
    monkeypatch.setattr("neuron.cli.read_devices", list)
    path = tmp_path / "neuron.toml"
    path.write_text(f'[neuron]\ncache_dir = "{tmp_path}"\nsleep_memory_gb = 8\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"neuron: {path}: neuron.sleep_memory_gb: {CPU_HOST_REFUSAL}\n"
    checked = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert f"sleep: refused, `neuron serve` will not start: {CPU_HOST_REFUSAL}" in checked.stdout
