"""The gateway in-process over a scripted fleet: an HTTP client on its ASGI app, its metrics.

Every test runs the real app (lifespan, routes, pipeline, lifecycle, metrics)
with ``cortex_gateway.testing.ScriptedFleet`` at the neuron seam: no process,
no socket, so a test takes milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.applications import Starlette
from starlette.types import Message

from cortex_gateway.app import create_apps
from cortex_gateway.state import Gateway
from cortex_gateway.testing import ScriptedFleet, ScriptedModel, ScriptedNode
from cortex_gateway.testing.live import config_keys, key_tables

__all__ = [
    "TASKS_CATALOGUE",
    "TASKS_MODELS",
    "Harness",
    "disconnecting",
    "openai_error",
    "serve",
    "until",
    "value",
]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TASKS_CATALOGUE = """
[aliases]
"helexa/small" = "fake/small"
"helexa/embed" = "fake/embedder"

[[models]]
id = "fake/small"
memory_gb = 4

[[models]]
id = "fake/embedder"
memory_gb = 1
task = "embed"
"""
"""A generating model and an embedding model (``task = "embed"``), each with an alias."""
TASKS_MODELS = [ScriptedModel("fake/small", memory_gib=4), ScriptedModel("fake/embedder")]


@dataclass
class Harness:
    """A running in-process gateway and the fleet behind it."""

    fleet: ScriptedFleet
    state: Gateway
    api: Starlette
    metrics_app: Starlette
    http: httpx.AsyncClient

    def node(self, name: str) -> ScriptedNode:
        """A scripted node by name."""
        return self.fleet.nodes[name]

    async def chat(self, model: str, **extra: Any) -> httpx.Response:
        """``POST /v1/chat/completions`` with one question."""
        return await self.http.post(
            "/v1/chat/completions", json={"model": model, "messages": QUESTION, **extra}
        )

    async def message(self, model: str, **extra: Any) -> httpx.Response:
        """``POST /v1/messages`` with one question."""
        body = {"model": model, "max_tokens": 50, "messages": QUESTION, **extra}
        return await self.http.post("/v1/messages", json=body)

    @contextlib.asynccontextmanager
    async def openai(self) -> AsyncIterator[openai.AsyncOpenAI]:
        """The official OpenAI SDK over the in-process gateway (its own HTTP client, httpx2)."""
        transport = httpx2.ASGITransport(app=self.api)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield openai.AsyncOpenAI(
                base_url="http://gateway/v1", api_key="unused", http_client=http, max_retries=0
            )

    async def samples(self) -> list[Sample]:
        """Every sample ``GET /metrics`` (on the metrics app) shows."""
        transport = httpx.ASGITransport(app=self.metrics_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
            text = (await client.get("/metrics")).text
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over samples carrying ``labels``."""
        return value(await self.samples(), name, **labels)

    @property
    def in_flight(self) -> dict[tuple[str, str], int]:
        """The gateway's own in-flight counts."""
        return dict(self.state.lifecycle.in_flight)


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a response, checked for its shape and its status."""
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == response.status_code
    return error


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name`` over samples carrying ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Wait for ``condition()`` to hold (polled), failing after ``within_s`` seconds."""
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold in time")


@contextlib.asynccontextmanager
async def serve(
    folder: Path,
    nodes: Sequence[ScriptedNode],
    models_toml: str = "",
    *,
    models: Sequence[ScriptedModel] = (),
    eviction: dict[str, object] | None = None,
    scheduling: dict[str, object] | None = None,
    routing: dict[str, object] | None = None,
    keys: Sequence[Mapping[str, object]] = (),
    environ: dict[str, str] | None = None,
    **gateway: object,
) -> AsyncIterator[Harness]:
    """Start the gateway over ``nodes``; ``gateway`` and ``eviction`` are config keys.

    ``keys``: ``[[keys]]`` entries. ``environ`` holds the neurons' tokens
    (default: each node's own, as the fleet's config names them) and the keys'
    ``key_env`` variables.
    """
    fleet = ScriptedFleet(nodes, models)
    settings = {"poll_interval_s": 0.05, **gateway}
    config = fleet.config(
        folder,
        models_toml,
        gateway=config_keys(settings),
        eviction=config_keys(eviction or {}),
        scheduling=config_keys(scheduling or {}),
        routing=config_keys(routing or {}),
        tables=key_tables(keys),
    )
    environ = fleet.environ() if environ is None else environ
    api, metrics, state = create_apps(config, neurons=fleet, environ=environ)
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as http,
    ):
        yield Harness(fleet, state, api, metrics, http)
    assert fleet.closed, "the gateway closed its neurons when it stopped"


async def disconnecting(
    app: Starlette,
    path: str,
    body: bytes,
    *,
    after: int = 1,
    after_s: float | None = None,
    key: str | None = None,
) -> tuple[int, list[bytes]]:
    """POST ``body`` as hypercorn would, and disconnect once ``after`` body chunks came back.

    Answers the status and the chunks received. ``after=0`` disconnects
    before the request body is even delivered; ``after_s`` disconnects that
    many seconds after the body was delivered, whatever came back. ``key``
    goes as ``Authorization: Bearer``.
    """
    gone = asyncio.Event()
    delivered = False
    status = 0
    chunks: list[bytes] = []
    if after == 0:
        gone.set()
    if after_s is not None:
        asyncio.get_running_loop().call_later(after_s, gone.set)

    async def receive() -> Message:
        nonlocal delivered
        if not delivered and not gone.is_set():
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            if len(chunks) >= after:
                gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"host", b"gateway"),
            *([(b"authorization", f"Bearer {key}".encode())] if key else []),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("gateway", 80),
    }
    await app(scope, receive, send)
    return status, chunks
