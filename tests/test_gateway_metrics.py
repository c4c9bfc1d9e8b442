"""The gateway's and the neuron's /metrics after real traffic through real processes.

Traffic runs through scripted neurons (many loads, evictions); the assertions
parse the Prometheus text with prometheus_client's own parser.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import httpx
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support import Fleet, NeuronSpec, StartFleet, fake_model

pytestmark = pytest.mark.slow

CATALOGUE = """
[aliases]
"helexa/small" = "fake/a"

[[models]]
id = "fake/a"
memory_gb = 4.1

[[models]]
id = "fake/b"
memory_gb = 4.1
"""


def samples(url: str) -> list[Sample]:
    """Every sample of a /metrics page."""
    text = httpx.get(url, timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def fleet(start_fleet: StartFleet, tmp_path: Path) -> Fleet:
    """One scripted neuron with room for one model at a time, behind a gateway."""
    root = tmp_path / "models"
    fake_model(root, "fake/a", 3)
    fake_model(root, "fake/b", 3)
    return start_fleet(
        [NeuronSpec("benjy", "127.0.0.2", [6])],
        CATALOGUE,
        models_root=root,
        env={"NEURON_TEST_CHUNK_DELAY": "0.05"},
    )


def test_metrics_after_real_traffic(fleet: Fleet) -> None:
    """Requests, tokens, timings, loads and evictions all show in /metrics with bounded labels."""
    client = fleet.openai()
    question: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    client.chat.completions.create(model="helexa/small", messages=question)
    stream = client.chat.completions.create(model="fake/a", messages=question, stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # the usage chunk the gateway asked for is gone
    asked = client.chat.completions.create(
        model="fake/a",
        messages=question,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert list(asked)[-1].usage is not None  # ... but one the client asked for stays
    client.completions.create(model="fake/b", prompt="The capital of France is")  # evicts fake/a
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody/nothing", messages=question)

    found = samples(f"{fleet.metrics_url}/metrics")
    chat = {"route": "chat_completions"}
    assert value(found, "cortex_requests_total", model="fake/a", status="200", **chat) == 3
    assert value(found, "cortex_requests_total", model="fake/a", alias="helexa/small", **chat) == 1
    assert value(found, "cortex_requests_total", model="fake/b", route="completions") == 1
    assert value(found, "cortex_requests_total", model="other", status="404") == 1
    assert value(found, "cortex_request_errors_total", model="other", kind="not_found") == 1
    # Usage: 3 prompt tokens and 6 completion tokens per scripted answer.
    assert value(found, "cortex_prompt_tokens_total", model="fake/a") == 9
    assert value(found, "cortex_completion_tokens_total", model="fake/a") == 18
    assert value(found, "cortex_completion_tokens_total", model="fake/b") == 6
    for histogram in (
        "cortex_request_duration_seconds",
        "cortex_time_to_first_token_seconds",
        "cortex_queue_wait_seconds",
    ):
        assert value(found, f"{histogram}_count", model="fake/a", **chat) == 3, histogram
    assert value(found, "cortex_decode_tokens_per_second_count", model="fake/a", **chat) == 2
    rate = value(found, "cortex_decode_tokens_per_second_sum", model="fake/a", **chat) / 2
    assert 5 < rate < 40  # 5 tokens after the first, 50 ms apart: about 20 per second
    wait_sum = value(found, "cortex_queue_wait_seconds_sum", model="fake/a", **chat)
    assert wait_sum >= 0
    assert value(found, "cortex_model_loads_total", model="fake/a", outcome="ready") == 1
    assert value(found, "cortex_model_loads_total", model="fake/b", outcome="ready") == 1
    assert value(found, "cortex_model_load_seconds_count", model="fake/b") == 1
    assert value(found, "cortex_model_evictions_total", model="fake/a", reason="lru") == 1
    assert value(found, "cortex_model_unloads_total", model="fake/a", reason="lru") == 1
    assert value(found, "cortex_node_up", node="benjy") == 1
    assert value(found, "cortex_node_models_loaded", node="benjy") == 1
    assert value(found, "cortex_node_gpu_memory_total_bytes", node="benjy", gpu="0") == 6 * 2**30
    assert value(found, "cortex_node_gpu_memory_used_bytes", node="benjy", gpu="0") > 0

    neuron = samples(f"{fleet.neurons['benjy'].url}/metrics")
    assert value(neuron, "neuron_model_state", model="fake/b", state="ready") == 1
    assert value(neuron, "neuron_model_load_seconds_count", model="fake/b", outcome="ready") == 1
    assert value(neuron, "neuron_gpu_memory_total_bytes", gpu="0") == 6 * 2**30


def test_label_cardinality_stays_bounded(fleet: Fleet) -> None:
    """A thousand distinct unknown model names add one label value, not a thousand."""
    names = [f"nobody/model-{i}" for i in range(1000)]

    def send(batch: list[str]) -> None:
        with httpx.Client(base_url=fleet.url, timeout=30) as client:
            for name in batch:
                response = client.post("/v1/chat/completions", json={"model": name, "messages": []})
                assert response.status_code == 404

    threads = [threading.Thread(target=send, args=(names[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = samples(f"{fleet.metrics_url}/metrics")
    models = {s.labels["model"] for s in found if "model" in s.labels}
    assert models <= {"fake/a", "fake/b", "helexa/small", "other", "none"}
    assert value(found, "cortex_requests_total", model="other", status="404") == 1000
    series = [s for s in found if s.name.startswith("cortex_")]
    assert len(series) < 100


def test_request_ids_and_the_request_log_line(fleet: Fleet) -> None:
    """A client's x-request-id comes back and names its one log line; one is made if absent."""
    body = {"model": "fake/a", "messages": [{"role": "user", "content": "hi"}]}
    with fleet.http() as client:
        given = client.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-42"})
        made = client.post("/v1/chat/completions", json=body)
        failed = client.post("/v1/chat/completions", json={"model": "no/such"})
    assert given.headers["x-request-id"] == "req-42"
    assert len(made.headers["x-request-id"]) == 32
    assert failed.headers["x-request-id"]
    lines = [line for line in fleet.gateway.log().splitlines() if "request_id=req-42" in line]
    assert len(lines) == 1
    for field in (
        "model=fake/a",
        "node=benjy",
        "status=200",
        "prompt_tokens=3",
        "ttft_s=",
        "latency_s=",
    ):
        assert field in lines[0]


def test_anthropic_traffic_is_metered(fleet: Fleet) -> None:
    """Messages, streamed or not, count under route=messages with their tokens and timings."""
    sdk = fleet.anthropic()
    question: list[MessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
    sdk.messages.create(model="helexa/small", max_tokens=20, messages=question)
    with sdk.messages.stream(model="fake/a", max_tokens=20, messages=question) as stream:
        assert "".join(stream.text_stream) == "The capital of France is Paris."
    sdk.messages.count_tokens(model="fake/a", messages=question)
    found = samples(f"{fleet.metrics_url}/metrics")
    messages = {"route": "messages", "model": "fake/a"}
    assert value(found, "cortex_requests_total", status="200", **messages) == 2
    assert value(found, "cortex_requests_total", alias="helexa/small", **messages) == 1
    assert value(found, "cortex_completion_tokens_total", **messages) == 12
    assert value(found, "cortex_time_to_first_token_seconds_count", **messages) == 2
    assert value(found, "cortex_decode_tokens_per_second_count", **messages) == 1
    assert value(found, "cortex_requests_total", route="count_tokens", status="200") == 1
