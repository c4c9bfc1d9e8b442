"""A scripted fleet: neurons in-process at the gateway's seam, running no model.

Use it where a test is about the gateway's own logic (routes, errors, routing,
cold loads, eviction, streams, metrics), not about inference or HTTP between
processes::

    fleet = ScriptedFleet(
        [ScriptedNode("beast", gpus=[24, 24]), ScriptedNode("benjy", gpus=[12])],
        models=[ScriptedModel("fake/small", memory_gib=4)],
    )
    api, metrics, state = create_apps(fleet.config(tmp_path, MODELS_TOML), neurons=fleet)

Each :class:`ScriptedNode` keeps its models' states, device memory and
requests in flight as a neuron would, answers the management API (loads take
``load_s``, fail as scripted, and are refused with ``insufficient_memory``
and the neuron's own figure when they do not fit; with ``sleep_memory_gib``,
an eviction's unload puts a GPU model to sleep and its next load wakes it),
and answers inference with a fixed reply, as JSON or as a real SSE stream. Tests queue other answers
(errors, broken or hanging streams) and faults (a node down, a model gone
behind the gateway's back, a state from a newer neuron).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from cortex_core import scripted
from cortex_core.config import GatewayConfig, load_gateway_config
from cortex_core.embeddings import EmbeddingRequest, RerankRequest, ScoreRequest
from cortex_core.ids import parse_model_id
from cortex_core.neuron_api import (
    ERROR_STATUS,
    Device,
    DevicesResponse,
    ErrorCode,
    Health,
    LoadRequest,
    ModelInfo,
    ModelsResponse,
    TokenizeRequest,
    TokenizeResponse,
    UnloadResponse,
    error_response,
)
from cortex_core.openai import ChatCompletionRequest, CompletionRequest
from cortex_core.responses_api import ResponsesRequest
from cortex_core.tasks import wrong_task
from cortex_core.units import GIB
from cortex_core.wire import WireError, decode
from cortex_gateway.neurons import NeuronCallError, UpstreamError

__all__ = [
    "ANSWER",
    "Hang",
    "JsonAnswer",
    "Refuse",
    "ScriptedAnswer",
    "ScriptedFleet",
    "ScriptedModel",
    "ScriptedNode",
    "ScriptedRequest",
    "StreamAnswer",
    "chat_chunk",
]

ANSWER = "The capital of France is Paris."
PROMPT_TOKENS = 3
"""What every scripted answer says its prompt was, in tokens."""
PORT = 13131


@dataclass(frozen=True, slots=True)
class ScriptedModel:
    """A model the scripted neurons can load: its size, load time, and a scripted failure."""

    id: str
    memory_gib: float = 1.0
    load_s: float = 0.0
    wake_s: float = 0.0
    """Seconds a wake from sleep takes."""
    fail: ErrorCode | None = None
    """Every load of this model fails with this neuron error code."""


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """A complete answer: status and body."""

    body: bytes
    status: int = 200
    break_read: bool = False
    """The connection breaks while the body is read."""
    relayable: bool = False
    """The neuron marks its error message safe to show the client."""
    delay_s: float = 0.0
    """Seconds the answer takes (a generation's time)."""
    until: asyncio.Event | None = None
    """The answer comes once this is set (a generation the test ends when it wants)."""


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    """A server-sent-event stream of ``events`` (raw bytes, each sent as one chunk)."""

    events: Sequence[bytes]
    delay_s: float = 0.0
    """Seconds before each event."""
    break_after: int | None = None
    """Break the connection after this many events."""
    hang_after: int | None = None
    """Send nothing more after this many events, until the request is closed."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """The connection is refused: nothing comes back."""


@dataclass(frozen=True, slots=True)
class Hang:
    """The request is accepted and never answered."""


ScriptedAnswer = JsonAnswer | StreamAnswer | Refuse | Hang


@dataclass(frozen=True, slots=True)
class ScriptedRequest:
    """An inference request a scripted node received."""

    path: str
    body: dict[str, Any]
    headers: Mapping[str, str]


def chat_chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One OpenAI chat completion chunk as an SSE event."""
    chunk = {
        "id": "scripted-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _usage(reply: str) -> dict[str, int]:
    words = len(reply.split())
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": words,
        "total_tokens": PROMPT_TOKENS + words,
    }


def _error_body(status: int, message: str) -> bytes:
    error = {"message": message, "type": "NotFoundError", "param": None, "code": status}
    return json.dumps({"error": error}).encode()


class ScriptedNode:
    """One neuron, in-process: devices, models, requests, and faults a test can set."""

    def __init__(
        self,
        name: str,
        gpus: Sequence[float] = (24.0,),
        *,
        host_memory_gib: float = 64.0,
        reply: str = ANSWER,
        chunk_delay_s: float = 0.0,
        answer_delay_s: float = 0.0,
        version: str = "0.0.0+scripted",
        token: str | None = None,
        sleep_memory_gib: float | None = None,
        max_num_seqs: int | None = None,
    ) -> None:
        """A node with GPUs of ``gpus`` GiB each (none: a CPU node with ``host_memory_gib``).

        With ``token``, every call but health needs it (401 otherwise);
        ``max_num_seqs``: the batch limit its engines report (none: they do not say). With
        ``sleep_memory_gib`` (a neuron's ``sleep_memory_gb``), models on its GPUs
        may sleep, all together holding at most that much host memory.
        """
        self.name = name
        self.token = token
        self.max_num_seqs = max_num_seqs
        self.slow_s = 0.0
        """Seconds each management call takes (past the fleet's call timeout: it times out)."""
        self.management_refused = False
        """Every management call is refused while inference still answers (a flapping listener)."""
        self.gpus = [int(g * GIB) for g in gpus]
        self.host_memory = int(host_memory_gib * GIB)
        self.reply = reply
        self.chunk_delay_s = chunk_delay_s
        self.answer_delay_s = answer_delay_s
        self.version = version
        self.up = True
        self.started_at = time.time()
        self.models: dict[str, ModelInfo] = {}
        self.answers: deque[ScriptedAnswer] = deque()
        """Answers for the next inference requests, in order; then the default reply."""
        self.loads = 0
        """Loads that succeeded (each one an engine start on a real neuron)."""
        self.wakes = 0
        """Loads that woke a sleeping model (no engine start)."""
        self.sleep_memory = None if sleep_memory_gib is None else int(sleep_memory_gib * GIB)
        self.calls: list[str] = []
        """Management calls received, as ``"<call> <model>"`` (``"models"`` for polls; ``sleep``
        for an unload that asked for a sleep, whatever the node did)."""
        self.requests: list[ScriptedRequest] = []
        self.open_requests = 0
        """Inference requests not yet answered in full or closed."""
        self._memory: dict[str, list[int]] = {}

    @property
    def endpoint(self) -> str:
        """The management API's address, as ``cortex.toml`` names it."""
        return f"http://{self.name}.scripted:{PORT}"

    # --- faults ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop answering (as a killed process): every call and request is refused."""
        self.up = False

    def start(self) -> None:
        """Answer again, with the models it had (as a neuron whose network came back)."""
        self.up = True

    def restart(self) -> None:
        """A new process: nothing loaded, requests in flight dropped, a new ``started_at``."""
        self.models.clear()
        self._memory.clear()
        self.started_at = time.time() + 1e-3

    def forget(self, model_id: str) -> None:
        """Drop a model without telling anyone (an operator unloading it on the host)."""
        self.models.pop(model_id, None)
        self._memory.pop(model_id, None)

    def put(
        self, model_id: str, state: str, *, memory_gib: float = 1.0, task: str = "generate"
    ) -> None:
        """Hold ``model_id`` in ``state`` (any string: a newer neuron's states too).

        A ``sleeping`` model holds host memory, not device memory.
        """
        memory = int(memory_gib * GIB)
        asleep = state == "sleeping"
        if not asleep:
            self._memory[model_id] = [memory]
        self.models[model_id] = ModelInfo(
            id=model_id,
            state=state,
            devices=[0] if self.gpus else [],
            memory_bytes=memory,
            loaded_at=time.time(),
            last_used=time.time(),
            max_num_seqs=self.max_num_seqs,
            task=task,
            host_memory_bytes=memory if asleep else 0,
        )

    # --- what a neuron reports ---------------------------------------------------------

    def used(self) -> list[int]:
        """Memory in use on each GPU."""
        used = [0] * len(self.gpus)
        for model_id, shares in self._memory.items():
            info = self.models.get(model_id)
            for index, share in zip(info.devices if info else [], shares, strict=False):
                used[index] += share
        return used

    def devices(self) -> list[Device]:
        """The GPUs with their memory, as NVML would report them."""
        return [
            Device(
                index=i,
                name="Scripted GPU",
                uuid=f"GPU-{self.name}-{i}",
                memory_total=total,
                memory_used=used,
                memory_free=total - used,
            )
            for i, (total, used) in enumerate(zip(self.gpus, self.used(), strict=True))
        ]

    def ready(self, model_id: str) -> bool:
        """Whether ``model_id`` is ready here."""
        info = self.models.get(model_id)
        return info is not None and info.state == "ready"

    def check(self, token: str | None = None, *, open_route: bool = False) -> None:
        """Refuse the call if the node is down, or if it needs a token it was not given."""
        if not self.up or self.management_refused:
            raise NeuronCallError(f"ClientConnectorError: cannot connect to {self.endpoint}")
        if self.token is not None and not open_route and token != self.token:
            raise NeuronCallError("missing or invalid token", upstream_status=401)

    # --- loads -------------------------------------------------------------------------

    def placement(self, needed: int, tp: int) -> list[int] | None:
        """The GPUs a load of ``needed`` bytes over ``tp`` GPUs would use, if it fits."""
        share = -(-needed // tp)
        free = [total - used for total, used in zip(self.gpus, self.used(), strict=True)]
        order = sorted(range(len(free)), key=lambda i: -free[i])[:tp]
        if len(order) < tp or any(free[i] < share for i in order):
            return None
        return sorted(order)

    async def load(
        self, model: ScriptedModel, options: Mapping[str, Any], task: str = "generate"
    ) -> ModelInfo:
        """Preflight, then start (taking ``load_s``) for ``task``; fail as ``model`` says.

        A sleeping model wakes instead (taking ``wake_s``), on its own GPUs.
        """
        asleep = self.models.get(model.id)
        if asleep is not None and asleep.state == "sleeping":
            return await self._wake(model, asleep)
        needed = int(model.memory_gib * GIB)
        tp = options.get("tensor_parallel_size", 1)
        tp = tp if isinstance(tp, int) and tp > 0 else 1
        if self.gpus:
            devices = self.placement(needed, tp)
            if devices is None:
                raise _neuron_error(
                    "insufficient_memory",
                    f"{model.id} does not fit on {self.name}",
                    {"needed_bytes": needed, "devices": []},
                )
            shares = [needed // tp] * tp
        else:
            held = sum(sum(s) for s in self._memory.values())
            if held + needed > self.host_memory:
                raise _neuron_error(
                    "insufficient_memory",
                    f"{model.id} does not fit in {self.name}'s memory",
                    {"needed_bytes": needed, "devices": []},
                )
            devices, shares = [], [needed]
        info = ModelInfo(
            id=model.id,
            state="loading",
            devices=devices,
            memory_bytes=needed,
            phase="starting",
            task=task,
        )
        self.models[model.id] = info
        self._memory[model.id] = shares
        if model.load_s:
            await asyncio.sleep(model.load_s)
        if model.fail is not None:
            self._memory.pop(model.id, None)
            self.models[model.id] = ModelInfo(
                id=model.id,
                state="failed",
                error=f"scripted failure: {model.fail}",
                task=task,
            )
            raise _neuron_error(model.fail, f"scripted failure: {model.fail}")
        now = time.time()
        ready = ModelInfo(
            id=model.id,
            state="ready",
            devices=devices,
            memory_bytes=needed,
            loaded_at=now,
            last_used=now,
            max_model_len=2048,
            max_num_seqs=self.max_num_seqs,
            task=task,
        )
        self.models[model.id] = ready
        self.loads += 1
        return ready

    def unload(self, model_id: str, *, sleep: bool = False) -> UnloadResponse:
        """Give the model's memory back; with ``sleep``, put it to sleep where it may."""
        info = self.models.get(model_id)
        if info is None:
            raise _neuron_error("not_loaded", f"{model_id} is not loaded")
        self._memory.pop(model_id, None)
        if sleep and info.state == "ready" and self._room_to_sleep(info.memory_bytes):
            info.state, info.host_memory_bytes = "sleeping", info.memory_bytes
            return UnloadResponse(
                id=model_id,
                state="sleeping",
                freed_bytes=info.memory_bytes,
                host_memory_bytes=info.host_memory_bytes,
            )
        del self.models[model_id]
        return UnloadResponse(id=model_id, freed_bytes=info.memory_bytes)

    def _room_to_sleep(self, host_bytes: int) -> bool:
        """Whether a model holding ``host_bytes`` may sleep: least recently used sleepers go."""
        if self.sleep_memory is None or not self.gpus or host_bytes > self.sleep_memory:
            return False
        sleepers = sorted(
            (m for m in self.models.values() if m.state == "sleeping"),
            key=lambda m: m.last_used or 0.0,
        )
        while sum(m.host_memory_bytes for m in sleepers) + host_bytes > self.sleep_memory:
            del self.models[sleepers.pop(0).id]
        return True

    async def _wake(self, model: ScriptedModel, info: ModelInfo) -> ModelInfo:
        """Take the sleeper's device memory back on its own GPUs; ready after ``wake_s``."""
        share = info.memory_bytes // max(len(info.devices), 1)
        used = self.used()
        if any(self.gpus[i] - used[i] < share for i in info.devices):
            details = {"needed_bytes": info.memory_bytes, "devices": []}
            message = f"{model.id} cannot wake on {self.name}: its GPUs are full"
            raise _neuron_error("insufficient_memory", message, details)
        self._memory[model.id] = [share] * len(info.devices)
        info.state, info.phase = "loading", "waking"
        if model.wake_s:
            await asyncio.sleep(model.wake_s)
        info.state, info.phase, info.host_memory_bytes = "ready", None, 0
        info.phase_seconds, info.last_used = {"waking": model.wake_s}, time.time()
        self.wakes += 1
        return info

    # --- inference ---------------------------------------------------------------------

    def touch(self, model_id: str, delta: int) -> None:
        """Count a request in flight (``delta`` ±1) and mark the model used now."""
        info = self.models.get(model_id)
        if info is not None:
            info.in_flight = max(info.in_flight + delta, 0)
            info.last_used = time.time()

    def answer(self, path: str, request: dict[str, Any], body: bytes = b"") -> ScriptedAnswer:
        """The next queued answer, else the default reply to ``request``.

        A body that is no valid request of its route is refused (400,
        relayable), as vLLM's own validation does; so is a route that is not
        for the model's task, as a neuron refuses it.
        """
        if self.answers:
            return self.answers.popleft()
        model = str(request.get("model"))
        info = self.models.get(model)
        if info is None or info.state != "ready":
            return JsonAnswer(_error_body(404, f"The model `{model}` does not exist."), 404)
        if (wrong := wrong_task(model, info.task, path)) is not None:
            return JsonAnswer(_error_body(400, wrong), 400, relayable=True)
        route = "/" + path.split("/v1/", 1)[-1]
        wire, reply = _ROUTES.get(route, _ROUTES["/completions"])
        try:
            decode(body or json.dumps(request), wire)
        except WireError as exc:
            return JsonAnswer(_error_body(400, exc.message), 400, relayable=True)
        return reply(self, model, request, route)

    def _generated(self, model: str, request: dict[str, Any], route: str) -> ScriptedAnswer:
        chat = route == "/chat/completions"
        if request.get("stream"):
            return StreamAnswer(self._events(model, request, chat), delay_s=self.chunk_delay_s)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": self.reply}
        else:
            choice["text"] = self.reply
        completion = {
            "id": "scripted-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": _usage(self.reply),
        }
        return JsonAnswer(json.dumps(completion).encode(), delay_s=self.answer_delay_s)

    def _responses(self, model: str, request: dict[str, Any], route: str) -> ScriptedAnswer:
        if request.get("stream"):
            events = scripted.response_events(request, self.reply)
            return StreamAnswer(events, delay_s=self.chunk_delay_s)
        answer = scripted.response_object(request, self.reply)
        return JsonAnswer(json.dumps(answer).encode(), delay_s=self.answer_delay_s)

    def _pooled(self, model: str, request: dict[str, Any], route: str) -> ScriptedAnswer:
        answers = {
            "/embeddings": scripted.embeddings_answer,
            "/rerank": scripted.rerank_answer,
            "/score": scripted.score_answer,
        }
        return JsonAnswer(json.dumps(answers[route](request)).encode())

    def _events(self, model: str, request: dict[str, Any], chat: bool) -> list[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        events = []
        for i, word in enumerate(self.reply.split(" ")):
            text = word if i == 0 else f" {word}"
            if chat:
                events.append(chat_chunk(model, {"content": text}))
            else:
                chunk = {
                    "id": "scripted-1",
                    "object": kind,
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": None}],
                }
                events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        options = request.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            final = {
                "id": "scripted-1",
                "object": kind,
                "created": 0,
                "model": model,
                "choices": [],
                "usage": _usage(self.reply),
            }
            events.append(b"data: " + json.dumps(final).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events


_Reply = Callable[[ScriptedNode, str, dict[str, Any], str], ScriptedAnswer]
_ROUTES: dict[str, tuple[type[Any], _Reply]] = {
    "/chat/completions": (ChatCompletionRequest, ScriptedNode._generated),
    "/completions": (CompletionRequest, ScriptedNode._generated),
    "/responses": (ResponsesRequest, ScriptedNode._responses),
    "/embeddings": (EmbeddingRequest, ScriptedNode._pooled),
    "/rerank": (RerankRequest, ScriptedNode._pooled),
    "/score": (ScoreRequest, ScriptedNode._pooled),
}
"""Each OpenAI route: the request type its bodies must decode as, and its scripted answer."""


def _neuron_error(
    code: ErrorCode, message: str, details: dict[str, Any] | None = None
) -> NeuronCallError:
    return NeuronCallError(
        message, upstream_status=ERROR_STATUS[code], error=error_response(code, message, details)
    )


class ScriptedClient:
    """The management API of one scripted node (the gateway's ``NeuronApi``)."""

    def __init__(
        self, fleet: ScriptedFleet, node: ScriptedNode, endpoint: str, token: str | None
    ) -> None:
        self.fleet = fleet
        self.node = node
        self.name = node.name
        self.base_url = endpoint.rstrip("/")
        self.token = token

    async def _enter(self, *, open_route: bool = False) -> None:
        slow, limit = self.node.slow_s, self.fleet.call_timeout_s
        if slow:
            await asyncio.sleep(min(slow, limit))
            if slow > limit:
                raise NeuronCallError("TimeoutError")
        self.node.check(self.token, open_route=open_route)

    async def health(self) -> Health:
        """The node's name and version."""
        await self._enter(open_route=True)
        return Health(
            name=self.node.name, version=self.node.version, started_at=self.node.started_at
        )

    async def devices(self) -> DevicesResponse:
        """Its GPUs."""
        await self._enter()
        return DevicesResponse(devices=self.node.devices())

    async def models(self) -> ModelsResponse:
        """Every model it holds, in any state (as it was when asked: a slow answer is stale)."""
        self.node.calls.append("models")
        models = [msgspec.structs.replace(m) for m in self.node.models.values()]
        await self._enter()
        return ModelsResponse(models=models)

    async def load(self, request: LoadRequest, limit_s: float) -> ModelInfo:
        """Load a model the fleet knows; ``model_not_found`` for others."""
        await self._enter()
        concrete = parse_model_id(request.model).concrete
        self.node.calls.append(f"load {concrete}")
        if self.node.ready(concrete):
            return self.node.models[concrete]
        model = self.fleet.models.get(concrete)
        if model is None:
            raise _neuron_error("model_not_found", f"{concrete} is not in any source")
        try:
            load = self.node.load(model, request.options, request.task)
            return await asyncio.wait_for(load, limit_s)
        except TimeoutError:
            raise NeuronCallError("TimeoutError") from None

    async def unload(self, model_id: str, *, sleep: bool = False) -> UnloadResponse:
        """Unload a model, or with ``sleep`` put it to sleep where the node may."""
        await self._enter()
        self.node.calls.append(f"{'sleep' if sleep else 'unload'} {model_id}")
        return self.node.unload(model_id, sleep=sleep)

    async def endpoint(self, model_id: str) -> str:
        """Where the model's OpenAI API is: on loopback, as a neuron advertises it by default."""
        await self._enter()
        self.node.calls.append(f"endpoint {model_id}")
        if not self.node.ready(model_id):
            raise _neuron_error("not_loaded", f"{model_id} is not loaded")
        return f"http://localhost:{PORT}/v1"

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """One token per whitespace-separated word of every message or the prompt."""
        await self._enter()
        if not self.node.ready(request.model):
            raise _neuron_error("not_loaded", f"{request.model} is not loaded")
        texts = [str(m.get("content", "")) for m in request.messages or []] or [
            request.prompt or ""
        ]
        return TokenizeResponse(count=sum(len(t.split()) for t in texts), max_model_len=2048)


class ScriptedUpstream:
    """An inference answer from a scripted node (the gateway's ``Upstream``)."""

    def __init__(self, node: ScriptedNode, model: str, answer: JsonAnswer | StreamAnswer) -> None:
        self.node = node
        self.model = model
        self.answer = answer
        self.status = answer.status if isinstance(answer, JsonAnswer) else 200
        self.streaming = isinstance(answer, StreamAnswer)
        self.relayable = isinstance(answer, JsonAnswer) and answer.relayable
        self.closed = False
        self._dropped = asyncio.Event()
        node.open_requests += 1
        node.touch(model, +1)

    def _done(self) -> None:
        if not self.closed:
            self.closed = True
            self.node.open_requests -= 1
            self.node.touch(self.model, -1)

    async def read(self) -> bytes:
        """The JSON body (or the whole stream)."""
        try:
            if isinstance(self.answer, JsonAnswer):
                if self.answer.delay_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._dropped.wait(), self.answer.delay_s)
                if self.answer.until is not None:
                    dropped = asyncio.ensure_future(self._dropped.wait())
                    done = asyncio.ensure_future(self.answer.until.wait())
                    await asyncio.wait({dropped, done}, return_when=asyncio.FIRST_COMPLETED)
                    dropped.cancel()
                    done.cancel()
                if self.answer.break_read or self._dropped.is_set():
                    raise UpstreamError("ClientPayloadError: response payload is not completed")
                return self.answer.body
            return b"".join([chunk async for chunk in self.chunks()])
        finally:
            self._done()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The stream's events as scripted: delayed, broken or hanging where told.

        Closing the request while a read waits fails that read, as a dropped
        connection does.
        """
        answer = self.answer
        assert isinstance(answer, StreamAnswer)
        broken = UpstreamError("ClientPayloadError: response payload is not completed")
        try:
            for sent, event in enumerate(answer.events):
                if sent == answer.break_after or not self.node.up or self._dropped.is_set():
                    raise broken
                pause = None if sent == answer.hang_after else answer.delay_s
                if pause != 0:
                    try:
                        await asyncio.wait_for(self._dropped.wait(), pause)
                    except TimeoutError:
                        pass
                    else:
                        raise UpstreamError("ClientConnectionError: connection closed")
                yield event
        finally:
            self._done()

    def close(self) -> None:
        """Drop the request: a read waiting for more fails."""
        self._dropped.set()
        self._done()


class ScriptedFleet:
    """Scripted neurons behind the gateway's ``Neurons`` seam; pass it as ``neurons=``."""

    def __init__(self, nodes: Sequence[ScriptedNode], models: Sequence[ScriptedModel] = ()):
        """A fleet of ``nodes`` that can load ``models`` (others are ``model_not_found``)."""
        self.nodes = {node.name: node for node in nodes}
        self.models = {model.id: model for model in models}
        self.closed = False
        self.tokens: dict[str, str | None] = {}
        """The token the gateway gave each node's client."""
        self.call_timeout_s = 5.0
        """How long a management call may take before it fails (as the HTTP client's)."""

    def __call__(self, config: GatewayConfig) -> ScriptedFleet:
        """What ``create_apps`` calls when the gateway starts: this fleet."""
        self.closed = False
        return self

    def config(
        self,
        folder: Path,
        models_toml: str = "",
        *,
        gateway: str = "",
        eviction: str = "",
        scheduling: str = "",
        routing: str = "",
        tables: str = "",
    ) -> GatewayConfig:
        """Write ``cortex.toml`` (its ``[[neurons]]`` are this fleet) and ``models.toml``; load.

        ``tables``: more of ``cortex.toml`` after the neurons (``[[keys]]`` tables).
        """
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "models.toml").write_text(models_toml)
        neurons = "".join(
            f'[[neurons]]\nname = "{n.name}"\nendpoint = "{n.endpoint}"\n'
            + (f'token_env = "{self.token_env(n.name)}"\n' if n.token else "")
            for n in self.nodes.values()
        )
        path = folder / "cortex.toml"
        path.write_text(
            f'[gateway]\nlisten = "127.0.0.1:1"\nmetrics_listen = "127.0.0.1:2"\n{gateway}\n'
            f"[eviction]\n{eviction}\n[scheduling]\n{scheduling}\n[routing]\n{routing}\n{neurons}"
            f"{tables}"
        )
        return load_gateway_config(path)

    @staticmethod
    def token_env(name: str) -> str:
        """The variable :meth:`config` names for a node with a token (``CORTEX_TOKEN_<NAME>``)."""
        return "CORTEX_TOKEN_" + "".join(c if c.isalnum() else "_" for c in name.upper())

    def environ(self) -> dict[str, str]:
        """An environment holding every node's token under :meth:`token_env`."""
        return {self.token_env(n.name): n.token for n in self.nodes.values() if n.token}

    def client(self, name: str, endpoint: str, token: str | None = None) -> ScriptedClient:
        """The management client of a scripted node."""
        self.tokens[name] = token
        return ScriptedClient(self, self.nodes[name], endpoint, token)

    async def open(
        self, node_name: str, url: str, body: bytes, headers: Mapping[str, str]
    ) -> ScriptedUpstream:
        """Send an inference request to the node ``url`` names (which must be ``node_name``)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        node = self.nodes.get(host.removesuffix(".scripted"))
        assert node is None or node.name == node_name, f"{url} is not on {node_name}"
        if node is None or not node.up:
            raise UpstreamError(f"ClientConnectorError: cannot connect to {host}:{parts.port}")
        if node.token is not None and self.tokens.get(node_name) != node.token:
            return ScriptedUpstream(node, "", JsonAnswer(_error_body(401, "invalid token"), 401))
        request = json.loads(body)
        node.requests.append(ScriptedRequest(parts.path, request, dict(headers)))
        answer = node.answer(parts.path, request, body)
        if isinstance(answer, Refuse):
            raise UpstreamError(f"ClientConnectorError: cannot connect to {host}:{parts.port}")
        if isinstance(answer, Hang):
            await asyncio.Event().wait()
            raise AssertionError("unreachable")
        return ScriptedUpstream(node, str(request.get("model")), answer)

    async def aclose(self) -> None:
        """Nothing to give back."""
        self.closed = True
