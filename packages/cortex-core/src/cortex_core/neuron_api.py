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
    "CONTEXT_LENGTH_EXCEEDED",
    "ERROR_STATUS",
    "LOAD_PHASES",
    "MODEL_STATES",
    "RELAYABLE_HEADER",
    "ContextLengthError",
    "ContextLengthErrorEnvelope",
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
    "context_length_error",
    "error_response",
]

ModelState = Literal["loading", "ready", "unloading", "failed", "sleeping"]
MODEL_STATES: Final[frozenset[str]] = frozenset(get_args(ModelState))
"""The states this version knows; a newer neuron may report others."""
LOAD_PHASES: Final = ("preflight", "fetching", "starting", "serving", "waking")
"""A load's phases in order (``waking`` alone when a sleeping model wakes); a newer neuron may
report others."""


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
CONTEXT_LENGTH_EXCEEDED: Final = "context_length_exceeded"
"""The ``code`` of a neuron's 400 for a prompt longer than the model's context."""


class ContextLengthError(_Wire):
    """A prompt that does not fit the context: OpenAI's error fields and the figures.

    The neuron's ``/v1`` routes answer such a prompt with 400 and this as the
    envelope's ``error``; a gateway reads ``prompt_tokens`` and
    ``max_model_len`` to say it in each API's own words.
    """

    message: str
    prompt_tokens: int
    """The whole prompt, counted by the model's tokenizer and chat template."""
    max_model_len: int
    type: str = "invalid_request_error"
    param: str | None = "messages"
    code: str = CONTEXT_LENGTH_EXCEEDED


class ContextLengthErrorEnvelope(_Wire):
    """``{"error": ContextLengthError}``."""

    error: ContextLengthError


def context_length_error(prompt_tokens: int, max_model_len: int) -> ContextLengthErrorEnvelope:
    """The refusal of a prompt of ``prompt_tokens`` in a context of ``max_model_len``.

    In OpenAI's words; the figures ride along for the gateway to say it in Anthropic's.
    """
    return ContextLengthErrorEnvelope(
        error=ContextLengthError(
            message=(
                f"This model's maximum context length is {max_model_len} tokens. However, your"
                f" messages resulted in {prompt_tokens} tokens. Please reduce the length of"
                " the messages."
            ),
            prompt_tokens=prompt_tokens,
            max_model_len=max_model_len,
        )
    )


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
    """While ``loading``: one of :data:`LOAD_PHASES`."""
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Once ready: seconds each phase of the load (or the wake) that made it ready took."""
    host_memory_bytes: int = 0
    """While ``sleeping``: host memory its weights hold (``memory_bytes`` is what waking needs)."""
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
    """``POST /models/unload``; with ``sleep``, the model may sleep in host memory instead.

    A neuron that cannot put it to sleep (sleep not configured, a CPU engine, no
    room in ``sleep_memory_gb``), or an older one that ignores the field,
    unloads it: the answer's ``state`` says which happened.
    """

    model: str
    sleep: bool = False


class UnloadResponse(_Wire):
    """The answer once the model's device memory is given back: gone, or asleep."""

    id: str
    state: Literal["unloaded", "sleeping"] | str = "unloaded"
    freed_bytes: int = 0
    host_memory_bytes: int = 0
    """With ``state = "sleeping"``: host memory the sleeping model holds."""


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
    chat_template_kwargs: dict[str, Any] | None = None
    """Passed to the chat template as a chat request's are (``enable_thinking``, ...)."""


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
