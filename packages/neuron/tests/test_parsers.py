"""The parsers a model gets by default: tool calls read off its chat template, and reasoning."""

from __future__ import annotations

import pytest

from neuron.parsers import ModelTraits, default_parsers
from neuron.testing import templates
from neuron.testing.models import CHAT_TEMPLATE as TINY_QWEN

QWEN3 = ("Qwen3ForCausalLM",)
LLAMA = ("LlamaForCausalLM",)


@pytest.mark.parametrize(
    ("architectures", "template", "expected"),
    [
        # Qwen2.5/Qwen3 and Hermes-style models: <tool_call> JSON.
        (QWEN3, TINY_QWEN, ("hermes", "qwen3")),
        (("Qwen2ForCausalLM",), TINY_QWEN, ("hermes", None)),
        # Llama 3.x: <|python_tag|> or "Environment: ipython".
        (LLAMA, templates.LLAMA3, ("llama3_json", None)),
        # A Llama-architecture model whose template shows no tool calls (SmolLM2).
        (LLAMA, templates.SMOLLM2, (None, None)),
        (("MistralForCausalLM",), "{{ '[TOOL_CALLS]' }}", ("mistral", None)),
        (("GraniteForCausalLM",), "{{ '<|tool_call|>' }}", ("granite", None)),
        (("Qwen3MoeForCausalLM",), "<tool_call><function=x>", ("qwen3_coder", "qwen3")),
        (("Llama4ForConditionalGeneration",), "<|python_start|>", ("llama4_pythonic", None)),
        (("Phi3ForCausalLM",), "functools[{...}]", ("phi4_mini_json", None)),
        # Mistral's own tokenizer: no template text, the architecture says.
        (("MistralForCausalLM",), None, ("mistral", None)),
        (LLAMA, None, (None, None)),
    ],
)
def test_the_template_names_the_tool_call_format(
    architectures: tuple[str, ...], template: str | None, expected: tuple[str | None, str | None]
) -> None:
    """Each family's format, from its chat template; the architecture only without one."""
    traits = ModelTraits(architectures=architectures, chat_template=template)
    assert default_parsers(traits) == expected


def test_gpt_oss_speaks_harmony_whatever_its_template() -> None:
    """gpt-oss: the openai (Harmony) parser."""
    traits = ModelTraits(("GptOssForCausalLM",), model_type="gpt_oss", chat_template="<tool_call>")
    assert default_parsers(traits)[0] == "openai"


def test_a_parser_this_vllm_lacks_is_no_default() -> None:
    """Only names the running vLLM registers are chosen."""
    traits = ModelTraits(QWEN3, chat_template=TINY_QWEN)
    assert default_parsers(traits, ["hermes", "mistral"]) == ("hermes", "qwen3")
    assert default_parsers(traits, ["mistral"]) == (None, "qwen3")
