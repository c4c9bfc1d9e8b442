"""Which tool-call and reasoning parsers a model gets when its load names none. Pure.

vLLM parses tool calls and reasoning with a parser per format, chosen by name.
The tool-call format is read off the model's chat template, where the
template shows the model how to call tools (``<tool_call>`` for Qwen and
Hermes-style models, ``<|python_tag|>`` for Llama 3.x, ``[TOOL_CALLS]`` for
Mistral, ...); the model's architecture is only a fallback for templates vLLM
does not get as text (Mistral's own tokenizer) and for reasoning formats. A
load's ``tool_call_parser`` and ``reasoning_parser`` options win over these
defaults (``""`` turns one off), and a default the model's tokenizer does not
fit is dropped (``vllm_engine`` does that, with a warning).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["TEMPLATE_MARKERS", "ModelTraits", "default_parsers"]

TEMPLATE_MARKERS: tuple[tuple[str, str], ...] = (
    # The most specific first: several formats wrap calls in <tool_call> too.
    ("<function=", "qwen3_coder"),
    ("<arg_key>", "glm45"),
    ("<minimax:tool_call>", "minimax_m2"),
    ("<|tool_calls_section_begin|>", "kimi_k2"),
    ("<｜tool▁calls▁begin｜>", "deepseek_v3"),  # noqa: RUF001 (DeepSeek's own characters)
    ("<|python_start|>", "llama4_pythonic"),
    ("<|python_tag|>", "llama3_json"),
    ("Environment: ipython", "llama3_json"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|tool_call|>", "granite"),
    ("<|action_start|><|plugin|>", "internlm"),
    ("functools[", "phi4_mini_json"),
    ("<tool_call>", "hermes"),
)
"""A text in a chat template, and the tool-call parser for the format it shows."""

_TOOLS_BY_MODEL_TYPE = {"gpt_oss": "openai"}
"""Formats a model type fixes whatever its template says (gpt-oss speaks Harmony)."""
_TOOLS_BY_ARCHITECTURE = {
    "MistralForCausalLM": "mistral",
    "Mistral3ForConditionalGeneration": "mistral",
}
"""For a model whose template is not text here (Mistral's own tokenizer renders it)."""
_REASONING_BY_ARCHITECTURE = {
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3",
}


@dataclass(frozen=True, slots=True)
class ModelTraits:
    """What the parser defaults are chosen from."""

    architectures: tuple[str, ...] = ()
    """``config.json``'s ``architectures``."""
    model_type: str = ""
    """``config.json``'s ``model_type``."""
    chat_template: str | None = None
    """The chat template's text (every variant of it, joined); None: not known as text."""


def _tool_parser(traits: ModelTraits) -> str | None:
    if traits.model_type in _TOOLS_BY_MODEL_TYPE:
        return _TOOLS_BY_MODEL_TYPE[traits.model_type]
    template = traits.chat_template
    if template is None:
        return _first(_TOOLS_BY_ARCHITECTURE, traits.architectures)
    return next((parser for marker, parser in TEMPLATE_MARKERS if marker in template), None)


def _first(table: dict[str, str], architectures: Iterable[str]) -> str | None:
    return next((table[a] for a in architectures if a in table), None)


def default_parsers(
    traits: ModelTraits, registered: Collection[str] | None = None
) -> tuple[str | None, str | None]:
    """The tool-call and reasoning parsers ``traits`` call for (None: none fits).

    With ``registered`` (the names this vLLM has), a name it lacks is no default.
    """
    tools = _tool_parser(traits)
    reasoning = _first(_REASONING_BY_ARCHITECTURE, traits.architectures)
    if registered is not None and tools not in registered:
        tools = None
    return tools, reasoning
