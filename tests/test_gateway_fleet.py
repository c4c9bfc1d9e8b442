"""The gateway in front of real neuron processes running scripted engines on fake GPUs.

These scenarios need many loads, so the neurons run scripted engines at their
engine seam (see neuron.testing.fakegpu): placement, preflight, eviction and
failover play out between real processes over real HTTP, driven with the
official openai SDK. The load → chat → evict → reload path on real vLLM is in
test_gateway_vllm.py.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import Fleet, NeuronSpec, StartFleet, fake_model

pytestmark = pytest.mark.slow

ANSWER = "The capital of France is Paris."


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    """Fake models of known sizes for scripted engines."""
    root = tmp_path / "models"
    for name, size in [
        ("small", 3),
        ("big", 30),
        ("huge", 100),
        ("a", 3),
        ("b", 3),
        ("c", 3),
        ("pin", 3),
    ]:
        fake_model(root, f"fake/{name}", size)
    return root


def sdk(fleet: Fleet, key: str = "unused") -> openai.OpenAI:
    """The official OpenAI SDK pointed at the gateway."""
    return fleet.openai(key)


def ask(fleet: Fleet, model: str) -> tuple[str, str]:
    """One chat completion: the answer and the node that served it."""
    raw = sdk(fleet).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    return raw.parse().choices[0].message.content or "", raw.headers["x-cortex-node"]


def node_state(fleet: Fleet, name: str) -> dict[str, Any]:
    """The gateway's view of one node."""
    nodes: list[dict[str, Any]] = fleet.fleet_state()["nodes"]  # type: ignore[assignment]
    return next(n for n in nodes if n["name"] == name)


def wait_for(condition: object, timeout: float = 20.0) -> None:
    """Poll ``condition()`` until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


CATALOGUE = """
[aliases]
"helexa/small" = "fake/small"
"helexa/large" = "fake/big"

[[models]]
id = "fake/small"
memory_gb = 4.1

[[models]]
id = "fake/big"
memory_gb = 31.1
[models.engine]
tensor_parallel_size = 2
"""


def test_catalogue_and_aliases(start_fleet: StartFleet, models_root: Path) -> None:
    """/v1/models lists catalogue models and aliases, with where each could run."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24, 24]), NeuronSpec("benjy", "127.0.0.3", [12])],
        CATALOGUE,
        models_root=models_root,
    )
    listing = sdk(fleet).models.list()
    ids = [m.id for m in listing.data]
    assert ids == ["fake/small", "fake/big", "helexa/small", "helexa/large"]
    entries = {m.id: m.model_dump() for m in listing.data}
    assert entries["fake/small"]["loaded"] is False
    assert entries["fake/small"]["feasible_on"] == ["beast", "benjy"]
    assert entries["fake/big"]["feasible_on"] == ["beast"]
    assert entries["helexa/large"]["alias_of"] == "fake/big"
    assert entries["helexa/large"]["feasible_on"] == ["beast"]
    alias = sdk(fleet).models.retrieve("helexa/small")  # sent as helexa%2Fsmall
    assert alias.id == "helexa/small"
    assert alias.model_dump()["alias_of"] == "fake/small"
    with pytest.raises(openai.NotFoundError):
        sdk(fleet).models.retrieve("nobody/nothing")


def test_cold_load_then_routing(start_fleet: StartFleet, models_root: Path) -> None:
    """The first request loads the model; later ones go where it is loaded."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24, 24]), NeuronSpec("benjy", "127.0.0.3", [12])],
        CATALOGUE,
        models_root=models_root,
    )
    answer, node = ask(fleet, "helexa/large")
    assert answer == ANSWER
    assert node == "beast"  # the only node with room for a tensor-parallel pair
    assert fleet.loaded()["beast"] == ["fake/big"]
    entry = sdk(fleet).models.retrieve("helexa/large").model_dump()
    assert entry["loaded"] is True
    assert entry["locations"] == ["beast"]
    for _ in range(3):
        assert ask(fleet, "fake/big")[1] == "beast"
    assert fleet.engine_starts("fake/big") == 1
    # Every answer came through the rewrite: the neuron advertises
    # http://localhost:PORT/v1, where nothing listens; it stands on 127.0.0.2.
    with fleet.http() as client:
        advertised = httpx.get(f"{fleet.neurons['beast'].url}/models/fake/big/endpoint").json()
        assert advertised["url"].startswith("http://localhost:")
        assert client.get("/health").status_code == 200


def test_concurrent_requests_for_a_cold_model_load_it_once(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """Twenty concurrent requests for a cold model cause exactly one load, then all succeed."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24, 24]), NeuronSpec("benjy", "127.0.0.3", [12])],
        CATALOGUE,
        models_root=models_root,
    )
    results: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(ask(fleet, "helexa/small")[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [ANSWER] * 20
    assert fleet.engine_starts("fake/small") == 1
    assert fleet.gateway.log().count("loading model") == 1


EVICTION = """
[[models]]
id = "fake/pin"
pinned = true
priority = 90
memory_gb = 4.1

[[models]]
id = "fake/a"
priority = 10
memory_gb = 4.1

[[models]]
id = "fake/b"
priority = 60
memory_gb = 4.1

[[models]]
id = "fake/c"
priority = 50
memory_gb = 4.1
"""


@pytest.mark.parametrize(("strategy", "evicted"), [("lru", "fake/b"), ("priority", "fake/a")])
def test_eviction_keeps_the_pinned_model(
    start_fleet: StartFleet, models_root: Path, strategy: str, evicted: str
) -> None:
    """A load that does not fit evicts by strategy (LRU or priority), never the pinned model."""
    fleet = start_fleet(
        [NeuronSpec("benjy", "127.0.0.2", [16])],
        EVICTION,
        models_root=models_root,
        eviction=f'strategy = "{strategy}"',
    )
    wait_for(lambda: "fake/pin" in fleet.loaded()["benjy"])  # pinned: loaded at start
    ask(fleet, "fake/a")
    ask(fleet, "fake/b")
    time.sleep(0.1)
    ask(fleet, "fake/a")  # b is now the least recently used; a has the lowest priority
    assert fleet.loaded()["benjy"] == ["fake/a", "fake/b", "fake/pin"]
    assert ask(fleet, "fake/c") == (ANSWER, "benjy")
    kept = {"fake/a", "fake/b", "fake/c", "fake/pin"} - {evicted}
    assert fleet.loaded()["benjy"] == sorted(kept)
    assert f"reason={strategy}" in fleet.gateway.log()


def test_idle_models_are_unloaded(start_fleet: StartFleet, models_root: Path) -> None:
    """A model idle for idle_timeout_s is unloaded; the pinned one stays."""
    fleet = start_fleet(
        [NeuronSpec("benjy", "127.0.0.2", [16])],
        EVICTION,
        models_root=models_root,
        eviction="idle_timeout_s = 2",
    )
    wait_for(lambda: "fake/pin" in fleet.loaded()["benjy"])
    ask(fleet, "fake/a")
    assert "fake/a" in fleet.loaded()["benjy"]
    wait_for(lambda: fleet.loaded()["benjy"] == ["fake/pin"], timeout=15)
    assert "reason=idle" in fleet.gateway.log()


def test_a_dead_neuron_is_reported_and_its_models_placed_elsewhere(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """A killed neuron is marked down, its models unavailable, and they load elsewhere."""
    fleet = start_fleet(
        [NeuronSpec("n1", "127.0.0.2", [12]), NeuronSpec("n2", "127.0.0.3", [12])],
        '[[models]]\nid = "fake/small"\nmemory_gb = 4.1\n',
        models_root=models_root,
    )
    _, first = ask(fleet, "fake/small")
    other = "n2" if first == "n1" else "n1"
    fleet.neurons[first].kill()
    wait_for(lambda: not node_state(fleet, first)["up"])
    entry = sdk(fleet).models.retrieve("fake/small").model_dump()
    assert entry["loaded"] is False
    assert entry["locations"] == []
    assert entry["feasible_on"] == [other]
    assert ask(fleet, "fake/small") == (ANSWER, other)


def test_streaming_arrives_incrementally(start_fleet: StartFleet, models_root: Path) -> None:
    """Stream chunks reach the client as the engine makes them, not all at the end."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        env={"NEURON_TEST_CHUNK_DELAY": "0.3"},
    )
    ask(fleet, "fake/small")  # loaded: time only the stream
    stream = sdk(fleet).chat.completions.create(
        model="helexa/small", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    arrivals = []
    text = ""
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == ANSWER
    assert len(arrivals) >= 6
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(1 for gap in gaps if gap > 0.2) >= 4


def test_error_statuses_and_envelopes(start_fleet: StartFleet, models_root: Path) -> None:
    """Each failure has its status and OpenAI envelope, and nothing of the upstream leaks."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24]), NeuronSpec("benjy", "127.0.0.3", [12])],
        '[[models]]\nid = "fake/small"\nmemory_gb = 4.1\n'
        '[[models]]\nid = "fake/huge"\nmemory_gb = 101\n',
        models_root=models_root,
        gateway='api_keys = ["sesame"]\nmax_body_bytes = 4096',
    )
    good = sdk(fleet, "sesame")
    with pytest.raises(openai.AuthenticationError):
        sdk(fleet, "wrong").models.list()
    with httpx.Client(base_url=fleet.url) as anonymous:
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.get("/health").status_code == 200
    with fleet.http(**{"x-api-key": "sesame"}) as client:
        assert client.get("/v1/models").status_code == 200

        def post(body: bytes) -> httpx.Response:
            response: httpx.Response = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            return response

        cases = [
            (post(b"{not json"), 400, "invalid_request_error"),
            (post(b'{"messages": []}'), 400, "invalid_request_error"),
            (post(b'{"model": 5, "messages": []}'), 400, "invalid_request_error"),
            (post(b'{"model": "x", "pad": "' + b"x" * 5000 + b'"}'), 413, "invalid_request_error"),
            (
                post(json.dumps({"model": "nobody/nothing", "messages": []}).encode()),
                404,
                "not_found_error",
            ),
            (
                post(json.dumps({"model": "fake/huge", "messages": []}).encode()),
                503,
                "service_unavailable",
            ),
        ]
        plain = client.post(
            "/v1/chat/completions", content=b"{}", headers={"content-type": "text/plain"}
        )
        cases.append((plain, 415, "invalid_request_error"))
        for response, status, kind in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["type"] == kind
            assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(
            model="nobody/nothing", messages=[{"role": "user", "content": "x"}]
        )

    # A neuron that dies after routing saw it up: nothing was sent back yet, so the
    # request is retried once, elsewhere (the model is cold-loaded on the other node).
    ask_raw = good.chat.completions.with_raw_response.create(
        model="fake/small", messages=[{"role": "user", "content": "x"}]
    )
    node = ask_raw.headers["x-cortex-node"]
    fleet.neurons[node].kill()
    retried = good.chat.completions.with_raw_response.create(
        model="fake/small", messages=[{"role": "user", "content": "x"}]
    )
    assert retried.headers["x-cortex-node"] != node
    assert retried.parse().choices[0].message.content == ANSWER
    # With the other node killed too, nothing can serve: 503, generic, nothing upstream.
    fleet.neurons[retried.headers["x-cortex-node"]].kill()
    with pytest.raises(openai.APIStatusError) as info:
        good.chat.completions.create(
            model="fake/small", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 503
    assert info.value.response.json()["error"]["type"] == "service_unavailable"


def test_a_client_leaving_a_stream_cancels_it_upstream(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """When the client goes mid-stream, the neuron's request ends too (nothing left in flight)."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        env={"NEURON_TEST_CHUNK_DELAY": "1.0"},
    )
    ask(fleet, "fake/small")

    def neuron_in_flight() -> int:
        models = httpx.get(f"{fleet.neurons['beast'].url}/models").json()["models"]
        return sum(m["in_flight"] for m in models)

    with httpx.Client(base_url=fleet.url, timeout=30) as client:
        body = {
            "model": "fake/small",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        }
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping it closes the response
            assert next(lines).startswith("data: ")
            assert neuron_in_flight() == 1
    wait_for(lambda: neuron_in_flight() == 0, timeout=5)
    wait_for(lambda: not fleet.fleet_state()["in_flight"], timeout=5)


def test_cortex_status_shows_the_fleet(start_fleet: StartFleet, models_root: Path) -> None:
    """`cortex status` prints nodes with their GPUs and models with their state."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24, 24]), NeuronSpec("benjy", "127.0.0.3", [12])],
        CATALOGUE,
        models_root=models_root,
    )
    ask(fleet, "helexa/small")
    result = subprocess.run(
        [sys.executable, "-m", "cortex_gateway", "status", "--gateway", fleet.url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    assert "beast" in out
    assert "benjy" in out
    assert "GPU 1" in out
    assert "/ 24.0 GiB" in out
    assert "fake/small" in out
    assert "ready" in out
    listed = subprocess.run(
        [sys.executable, "-m", "cortex_gateway", "models", "--gateway", fleet.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "alias of fake/big" in listed


def test_a_neuron_dying_mid_stream_ends_it_with_an_error_event(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """A neuron killed mid-stream ends the client's stream with an error event, not a cut."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        env={"NEURON_TEST_CHUNK_DELAY": "0.5"},
    )
    ask(fleet, "fake/small")
    stream = sdk(fleet).chat.completions.create(
        model="fake/small", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.content
    fleet.neurons["beast"].kill()
    with pytest.raises(openai.APIError) as info:
        list(chunks)
    assert info.value.message == "the model server stopped answering"
    with fleet.http() as client:
        assert client.get("/health").status_code == 200
    assert "upstream stream broke" in fleet.gateway.log()
