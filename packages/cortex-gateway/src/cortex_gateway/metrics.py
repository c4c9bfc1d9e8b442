"""The gateway's Prometheus metrics, with label values kept to a bounded set."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cortex_gateway.lifecycle import Lifecycle

__all__ = ["GatewayMetrics"]

OTHER = "other"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_LOAD_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900)


class _FleetCollector(Collector):
    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "cortex_node_up", "1 if the neuron answered its last poll", labels=["node"]
        )
        models = GaugeMetricFamily(
            "cortex_node_models_loaded", "Models ready on the node", labels=["node"]
        )
        used = GaugeMetricFamily(
            "cortex_node_gpu_memory_used_bytes",
            "GPU memory in use, as last polled",
            labels=["node", "gpu"],
        )
        total = GaugeMetricFamily(
            "cortex_node_gpu_memory_total_bytes",
            "GPU memory, as last polled",
            labels=["node", "gpu"],
        )
        in_flight = GaugeMetricFamily(
            "cortex_requests_in_flight", "Requests being served", labels=["model", "node"]
        )
        for node in self._lifecycle.fleet.nodes.values():
            up.add_metric([node.name], 1.0 if node.up else 0.0)
            models.add_metric([node.name], sum(1 for m in node.models if m.state == "ready"))
            for device in node.devices:
                used.add_metric([node.name, str(device.index)], device.memory_used)
                total.add_metric([node.name, str(device.index)], device.memory_total)
        for (node_name, model), count in self._lifecycle.in_flight.items():
            in_flight.add_metric([model, node_name], count)
        yield from (up, models, used, total, in_flight)


class GatewayMetrics:
    """Counters and histograms the request path and the lifecycle feed."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.registry = CollectorRegistry()
        self._lifecycle = lifecycle
        self.registry.register(_FleetCollector(lifecycle))
        labels = ["model", "alias", "node", "route", "status"]
        self.requests = Counter(
            "cortex_requests", "Requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "cortex_request_duration_seconds",
            "Time from request to the last byte of the answer",
            ["model", "node", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter(
            "cortex_model_loads",
            "Loads the gateway asked for",
            ["model", "node", "outcome"],
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "cortex_model_load_seconds",
            "Time a load took on the neuron",
            ["model", "node", "outcome"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.evictions = Counter(
            "cortex_model_evictions",
            "Unloads the gateway decided on",
            ["model", "node", "reason"],
            registry=self.registry,
        )
        lifecycle.on_load = self._load
        lifecycle.on_eviction = self._evicted

    def model_label(self, model_id: str) -> str:
        """``model_id`` if it is a catalogue id or alias, else ``other`` (bounded cardinality)."""
        return model_id if model_id in self._lifecycle.catalogue else OTHER

    def node_label(self, node: str | None) -> str:
        """A configured node's name, or ``none``/``other``."""
        if node is None:
            return "none"
        return node if node in self._lifecycle.clients else OTHER

    def _load(self, node: str, model: str, outcome: str, seconds: float) -> None:
        labels = (self.model_label(model), self.node_label(node), outcome)
        self.loads.labels(*labels).inc()
        self.load_seconds.labels(*labels).observe(seconds)

    def _evicted(self, node: str, model: str, reason: str) -> None:
        self.evictions.labels(self.model_label(model), self.node_label(node), reason).inc()
