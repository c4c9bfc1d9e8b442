"""Test fleets: real gateway and neuron processes on loopback, and fake models for them.

Each neuron stands on its own loopback address (127.0.0.2, 127.0.0.3, ...) with
the same port and ``advertise_url`` left at ``localhost``, as separate hosts
would, so the gateway's loopback rewrite is exercised for real.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx
import openai

from cortex_core.testing import free_port
from cortex_core.units import GIB
from cortex_gateway.testing import GatewayProcess
from neuron.testing.models import FAKE_CONFIG
from neuron.testing.process import NeuronProcess


def fake_model(root: Path, model_id: str, weights_gib: float) -> None:
    """A model folder for scripted engines: a real config and sparse weights of the given size."""
    folder = root / model_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(FAKE_CONFIG))
    header = b'{"__metadata__": {"format": "pt"}}'
    with (folder / "model.safetensors").open("wb") as weights:
        weights.write(struct.pack("<Q", len(header)) + header)
        weights.truncate(int(weights_gib * GIB))


@dataclass
class NeuronSpec:
    """One neuron of a test fleet: scripted engines on fake GPUs, or real vLLM."""

    name: str
    host: str
    gpus: list[float] = field(default_factory=list)
    real: bool = False
    memory_limit_gb: float | None = None
    management: str | None = None
    """The gateway reaches its management API here (a proxy of the test's own); the neuron
    then advertises its own address for inference, which the gateway reaches directly."""


@dataclass
class Fleet:
    """A running gateway and its neurons."""

    gateway: GatewayProcess
    neurons: dict[str, NeuronProcess]
    workdir: Path
    metrics_url: str = ""
    clients: list[openai.OpenAI | anthropic.Anthropic] = field(default_factory=list)

    def openai(self, key: str = "unused") -> openai.OpenAI:
        """The official OpenAI SDK pointed at the gateway (closed when the fleet stops)."""
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def anthropic(self, key: str = "unused") -> anthropic.Anthropic:
        """The official Anthropic SDK pointed at the gateway (closed when the fleet stops)."""
        client = anthropic.Anthropic(base_url=self.url, api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    def start(self) -> None:
        """Start the neurons, then the gateway."""
        for process in self.neurons.values():
            process.start(timeout=120)
        self.gateway.start()

    def stop(self) -> None:
        """Close the clients, stop the gateway, then the neurons."""
        for client in self.clients:
            client.close()
        self.gateway.stop()
        for neuron in self.neurons.values():
            neuron.stop()

    @property
    def url(self) -> str:
        """The gateway's API."""
        return self.gateway.url

    def http(self, **headers: str) -> httpx.Client:
        """A plain HTTP client for the gateway."""
        return httpx.Client(base_url=self.url, timeout=600, headers=headers)

    def fleet_state(self) -> dict[str, object]:
        """``GET /admin/fleet``."""
        with self.http() as client:
            answer: dict[str, object] = client.get("/admin/fleet").json()
            return answer

    def loaded(self) -> dict[str, list[str]]:
        """Ready models by node, from the gateway's own view."""
        with self.http() as client:
            nodes = client.get("/admin/fleet").json()["nodes"]
        return {
            n["name"]: sorted(m["id"] for m in n["models"] if m["state"] == "ready") for n in nodes
        }

    def engine_starts(self, model: str) -> int:
        """How many engines the fleet's neurons started for ``model``."""
        needle = f"model={model}"
        return sum(
            1
            for neuron in self.neurons.values()
            for line in neuron.log().splitlines()
            if "starting engine" in line and needle in line.split()
        )


def until(condition: Callable[[], object], within_s: float = 30.0) -> None:
    """Poll ``condition()`` until it holds, failing after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


StartFleet = Callable[..., Fleet]
"""``start_fleet(neurons, models_toml, models_root=, gateway=, eviction=, env=, ...)``."""


def launch(
    workdir: Path,
    neurons: list[NeuronSpec],
    models_toml: str,
    *,
    models_root: Path | None = None,
    gateway: str = "",
    eviction: str = "",
    env: dict[str, str] | None = None,
    extra_neurons: list[tuple[str, str]] | None = None,
) -> Fleet:
    """Write the configs for a fleet in ``workdir`` (not started yet).

    ``extra_neurons`` are ``(name, endpoint)`` pairs of neurons the test runs itself.
    """
    workdir.mkdir(parents=True)
    port = free_port("127.0.0.2")
    root = models_root or workdir / "models"
    processes: dict[str, NeuronProcess] = {}
    entries = []
    for spec in neurons:
        config = workdir / f"{spec.name}.toml"
        limit = f"memory_limit_gb = {spec.memory_limit_gb}\n" if spec.memory_limit_gb else ""
        advertised = spec.host if spec.management else "localhost"
        config.write_text(
            f'[neuron]\nname = "{spec.name}"\nlisten = "{spec.host}:{port}"\n'
            f'advertise_url = "http://{advertised}:{port}"\n'
            f'cache_dir = "{workdir / spec.name}"\ndefault_source = "local"\n{limit}'
            f'[sources.local]\npath = "{root}"\n'
        )
        neuron_env = {"VLLM_NO_USAGE_STATS": "1", **(env or {})}
        if not spec.real:
            neuron_env |= {
                "NEURON_TEST_ENGINE": "scripted",
                "NEURON_TEST_GPUS": ",".join(str(g) for g in spec.gpus),
            }
        processes[spec.name] = NeuronProcess(
            config, f"http://{spec.host}:{port}", workdir / f"{spec.name}.log", neuron_env
        )
        endpoint = spec.management or f"http://{spec.host}:{port}"
        entries.append(f'[[neurons]]\nname = "{spec.name}"\nendpoint = "{endpoint}"\n')
    for name, endpoint in extra_neurons or []:
        entries.append(f'[[neurons]]\nname = "{name}"\nendpoint = "{endpoint}"\n')
    api, metrics = free_port(), free_port()
    (workdir / "models.toml").write_text(models_toml)
    (workdir / "cortex.toml").write_text(
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f"poll_interval_s = 0.5\nload_timeout_s = 600\n{gateway}\n"
        f"[eviction]\n{eviction}\n" + "\n".join(entries)
    )
    cortex = GatewayProcess(
        workdir / "cortex.toml", f"http://127.0.0.1:{api}", workdir / "gateway.log"
    )
    return Fleet(cortex, processes, workdir, metrics_url=f"http://127.0.0.1:{metrics}")
