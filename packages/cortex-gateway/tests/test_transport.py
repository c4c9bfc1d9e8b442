"""The neurons over HTTP: the aiohttp side of the seam against a real server on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from cortex_core.neuron_api import LoadRequest, TokenizeRequest
from cortex_core.testing import free_port
from cortex_gateway.neurons import NeuronCallError, UpstreamError
from cortex_gateway.transport import HttpNeurons

pytestmark = pytest.mark.anyio

MODEL = {"id": "org/m", "state": "ready", "memory_bytes": 5, "future_field": 1}


def json_answer(body: object, status: int = 200) -> web.Response:
    """A JSON answer."""
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


async def health(request: web.Request) -> web.Response:
    """``GET /health``."""
    return json_answer({"status": "ok", "name": "n", "version": "9.9"})


async def devices(request: web.Request) -> web.Response:
    """``GET /devices``."""
    return json_answer({"devices": [{"index": 0, "memory_total": 10}]})


async def models(request: web.Request) -> web.Response:
    """``GET /models``, with a model in a state from the future."""
    return json_answer({"models": [MODEL, {"id": "org/z", "state": "sleeping"}]})


async def load(request: web.Request) -> web.Response:
    """``POST /models/load``: too big."""
    body = await request.json()
    details = {"needed_bytes": 123, "devices": []}
    error = {
        "code": "insufficient_memory",
        "message": f"{body['model']} too big",
        "details": details,
    }
    return json_answer({"error": error}, 409)


async def unload(request: web.Request) -> web.Response:
    """``POST /models/unload``: asked to sleep, sleeps; else answers HTML, as a broken proxy."""
    body = await request.json()
    if body.get("sleep") is True:
        held = {"freed_bytes": 7, "host_memory_bytes": 5}
        return json_answer({"id": body["model"], "state": "sleeping", **held})
    return web.Response(body=b"<html>oops</html>", status=500)


async def endpoint(request: web.Request) -> web.Response:
    """``GET /models/{id}/endpoint``: names the model it was asked about."""
    return json_answer({"url": f"http://localhost:1/v1#{request.match_info['id']}"})


async def tokenize(request: web.Request) -> web.Response:
    """``POST /tokenize``: an answer of the wrong shape."""
    return json_answer({"count": "many"})


async def chat(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: JSON, a stream, or a stream cut off."""
    body = await request.json()
    if not body.get("stream"):
        return json_answer({"echo": body, "id": request.headers.get("x-request-id")})
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: 1\n\n")
    if body.get("cut"):
        assert request.transport is not None
        request.transport.close()
        return response
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def server() -> AsyncIterator[BaseTestServer]:
    """A neuron-shaped server on loopback."""
    app = web.Application()
    app.add_routes(
        [
            web.get("/health", health),
            web.get("/devices", devices),
            web.get("/models", models),
            web.post("/models/load", load),
            web.post("/models/unload", unload),
            web.get("/models/{id:.+}/endpoint", endpoint),
            web.post("/tokenize", tokenize),
            web.post("/v1/chat/completions", chat),
        ]
    )
    async with TestServer(app, host="127.0.0.1") as running:
        yield running


async def test_management_calls_decode_the_neurons_answers(server: BaseTestServer) -> None:
    """Answers decode into the neuron API types, a newer neuron's states and fields too."""
    neurons = HttpNeurons()
    try:
        client = neurons.client("n", str(server.make_url("/")))
        assert (await client.health()).version == "9.9"
        assert (await client.devices()).devices[0].memory_total == 10
        listed = (await client.models()).models
        assert [(m.id, m.state) for m in listed] == [("org/m", "ready"), ("org/z", "sleeping")]
        assert await client.endpoint("org/m") == "http://localhost:1/v1#org/m"
    finally:
        await neurons.aclose()


async def test_an_unload_may_ask_for_a_sleep_and_reads_what_the_neuron_did(
    server: BaseTestServer,
) -> None:
    """``sleep`` goes in the body; the answer says the model sleeps and what it holds."""
    neurons = HttpNeurons()
    try:
        client = neurons.client("n", str(server.make_url("/")))
        answer = await client.unload("org/m", sleep=True)
        assert (answer.id, answer.state, answer.host_memory_bytes) == ("org/m", "sleeping", 5)
    finally:
        await neurons.aclose()


async def test_management_errors_carry_the_neurons_status_and_code(server: BaseTestServer) -> None:
    """An error answer keeps its status, code and details; other failures say what broke."""
    neurons = HttpNeurons()
    try:
        client = neurons.client("n", str(server.make_url("/")))
        with pytest.raises(NeuronCallError) as refused:
            await client.load(LoadRequest(model="org/m"), 5)
        assert refused.value.upstream_status == 409
        assert refused.value.code == "insufficient_memory"
        assert refused.value.error is not None
        assert refused.value.error.error.details["needed_bytes"] == 123
        assert str(refused.value) == "org/m too big"
        with pytest.raises(NeuronCallError) as broken:
            await client.unload("org/m")
        assert (broken.value.upstream_status, broken.value.code) == (500, None)
        assert str(broken.value) == "HTTP 500"
        with pytest.raises(NeuronCallError, match="unexpected answer"):
            await client.tokenize(TokenizeRequest(model="org/m", prompt="x"))
        gone = neurons.client("gone", f"http://127.0.0.1:{free_port()}")
        with pytest.raises(NeuronCallError) as unreachable:
            await gone.health()
        assert unreachable.value.upstream_status is None
        assert "ClientConnectorError" in str(unreachable.value)
    finally:
        await neurons.aclose()


async def test_inference_answers_and_streams(server: BaseTestServer) -> None:
    """A JSON answer comes back whole, a stream chunk by chunk, with the headers sent."""
    neurons = HttpNeurons()
    url = str(server.make_url("/v1/chat/completions"))
    headers = {"content-type": "application/json", "x-request-id": "r1"}
    try:
        answer = await neurons.open("n", url, b'{"model": "m"}', headers)
        assert (answer.status, answer.streaming) == (200, False)
        assert json.loads(await answer.read()) == {"echo": {"model": "m"}, "id": "r1"}
        stream = await neurons.open("n", url, b'{"stream": true}', headers)
        assert stream.streaming
        assert b"".join([c async for c in stream.chunks()]) == b"data: 1\n\ndata: [DONE]\n\n"
        stream.close()
    finally:
        await neurons.aclose()


async def test_a_stream_cut_off_raises_upstream_error(server: BaseTestServer) -> None:
    """A connection dropped mid-stream is an UpstreamError, after what did arrive."""
    neurons = HttpNeurons()
    url = str(server.make_url("/v1/chat/completions"))
    try:
        stream = await neurons.open("n", url, b'{"stream": true, "cut": true}', {})
        received: list[bytes] = []

        async def drain() -> None:
            async for chunk in stream.chunks():
                received.append(chunk)

        with pytest.raises(UpstreamError, match="upstream stream broke"):
            await drain()
        stream.close()
        assert b"".join(received) == b"data: 1\n\n"
        cut = await neurons.open("n", url, b'{"stream": true, "cut": true}', {})
        with pytest.raises(UpstreamError, match="reading the answer failed"):
            await cut.read()
    finally:
        await neurons.aclose()


async def test_nothing_listening_is_an_upstream_error() -> None:
    """A refused connection: UpstreamError naming why."""
    neurons = HttpNeurons()
    try:
        with pytest.raises(UpstreamError, match="ClientConnectorError"):
            await neurons.open(
                "n", f"http://127.0.0.1:{free_port()}/v1/chat/completions", b"{}", {}
            )
    finally:
        await neurons.aclose()


async def test_a_management_answer_past_the_cap_fails_the_call() -> None:
    """40 MB of /models, declared or streamed: a node error, not 40 MB in memory.

    A large answer under the cap still decodes (in a thread).
    """
    modes = ["streamed", "declared", "fits"]

    async def huge(request: web.Request) -> web.StreamResponse:
        mode = modes.pop(0)
        if mode == "fits":
            return json_answer({"models": [{**MODEL, "id": f"org/m{i}"} for i in range(5000)]})
        filler = b" " * (1 << 20)
        response = web.StreamResponse(headers={"content-type": "application/json"})
        if mode == "declared":
            response.content_length = 40 * len(filler) + 14
        await response.prepare(request)
        await response.write(b'{"models": []')
        for _ in range(40):
            await response.write(filler)
        await response.write(b"}")
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/models", huge)])
    neurons = HttpNeurons()
    async with TestServer(app, host="127.0.0.1") as running:
        try:
            client = neurons.client("n", str(running.make_url("/")))
            for _ in range(2):
                with pytest.raises(NeuronCallError, match="answer too large: over 16 MiB"):
                    await client.models()
            assert len((await client.models()).models) == 5000
        finally:
            await neurons.aclose()
