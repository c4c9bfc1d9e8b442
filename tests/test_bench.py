"""The benchmark's own parts: the mock neuron speaks the neuron API, the load generator counts.

No timings are asserted: these keep ``make bench`` working, not fast.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from bench.http11 import ChunkedReader
from bench.loadgen import run, summary
from bench.mock_neuron import FAST, MODELS, PACED, serve
from bench.pages import Pages
from cortex_core.testing import free_port
from cortex_gateway.testing import ScriptedNode
from cortex_gateway.testing.live import LiveGateway
from cortex_gateway.transport import NeuronClient

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def chat(model: str, tokens: int, *, stream: bool = False, usage: bool = False) -> bytes:
    body: dict[str, object] = {"model": model, "messages": [], "max_tokens": tokens}
    if stream:
        body["stream"] = True
    if usage:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def test_the_mock_answers_the_neuron_api_as_the_gateway_reads_it() -> None:
    """Health, devices, models and endpoints decode as the gateway's client decodes them."""
    port = free_port()
    server = await serve("127.0.0.1", port, 0.001)
    try:
        async with aiohttp.ClientSession() as session:
            client = NeuronClient(session, "mock", f"http://127.0.0.1:{port}")
            assert (await client.health()).name == "mock"
            assert (await client.devices()).devices[0].memory_total == 80 << 30
            listed = await client.models()
            assert [m.id for m in listed.models] == list(MODELS)
            assert all(m.state == "ready" for m in listed.models)
            assert await client.endpoint(PACED) == f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


async def test_the_load_generator_counts_answers_and_tokens() -> None:
    """JSON answers and paced streams: every request counted, every token seen, usage on ask."""
    port = free_port()
    server = await serve("127.0.0.1", port, 0.001)
    url = f"http://127.0.0.1:{port}"
    try:
        samples, wall = await run(url, [("/v1/chat/completions", chat(FAST, 5))], 40, 4)
        figures = summary(samples, wall)
        assert (figures["ok"], figures["errors"], figures["tokens"]) == (40, {}, 200)
        mix = [
            ("/v1/chat/completions", chat(PACED, 8, stream=True, usage=True)),
            ("/v1/completions", chat(FAST, 3, stream=True)),
        ]
        samples, wall = await run(url, mix, 6, 3, stagger_s=0.01)
        figures = summary(samples, wall)
        assert figures["ok"] == 6
        assert figures["tokens"] == 3 * 8 + 3 * 3
        assert all(s.first_token is not None and s.last_token is not None for s in samples)
        assert figures["spread_p50"] is not None
    finally:
        server.close()


def test_chunked_bodies_are_read_across_any_cut() -> None:
    """Chunk payloads come out whole however the bytes are cut; what follows is left over."""
    body = b"3\r\nabc\r\n5;x=1\r\nhello\r\n0\r\n\r\nNEXT"
    for cut in range(1, len(body)):
        got: list[bytes] = []
        reader = ChunkedReader(got.append)
        rest = reader.feed(body[:cut])
        rest = rest + body[cut:] if reader.done else reader.feed(body[cut:])
        assert reader.done
        assert got == [b"abc", b"hello"]
        assert rest == b"NEXT"


async def test_the_pages_hold_dashboard_streams_and_count_what_comes(tmp_path: Path) -> None:
    """bench/pages.py's pages: each gets its status (503 past the cap) and reads what comes."""
    with LiveGateway(tmp_path, [ScriptedNode("a")], "", max_dashboard_streams=2) as gw:
        pages = Pages(gw.url, 3)
        stop = asyncio.Event()
        held = [asyncio.ensure_future(pages.page(stop)) for _ in range(3)]
        deadline = time.monotonic() + 10
        while sum(pages.statuses.values()) < 3 or pages.received < 1000:
            assert time.monotonic() < deadline, pages.statuses
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*held)
    assert pages.statuses == {"200": 2, "503": 1}
