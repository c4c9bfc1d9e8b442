"""``POST /v1/responses`` in-process: answers, streams, routing by cache key, refusals, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import TASKS_CATALOGUE, TASKS_MODELS, Harness, openai_error, serve

from cortex_gateway.testing import ANSWER, ScriptedNode, StreamAnswer

pytestmark = pytest.mark.anyio

CATALOGUE, MODELS = TASKS_CATALOGUE, TASKS_MODELS
QUESTION = "What is the capital of France?"
CODEX_BODY: dict[str, Any] = {
    "instructions": "You are Codex, a coding agent.",
    "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}
    ],
    "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": None,
    "store": False,
    "stream": True,
    "include": [],
    "prompt_cache_key": "019a-conversation",
    "client_metadata": {"originator": "codex_exec"},
}


def nodes() -> list[ScriptedNode]:
    """One node with room for both models."""
    return [ScriptedNode("beast", gpus=[24])]


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Every ``event:``/``data:`` pair of a Responses stream."""
    found = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((lines["event"], json.loads(lines["data"])))
    return found


async def respond(gw: Harness, model: str = "helexa/small", **extra: Any) -> httpx.Response:
    """``POST /v1/responses`` with one question."""
    return await gw.http.post("/v1/responses", json={"model": model, "input": QUESTION, **extra})


async def test_a_response_is_routed_served_and_metered(tmp_path: Path) -> None:
    """The alias resolves, the model cold-loads, the answer comes back as it was with its node."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await respond(gw, temperature=0)
        assert response.status_code == 200
        assert response.headers["x-cortex-node"] == "beast"
        body = response.json()
        assert body["object"] == "response"
        assert body["output"][0]["content"][0]["text"] == ANSWER
        sent = gw.node("beast").requests[0]
        assert sent.path == "/v1/responses"
        assert sent.body == {"model": "fake/small", "input": QUESTION, "temperature": 0}
        labels = {"model": "fake/small", "route": "responses"}
        assert await gw.metric("cortex_requests_total", **labels, status="200") == 1
        assert await gw.metric("cortex_prompt_tokens_total", **labels) == 6
        assert await gw.metric("cortex_completion_tokens_total", **labels) == 6
        assert await gw.metric("cortex_time_to_first_token_seconds_count", **labels) == 1


async def test_the_openai_sdk_reads_output_text(tmp_path: Path) -> None:
    """``client.responses.create`` gets ``output_text``; streamed, deltas then completed."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw, gw.openai() as client:
        raw = await client.responses.with_raw_response.create(model="helexa/small", input=QUESTION)
        assert raw.headers["x-cortex-node"] == "beast"
        assert raw.parse().output_text == ANSWER
        stream = await client.responses.create(model="helexa/small", input=QUESTION, stream=True)
        kinds = [event.type async for event in stream]
        assert kinds[0] == "response.created"
        assert kinds.count("response.output_text.delta") == len(ANSWER.split())
        assert kinds[-1] == "response.completed"


async def test_a_stream_passes_as_it_came_and_is_metered(tmp_path: Path) -> None:
    """Codex CLI's body goes on untouched but for its model; its stream's tokens are counted."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post("/v1/responses", json={"model": "helexa/small", **CODEX_BODY})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = named_events(response.text)
        deltas = "".join(e["delta"] for kind, e in events if kind == "response.output_text.delta")
        assert deltas == ANSWER
        assert events[-1][0] == "response.completed"
        assert gw.node("beast").requests[0].body == {**CODEX_BODY, "model": "fake/small"}
        labels = {"model": "fake/small", "route": "responses"}
        assert await gw.metric("cortex_completion_tokens_total", **labels) == 6
        assert await gw.metric("cortex_decode_tokens_per_second_count", **labels) == 1
        assert gw.in_flight == {}


async def test_the_prompt_cache_key_keeps_a_conversation_on_its_replica(tmp_path: Path) -> None:
    """Requests sharing a prompt_cache_key go where its first went, whatever their input."""
    two = [ScriptedNode("beast", gpus=[24]), ScriptedNode("benjy", gpus=[24])]
    for node in two:
        node.put("fake/small", "ready", memory_gib=4)
    async with serve(tmp_path, two, CATALOGUE, models=MODELS) as gw:
        served = []
        for turn in range(6):
            key = "conversation-a" if turn % 2 == 0 else "conversation-b"
            response = await respond(gw, input=f"turn {turn}", prompt_cache_key=key)
            served.append((key, response.headers["x-cortex-node"]))
        a = {node for key, node in served if key == "conversation-a"}
        b = {node for key, node in served if key == "conversation-b"}
        assert len(a) == len(b) == 1
        assert a != b  # a new key goes to the node holding the least of the index
        hits = await gw.metric("cortex_prefix_routing_total", outcome="hit")
        assert hits == 4


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"store": True}, "store: true is not supported"),
        ({"previous_response_id": "resp_123"}, "previous_response_id is not supported"),
        ({"background": True, "store": True}, "background responses are not supported"),
    ],
)
async def test_what_needs_a_kept_response_is_refused(
    tmp_path: Path, extra: dict[str, Any], needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    """store, background and previous_response_id: 400 saying none is kept; nothing sent on."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await respond(gw, **extra)
        assert response.status_code == 400
        error = openai_error(response)
        assert needle in error["message"]
        assert "this gateway keeps no responses" in error["message"]
        assert error["type"] == "invalid_request_error"
        assert gw.node("beast").requests == []
        assert "load fake/small" not in gw.node("beast").calls
        stored_false = await respond(gw, store=False)
        assert stored_false.status_code == 200
    failures = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert len(failures) == 1
    assert failures[0].__dict__["model"] == "fake/small"
    assert failures[0].__dict__["alias"] == "helexa/small"


async def test_a_kept_response_is_never_found(tmp_path: Path) -> None:
    """``GET /v1/responses/{id}``: 404 in the OpenAI envelope, saying none is kept."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.get("/v1/responses/resp_abc123")
        assert response.status_code == 404
        error = openai_error(response)
        assert error["type"] == "not_found_error"
        assert "resp_abc123" in error["message"]
        assert "keeps no responses" in error["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"input": "hi"}', "model"),
        (b'{"model": 5, "input": "hi"}', "model"),
        (b'{"model": "helexa/small", "stream": "yes", "input": "hi"}', "stream"),
        (b'{"model": "helexa/small", "store": "no", "input": "hi"}', "store"),
        (b'{"model": "helexa/small", "input": 42}', "input"),
    ],
)
async def test_malformed_bodies_are_400s(tmp_path: Path, body: bytes, needle: str) -> None:
    """Bodies that do not decode (the gateway's own view, or the neuron's): 400 naming why."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post(
            "/v1/responses", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert needle in openai_error(response)["message"]


async def test_unknown_models_and_the_wrong_task(tmp_path: Path) -> None:
    """An unknown model is 404; an embedding model, catalogued or not, is 400 saying why."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        unknown = await respond(gw, "nobody/nothing")
        assert unknown.status_code == 404
        assert openai_error(unknown)["type"] == "not_found_error"
        embedder = await respond(gw, "fake/embedder")
        assert embedder.status_code == 400
        message = openai_error(embedder)["message"]
        assert "is an embedding model" in message
        assert "/v1/embeddings" in message
        assert "load fake/embedder" not in gw.node("beast").calls
        gw.node("beast").put("org/hand-loaded", "ready", task="embed")
        await gw.state.lifecycle.refresh_all()
        outside = await respond(gw, "org/hand-loaded")
        assert outside.status_code == 400  # the neuron's refusal, relayed
        assert "is an embedding model" in openai_error(outside)["message"]


async def test_a_stream_cut_ends_with_response_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A neuron gone mid-stream: response.failed with the response's id, counted once."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        await respond(gw)
        node = gw.node("beast")
        events = node.answer(
            "/v1/responses", {"model": "fake/small", "input": QUESTION, "stream": True}
        )
        assert isinstance(events, StreamAnswer)
        node.answers.append(StreamAnswer(events.events, break_after=5))
        response = await respond(gw, stream=True)
        assert response.status_code == 200
        received = named_events(response.text)
        kinds = [kind for kind, _ in received]
        assert kinds[:5] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
        ]
        kind, failed = received[-1]
        assert kind == failed["type"] == "response.failed"
        assert failed["response"]["id"] == received[0][1]["response"]["id"]
        assert failed["response"]["status"] == "failed"
        assert failed["response"]["error"]["message"] == "the model server stopped answering"
        assert failed["sequence_number"] == received[-2][1]["sequence_number"] + 1
        assert await gw.metric("cortex_request_errors_total", route="responses") == 1
        assert gw.in_flight == {}
        assert node.open_requests == 0
    failures = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert len(failures) == 1
