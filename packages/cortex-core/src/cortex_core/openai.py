"""OpenAI API envelopes: chat completions, legacy completions, models and errors.

Wire types accept unknown fields (so newer clients and servers keep talking to
older ones) and give every optional field a default. Request types omit unset
fields when encoded, so a translated request carries only what was set.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from cortex_core.units import NonNegInt

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "ContentPart",
    "DeveloperMessage",
    "ErrorDetail",
    "ErrorEnvelope",
    "FilePart",
    "FunctionCall",
    "FunctionCallDelta",
    "FunctionDefinition",
    "FunctionMessage",
    "ImageUrl",
    "ImageUrlPart",
    "InputAudioPart",
    "ModelList",
    "ModelObject",
    "NamedToolChoice",
    "RefusalPart",
    "ResponseMessage",
    "StreamOptions",
    "SystemMessage",
    "TextPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "ToolMessage",
    "Usage",
    "UserMessage",
    "error_envelope",
]


class _Wire(Struct, kw_only=True, omit_defaults=True):
    """Base of request-side types: unset optional fields are left out when encoded."""


class _Out(Struct, kw_only=True):
    """Base of response-side types: every field is encoded, nulls included."""


# --- content parts -----------------------------------------------------------


class TextPart(_Wire, tag_field="type", tag="text"):
    text: str


class ImageUrl(_Wire):
    url: str
    detail: str | None = None


class ImageUrlPart(_Wire, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class InputAudio(_Wire):
    data: str
    format: str


class InputAudioPart(_Wire, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FileRef(_Wire):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Wire, tag_field="type", tag="file"):
    file: FileRef


class RefusalPart(_Wire, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = TextPart | ImageUrlPart | InputAudioPart | FilePart
AssistantPart = TextPart | RefusalPart

# --- tools -------------------------------------------------------------------


class FunctionDefinition(_Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Wire, tag_field="type", tag="function"):
    function: FunctionDefinition


class FunctionName(_Wire):
    name: str


class NamedToolChoice(_Wire, tag_field="type", tag="function"):
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(_Wire):
    name: str
    arguments: str
    """The arguments as a JSON text, exactly as the model wrote them."""


class ToolCall(_Wire, tag_field="type", tag="function"):
    id: str
    function: FunctionCall


# --- messages ----------------------------------------------------------------


class SystemMessage(_Wire, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_Wire, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Wire, tag_field="role", tag="user"):
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(_Wire, tag_field="role", tag="assistant"):
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    # Reasoning from an earlier turn: vLLM 0.32 names it `reasoning`, other
    # OpenAI-compatible servers `reasoning_content`.
    reasoning: str | None = None
    reasoning_content: str | None = None


class ToolMessage(_Wire, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Wire, tag_field="role", tag="function"):
    content: str | None
    name: str


ChatMessage = (
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage
)

# --- chat completion request ------------------------------------------------


class StreamOptions(_Wire):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatCompletionRequest(_Wire):
    """``POST /v1/chat/completions``; vLLM's sampling extensions are included."""

    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: NonNegInt | None = None
    max_completion_tokens: NonNegInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    # vLLM extensions, accepted by every neuron.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    chat_template_kwargs: dict[str, Any] | None = None


# --- chat completion response and stream ------------------------------------


class PromptTokensDetails(_Out):
    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionTokensDetails(_Out):
    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(_Out):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens the engine took from its prefix cache (0 if it did not say)."""
        details = self.prompt_tokens_details
        cached = details.cached_tokens if details is not None else None
        return min(cached or 0, self.prompt_tokens)


class ResponseMessage(_Out):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class Choice(_Out):
    index: int
    message: ResponseMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None
    stop_reason: int | str | None = None
    """vLLM's extension: the stop string or token id that ended the choice."""


class ChatCompletion(_Out):
    id: str
    created: int
    model: str
    choices: list[Choice]
    object: Literal["chat.completion"] | str = "chat.completion"
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None


class FunctionCallDelta(_Out):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Out):
    index: int
    id: str | None = None
    type: Literal["function"] | str | None = None
    function: FunctionCallDelta | None = None


class Delta(_Out):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None

    @property
    def thinking(self) -> str | None:
        """The reasoning text of this delta under either of its field names."""
        return self.reasoning if self.reasoning is not None else self.reasoning_content


class ChunkChoice(_Out):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(_Out):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: Literal["chat.completion.chunk"] | str = "chat.completion.chunk"
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None


# --- legacy completions ------------------------------------------------------


class CompletionRequest(_Wire):
    """``POST /v1/completions``; a prompt is text, texts, token ids or lists of them."""

    model: str
    prompt: str | list[str | int | list[int]]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: NonNegInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    best_of: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


class CompletionChoice(_Out):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None
    stop_reason: int | str | None = None


class Completion(_Out):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: Literal["text_completion"] | str = "text_completion"
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --- models ------------------------------------------------------------------


class ModelObject(_Out):
    id: str
    created: int = 0
    owned_by: str = "cortex"
    object: Literal["model"] | str = "model"


class ModelList(_Out):
    data: list[ModelObject]
    object: Literal["list"] | str = "list"


# --- errors ------------------------------------------------------------------


class ErrorDetail(_Out):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | int | None = None


class ErrorEnvelope(_Out):
    error: ErrorDetail


def error_envelope(
    message: str,
    type: str = "invalid_request_error",
    *,
    param: str | None = None,
    code: str | int | None = None,
) -> ErrorEnvelope:
    """An OpenAI error envelope (``{"error": {"message", "type", "param", "code"}}``)."""
    return ErrorEnvelope(error=ErrorDetail(message=message, type=type, param=param, code=code))
