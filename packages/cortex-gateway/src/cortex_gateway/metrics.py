"""The gateway's Prometheus metrics, with label values kept to a bounded set."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cortex_gateway.errors import ErrorKind
from cortex_gateway.events import FleetEvent
from cortex_gateway.fleet import FleetView
from cortex_gateway.metering import Meter

__all__ = ["GatewayMetrics", "Labels"]

OTHER = "other"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_LOAD_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 900)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class _FleetCollector(Collector):
    def __init__(self, view: FleetView, loop: asyncio.AbstractEventLoop | None) -> None:
        self._view = view
        self._loop = loop

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
        sleeping = GaugeMetricFamily(
            "cortex_node_sleeping_bytes",
            "Host memory the node's sleeping models hold, as last polled",
            labels=["node"],
        )
        in_flight = GaugeMetricFamily(
            "cortex_requests_in_flight", "Requests being served", labels=["model", "node"]
        )
        status = self._view.status()
        for node in status.fleet.nodes.values():
            up.add_metric([node.name], 1.0 if node.up else 0.0)
            models.add_metric([node.name], sum(1 for m in node.models if m.state == "ready"))
            sleeping.add_metric([node.name], node.sleeping_bytes)
            for device in node.devices:
                used.add_metric([node.name, str(device.index)], device.memory_used)
                total.add_metric([node.name, str(device.index)], device.memory_total)
        for (node_name, model), count in dict(status.in_flight).items():
            in_flight.add_metric([model, node_name], count)
        waiting = GaugeMetricFamily(
            "cortex_requests_waiting",
            "Requests waiting for their model to load, or for a slot (max_in_flight_per_model)",
            labels=["model"],
        )
        for model, count in dict(status.waiting).items():
            waiting.add_metric([model if model in status.catalogue else OTHER], count)
        yield from (up, models, sleeping, used, total, in_flight, waiting)
        if self._loop is not None:
            # Scraped from a worker thread: all_tasks copes with the set changing meanwhile.
            tasks = len(asyncio.all_tasks(self._loop))
            yield GaugeMetricFamily(
                "cortex_event_loop_tasks", "Tasks alive in the gateway's event loop", value=tasks
            )


@dataclass(frozen=True, slots=True)
class Labels:
    """The bounded label values of one request."""

    model: str
    alias: str
    node: str
    route: str


class GatewayMetrics:
    """Counters and histograms the request path and the lifecycle feed."""

    def __init__(
        self,
        view: FleetView,
        nodes: Iterable[str],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Metrics of the fleet ``view`` shows, for the configured ``nodes``.

        ``loop``: the gateway's event loop, whose tasks are counted at each scrape.
        """
        self.registry = CollectorRegistry()
        self._view = view
        self._nodes = frozenset(nodes)
        self.registry.register(_FleetCollector(view, loop))
        request_labels = ["model", "alias", "node", "route"]
        r = self.registry
        self.requests = Counter(
            "cortex_requests", "Requests answered", [*request_labels, "status"], registry=r
        )
        self.errors = Counter(
            "cortex_request_errors",
            "Requests that failed, by kind",
            [*request_labels, "kind"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "cortex_prompt_tokens",
            "Prompt tokens, from the answers' usage",
            request_labels,
            registry=r,
        )
        self.cached_tokens = Counter(
            "cortex_cached_prompt_tokens",
            "Prompt tokens the engine took from its prefix cache (part of the prompt tokens)",
            request_labels,
            registry=r,
        )
        self.completion_tokens = Counter(
            "cortex_completion_tokens",
            "Completion tokens, from the answers' usage",
            request_labels,
            registry=r,
        )
        self.latency = Histogram(
            "cortex_request_duration_seconds",
            "Time from the request's arrival to the last byte of its answer",
            request_labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "cortex_time_to_first_token_seconds",
            "Time to the first token (streams) or to the first byte of the answer",
            request_labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.wait = Histogram(
            "cortex_queue_wait_seconds",
            "Time before the request reached a neuron: routing, waiting for a cold load",
            request_labels,
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.decode_rate = Histogram(
            "cortex_decode_tokens_per_second",
            "Completion tokens per second, from the first token to the last (streams)",
            request_labels,
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.loads = Counter(
            "cortex_model_loads",
            "Loads the gateway asked for: cold (an engine start) or a wake from sleep",
            ["model", "node", "outcome", "kind"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "cortex_model_load_seconds",
            "Time a load (cold, or a wake) took on the neuron",
            ["model", "node", "outcome", "kind"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.unloads = Counter(
            "cortex_model_unloads",
            "Unloads the gateway made, by reason (lru, priority, idle, defrag, admin) and"
            " outcome (unloaded, or slept: the neuron put the model to sleep)",
            ["model", "node", "reason", "outcome"],
            registry=r,
        )
        self.evictions = Counter(
            "cortex_model_evictions",
            "Unloads the gateway decided on by itself, by reason (lru, priority, idle, defrag)"
            " and outcome (unloaded, slept)",
            ["model", "node", "reason", "outcome"],
            registry=r,
        )
        self._children: dict[tuple[Labels, int], tuple[Any, ...]] = {}
        self.prefix_routing = Counter(
            "cortex_prefix_routing",
            "Requests routed with a prompt prefix: hit (sent where the prefix was sent"
            " before) or miss",
            ["model", "outcome"],
            registry=r,
        )

    def model_label(self, model_id: str | None) -> str:
        """``model_id`` if it is a catalogue id or alias, else ``other`` (bounded cardinality)."""
        if model_id is None:
            return "none"
        return model_id if model_id in self._view.catalogue else OTHER

    def node_label(self, node: str | None) -> str:
        """A configured node's name, ``none`` before routing, else ``other``."""
        if node is None:
            return "none"
        return node if node in self._nodes else OTHER

    def labels(self, model: str | None, alias: str | None, node: str | None, route: str) -> Labels:
        """Bounded labels for one request."""
        return Labels(
            self.model_label(model),
            self.model_label(alias) if alias else "",
            self.node_label(node),
            route,
        )

    def observe_failure(self, labels: Labels, status: int, kind: ErrorKind) -> None:
        """Count a failed request and the kind of its failure."""
        base = (labels.model, labels.alias, labels.node, labels.route)
        self.requests.labels(*base, str(status)).inc()
        self.errors.labels(*base, kind.value).inc()

    def observe_gone(self, labels: Labels) -> None:
        """Count a request whose client left before it was answered."""
        base = (labels.model, labels.alias, labels.node, labels.route)
        self.requests.labels(*base, "499").inc()

    def observe_success(
        self, labels: Labels, status: int, meter: Meter, latency: float, waited: float
    ) -> None:
        """Count an answered request with its tokens and timings."""
        children = self._children.get((labels, status))
        if children is None:
            children = self._success_children(labels, status)
        requests, latency_h, wait_h, ttft_h, rate_h, prompt, cached, completion = children
        requests.inc()
        latency_h.observe(latency)
        wait_h.observe(waited)
        if (ttft := meter.ttft) is not None:
            ttft_h.observe(ttft)
        if (rate := meter.decode_rate) is not None:
            rate_h.observe(rate)
        if meter.usage is not None:
            prompt.inc(meter.usage.prompt_tokens)
            cached.inc(meter.usage.cached_tokens)
            completion.inc(meter.usage.completion_tokens)

    def _success_children(self, labels: Labels, status: int) -> tuple[Any, ...]:
        """The metric children a success with these labels feeds, looked up once.

        The labels are bounded (catalogue ids, configured nodes, routes), so the
        cache is too; prometheus_client's own lookup takes a lock and builds a
        key every time.
        """
        base = (labels.model, labels.alias, labels.node, labels.route)
        children = (
            self.requests.labels(*base, str(status)),
            self.latency.labels(*base),
            self.wait.labels(*base),
            self.ttft.labels(*base),
            self.decode_rate.labels(*base),
            self.prompt_tokens.labels(*base),
            self.cached_tokens.labels(*base),
            self.completion_tokens.labels(*base),
        )
        self._children[(labels, status)] = children
        return children

    def observe_prefix(self, model: str, *, hit: bool) -> None:
        """Count a prefix-aware routing decision."""
        self.prefix_routing.labels(self.model_label(model), "hit" if hit else "miss").inc()

    def observe_event(self, event: FleetEvent) -> None:
        """Count the loads and unloads on the fleet's event stream."""
        where = (self.model_label(event.model), self.node_label(event.node))
        match event.kind:
            case "loaded" | "load_failed":
                outcome = "ready" if event.kind == "loaded" else "failed"
                labels = (*where, outcome, "wake" if event.wake else "cold")
                self.loads.labels(*labels).inc()
                self.load_seconds.labels(*labels).observe(event.seconds or 0.0)
            case "unloaded" | "evicted" | "slept":
                outcome = "slept" if event.kind == "slept" else "unloaded"
                labels = (*where, event.reason or "", outcome)
                self.unloads.labels(*labels).inc()
                if event.kind != "unloaded":
                    self.evictions.labels(*labels).inc()
