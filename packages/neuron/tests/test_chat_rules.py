"""What the neuron fits in chat requests: late system messages (real templates), tools, limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers.utils.chat_template_utils import render_jinja_template

from neuron.chat_rules import (
    LATE_SYSTEM_PROBES,
    fit_output,
    fold_system_messages,
    takes_late_system,
    tool_choice_without_parser,
)
from neuron.testing import templates
from neuron.testing.models import CHAT_TEMPLATE as TINY_QWEN

Message = dict[str, Any]

ENV = "# Environment\nPrimary working directory: /work"
TURN_ONE: list[Message] = [
    {"role": "system", "content": "You are Claude Code."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "system", "content": ENV},
]
"""Claude Code's first turn, translated: its environment comes last, as a system message."""
TURN_TWO: list[Message] = [
    *TURN_ONE,
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany?"},
]


def render(template: str, messages: list[Message], *, generation: bool = True) -> str | None:
    """``messages`` through ``template`` as transformers (so vLLM) renders them; None: refused."""
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            add_generation_prompt=generation,
            bos_token="<s>",
            eos_token="</s>",
        )
    except Exception:
        return None
    return str(rendered[0])


def fitted(template: str, messages: list[Message]) -> list[Message]:
    """``messages`` as the neuron serves them to a model with ``template``."""
    probes = [render(template, list(probe)) for probe in LATE_SYSTEM_PROBES]
    return messages if takes_late_system(probes) else fold_system_messages(messages)


TEMPLATES = {
    "smollm2": (templates.SMOLLM2, True),
    "tiny-qwen3": (TINY_QWEN, True),
    "llama3": (templates.LLAMA3, True),
    "alternating": (templates.ALTERNATING, False),
    "system-first": (templates.SYSTEM_FIRST, False),
    "first-system-only": (templates.FIRST_SYSTEM_ONLY, False),
}


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_probe_tells_which_templates_take_a_late_system_message(name: str) -> None:
    """Templates that render a later system message are known; refusing or dropping ones not."""
    template, takes = TEMPLATES[name]
    assert takes_late_system([render(template, list(p)) for p in LATE_SYSTEM_PROBES]) is takes
    if not takes:  # as they come, Claude Code's turns fail there, or lose the environment
        unfitted = [render(template, turns) for turns in (TURN_ONE, TURN_TWO)]
        assert any(text is None or ENV not in text for text in unfitted)


@pytest.mark.parametrize("name", TEMPLATES)
def test_claude_codes_turns_render_on_every_template(name: str) -> None:
    """Both turns render, the environment in them once, in order; turn one prefixes turn two."""
    template, _ = TEMPLATES[name]
    one = render(template, fitted(template, TURN_ONE))
    two = render(template, fitted(template, TURN_TWO))
    assert one is not None
    assert two is not None
    for rendered in (one, two):
        assert rendered.count(ENV) == 1
        assert rendered.index("capital of France") < rendered.index(ENV)
    assert two.index(ENV) < two.index("And of Germany")
    # What lets the engine's prefix cache serve the second turn: the first is its prefix.
    assert two.startswith(one)


def test_a_late_system_message_joins_the_user_turn_before_it() -> None:
    """Claude Code's shape: the environment goes after the user's text, in that user turn."""
    assert fold_system_messages(TURN_TWO) == [
        {"role": "system", "content": "You are Claude Code."},
        {"role": "user", "content": f"What is the capital of France?\n\n{ENV}"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
    ]


def test_a_system_message_after_tool_results_goes_before_the_next_user_text() -> None:
    """Tool results stay right after their call; the reminder leads the next user turn."""
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]}
    messages: list[Message] = [
        {"role": "user", "content": "Read it."},
        call,
        {"role": "tool", "tool_call_id": "t1", "content": "file text"},
        {"role": "system", "content": [{"type": "text", "text": "Reminder."}]},
        {"role": "user", "content": [{"type": "text", "text": "Now?"}]},
    ]
    assert fold_system_messages(messages) == [
        {"role": "user", "content": "Read it."},
        call,
        {"role": "tool", "tool_call_id": "t1", "content": "file text"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Reminder."}, {"type": "text", "text": "Now?"}],
        },
    ]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}],
            [{"role": "system", "content": "A\n\nB"}],
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "system", "content": "S"},
            ],
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "S"},
            ],
        ),
        (
            [
                {"role": "assistant", "content": "a"},
                {"role": "system", "content": "S"},
                {"role": "assistant", "content": "b"},
            ],
            [
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "S"},
                {"role": "assistant", "content": "b"},
            ],
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "system", "content": ""}],
            [{"role": "user", "content": "q"}],
        ),
        (
            [{"role": "user", "content": ""}, {"role": "system", "content": "S"}],
            [{"role": "user", "content": "S"}],
        ),
    ],
)
def test_fold_cases(messages: list[Message], expected: list[Message]) -> None:
    """Leading systems merge; a late one with no user turn beside it becomes one; empty ones go."""
    assert fold_system_messages(messages) == expected


ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
TEXT = st.text(alphabet="abcxyz ", min_size=1, max_size=6).map(lambda t: f"<{t}>")


@given(st.lists(st.tuples(ROLES, TEXT), max_size=12))
def test_folding_keeps_every_text_in_order_and_no_late_system(turns: list[tuple[str, str]]) -> None:
    """No system message after the first turn, no text lost, every text in its order.

    Tool results keep their place right after their call: a system message
    between a call and its results may move past the results.
    """
    messages = [{"role": role, "content": text} for role, text in turns]
    folded = fold_system_messages(messages)
    assert all(m["role"] != "system" for m in folded[1:])
    flat = "".join(str(m["content"]) for m in folded if m["role"] != "tool")
    position = 0
    for role, text in turns:
        if role == "tool":
            continue
        found = flat.find(text, position)
        assert found >= 0, (text, flat)
        position = found + len(text)
    assert [m for m in folded if m["role"] in ("assistant", "tool")] == [
        m for m in messages if m["role"] in ("assistant", "tool")
    ]


def test_automatic_tool_choice_without_a_parser_answers_in_text() -> None:
    """auto: none (the tools still reach the template); none and absent: as they were."""
    assert tool_choice_without_parser("auto") == ("none", None)
    assert tool_choice_without_parser("none") == ("none", None)
    assert tool_choice_without_parser(None) == (None, None)


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_forced_tool_call_without_a_parser_is_refused_naming_the_setting(choice: Any) -> None:
    """A required or named tool call: refused, the message saying what turns tool calls on."""
    kept, refusal = tool_choice_without_parser(choice)
    assert kept == choice
    assert refusal is not None
    assert "tool_call_parser" in refusal
    assert "[models.engine]" in refusal


def test_max_tokens_is_at_most_the_context() -> None:
    """32,000 asked of an 8,192 context: 8,192 (vLLM then takes what the prompt leaves)."""
    assert fit_output(32000, 8192) == 8192
    assert fit_output(100, 8192) == 100
    assert fit_output(None, 8192) is None
