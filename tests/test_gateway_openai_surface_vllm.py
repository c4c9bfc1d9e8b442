"""Responses and embeddings through a real gateway to a real CPU neuron, driven by real clients.

One fleet serves every test here (each engine takes about a minute to start on
these machines), so they run in file order: SmolLM2-135M-Instruct (float32:
its answers are checked) answers the ``openai`` SDK's ``responses.create``,
plain and streamed, and one ``codex exec`` of the pinned Codex CLI; then a
second entry of the same checkpoint, ``task = "embed"``, is added to
``models.toml`` and the gateway reloaded, and ``embeddings.create`` cold-loads
it as a pooling engine; rerank, score and the wrong task's 400s close.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from neuron.testing.models import prepare_smollm2
from tests.clients import CODEX, npm_client
from tests.support import Fleet, NeuronSpec, launch

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
QUESTION = "What is the capital of France?"
SMOL = "test/smollm2"
EMBED = "test/smollm2-embed"
CATALOGUE = f"""
[aliases]
"helexa/small" = "{SMOL}"

[[models]]
id = "{SMOL}"
[models.engine]
max_model_len = 8192  # Codex CLI's instructions and tools alone are thousands of tokens
dtype = "float32"  # its answers are checked: the same on every CPU (docs/neuron.md)
"""
EMBEDDER = f"""
[[models]]
id = "{EMBED}"
task = "embed"
[models.engine]
max_model_len = 512
dtype = "float32"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A gateway and one real CPU neuron whose path source holds SmolLM2 under two ids."""
    cache = Path(os.environ.get("CORTEX_MODEL_CACHE", REPO / ".cache" / "models"))
    smol = prepare_smollm2(cache / "smollm2-135m-instruct")
    root = tmp_path_factory.mktemp("models")
    (root / "test").mkdir()
    (root / SMOL).symlink_to(smol, target_is_directory=True)
    (root / EMBED).symlink_to(smol, target_is_directory=True)
    work = tmp_path_factory.mktemp("surface") / "fleet"
    started = launch(
        work, [NeuronSpec("cpu1", "127.0.0.7", real=True)], CATALOGUE, models_root=root
    )
    try:
        started.start()
        yield started
    finally:
        started.stop()


def test_responses_answer_with_output_text_and_the_node(fleet: Fleet) -> None:
    """``client.responses.create`` through the alias: output_text, and x-cortex-node."""
    client = fleet.openai()
    raw = client.responses.with_raw_response.create(
        model="helexa/small", input=QUESTION, temperature=0, max_output_tokens=30
    )
    assert raw.headers["x-cortex-node"] == "cpu1"
    response = raw.parse()
    assert response.status == "completed"
    assert "Paris" in response.output_text
    assert response.usage is not None
    assert response.usage.input_tokens > 5


def test_max_output_tokens_past_the_context_is_served(fleet: Fleet) -> None:
    """max_output_tokens 32,000 on an 8,192-token model answers, as chat's max_tokens does."""
    response = fleet.openai().responses.create(
        model="helexa/small", input=QUESTION, temperature=0, max_output_tokens=32000
    )
    assert response.status == "completed"
    assert "Paris" in response.output_text


def test_a_streamed_response_ends_completed(fleet: Fleet) -> None:
    """``stream=True``: output_text deltas, token by token, then response.completed."""
    client = fleet.openai()
    stream = client.responses.create(
        model="helexa/small", input=QUESTION, temperature=0, max_output_tokens=30, stream=True
    )
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3
    assert "Paris" in "".join(deltas)
    assert events[-1].type in ("response.completed", "response.incomplete")
    with httpx.Client() as http:
        metrics = http.get(f"{fleet.metrics_url}/metrics").text
    ttft = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("cortex_time_to_first_token_seconds_count")
        and 'route="responses"' in line
    )
    assert ttft >= 2


def test_codex_exec_answers(fleet: Fleet, tmp_path: Path) -> None:
    """One ``codex exec`` through the gateway exits 0, with no ``unexpected status``."""
    codex = npm_client(CODEX)
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(
        'model = "helexa/small"\n'
        'model_provider = "cortex"\n'
        "[model_providers.cortex]\n"
        'name = "cortex"\n'
        f'base_url = "{fleet.url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "CORTEX_TEST_KEY"\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "CORTEX_TEST_KEY": "unused",
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [str(codex), "exec", "--skip-git-repo-check", QUESTION],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "unexpected status" not in output, output[-4000:]
    assert "responses" in fleet.gateway.log()


def test_an_embedding_model_added_and_reloaded_is_cold_loaded(fleet: Fleet) -> None:
    """A task = "embed" entry, reloaded: embeddings.create cold-loads it; two equal vectors."""
    models_toml = fleet.workdir / "models.toml"
    models_toml.write_text(CATALOGUE + EMBEDDER)
    with fleet.http() as http:
        reloaded = http.post("/admin/reload", json={})
        assert reloaded.status_code == 200, reloaded.text
        listing = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert listing[EMBED]["task"] == "embed"
    assert listing[EMBED]["loaded"] is False
    assert listing["helexa/small"]["task"] == "generate"
    client = fleet.openai()
    answer = client.embeddings.create(model=EMBED, input=["a", "b"])
    vectors = [d.embedding for d in answer.data]
    assert len(vectors) == 2
    assert len(vectors[0]) == len(vectors[1]) > 100
    assert vectors[0] != vectors[1]
    assert answer.usage.prompt_tokens >= 2
    assert fleet.loaded() == {"cpu1": sorted([SMOL, EMBED])}
    assert fleet.engine_starts(EMBED) == 1


def test_rerank_and_score_on_the_embedding_model(fleet: Fleet) -> None:
    """The same embedding model serves rerank and score, through vLLM's scoring layer."""
    documents = ["Paris is the capital of France.", "Bananas are yellow."]
    with fleet.http() as http:
        rerank = http.post(
            "/v1/rerank", json={"model": EMBED, "query": QUESTION, "documents": documents}
        )
        assert rerank.status_code == 200, rerank.text
        results = rerank.json()["results"]
        assert sorted(r["index"] for r in results) == [0, 1]
        score = http.post(
            "/v1/score", json={"model": EMBED, "queries": QUESTION, "documents": documents}
        )
        assert score.status_code == 200, score.text
        assert [d["index"] for d in score.json()["data"]] == [0, 1]


def test_the_wrong_task_is_a_400(fleet: Fleet) -> None:
    """Chat with the embedding model, or embeddings with the generating one: 400 saying so."""
    client = fleet.openai()
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model=EMBED, messages=[{"role": "user", "content": QUESTION}], max_tokens=5
        )
    assert "is an embedding model" in str(chat.value)
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model="helexa/small", input="a")
    assert "generates text" in str(embed.value)
    with pytest.raises(openai.BadRequestError) as stored:
        client.responses.create(model="helexa/small", input=QUESTION, store=True)
    assert "keeps no responses" in str(stored.value)
