"""hypercorn as the daemons run it: the shared settings and the closing of a client's connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypercorn.asyncio import serve

from cortex_core.runtime.serving import IDLE_KEEP_ALIVE_S, LISTEN_BACKLOG, server_config
from cortex_core.testing import free_port

pytestmark = pytest.mark.anyio


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_settings_outlast_client_pools_and_take_bursts() -> None:
    config = server_config("127.0.0.1:0", graceful_timeout_s=2.0)
    assert config.bind == ["127.0.0.1:0"]
    assert (config.backlog, config.keep_alive_timeout) == (LISTEN_BACKLOG, IDLE_KEEP_ALIVE_S)
    assert config.graceful_timeout == 2.0
    assert config.accesslog is None


async def test_a_connection_the_client_ends_while_idle_is_closed_at_once() -> None:
    """Not when the server's 75 s idle timer ends (hypercorn 0.18 waited for it)."""
    port = free_port()
    stop = asyncio.Event()
    app: Any = _ok  # an ASGI app; hypercorn spells the types its own way
    settings = server_config(f"127.0.0.1:{port}", graceful_timeout_s=1.0)
    server = asyncio.ensure_future(serve(app, settings, shutdown_trigger=stop.wait))
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the server never listened")
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(2) == b"ok"
        await asyncio.sleep(0.3)  # the server is idle, waiting for the next request
        writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
        async with asyncio.timeout(3):
            assert await reader.read() == b""  # the server closed its side too
        writer.close()
    finally:
        stop.set()
        await server


@contextlib.asynccontextmanager
async def _serving(**settings: Any) -> AsyncIterator[int]:
    """A server as the daemons run it, with ``settings`` for server_config; its port."""
    port = free_port()
    stop = asyncio.Event()
    app: Any = _ok  # an ASGI app; hypercorn spells the types its own way
    config = server_config(f"127.0.0.1:{port}", graceful_timeout_s=1.0, **settings)
    server = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the server never listened")
        yield port
    finally:
        stop.set()
        await server


async def _get(port: int) -> bytes:
    """One GET on a new connection: the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        return (await reader.readline()).strip()
    finally:
        writer.close()


async def test_a_header_trickle_is_cut_at_the_header_timeout_not_the_keep_alive() -> None:
    """A byte of headers every 0.2 s: closed once header_timeout_s has passed since the first.

    An idle connection (no byte of a request yet) is kept; so is one whose
    next request came in one piece after an idle pause.
    """
    async with _serving(header_timeout_s=0.6) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()
        cut_after = None
        for byte in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            if reader.at_eof() or (await _closed(reader)):
                cut_after = asyncio.get_running_loop().time() - started
                break
            await asyncio.sleep(0.2)
        writer.close()
        assert cut_after is not None, "the trickle was never cut"
        assert 0.5 <= cut_after < 5.0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(1.0)  # idle, longer than the header timeout
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (read what it sent, briefly)."""
    try:
        async with asyncio.timeout(0.01):
            return await reader.read(1024) == b""
    except TimeoutError:
        return False


async def test_connections_past_the_cap_are_answered_503_and_closed() -> None:
    """Three open: the fourth is a 503 with Retry-After; one closed, the next is served."""
    async with _serving(max_connections=3) as port:
        await asyncio.sleep(0.1)  # the probe connection of _serving is gone
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 1\r\n" in answer
        assert b'"code": 503' in answer
        _, first = held.pop()
        first.close()
        await asyncio.sleep(0.1)
        assert await _get(port) == b"HTTP/1.1 200"
        for _, writer in held:
            writer.close()
