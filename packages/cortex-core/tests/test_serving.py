"""hypercorn as the daemons run it: the shared settings and the closing of a client's connection."""

from __future__ import annotations

import asyncio
import socket
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
