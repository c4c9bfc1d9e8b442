"""``[gateway] workers = N``: N gateway processes on one listen socket, and their supervisor.

The supervisor binds the API socket once and starts N workers (``cortex
serve`` with the socket's descriptor); the kernel hands each new connection
to one of them. Each worker is a whole gateway with its own fleet view: the
neurons are the source of truth (in-flight counts, last use), and concurrent
loads of one model join at the neuron. What must hold for the gateway as a
whole, the keys' limits and their usage, the supervisor keeps and the
workers ask it for, each over a link of its own
(:mod:`cortex_gateway.coordinator`). Each worker serves its metrics on a
private loopback port; the supervisor serves the configured metrics port
with their sum (fleet gauges, which every worker polls alike, with their
maximum).

Signals: SIGTERM/SIGINT are passed on and the supervisor exits once every
worker has drained; SIGHUP is passed on, and a worker that reloaded by
``POST /admin/reload`` sends its supervisor a SIGHUP so its siblings reload
too (SIGUSR1 when that reload was forced: its siblings then force theirs). A
worker that dies is started again (after a pause that grows while it keeps
dying young).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_gateway.coordinator import Coordinator
from cortex_gateway.tenants import CACHE_SECRET_ENV

__all__ = ["MAX_FAMILIES", "Supervisor", "merge_metrics"]

log = logging.getLogger(__name__)

MAX_FAMILIES = frozenset(
    {
        "cortex_node_up",
        "cortex_node_models_loaded",
        "cortex_node_sleeping_bytes",
        "cortex_node_gpu_memory_used_bytes",
        "cortex_node_gpu_memory_total_bytes",
    }
)
"""What every worker polls alike: the fleet's state, merged by maximum, not summed."""
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=5)
YOUNG_S = 10.0
"""A worker that dies sooner than this after its start waits longer before the next."""
MAX_PAUSE_S = 30.0


def merge_metrics(texts: Iterable[str]) -> bytes:
    """Prometheus texts of several workers as one: counters and histograms summed.

    Families in :data:`MAX_FAMILIES` take the maximum; ``*_created`` samples
    the earliest.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = samples.get(key)
                if seen is None:
                    samples[key] = sample.value
                elif family.name in MAX_FAMILIES:
                    samples[key] = max(seen, sample.value)
                elif sample.name.endswith("_created"):
                    samples[key] = min(seen, sample.value)
                else:
                    samples[key] = seen + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


@dataclass
class _Worker:
    index: int
    metrics_fd: int
    metrics_port: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    pause_s: float = 1.0


def _private_socket() -> tuple[int, int]:
    """A loopback socket on a free port for one worker's metrics: its fd and port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.set_inheritable(True)
    return sock.detach(), port


class Supervisor:
    """Start, watch, signal and merge the metrics of ``count`` gateway workers."""

    def __init__(
        self,
        count: int,
        config_path: Path,
        api_fd: int,
        metrics_bind: str,
        worker_args: list[str],
    ) -> None:
        self.config_path = config_path
        self.api_fd = api_fd
        self.metrics_bind = metrics_bind
        self.worker_args = worker_args
        self.workers = [_Worker(i, *_private_socket()) for i in range(count)]
        self.stopping = False
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.coordinator = Coordinator()
        """The counts the workers share (keys' limits and usage)."""
        self.environ = {**os.environ}
        # One secret for every worker, so a key's cache salt is the same whichever serves it.
        self.environ.setdefault(CACHE_SECRET_ENV, secrets.token_hex(32))

    # --- workers ---------------------------------------------------------------------

    def command(self, worker: _Worker, shared_fd: int) -> list[str]:
        """The command line of one worker, its link to the shared counts on ``shared_fd``."""
        return [
            sys.executable,
            "-m",
            "cortex_gateway",
            "serve",
            "--config",
            str(self.config_path),
            *self.worker_args,
            "--worker",
            str(worker.index),
            "--api-fd",
            str(self.api_fd),
            "--metrics-fd",
            str(worker.metrics_fd),
            "--shared-fd",
            str(shared_fd),
        ]

    async def _start(self, worker: _Worker) -> None:
        shared = self.coordinator.link(worker.index)
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self.command(worker, shared),
                pass_fds=(self.api_fd, worker.metrics_fd, shared),
                env=self.environ,
            )
        finally:
            os.close(shared)  # the worker has its own copy
        worker.started = time.monotonic()
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker for as long as the gateway runs, starting it again if it dies."""
        while True:
            await self._start(worker)
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping:
                break
            lived = time.monotonic() - worker.started
            worker.pause_s = min(worker.pause_s * 2, MAX_PAUSE_S) if lived < YOUNG_S else 1.0
            log.error(
                "worker exited; starting it again",
                extra={
                    "worker": worker.index,
                    "pid": worker.process.pid,
                    "status": code,
                    "lived_s": round(lived, 1),
                    "retry_in_s": worker.pause_s,
                },
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(worker.pause_s):
                    await self._stop.wait()
            if self._stop.is_set():
                break

    def signal_all(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker alive."""
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM/SIGINT: pass it on; the workers drain and exit, and so do we."""
        self.stopping = True
        self._stop.set()
        self.signal_all(signal.SIGTERM)

    def reload(self, sig: signal.Signals = signal.SIGHUP) -> None:
        """SIGHUP: every worker reads models.toml again; SIGUSR1: forced, as one worker was."""
        log.info(
            "reloading every worker",
            extra={"workers": len(self.workers), "forced": sig == signal.SIGUSR1},
        )
        self.signal_all(sig)

    # --- metrics ---------------------------------------------------------------------

    async def scrape(self, request: Request) -> Response:
        """``GET /metrics``: every worker's metrics, merged."""
        assert self._session is not None
        session = self._session

        async def one(worker: _Worker) -> str | None:
            url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            try:
                async with session.get(url, timeout=SCRAPE_TIMEOUT) as answer:
                    return await answer.text() if answer.status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                return None  # starting or stopping: counted when it answers again

        texts = await asyncio.gather(*(one(w) for w in self.workers))
        answered = [t for t in texts if t is not None]
        own = (
            "# HELP cortex_gateway_workers Gateway worker processes answering\n"
            "# TYPE cortex_gateway_workers gauge\n"
            f"cortex_gateway_workers {len(answered)}\n"
        )
        merged = await asyncio.to_thread(merge_metrics, [*answered, own])
        return Response(merged, media_type=CONTENT_TYPE_LATEST)

    # --- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Start every worker and serve the merged metrics until the workers are all gone."""
        from hypercorn.asyncio import serve as hypercorn_serve

        from cortex_core.runtime.serving import server_config

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.terminate)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.reload, signal.SIGUSR1)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)
        )
        app = Starlette(routes=[Route("/metrics", self.scrape, methods=["GET"])])
        settings = server_config(self.metrics_bind, graceful_timeout_s=1.0)
        metrics_app: object = app
        log.info("supervising workers", extra={"workers": len(self.workers)})
        try:
            async with asyncio.TaskGroup() as group:
                for worker in self.workers:
                    group.create_task(self._keep(worker))
                group.create_task(
                    hypercorn_serve(metrics_app, settings, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
                )
        finally:
            await self._session.close()
            await self.coordinator.close()
        log.info("every worker stopped")
