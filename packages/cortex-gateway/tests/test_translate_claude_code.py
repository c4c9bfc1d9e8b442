"""The request shapes Claude Code sends, translated: system turns, thinking, effort, edits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from translate_support import MODEL, chunk, messages_request, openai_body, translate, wire

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import decode, encode
from cortex_gateway.translate.anthropic import from_openai, without_billing_header

BILLING = "x-anthropic-billing-header: cc_version=2.1.328.f86; cc_entrypoint=sdk-cli;"


def test_a_system_turn_stays_a_system_message_in_its_place() -> None:
    """``role: "system"`` inside ``messages`` (Claude Code's environment) keeps its position."""
    body = {
        "system": "You are Claude Code.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "system", "content": "Reminder."},
            {"role": "user", "content": "Bye"},
            {"role": "system", "content": []},
        ],
    }
    assert openai_body(body)["messages"] == [
        {"role": "system", "content": "You are Claude Code."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "# Environment"},
        {"role": "assistant", "content": "Hello."},
        {"role": "system", "content": "Reminder."},
        {"role": "user", "content": "Bye"},
    ]


def test_deferred_tools_stay_out_of_the_prompt() -> None:
    """A tool with ``defer_loading`` is not sent; the others are."""
    schema = {"type": "object", "properties": {}}
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [
            {"name": "Bash", "description": "Run", "input_schema": schema},
            {"name": "Later", "input_schema": schema, "defer_loading": True},
            {"name": "Now", "input_schema": schema, "defer_loading": False},
        ],
    }
    names = [tool["function"]["name"] for tool in openai_body(body)["tools"]]
    assert names == ["Bash", "Now"]


@pytest.mark.parametrize(
    ("effort", "expected"),
    [("low", "low"), ("medium", "medium"), ("high", "high"), ("max", "high"), ("xhigh", "high")],
)
def test_effort_becomes_the_reasoning_effort(effort: str, expected: str) -> None:
    """``output_config.effort`` is OpenAI's ``reasoning_effort`` (the strongest is ``high``)."""
    body = {"messages": [{"role": "user", "content": "x"}], "output_config": {"effort": effort}}
    assert openai_body(body)["reasoning_effort"] == expected


def test_an_effort_openai_does_not_name_is_left_out() -> None:
    """An effort this gateway does not know, or none, sends no ``reasoning_effort``."""
    for config in ({"effort": "extreme"}, {}, {"format": {"type": "json_schema"}}):
        body = {"messages": [{"role": "user", "content": "x"}], "output_config": config}
        assert "reasoning_effort" not in openai_body(body)


@pytest.mark.parametrize(
    "thinking",
    [
        {"type": "adaptive", "display": "omitted"},
        {"type": "adaptive"},
        {"type": "enabled", "budget_tokens": 2048, "display": "summarized"},
    ],
)
def test_thinking_of_every_kind_switches_the_template_on(thinking: dict[str, Any]) -> None:
    """``adaptive`` and ``enabled`` (with any ``display``) turn the model's thinking on."""
    body = {"messages": [{"role": "user", "content": "x"}], "thinking": thinking}
    assert openai_body(body)["chat_template_kwargs"] == {"enable_thinking": True}


def _turns_with_thinking(count: int) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for turn in range(count):
        turns.append({"role": "user", "content": f"q{turn}"})
        content = [
            {"type": "thinking", "thinking": f"t{turn}", "signature": ""},
            {"type": "text", "text": f"a{turn}"},
        ]
        turns.append({"role": "assistant", "content": content})
    return [*turns, {"role": "user", "content": "last"}]


def _reasoning(body: dict[str, Any]) -> list[str | None]:
    return [m.get("reasoning") for m in openai_body(body)["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ("all", ["t0", "t1", "t2"]),
        ({"type": "thinking_turns", "value": 2}, [None, "t1", "t2"]),
        ({"type": "thinking_turns", "value": 0}, [None, None, None]),
        ({"type": "thinking_turns", "value": 9}, ["t0", "t1", "t2"]),
        (None, [None, None, "t2"]),
    ],
)
def test_clear_thinking_keeps_the_last_turns_asked(keep: Any, expected: list[str | None]) -> None:
    """``clear_thinking_20251015`` drops the thinking of all but the last ``keep`` turns."""
    edit: dict[str, Any] = {"type": "clear_thinking_20251015"}
    if keep is not None:
        edit["keep"] = keep
    body = {"messages": _turns_with_thinking(3), "context_management": {"edits": [edit]}}
    assert _reasoning(body) == expected


def test_other_context_edits_are_ignored() -> None:
    """An edit this gateway does not apply (or does not know) changes nothing."""
    edits = [{"type": "clear_tool_uses_20250919", "keep": {"type": "tool_uses", "value": 1}}]
    edits.append({"type": "compact_20990101"})
    body = {"messages": _turns_with_thinking(2), "context_management": {"edits": edits}}
    assert _reasoning(body) == ["t0", "t1"]
    assert _reasoning({"messages": _turns_with_thinking(2)}) == ["t0", "t1"]


def test_the_billing_block_is_dropped() -> None:
    """A first system block holding the billing header goes; the rest stays as it was."""
    blocks = [
        {"type": "text", "text": f"{BILLING} cch=1a2b3;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
    ]
    request = messages_request({"system": blocks, "messages": [{"role": "user", "content": "x"}]})
    stripped = without_billing_header(request)
    assert stripped.system == [
        an.TextBlock(text="You are Claude Code.", cache_control=an.CacheControl())
    ]
    assert isinstance(request.system, list)
    assert len(request.system) == 2, "the original is unchanged"


def test_only_a_leading_billing_header_is_dropped() -> None:
    """The header elsewhere, or no system at all, leaves the request as it is."""
    elsewhere = [{"type": "text", "text": "Hi."}, {"type": "text", "text": BILLING}]
    for system in (elsewhere, "Just a prompt.", None, []):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}]}
        if system is not None:
            body["system"] = system
        request = messages_request(body)
        assert without_billing_header(request) is request


def test_a_system_string_loses_its_billing_line() -> None:
    """A system string whose first line is the header keeps the lines after it."""
    request = messages_request(
        {"system": f"{BILLING}\nYou are terse.", "messages": [{"role": "user", "content": "x"}]}
    )
    assert without_billing_header(request).system == "You are terse."


def test_omitted_thinking_streams_an_empty_thinking_block() -> None:
    """``display: "omitted"``: the thinking block opens and closes with no text in it."""
    chunks = [chunk({"reasoning": "Let me think."}), chunk({"content": "Paris."}, "stop")]
    events = wire(translate(chunks, omit_thinking=True))
    thinking = [e for e in events if e.get("delta", {}).get("type") == "thinking_delta"]
    assert thinking == []
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
    ]
    shown = wire(translate(chunks))
    assert [e["delta"]["thinking"] for e in shown if e.get("delta", {}).get("thinking")] == [
        "Let me think."
    ]


def test_omitted_thinking_in_a_complete_answer_is_empty() -> None:
    """A complete answer's thinking block carries no text when it is omitted."""
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Paris.", "reasoning": "Hmm."},
            }
        ],
    }
    completion = from_openai_json(answer, omit_thinking=True)
    assert completion["content"][0] == {"type": "thinking", "thinking": "", "signature": ""}
    assert from_openai_json(answer)["content"][0]["thinking"] == "Hmm."


def from_openai_json(answer: dict[str, Any], **options: Any) -> dict[str, Any]:
    """The Anthropic message for an OpenAI answer, as JSON."""
    message = from_openai(decode(json.dumps(answer), oa.ChatCompletion), MODEL, **options)
    result: dict[str, Any] = json.loads(encode(message))
    return result
