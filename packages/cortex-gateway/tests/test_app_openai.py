"""The OpenAI routes in-process: answers, streams, every error path, auth, health and metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import QUESTION, disconnecting, serve, value
from gateway_harness import openai_error as error_of

from cortex_gateway.testing import (
    ANSWER,
    JsonAnswer,
    Refuse,
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

[[models]]
id = "fake/huge"
memory_gb = 100
"""
MODELS = [ScriptedModel("fake/small", memory_gib=4), ScriptedModel("fake/huge", memory_gib=100)]


def nodes() -> list[ScriptedNode]:
    """One node with room for fake/small."""
    return [ScriptedNode("beast", gpus=[24])]


def stream_events(text: str) -> list[dict[str, Any]]:
    """The JSON of every data event of an SSE body but [DONE]."""
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


async def test_health_and_models_listing(tmp_path: Path) -> None:
    """/health is open; /v1/models lists catalogue models and aliases, one by one too."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, api_keys=["k"]) as gw:
        health = await gw.http.get("/health")
        assert health.json()["status"] == "ok"
        keyed = {"authorization": "Bearer k"}
        listing = (await gw.http.get("/v1/models", headers=keyed)).json()
        ids = [m["id"] for m in listing["data"]]
        assert ids == ["fake/small", "fake/huge", "helexa/small"]
        assert listing["data"][0]["feasible_on"] == ["beast"]
        assert listing["data"][1]["feasible_on"] == []
        alias = await gw.http.get("/v1/models/helexa%2Fsmall", headers=keyed)
        assert alias.json()["alias_of"] == "fake/small"
        missing = await gw.http.get("/v1/models/nobody/nothing", headers=keyed)
        assert missing.status_code == 404
        assert error_of(missing)["type"] == "not_found_error"


async def test_a_cold_model_is_loaded_then_served(tmp_path: Path) -> None:
    """The first request loads the model; its answer comes back byte for byte with its node."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.chat("helexa/small", temperature=0.25, extra={"kept": [1, 2]})
        assert response.status_code == 200
        assert response.headers["x-cortex-node"] == "beast"
        assert len(response.headers["x-request-id"]) == 32
        assert response.json()["choices"][0]["message"]["content"] == ANSWER
        sent = gw.node("beast").requests[0]
        assert sent.path == "/v1/chat/completions"
        assert sent.body["model"] == "fake/small"  # the alias resolved
        assert sent.body["temperature"] == 0.25
        assert sent.body["extra"] == {"kept": [1, 2]}
        assert sent.headers["x-request-id"] == response.headers["x-request-id"]
        assert gw.node("beast").calls.count("load fake/small") == 1
        again = await gw.chat("fake/small")
        assert again.status_code == 200
        assert gw.node("beast").calls.count("load fake/small") == 1
        assert gw.in_flight == {}
        requests = await gw.metric("cortex_requests_total", model="fake/small", status="200")
        assert requests == 2
        alias = await gw.metric("cortex_requests_total", alias="helexa/small")
        assert alias == 1


async def test_legacy_completions_are_forwarded(tmp_path: Path) -> None:
    """/v1/completions goes to the neuron's /v1/completions and counts under its route."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post(
            "/v1/completions", json={"model": "fake/small", "prompt": "The capital"}
        )
        assert response.status_code == 200
        assert response.json()["choices"][0]["text"] == ANSWER
        assert gw.node("beast").requests[0].path == "/v1/completions"
        assert await gw.metric("cortex_completion_tokens_total", route="completions") == 6


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42.a:b/c@d", True),
        ("r" * 128, True),
        ("r" * 129, False),
        ("a\x01b", False),
        ("a b", False),
    ],
)
async def test_a_client_request_id_comes_back_if_it_is_plain(
    tmp_path: Path, given: str, kept: bool
) -> None:
    """A plain x-request-id (128 characters at most) is kept end to end; others are replaced."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post(
            "/v1/chat/completions",
            json={"model": "fake/small", "messages": QUESTION},
            headers={"x-request-id": given},
        )
        assert response.status_code == 200
        answered = response.headers["x-request-id"]
        assert (answered == given) is kept
        assert len(answered) == len(given) if kept else len(answered) == 32
        assert gw.node("beast").requests[0].headers["x-request-id"] == answered


@pytest.mark.parametrize(
    ("body", "status", "kind", "needle"),
    [
        (b"{not json", 400, "bad_request", "not valid JSON"),
        (b'{"messages": []}', 400, "bad_request", "model"),
        (b'{"model": 5, "messages": []}', 400, "bad_request", "model"),
        (b"[1, 2]", 400, "bad_request", "object"),
        (b'{"model": "x", "stream": "yes"}', 400, "bad_request", "stream"),
        (b'{"model": "x", "pad": "' + b"x" * 5000 + b'"}', 413, "too_large", "4096"),
        (b'{"model": "fake/small"}', 415, "bad_request", "application/json"),
    ],
)
async def test_bad_bodies(
    tmp_path: Path,
    body: bytes,
    status: int,
    kind: str,
    needle: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Malformed, ill-typed or oversized bodies: their status, one log line, one count."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    kind_of_body = "text/plain" if status == 415 else "application/json"
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, max_body_bytes=4096) as gw:
        response = await gw.http.post(
            "/v1/chat/completions", content=body, headers={"content-type": kind_of_body}
        )
        assert response.status_code == status
        error = error_of(response)
        assert error["type"] == "invalid_request_error"
        assert needle in error["message"]
        assert await gw.metric("cortex_request_errors_total", kind=kind) == 1
        assert gw.node("beast").requests == []
    failures = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert len(failures) == 1
    assert failures[0].__dict__["status"] == status


async def test_an_oversized_body_without_content_length_is_refused_while_read(
    tmp_path: Path,
) -> None:
    """A chunked body is counted as it arrives and refused once it passes the limit."""

    async def chunks() -> Any:
        yield b'{"model": "fake/small", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, max_body_bytes=4096) as gw:
        response = await gw.http.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413


async def test_unknown_and_unplaceable_models(tmp_path: Path) -> None:
    """An unknown model is 404; one that fits nowhere is 503, saying so."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        unknown = await gw.chat("nobody/nothing")
        assert unknown.status_code == 404
        assert error_of(unknown)["type"] == "not_found_error"
        assert "x-cortex-node" not in unknown.headers
        huge = await gw.chat("fake/huge")
        assert huge.status_code == 503
        error = error_of(huge)
        assert error["type"] == "service_unavailable"
        assert "cannot be placed" in error["message"]
        assert await gw.metric("cortex_request_errors_total", model="other", kind="not_found") == 1
        assert await gw.metric("cortex_request_errors_total", model="fake/huge") == 1


async def test_a_neuron_gone_after_routing_is_a_generic_502(tmp_path: Path) -> None:
    """Connections refused twice (the retry too): 502, generic, with the node named."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        assert (await gw.chat("fake/small")).status_code == 200
        gw.node("beast").answers.extend([Refuse(), Refuse()])
        response = await gw.chat("fake/small")
        assert response.status_code == 502
        assert error_of(response)["message"] == "the model server could not be reached"
        assert response.headers["x-cortex-node"] == "beast"
        assert gw.in_flight == {}
        assert await gw.metric("cortex_request_errors_total", kind="upstream") == 1


async def test_a_neuron_down_before_its_endpoint_is_known(tmp_path: Path) -> None:
    """A node stopping between poll and endpoint lookup is marked down at once (503 here).

    With no other node to go to, the retry finds nothing up.
    """
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        beast = gw.node("beast")
        beast.put("fake/small", "ready")
        await gw.state.lifecycle.refresh("beast")
        beast.stop()
        response = await gw.chat("fake/small")
        assert response.status_code == 503
        assert "is up" in error_of(response)["message"]
        assert not gw.state.lifecycle.fleet.nodes["beast"].up


@pytest.mark.parametrize(
    ("answer", "status", "message"),
    [
        (
            JsonAnswer(b'{"error": {"message": "secret trace"}}', 500),
            502,
            "the model server failed (upstream status 500)",
        ),
        (JsonAnswer(b"<html>bad gateway</html>", 503), 502, "upstream status 503"),
        (
            JsonAnswer(
                b'{"error": {"message": "prompt is too long", "code": 400}}', 400, relayable=True
            ),
            400,
            "prompt is too long",
        ),
        (
            JsonAnswer(b'{"error": {"message": "secret at http://internal:9/x"}}', 400),
            400,
            "refused the request (upstream status 400)",
        ),
        (
            JsonAnswer(
                b'{"error": {"message": "bad\\u0000 ' + b"x" * 900 + b'"}}', 400, relayable=True
            ),
            400,
            "bad\\x00 xxx",
        ),
        (JsonAnswer(b"not json", 422), 422, "refused the request (upstream status 422)"),
        (JsonAnswer(b"{}", 200, break_read=True), 502, "failed while answering"),
    ],
)
async def test_upstream_failures(
    tmp_path: Path, answer: JsonAnswer, status: int, message: str
) -> None:
    """Upstream errors: 5xx is a generic 502, 4xx keeps its status and relayed message."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        await gw.chat("fake/small")
        gw.node("beast").answers.append(answer)
        response = await gw.chat("fake/small")
        assert response.status_code == status
        error = error_of(response)
        assert message in error["message"]
        assert "secret" not in response.text
        assert gw.in_flight == {}


async def test_a_model_gone_from_its_node_is_routed_again(tmp_path: Path) -> None:
    """Unloaded behind the gateway's back: the 404 sends the request round again, once."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        assert (await gw.chat("fake/small")).status_code == 200
        gw.node("beast").forget("fake/small")
        response = await gw.chat("fake/small")
        assert response.status_code == 200
        assert gw.node("beast").calls.count("load fake/small") == 2


async def test_a_model_gone_before_its_endpoint_was_asked_is_routed_again(tmp_path: Path) -> None:
    """The endpoint lookup's 404 also routes again: the model is loaded anew."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        beast = gw.node("beast")
        beast.put("fake/small", "ready")
        await gw.state.lifecycle.refresh("beast")
        beast.forget("fake/small")
        response = await gw.chat("fake/small")
        assert response.status_code == 200
        assert beast.calls.count("load fake/small") == 1


async def test_a_404_twice_is_the_upstreams_answer(tmp_path: Path) -> None:
    """A second 404 is not a moved model but the upstream's refusal, relayed."""
    refusal = JsonAnswer(b'{"error": {"message": "no such adapter"}}', 404, relayable=True)
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        await gw.chat("fake/small")
        gw.node("beast").answers.extend([refusal, refusal])
        response = await gw.chat("fake/small")
        assert response.status_code == 404
        assert error_of(response)["message"] == "no such adapter"


async def test_streams_pass_through_without_the_usage_chunk_the_gateway_asked_for(
    tmp_path: Path,
) -> None:
    """A stream arrives whole; the usage chunk is stripped unless the client asked for it."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        plain = await gw.chat("fake/small", stream=True)
        assert plain.headers["content-type"].startswith("text/event-stream")
        assert plain.headers["x-cortex-node"] == "beast"
        events = stream_events(plain.text)
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == ANSWER
        assert all("usage" not in e for e in events)
        assert plain.text.endswith("data: [DONE]\n\n")
        assert gw.node("beast").requests[0].body["stream_options"] == {"include_usage": True}
        asked = await gw.chat("fake/small", stream=True, stream_options={"include_usage": True})
        assert stream_events(asked.text)[-1]["usage"]["completion_tokens"] == 6
        tokens = await gw.metric("cortex_completion_tokens_total", model="fake/small")
        assert tokens == 12
        assert await gw.metric("cortex_time_to_first_token_seconds_count") == 2
        assert gw.in_flight == {}


async def test_a_stream_broken_mid_way_ends_with_an_error_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A neuron dying mid-stream: the client gets an error event, the failure is counted once."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    events = [chat_chunk("fake/small", {"content": w}) for w in ("a", "b", "c")]
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        await gw.chat("fake/small")
        gw.node("beast").answers.append(StreamAnswer(events, break_after=2))
        response = await gw.chat("fake/small", stream=True)
        assert response.status_code == 200
        received = stream_events(response.text)
        assert [e["choices"][0]["delta"]["content"] for e in received[:2]] == ["a", "b"]
        assert received[-1]["error"]["message"] == "the model server stopped answering"
        assert await gw.metric("cortex_request_errors_total", kind="upstream") == 1
        assert gw.in_flight == {}
        assert gw.node("beast").open_requests == 0
    failed = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert len(failed) == 1
    assert "upstream stream broke" not in failed[0].__dict__["error"]


async def test_a_client_leaving_a_stream_closes_it_upstream(tmp_path: Path) -> None:
    """The client goes mid-stream: the upstream request is closed and nothing stays in flight."""
    events = [chat_chunk("fake/small", {"content": w}) for w in ("a", "b", "c")]
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        await gw.chat("fake/small")
        beast = gw.node("beast")
        beast.answers.append(StreamAnswer(events, hang_after=1))
        body = json.dumps({"model": "fake/small", "messages": QUESTION, "stream": True})
        status, chunks = await disconnecting(gw.api, "/v1/chat/completions", body.encode())
        assert status == 200
        assert chunks[0].startswith(b"data: ")
        assert beast.open_requests == 0
        assert gw.in_flight == {}


async def test_a_client_gone_before_its_body_arrived(tmp_path: Path) -> None:
    """A client that leaves while its body is read gets nothing (499) and nothing is sent on."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        status, _ = await disconnecting(gw.api, "/v1/chat/completions", b"{}", after=0)
        assert status == 499
        assert gw.node("beast").requests == []


async def test_api_keys(tmp_path: Path) -> None:
    """With api_keys, a request needs one (Bearer or x-api-key); others get 401, counted."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, api_keys=["sesame"]) as gw:
        refused = await gw.http.get("/v1/models")
        assert refused.status_code == 401
        assert error_of(refused)["type"] == "authentication_error"
        wrong = await gw.http.get("/v1/models", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        for headers in ({"authorization": "Bearer sesame"}, {"x-api-key": "sesame"}):
            assert (await gw.http.get("/v1/models", headers=headers)).status_code == 200
        unauthorized = await gw.metric("cortex_request_errors_total", kind="unauthorized")
        assert unauthorized == 2


async def test_an_unexpected_failure_is_a_logged_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug answers 500 with nothing of it in the body, logs its traceback, and serving goes on."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:

        def broken(model_id: str, *args: object, **kwargs: object) -> str:
            raise RuntimeError("a secret bug")

        monkeypatch.setattr(gw.state.lifecycle, "lease", broken)
        response = await gw.chat("fake/small")
        assert response.status_code == 500
        assert error_of(response) == {
            "message": "internal error",
            "type": "server_error",
            "param": None,
            "code": 500,
        }
        monkeypatch.undo()
        assert (await gw.chat("fake/small")).status_code == 200
        assert await gw.metric("cortex_request_errors_total", kind="internal") == 1
    [record] = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert record.exc_info is not None
    assert "a secret bug" in str(record.exc_info[1])


async def test_an_unexpected_failure_mid_stream_ends_it_with_an_error_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while streaming: an internal error event, and the lease still goes back."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        await gw.chat("fake/small")

        def broken(self: object, events: bytes, now: float, *, strip_usage: bool) -> bytes:
            raise RuntimeError("a secret bug")

        monkeypatch.setattr("cortex_gateway.metering.Meter.scan", broken)
        response = await gw.chat("fake/small", stream=True)
        assert response.status_code == 200
        assert stream_events(response.text)[-1]["error"]["message"] == "internal error"
        assert "secret" not in response.text
        assert gw.in_flight == {}


async def test_metrics_of_the_fleet(tmp_path: Path) -> None:
    """/metrics shows nodes, GPUs and loaded models from the last poll."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        await gw.chat("fake/small")
        samples = await gw.samples()
        names = {s.name for s in samples}
        assert {"cortex_node_up", "cortex_node_gpu_memory_total_bytes"} <= names
        assert value(samples, "cortex_node_up", node="beast") == 1
        assert value(samples, "cortex_node_models_loaded", node="beast") == 1
        assert value(samples, "cortex_node_gpu_memory_used_bytes", node="beast") == 4 * 2**30


async def test_unknown_routes_and_methods_get_envelopes(tmp_path: Path) -> None:
    """No route, or the wrong method: 404 and 405 in the surface's envelope, not plain text."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        missing = await gw.http.get("/v2/nothing")
        assert missing.status_code == 404
        assert error_of(missing)["type"] == "not_found_error"
        newline = await gw.http.get("/v1/models/a%0Ab")
        assert newline.status_code == 404
        assert error_of(newline)["message"] == "no such route"
        wrong = await gw.http.get("/v1/messages")
        assert wrong.status_code == 405
        assert wrong.json()["type"] == "error"
        assert wrong.json()["error"]["message"] == "GET is not allowed here"
