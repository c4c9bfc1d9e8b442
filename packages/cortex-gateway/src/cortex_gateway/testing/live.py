"""The real gateway app served over loopback HTTP, in a thread, with a scripted fleet behind it.

For what needs a socket (a browser driving ``/ui``) while the test steers the
neurons: the app, lifecycle and pipeline are the real ones under hypercorn;
the neurons are :class:`~cortex_gateway.testing.fleet.ScriptedNode` objects,
changed from the test thread through :meth:`LiveGateway.call`, which runs on
the gateway's event loop.

    with LiveGateway(tmp_path, nodes, models_toml, models=[...]) as gw:
        page.goto(gw.url + "/ui")
        gw.call(lambda: gw.fleet.nodes["a"].stop())
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from hypercorn.asyncio import serve

from cortex_core.runtime.serving import server_config
from cortex_core.testing import free_port
from cortex_gateway.app import create_apps
from cortex_gateway.state import Gateway
from cortex_gateway.testing.fleet import ScriptedFleet, ScriptedModel, ScriptedNode

__all__ = ["LiveGateway", "config_keys", "key_tables"]

T = TypeVar("T")


def config_keys(options: Mapping[str, object]) -> str:
    """``key = value`` lines of a ``cortex.toml`` section (values as JSON, which TOML reads)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in options.items())


def key_tables(keys: Sequence[Mapping[str, object]]) -> str:
    """``[[keys]]`` tables of ``cortex.toml``, one per dict of its keys."""
    return "".join(f"[[keys]]\n{config_keys(entry)}" for entry in keys)


class LiveGateway:
    """A gateway on ``http://127.0.0.1:<port>`` over scripted nodes, until the ``with`` ends."""

    def __init__(
        self,
        folder: Path,
        nodes: Sequence[ScriptedNode],
        models_toml: str = "",
        *,
        models: Sequence[ScriptedModel] = (),
        eviction: dict[str, object] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        keys: Sequence[Mapping[str, object]] = (),
        **gateway: object,
    ) -> None:
        """``port``: a given one (to start again where the last one was), else a free one.

        ``keys``: ``[[keys]]`` entries (give their keys as ``key_sha256``).
        """
        self.fleet = ScriptedFleet(nodes, models)
        settings = {"poll_interval_s": 0.5, **gateway}
        self.config = self.fleet.config(
            folder,
            models_toml,
            gateway=config_keys(settings),
            eviction=config_keys(eviction or {}),
            tables=key_tables(keys),
        )
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.state: Gateway | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="live-gateway", daemon=True)
        self._stop: asyncio.Event | None = None
        self._ready: Future[None] = Future()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        api, _, state = create_apps(self.config, neurons=self.fleet, environ=self.fleet.environ())
        self.state = state
        self._stop = asyncio.Event()
        config = server_config(f"{self.host}:{self.port}", graceful_timeout_s=1.0)
        serving = asyncio.ensure_future(
            serve(api, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )
        while not state.started and not serving.done():  # noqa: ASYNC110 - hypercorn has no hook
            await asyncio.sleep(0.01)
        if not self._ready.done():
            self._ready.set_result(None)
        await serving

    def call(self, work: Callable[[], T]) -> T:
        """Run ``work()`` on the gateway's event loop (where the scripted nodes live)."""

        async def run() -> T:
            return work()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        self._ready.result(timeout=30)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            if self.state is not None:
                self.state.draining = True  # the dashboard's streams end by themselves
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
