"""The models a neuron holds and their lifecycle: load, serve, unload.

Loads run as tasks of their own, so a client that goes away cancels nothing;
a second load of a model already loading joins the first. Memory claimed by
loads still under way is reserved so two loads never count the same free
memory. The management API stays responsive throughout: everything slow runs
in a thread or in the engine's own processes.

With ``[neuron] sleep_memory_gb``, an unload that asks for it may put a GPU
engine to sleep instead (its weights in host memory, its device memory given
back); a load of it, or a request for it, wakes it. Sleepers are the first to
go when memory is short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil

from cortex_core.config import NeuronConfig
from cortex_core.ids import InvalidModelId, ModelId, parse_model_id
from cortex_core.neuron_api import Device, LoadRequest, ModelInfo, ModelState, UnloadResponse
from cortex_core.tasks import TASKS
from cortex_core.units import GIB
from neuron.devices import read_devices
from neuron.engine import Engine, EngineError, EngineFactory, EngineSpec, InvalidOptionError
from neuron.errors import NeuronError
from neuron.preflight import Plan, check_architecture, plan_load
from neuron.sleep import Sleeper, plan_sleep, refusal
from neuron.sources import Sources

__all__ = ["Entry", "LoadEvent", "Registry", "host_free_bytes"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
"""How long an unload waits for requests in flight before stopping the engine anyway."""
HEALTH_INTERVAL_S = 5.0
CLOSE_TIMEOUT_S = 150.0
"""How long shutdown waits for loads under way to clean up after themselves."""


def host_free_bytes() -> int:
    """Memory the host can still give (``MemAvailable``)."""
    return int(psutil.virtual_memory().available)


@dataclass(frozen=True, slots=True)
class LoadEvent:
    """A load (or a wake) that ended: ready or failed, how long it took, phase by phase."""

    model: str
    outcome: Literal["ready", "failed"]
    seconds: float
    phases: Mapping[str, float]
    kind: Literal["load", "wake"] = "load"


@dataclass
class Entry:
    """One model on this neuron, in any state."""

    id: str
    source: str
    model_task: str = "generate"
    """What its engine serves: ``generate`` or ``embed`` (``task`` is the load's asyncio task)."""
    state: ModelState = "loading"
    phase: str | None = "preflight"
    plan: Plan | None = None
    engine: Engine | None = None
    error: str | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    task: asyncio.Task[None] | None = None
    planned: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of the load (or wake) under way, or of the last one."""
    phase_began: float = field(default_factory=time.monotonic)
    can_sleep: bool = False
    """Its engine was started able to sleep."""
    host_bytes: int = 0
    """While sleeping: host memory its weights hold."""

    def enter(self, phase: str | None) -> None:
        """End the current phase (counting its seconds) and begin ``phase`` (none: done)."""
        now = time.monotonic()
        if self.phase is not None:
            spent = self.phase_seconds.get(self.phase, 0.0) + now - self.phase_began
            self.phase_seconds[self.phase] = round(spent, 3)
        self.phase, self.phase_began = phase, now

    def info(self) -> ModelInfo:
        """The wire form ``GET /models`` shows."""
        plan = self.plan
        return ModelInfo(
            id=self.id,
            source=self.source,
            state=self.state,
            devices=list(plan.devices) if plan else [],
            memory_bytes=plan.needed_bytes if plan else 0,
            loaded_at=self.loaded_at,
            last_used=self.last_used,
            in_flight=self.in_flight,
            max_model_len=self.engine.max_model_len if self.engine else None,
            max_num_seqs=self.engine.max_num_seqs if self.engine else None,
            error=self.error,
            phase=self.phase if self.state == "loading" else None,
            phase_seconds=dict(self.phase_seconds) if self.state != "loading" else {},
            host_memory_bytes=self.host_bytes if self.state == "sleeping" else 0,
            task=self.model_task,
        )


class Registry:
    """Every model this neuron holds, and the only place that starts or stops engines."""

    def __init__(
        self,
        config: NeuronConfig,
        factory: EngineFactory,
        sources: Sources,
        *,
        devices: Callable[[], list[Device]] = read_devices,
        host_free: Callable[[], int] = host_free_bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._factory = factory
        self._sources = sources
        self._devices = devices
        self._host_free = host_free
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._placement = asyncio.Lock()
        self._reserved: dict[int | None, int] = {}
        self._unloads: dict[str, asyncio.Task[UnloadResponse]] = {}
        self._listeners: list[Callable[[LoadEvent], None]] = []
        sleep_gb = config.neuron.sleep_memory_gb
        self._sleep_budget = int(sleep_gb * GIB) if sleep_gb is not None else None
        if sleep_gb is not None:
            reason = refusal(sleep_gb, len(devices()), factory.sleep_support())
            if reason is not None:
                raise ValueError(f"neuron.sleep_memory_gb: {reason}")

    def subscribe(self, listener: Callable[[LoadEvent], None]) -> None:
        """Tell ``listener`` of every load and wake that ends, ready or failed."""
        self._listeners.append(listener)

    def _emit(self, event: LoadEvent) -> None:
        for listener in self._listeners:
            listener(event)

    # --- views ---------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model in any state."""
        return [entry.info() for entry in self._entries.values()]

    def entries(self) -> Mapping[str, Entry]:
        """The entries by concrete id (read only)."""
        return dict(self._entries)

    def ready(self, model_id: str) -> Entry:
        """The ready entry serving ``model_id``, or ``not_loaded``."""
        entry = self._entries.get(model_id)
        if entry is None or entry.state != "ready" or entry.engine is None:
            state = f" (it is {entry.state})" if entry else ""
            raise NeuronError("not_loaded", f"model {model_id!r} is not loaded here{state}")
        return entry

    # --- serving -----------------------------------------------------------------------

    def acquire(self, model_id: str) -> tuple[Entry, Engine]:
        """Count a request in flight on ``model_id``; pair with :meth:`release`."""
        entry = self.ready(model_id)
        assert entry.engine is not None
        entry.in_flight += 1
        entry.drained.clear()
        entry.last_used = self._clock()
        return entry, entry.engine

    def release(self, entry: Entry) -> None:
        """A request on ``entry`` finished."""
        entry.in_flight -= 1
        entry.last_used = self._clock()
        if entry.in_flight == 0:
            entry.drained.set()

    # --- loading -------------------------------------------------------------------------

    async def load(self, request: LoadRequest) -> ModelInfo:
        """Load (or join the load of) a model; with ``wait``, return once it is ready."""
        try:
            model = parse_model_id(request.model)
        except InvalidModelId as exc:
            raise NeuronError("invalid_model_id", str(exc), {"model": request.model}) from None
        if request.task not in TASKS:
            raise NeuronError(
                "invalid_request",
                f"unknown task {request.task!r}: one of {', '.join(sorted(TASKS))}",
                {"model": request.model},
            )
        source = self._sources.for_model(model)
        pending = self._unloads.get(model.concrete)
        if pending is not None:
            await asyncio.shield(pending)
        entry = self._entries.get(model.concrete)
        if entry is not None and entry.state != "failed" and entry.model_task != request.task:
            raise NeuronError(
                "busy",
                f"model {model.concrete!r} is {entry.state} here with task {entry.model_task!r};"
                f" unload it before loading it with task {request.task!r}",
                {"model": model.concrete, "task": entry.model_task},
            )
        if entry is not None and entry.state == "ready":
            return entry.info()
        if entry is None or entry.state == "failed":
            entry = Entry(id=model.concrete, source=source.name, model_task=request.task)
            self._entries[model.concrete] = entry
            self._run(entry, self._load(entry, model, request))
        elif entry.state == "sleeping":
            # At once, so a second load or request joins this wake instead of starting one.
            entry.state, entry.error, entry.phase_seconds = "loading", None, {}
            entry.phase, entry.phase_began = "waking", time.monotonic()
            self._run(entry, self._wake(entry))
        else:
            log.info("joining a load under way", extra={"model": model.concrete})
        task = entry.task
        assert task is not None
        if request.wait:
            await asyncio.shield(task)
        else:
            await asyncio.shield(entry.planned.wait())
            if task.done() and task.exception() is not None:
                await task
        return entry.info()

    @staticmethod
    def _run(entry: Entry, work: Coroutine[Any, Any, None]) -> None:
        entry.task = asyncio.create_task(work)
        # Failures reach whoever waits; one nobody waits for is already logged.
        entry.task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def woken(self, model_id: str) -> None:
        """Wake ``model_id`` if it sleeps (or wait for its wake under way), before a request."""
        entry = self._entries.get(model_id)
        if entry is None:
            return
        if entry.state == "sleeping":
            await self.load(LoadRequest(model=model_id, task=entry.model_task))
        elif entry.state == "loading" and entry.phase == "waking" and entry.task is not None:
            await asyncio.shield(entry.task)

    async def _load(self, entry: Entry, model: ModelId, request: LoadRequest) -> None:
        started = time.monotonic()
        try:
            plan = await self._preflight(entry, model, request)
            try:
                entry.enter("fetching")
                log.info("fetching model files", extra={"model": model.qualified})
                source = self._sources.for_model(model)
                gguf_file = plan.options.get("gguf_file")
                path = await asyncio.to_thread(source.fetch, model, gguf_file)
                entry.enter("starting")
                log.info(
                    "starting engine",
                    extra={
                        "model": entry.id,
                        "devices": list(plan.devices) or "cpu",
                        "path": str(path),
                    },
                )
                can_sleep = self._sleep_budget is not None and bool(plan.devices)
                spec = EngineSpec(
                    entry.id,
                    path,
                    plan.devices,
                    plan.options,
                    source=source.name,
                    sleep=can_sleep,
                    task=entry.model_task,
                )
                entry.engine = await self._factory.start(spec, entry.enter)
                entry.can_sleep = can_sleep
            finally:
                self._release_reservation(plan)
        except NeuronError as exc:
            self._fail(entry, model, exc, started, planned=entry.planned.is_set())
            raise
        except EngineError as exc:
            error = NeuronError(
                "load_failed", f"engine failed to start: {exc}", {"model": entry.id}
            )
            self._fail(entry, model, error, started, planned=True)
            raise error from None
        except asyncio.CancelledError:
            self._entries.pop(entry.id, None)
            raise
        except Exception as exc:
            log.exception("load failed unexpectedly", extra={"model": entry.id})
            error = NeuronError("load_failed", f"{type(exc).__name__}: {exc}", {"model": entry.id})
            self._fail(entry, model, error, started, planned=entry.planned.is_set())
            raise error from None
        finally:
            entry.planned.set()
        entry.enter(None)
        entry.state = "ready"
        entry.loaded_at = entry.last_used = self._clock()
        entry.drained.set()
        seconds = time.monotonic() - started
        self._emit(LoadEvent(entry.id, "ready", seconds, dict(entry.phase_seconds)))
        log.info(
            "model ready",
            extra={"model": entry.id, "seconds": round(seconds, 1), "phases": entry.phase_seconds},
        )

    async def _preflight(self, entry: Entry, model: ModelId, request: LoadRequest) -> Plan:
        await self._factory.prepare()
        options = {**self._config.engine, **request.options}
        try:
            self._factory.check_options(options)
        except InvalidOptionError as exc:
            raise NeuronError("invalid_option", str(exc), {"options": sorted(options)}) from None
        source = self._sources.for_model(model)
        asked = options.get("gguf_file")
        if asked is not None and not isinstance(asked, str):
            raise NeuronError("invalid_option", "gguf_file must be a file name in the repository")
        metadata = await asyncio.to_thread(source.metadata, model, asked)
        check_architecture(metadata.config, self._factory.supported_architectures())
        if metadata.gguf_file is not None:
            if (reason := self._factory.gguf_support()) is not None:
                raise NeuronError(
                    "unsupported_model",
                    f"{model.concrete} has GGUF weights ({metadata.gguf_file}): {reason}",
                    {"gguf_file": metadata.gguf_file},
                )
            options["gguf_file"] = metadata.gguf_file
        async with self._placement:
            while True:
                try:
                    plan = await self._plan(
                        metadata.config, metadata.weights_bytes, options, request
                    )
                    break
                except NeuronError as exc:
                    # Memory is short: sleepers go first, then the gateway decides.
                    if exc.code != "insufficient_memory" or not await self._drop_a_sleeper():
                        raise
            entry.plan = plan
            self._reserve(plan)
        entry.planned.set()
        log.info(
            "preflight passed",
            extra={
                "model": model.qualified,
                "devices": list(plan.devices) or "cpu",
                "needed_bytes": plan.needed_bytes,
                "max_model_len": plan.max_model_len,
            },
        )
        return plan

    async def _plan(
        self,
        config: Mapping[str, Any],
        weights_bytes: int,
        options: dict[str, Any],
        request: LoadRequest,
    ) -> Plan:
        """Plan a load against free memory less what loads under way reserved."""
        available = await asyncio.to_thread(self._available)
        host_free = self._host_free() - self._reserved.get(None, 0)
        budget = self._budget()
        if budget is not None and not available:
            host_free = min(host_free, budget)
        plan = plan_load(config, weights_bytes, options, available, request.devices, host_free)
        if budget is not None and available and plan.needed_bytes > budget:
            raise NeuronError(
                "insufficient_memory",
                f"needs {plan.needed_bytes / GIB:.1f} GiB; memory_limit_gb leaves"
                f" {max(budget, 0) / GIB:.1f} GiB",
                {"needed_bytes": plan.needed_bytes, "devices": [], "limit_free_bytes": budget},
            )
        return plan

    def _available(self) -> list[Device]:
        """The devices, with the memory loads under way reserved counted as used."""
        return [
            Device(
                index=d.index,
                name=d.name,
                uuid=d.uuid,
                memory_total=d.memory_total,
                memory_used=d.memory_used + self._reserved.get(d.index, 0),
                memory_free=d.memory_free - self._reserved.get(d.index, 0),
                utilization=d.utilization,
            )
            for d in self._devices()
        ]

    def _budget(self) -> int | None:
        """What ``memory_limit_gb`` leaves after every plan held or reserved, if set."""
        limit = self._config.neuron.memory_limit_gb
        if limit is None:
            return None
        held = sum(
            e.plan.needed_bytes
            for e in self._entries.values()
            if e.plan and e.state not in ("failed", "sleeping")
        )
        return int(limit * GIB) - held

    def _reserve(self, plan: Plan, sign: int = 1) -> None:
        for key in plan.devices or (None,):
            share = plan.needed_bytes // max(len(plan.devices), 1)
            self._reserved[key] = self._reserved.get(key, 0) + sign * share

    def _release_reservation(self, plan: Plan) -> None:
        self._reserve(plan, -1)

    def _fail(
        self, entry: Entry, model: ModelId, error: NeuronError, started: float, *, planned: bool
    ) -> None:
        seconds = time.monotonic() - started
        entry.enter(None)
        self._emit(LoadEvent(entry.id, "failed", seconds, dict(entry.phase_seconds)))
        log.warning(
            "load failed",
            extra={"model": model.qualified, "code": error.code, "error": error.message},
        )
        if not planned:
            # Refused in preflight: nothing was touched, nothing to show in /models.
            if self._entries.get(entry.id) is entry:
                del self._entries[entry.id]
            return
        entry.state, entry.phase, entry.error, entry.engine = "failed", None, error.message, None

    # --- unloading ---------------------------------------------------------------------

    async def unload(self, model_id: str, *, sleep: bool = False) -> UnloadResponse:
        """Stop the model's engine once its requests drain; return when its memory is back.

        With ``sleep``, put it to sleep instead where it can sleep (a GPU engine,
        ``sleep_memory_gb`` set, room for its weights there once the least
        recently used sleepers are gone); the answer's state says which. A
        sleeping model unloads for good.
        """
        pending = self._unloads.get(model_id)
        if pending is not None:
            return await asyncio.shield(pending)
        entry = self._entries.get(model_id)
        if entry is None or entry.state == "failed":
            self._entries.pop(model_id, None)
            raise NeuronError("not_loaded", f"model {model_id!r} is not loaded here")
        if entry.state == "loading":
            raise NeuronError("busy", f"model {model_id!r} is still loading; unload it once ready")
        task = asyncio.create_task(self._unload(entry, sleep=sleep and entry.state == "ready"))
        self._unloads[model_id] = task
        task.add_done_callback(lambda _: self._unloads.pop(model_id, None))
        return await asyncio.shield(task)

    async def _unload(self, entry: Entry, *, sleep: bool = False) -> UnloadResponse:
        entry.state = "unloading"
        if entry.in_flight:
            log.info(
                "unload waiting for requests in flight",
                extra={"model": entry.id, "in_flight": entry.in_flight},
            )
            try:
                await asyncio.wait_for(entry.drained.wait(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "unload stops the engine with requests still in flight",
                    extra={"model": entry.id, "in_flight": entry.in_flight},
                )
        if sleep and (slept := await self._sleep(entry)) is not None:
            return slept
        try:
            freed = await self._stop(entry)
        finally:
            # Whatever happened to the engine, the entry must not stay `unloading`.
            if self._entries.get(entry.id) is entry:
                del self._entries[entry.id]
        log.info("model unloaded", extra={"model": entry.id, "freed_bytes": freed})
        return UnloadResponse(id=entry.id, freed_bytes=freed)

    async def _stop(self, entry: Entry) -> int:
        """Shut the engine down and measure the memory that came back."""
        engine, plan = entry.engine, entry.plan
        entry.engine = None
        if engine is None or plan is None:
            return 0
        before = await asyncio.to_thread(self._used, plan.devices)
        await engine.shutdown()
        alive = [pid for pid in engine.pids if psutil.pid_exists(pid)]
        if alive:
            log.error(
                "engine processes survived shutdown", extra={"model": entry.id, "pids": alive}
            )
        after = await asyncio.to_thread(self._used, plan.devices)
        return max(before - after, 0)

    def _used(self, devices: tuple[int, ...]) -> int:
        if not devices:
            return -self._host_free()
        return sum(d.memory_used for d in self._devices() if d.index in devices)

    # --- sleeping ----------------------------------------------------------------------

    def _sleepers(self) -> list[Entry]:
        return [e for e in self._entries.values() if e.state == "sleeping"]

    async def _sleep(self, entry: Entry) -> UnloadResponse | None:
        """Put ``entry``'s engine to sleep if it can sleep and there is room; else ``None``."""
        engine, plan = entry.engine, entry.plan
        if self._sleep_budget is None or not entry.can_sleep or engine is None or plan is None:
            return None
        sleepers = [Sleeper(e.id, e.host_bytes, e.last_used or 0.0) for e in self._sleepers()]
        room = plan_sleep(plan.weights_bytes, self._sleep_budget, self._host_free(), sleepers)
        if room is None:
            log.info(
                "no room to sleep; unloading",
                extra={
                    "model": entry.id,
                    "host_bytes": plan.weights_bytes,
                    "sleep_memory_bytes": self._sleep_budget,
                },
            )
            return None
        for model_id in room.drop:
            log.info("unloading a sleeper to make room", extra={"model": model_id})
            await self.unload(model_id)
        started = time.monotonic()
        before = await asyncio.to_thread(self._used, plan.devices)
        try:
            await engine.sleep()
        except Exception as exc:
            log.warning(
                "engine could not sleep; unloading", extra={"model": entry.id, "error": str(exc)}
            )
            return None
        entry.state, entry.host_bytes = "sleeping", plan.weights_bytes
        freed = max(before - await asyncio.to_thread(self._used, plan.devices), 0)
        log.info(
            "model asleep",
            extra={
                "model": entry.id,
                "freed_bytes": freed,
                "host_bytes": entry.host_bytes,
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        return UnloadResponse(
            id=entry.id, state="sleeping", freed_bytes=freed, host_memory_bytes=entry.host_bytes
        )

    async def _drop_a_sleeper(self) -> bool:
        """Unload the least recently used sleeper (memory is short); ``False`` if none sleeps."""
        sleepers = self._sleepers()
        if not sleepers:
            return False
        oldest = min(sleepers, key=lambda e: (e.last_used or 0.0, e.id))
        log.info("memory is short: unloading a sleeper", extra={"model": oldest.id})
        await self.unload(oldest.id)
        return True

    async def _wake(self, entry: Entry) -> None:
        """Give a sleeping engine its device memory back; sleeping again if there is no room."""
        engine, plan = entry.engine, entry.plan
        assert engine is not None
        assert plan is not None
        started = entry.phase_began
        try:
            async with self._placement:
                while not await asyncio.to_thread(self._fits, plan):
                    if not await self._drop_a_sleeper():
                        devices = await asyncio.to_thread(self._available)
                        free = [{"index": d.index, "free_bytes": d.memory_free} for d in devices]
                        raise NeuronError(
                            "insufficient_memory",
                            f"waking {entry.id} needs {plan.needed_bytes / GIB:.1f} GiB on"
                            f" GPU(s) {', '.join(map(str, plan.devices))}",
                            {"needed_bytes": plan.needed_bytes, "devices": free},
                        )
                self._reserve(plan)
            try:
                await engine.wake_up()
            finally:
                self._release_reservation(plan)
        except NeuronError as exc:
            entry.enter(None)
            entry.state = "sleeping"
            self._emit(LoadEvent(entry.id, "failed", time.monotonic() - started, {}, "wake"))
            log.warning(
                "wake refused", extra={"model": entry.id, "code": exc.code, "error": exc.message}
            )
            raise
        except asyncio.CancelledError:
            entry.state = "sleeping"
            raise
        except Exception as exc:
            entry.enter(None)
            error = NeuronError("load_failed", f"engine failed to wake: {exc}", {"model": entry.id})
            entry.state, entry.error, entry.engine = "failed", error.message, None
            self._emit(LoadEvent(entry.id, "failed", time.monotonic() - started, {}, "wake"))
            log.warning("wake failed", extra={"model": entry.id, "error": str(exc)})
            await engine.shutdown()
            raise error from None
        entry.enter(None)
        entry.state, entry.host_bytes = "ready", 0
        entry.last_used = self._clock()
        seconds = time.monotonic() - started
        self._emit(LoadEvent(entry.id, "ready", seconds, dict(entry.phase_seconds), "wake"))
        log.info("model awake", extra={"model": entry.id, "seconds": round(seconds, 1)})

    def _fits(self, plan: Plan) -> bool:
        """Whether each of the plan's devices has its share free (reservations counted)."""
        share = plan.needed_bytes // max(len(plan.devices), 1)
        free = {d.index: d.memory_free for d in self._available()}
        return all(free.get(index, 0) >= share for index in plan.devices)

    # --- health and shutdown -----------------------------------------------------------

    async def watch(self) -> None:
        """Mark models whose engine died as failed and reap what is left of them."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            for entry in list(self._entries.values()):
                alive = entry.state in ("ready", "sleeping")
                if alive and entry.engine is not None and entry.engine.dead:
                    log.error("engine died", extra={"model": entry.id})
                    engine = entry.engine
                    entry.state, entry.error, entry.engine = "failed", "engine died", None
                    await engine.shutdown()

    async def close(self) -> None:
        """Stop every engine (daemon shutdown); loads under way are cancelled and cleaned up."""
        loading = [
            e.task for e in self._entries.values() if e.task is not None and not e.task.done()
        ]
        for task in loading:
            task.cancel()
        if loading:
            # A cancelled start stops the engine it was making before it ends.
            await asyncio.wait(loading, timeout=CLOSE_TIMEOUT_S)
        for entry in list(self._entries.values()):
            if entry.engine is not None:
                log.info("stopping engine", extra={"model": entry.id})
                await self._stop(entry)
        self._entries.clear()
