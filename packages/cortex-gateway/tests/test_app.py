"""The API app: fixed paths answered past Starlette's stack, and only while it is bare."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortex_gateway.app import GatewayApp, create_apps
from cortex_gateway.testing import ScriptedFleet, ScriptedModel, ScriptedNode
from cortex_gateway.testing.live import config_keys

pytestmark = pytest.mark.anyio

CATALOGUE = '[[models]]\nid = "fake/small"\nmemory_gb = 4\n'
MODELS = [ScriptedModel("fake/small", memory_gib=4)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Stamp:
    """A middleware that marks every answer it saw go by."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


def apps(folder: Path, *middleware: Middleware) -> tuple[httpx.AsyncClient, GatewayApp]:
    """The API app over one scripted node, with ``middleware`` added before it starts."""
    fleet = ScriptedFleet([ScriptedNode("beast", gpus=[24])], MODELS)
    config = fleet.config(folder, CATALOGUE, gateway=config_keys({"poll_interval_s": 3600}))
    api, _, _ = create_apps(config, neurons=fleet, environ=fleet.environ())
    for layer in middleware:
        api.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://gateway")
    return client, api


async def test_the_gateway_adds_no_middleware_of_its_own(tmp_path: Path) -> None:
    """By design: keys, request ids and outcomes are pipeline steps, so fixed paths go fast."""
    client, api = apps(tmp_path)
    await client.aclose()
    assert api.user_middleware == []


async def test_a_middleware_added_sees_fixed_paths_too(tmp_path: Path) -> None:
    """Once a middleware is added, /health and the inference routes go through it as well."""
    client, api = apps(tmp_path, Middleware(Stamp))
    async with api.router.lifespan_context(api), client:
        health = await client.get("/health")
        chat = await client.post(
            "/v1/chat/completions", json={"model": "fake/small", "messages": QUESTION}
        )
        model = await client.get("/v1/models/fake/small")
    assert health.status_code == 200
    assert chat.status_code == 200
    assert [r.headers.get("x-stamp") for r in (health, chat, model)] == ["1", "1", "1"]
