"""The event loop both daemons run on: uvloop (libuv, in C) where it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run"]


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on uvloop if it can be imported, else on asyncio's loop.

    uvloop is a dependency of the gateway and comes with vLLM on a neuron; the
    loop's own work (polling sockets, timers, transports) then costs a
    fraction of what the pure-Python loop costs.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop's wheels
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
