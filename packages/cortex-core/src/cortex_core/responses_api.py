"""The OpenAI Responses API (``POST /v1/responses``) on the wire: request, answer, usage.

Codex CLI, the OpenAI Agents SDK and anything built on ``client.responses``
speak it. The gateway reads only what routing and metering need and forwards
the rest as it came; these types say what the fields are (``/openapi.json``)
and let test doubles answer as vLLM 0.32 does. As everywhere in cortex_core,
unknown fields are accepted and every optional field has a default.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct, field

from cortex_core.openai import PromptTokensDetails, Usage
from cortex_core.units import NonNegInt

__all__ = [
    "InputTokensDetails",
    "OutputTokensDetails",
    "Response",
    "ResponseUsage",
    "ResponsesRequest",
]


class ResponsesRequest(Struct, kw_only=True, omit_defaults=True):
    """``POST /v1/responses``: what a client sends (Codex CLI's fields included)."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool | None = None
    store: bool | None = None
    """Keep the response for ``previous_response_id`` and ``GET``; cortex keeps none."""
    previous_response_id: str | None = None
    background: bool | None = None
    prompt_cache_key: str | None = None
    """Requests sharing it share a prompt cache: cortex routes them to the same replica."""
    max_output_tokens: NonNegInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    truncation: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None


class InputTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(Struct, kw_only=True):
    """A response's token counts, as the Responses API names them."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None

    def as_usage(self) -> Usage:
        """The same counts as a chat completion's ``usage`` (what the gateway meters)."""
        cached = self.input_tokens_details.cached_tokens if self.input_tokens_details else None
        return Usage(
            prompt_tokens=self.input_tokens,
            completion_tokens=self.output_tokens,
            total_tokens=self.total_tokens or self.input_tokens + self.output_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )


class Response(Struct, kw_only=True):
    """A response object: the whole answer, and what stream events carry in ``response``."""

    id: str
    object: Literal["response"] | str = "response"
    created_at: float = 0
    model: str = ""
    status: Literal["completed", "incomplete", "failed", "in_progress", "queued"] | str | None = (
        None
    )
    output: list[dict[str, Any]] = field(default_factory=list)
    usage: ResponseUsage | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
