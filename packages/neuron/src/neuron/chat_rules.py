"""What the neuron changes in a chat request before vLLM sees it, so clients as they ship work.

Pure functions over the request's plain values; ``vllm_engine`` applies them.

- **System messages after the first turn** (Claude Code sends its
  environment so) are folded into the neighbouring user turn, in order, for
  a model whose chat template refuses them (many do: Qwen's raises, Llama 2's
  drops them). A template is known to take them when it renders
  :data:`LATE_SYSTEM_PROBES` with the marker in place (:func:`takes_late_system`).
- **Tools with automatic choice on a model without a tool-call parser** are
  served: the template still renders the tools if it can, and the answer is
  text (``tool_choice`` becomes ``none``). A tool call the client insists on
  (``required``, or a named tool) is refused with the setting that allows it.
- **max_tokens beyond the context** is served with what the context leaves
  after the prompt (vLLM clamps what is at most the context length).
- **A prompt longer than the context** is refused with its size, counted
  whole (``vllm_engine`` counts it; vLLM's own refusal stops counting at the limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "LATE_SYSTEM_MARKER",
    "LATE_SYSTEM_PROBES",
    "TOOL_CALLS_SETTING",
    "fit_output",
    "fold_system_messages",
    "takes_late_system",
    "tool_choice_without_parser",
]

Message = dict[str, Any]

LATE_SYSTEM_MARKER = "cortex-probe-7c1e: a system message after the first turn"
LATE_SYSTEM_PROBES: tuple[tuple[Message, ...], ...] = (
    # Claude Code's first turn: its environment is the last message.
    (
        {"role": "system", "content": "You are a probe."},
        {"role": "user", "content": "Hello."},
        {"role": "system", "content": LATE_SYSTEM_MARKER},
    ),
    # And in the middle of a conversation.
    (
        {"role": "user", "content": "Hello."},
        {"role": "system", "content": LATE_SYSTEM_MARKER},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Bye."},
    ),
)
"""Conversations a template that takes late system messages renders with the marker in."""
TOOL_CALLS_SETTING = "tool_call_parser in the model's [models.engine] (or the load's options)"
"""What turns tool calls on for a model that has none: said in logs and refusals."""


def takes_late_system(rendered: Sequence[str | None]) -> bool:
    """Whether a template took late system messages: each probe rendered, marker and all.

    ``rendered`` holds each probe's text as the template rendered it (None: it refused).
    """
    return bool(rendered) and all(
        text is not None and LATE_SYSTEM_MARKER in text for text in rendered
    )


def _text(content: Any) -> str:
    """A system message's content as text (its text parts, joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return ""


def _joined(content: Any, text: str, *, before: bool) -> Any:
    """``content`` (a string or a list of parts) with ``text`` put before or after it."""
    if isinstance(content, list):
        part = {"type": "text", "text": text}
        return [part, *content] if before else [*content, part]
    existing = content if isinstance(content, str) else ""
    if not existing:
        return text
    return f"{text}\n\n{existing}" if before else f"{existing}\n\n{text}"


def fold_system_messages(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with every system message after the first turn folded into a user turn.

    Leading system messages become one. A later one joins the user message
    right before it; else it waits for the next user message and goes before
    its text; an assistant turn, or the end, with none in between makes it a
    user message of its own. Order is kept, but for tool results: a system
    message between a tool call and its results goes after the results, which
    must follow their call. Empty ones go.
    """
    out: list[Message] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.append({"role": "user", "content": "\n\n".join(pending)})
            pending.clear()

    for message in messages:
        role = message.get("role")
        if role == "system" and out:
            text = _text(message.get("content"))
            if not text:
                continue
            if all(m.get("role") == "system" for m in out):
                out[0] = _with(out[0], text, before=False, as_text=True)
            elif out[-1].get("role") == "user" and not pending:
                out[-1] = _with(out[-1], text, before=False)
            else:
                pending.append(text)
            continue
        if role == "user" and pending:
            message = _with(message, "\n\n".join(pending), before=True)
            pending.clear()
        elif role == "assistant":
            flush()
        out.append(message)
    flush()
    return out


def _with(message: Message, text: str, *, before: bool, as_text: bool = False) -> Message:
    """``message`` with ``text`` joined to its content (made text first, with ``as_text``)."""
    content = message.get("content")
    if as_text:
        content = _text(content)
    return {**message, "content": _joined(content, text, before=before)}


def tool_choice_without_parser(tool_choice: Any) -> tuple[Any, str | None]:
    """The ``tool_choice`` to serve on a model with no tool-call parser, or why it cannot be.

    ``auto`` becomes ``none``: the model may see the tools, and answers in
    text. A forced call (``required``, a named tool) cannot be parsed out of
    the answer: refused, naming the setting that turns tool calls on.
    """
    if tool_choice in (None, "none"):
        return tool_choice, None
    if tool_choice == "auto":
        return "none", None
    wanted = "a tool call" if tool_choice == "required" else "a call of a named tool"
    return tool_choice, (
        f"tool_choice asks for {wanted}, but tool calls are off for this model;"
        f" set {TOOL_CALLS_SETTING} to turn them on"
    )


def fit_output(max_tokens: int | None, max_model_len: int) -> int | None:
    """``max_tokens`` at most the context length (vLLM then takes what the prompt leaves)."""
    if max_tokens is None:
        return None
    return min(max_tokens, max_model_len)
