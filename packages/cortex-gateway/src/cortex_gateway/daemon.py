"""The gateway as a process: its two servers on their sockets, its signals, its drain.

``cortex serve`` (or one of a supervisor's workers) runs :func:`serve`:
SIGTERM/SIGINT drain then stop (a second one stops at once), SIGHUP reloads
``models.toml`` and never forces it; a worker passes a reload asked of it by
``POST /admin/reload`` to its supervisor (SIGUSR1 when it was forced), which
sends it on to the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from typing import Any

from cortex_core.config import GatewayConfig
from cortex_core.runtime.serving import raise_descriptor_limit, server_config

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def serve(
    config: GatewayConfig,
    api_bind: str,
    metrics_bind: str,
    *,
    worker: int | None = None,
    shared_fd: int | None = None,
) -> None:
    """Serve the API and metrics apps on their sockets until SIGTERM or SIGINT, then drain.

    ``worker`` is this process's index when a supervisor runs several, and
    ``shared_fd`` its end of the link over which it shares the keys' counts.
    """
    from hypercorn.asyncio import serve as hypercorn_serve

    from cortex_gateway.app import create_apps
    from cortex_gateway.coordinator import WorkerLink
    from cortex_gateway.quotas import LocalQuotas

    settings = config.cortex.gateway
    if (short := raise_descriptor_limit(settings.max_connections)) is not None:
        log.warning(
            "too few file descriptors for max_connections",
            extra={"limit": short, "max_connections": settings.max_connections},
        )

    # A worker shares its supervisor's counts (the keys' limits, their usage) over its link.
    link = WorkerLink(shared_fd, lambda: gateway.local_usage()) if shared_fd is not None else None
    api, metrics, gateway = create_apps(config, quotas=LocalQuotas if link is None else link.quotas)
    if link is not None:
        gateway.usage_of_all = link.usage
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    async def drain_then_stop() -> None:
        await gateway.drain(config.cortex.gateway.shutdown_grace_s)
        stop.set()

    def terminate() -> None:
        if stopping:  # a second signal: stop now
            stop.set()
            return
        stopping.append(asyncio.create_task(drain_then_stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminate)
    # SIGHUP never forces a reload that the guard refuses (docs/operations.md).
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_soon)
    if worker is not None:
        # A reload asked of this worker (POST /admin/reload) is passed on to its siblings:
        # SIGUSR1, which only the supervisor sends a worker, when it was forced.
        supervisor = os.getppid()
        loop.add_signal_handler(signal.SIGUSR1, functools.partial(gateway.reload_soon, force=True))
        gateway.on_reloaded = lambda forced: os.kill(
            supervisor, signal.SIGUSR1 if forced else signal.SIGHUP
        )

    # Starlette's ASGI types and hypercorn's differ only in how they spell them.
    api_app: Any = api
    metrics_app: Any = metrics
    # The drain has already given requests shutdown_grace_s; hypercorn's grace only flushes.
    api_settings = server_config(
        api_bind,
        graceful_timeout_s=5.0,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
    )
    metrics_settings = server_config(
        metrics_bind, graceful_timeout_s=5.0, header_timeout_s=settings.header_timeout_s
    )
    try:
        await asyncio.gather(
            hypercorn_serve(api_app, api_settings, shutdown_trigger=stop.wait),
            hypercorn_serve(metrics_app, metrics_settings, shutdown_trigger=stop.wait),
        )
    finally:
        if link is not None:
            await link.close()
