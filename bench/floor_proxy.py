"""The floor of the gateway's stack: a reverse proxy on hypercorn, uvloop and aiohttp, and no more.

No routing, metrics, logging, timeouts, keys or error handling: each POST is
sent to the upstream with one pooled aiohttp session and its answer relayed
(streams chunk by chunk). What the benchmark measures for it is what
hypercorn and aiohttp cost by themselves, the least any gateway built on them
can cost. With ``--static`` it answers a fixed body without an upstream:
hypercorn's own floor (``--server uvicorn`` or ``aiohttp``: theirs, for scale).

    PYTHONPATH=. .venv/bin/python bench/floor_proxy.py --port 18090 --upstream http://127.0.0.1:18080/v1
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
from hypercorn.asyncio import serve
from hypercorn.config import Config

from cortex_core.runtime.loops import run as run_loop

__all__ = ["main"]

Scope = dict[str, Any]


def app_for(upstream: str, static: bool) -> Any:
    """The ASGI app: relay every POST to ``upstream`` + its path below ``/v1``."""
    session: aiohttp.ClientSession | None = None

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await session.close()  # type: ignore[union-attr]
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if static:
            data = b'{"ok":true}'
            headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        assert session is not None
        url = upstream + scope["path"].removeprefix("/v1")
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as answer:
            kind = answer.headers.get("content-type", "application/json").encode()
            if kind.startswith(b"text/event-stream"):
                start = [(b"content-type", kind)]
                await send(
                    {"type": "http.response.start", "status": answer.status, "headers": start}
                )
                async for chunk in answer.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await answer.read()
        headers = [(b"content-type", kind), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--upstream", default="http://127.0.0.1:18080/v1")
    parser.add_argument("--static", action="store_true", help="answer a fixed body, no upstream")
    parser.add_argument(
        "--server", choices=["hypercorn", "uvicorn", "aiohttp"], default="hypercorn"
    )
    args = parser.parse_args()
    app = app_for(args.upstream, args.static)
    if args.server == "uvicorn":  # with httptools and uvloop, as uvicorn runs at its fastest
        import uvicorn

        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
        )
        return
    if args.server == "aiohttp":
        run_loop(_aiohttp_static(args.port))
        return
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    run_loop(serve(app, config))


async def _aiohttp_static(port: int) -> None:
    """The fixed body from aiohttp's own server."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
