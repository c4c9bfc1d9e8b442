"""The neuron's Prometheus metrics, read at scrape time from the registry, NVML and vLLM."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cortex_core.neuron_api import MODEL_STATES, Device
from neuron.registry import LoadEvent, Registry

__all__ = ["NeuronMetrics"]

_STATES = sorted(MODEL_STATES)
_LOAD_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
_PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 90, 120, 300, 600)


class _Collector(Collector):
    def __init__(self, registry: Registry, devices: Callable[[], list[Device]]) -> None:
        self._registry = registry
        self._devices = devices

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "neuron_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"]
        )
        total = GaugeMetricFamily("neuron_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        util = GaugeMetricFamily(
            "neuron_gpu_utilization_percent", "GPU utilization", labels=["gpu"]
        )
        for device in self._devices():
            gpu = str(device.index)
            used.add_metric([gpu], device.memory_used)
            total.add_metric([gpu], device.memory_total)
            util.add_metric([gpu], device.utilization)
        yield from (used, total, util)

        state = GaugeMetricFamily(
            "neuron_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        in_flight = GaugeMetricFamily(
            "neuron_model_in_flight", "Requests in flight per model", labels=["model"]
        )
        memory = GaugeMetricFamily(
            "neuron_model_memory_bytes", "Memory planned for each model", labels=["model"]
        )
        host = GaugeMetricFamily(
            "neuron_model_host_memory_bytes",
            "Host memory a sleeping model's weights hold",
            labels=["model"],
        )
        running = GaugeMetricFamily(
            "neuron_engine_requests_running", "Requests the engine is running", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "neuron_engine_requests_waiting", "Requests queued in the engine", labels=["model"]
        )
        kv = GaugeMetricFamily(
            "neuron_engine_kv_cache_usage_ratio", "KV cache in use, 0 to 1", labels=["model"]
        )
        prompt = CounterMetricFamily(
            "neuron_engine_prompt_tokens", "Prompt tokens the engine processed", labels=["model"]
        )
        cached = CounterMetricFamily(
            "neuron_engine_cached_prompt_tokens",
            "Prompt tokens the engine took from its prefix cache (part of the prompt tokens)",
            labels=["model"],
        )
        generated = CounterMetricFamily(
            "neuron_engine_generation_tokens", "Tokens the engine generated", labels=["model"]
        )
        for model_id, entry in self._registry.entries().items():
            for name in _STATES:
                state.add_metric([model_id, name], 1.0 if entry.state == name else 0.0)
            in_flight.add_metric([model_id], entry.in_flight)
            memory.add_metric([model_id], entry.plan.needed_bytes if entry.plan else 0)
            host.add_metric([model_id], entry.host_bytes if entry.state == "sleeping" else 0)
            if entry.engine is not None:
                stats = entry.engine.stats()
                running.add_metric([model_id], stats.running)
                waiting.add_metric([model_id], stats.waiting)
                kv.add_metric([model_id], stats.kv_cache_usage)
                prompt.add_metric([model_id], stats.prompt_tokens)
                cached.add_metric([model_id], stats.cached_prompt_tokens)
                generated.add_metric([model_id], stats.generation_tokens)
        yield from (state, in_flight, memory, host, running, waiting, kv, prompt, cached, generated)


class NeuronMetrics:
    """A Prometheus registry of the neuron's own metrics."""

    def __init__(self, registry: Registry, devices: Callable[[], list[Device]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(registry, devices))
        self.load_seconds = Histogram(
            "neuron_model_load_seconds",
            "Time from load request to ready (or failure)",
            ["model", "outcome"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.phase_seconds = Histogram(
            "neuron_load_seconds",
            "Seconds each phase of a load (or a wake) took",
            ["model", "phase"],
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        registry.subscribe(self._observe_load)

    def _observe_load(self, event: LoadEvent) -> None:
        if event.kind == "load":
            self.load_seconds.labels(model=event.model, outcome=event.outcome).observe(
                event.seconds
            )
        for phase, seconds in event.phases.items():
            self.phase_seconds.labels(model=event.model, phase=phase).observe(seconds)
