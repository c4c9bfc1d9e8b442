"""Real engines: vLLM's ``AsyncLLM`` with vLLM's own OpenAI serving layer, in-process.

This is the only module that imports vLLM. Chat templates, sampling, tool-call
and reasoning parsing and SSE framing are vLLM's; this module only turns bytes
into vLLM requests and vLLM replies into bytes. vLLM's module paths move
between releases: they are pinned to the version in ``VLLM_VERSION``.

Process model. vLLM's own starts an ``EngineCore`` interpreter that starts a
``Worker`` interpreter, each importing torch and vLLM afresh: most of a CPU
load's minute. A CPU engine of one process (no tensor or pipeline parallel)
is *forked* instead: its ``EngineCore`` comes from the neuron's engine host
(:mod:`neuron.enginehost`, vLLM already imported there) and runs the worker in
itself (vLLM's single-process executor), so a load pays for the model, not
for interpreters. GPU engines keep vLLM's own process model, and the engine
option ``engine_process = "vllm"`` asks for it anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from cortex_core.neuron_api import TokenizeRequest, TokenizeResponse, context_length_error
from cortex_core.openai import error_envelope
from cortex_core.wire import encode
from neuron.chat_rules import (
    LATE_SYSTEM_PROBES,
    TOOL_CALLS_SETTING,
    fit_output,
    fold_system_messages,
    takes_late_system,
    tool_choice_without_parser,
)
from neuron.engine import (
    Engine,
    EngineError,
    EngineSpec,
    EngineStats,
    InvalidOptionError,
    JsonReply,
    PhaseCallback,
    Reply,
    StreamReply,
)
from neuron.enginehost import EngineHost, HostLaunch, Threads, parse_cpu_list
from neuron.parsers import ModelTraits, default_parsers
from neuron.runtime import VLLM_VERSION

__all__ = ["ENGINE_PROCESS", "VLLM_VERSION", "VllmEngine", "VllmEngineFactory", "sleep_support"]

log = logging.getLogger(__name__)


# Set by the neuron itself from the model and its own settings, never by options.
_CONTROLLED = frozenset({"model", "served_model_name", "tokenizer", "disable_log_stats"})
# Options of vLLM's OpenAI layer rather than of the engine.
_SERVING_OPTIONS = frozenset({"tool_call_parser", "reasoning_parser", "chat_template"})
ENGINE_PROCESS = "engine_process"
"""The option choosing the process model: ``forked`` (from the engine host) or ``vllm``."""
_NEURON_OPTIONS = frozenset({"gguf_file", ENGINE_PROCESS})
"""Options the neuron itself reads: ``gguf_file`` picks the GGUF file of a repository;
``engine_process`` the process model."""
_PROCESS_MODELS = ("forked", "vllm")
_PARALLEL_OPTIONS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")
# What a forked engine process imports from the host instead of at its start.
_HOST_PRELOAD = (
    "torch",
    "vllm",
    "vllm.v1.engine.core",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.worker.cpu_worker",
)
_LAUNCH: contextvars.ContextVar[HostLaunch | None] = contextvars.ContextVar(
    "neuron_engine_launch", default=None
)
"""Set while an engine is being made in the forked process model: where its processes come from."""
GGUF_PLUGIN = "vllm-gguf-plugin"
"""Where vLLM's GGUF support lives since 0.24 (CUDA and ROCm kernels, Triton fallbacks)."""
_SHUTDOWN_GRACE_S = 20.0
_OVERFLOW_PARAMS = frozenset({"input_tokens", "input_text"})
"""What vLLM names as the offending ``param`` when a prompt does not fit the context."""


class _Vllm:
    """The vLLM names this adapter uses, imported once (``import vllm`` takes seconds)."""

    def __init__(self) -> None:
        def load(module: str, name: str) -> Any:
            return getattr(importlib.import_module(module), name)

        self.version: str = importlib.import_module("vllm").__version__
        if self.version != VLLM_VERSION:
            log.warning(
                "vLLM version differs from the one this neuron was written for",
                extra={"found": self.version, "expected": VLLM_VERSION},
            )
        self.AsyncEngineArgs = load("vllm.engine.arg_utils", "AsyncEngineArgs")
        self.AsyncLLM = load("vllm.v1.engine.async_llm", "AsyncLLM")
        self.ModelRegistry = load("vllm.model_executor.models", "ModelRegistry")
        self.StatLoggerBase = load("vllm.v1.metrics.loggers", "StatLoggerBase")
        self.ToolParserManager = load("vllm.tool_parsers", "ToolParserManager")
        self.ChatCompletionRequest = load(
            "vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"
        )
        self.CompletionRequest = load(
            "vllm.entrypoints.openai.completion.protocol", "CompletionRequest"
        )
        self.OpenAIServingChat = load(
            "vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat"
        )
        self.OpenAIServingCompletion = load(
            "vllm.entrypoints.openai.completion.serving", "OpenAIServingCompletion"
        )
        self.BaseModelPath = load("vllm.entrypoints.openai.models.protocol", "BaseModelPath")
        self.OpenAIServingModels = load(
            "vllm.entrypoints.openai.models.serving", "OpenAIServingModels"
        )
        self.ServingTokenization = load(
            "vllm.entrypoints.serve.tokenize.serving", "ServingTokenization"
        )
        self.TokenizeChatRequest = load(
            "vllm.entrypoints.serve.tokenize.protocol", "TokenizeChatRequest"
        )
        self.TokenizeCompletionRequest = load(
            "vllm.entrypoints.serve.tokenize.protocol", "TokenizeCompletionRequest"
        )
        self.ResponsesRequest = load(
            "vllm.entrypoints.openai.responses.protocol", "ResponsesRequest"
        )
        self.OpenAIServingResponses = load(
            "vllm.entrypoints.openai.responses.serving", "OpenAIServingResponses"
        )
        self.EmbeddingRequest = load("vllm.entrypoints.pooling.embed.protocol", "EmbeddingRequest")
        self.ServingEmbedding = load("vllm.entrypoints.pooling.embed.serving", "ServingEmbedding")
        self.RerankRequest = load("vllm.entrypoints.pooling.scoring.protocol", "RerankRequest")
        self.ScoreRequest = load("vllm.entrypoints.pooling.scoring.protocol", "ScoreRequest")
        self.ServingScores = load("vllm.entrypoints.pooling.scoring.serving", "ServingScores")
        self.ChatTemplateConfig = load("vllm.renderers.chat_utils", "ChatTemplateConfig")
        # vLLM's request types are pydantic models and unions of them (embeddings, score).
        self.TypeAdapter = load("pydantic", "TypeAdapter")
        self.OnlineRenderer = load("vllm.renderers.online_renderer", "OnlineRenderer")
        self.ErrorResponse = load("vllm.entrypoints.serve.engine.protocol", "ErrorResponse")
        self.create_error_response = load(
            "vllm.entrypoints.serve.exception_handling.error_response", "create_error_response"
        )
        self._validators: dict[Any, Any] = {}
        self.engine_fields = frozenset(
            f.name for f in dataclasses.fields(self.AsyncEngineArgs) if f.init
        )
        self.architectures = frozenset(self.ModelRegistry.get_supported_archs())
        self.cpu: bool = load("vllm.platforms", "current_platform").is_cpu()
        self.OMPProcessManager = load("vllm.utils.ompmultiprocessing", "OMPProcessManager")
        # vLLM starts its EngineCore through this module's get_mp_context(): while an
        # engine is made in the forked model, that context is the engine host's.
        launcher: Any = importlib.import_module("vllm.v1.engine.utils")
        own = launcher.get_mp_context

        def get_mp_context() -> Any:
            launch = _LAUNCH.get()
            return launch if launch is not None else own()

        launcher.get_mp_context = get_mp_context

    def threads(self, config: Any) -> Threads:
        """The CPU vLLM would give its one CPU worker (``VLLM_CPU_OMP_THREADS_BIND``)."""
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
        if bind == "nobind":
            return Threads()
        if bind != "auto":
            cpus = parse_cpu_list(bind)
            return Threads(len(cpus), cpus)
        # vLLM's own choice for its worker: a core each, one left to the engine's loop.
        cpu_lists = self.OMPProcessManager(config).cpu_lists
        return Threads(len(cpu_lists[0])) if cpu_lists else Threads()

    def validate(self, request_type: Any, body: bytes) -> Any:
        """``body`` as vLLM's ``request_type`` (a model, or a union of them); ``ValueError``."""
        validator = self._validators.get(request_type)
        if validator is None:
            validator = self._validators[request_type] = self.TypeAdapter(request_type)
        return validator.validate_json(body)


class _StatsRecorder:
    """Keeps the latest statistics vLLM reports for one engine."""

    def __init__(self) -> None:
        self.stats = EngineStats()

    def logger_factory(self, base: type[Any]) -> type[Any]:
        recorder = self

        class _Logger(base):  # type: ignore[misc]
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                *args: Any,
                **kwargs: Any,
            ) -> None:
                old = recorder.stats
                running, waiting, usage = old.running, old.waiting, old.kv_cache_usage
                if scheduler_stats is not None:
                    running = scheduler_stats.num_running_reqs
                    waiting = scheduler_stats.num_waiting_reqs
                    usage = float(scheduler_stats.kv_cache_usage)
                prompt, generated = old.prompt_tokens, old.generation_tokens
                cached = old.cached_prompt_tokens
                if iteration_stats is not None:
                    prompt += iteration_stats.num_prompt_tokens
                    generated += iteration_stats.num_generation_tokens
                    cached += iteration_stats.prompt_token_stats.cached_tokens
                recorder.stats = EngineStats(running, waiting, usage, prompt, generated, cached)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger


def _engine_processes() -> set[psutil.Process]:
    # The multiprocessing resource tracker and the engine host serve every engine:
    # not one of theirs.
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in command and "multiprocessing.forkserver" not in command:
            found.add(child)
    return found


@contextlib.contextmanager
def _environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for ``None``, remove) environment variables, and put them back after."""

    def put(changes: Mapping[str, str | None]) -> None:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    saved = {key: os.environ.get(key) for key in values}
    try:
        put(values)
        yield
    finally:
        put(saved)


def _environments(
    spec: EngineSpec, rpc_dir: Path, cache: Path
) -> tuple[dict[str, str | None], dict[str, str]]:
    """An engine start's environment: the neuron's while it starts the engine, and its processes'.

    The engine's processes take the environment at their start, so it is set per engine.
    """
    # vLLM's processes leave files in TMPDIR when they fail; keep them in our folder.
    env: dict[str, str | None] = {"VLLM_RPC_BASE_PATH": str(rpc_dir), "TMPDIR": str(rpc_dir)}
    if spec.devices:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's order
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.devices))
    # Only the engine's processes use the model's own caches: the neuron's keeps vLLM's
    # notes on each architecture (``modelinfos``), worth an interpreter start each.
    caches = {
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
    }
    if not spec.devices and "VLLM_USE_AOT_COMPILE" not in os.environ:
        # vLLM 0.32's CPU build cannot load the AOT artifacts it saves ("'function'
        # object has no attribute 'finalize_loading'") and compiles again; its
        # ordinary compile cache loads: a compiled model's next start reuses it.
        caches["VLLM_USE_AOT_COMPILE"] = "0"
    return env, caches


def _cache_files(folder: Path) -> tuple[int, int]:
    """Files under ``folder`` and their bytes."""
    count = size = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                count += 1
                size += path.stat().st_size
    return count, size


def _make_engine(
    lib: _Vllm,
    config: Any,
    args: Any,
    recorder: _StatsRecorder,
    launch: HostLaunch | None,
    env: Mapping[str, str],
) -> Any:
    """``AsyncLLM`` for ``config``; its processes fork from ``launch``'s host when given.

    vLLM's own processes are spawned with ``env`` (a forked one has it from ``launch``).
    """
    token = _LAUNCH.set(launch)
    try:
        with contextlib.nullcontext() if launch is not None else _environ(env):
            return lib.AsyncLLM.from_vllm_config(
                config,
                stat_loggers=[recorder.logger_factory(lib.StatLoggerBase)],
                enable_log_requests=args.enable_log_requests,
                disable_log_stats=args.disable_log_stats,
            )
    finally:
        _LAUNCH.reset(token)


def _reason(exc: BaseException) -> str:
    """The most specific message in an exception chain, for a ``load_failed`` error."""
    messages: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(messages) < 5:
        text = str(current).strip().splitlines()
        messages.append(f"{type(current).__name__}: {text[0] if text else ''}".strip(": "))
        current = current.__cause__ or current.__context__
    return messages[-1] if len(messages) > 1 else messages[0]


class VllmEngineFactory:
    """Starts vLLM engines, one at a time, each with its own processes and socket folder.

    ``cache_dir`` holds each model's compilation and kernel caches
    (``<cache_dir>/engines/<source>/<org>--<name>``), so its next load reuses them.
    """

    def __init__(self, run_dir: Path, cache_dir: Path | None = None) -> None:
        self._run_dir = run_dir
        self._cache_dir = cache_dir if cache_dir is not None else run_dir / "cache"
        self._vllm: _Vllm | None = None
        self._import_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._host = EngineHost(_HOST_PRELOAD)

    async def prepare(self) -> None:
        """Start the engine host (CPU build) and import vLLM in a thread, side by side."""
        if self._vllm is None and _cpu_build():
            # Its imports run beside the neuron's own: both are paid before the first load.
            # (A load calls this too; by then the host runs, and launch() sees to it.)
            await asyncio.to_thread(self._host.start)
        await self._lib()

    async def _lib(self) -> _Vllm:
        async with self._import_lock:
            if self._vllm is None:
                started = time.monotonic()
                self._vllm = await asyncio.to_thread(_Vllm)
                log.info(
                    "vLLM imported",
                    extra={
                        "version": self._vllm.version,
                        "seconds": round(time.monotonic() - started, 1),
                    },
                )
            return self._vllm

    def supported_architectures(self) -> frozenset[str] | None:
        """The architectures in vLLM's model registry, once vLLM is imported."""
        return self._vllm.architectures if self._vllm is not None else None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse options that are neither vLLM engine arguments nor serving options."""
        if self._vllm is None:
            raise RuntimeError("check_options before prepare()")
        allowed = (self._vllm.engine_fields - _CONTROLLED) | _SERVING_OPTIONS | _NEURON_OPTIONS
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InvalidOptionError(
                f"unknown engine option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
            )
        controlled = sorted(set(options) & _CONTROLLED)
        if controlled:
            raise InvalidOptionError(f"set by the neuron, not an option: {', '.join(controlled)}")
        process = options.get(ENGINE_PROCESS)
        if process is not None and process not in _PROCESS_MODELS:
            raise InvalidOptionError(
                f"{ENGINE_PROCESS} must be one of {', '.join(_PROCESS_MODELS)}, not {process!r}"
            )
        if process == "forked" and not self._forkable(options):
            raise InvalidOptionError(
                f'{ENGINE_PROCESS} = "forked" runs CPU engines of one process; GPU and'
                " parallel engines keep vLLM's own processes"
            )

    def _forkable(self, options: Mapping[str, Any]) -> bool:
        """Whether an engine with ``options`` can be forked: the CPU build, one process."""
        one = all(options.get(k, 1) in (1, None) for k in _PARALLEL_OPTIONS)
        return self._vllm is not None and self._vllm.cpu and one

    def sleep_support(self) -> str | None:
        """Why engines here cannot sleep (see :func:`sleep_support`)."""
        return sleep_support()

    def gguf_support(self) -> str | None:
        """Why GGUF weights cannot load here: vLLM's CPU build, or no GGUF plugin."""
        if _cpu_build():
            return (
                "vLLM's CPU build cannot run them (vLLM loads GGUF through"
                f" {GGUF_PLUGIN}, whose kernels are CUDA, ROCm and Triton only);"
                " serve the model's safetensors weights instead"
            )
        if importlib.util.find_spec("vllm_gguf_plugin") is None:
            return (
                f"vLLM {VLLM_VERSION} loads GGUF only through {GGUF_PLUGIN}, which is not"
                f" installed in the engine's environment (pip install {GGUF_PLUGIN} there)"
            )
        return None

    async def start(self, spec: EngineSpec, on_phase: PhaseCallback | None = None) -> Engine:
        """Start ``AsyncLLM`` in a thread and build vLLM's OpenAI layer over it."""
        lib = await self._lib()
        self.check_options(spec.options)
        options = dict(spec.options)
        serving = {k: options.pop(k) for k in _SERVING_OPTIONS if k in options}
        process = options.pop(ENGINE_PROCESS, None)
        # Pooling engines keep vLLM's own process model: forked, one crashed on its
        # first request now and then (docs/neuron.md, "An open defect").
        forked = (
            process != "vllm"
            and not spec.devices
            and spec.task != "embed"
            and self._forkable(options)
        )
        if spec.sleep:
            options["enable_sleep_mode"] = True
        model = str(spec.path)
        if gguf_file := options.pop("gguf_file", None):
            # The plugin takes the .gguf path as the model; a config.json beside it
            # (and the tokenizer there) is used when the repository has one.
            model = str(spec.path / gguf_file)
            if (spec.path / "config.json").is_file():
                options.setdefault("tokenizer", str(spec.path))
        if spec.task == "embed":
            # A pooling engine; "embed" also turns a generative checkpoint into an
            # embedding model (last token's hidden state, normalised) and leaves a
            # native embedding model as it is.
            options.setdefault("runner", "pooling")
            options.setdefault("convert", "embed")
        # Requests carry a priority (the gateway's: interactive 0, batch 1; none is 0):
        # the engine's queue serves the lowest first, on the CPU as on CUDA.
        options.setdefault("scheduling_policy", "priority")
        if not spec.devices:
            # vLLM's CPU backend: compiled mode starts far slower and decodes no faster.
            options.setdefault("enforce_eager", True)
            options.setdefault("dtype", "bfloat16")
        recorder = _StatsRecorder()
        rpc_dir = self._run_dir / "rpc" / spec.model_id.replace("/", "--")
        shutil.rmtree(rpc_dir, ignore_errors=True)
        rpc_dir.mkdir(parents=True)
        cache = self._engine_cache(spec)
        cache.mkdir(parents=True, exist_ok=True)
        cached = await asyncio.to_thread(_cache_files, cache)
        env, caches = _environments(spec, rpc_dir, cache)
        started_at = time.monotonic()
        async with self._start_lock:
            with _environ(env):
                before = _engine_processes()
                launch: HostLaunch | None = None

                def ours() -> set[psutil.Process]:
                    # Forked: exactly the processes the launch made; else every new one.
                    if launch is None:
                        return _engine_processes() - before
                    return _processes(p.pid for p in launch.processes)

                try:
                    args = lib.AsyncEngineArgs(
                        model=model, served_model_name=[spec.model_id], **options
                    )
                    config = await asyncio.to_thread(args.create_engine_config)
                    if forked:
                        # One process: the worker runs in the EngineCore forked from the host.
                        config.parallel_config.distributed_executor_backend = "uni"
                        engine_env = {**os.environ, **caches}
                        launch = self._host.launch(engine_env, lib.threads(config))
                    building = asyncio.ensure_future(
                        asyncio.to_thread(_make_engine, lib, config, args, recorder, launch, caches)
                    )
                    try:
                        engine = await asyncio.shield(building)
                    except asyncio.CancelledError:
                        # A start cannot be stopped midway: let it finish, then stop
                        # what it started, so no engine outlives the load that wanted it.
                        log.info(
                            "load cancelled; stopping its engine once started",
                            extra={"model": spec.model_id},
                        )
                        with contextlib.suppress(Exception):
                            started = await building
                            await asyncio.to_thread(started.shutdown)
                        await _reap(ours())
                        shutil.rmtree(rpc_dir, ignore_errors=True)
                        raise
                except Exception as exc:
                    await _reap(ours())
                    shutil.rmtree(rpc_dir, ignore_errors=True)
                    raise EngineError(_reason(exc)) from exc
                processes = frozenset(ours())
        log.info(
            "engine started",
            extra={
                "model": spec.model_id,
                "process_model": "forked" if forked else "vllm",
                "pids": sorted(p.pid for p in processes),
                "seconds": round(time.monotonic() - started_at, 1),
            },
        )
        if on_phase is not None:
            on_phase("serving")
        try:
            built = await _build(lib, engine, spec, serving, recorder, processes, rpc_dir)
        except Exception as exc:
            await asyncio.to_thread(engine.shutdown)
            await _reap(set(processes))
            raise EngineError(_reason(exc)) from exc
        await asyncio.to_thread(_log_cache, spec.model_id, cache, cached)
        return built

    def _engine_cache(self, spec: EngineSpec) -> Path:
        """The model's own compilation and kernel caches (per source, as the weights are)."""
        source = spec.source or "default"
        return self._cache_dir / "engines" / source / spec.model_id.replace("/", "--")


def sleep_support() -> str | None:
    """Why vLLM here cannot sleep: its sleep mode is CUDA's (and ROCm's), not the CPU build's."""
    if _cpu_build():
        return "vLLM's CPU build has no sleep mode (it needs GPUs)"
    return None


@functools.cache
def _cpu_build() -> bool:
    """Whether the engine here is vLLM's CPU build (from its metadata: no import)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _processes(pids: Iterable[int | None]) -> set[psutil.Process]:
    """The processes of these pids that exist (a pid is ``None`` before its process starts)."""
    found = set()
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                found.add(psutil.Process(pid))
    return found


def _log_cache(model: str, cache: Path, before: tuple[int, int]) -> None:
    """Say what the engine found in its caches, and what it added."""
    files, size = _cache_files(cache)
    log.info(
        "engine caches",
        extra={
            "model": model,
            "path": str(cache),
            "reused_files": before[0],
            "reused_bytes": before[1],
            "new_files": max(files - before[0], 0),
            "new_bytes": max(size - before[1], 0),
        },
    )


async def _reap(processes: set[psutil.Process] | frozenset[psutil.Process]) -> None:
    """Wait for processes to exit; kill what is still there after the grace period."""
    if not processes:
        return
    _, alive = await asyncio.to_thread(psutil.wait_procs, list(processes), _SHUTDOWN_GRACE_S)
    for process in alive:
        log.warning("engine process outlived shutdown; killing it", extra={"pid": process.pid})
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    if alive:
        await asyncio.to_thread(psutil.wait_procs, alive, 5.0)


async def _build(
    lib: _Vllm,
    engine: Any,
    spec: EngineSpec,
    serving: Mapping[str, Any],
    recorder: _StatsRecorder,
    processes: frozenset[psutil.Process],
    rpc_dir: Path,
) -> VllmEngine:
    chat_template = serving.get("chat_template")
    models = lib.OpenAIServingModels(
        engine_client=engine,
        base_model_paths=[lib.BaseModelPath(name=spec.model_id, model_path=str(spec.path))],
        lora_modules=None,
    )
    await models.init_static_loras()
    # Building the layers loads the tokenizer and renders templates: seconds of CPU,
    # off the event loop so the management API keeps answering meanwhile.
    parsers: tuple[str | None, str | None] = (None, None)
    late_system: bool | None = None
    if spec.task == "embed":
        tasks = tuple(await engine.get_supported_tasks())
        layers = await asyncio.to_thread(_pooling_layers, lib, engine, models, chat_template, tasks)
    else:
        layers, parsers = await _generating_layers(
            lib, engine, models, spec.model_id, serving, chat_template
        )
        late_system = await _takes_late_system(lib, engine, layers.tokenization, spec.model_id)
    log.info(
        "engine ready",
        extra={
            "model": spec.model_id,
            "task": spec.task,
            "devices": list(spec.devices) or "cpu",
            "max_model_len": engine.model_config.max_model_len,
            "tool_call_parser": parsers[0],
            "reasoning_parser": parsers[1],
            "late_system_messages": None if late_system is None else _LATE[late_system],
            "pids": sorted(p.pid for p in processes),
        },
    )
    shape = _ChatShape(spec.model_id, parsers[0] is not None, bool(late_system))
    return VllmEngine(lib, engine, layers, recorder, processes, rpc_dir, shape)


_LATE = {True: "kept", False: "folded"}
"""What the engine-ready line says of a model's late system messages."""


async def _generating_layers(
    lib: _Vllm,
    engine: Any,
    models: Any,
    model_id: str,
    serving: Mapping[str, Any],
    chat_template: str | None,
) -> tuple[_Layers, tuple[str | None, str | None]]:
    """The layers of a generating engine, and the tool-call and reasoning parsers they use."""
    traits = _traits(engine, chat_template)
    default_tools, default_reasoning = default_parsers(
        traits, lib.ToolParserManager.list_registered()
    )
    tool_parser = serving.get("tool_call_parser", default_tools) or None
    reasoning_parser = serving.get("reasoning_parser", default_reasoning) or None
    try:
        layers = await asyncio.to_thread(
            _serving_layers, lib, engine, models, chat_template, tool_parser, reasoning_parser
        )
    except Exception as exc:
        if "tool_call_parser" in serving and "reasoning_parser" in serving:
            raise
        # A family default that this model's tokenizer does not fit (a Llama
        # without Llama 3's tool tokens, say): serve without the defaults.
        log.warning(
            "default parsers do not fit this model; serving without them",
            extra={"model": model_id, "error": _reason(exc)},
        )
        tool_parser = serving.get("tool_call_parser") or None
        reasoning_parser = serving.get("reasoning_parser") or None
        layers = await asyncio.to_thread(
            _serving_layers, lib, engine, models, chat_template, tool_parser, reasoning_parser
        )
    return layers, (tool_parser, reasoning_parser)


def _traits(engine: Any, chat_template: str | None) -> ModelTraits:
    """What the parser defaults are chosen from: the model's config and chat template text."""
    config = engine.model_config.hf_config
    template = chat_template
    if template is None:
        tokenizer = getattr(engine.renderer, "tokenizer", None)
        found = getattr(tokenizer, "chat_template", None)
        if isinstance(found, dict):
            found = "\n".join(str(text) for text in found.values())
        template = found if isinstance(found, str) else None
    return ModelTraits(
        architectures=tuple(getattr(config, "architectures", None) or ()),
        model_type=str(getattr(config, "model_type", "") or ""),
        chat_template=template,
    )


async def _takes_late_system(lib: _Vllm, engine: Any, tokenization: Any, model_id: str) -> bool:
    """Whether the model's chat template renders a system message after the first turn."""
    rendered: list[str | None] = []
    for probe in LATE_SYSTEM_PROBES:
        request = lib.TokenizeChatRequest(
            model=model_id, messages=list(probe), add_generation_prompt=True
        )
        text: str | None = None
        try:
            result = await tokenization.create_tokenize(request, None)
            if not isinstance(result, lib.ErrorResponse):
                text = str(engine.renderer.get_tokenizer().decode(result.tokens))
        except Exception:  # a template that raises refuses, whatever it raises
            text = None
        rendered.append(text)
    return takes_late_system(rendered)


@dataclasses.dataclass(frozen=True, slots=True)
class _Layers:
    """VLLM's serving objects over one engine; ``None`` where its task has no such layer."""

    task: str
    tokenization: Any
    chat: Any = None
    completion: Any = None
    responses: Any = None
    embedding: Any = None
    scores: Any = None


def _renderer(
    lib: _Vllm,
    engine: Any,
    chat_template: str | None,
    tool_parser: str | None = None,
    reasoning_parser: str | None = None,
) -> Any:
    renderer = lib.OnlineRenderer(
        model_config=engine.model_config,
        renderer=engine.renderer,
        request_logger=None,
        chat_template=chat_template,
        chat_template_content_format="auto",
        enable_auto_tools=tool_parser is not None,
        tool_parser=tool_parser,
        reasoning_parser=reasoning_parser,
        default_chat_template_kwargs=None,
    )
    renderer.warmup()
    return renderer


def _tokenization(lib: _Vllm, models: Any, renderer: Any, chat_template: str | None) -> Any:
    return lib.ServingTokenization(
        models,
        renderer,
        chat_template=chat_template,
        chat_template_content_format="auto",
        request_logger=None,
    )


def _serving_layers(
    lib: _Vllm,
    engine: Any,
    models: Any,
    chat_template: str | None,
    tool_parser: str | None,
    reasoning_parser: str | None,
) -> _Layers:
    """VLLM's chat, completion, responses and tokenization layers, as its API server builds them."""
    renderer = _renderer(lib, engine, chat_template, tool_parser, reasoning_parser)
    chat = lib.OpenAIServingChat(
        engine,
        models,
        "assistant",
        online_renderer=renderer,
        request_logger=None,
        chat_template=chat_template,
        chat_template_content_format="auto",
        enable_auto_tools=tool_parser is not None,
        tool_parser=tool_parser,
        reasoning_parser=reasoning_parser or "",
        enable_prompt_tokens_details=True,
    )
    completion = lib.OpenAIServingCompletion(
        engine,
        models,
        online_renderer=renderer,
        request_logger=None,
        enable_prompt_tokens_details=True,
    )
    responses = lib.OpenAIServingResponses(
        engine,
        models,
        renderer,
        request_logger=None,
        chat_template=chat_template,
        chat_template_content_format="auto",
        enable_auto_tools=tool_parser is not None,
        tool_parser=tool_parser,
        reasoning_parser=reasoning_parser or "",
        enable_prompt_tokens_details=True,
    )
    # Responses are never kept (docs/gateway.md): vLLM's store lives in this
    # engine's memory, grows without bound, and goes with the engine. Whatever
    # VLLM_ENABLE_RESPONSES_API_STORE says, `store` is served as false.
    responses.enable_store = False
    tokenization = _tokenization(lib, models, renderer, chat_template)
    return _Layers("generate", tokenization, chat, completion, responses)


def _pooling_layers(
    lib: _Vllm, engine: Any, models: Any, chat_template: str | None, tasks: tuple[str, ...]
) -> _Layers:
    """VLLM's embedding, scoring (rerank, score) and tokenization layers over a pooling engine."""
    config = lib.ChatTemplateConfig(chat_template=chat_template)
    embedding = lib.ServingEmbedding(
        engine, models, request_logger=None, chat_template_config=config
    )
    scores = lib.ServingScores(
        engine, models, supported_tasks=tasks, request_logger=None, chat_template_config=config
    )
    tokenization = _tokenization(lib, models, _renderer(lib, engine, chat_template), chat_template)
    return _Layers("embed", tokenization, embedding=embedding, scores=scores)


@dataclasses.dataclass(frozen=True, slots=True)
class _ChatShape:
    """What a model's chat requests are fitted to (see :mod:`neuron.chat_rules`)."""

    model_id: str
    tool_calls: bool
    """A tool-call parser is on: automatic tool choice works."""
    late_system: bool
    """The chat template takes a system message after the first turn."""


class VllmEngine:
    """One running ``AsyncLLM`` and the OpenAI serving objects over it."""

    def __init__(
        self,
        lib: _Vllm,
        engine: Any,
        layers: _Layers,
        recorder: _StatsRecorder,
        processes: frozenset[psutil.Process],
        rpc_dir: Path,
        shape: _ChatShape,
    ) -> None:
        self._lib = lib
        self._engine = engine
        self._layers = layers
        self._recorder = recorder
        self._processes = processes
        self._rpc_dir = rpc_dir
        self._shape = shape
        self._said_tools_off = False

    @property
    def max_model_len(self) -> int:
        """The context length vLLM settled on."""
        return int(self._engine.model_config.max_model_len)

    @property
    def max_num_seqs(self) -> int:
        """The batch limit vLLM settled on (``max_num_seqs``: 128 here on the CPU, more on GPUs)."""
        return int(self._engine.vllm_config.scheduler_config.max_num_seqs)

    @property
    def pids(self) -> frozenset[int]:
        """EngineCore and its workers."""
        return frozenset(p.pid for p in self._processes)

    @property
    def dead(self) -> bool:
        """Whether the engine's core has died (vLLM then refuses every request)."""
        return bool(self._engine.errored)

    async def chat(self, body: bytes) -> Reply:
        """Validate with vLLM's own request model, fit it to the model, serve with its chat layer.

        See :mod:`neuron.chat_rules` for what is fitted: late system messages,
        tools without a parser, max_tokens, and a prompt too long, counted.
        """
        chat = self._layers.chat
        request = self._request(body, self._lib.ChatCompletionRequest, chat)
        if isinstance(request, JsonReply):
            return request
        if not self._shape.late_system:
            request.messages = fold_system_messages(request.messages)
        if request.tools and not self._shape.tool_calls:
            request.tool_choice, refusal = tool_choice_without_parser(request.tool_choice)
            self._say_tools_off()
            if refusal is not None:
                return JsonReply(400, encode(error_envelope(refusal, code=400)))
        self._fit_output(request)
        result = await self._call(request, chat.create_chat_completion)
        if _overflowed(self._lib, result):
            tools = [tool.model_dump() for tool in request.tools] if request.tools else None
            counted = self._lib.TokenizeChatRequest(
                model=request.model,
                messages=request.messages,
                tools=tools,
                add_generation_prompt=request.add_generation_prompt,
                chat_template_kwargs=request.chat_template_kwargs,
            )
            return await self._refuse_overflow(result, counted)
        return _reply(self._lib, result)

    async def completion(self, body: bytes) -> Reply:
        """Validate with vLLM's own request model and serve with its completion layer."""
        completion = self._layers.completion
        request = self._request(body, self._lib.CompletionRequest, completion)
        if isinstance(request, JsonReply):
            return request
        self._fit_output(request)
        result = await self._call(request, completion.create_completion)
        if _overflowed(self._lib, result) and isinstance(request.prompt, str):
            counted = self._lib.TokenizeCompletionRequest(
                model=request.model, prompt=request.prompt
            )
            return await self._refuse_overflow(result, counted)
        return _reply(self._lib, result)

    async def responses(self, body: bytes) -> Reply:
        """Serve with vLLM's Responses layer; a stream is its named events, as vLLM frames them.

        ``max_output_tokens`` beyond the context is served with what the
        context leaves, as chat's ``max_tokens`` is.
        """
        responses = self._layers.responses
        request = self._request(body, self._lib.ResponsesRequest, responses)
        if isinstance(request, JsonReply):
            return request
        request.max_output_tokens = fit_output(request.max_output_tokens, self.max_model_len)
        return _responses_reply(self._lib, await self._call(request, responses.create_responses))

    async def embeddings(self, body: bytes) -> Reply:
        """Serve with vLLM's embedding layer (a pooling engine's)."""
        layers = self._layers
        return await self._pooled(body, self._lib.EmbeddingRequest, layers.embedding)

    async def rerank(self, body: bytes) -> Reply:
        """Serve with vLLM's scoring layer: documents by relevance to the query."""
        layers = self._layers
        return await self._pooled(body, self._lib.RerankRequest, layers.scores)

    async def score(self, body: bytes) -> Reply:
        """Serve with vLLM's scoring layer: the similarity of each text pair."""
        layers = self._layers
        return await self._pooled(body, self._lib.ScoreRequest, layers.scores)

    def _fit_output(self, request: Any) -> None:
        """max_tokens (or max_completion_tokens) at most the context: vLLM serves what is left."""
        request.max_tokens = fit_output(request.max_tokens, self.max_model_len)
        if getattr(request, "max_completion_tokens", None) is not None:
            request.max_completion_tokens = fit_output(
                request.max_completion_tokens, self.max_model_len
            )

    def _say_tools_off(self) -> None:
        """Log once per model that its tool calls are off, and what turns them on."""
        if self._said_tools_off:
            return
        self._said_tools_off = True
        log.warning(
            "tool calls are off for this model: requests with tools are answered in text",
            extra={"model": self._shape.model_id, "setting": TOOL_CALLS_SETTING},
        )

    def _request(self, body: bytes, request_type: Any, layer: Any) -> Any:
        """``body`` as vLLM's request model for ``layer``, or the 400 that says why not.

        ``layer`` is ``None`` where this engine's task has no such layer (the
        neuron's app refuses the wrong task first; this is the engine's own guard).
        """
        if layer is None:
            message = f"this engine's task is {self._layers.task!r}: it does not serve this route"
            return JsonReply(400, encode(error_envelope(message, code=400)))
        try:
            return self._lib.validate(request_type, body)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return JsonReply(400, encode(error_envelope(_validation_message(exc), code=400)))

    async def _pooled(self, body: bytes, request_type: Any, method: Any) -> Reply:
        """A pooling layer's request, validated, served and rendered."""
        request = self._request(body, request_type, method)
        if isinstance(request, JsonReply):
            return request
        return _pooled_reply(self._lib, await self._call(request, method))

    async def _call(self, request: Any, method: Any) -> Any:
        try:
            return await method(request, None)
        except Exception as exc:
            # What vLLM's own FastAPI exception handlers do with these.
            return self._lib.create_error_response(exc)

    async def _refuse_overflow(self, result: Any, counted: Any) -> Reply:
        """A prompt longer than the context, refused with its whole size (vLLM's stops early)."""
        try:
            answer = await self._layers.tokenization.create_tokenize(counted, None)
        except Exception:
            answer = None
        if answer is None or isinstance(answer, self._lib.ErrorResponse):
            return _reply(self._lib, result)
        if int(answer.count) <= self.max_model_len:
            return _reply(self._lib, result)
        return JsonReply(400, encode(context_length_error(int(answer.count), self.max_model_len)))

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """Count with vLLM's tokenization layer: the model's tokenizer and chat template."""
        if request.messages is not None:
            messages = request.messages
            if not self._shape.late_system:
                messages = fold_system_messages(messages)
            vllm_request = self._lib.TokenizeChatRequest(
                model=request.model,
                messages=messages,
                tools=request.tools,
                add_generation_prompt=request.add_generation_prompt,
                chat_template_kwargs=request.chat_template_kwargs,
            )
        else:
            vllm_request = self._lib.TokenizeCompletionRequest(
                model=request.model, prompt=request.prompt or ""
            )
        result = await self._layers.tokenization.create_tokenize(vllm_request, None)
        if isinstance(result, self._lib.ErrorResponse):
            raise ValueError(result.error.message)
        return TokenizeResponse(
            count=int(result.count),
            max_model_len=int(result.max_model_len),
            tokens=list(result.tokens),
        )

    def stats(self) -> EngineStats:
        """What vLLM last reported for this engine."""
        return self._recorder.stats

    async def sleep(self) -> None:
        """Sleep at vLLM's level 1: weights to host memory, KV cache dropped."""
        if not self._engine.model_config.enable_sleep_mode:
            raise EngineError("the engine was not started with sleep mode")
        await self._engine.sleep(level=1)

    async def wake_up(self) -> None:
        """Wake: weights back on the device, a KV cache again."""
        await self._engine.wake_up()

    async def shutdown(self) -> None:
        """Shut vLLM down, then make sure its processes are gone and its sockets removed."""
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._engine.shutdown)
        except Exception:
            log.warning("vLLM shutdown raised; reaping its processes", exc_info=True)
        await _reap(set(self._processes))
        shutil.rmtree(self._rpc_dir, ignore_errors=True)
        log.info("engine stopped", extra={"seconds": round(time.monotonic() - started, 1)})


def _overflowed(lib: _Vllm, result: Any) -> bool:
    """Whether vLLM refused the request because its prompt does not fit the context."""
    return isinstance(result, lib.ErrorResponse) and result.error.param in _OVERFLOW_PARAMS


def _validation_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return f"invalid request: {where}: {first.get('msg', 'invalid')}"
    return f"invalid request: {exc}"


def _reply(lib: _Vllm, result: Any) -> Reply:
    if isinstance(result, lib.ErrorResponse):
        status = result.error.code if isinstance(result.error.code, int) else 500
        return JsonReply(status, result.model_dump_json().encode())
    if hasattr(result, "__aiter__"):
        return StreamReply(_utf8(result))
    return JsonReply(200, result.model_dump_json().encode())


def _responses_reply(lib: _Vllm, result: Any) -> Reply:
    if isinstance(result, lib.ErrorResponse):
        return _reply(lib, result)
    if hasattr(result, "__aiter__"):
        return StreamReply(_named_events(result))
    return JsonReply(200, result.model_dump_json(by_alias=True).encode())


def _pooled_reply(lib: _Vllm, result: Any) -> Reply:
    """A pooling layer's answer (an HTTP response of its own) as a reply."""
    if isinstance(result, lib.ErrorResponse):
        return _reply(lib, result)
    body = getattr(result, "body", None)
    if not isinstance(body, bytes):
        # The binary encodings ("bytes", "bytes_only") stream raw tensors.
        message = "this encoding_format is not served: use float or base64"
        return JsonReply(400, encode(error_envelope(message, code=400)))
    return JsonReply(int(result.status_code), body)


async def _named_events(events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """Responses stream events as SSE: ``event: <type>`` and the event's JSON, as vLLM sends."""
    try:
        async for event in events:
            kind = getattr(event, "type", "unknown")
            data = event.model_dump_json(indent=None, by_alias=True)
            yield f"event: {kind}\ndata: {data}\n\n".encode()
    finally:
        # Closing vLLM's generator aborts the request in the engine.
        await events.aclose()  # type: ignore[attr-defined]


async def _utf8(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield line.encode()
    finally:
        # Closing vLLM's generator aborts the request in the engine.
        await lines.aclose()  # type: ignore[attr-defined]
