"""The neuron's management API on the wire, as docs/neuron.md ("HTTP API") shows it.

Both the neuron (which encodes these) and the gateway (which decodes them)
use these types. Every field past the identifying ones has a default and
unknown fields are ignored, so a gateway and a neuron of different versions
keep talking.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from msgspec import Struct, field

__all__ = [
    "ERROR_STATUS",
    "MODEL_STATES",
    "RELAYABLE_HEADER",
    "Device",
    "DeviceFree",
    "DevicesResponse",
    "EndpointResponse",
    "ErrorBody",
    "ErrorCode",
    "ErrorResponse",
    "Health",
    "InsufficientMemoryDetails",
    "LoadRequest",
    "ModelInfo",
    "ModelState",
    "ModelsResponse",
    "TokenizeRequest",
    "TokenizeResponse",
    "UnloadRequest",
    "UnloadResponse",
    "error_response",
]

ModelState = Literal["loading", "ready", "unloading", "failed"]
MODEL_STATES: Final[frozenset[str]] = frozenset(get_args(ModelState))
"""The states this version knows; a newer neuron may report others."""


class _Wire(Struct, kw_only=True):
    """Base of the neuron API's types: all fields encoded, unknown ones ignored."""


class Health(_Wire):
    """``GET /health``."""

    status: str = "ok"
    name: str = ""
    version: str = ""
    started_at: float | None = None
    """When the neuron started (Unix seconds): a change means it restarted."""


RELAYABLE_HEADER: Final = "x-cortex-relayable"
"""On a neuron's 4xx inference answer: its error ``message`` is safe to show the client."""


class Device(_Wire):
    """One GPU as NVML reports it; memory in bytes, utilization in percent."""

    index: int
    name: str = ""
    uuid: str = ""
    memory_total: int = 0
    memory_used: int = 0
    memory_free: int = 0
    utilization: float = 0.0


class DevicesResponse(_Wire):
    """``GET /devices``: an empty list on a host without GPUs."""

    devices: list[Device] = field(default_factory=list)


class ModelInfo(_Wire):
    """One model a neuron holds, in any state; times are Unix seconds."""

    id: str
    state: ModelState | str
    """One of :data:`ModelState`; a newer neuron's state decodes as a plain string."""
    source: str | None = None
    devices: list[int] = field(default_factory=list)
    memory_bytes: int = 0
    loaded_at: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    """The engine's batch limit: how many requests it runs at once (none: it does not say)."""
    error: str | None = None
    """Why a ``failed`` load failed."""
    phase: str | None = None
    """While ``loading``: ``preflight``, ``fetching`` or ``starting``."""
    task: str = "generate"
    """What the engine serves: ``generate`` or ``embed`` (a newer neuron's task: a string)."""


class ModelsResponse(_Wire):
    """``GET /models``."""

    models: list[ModelInfo] = field(default_factory=list)


class LoadRequest(_Wire):
    """``POST /models/load``: a qualified or concrete id, optional devices and engine options."""

    model: str
    devices: list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    wait: bool = True
    task: str = "generate"
    """``generate`` (a generating engine) or ``embed`` (a pooling engine serving embeddings)."""


class UnloadRequest(_Wire):
    """``POST /models/unload``."""

    model: str


class UnloadResponse(_Wire):
    """The answer to an unload once the engine is gone and its memory given back."""

    id: str
    state: Literal["unloaded"] | str = "unloaded"
    freed_bytes: int = 0


class EndpointResponse(_Wire):
    """``GET /models/{id}/endpoint``: the OpenAI base URL serving the model."""

    url: str


class TokenizeRequest(_Wire):
    """``POST /tokenize``: chat ``messages`` (through the chat template) or a ``prompt``."""

    model: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True


class TokenizeResponse(_Wire):
    """The token count with the model's own tokenizer and chat template."""

    count: int
    max_model_len: int | None = None
    tokens: list[int] | None = None


# --- errors ------------------------------------------------------------------

ErrorCode = Literal[
    "invalid_model_id",
    "unknown_source",
    "model_not_found",
    "unsupported_model",
    "insufficient_memory",
    "load_failed",
    "source_unavailable",
    "busy",
    "not_loaded",
    "invalid_request",
    "invalid_option",
    "unauthorized",
    "internal_error",
]

ERROR_STATUS: Final[dict[str, int]] = {
    "invalid_model_id": 422,
    "unknown_source": 422,
    "model_not_found": 404,
    "unsupported_model": 422,
    "insufficient_memory": 409,
    "load_failed": 500,
    "source_unavailable": 502,
    "busy": 409,
    "not_loaded": 404,
    "invalid_request": 400,
    "invalid_option": 422,
    "unauthorized": 401,
    "internal_error": 500,
}
"""The HTTP status each error code is sent with."""


class DeviceFree(_Wire):
    index: int
    free_bytes: int


class InsufficientMemoryDetails(_Wire):
    """``details`` of an ``insufficient_memory`` error."""

    needed_bytes: int
    devices: list[DeviceFree] = field(default_factory=list)


class ErrorBody(_Wire):
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class ErrorResponse(_Wire):
    """``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody

    @property
    def status(self) -> int:
        """The HTTP status this error is sent with (500 for a code this version does not know)."""
        return ERROR_STATUS.get(self.error.code, 500)


def error_response(
    code: ErrorCode, message: str, details: dict[str, Any] | None = None
) -> ErrorResponse:
    """A neuron error with its code, a message for people and structured details."""
    return ErrorResponse(error=ErrorBody(code=code, message=message, details=details or {}))
