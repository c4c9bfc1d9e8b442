"""The supervisor's metrics: every worker's, merged into one scrape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex_gateway.tenants import CACHE_SECRET_ENV
from cortex_gateway.workers import Supervisor, merge_metrics

WORKER = """# HELP cortex_requests_total Requests answered
# TYPE cortex_requests_total counter
cortex_requests_total{{model="m",status="200"}} {requests}
cortex_requests_created{{model="m",status="200"}} {created}
# HELP cortex_request_duration_seconds Latency
# TYPE cortex_request_duration_seconds histogram
cortex_request_duration_seconds_bucket{{model="m",le="0.1"}} {fast}
cortex_request_duration_seconds_bucket{{model="m",le="+Inf"}} {requests}
cortex_request_duration_seconds_count{{model="m"}} {requests}
cortex_request_duration_seconds_sum{{model="m"}} {seconds}
# HELP cortex_node_up 1 if the neuron answered its last poll
# TYPE cortex_node_up gauge
cortex_node_up{{node="a"}} {up}
# HELP cortex_requests_in_flight Requests being served
# TYPE cortex_requests_in_flight gauge
cortex_requests_in_flight{{model="m",node="a"}} {in_flight}
"""


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_histograms_and_in_flight_are_summed_fleet_gauges_are_not() -> None:
    """Requests, latency buckets and in-flight add up; node_up is the fleet's (the max)."""
    one = WORKER.format(requests=3, created=100.0, fast=2, seconds=0.5, up=1, in_flight=2)
    two = WORKER.format(requests=5, created=90.0, fast=1, seconds=1.5, up=0, in_flight=1)
    merged = samples(merge_metrics([one, two]))
    assert merged[("cortex_requests_total", (("model", "m"), ("status", "200")))] == 8
    assert merged[("cortex_requests_created", (("model", "m"), ("status", "200")))] == 90.0
    bucket = ("cortex_request_duration_seconds_bucket", (("le", "0.1"), ("model", "m")))
    assert merged[bucket] == 3
    assert merged[("cortex_request_duration_seconds_sum", (("model", "m"),))] == 2.0
    assert merged[("cortex_node_up", (("node", "a"),))] == 1
    assert merged[("cortex_requests_in_flight", (("model", "m"), ("node", "a")))] == 3


def test_one_worker_merges_to_itself() -> None:
    """With one answer the scrape is that answer, sample for sample."""
    one = WORKER.format(requests=3, created=100.0, fast=2, seconds=0.5, up=1, in_flight=0)
    assert samples(merge_metrics([one])) == samples(one.encode())


def test_every_worker_gets_the_same_cache_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' environment holds one cache secret: the operator's, else one made once."""
    monkeypatch.delenv(CACHE_SECRET_ENV, raising=False)
    made = Supervisor(2, Path("cortex.toml"), 0, "127.0.0.1:1", [])
    monkeypatch.setenv(CACHE_SECRET_ENV, "the-operators")
    given = Supervisor(2, Path("cortex.toml"), 0, "127.0.0.1:1", [])
    try:
        assert len(made.environ[CACHE_SECRET_ENV]) == 64
        assert given.environ[CACHE_SECRET_ENV] == "the-operators"
    finally:
        for supervisor in (made, given):
            for worker in supervisor.workers:
                os.close(worker.metrics_fd)
