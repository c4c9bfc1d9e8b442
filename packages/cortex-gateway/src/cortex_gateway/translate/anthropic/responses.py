"""OpenAI chat completions as Anthropic messages: pure translation of complete answers.

* Thinking blocks produced here carry an empty ``signature``: there is no
  signature to give, and clients send the blocks back only to this gateway.
  With ``thinking.display: "omitted"`` they carry no text either, as
  Anthropic's API sends them then.
* Upstream tool call ids are kept when Anthropic would accept them
  (``[A-Za-z0-9_-]+``, which vLLM's ``chatcmpl-tool-...`` ids are); others, and
  missing ones, get a fresh ``toolu_...`` id.
* Whitespace at the start of a text or thinking block is dropped (Qwen3 puts
  two newlines after its reasoning), so whitespace alone makes no block.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_gateway.translate.anthropic.tool_json import parse_tool_arguments

__all__ = [
    "from_openai",
    "map_stop",
    "new_message_id",
    "new_tool_use_id",
    "split_input_tokens",
    "tool_use_id",
]

_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")


def new_message_id() -> str:
    """A fresh Anthropic message id: ``msg_`` and 24 URL-safe random characters."""
    return "msg_" + secrets.token_urlsafe(18)


def new_tool_use_id() -> str:
    """A fresh Anthropic tool use id: ``toolu_`` and 24 URL-safe random characters."""
    return "toolu_" + secrets.token_urlsafe(18)


def tool_use_id(upstream: str | None) -> str:
    """``upstream``'s id if Anthropic would accept it, else a fresh one."""
    return upstream if upstream and _TOOL_ID.fullmatch(upstream) else new_tool_use_id()


def map_stop(
    finish_reason: str | None,
    upstream_stop: int | str | None,
    used_tools: bool,
    stop_sequences: Sequence[str] | None,
) -> tuple[an.StopReason, str | None]:
    """Anthropic's stop reason (and stop sequence) for how an OpenAI choice finished."""
    if finish_reason == "length":
        return "max_tokens", None
    if used_tools:
        return "tool_use", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(upstream_stop, str) and stop_sequences and upstream_stop in stop_sequences:
        return "stop_sequence", upstream_stop
    return "end_turn", None


def split_input_tokens(usage: oa.Usage) -> tuple[int, int | None]:
    """Uncached prompt tokens and cache reads, as Anthropic counts them separately."""
    cached = usage.cached_tokens
    return usage.prompt_tokens - cached, (cached or None)


def from_openai(
    response: oa.ChatCompletion,
    model: str,
    stop_sequences: Sequence[str] | None = None,
    *,
    omit_thinking: bool = False,
) -> an.Message:
    """The Anthropic message for the first choice of ``response``, named ``model``.

    ``stop_sequences`` are the request's: a vLLM ``stop_reason`` among them gives
    ``stop_reason: "stop_sequence"``. With ``omit_thinking``, a thinking block
    is there but empty.
    """
    content: list[an.ResponseBlock] = []
    finish_reason: str | None = None
    upstream_stop: int | str | None = None
    used_tools = False
    if response.choices:
        choice = response.choices[0]
        finish_reason, upstream_stop = choice.finish_reason, choice.stop_reason
        message = choice.message
        reasoning = (
            message.reasoning if message.reasoning is not None else message.reasoning_content
        )
        reasoning = (reasoning or "").lstrip()
        if reasoning:
            shown = "" if omit_thinking else reasoning
            content.append(an.ThinkingBlock(thinking=shown, signature=""))
        text = (message.content or message.refusal or "").lstrip()
        if text:
            content.append(an.TextBlock(text=text))
        for call in message.tool_calls or ():
            content.append(
                an.ToolUseBlock(
                    id=tool_use_id(call.id),
                    name=call.function.name,
                    input=parse_tool_arguments(call.function.arguments),
                )
            )
            used_tools = True
    stop_reason, stop_sequence = map_stop(finish_reason, upstream_stop, used_tools, stop_sequences)
    usage = an.Usage()
    if response.usage is not None:
        usage.input_tokens, usage.cache_read_input_tokens = split_input_tokens(response.usage)
        usage.output_tokens = response.usage.completion_tokens
    return an.Message(
        id=new_message_id(),
        model=model,
        content=content,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=usage,
    )
