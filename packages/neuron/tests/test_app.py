"""The neuron's HTTP API over a scripted engine: management routes, OpenAI routes, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.types import Message

import neuron.registry as registry_module
from cortex_core.config import NeuronConfig, NeuronSection, SourceConfig
from cortex_core.neuron_api import (
    Device,
    LoadRequest,
    TokenizeRequest,
    TokenizeResponse,
    context_length_error,
)
from cortex_core.units import GIB
from cortex_core.wire import encode
from neuron import __version__
from neuron.app import NeuronApp, create_app
from neuron.engine import JsonReply, Reply
from neuron.preflight import CPU_OVERHEAD_BYTES, MIN_KV_BYTES
from neuron.registry import Registry
from neuron.testing.gguf import write_gguf
from neuron.testing.models import write_fake_model
from neuron.testing.scripted import ScriptedEngine, ScriptedFactory

WEIGHTS_BYTES = 4096
NEEDED_CPU = WEIGHTS_BYTES + MIN_KV_BYTES + CPU_OVERHEAD_BYTES
REPLY = "The capital of France is Paris."
ADVERTISE = "http://neuron.example:13131"

CHAT: dict[str, Any] = {
    "model": "test/tiny",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}
COMPLETION: dict[str, Any] = {"model": "test/tiny", "prompt": "The capital of France is"}


def write_model(root: Path, concrete: str, **overrides: Any) -> None:
    """Write a model folder (config.json and fake weights) under a path source's root."""
    write_fake_model(root, concrete, WEIGHTS_BYTES, **overrides)


@pytest.fixture
def config(tmp_path: Path) -> NeuronConfig:
    """A neuron over a local source holding test/tiny and test/exotic (unsupported)."""
    models = tmp_path / "models"
    write_model(models, "test/tiny")
    write_model(models, "test/exotic", architectures=["MambaForCausalLM"])
    return NeuronConfig(
        neuron=NeuronSection(
            name="t",
            cache_dir=str(tmp_path / "cache"),
            default_source="local",
            advertise_url=ADVERTISE + "/",
        ),
        sources={"local": SourceConfig(path=str(models))},
    )


@dataclass
class Neuron:
    """A running neuron app, its client and its scripted factory."""

    app: Starlette
    client: TestClient
    factory: ScriptedFactory

    @property
    def registry(self) -> Registry:
        """The app's registry."""
        return cast(NeuronApp, self.app.state.neuron).registry

    def load(self, model: str = "test/tiny", **fields: Any) -> dict[str, Any]:
        """Load a model through the API, asserting it answers ready."""
        response = self.client.post("/models/load", json={"model": model, **fields})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["state"] == "ready"
        return body

    def in_loop(self, func: Callable[[], object]) -> None:
        """Call ``func`` in the app's event loop thread."""
        portal = self.client.portal
        assert portal is not None
        portal.call(func)

    def state(self, model: str = "test/tiny") -> str | None:
        """The state ``GET /models`` shows for ``model``, or ``None`` if it is absent."""
        models = self.client.get("/models").json()["models"]
        return next((m["state"] for m in models if m["id"] == model), None)

    def wait_for(self, state: str, model: str = "test/tiny", timeout: float = 5.0) -> None:
        """Poll ``GET /models`` until ``model`` is in ``state``."""
        deadline = time.monotonic() + timeout
        while self.state(model) != state:
            assert time.monotonic() < deadline, f"{model} never became {state}"
            time.sleep(0.005)


@contextlib.contextmanager
def serve(
    config: NeuronConfig,
    factory: ScriptedFactory | None = None,
    *,
    devices: Callable[[], list[Device]] = list,
    host_free: int = 64 * GIB,
) -> Iterator[Neuron]:
    """Run a neuron app (lifespan included) over a scripted factory."""
    factory = factory or ScriptedFactory(reply=REPLY)
    app = create_app(config, factory, devices=devices, host_free=lambda: host_free)
    with TestClient(app) as client:
        yield Neuron(app=app, client=client, factory=factory)


@pytest.fixture
def neuron(config: NeuronConfig) -> Iterator[Neuron]:
    """A running neuron with nothing loaded."""
    with serve(config) as running:
        yield running


def assert_neuron_error(body: Any, code: str) -> None:
    """Assert ``body`` is the neuron's error envelope with ``code``."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


def assert_openai_error(body: Any, kind: str, status: int) -> None:
    """Assert ``body`` is the OpenAI error envelope of ``kind``."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == kind
    assert body["error"]["code"] == status
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


def sse_data(lines: list[str]) -> list[str]:
    """The payloads of an SSE stream's ``data:`` lines."""
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


# --- management ------------------------------------------------------------------------


def test_health(neuron: Neuron) -> None:
    """GET /health names the neuron, its version, and when it started."""
    response = neuron.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert abs(body.pop("started_at") - time.time()) < 60
    assert body == {"status": "ok", "name": "t", "version": __version__}


def test_a_token_guards_every_route_but_health_and_metrics(config: NeuronConfig) -> None:
    """With a token, management and inference need it (401 in each API's envelope)."""
    app = create_app(config, ScriptedFactory(reply=REPLY), devices=list, token="s3cret")
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200
        refused = client.get("/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        wrong = client.post(
            "/models/load", json={"model": "test/tiny"}, headers={"authorization": "Bearer no"}
        )
        assert wrong.status_code == 401
        inference = client.post("/v1/chat/completions", json=CHAT)
        assert inference.status_code == 401
        assert_openai_error(inference.json(), "authentication_error", 401)
        keyed = {"authorization": "Bearer s3cret"}
        assert client.get("/models", headers=keyed).status_code == 200
        loaded = client.post("/models/load", json={"model": "test/tiny"}, headers=keyed)
        assert loaded.status_code == 200
        # The scheme is case-insensitive (RFC 7235); the token is not.
        for scheme in ("bearer", "BEARER", "BeArEr"):
            assert client.get("/models", headers={"authorization": f"{scheme} s3cret"}).is_success
        assert client.get("/models", headers={"authorization": "bearer S3CRET"}).status_code == 401
        assert client.get("/models", headers={"authorization": "Basic s3cret"}).status_code == 401


def test_devices_empty(neuron: Neuron) -> None:
    """GET /devices on a host without GPUs answers an empty list."""
    response = neuron.client.get("/devices")
    assert response.status_code == 200
    assert response.json() == {"devices": []}


def test_devices_fields(config: NeuronConfig) -> None:
    """GET /devices shows each GPU with memory in bytes and utilization in percent."""
    gpu = Device(
        index=0,
        name="H100",
        uuid="GPU-1",
        memory_total=80 * GIB,
        memory_used=GIB,
        memory_free=79 * GIB,
        utilization=12.5,
    )
    with serve(config, devices=lambda: [gpu]) as running:
        response = running.client.get("/devices")
    assert response.status_code == 200
    assert response.json() == {
        "devices": [
            {
                "index": 0,
                "name": "H100",
                "uuid": "GPU-1",
                "memory_total": 80 * GIB,
                "memory_used": GIB,
                "memory_free": 79 * GIB,
                "utilization": 12.5,
            }
        ]
    }


def test_models_empty_then_loaded(neuron: Neuron) -> None:
    """GET /models lists nothing at first, then the loaded model with every spec field."""
    assert neuron.client.get("/models").json() == {"models": []}
    neuron.load()
    [model] = neuron.client.get("/models").json()["models"]
    for key in (
        "id",
        "source",
        "state",
        "devices",
        "memory_bytes",
        "loaded_at",
        "last_used",
        "in_flight",
        "max_model_len",
        "max_num_seqs",
    ):
        assert key in model
    assert model["id"] == "test/tiny"
    assert model["source"] == "local"
    assert model["state"] == "ready"
    assert model["devices"] == []
    assert model["memory_bytes"] == NEEDED_CPU
    assert isinstance(model["loaded_at"], float)
    assert model["in_flight"] == 0
    assert model["max_model_len"] == 2048
    assert model["max_num_seqs"] == 128  # the engine's batch limit: the gateway's default cap


def test_load_ready(neuron: Neuron) -> None:
    """POST /models/load answers 200 with the ready model."""
    response = neuron.client.post("/models/load", json={"model": "local:test/tiny"})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "test/tiny"
    assert body["state"] == "ready"
    assert body["memory_bytes"] == NEEDED_CPU
    assert body["max_model_len"] == 2048
    assert neuron.factory.starts == 1


def test_load_of_a_loaded_model_answers_at_once(neuron: Neuron) -> None:
    """A second load of a ready model answers 200 without starting another engine."""
    neuron.load()
    neuron.load()
    assert neuron.factory.starts == 1


def test_load_without_wait_answers_202(config: NeuronConfig) -> None:
    """POST /models/load with wait=false answers 202 loading; the model becomes ready later."""
    gate = asyncio.Event()
    with serve(config, ScriptedFactory(gate=gate)) as running:
        response = running.client.post("/models/load", json={"model": "test/tiny", "wait": False})
        assert response.status_code == 202
        assert response.json()["state"] == "loading"
        assert running.state() == "loading"
        endpoint = running.client.get("/models/test/tiny/endpoint")
        assert endpoint.status_code == 404
        assert_neuron_error(endpoint.json(), "not_loaded")
        running.in_loop(gate.set)
        running.wait_for("ready")


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"wait": true}', b'{"model": 5}', b'{"model": "test/tiny", "wait": "y"}'],
    ids=["not-json", "not-object", "no-model", "model-not-string", "wait-not-bool"],
)
def test_load_malformed_body(neuron: Neuron, body: bytes) -> None:
    """A malformed load body answers 400 invalid_request in the neuron's envelope."""
    response = neuron.client.post(
        "/models/load", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert_neuron_error(response.json(), "invalid_request")
    assert neuron.factory.starts == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-slash"}, 422, "invalid_model_id"),
        ({"model": "nowhere:test/tiny"}, 422, "unknown_source"),
        ({"model": "test/missing"}, 404, "model_not_found"),
        ({"model": "test/exotic"}, 422, "unsupported_model"),
        ({"model": "test/tiny", "options": {"bogus": True}}, 422, "invalid_option"),
    ],
    ids=["invalid-id", "unknown-source", "missing", "unsupported", "unknown-option"],
)
def test_load_preflight_errors(
    neuron: Neuron, body: dict[str, Any], status: int, code: str
) -> None:
    """Preflight refusals answer their status and code and leave nothing in /models."""
    response = neuron.client.post("/models/load", json=body)
    assert response.status_code == status
    assert_neuron_error(response.json(), code)
    assert neuron.client.get("/models").json() == {"models": []}
    assert neuron.factory.starts == 0


def test_load_insufficient_memory(config: NeuronConfig) -> None:
    """A model too big for the host answers 409 insufficient_memory with needed and free bytes."""
    with serve(config, host_free=NEEDED_CPU - 1) as running:
        response = running.client.post("/models/load", json={"model": "test/tiny"})
        assert response.status_code == 409
        body = response.json()
        assert_neuron_error(body, "insufficient_memory")
        assert body["error"]["details"]["needed_bytes"] == NEEDED_CPU
        assert body["error"]["details"]["devices"] == []
        assert running.client.get("/models").json() == {"models": []}


def test_load_engine_failure(config: NeuronConfig) -> None:
    """An engine that fails to start answers 500 load_failed and shows a failed model."""
    with serve(config, ScriptedFactory(fail_with="CUDA out of memory")) as running:
        response = running.client.post("/models/load", json={"model": "test/tiny"})
        assert response.status_code == 500
        body = response.json()
        assert_neuron_error(body, "load_failed")
        assert "CUDA out of memory" in body["error"]["message"]
        [model] = running.client.get("/models").json()["models"]
        assert model["state"] == "failed"
        assert "CUDA out of memory" in model["error"]


def test_unload(neuron: Neuron) -> None:
    """POST /models/unload answers 200 once the engine is gone, then 404."""
    neuron.load()
    response = neuron.client.post("/models/unload", json={"model": "test/tiny"})
    assert response.status_code == 200
    assert response.json() == {
        "id": "test/tiny",
        "state": "unloaded",
        "freed_bytes": 0,
        "host_memory_bytes": 0,
    }
    assert neuron.factory.started[0].stopped
    assert neuron.client.get("/models").json() == {"models": []}
    again = neuron.client.post("/models/unload", json={"model": "test/tiny"})
    assert again.status_code == 404
    assert_neuron_error(again.json(), "not_loaded")


def test_unload_malformed_body(neuron: Neuron) -> None:
    """A malformed unload body answers 400 invalid_request."""
    response = neuron.client.post(
        "/models/unload", content=b"nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert_neuron_error(response.json(), "invalid_request")


def test_unload_while_loading_is_busy(config: NeuronConfig) -> None:
    """Unloading a model still loading answers 409 busy."""
    gate = asyncio.Event()
    with serve(config, ScriptedFactory(gate=gate)) as running:
        running.client.post("/models/load", json={"model": "test/tiny", "wait": False})
        response = running.client.post("/models/unload", json={"model": "test/tiny"})
        assert response.status_code == 409
        assert_neuron_error(response.json(), "busy")
        running.in_loop(gate.set)
        running.wait_for("ready")


@pytest.mark.parametrize(
    "path", ["/models/test/tiny/endpoint", "/models/test%2Ftiny/endpoint"], ids=["slash", "%2F"]
)
def test_endpoint(neuron: Neuron, path: str) -> None:
    """/models/{id}/endpoint gives advertise_url + /v1, with the id's slash plain or encoded."""
    neuron.load()
    response = neuron.client.get(path)
    assert response.status_code == 200
    assert response.json() == {"url": ADVERTISE + "/v1"}


def test_endpoint_not_loaded(neuron: Neuron) -> None:
    """/models/{id}/endpoint of a model not loaded answers 404 not_loaded."""
    response = neuron.client.get("/models/test/tiny/endpoint")
    assert response.status_code == 404
    assert_neuron_error(response.json(), "not_loaded")


def test_lifespan_stops_engines(config: NeuronConfig) -> None:
    """Leaving the app's lifespan stops every engine it started."""
    with serve(config) as running:
        running.load()
        engine = running.factory.started[0]
        assert not engine.stopped
    assert engine.stopped


def test_dead_engine_shows_failed(config: NeuronConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifespan's health watch shows a model whose engine died as failed."""
    monkeypatch.setattr(registry_module, "HEALTH_INTERVAL_S", 0.001)
    with serve(config) as running:
        running.load()
        engine: ScriptedEngine = running.factory.started[0]
        engine.dead = True
        running.wait_for("failed")
        [model] = running.client.get("/models").json()["models"]
        assert model["error"] == "engine died"
        response = running.client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 404


# --- tokenize ----------------------------------------------------------------------------


def test_tokenize_messages_and_prompt(neuron: Neuron) -> None:
    """POST /tokenize counts with the model's tokenizer, for messages or a prompt."""
    neuron.load()
    messages = neuron.client.post(
        "/tokenize",
        json={"model": "test/tiny", "messages": [{"role": "user", "content": "one two three"}]},
    )
    assert messages.status_code == 200
    assert messages.json()["count"] == 3
    assert messages.json()["max_model_len"] == 2048
    prompt = neuron.client.post("/tokenize", json={"model": "test/tiny", "prompt": "a b"})
    assert prompt.status_code == 200
    assert prompt.json()["count"] == 2
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"model": "test/tiny"},
        {"model": "test/tiny", "prompt": "a", "messages": [{"role": "user", "content": "a"}]},
        {"prompt": "a"},
    ],
    ids=["neither", "both", "no-model"],
)
def test_tokenize_bad_request(neuron: Neuron, body: dict[str, Any]) -> None:
    """/tokenize needs a model and exactly one of messages or prompt: else 400."""
    neuron.load()
    response = neuron.client.post("/tokenize", json=body)
    assert response.status_code == 400
    assert_neuron_error(response.json(), "invalid_request")


def test_tokenize_engine_refusal(neuron: Neuron, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the tokenizer refuses answers 400 invalid_request and is released."""
    neuron.load()
    engine = neuron.factory.started[0]

    async def refuse(request: TokenizeRequest) -> TokenizeResponse:
        raise ValueError("messages[0] has no role")

    monkeypatch.setattr(engine, "tokenize", refuse)
    response = neuron.client.post("/tokenize", json={"model": "test/tiny", "prompt": "a"})
    assert response.status_code == 400
    body = response.json()
    assert_neuron_error(body, "invalid_request")
    assert "no role" in body["error"]["message"]
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


def test_tokenize_not_loaded(neuron: Neuron) -> None:
    """/tokenize for a model not loaded answers 404 not_loaded."""
    response = neuron.client.post("/tokenize", json={"model": "test/tiny", "prompt": "a"})
    assert response.status_code == 404
    assert_neuron_error(response.json(), "not_loaded")


# --- OpenAI ------------------------------------------------------------------------------


def test_chat_completion(neuron: Neuron) -> None:
    """A non-streaming chat completion answers the engine's JSON."""
    neuron.load()
    response = neuron.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "test/tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY}
    assert neuron.factory.started[0].requests == [CHAT]
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


def test_completion(neuron: Neuron) -> None:
    """A non-streaming legacy completion answers the engine's JSON."""
    neuron.load()
    response = neuron.client.post("/v1/completions", json=COMPLETION)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == REPLY


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/v1/chat/completions", CHAT, "chat.completion.chunk"),
        ("/v1/completions", COMPLETION, "text_completion"),
    ],
    ids=["chat", "completions"],
)
def test_streaming(neuron: Neuron, path: str, body: dict[str, Any], kind: str) -> None:
    """A streaming request answers SSE data lines ending with data: [DONE]."""
    neuron.load()
    with neuron.client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(list(response.iter_lines()))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks
    assert all(c["object"] == kind for c in chunks)
    if kind == "text_completion":
        text = "".join(c["choices"][0]["text"] for c in chunks)
    else:
        text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == REPLY
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


@pytest.mark.parametrize(
    ("refusal", "message"),
    [
        (
            b'{"error": {"message": "too long", "type": "BadRequestError", "code": 400}}',
            "too long",
        ),
        (
            b'{"error": {"message": "bad\\u0001' + b"x" * 600 + b'", "code": 400}}',
            "bad\\x01" + "x" * 496 + "…",
        ),
        (b"<html>no</html>", "the engine refused the request (status 400)"),
    ],
)
def test_an_engine_refusal_is_re_enveloped_as_relayable(
    neuron: Neuron, monkeypatch: pytest.MonkeyPatch, refusal: bytes, message: str
) -> None:
    """A 4xx from the engine keeps its status and its message (printable, bounded), marked safe."""
    neuron.load()
    engine = neuron.factory.started[0]

    async def refuse(body: bytes) -> Reply:
        return JsonReply(400, refusal)

    monkeypatch.setattr(engine, "completion", refuse)
    response = neuron.client.post("/v1/completions", json=COMPLETION)
    assert response.status_code == 400
    assert response.headers["x-cortex-relayable"] == "1"
    assert_openai_error(response.json(), "invalid_request_error", 400)
    assert response.json()["error"]["message"] == message
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


INFERENCE = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/score",
]


def test_a_prompt_too_long_keeps_its_figures(
    neuron: Neuron, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's context_length_exceeded goes out with its code and figures, relayable."""
    neuron.load()
    engine = neuron.factory.started[0]

    async def refuse(body: bytes) -> Reply:
        return JsonReply(400, encode(context_length_error(9731, 8192)))

    monkeypatch.setattr(engine, "chat", refuse)
    response = neuron.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert response.headers["x-cortex-relayable"] == "1"
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert (error["prompt_tokens"], error["max_model_len"]) == (9731, 8192)
    assert "9731 tokens" in error["message"]


@pytest.mark.parametrize("path", INFERENCE)
def test_inference_model_not_loaded(neuron: Neuron, path: str) -> None:
    """Inference for a model not loaded answers 404 in the OpenAI envelope."""
    response = neuron.client.post(path, json={**CHAT, **COMPLETION, "model": "test/other"})
    assert response.status_code == 404
    assert_openai_error(response.json(), "not_found_error", 404)


@pytest.mark.parametrize("path", INFERENCE)
@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"messages": []}', b'{"model": 7}', b'"test/tiny"'],
    ids=["not-json", "no-model", "model-not-string", "not-object"],
)
def test_inference_malformed(neuron: Neuron, path: str, body: bytes) -> None:
    """Malformed JSON or a missing/ill-typed model answers 400 in the OpenAI envelope."""
    neuron.load()
    response = neuron.client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_request_error", 400)
    assert neuron.factory.started[0].requests == []


RESPONSE: dict[str, Any] = {"model": "test/tiny", "input": "What is the capital of France?"}


def test_responses(neuron: Neuron) -> None:
    """/v1/responses answers the engine's response object, or its stream of named events."""
    neuron.load()
    response = neuron.client.post("/v1/responses", json=RESPONSE)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "response"
    assert body["output"][0]["content"][0]["text"] == REPLY
    with neuron.client.stream("POST", "/v1/responses", json={**RESPONSE, "stream": True}) as got:
        assert got.headers["content-type"].startswith("text/event-stream")
        lines = list(got.iter_lines())
    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    deltas = [json.loads(d) for d in sse_data(lines)]
    text = "".join(d["delta"] for d in deltas if d["type"] == "response.output_text.delta")
    assert text == REPLY
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


def test_an_embedding_model_loads_as_task_embed(neuron: Neuron) -> None:
    """A load with task embed starts that engine; it serves embeddings, rerank and score."""
    body = neuron.load(task="embed")
    assert body["task"] == "embed"
    assert neuron.factory.started[0].spec.task == "embed"
    [model] = neuron.client.get("/models").json()["models"]
    assert model["task"] == "embed"
    embedded = neuron.client.post(
        "/v1/embeddings", json={"model": "test/tiny", "input": ["a", "b"]}
    )
    assert embedded.status_code == 200
    vectors = [d["embedding"] for d in embedded.json()["data"]]
    assert len(vectors) == 2
    assert len(vectors[0]) == len(vectors[1]) > 0
    pair = {"model": "test/tiny", "query": "a", "queries": "a", "documents": ["b", "c"]}
    assert neuron.client.post("/v1/rerank", json=pair).status_code == 200
    assert neuron.client.post("/v1/score", json=pair).status_code == 200


@pytest.mark.parametrize(
    ("task", "path", "body", "needle"),
    [
        ("embed", "/v1/chat/completions", CHAT, "is an embedding model"),
        ("embed", "/v1/responses", RESPONSE, "is an embedding model"),
        ("generate", "/v1/embeddings", {"model": "test/tiny", "input": "a"}, "generates text"),
    ],
)
def test_a_route_not_for_the_models_task_is_a_relayable_400(
    neuron: Neuron, task: str, path: str, body: dict[str, Any], needle: str
) -> None:
    """The wrong route for a model's task: 400 saying so, safe for the gateway to relay."""
    neuron.load(task=task)
    response = neuron.client.post(path, json=body)
    assert response.status_code == 400
    assert response.headers["x-cortex-relayable"] == "1"
    assert_openai_error(response.json(), "invalid_request_error", 400)
    assert needle in response.json()["error"]["message"]
    assert neuron.factory.started[0].requests == []
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


def test_an_unknown_task_is_refused(neuron: Neuron) -> None:
    """A load with a task the neuron does not know: 400 invalid_request, nothing started."""
    response = neuron.client.post("/models/load", json={"model": "test/tiny", "task": "classify"})
    assert response.status_code == 400
    assert_neuron_error(response.json(), "invalid_request")
    assert "classify" in response.json()["error"]["message"]
    assert neuron.factory.starts == 0


def test_a_model_loaded_with_another_task_is_busy(neuron: Neuron) -> None:
    """Loading a loaded model with another task: 409 busy until it is unloaded."""
    neuron.load()
    response = neuron.client.post("/models/load", json={"model": "test/tiny", "task": "embed"})
    assert response.status_code == 409
    assert_neuron_error(response.json(), "busy")
    assert neuron.client.post("/models/unload", json={"model": "test/tiny"}).status_code == 200
    assert neuron.load(task="embed")["task"] == "embed"


def test_engine_error_is_a_500_envelope(neuron: Neuron, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that raises answers 500 in the OpenAI envelope and releases the request."""
    neuron.load()
    engine = neuron.factory.started[0]

    async def broken(body: bytes) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(engine, "chat", broken)
    response = neuron.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    assert_openai_error(response.json(), "server_error", 500)
    assert "secret internals" not in response.text
    [model] = neuron.client.get("/models").json()["models"]
    assert model["in_flight"] == 0


def test_openai_models_lists_ready_models(config: NeuronConfig) -> None:
    """GET /v1/models lists the ready models only, owned by this neuron."""
    gate = asyncio.Event()
    write_model(Path(cast(str, config.sources["local"].path)), "test/other")
    with serve(config) as running:
        assert running.client.get("/v1/models").json() == {"data": [], "object": "list"}
        running.load()
        running.factory.gate = gate
        running.client.post("/models/load", json={"model": "test/other", "wait": False})
        response = running.client.get("/v1/models")
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "list"
        [entry] = body["data"]
        assert entry["id"] == "test/tiny"
        assert entry["object"] == "model"
        assert entry["owned_by"] == "t"
        assert isinstance(entry["created"], int)
        assert entry["created"] > 0
        running.in_loop(gate.set)
        running.wait_for("ready", "test/other")


# --- metrics -----------------------------------------------------------------------------


def test_metrics(neuron: Neuron) -> None:
    """/metrics is Prometheus text showing model state and the load-time histogram."""
    neuron.load()
    response = neuron.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    state = "neuron_model_state"
    assert samples[(state, (("model", "test/tiny"), ("state", "ready")))] == 1.0
    assert samples[(state, (("model", "test/tiny"), ("state", "loading")))] == 0.0
    assert samples[("neuron_model_in_flight", (("model", "test/tiny"),))] == 0.0
    assert samples[("neuron_model_memory_bytes", (("model", "test/tiny"),))] == NEEDED_CPU
    load = (("model", "test/tiny"), ("outcome", "ready"))
    assert samples[("neuron_model_load_seconds_count", load)] == 1.0
    assert samples[("neuron_model_load_seconds_sum", load)] >= 0.0


def test_metrics_count_failed_loads(config: NeuronConfig) -> None:
    """A failed load is observed in the load-time histogram with outcome failed."""
    with serve(config, ScriptedFactory(fail_with="boom")) as running:
        running.client.post("/models/load", json={"model": "test/tiny"})
        text = running.client.get("/metrics").text
    counts = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "neuron_model_load_seconds_count"
    }
    assert counts == {(("model", "test/tiny"), ("outcome", "failed")): 1.0}


# --- unexpected errors -------------------------------------------------------------------


def test_unexpected_error_on_a_management_route(
    neuron: Neuron, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception on a management route answers a 500 internal_error envelope."""

    def broken() -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(neuron.registry, "models", broken)
    response = neuron.client.get("/models")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal error", "details": {}}
    }
    assert "secret internals" not in response.text


def test_unexpected_error_on_an_openai_route(
    neuron: Neuron, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception on a /v1 route answers a 500 OpenAI envelope."""

    def broken() -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(neuron.registry, "models", broken)
    response = neuron.client.get("/v1/models")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"message": "internal error", "type": "server_error", "param": None, "code": 500}
    }
    assert "secret internals" not in response.text


def test_unexpected_error_in_load(neuron: Neuron, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while loading answers 500 in the neuron's envelope."""

    async def broken(request: LoadRequest) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(neuron.registry, "load", broken)
    response = neuron.client.post("/models/load", json={"model": "test/tiny"})
    assert response.status_code == 500
    assert_neuron_error(response.json(), "internal_error")
    assert "secret internals" not in response.text


# --- client disconnects ------------------------------------------------------------------


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_stream_abandoned_before_its_first_chunk_releases(
    config: NeuronConfig, spec_version: str
) -> None:
    """A streaming client gone before the first chunk is not left counted in flight.

    Under ASGI 2.3 (uvicorn) Starlette cancels the stream on ``http.disconnect``,
    here while ``send`` of the response start yields; under 2.4 ``send`` raises
    ``OSError``. Either way the stream is never iterated, and its request must
    still be released, or every later unload waits out its drain timeout.
    """

    async def main() -> None:
        app = create_app(config, ScriptedFactory(reply=REPLY), devices=list)
        registry = cast(NeuronApp, app.state.neuron).registry
        await registry.load(LoadRequest(model="test/tiny"))
        body = json.dumps({**CHAT, "stream": True}).encode()
        received = False

        async def receive() -> Message:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if spec_version == "2.4":
                raise OSError("client disconnected")
            await asyncio.sleep(0)  # a server's send may yield to the loop

        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": spec_version},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        with contextlib.suppress(Exception):  # 2.4: Starlette raises ClientDisconnect
            await app(scope, receive, send)
        for _ in range(5):
            gc.collect()
            await asyncio.sleep(0.01)
        try:
            [model] = registry.models()
            assert model.in_flight == 0
        finally:
            await registry.close()

    asyncio.run(main())


GGUF_HEADER: dict[str, object] = {
    "general.architecture": "llama",
    "llama.block_count": 2,
    "llama.context_length": 4096,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.embedding_length": 64,
}


def test_a_gguf_repository_loads_its_one_file(config: NeuronConfig) -> None:
    """Sized by the GGUF file, its header read for the config; the engine is told which file."""
    assert config.sources["local"].path is not None
    folder = Path(config.sources["local"].path) / "test" / "quant"
    write_gguf(folder / "quant.Q4_K_M.gguf", GGUF_HEADER, padding=8192)
    with serve(config) as neuron:
        body = neuron.load("test/quant")
        (engine,) = neuron.factory.started
    assert engine.spec.options["gguf_file"] == "quant.Q4_K_M.gguf"
    assert engine.spec.path == folder
    assert body["memory_bytes"] > (folder / "quant.Q4_K_M.gguf").stat().st_size


def test_an_engine_without_gguf_support_refuses_in_preflight(config: NeuronConfig) -> None:
    """unsupported_model (422) with the engine's reason; no engine starts, nothing is listed."""
    assert config.sources["local"].path is not None
    folder = Path(config.sources["local"].path) / "test" / "quant"
    write_gguf(folder / "quant.gguf", GGUF_HEADER)
    factory = ScriptedFactory(gguf_refusal="this build cannot run them")
    with serve(config, factory) as neuron:
        response = neuron.client.post("/models/load", json={"model": "test/quant"})
        assert response.status_code == 422
        assert_neuron_error(response.json(), "unsupported_model")
        message = response.json()["error"]["message"]
        assert message == "test/quant has GGUF weights (quant.gguf): this build cannot run them"
        assert neuron.state("test/quant") is None
    assert factory.starts == 0
