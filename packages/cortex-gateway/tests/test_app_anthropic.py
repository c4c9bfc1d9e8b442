"""The Anthropic routes in-process: messages, streams with pings, count_tokens, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import QUESTION, disconnecting, serve

from cortex_gateway.routes import anthropic as anthropic_routes
from cortex_gateway.testing import (
    ANSWER,
    JsonAnswer,
    ScriptedModel,
    ScriptedNode,
    StreamAnswer,
    chat_chunk,
)

pytestmark = pytest.mark.anyio

CATALOGUE = """
[aliases]
"helexa/small" = "fake/small"

[[models]]
id = "fake/small"
memory_gb = 4
"""


def models(load_s: float = 0.0) -> list[ScriptedModel]:
    """fake/small, loading in ``load_s`` seconds."""
    return [ScriptedModel("fake/small", memory_gib=4, load_s=load_s)]


def nodes() -> list[ScriptedNode]:
    """One node with room for fake/small."""
    return [ScriptedNode("beast", gpus=[24])]


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """An Anthropic SSE body as (event, data) pairs."""
    pairs = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            pairs.append((lines["event"], json.loads(lines["data"])))
    return pairs


def anthropic_error(body: dict[str, Any]) -> dict[str, Any]:
    """The error object of an Anthropic envelope, checked for its shape."""
    assert body["type"] == "error"
    assert set(body) == {"type", "error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "message"}
    return error


async def test_a_message_is_translated_both_ways(tmp_path: Path) -> None:
    """The Messages body goes out as an OpenAI chat request; the answer comes back translated."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        response = await gw.message("helexa/small", system="Be brief.", temperature=0.5)
        assert response.status_code == 200
        assert response.headers["x-cortex-node"] == "beast"
        message = response.json()
        assert message["type"] == "message"
        assert message["model"] == "fake/small"
        assert message["content"] == [{"type": "text", "text": ANSWER}]
        assert message["stop_reason"] == "end_turn"
        assert message["usage"]["output_tokens"] == 6
        sent = gw.node("beast").requests[0].body
        assert sent["model"] == "fake/small"
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["max_tokens"] == 50
        assert await gw.metric("cortex_requests_total", route="messages", status="200") == 1
        assert await gw.metric("cortex_completion_tokens_total", route="messages") == 6


async def test_a_streamed_message(tmp_path: Path) -> None:
    """A stream follows Anthropic's event order and counts its tokens."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        await gw.message("fake/small")
        response = await gw.message("fake/small", stream=True)
        assert response.status_code == 200
        events = sse(response.text)
        kinds = [kind for kind, _ in events]
        assert kinds[:2] == ["message_start", "ping"]
        assert kinds[-2:] == ["message_delta", "message_stop"]
        text = "".join(
            data["delta"]["text"] for kind, data in events if kind == "content_block_delta"
        )
        assert text == ANSWER
        assert events[-2][1]["usage"]["output_tokens"] == 6
        decode_rates = await gw.metric("cortex_decode_tokens_per_second_count", route="messages")
        assert decode_rates <= 1
        assert await gw.metric("cortex_completion_tokens_total", route="messages") == 12
        assert gw.in_flight == {}


async def test_a_stream_waiting_for_a_cold_load_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream whose model is still loading starts at once and pings until it answers."""
    monkeypatch.setattr(anthropic_routes, "READY_WITHIN_S", 0.05)
    monkeypatch.setattr(anthropic_routes, "PING_EVERY_S", 0.05)
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(load_s=0.4)) as gw:
        response = await gw.message("helexa/small", stream=True)
        assert response.status_code == 200
        kinds = [kind for kind, _ in sse(response.text)]
        assert kinds[0] == "message_start"
        assert kinds.count("ping") >= 3
        assert kinds[-2:] == ["message_delta", "message_stop"]
        assert response.headers.get("x-cortex-node") is None  # not known when it started


async def test_a_stream_that_fails_at_once_gets_a_status(tmp_path: Path) -> None:
    """An unknown model or a refusal within the first second is an HTTP error, not a stream."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        unknown = await gw.message("nobody/nothing", stream=True)
        assert unknown.status_code == 404
        assert anthropic_error(unknown.json())["type"] == "not_found_error"
        await gw.message("fake/small")
        refusal = b'{"error": {"message": "prompt is too long"}}'
        gw.node("beast").answers.append(JsonAnswer(refusal, 400, relayable=True))
        refused = await gw.message("fake/small", stream=True)
        assert refused.status_code == 400
        assert anthropic_error(refused.json()) == {
            "type": "invalid_request_error",
            "message": "prompt is too long",
        }


async def test_a_load_failing_after_the_stream_started_ends_it_with_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream already started: the failure is one bare error event, counted once."""
    monkeypatch.setattr(anthropic_routes, "READY_WITHIN_S", 0.05)
    failing = [ScriptedModel("fake/small", memory_gib=4, load_s=0.2, fail="load_failed")]
    async with serve(tmp_path, nodes(), CATALOGUE, models=failing) as gw:
        response = await gw.message("fake/small", stream=True)
        assert response.status_code == 200
        events = sse(response.text)
        assert events[-1][0] == "error"
        assert events[-1][1]["error"]["type"] == "overloaded_error"
        assert await gw.metric("cortex_request_errors_total", route="messages") == 1


async def test_a_stream_broken_upstream_ends_with_an_error_event(tmp_path: Path) -> None:
    """A neuron dying mid-stream: the open block stays open and an error event ends it."""
    chunks = [chat_chunk("fake/small", {"content": w}) for w in ("Paris", " is")]
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        await gw.message("fake/small")
        gw.node("beast").answers.append(StreamAnswer(chunks, break_after=1))
        response = await gw.message("fake/small", stream=True)
        events = sse(response.text)
        assert [kind for kind, _ in events][-2:] == ["content_block_delta", "error"]
        assert anthropic_error(events[-1][1])["message"] == "the model server stopped answering"
        assert gw.in_flight == {}


async def test_a_stream_cut_short_upstream_is_finished(tmp_path: Path) -> None:
    """An upstream stream that ends without [DONE] still ends the message properly."""
    chunks = [chat_chunk("fake/small", {"content": "Paris"}, finish="stop")]
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        await gw.message("fake/small")
        gw.node("beast").answers.append(StreamAnswer(chunks))
        response = await gw.message("fake/small", stream=True)
        assert [kind for kind, _ in sse(response.text)][-2:] == ["message_delta", "message_stop"]


async def test_a_client_leaving_a_message_stream(tmp_path: Path) -> None:
    """The client goes: the upstream request is closed and the lease released."""
    chunks = [chat_chunk("fake/small", {"content": w}) for w in ("Paris", " is")]
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        await gw.message("fake/small")
        beast = gw.node("beast")
        beast.answers.append(StreamAnswer(chunks, hang_after=1))
        body = {"model": "fake/small", "max_tokens": 5, "messages": QUESTION, "stream": True}
        status, received = await disconnecting(
            gw.api, "/v1/messages", json.dumps(body).encode(), after=3
        )
        assert status == 200
        assert received
        assert beast.open_requests == 0
        assert gw.in_flight == {}


async def test_a_client_leaving_while_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving during a cold load stops waiting, but the load carries on for the next client."""
    monkeypatch.setattr(anthropic_routes, "READY_WITHIN_S", 0.05)
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(load_s=0.3)) as gw:
        body = {"model": "fake/small", "max_tokens": 5, "messages": QUESTION, "stream": True}
        status, _ = await disconnecting(gw.api, "/v1/messages", json.dumps(body).encode())
        assert status == 200
        response = await gw.message("fake/small")
        assert response.status_code == 200
        assert gw.node("beast").calls.count("load fake/small") == 1
        assert len(gw.node("beast").requests) == 1  # the one who left sent nothing on
        assert gw.in_flight == {}


async def test_a_malformed_upstream_answer_is_a_502(tmp_path: Path) -> None:
    """An answer that is no chat completion: 502, nothing of it passed on."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        await gw.message("fake/small")
        gw.node("beast").answers.append(JsonAnswer(b'{"secret": true}'))
        response = await gw.message("fake/small")
        assert response.status_code == 502
        error = anthropic_error(response.json())
        assert error == {"type": "api_error", "message": "the model server's answer was malformed"}


async def test_bad_bodies_get_anthropic_errors(tmp_path: Path) -> None:
    """Malformed or ill-typed bodies: 400 in Anthropic's envelope, naming the field."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        missing = await gw.http.post("/v1/messages", json={"model": "fake/small", "messages": []})
        assert missing.status_code == 400
        assert "max_tokens" in anthropic_error(missing.json())["message"]
        broken = await gw.http.post("/v1/messages", content=b"{nope")
        assert anthropic_error(broken.json())["type"] == "invalid_request_error"


async def test_count_tokens(tmp_path: Path) -> None:
    """Counted by the routed model's tokenizer; a neuron that cannot count is a 502."""
    body = {"model": "helexa/small", "messages": [{"role": "user", "content": "one two three"}]}
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(), poll_interval_s=3600) as gw:
        counted = await gw.http.post("/v1/messages/count_tokens", json=body)
        assert counted.status_code == 200
        assert counted.json() == {"input_tokens": 3}
        assert counted.headers["x-cortex-node"] == "beast"
        gw.node("beast").forget("fake/small")
        failed = await gw.http.post("/v1/messages/count_tokens", json=body)
        assert failed.status_code == 502
        assert anthropic_error(failed.json())["message"] == (
            "the model server could not count the tokens"
        )
        assert await gw.metric("cortex_requests_total", route="count_tokens") == 2
