"""What the neuron needs from an inference engine, independent of vLLM.

The registry and the HTTP app talk only to these protocols; ``vllm_engine``
implements them with real vLLM, and ``neuron.testing.scripted`` with a scripted
engine for unit tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cortex_core.neuron_api import TokenizeRequest, TokenizeResponse

__all__ = [
    "Engine",
    "EngineError",
    "EngineFactory",
    "EngineSpec",
    "EngineStats",
    "InvalidOptionError",
    "JsonReply",
    "PhaseCallback",
    "Reply",
    "StreamReply",
]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Everything an engine start needs: which model, from where, on what, how."""

    model_id: str
    """The concrete id the engine serves the model under."""
    path: Path
    """The local directory holding config, tokenizer and weights."""
    devices: tuple[int, ...]
    """GPU indices (NVML order) to pin the engine to; empty: the CPU engine."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Engine options: the neuron's ``[engine]`` with the load's own on top."""
    source: str = ""
    """The source the model came from: engines of one model from two sources share no cache."""
    sleep: bool = False
    """Start the engine able to sleep (:meth:`Engine.sleep`): the neuron may put it to sleep."""
    task: str = "generate"
    """``generate``: a generating engine; ``embed``: a pooling engine serving embeddings."""


PhaseCallback = Callable[[str], None]
"""Told the name of each phase of an engine start as it begins (``serving``, ...)."""


@dataclass(frozen=True, slots=True)
class JsonReply:
    """A complete answer: HTTP status and a JSON body."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A server-sent-event stream; closing the iterator aborts the request."""

    chunks: AsyncIterator[bytes]


Reply = JsonReply | StreamReply


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The engine's own view of its load, where it reports one."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    cached_prompt_tokens: int = 0
    """Prompt tokens taken from the prefix cache instead of computed (part of ``prompt_tokens``)."""


class EngineError(Exception):
    """An engine that failed to start or broke; ``message`` is safe to show operators."""


class InvalidOptionError(ValueError):
    """Engine options the engine does not know or cannot take."""


class Engine(Protocol):
    """A started engine serving one model through the OpenAI API."""

    @property
    def max_model_len(self) -> int:
        """The context length the engine was started with."""
        ...

    @property
    def max_num_seqs(self) -> int:
        """Its batch limit: how many requests it runs at once (the rest wait in its queue)."""
        ...

    @property
    def pids(self) -> frozenset[int]:
        """The engine's own processes, which must be gone after :meth:`shutdown`."""
        ...

    @property
    def dead(self) -> bool:
        """Whether the engine has died and can serve nothing more."""
        ...

    async def chat(self, body: bytes) -> Reply:
        """Serve an OpenAI chat completion body (``model`` already names this engine)."""
        ...

    async def completion(self, body: bytes) -> Reply:
        """Serve an OpenAI legacy completion body."""
        ...

    async def responses(self, body: bytes) -> Reply:
        """Serve an OpenAI Responses body (``POST /v1/responses``)."""
        ...

    async def embeddings(self, body: bytes) -> Reply:
        """Serve an OpenAI embeddings body (a pooling engine's)."""
        ...

    async def rerank(self, body: bytes) -> Reply:
        """Serve a rerank body: documents by relevance to a query (a pooling engine's)."""
        ...

    async def score(self, body: bytes) -> Reply:
        """Serve a score body: the similarity of text pairs (a pooling engine's)."""
        ...

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """Count tokens with the model's tokenizer and chat template."""
        ...

    def stats(self) -> EngineStats:
        """The latest statistics the engine reported."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine and give back its processes and memory."""
        ...

    async def sleep(self) -> None:
        """Free the device memory: weights to host memory, KV cache dropped (vLLM's level 1).

        Only for an engine started with ``EngineSpec.sleep``; raise
        :class:`EngineError` if it cannot.
        """
        ...

    async def wake_up(self) -> None:
        """Take the device memory back after :meth:`sleep`; then it serves again."""
        ...


class EngineFactory(Protocol):
    """Starts engines and answers what they support, without starting one."""

    async def prepare(self) -> None:
        """Do slow one-time set-up (imports) so the first load does not pay for it."""
        ...

    def supported_architectures(self) -> frozenset[str] | None:
        """Architectures the engine can run, or ``None`` if it cannot tell."""
        ...

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidOptionError` naming any option the engine does not take."""
        ...

    def gguf_support(self) -> str | None:
        """Why this engine cannot load GGUF weights, or ``None`` if it can."""
        ...

    def sleep_support(self) -> str | None:
        """Why engines here cannot sleep, or ``None`` if they can (on GPUs)."""
        ...

    async def start(self, spec: EngineSpec, on_phase: PhaseCallback | None = None) -> Engine:
        """Start an engine for ``spec``; raise :class:`EngineError` with the engine's reason.

        ``on_phase`` hears the phases after ``starting`` (``serving``: the OpenAI layers).
        """
        ...
