"""A scripted engine for tests: behaves like an engine at the protocol seam, runs no model.

Use it where a test is about the neuron's own logic (registry, routes, errors),
not about inference: it starts instantly or when a test says so, answers with
fixed text, streams real SSE framing, sleeps and wakes on demand (as vLLM's
sleep mode does on GPUs), and can be told to fail or die.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cortex_core import scripted
from cortex_core.neuron_api import TokenizeRequest, TokenizeResponse
from neuron.engine import (
    EngineError,
    EngineSpec,
    EngineStats,
    InvalidOptionError,
    JsonReply,
    PhaseCallback,
    Reply,
    StreamReply,
)

__all__ = ["ScriptedEngine", "ScriptedFactory"]

ENGINE_OPTIONS = frozenset(
    {
        "max_model_len",
        "dtype",
        "enforce_eager",
        "kv_cache_memory_bytes",
        "gpu_memory_utilization",
        "tensor_parallel_size",
        "kv_cache_dtype",
        "tool_call_parser",
        "reasoning_parser",
        "gguf_file",
        "engine_process",
        "runner",
        "convert",
        "max_num_seqs",
        "scheduling_policy",
    }
)


class ScriptedEngine:
    """Answers every request with ``reply`` (word by word when streaming)."""

    def __init__(
        self, spec: EngineSpec, reply: str, chunk_delay: float, wake_delay: float = 0.0
    ) -> None:
        self.spec = spec
        self.reply = reply
        self.chunk_delay = chunk_delay
        self.wake_delay = wake_delay
        self.dead = False
        self.stopped = False
        self.asleep = False
        self.sleeps = 0
        self.wakes = 0
        self.requests: list[dict[str, Any]] = []

    @property
    def max_model_len(self) -> int:
        """The planned context length."""
        return int(self.spec.options.get("max_model_len", 2048))

    @property
    def max_num_seqs(self) -> int:
        """The batch limit it was given (vLLM's default on the CPU otherwise)."""
        return int(self.spec.options.get("max_num_seqs", 128))

    @property
    def pids(self) -> frozenset[int]:
        """A scripted engine has no processes."""
        return frozenset()

    async def chat(self, body: bytes) -> Reply:
        """A chat completion (or its stream) saying ``reply``."""
        self._awake()
        request = json.loads(body)
        self.requests.append(request)
        if request.get("stream"):
            return StreamReply(self._stream(request, "chat.completion.chunk"))
        return JsonReply(200, json.dumps(self._completion(request, chat=True)).encode())

    async def completion(self, body: bytes) -> Reply:
        """A legacy completion (or its stream) saying ``reply``."""
        self._awake()
        request = json.loads(body)
        self.requests.append(request)
        if request.get("stream"):
            return StreamReply(self._stream(request, "text_completion"))
        return JsonReply(200, json.dumps(self._completion(request, chat=False)).encode())

    async def responses(self, body: bytes) -> Reply:
        """A Responses answer (or its stream of named events) saying ``reply``."""
        request = self._take(body)
        if request.get("stream"):
            return StreamReply(self._events(scripted.response_events(request, self.reply)))
        return JsonReply(200, json.dumps(scripted.response_object(request, self.reply)).encode())

    async def embeddings(self, body: bytes) -> Reply:
        """An embedding per input text, derived from the text's hash."""
        request = self._take(body)
        return JsonReply(200, json.dumps(scripted.embeddings_answer(request)).encode())

    async def rerank(self, body: bytes) -> Reply:
        """The documents ordered by their scripted similarity to the query."""
        request = self._take(body)
        return JsonReply(200, json.dumps(scripted.rerank_answer(request)).encode())

    async def score(self, body: bytes) -> Reply:
        """The scripted similarity of each document to the query."""
        request = self._take(body)
        return JsonReply(200, json.dumps(scripted.score_answer(request)).encode())

    def _take(self, body: bytes) -> dict[str, Any]:
        """The request, recorded in :attr:`requests`."""
        request: dict[str, Any] = json.loads(body)
        self.requests.append(request)
        return request

    async def _events(self, events: list[bytes]) -> AsyncIterator[bytes]:
        for event in events:
            yield event
            await asyncio.sleep(self.chunk_delay)

    def _completion(self, request: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
        words = len(self.reply.split())
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": self.reply}
        else:
            choice["text"] = self.reply
        return {
            "id": "scripted-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": request.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": words, "total_tokens": 3 + words},
        }

    async def _stream(self, request: Mapping[str, Any], kind: str) -> AsyncIterator[bytes]:
        for i, word in enumerate(self.reply.split(" ")):
            text = word if i == 0 else f" {word}"
            if kind == "text_completion":
                choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": None}
            else:
                choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            chunk = {
                "id": "scripted-1",
                "object": kind,
                "created": 0,
                "model": request.get("model"),
                "choices": [choice],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            await asyncio.sleep(self.chunk_delay)
        options = request.get("stream_options") or {}
        if options.get("include_usage"):
            words = len(self.reply.split())
            usage = {"prompt_tokens": 3, "completion_tokens": words, "total_tokens": 3 + words}
            final: dict[str, Any] = {
                "id": "scripted-1",
                "object": kind,
                "created": 0,
                "model": request.get("model"),
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(final)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """One token per whitespace-separated word of every message or the prompt."""
        texts = [str(m.get("content", "")) for m in request.messages or []] or [
            request.prompt or ""
        ]
        count = sum(len(t.split()) for t in texts)
        return TokenizeResponse(count=count, max_model_len=self.max_model_len)

    def stats(self) -> EngineStats:
        """Nothing is ever queued in a scripted engine."""
        return EngineStats()

    async def shutdown(self) -> None:
        """Mark the engine stopped."""
        self.stopped = True

    async def sleep(self) -> None:
        """Fall asleep, if started able to."""
        if not self.spec.sleep:
            raise EngineError("this engine was not started able to sleep")
        self.asleep = True
        self.sleeps += 1

    async def wake_up(self) -> None:
        """Wake after ``wake_delay`` seconds."""
        if self.wake_delay:
            await asyncio.sleep(self.wake_delay)
        self.asleep = False
        self.wakes += 1

    def _awake(self) -> None:
        # A real engine asleep has no weights on the device: serving then is a neuron bug.
        if self.asleep:
            raise EngineError("a request reached a sleeping engine")


@dataclass
class ScriptedFactory:
    """Starts :class:`ScriptedEngine`s; tests can hold starts, make them fail, count them."""

    reply: str = "The capital of France is Paris."
    chunk_delay: float = 0.0
    architectures: frozenset[str] = frozenset({"Qwen3ForCausalLM", "LlamaForCausalLM"})
    fail_with: str | None = None
    """If set, every start fails with this reason."""
    gate: asyncio.Event | None = None
    """If set, starts wait until it is set."""
    start_delay: float = 0.0
    """Seconds each start takes, like a real engine's."""
    started: list[ScriptedEngine] = field(default_factory=list)
    starts: int = 0
    gguf_refusal: str | None = None
    """If set, GGUF weights are refused with this reason (as vLLM's CPU build refuses them)."""
    sleep_refusal: str | None = None
    """If set, engines cannot sleep, for this reason (as vLLM's CPU build cannot)."""
    wake_delay: float = 0.0
    """Seconds each wake takes."""

    async def prepare(self) -> None:
        """Nothing to import."""

    def supported_architectures(self) -> frozenset[str] | None:
        """The configured architectures."""
        return self.architectures

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse options outside a small known set."""
        unknown = sorted(set(options) - ENGINE_OPTIONS)
        if unknown:
            raise InvalidOptionError(f"unknown engine options: {', '.join(unknown)}")

    def gguf_support(self) -> str | None:
        """The configured refusal, if any."""
        return self.gguf_refusal

    def sleep_support(self) -> str | None:
        """The configured refusal, if any."""
        return self.sleep_refusal

    async def start(
        self, spec: EngineSpec, on_phase: PhaseCallback | None = None
    ) -> ScriptedEngine:
        """Start (after the gate, if any) or fail as configured."""
        self.starts += 1
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise EngineError(self.fail_with)
        if on_phase is not None:
            on_phase("serving")
        engine = ScriptedEngine(spec, self.reply, self.chunk_delay, self.wake_delay)
        self.started.append(engine)
        return engine
