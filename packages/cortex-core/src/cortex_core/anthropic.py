"""Anthropic Messages API envelopes: requests, responses, stream events, errors.

Content blocks, image sources, tool choices, thinking settings, deltas and
stream events are unions tagged by their ``type``. Like every wire type here,
they accept unknown fields and default every optional one.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from cortex_core.units import PositiveInt

__all__ = [
    "AnyToolChoice",
    "AutoToolChoice",
    "Base64ImageSource",
    "CacheControl",
    "CitationsDelta",
    "ContentBlock",
    "ContentBlockDelta",
    "ContentBlockStart",
    "ContentBlockStop",
    "ContextEdit",
    "ContextManagement",
    "CountTokensRequest",
    "CountTokensResponse",
    "DocumentBlock",
    "ErrorBody",
    "ErrorEnvelope",
    "ErrorEvent",
    "ImageBlock",
    "InputJsonDelta",
    "Message",
    "MessageDelta",
    "MessageDeltaBody",
    "MessageDeltaUsage",
    "MessageParam",
    "MessageStart",
    "MessageStop",
    "MessagesRequest",
    "Metadata",
    "NoneToolChoice",
    "OutputConfig",
    "Ping",
    "RedactedThinkingBlock",
    "ResponseBlock",
    "SignatureDelta",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingAdaptive",
    "ThinkingBlock",
    "ThinkingDelta",
    "ThinkingDisabled",
    "ThinkingEnabled",
    "Tool",
    "ToolChoice",
    "ToolResultBlock",
    "ToolUseBlock",
    "UrlImageSource",
    "Usage",
    "error_envelope",
]

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]
ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
]


class _Wire(Struct, kw_only=True, omit_defaults=True):
    """Base of request-side types: unset optional fields are left out when encoded."""


class _Out(Struct, kw_only=True):
    """Base of response-side types: every field is encoded, nulls included."""


class CacheControl(_Wire):
    type: str = "ephemeral"
    ttl: str | None = None


# --- sources -----------------------------------------------------------------


class Base64ImageSource(_Wire, tag_field="type", tag="base64"):
    media_type: str
    data: str


class UrlImageSource(_Wire, tag_field="type", tag="url"):
    url: str


class FileImageSource(_Wire, tag_field="type", tag="file"):
    file_id: str


ImageSource = Base64ImageSource | UrlImageSource | FileImageSource

# --- content blocks ----------------------------------------------------------


class TextBlock(_Wire, tag_field="type", tag="text"):
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlock(_Wire, tag_field="type", tag="image"):
    source: ImageSource
    cache_control: CacheControl | None = None


class DocumentBlock(_Wire, tag_field="type", tag="document"):
    source: dict[str, Any]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(_Wire, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Wire, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Wire, tag_field="type", tag="thinking"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Wire, tag_field="type", tag="redacted_thinking"):
    data: str


ContentBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)
ResponseBlock = TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock


class MessageParam(_Wire):
    """A turn; ``system`` turns come from clients such as Claude Code, anywhere in the list."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


# --- tools, tool choice, thinking --------------------------------------------


class Tool(_Wire):
    """A tool the model may call; server tools carry a ``type`` and no schema.

    ``defer_loading``: the tool stays out of the prompt until a tool search finds it.
    """

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    cache_control: CacheControl | None = None
    defer_loading: bool | None = None


class AutoToolChoice(_Wire, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool | None = None


class AnyToolChoice(_Wire, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool | None = None


class NamedToolChoice(_Wire, tag_field="type", tag="tool"):
    name: str
    disable_parallel_tool_use: bool | None = None


class NoneToolChoice(_Wire, tag_field="type", tag="none"):
    pass


ToolChoice = AutoToolChoice | AnyToolChoice | NamedToolChoice | NoneToolChoice


class ThinkingEnabled(_Wire, tag_field="type", tag="enabled"):
    budget_tokens: PositiveInt
    display: str | None = None
    """``summarized`` (the default) or ``omitted``: thinking blocks come back without their text."""


class ThinkingDisabled(_Wire, tag_field="type", tag="disabled"):
    pass


class ThinkingAdaptive(_Wire, tag_field="type", tag="adaptive"):
    display: str | None = None
    """As :attr:`ThinkingEnabled.display`."""


Thinking = ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive


class Metadata(_Wire):
    user_id: str | None = None


class OutputConfig(_Wire):
    """``output_config``: ``effort`` is ``low``, ``medium``, ``high`` or ``max`` (newer: more)."""

    effort: str | None = None


class ContextEdit(_Wire):
    """One of ``context_management.edits``, by ``type`` (``clear_thinking_20251015``, ...).

    Not a tagged union: an edit type this version does not know still decodes.
    ``keep`` is ``"all"`` or ``{"type": "thinking_turns", "value": N}`` (or the
    like for other edits).
    """

    type: str
    keep: str | dict[str, Any] | None = None


class ContextManagement(_Wire):
    edits: list[ContextEdit] | None = None


# --- requests ----------------------------------------------------------------


class MessagesRequest(_Wire):
    """``POST /v1/messages``."""

    model: str
    max_tokens: PositiveInt
    messages: list[MessageParam]
    system: str | list[TextBlock] | None = None
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: Thinking | None = None
    service_tier: str | None = None
    output_config: OutputConfig | None = None
    context_management: ContextManagement | None = None


class CountTokensRequest(_Wire):
    """``POST /v1/messages/count_tokens``: a Messages request without generation settings."""

    model: str
    messages: list[MessageParam]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    context_management: ContextManagement | None = None


class CountTokensResponse(_Out):
    input_tokens: int


# --- responses ---------------------------------------------------------------


class Usage(_Out):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    service_tier: str | None = None


class Message(_Out, tag_field="type", tag="message"):
    id: str
    model: str
    content: list[ResponseBlock]
    role: Literal["assistant"] | str = "assistant"
    stop_reason: StopReason | str | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None


# --- stream events -----------------------------------------------------------


class TextDelta(_Out, tag_field="type", tag="text_delta"):
    text: str


class InputJsonDelta(_Out, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ThinkingDelta(_Out, tag_field="type", tag="thinking_delta"):
    thinking: str


class SignatureDelta(_Out, tag_field="type", tag="signature_delta"):
    signature: str


class CitationsDelta(_Out, tag_field="type", tag="citations_delta"):
    citation: dict[str, Any]


BlockDelta = TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta | CitationsDelta


class MessageStart(_Out, tag_field="type", tag="message_start"):
    message: Message


class ContentBlockStart(_Out, tag_field="type", tag="content_block_start"):
    index: int
    content_block: ResponseBlock


class ContentBlockDelta(_Out, tag_field="type", tag="content_block_delta"):
    index: int
    delta: BlockDelta


class ContentBlockStop(_Out, tag_field="type", tag="content_block_stop"):
    index: int


class MessageDeltaBody(_Out):
    stop_reason: StopReason | str | None = None
    stop_sequence: str | None = None


class MessageDeltaUsage(_Out):
    output_tokens: int = 0
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDelta(_Out, tag_field="type", tag="message_delta"):
    delta: MessageDeltaBody
    usage: MessageDeltaUsage | None = None


class MessageStop(_Out, tag_field="type", tag="message_stop"):
    pass


class Ping(_Out, tag_field="type", tag="ping"):
    pass


class ErrorBody(_Out):
    type: ErrorType | str
    message: str


class ErrorEvent(_Out, tag_field="type", tag="error"):
    error: ErrorBody


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)

# --- errors ------------------------------------------------------------------


class ErrorEnvelope(_Wire, tag_field="type", tag="error"):
    error: ErrorBody
    request_id: str | None = None


def error_envelope(type: ErrorType, message: str) -> ErrorEnvelope:
    """An Anthropic error envelope (``{"type": "error", "error": {"type", "message"}}``)."""
    return ErrorEnvelope(error=ErrorBody(type=type, message=message))
