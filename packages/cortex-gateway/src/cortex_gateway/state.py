"""What the routes share: the configuration, and the running parts once the app has started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cortex_core.config import GatewayConfig
from cortex_gateway import __version__
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.neurons import Neurons
from cortex_gateway.pipeline import Pipeline

__all__ = ["Gateway", "Running"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Running:
    """The parts that exist while the gateway runs."""

    neurons: Neurons
    lifecycle: Lifecycle
    metrics: GatewayMetrics
    pipeline: Pipeline
    poller: asyncio.Task[None]


class Gateway:
    """The gateway's state, made by ``create_apps`` and started by the API app's lifespan."""

    def __init__(self, config: GatewayConfig, neurons: Callable[[], Neurons]) -> None:
        self.config = config
        self._connect = neurons
        self._running: Running | None = None

    @property
    def running(self) -> Running:
        """The running parts (present between :meth:`start` and :meth:`stop`)."""
        if self._running is None:
            raise RuntimeError("the gateway has not started")
        return self._running

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run and :meth:`stop` not yet."""
        return self._running is not None

    @property
    def pipeline(self) -> Pipeline:
        """The request pipeline."""
        return self.running.pipeline

    @property
    def lifecycle(self) -> Lifecycle:
        """The fleet's lifecycle."""
        return self.running.lifecycle

    async def start(self) -> None:
        """Reach the neurons, poll them once, and keep polling in the background."""
        neurons = self._connect()
        lifecycle = Lifecycle(self.config, neurons)
        metrics = GatewayMetrics(lifecycle)
        pipeline = Pipeline(lifecycle, neurons, metrics, self.config.cortex.gateway)
        await lifecycle.refresh_all()
        poller = asyncio.create_task(lifecycle.run())
        self._running = Running(neurons, lifecycle, metrics, pipeline, poller)
        log.info(
            "gateway started",
            extra={
                "version": __version__,
                "neurons": [n.name for n in self.config.cortex.neurons],
                "models": len(self.config.catalogue),
            },
        )

    async def stop(self) -> None:
        """Stop polling and background work, and close the neurons' connections."""
        running, self._running = self._running, None
        if running is None:
            return
        running.poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.poller
        await running.lifecycle.close()
        await running.neurons.aclose()
        log.info("gateway stopped")
