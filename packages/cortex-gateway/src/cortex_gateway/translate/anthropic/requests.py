"""Anthropic Messages requests as OpenAI chat requests: pure translation.

* Thinking blocks in earlier assistant turns go to the model as the assistant
  message's ``reasoning`` (vLLM hands it to the chat template as
  ``reasoning_content`` too); their signatures are dropped. Redacted thinking
  is dropped. A request's ``thinking`` becomes the chat template's
  ``enable_thinking``; ``budget_tokens`` has no OpenAI counterpart and is not
  passed on; no ``thinking`` leaves the model's default.
* ``context_management``'s ``clear_thinking_20251015`` edit is honoured: the
  thinking of all but the last ``keep`` assistant turns that have some is not
  sent. Other edits (clearing tool results) are ignored: the prompt is sent whole.
* ``output_config.effort`` becomes ``reasoning_effort`` (``max`` and ``xhigh``
  as ``high``, the most OpenAI's API names; an effort it does not know is left out).
* A ``system`` turn inside ``messages`` (Claude Code sends its environment so)
  stays a system message in its place; the neuron folds it into the
  neighbouring user turn when the model's chat template refuses a late one.
* Tools with ``defer_loading`` stay out of the prompt, as Anthropic keeps them
  out until a tool search loads them.
* Tool results come first in a user turn (as ``tool`` messages), images a tool
  returned follow in a user message; an ``is_error`` result is prefixed.
"""

from __future__ import annotations

import json
from typing import Any

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import to_builtins

__all__ = ["openai_messages_for_tokenize", "to_openai"]

_IS_ERROR_PREFIX = "Error: "
"""Put before a tool result flagged ``is_error``: OpenAI tool messages have no such flag."""
CLEAR_THINKING = "clear_thinking_20251015"
"""The ``context_management`` edit that drops the thinking of older turns."""
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
"""Anthropic's ``output_config.effort`` → OpenAI's ``reasoning_effort``."""


def to_openai(
    request: an.MessagesRequest | an.CountTokensRequest, model: str
) -> oa.ChatCompletionRequest:
    """The OpenAI chat request for ``request`` with ``model`` as its model; never raises."""
    messages: list[oa.ChatMessage] = []
    system = _system_text(request.system)
    if system:
        messages.append(oa.SystemMessage(content=system))
    thinking_kept = _thinking_turns_kept(request)
    for message in request.messages:
        if message.role == "user":
            messages.extend(_user_messages(message.content))
        elif message.role == "system":
            if text := _system_text(message.content):
                messages.append(oa.SystemMessage(content=text))
        else:
            assistant = _assistant_message(message.content, thinking_kept)
            if assistant is not None:
                messages.append(assistant)

    tools = [
        oa.ToolDefinition(
            function=oa.FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            )
        )
        for tool in request.tools or ()
        if tool.input_schema is not None and not tool.defer_loading
    ]
    out = oa.ChatCompletionRequest(model=model, messages=messages)
    if tools:
        out.tools = tools
        out.tool_choice, out.parallel_tool_calls = _tool_choice(request.tool_choice)
    if isinstance(request.thinking, an.ThinkingEnabled | an.ThinkingAdaptive):
        out.chat_template_kwargs = {"enable_thinking": True}
    elif isinstance(request.thinking, an.ThinkingDisabled):
        out.chat_template_kwargs = {"enable_thinking": False}
    if isinstance(request, an.MessagesRequest):
        if request.output_config is not None and request.output_config.effort:
            out.reasoning_effort = _EFFORTS.get(request.output_config.effort)
        out.max_tokens = request.max_tokens
        out.stop = list(request.stop_sequences) if request.stop_sequences else None
        out.temperature = request.temperature
        out.top_p = request.top_p
        out.top_k = request.top_k
        if request.metadata is not None and request.metadata.user_id:
            out.user = request.metadata.user_id
        if request.stream:
            out.stream = True
            out.stream_options = oa.StreamOptions(include_usage=True)
    return out


def openai_messages_for_tokenize(
    request: an.MessagesRequest | an.CountTokensRequest,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, dict[str, Any] | None]:
    """The chat messages, tools and template settings of ``request``, for a neuron's ``/tokenize``.

    Plain dicts: what the model will see of the request, as the neuron renders it.
    """
    translated = to_openai(request, request.model)
    messages: list[dict[str, Any]] = to_builtins(translated.messages)
    tools: list[dict[str, Any]] | None = to_builtins(translated.tools) if translated.tools else None
    return messages, tools, translated.chat_template_kwargs


def _system_text(system: str | list[an.TextBlock] | list[an.ContentBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n".join(block.text for block in system if isinstance(block, an.TextBlock))


class _ThinkingKept:
    """Which assistant turns keep their thinking (``clear_thinking_20251015``'s ``keep``)."""

    def __init__(self, keep_last: int | None, turns_with_thinking: int) -> None:
        self._first_kept = 0 if keep_last is None else turns_with_thinking - keep_last
        self._seen = 0

    def next_turn(self) -> bool:
        """Whether the next assistant turn that has thinking keeps it."""
        kept = self._seen >= self._first_kept
        self._seen += 1
        return kept


def _thinking_turns_kept(request: an.MessagesRequest | an.CountTokensRequest) -> _ThinkingKept:
    keep_last: int | None = None
    edits = request.context_management.edits if request.context_management else None
    for edit in edits or ():
        if edit.type != CLEAR_THINKING:
            continue
        keep = edit.keep
        if isinstance(keep, dict) and keep.get("type") == "thinking_turns":
            value = keep.get("value")
            keep_last = value if isinstance(value, int) and value >= 0 else 1
        elif keep != "all":
            keep_last = 1  # Anthropic's default for this edit: the last thinking turn only
    with_thinking = sum(
        1
        for m in request.messages
        if m.role == "assistant"
        and not isinstance(m.content, str)
        and any(isinstance(b, an.ThinkingBlock) for b in m.content)
    )
    return _ThinkingKept(keep_last, with_thinking)


def _image_part(source: an.ImageSource) -> oa.ContentPart:
    if isinstance(source, an.Base64ImageSource):
        url = f"data:{source.media_type};base64,{source.data}"
        return oa.ImageUrlPart(image_url=oa.ImageUrl(url=url))
    if isinstance(source, an.UrlImageSource):
        return oa.ImageUrlPart(image_url=oa.ImageUrl(url=source.url))
    return oa.TextPart(text=f"[image file {source.file_id} is not available here]")


def _document_text(block: an.DocumentBlock) -> str:
    source = block.source
    kind = source.get("type")
    text: str | None = None
    if kind == "text" and isinstance(source.get("data"), str):
        text = source["data"]
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(
                str(item.get("text", ""))
                for item in content
                if isinstance(item, dict) and item.get("type") == "text"
            )
    if text is None:
        what = source.get("media_type") or source.get("url") or kind or "unknown"
        return f"[document ({what}) is not supported here]"
    return f"{block.title}\n{text}" if block.title else text


def _part(block: an.TextBlock | an.ImageBlock | an.DocumentBlock) -> oa.ContentPart:
    if isinstance(block, an.TextBlock):
        return oa.TextPart(text=block.text)
    if isinstance(block, an.ImageBlock):
        return _image_part(block.source)
    return oa.TextPart(text=_document_text(block))


def _user_content(parts: list[oa.ContentPart]) -> str | list[oa.ContentPart]:
    if len(parts) == 1 and isinstance(parts[0], oa.TextPart):
        return parts[0].text
    return parts


def _user_messages(content: str | list[an.ContentBlock]) -> list[oa.ChatMessage]:
    """Tool results first (as ``tool`` messages), then one user message with everything else."""
    if isinstance(content, str):
        return [oa.UserMessage(content=content)]
    tool_messages: list[oa.ChatMessage] = []
    tool_images: list[oa.ContentPart] = []
    parts: list[oa.ContentPart] = []
    for block in content:
        if isinstance(block, an.ToolResultBlock):
            message, images = _tool_result(block)
            tool_messages.append(message)
            if images:
                tool_images.append(
                    oa.TextPart(text=f"Image returned by tool call {block.tool_use_id}:")
                )
                tool_images.extend(images)
        elif isinstance(block, an.TextBlock | an.ImageBlock | an.DocumentBlock):
            parts.append(_part(block))
        # tool_use, thinking and redacted thinking blocks have no place in a user turn.
    parts = tool_images + parts
    if parts:
        tool_messages.append(oa.UserMessage(content=_user_content(parts)))
    return tool_messages


def _tool_result(block: an.ToolResultBlock) -> tuple[oa.ToolMessage, list[oa.ContentPart]]:
    texts: list[str] = []
    images: list[oa.ContentPart] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    elif block.content is not None:
        for item in block.content:
            if isinstance(item, an.ImageBlock):
                images.append(_image_part(item.source))
            elif isinstance(item, an.TextBlock):
                texts.append(item.text)
            else:
                texts.append(_document_text(item))
    text = "\n".join(texts)
    if block.is_error:
        text = _IS_ERROR_PREFIX + text
    return oa.ToolMessage(content=text, tool_call_id=block.tool_use_id), images


def _assistant_message(
    content: str | list[an.ContentBlock], thinking: _ThinkingKept
) -> oa.AssistantMessage | None:
    if isinstance(content, str):
        return oa.AssistantMessage(content=content) if content else None
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[oa.ToolCall] = []
    if any(isinstance(b, an.ThinkingBlock) for b in content) and not thinking.next_turn():
        content = [b for b in content if not isinstance(b, an.ThinkingBlock)]
    for block in content:
        if isinstance(block, an.TextBlock):
            texts.append(block.text)
        elif isinstance(block, an.ThinkingBlock):
            thoughts.append(block.thinking)
        elif isinstance(block, an.ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(
                oa.ToolCall(
                    id=block.id, function=oa.FunctionCall(name=block.name, arguments=arguments)
                )
            )
    text = "\n".join(texts)
    reasoning = "\n".join(thoughts)
    if not (text or calls or reasoning):
        return None
    return oa.AssistantMessage(
        content=text or None, tool_calls=calls or None, reasoning=reasoning or None
    )


def _tool_choice(
    choice: an.ToolChoice | None,
) -> tuple[oa.ToolChoice | None, bool | None]:
    if choice is None:
        return None, None
    if isinstance(choice, an.NoneToolChoice):
        return "none", None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, an.AutoToolChoice):
        return "auto", parallel
    if isinstance(choice, an.AnyToolChoice):
        return "required", parallel
    named = oa.NamedToolChoice(function=oa.FunctionName(name=choice.name))
    return named, parallel
