"""Embeddings, rerank and score in-process: models with ``task = "embed"``, and the wrong task."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import QUESTION, TASKS_CATALOGUE, TASKS_MODELS, openai_error, serve

from cortex_core.scripted import EMBEDDING_DIMENSIONS, embedding
from cortex_gateway.testing import JsonAnswer, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE, MODELS = TASKS_CATALOGUE, TASKS_MODELS


def nodes() -> list[ScriptedNode]:
    """One node with room for both models."""
    return [ScriptedNode("beast", gpus=[24])]


async def test_embeddings_cold_load_an_embedding_model(tmp_path: Path) -> None:
    """The alias resolves, the model loads as task embed, and each input gets its vector."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post(
            "/v1/embeddings", json={"model": "helexa/embed", "input": ["a", "b"]}
        )
        assert response.status_code == 200
        assert response.headers["x-cortex-node"] == "beast"
        data = response.json()["data"]
        assert [d["embedding"] for d in data] == [embedding("a"), embedding("b")]
        assert gw.node("beast").models["fake/embedder"].task == "embed"
        sent = gw.node("beast").requests[0]
        assert sent.path == "/v1/embeddings"
        assert sent.body == {"model": "fake/embedder", "input": ["a", "b"]}
        labels = {"model": "fake/embedder", "route": "embeddings"}
        assert await gw.metric("cortex_requests_total", **labels, status="200") == 1
        assert await gw.metric("cortex_prompt_tokens_total", **labels) == 2
        assert await gw.metric("cortex_completion_tokens_total", **labels) == 0
        # Nothing is generated: no time to first token, no decode rate.
        assert await gw.metric("cortex_time_to_first_token_seconds_count", **labels) == 0
        assert await gw.metric("cortex_decode_tokens_per_second_count", **labels) == 0
        assert await gw.metric("cortex_request_duration_seconds_count", **labels) == 1


async def test_the_openai_sdk_gets_two_vectors_of_equal_length(tmp_path: Path) -> None:
    """``client.embeddings.create(input=["a", "b"])``: base64 on the wire, two equal vectors."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw, gw.openai() as client:
        answer = await client.embeddings.create(model="helexa/embed", input=["a", "b"])
        vectors = [d.embedding for d in answer.data]
        assert len(vectors) == 2
        assert len(vectors[0]) == len(vectors[1]) == EMBEDDING_DIMENSIONS
        assert vectors[0] == pytest.approx(embedding("a"))
        assert gw.node("beast").requests[0].body["encoding_format"] == "base64"


async def test_rerank_and_score_go_to_the_embedding_model(tmp_path: Path) -> None:
    """/v1/rerank and /v1/score are forwarded as they came and counted under their routes."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        documents = ["Paris is in France", "bananas"]
        rerank = await gw.http.post(
            "/v1/rerank",
            json={"model": "helexa/embed", "query": "France", "documents": documents},
        )
        assert rerank.status_code == 200
        assert sorted(r["index"] for r in rerank.json()["results"]) == [0, 1]
        score = await gw.http.post(
            "/v1/score",
            json={"model": "helexa/embed", "queries": "France", "documents": documents},
        )
        assert score.status_code == 200
        assert [d["index"] for d in score.json()["data"]] == [0, 1]
        assert [r.path for r in gw.node("beast").requests] == ["/v1/rerank", "/v1/score"]
        for route in ("rerank", "score"):
            assert await gw.metric("cortex_requests_total", route=route, status="200") == 1


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/chat/completions", {"messages": QUESTION}, "not /v1/chat/completions"),
        ("/v1/completions", {"prompt": "Paris"}, "not /v1/completions"),
        ("/v1/responses", {"input": "Paris"}, "not /v1/responses"),
    ],
)
async def test_generating_on_an_embedding_model_is_a_400(
    tmp_path: Path,
    path: str,
    body: dict[str, Any],
    needle: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Chat, completions or responses with an embedding model: 400 saying so, nothing loaded."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post(path, json={"model": "helexa/embed", **body})
        assert response.status_code == 400
        message = openai_error(response)["message"]
        assert "model 'fake/embedder' is an embedding model" in message
        assert needle in message
        assert gw.node("beast").calls.count("load fake/embedder") == 0
        assert await gw.metric("cortex_request_errors_total", kind="bad_request") == 1
    failures = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert len(failures) == 1
    assert failures[0].__dict__["model"] == "fake/embedder"
    assert failures[0].__dict__["status"] == 400


async def test_an_anthropic_message_to_an_embedding_model_is_a_400(tmp_path: Path) -> None:
    """/v1/messages with an embedding model: 400 in Anthropic's envelope."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.message("helexa/embed")
        assert response.status_code == 400
        body = response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert "is an embedding model" in body["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/rerank", "/v1/score"])
async def test_pooling_on_a_generating_model_is_a_400(tmp_path: Path, path: str) -> None:
    """Embeddings, rerank or score with a generating model: 400 naming the task it needs."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        body = {"model": "helexa/small", "input": "a", "query": "a", "documents": ["b"]}
        response = await gw.http.post(path, json=body)
        assert response.status_code == 400
        message = openai_error(response)["message"]
        assert "model 'fake/small' generates text" in message
        assert 'task = "embed"' in message
        assert gw.node("beast").requests == []


async def test_a_hand_loaded_embedding_model_is_refused_by_its_neuron(tmp_path: Path) -> None:
    """Outside the catalogue the gateway does not know the task: the neuron's 400 is relayed."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        gw.node("beast").put("org/hand-loaded", "ready", task="embed")
        await gw.state.lifecycle.refresh_all()
        chat = await gw.chat("org/hand-loaded")
        assert chat.status_code == 400
        assert "is an embedding model" in openai_error(chat)["message"]
        embedded = await gw.http.post(
            "/v1/embeddings", json={"model": "org/hand-loaded", "input": "a"}
        )
        assert embedded.status_code == 200
        listing = (await gw.http.get("/v1/models")).json()["data"]
        assert {m["id"]: m["task"] for m in listing}["org/hand-loaded"] == "embed"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"input": ["a"]}', 400, "model"),
        (b'{"model": ["helexa/embed"], "input": ["a"]}', 400, "model"),
        (b'{"model": "helexa/embed"}', 400, "input"),
        (b'{"model": "helexa/embed", "input": {"a": 1}}', 400, "input"),
        (b'{"model": "nobody/nothing", "input": "a"}', 404, "does not exist"),
    ],
)
async def test_bad_embeddings_requests(
    tmp_path: Path, body: bytes, status: int, needle: str
) -> None:
    """Malformed bodies are 400s naming what is wrong; an unknown model is a 404."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post(
            "/v1/embeddings", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status
        assert needle in openai_error(response)["message"]


async def test_an_embeddings_answer_cut_short_is_a_502(tmp_path: Path) -> None:
    """A neuron gone while its answer is read: a generic 502, nothing else leaked."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        ok = await gw.http.post("/v1/embeddings", json={"model": "helexa/embed", "input": "a"})
        assert ok.status_code == 200
        gw.node("beast").answers.append(JsonAnswer(b'{"data": [', break_read=True))
        cut = await gw.http.post("/v1/embeddings", json={"model": "helexa/embed", "input": "a"})
        assert cut.status_code == 502
        assert openai_error(cut)["type"] == "upstream_error"
        assert gw.in_flight == {}


async def test_models_list_each_task(tmp_path: Path) -> None:
    """/v1/models says each model's task; an alias mirrors its target's."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        listing = (await gw.http.get("/v1/models")).json()["data"]
        tasks = {m["id"]: m["task"] for m in listing}
        assert tasks == {
            "fake/small": "generate",
            "fake/embedder": "embed",
            "helexa/small": "generate",
            "helexa/embed": "embed",
        }
        one = (await gw.http.get("/v1/models/helexa%2Fembed")).json()
        assert one["task"] == "embed"
