"""Complete OpenAI answers as Anthropic messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from translate_support import (
    MODEL,
    blocks_of,
    fixture_json,
    sdk_client,
)

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import decode, encode
from cortex_gateway.translate.anthropic import (
    from_openai,
    parse_tool_arguments,
)


def completion(message: dict[str, Any], finish: str | None, **extra: Any) -> oa.ChatCompletion:
    """A chat completion with one choice."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **extra}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
    return decode(json.dumps(body), oa.ChatCompletion)


def test_vllm_response_with_reasoning_gives_thinking_then_text() -> None:
    """Reasoning comes first as a thinking block with an empty signature, then the text."""
    response = decode(fixture_json("openai/vllm_chat_response.json"), oa.ChatCompletion)
    message = from_openai(response, "claude-x")
    out = json.loads(encode(message))
    reasoning = response.choices[0].message.reasoning
    assert reasoning is not None
    assert out["content"] == [
        {"type": "thinking", "thinking": reasoning.lstrip(), "signature": ""},
        {"type": "text", "text": "The result of (3 + 5) * 8 is 64."},
    ]
    assert out["id"].startswith("msg_")
    assert len(out["id"]) == 28
    assert out["type"] == "message"
    assert out["role"] == "assistant"
    assert out["model"] == "claude-x"
    assert out["stop_reason"] == "end_turn"
    assert out["stop_sequence"] is None
    assert out["usage"]["input_tokens"] == 448
    assert out["usage"]["output_tokens"] == 249


def test_vllm_tool_calls_response_gives_tool_use_blocks() -> None:
    """Parallel calls become tool_use blocks with parsed input and vLLM's ids kept."""
    response = decode(fixture_json("openai/vllm_chat_response_tool_calls.json"), oa.ChatCompletion)
    message = from_openai(response, "claude-x")
    assert [type(block) for block in message.content] == [
        an.ThinkingBlock,
        an.ToolUseBlock,
        an.ToolUseBlock,
    ]
    assert json.loads(encode(message.content[1:])) == [
        {
            "type": "tool_use",
            "id": "chatcmpl-tool-9cfff31470c8d39b",
            "name": "add",
            "input": {"a": 3, "b": 5},
        },
        {
            "type": "tool_use",
            "id": "chatcmpl-tool-afe2dd0e7aedad5f",
            "name": "multiply",
            "input": {"a": 8, "b": 8},
        },
    ]
    assert message.stop_reason == "tool_use"


def test_openai_tool_call_arguments_with_newlines_parse() -> None:
    """Arguments pretty-printed by the model parse into the input object."""
    response = decode(fixture_json("openai/chat_response_tool_calls.json"), oa.ChatCompletion)
    message = from_openai(response, "claude-x")
    tool = message.content[-1]
    assert isinstance(tool, an.ToolUseBlock)
    assert tool.input == {"location": "Boston, MA"}
    calls = response.choices[0].message.tool_calls
    assert calls is not None
    assert tool.id == calls[0].id


@pytest.mark.parametrize(
    ("finish", "stop_reason", "stops", "expected"),
    [
        ("stop", None, None, ("end_turn", None)),
        ("stop", "END", ["END", "STOP"], ("stop_sequence", "END")),
        ("stop", "END", None, ("end_turn", None)),
        ("stop", "OTHER", ["END"], ("end_turn", None)),
        ("stop", 151645, ["END"], ("end_turn", None)),
        ("length", None, None, ("max_tokens", None)),
        ("tool_calls", None, None, ("end_turn", None)),
        ("content_filter", None, None, ("refusal", None)),
        ("abort", None, None, ("end_turn", None)),
        (None, None, None, ("end_turn", None)),
    ],
)
def test_finish_reasons_map_to_stop_reasons(
    finish: str | None,
    stop_reason: int | str | None,
    stops: list[str] | None,
    expected: tuple[str, str | None],
) -> None:
    """stop, a matched stop sequence, length and the rest map to Anthropic's stop reasons."""
    response = completion({"content": "hi"}, finish, stop_reason=stop_reason)
    message = from_openai(response, "m", stop_sequences=stops)
    assert (message.stop_reason, message.stop_sequence) == expected


def test_tool_calls_mean_tool_use_whatever_the_finish_reason_but_length() -> None:
    """For a named tool choice vLLM says stop; tool calls still give tool_use, length wins."""
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = {"content": None, "tool_calls": [call]}
    assert from_openai(completion(message, "stop"), "m").stop_reason == "tool_use"
    assert from_openai(completion(message, "length"), "m").stop_reason == "max_tokens"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  {"a": [true, null, -0.5e1]}  ', {"a": [True, None, -5.0]}),
        ("", {}),
        ("not json", {}),
        ("[1, 2]", {}),
        ('"{}"', {}),
        ('{"a": ', {}),
        ('{"a": 1,}', {}),
        ('{"a": "x\ny\t"}', {"a": "x\ny\t"}),
        ('{"a": 1} and more', {"a": 1}),
        ('{"a": "\\ud800"}', {"a": "\ufffd"}),
        ('{"a": "\\q"}', {"a": "\\q"}),
    ],
)
def test_tool_arguments_parse_robustly(arguments: str, expected: dict[str, Any]) -> None:
    """A JSON object parses (control characters repaired); anything else gives {}."""
    assert parse_tool_arguments(arguments) == expected
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    message = from_openai(completion({"tool_calls": [call]}, "tool_calls"), "m")
    tool = message.content[0]
    assert isinstance(tool, an.ToolUseBlock)
    assert tool.input == expected


def test_tool_ids_anthropic_would_refuse_are_replaced() -> None:
    """Ids outside [A-Za-z0-9_-] (or empty) become fresh toolu_ ids."""
    calls = [
        {"id": "functions.get:0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        {"id": "call_OK-1", "type": "function", "function": {"name": "h", "arguments": "{}"}},
    ]
    message = from_openai(completion({"tool_calls": calls}, "tool_calls"), "m")
    ids = [block.id for block in message.content if isinstance(block, an.ToolUseBlock)]
    assert ids[0].startswith("toolu_")
    assert len(ids[0]) == 30
    assert ids[1].startswith("toolu_")
    assert ids[0] != ids[1]
    assert ids[2] == "call_OK-1"


def test_cached_prompt_tokens_are_reported_as_cache_reads() -> None:
    """Cached prompt tokens (vLLM's) become cache_read_input_tokens, out of input_tokens."""
    response = completion({"content": "x"}, "stop")
    response.usage = oa.Usage(
        prompt_tokens=100,
        completion_tokens=5,
        total_tokens=105,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=64),
    )
    usage = from_openai(response, "m").usage
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (36, 64, 5)


def test_a_response_without_choices_is_an_empty_message() -> None:
    """No choice, no usage: no content, end_turn, zero usage."""
    response = decode(
        '{"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []}',
        oa.ChatCompletion,
    )
    message = from_openai(response, "m")
    assert message.content == []
    assert message.stop_reason == "end_turn"
    assert message.usage == an.Usage(input_tokens=0, output_tokens=0)


def test_the_sdk_reads_a_translated_response() -> None:
    """The anthropic client parses from_openai's JSON into its Message type."""
    response = decode(fixture_json("openai/vllm_chat_response_tool_calls.json"), oa.ChatCompletion)
    body = encode(from_openai(response, "claude-x"))
    with sdk_client(body, "application/json") as client:
        message = client.messages.create(
            model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "x"}]
        )
    assert [block.type for block in message.content] == ["thinking", "tool_use", "tool_use"]
    assert blocks_of(message)[1:] == [
        ("tool_use", "add", {"a": 3, "b": 5}),
        ("tool_use", "multiply", {"a": 8, "b": 8}),
    ]
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 378
