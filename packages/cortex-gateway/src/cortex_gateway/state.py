"""What the routes share: the configuration, and the running parts once the app has started."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cortex_core.config import GatewayConfig, GatewaySection, load_cortex_config
from cortex_gateway import __version__
from cortex_gateway.activity import Series, Timeline
from cortex_gateway.auth import Keys
from cortex_gateway.dashboard_feed import Feed
from cortex_gateway.events import Events, log_event
from cortex_gateway.lifecycle import Lifecycle
from cortex_gateway.metrics import GatewayMetrics
from cortex_gateway.neurons import Neurons
from cortex_gateway.outcomes import Outcomes
from cortex_gateway.pipeline import Pipeline
from cortex_gateway.quotas import LocalQuotas, Quotas
from cortex_gateway.reloads import CatalogueReader, Read, Refusal, guard
from cortex_gateway.tenants import KeyRing, cache_secret, read_keys
from cortex_gateway.usage import KeyAccounts, UsageReport

__all__ = ["Gateway", "NeuronsFactory", "Running"]

log = logging.getLogger(__name__)

NeuronsFactory = Callable[[GatewayConfig], Neurons]
"""How the gateway reaches its neurons, made once it starts (in its event loop)."""
QuotasFactory = Callable[[], Quotas]
"""Where limited keys are counted: this process (default), or a supervisor's shared count."""
FLUSH_S = 0.5
"""After cutting what was still running at shutdown, how long its error events get to go out."""


@dataclass(frozen=True, slots=True)
class Running:
    """The parts that exist while the gateway runs."""

    neurons: Neurons
    events: Events
    timeline: Timeline
    series: Series
    lifecycle: Lifecycle
    metrics: GatewayMetrics
    pipeline: Pipeline
    feed: Feed
    """What every open dashboard page is sent (made once per tick for all of them)."""
    poller: asyncio.Task[None]
    accounts: KeyAccounts


class Gateway:
    """The gateway's state, made by ``create_apps`` and started by the API app's lifespan."""

    def __init__(
        self,
        config: GatewayConfig,
        neurons: NeuronsFactory,
        environ: Mapping[str, str] | None = None,
        quotas: QuotasFactory = LocalQuotas,
    ) -> None:
        self.config = config
        self.draining = False
        """SIGTERM came: ``/health`` answers 503 while requests in flight finish."""
        self._connect = neurons
        self._environ = os.environ if environ is None else environ
        self._secret = cache_secret(self._environ)
        self._quotas = quotas
        self.usage_of_all: Callable[[], Awaitable[UsageReport]] | None = None
        """With ``workers = N``: every worker's usage, gathered by the supervisor."""
        self._running: Running | None = None
        self.on_reloaded: Callable[[bool], object] | None = None
        """Called after ``POST /admin/reload`` succeeded, with whether it was forced (a
        worker tells its supervisor)."""
        self.reader = CatalogueReader()
        self._reloading = asyncio.Lock()
        """One reload at a time: each compares against the catalogue the one before left."""
        self._reloads: set[asyncio.Task[Refusal | None]] = set()

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

    @property
    def timeline(self) -> Timeline:
        """The fleet's recent events, as the dashboard shows them."""
        return self.running.timeline

    @property
    def series(self) -> Series:
        """The last minutes of inference requests, per model, as the dashboard charts them."""
        return self.running.series

    @property
    def feed(self) -> Feed:
        """The dashboard's live feed."""
        return self.running.feed

    @property
    def settings(self) -> GatewaySection:
        """``[gateway]`` of ``cortex.toml``."""
        return self.config.cortex.gateway

    def read_keys(self, cortex_path: Path | None = None) -> KeyRing:
        """The keys ``cortex.toml`` gives (read again from ``cortex_path``); a ConfigError."""
        path = self.config.path
        cortex = self.config.cortex if cortex_path is None else load_cortex_config(cortex_path)
        return read_keys(path, cortex, self._environ, self._secret)

    def local_usage(self) -> UsageReport:
        """Usage per key since this process started."""
        return self.running.accounts.book.report()

    async def usage(self) -> UsageReport:
        """Usage per key since the start: this process's, or every worker's together."""
        if self.usage_of_all is not None:
            return await self.usage_of_all()
        return self.local_usage()

    async def start(self) -> None:
        """Reach the neurons, poll them once, and keep polling in the background."""
        tokens = self.config.neuron_tokens(self._environ)
        keys = Keys(self.read_keys())
        neurons = self._connect(self.config)
        events, timeline = Events(), Timeline()
        lifecycle = Lifecycle(self.config, neurons, events, tokens=tokens)
        nodes = [n.name for n in self.config.cortex.neurons]
        metrics = GatewayMetrics(lifecycle, nodes, asyncio.get_running_loop())
        # Every fleet event is kept for the dashboard, counted and logged: once each.
        events.on(timeline.record)
        events.on(metrics.observe_event)
        events.on(log_event)
        series = Series()
        accounts = KeyAccounts(metrics.registry)
        quotas = self._quotas()
        outcomes = Outcomes(metrics, series, accounts)
        pipeline = Pipeline(lifecycle, neurons, metrics, self.settings, outcomes, keys, quotas)
        feed = Feed(lifecycle.status, timeline, series, self.settings.max_dashboard_streams)
        await lifecycle.refresh_all()
        poller = asyncio.create_task(lifecycle.run())
        self._running = Running(
            neurons,
            events,
            timeline,
            series,
            lifecycle,
            metrics,
            pipeline,
            feed,
            poller,
            accounts,
        )
        log.info(
            "gateway started",
            extra={
                "version": __version__,
                "neurons": [n.name for n in self.config.cortex.neurons],
                "models": len(self.config.catalogue),
            },
        )

    async def reload(self, *, force: bool = False) -> Refusal | None:
        """Read ``models.toml`` and ``cortex.toml``'s keys again (SIGHUP, ``POST /admin/reload``).

        Both are read off the event loop. A broken file (or a key whose
        ``key_env`` is unset), one not read within the reader's time, or
        (unless ``force``) a catalogue that
        :func:`~cortex_gateway.reloads.guard` refuses is not taken: the refusal
        is logged once and returned, and the catalogue and keys in force stay.
        Requests in flight keep the model they resolved and the key they were
        admitted with.
        """
        path = self.config.models_path
        async with self._reloading:
            read = await self.reader.read(self.config, self.read_keys)
            if isinstance(read, Read) and not force:
                why = guard(self.config.catalogue, read.catalogue, self._in_use())
                read = read if why is None else Refusal(409, f"{why}; force it to reload")
            if isinstance(read, Refusal):
                log.error(
                    "catalogue not reloaded", extra={"path": str(path), "error": read.message}
                )
                return read
            catalogue = read.catalogue
            self.config = dataclasses.replace(self.config, catalogue=catalogue)
            if self._running is not None:
                self._running.lifecycle.use(catalogue)
                self._running.pipeline.keys.use(read.keys)
        log.info(
            "catalogue reloaded",
            extra={
                "path": str(path),
                "models": len(catalogue),
                "aliases": len(catalogue.aliases),
                "keys": len(read.keys.names()),
                "forced": force,
            },
        )
        return None

    def reload_soon(self, *, force: bool = False) -> None:
        """Reload in the background (a signal handler cannot wait): the outcome is logged."""
        task = asyncio.get_running_loop().create_task(self.reload(force=force))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _in_use(self) -> set[str]:
        """Models loaded or loading somewhere, or with requests in flight."""
        if self._running is None:
            return set()
        status = self._running.lifecycle.status()
        used = {model for _, model in status.in_flight}
        for node in status.fleet.up():
            used.update(m.id for m in node.models)
        return used

    async def drain(self, grace_s: float) -> None:
        """Stop gracefully: ``/health`` says 503 while requests finish, then cut what remains.

        Requests still running after ``grace_s`` end with an error event (a
        stream) or a 503; each is logged and counted as such.
        """
        self.draining = True
        if self._running is None:
            return
        life = self._running.lifecycle
        log.info(
            "draining",
            extra={"in_flight": len(life.leases), "waiting": sum(life.waiting.values())},
        )
        deadline = time.monotonic() + grace_s
        while len(life.leases) or life.waiting:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        cut = life.stop()
        if cut:
            log.warning("requests cut at shutdown", extra={"count": cut, "grace_s": grace_s})
            await asyncio.sleep(FLUSH_S)

    async def stop(self) -> None:
        """Stop polling and background work, and close the neurons' connections."""
        running, self._running = self._running, None
        if running is None:
            return
        running.poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.poller
        await running.feed.close()
        await running.lifecycle.close()
        await running.neurons.aclose()
        log.info("gateway stopped")
