"""The parser defaults against the vLLM this neuron runs: every name is one it registers."""

from __future__ import annotations

import pytest

from neuron.parsers import TEMPLATE_MARKERS, ModelTraits, default_parsers

pytestmark = [
    pytest.mark.slow,  # imports vLLM
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def test_every_default_is_a_parser_vllm_registers() -> None:
    """Each template marker's parser, and gpt-oss's, are vLLM tool-call parsers by name."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    registered = set(ToolParserManager.list_registered())
    assert {parser for _, parser in TEMPLATE_MARKERS} <= registered
    gpt_oss = ModelTraits(("GptOssForCausalLM",), model_type="gpt_oss")
    assert default_parsers(gpt_oss, registered)[0] == "openai"
    qwen3 = ModelTraits(("Qwen3ForCausalLM",), chat_template="<tool_call>")
    assert default_parsers(qwen3, registered) == ("hermes", "qwen3")
    assert "qwen3" in ReasoningParserManager.list_registered()
