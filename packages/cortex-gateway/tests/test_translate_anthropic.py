"""Anthropic Messages over OpenAI chat: requests, responses, SSE framing and streams.

Streams are checked twice: by a pure validator of Anthropic's event grammar
and by the real ``anthropic`` SDK's accumulator and client.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent, TextBlock, ThinkingBlock, ToolUseBlock
from anthropic.types.parsed_message import ParsedMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jiter import from_json
from pydantic import TypeAdapter

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import decode, encode, to_builtins
from cortex_gateway.translate.anthropic import (
    SseDecoder,
    StreamTranslator,
    error_type_for_status,
    from_openai,
    openai_messages_for_tokenize,
    parse_tool_arguments,
    sse_event,
    to_openai,
)

MODEL = "Qwen/Qwen3-8B"
HERE = Path(__file__).parent
GATEWAY_FIXTURES = HERE / "fixtures"
CORE_FIXTURES = HERE.parents[1] / "cortex-core" / "tests" / "fixtures"
SDK_EVENT: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- helpers -----------------------------------------------------------------------------------


def messages_request(body: dict[str, Any]) -> an.MessagesRequest:
    """A Messages request decoded as the HTTP layer decodes it (model and max_tokens filled)."""
    return decode(json.dumps({"model": "claude-x", "max_tokens": 64, **body}), an.MessagesRequest)


def openai_body(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI JSON that a Messages body translates to."""
    result: dict[str, Any] = json.loads(encode(to_openai(messages_request(body), MODEL)))
    return result


def fixture_json(name: str) -> bytes:
    """A cortex-core fixture file's bytes."""
    return (CORE_FIXTURES / name).read_bytes()


def chunk(
    delta: dict[str, Any], finish: str | None = None, **choice: Any
) -> oa.ChatCompletionChunk:
    """A vLLM-shaped chunk carrying one delta for choice 0."""
    body = {
        "id": "chatcmpl-t",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}],
    }
    return decode(json.dumps(body), oa.ChatCompletionChunk)


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> oa.ChatCompletionChunk:
    """The final ``include_usage`` chunk: no choices, only usage."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    return decode(json.dumps({**body, "choices": [], "usage": usage}), oa.ChatCompletionChunk)


def tool_delta(index: int, **fields: Any) -> dict[str, Any]:
    """A delta with one tool call piece (``id``, ``name``, ``arguments`` as given)."""
    call: dict[str, Any] = {"index": index}
    if "id" in fields:
        call["id"] = fields.pop("id")
        call["type"] = "function"
    if fields:
        call["function"] = fields
    return {"tool_calls": [call]}


def translate(chunks: Iterable[oa.ChatCompletionChunk], **options: Any) -> list[an.StreamEvent]:
    """Every event a translator gives for ``chunks``, from start to finish."""
    translator = StreamTranslator(MODEL, **options)
    events = translator.start()
    for item in chunks:
        events += translator.feed(item)
    return events + translator.finish()


def wire(events: Iterable[an.StreamEvent]) -> list[dict[str, Any]]:
    """Events as the JSON a client reads."""
    return [json.loads(encode(event)) for event in events]


ALLOWED_DELTAS = {
    "text": {"text_delta", "citations_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


def check_grammar(events: list[dict[str, Any]]) -> None:
    """Fail unless ``events`` follow the Messages stream grammar Anthropic clients expect."""
    assert events, "no events"
    first = events[0]
    assert first["type"] == "message_start", first
    assert first["message"]["content"] == []
    assert first["message"]["usage"]["output_tokens"] == 0
    open_block: tuple[int, str] | None = None
    next_index = 0
    phase = "blocks"
    for position, event in enumerate(events[1:], start=1):
        kind = event["type"]
        assert phase != "stopped", f"{kind} after message_stop"
        if kind == "ping":
            continue
        if kind == "error":
            assert position == len(events) - 1, "an error event must be the last"
            assert event["error"]["type"]
            assert event["error"]["message"]
            return
        if kind == "content_block_start":
            assert phase == "blocks", event
            assert open_block is None, event
            assert event["index"] == next_index, (event, next_index)
            block_type = event["content_block"]["type"]
            assert block_type in ALLOWED_DELTAS, event
            open_block = (next_index, block_type)
            next_index += 1
        elif kind == "content_block_delta":
            assert open_block is not None, event
            assert event["index"] == open_block[0], event
            assert event["delta"]["type"] in ALLOWED_DELTAS[open_block[1]], event
        elif kind == "content_block_stop":
            assert open_block is not None, event
            assert event["index"] == open_block[0], event
            open_block = None
        elif kind == "message_delta":
            assert phase == "blocks", event
            assert open_block is None, event
            assert event["delta"]["stop_reason"] is not None
            assert isinstance(event["usage"]["output_tokens"], int)
            phase = "delta"
        elif kind == "message_stop":
            assert phase == "delta", "message_stop without message_delta"
            phase = "stopped"
        else:
            raise AssertionError(f"unknown event {kind}")
    assert phase == "stopped", "the stream did not end with message_stop"


def sdk_message(events: Iterable[an.StreamEvent]) -> ParsedMessage[None]:
    """The message the anthropic SDK accumulates from ``events`` (it skips pings, as its stream)."""
    snapshot: ParsedMessage[None] | None = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        if isinstance(event, an.Ping):
            continue
        raw = SDK_EVENT.validate_python(json.loads(encode(event)))
        snapshot = accumulate_event(event=raw, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return snapshot


def blocks_of(message: anthropic.types.Message) -> list[tuple[Any, ...]]:
    """A message's content as comparable tuples."""
    out: list[tuple[Any, ...]] = []
    for block in message.content:
        if isinstance(block, ThinkingBlock):
            out.append(("thinking", block.thinking))
        elif isinstance(block, TextBlock):
            out.append(("text", block.text))
        elif isinstance(block, ToolUseBlock):
            out.append(("tool_use", block.name, block.input))
        else:  # pragma: no cover - nothing else is produced
            raise AssertionError(block)
    return out


def sdk_client(body: bytes, content_type: str) -> anthropic.Anthropic:
    """An SDK client whose every request is answered with ``body``."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    transport = httpx2.MockTransport(answer)
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


# --- requests ----------------------------------------------------------------------------------


def test_text_turns_and_a_system_string_become_chat_messages() -> None:
    """A system string leads; string turns keep their roles and text."""
    body = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
        ],
    }
    assert openai_body(body) == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        "max_tokens": 64,
    }


def test_system_text_blocks_are_joined_with_newlines() -> None:
    """System text blocks (cache_control and all) become one system string."""
    body = {
        "system": [
            {"type": "text", "text": "You analyse novels."},
            {"type": "text", "text": "<novel>", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": "Themes?"}],
    }
    assert openai_body(body)["messages"][0] == {
        "role": "system",
        "content": "You analyse novels.\n<novel>",
    }


def test_empty_system_adds_no_message() -> None:
    """An empty system string or block list adds no system message."""
    system: str | list[Any]
    for system in ("", []):
        messages = openai_body({"system": system, "messages": [{"role": "user", "content": "x"}]})
        assert messages["messages"] == [{"role": "user", "content": "x"}]


def test_sampling_settings_and_metadata_map_to_openai_fields() -> None:
    """stop_sequences, temperature, top_p, top_k, max_tokens and metadata.user_id carry over."""
    request = decode(fixture_json("anthropic/messages_request_full.json"), an.MessagesRequest)
    assert json.loads(encode(to_openai(request, MODEL))) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Generate text until you say END"}],
        "max_tokens": 1024,
        "temperature": 1.0,
        "top_p": 0.7,
        "stop": ["END", "STOP"],
        "user": "13803d75-b4b5-4c3e-b2a2-6f21399b021b",
        "top_k": 5,
    }


def test_base64_and_url_images_become_image_url_parts() -> None:
    """Base64 images become data URLs, URL images keep their URL, text parts stay in order."""
    request = decode(fixture_json("anthropic/messages_request_image.json"), an.MessagesRequest)
    data = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/"
        "pLvAAAAAElFTkSuQmCC"
    )
    url = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
    assert json.loads(encode(to_openai(request, MODEL)))["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Image 1:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "text", "text": "Image 2:"},
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "How are these images different?"},
            ],
        }
    ]


def test_a_tool_conversation_keeps_tool_messages_after_their_call() -> None:
    """tool_use becomes tool_calls; each tool_result a tool message; is_error is spelled out."""
    request = decode(fixture_json("anthropic/messages_request_tools.json"), an.MessagesRequest)
    out = json.loads(encode(to_openai(request, MODEL)))

    def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
        return {
            "type": "function",
            "id": call_id,
            "function": {"name": name, "arguments": arguments},
        }

    assert out["messages"] == [
        {"role": "user", "content": "What's the weather in SF and NYC, and what time is it there?"},
        {
            "role": "assistant",
            "content": "I'll check the weather and time for both San Francisco and New York City.",
            "tool_calls": [
                call("toolu_01", "get_weather", '{"location": "San Francisco, CA"}'),
                call("toolu_02", "get_weather", '{"location": "New York, NY"}'),
                call("toolu_03", "get_time", '{"timezone": "America/Los_Angeles"}'),
                call("toolu_04", "get_time", '{"timezone": "America/New_York"}'),
            ],
        },
        {
            "role": "tool",
            "content": "San Francisco: 68°F, partly cloudy",
            "tool_call_id": "toolu_01",
        },
        {
            "role": "tool",
            "content": (
                "Error: ConnectionError: the weather service API is not available (HTTP 500)"
            ),
            "tool_call_id": "toolu_02",
        },
        {"role": "tool", "content": "San Francisco time: 2:30 PM PST", "tool_call_id": "toolu_03"},
        {"role": "tool", "content": "New York time: 5:30 PM EST", "tool_call_id": "toolu_04"},
    ]
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {
                            "type": "string",
                            "description": "The city and state, e.g. San Francisco, CA",
                        }
                    },
                    "required": ["location"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "Get the current time in a given timezone",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "timezone": {
                            "type": "string",
                            "description": "The timezone, e.g. America/New_York",
                        }
                    },
                    "required": ["timezone"],
                },
            },
        },
    ]
    assert out["tool_choice"] == "auto"
    assert "parallel_tool_calls" not in out


def test_thinking_request_passes_earlier_thinking_as_reasoning() -> None:
    """Extended thinking turns the template's thinking on; earlier thinking rides as reasoning."""
    request = decode(fixture_json("anthropic/messages_request_thinking.json"), an.MessagesRequest)
    out = json.loads(encode(to_openai(request, MODEL)))
    assert out["messages"] == [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "id": "toolu_01CswdEQBMshySk6Y9DFKrfq",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
            "reasoning": (
                "The user wants to know the current weather in Paris. "
                "I have access to a function `get_weather`..."
            ),
        },
        {
            "role": "tool",
            "content": "Current temperature: 88°F",
            "tool_call_id": "toolu_01CswdEQBMshySk6Y9DFKrfq",
        },
    ]
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    assert out["max_tokens"] == 16000


TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": True},
            {"tool_choice": "required", "parallel_tool_calls": False},
        ),
        (
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": False},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (None, {}),
    ],
)
def test_tool_choice_maps_to_openai(
    choice: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    """auto, any, tool and none map to auto, required, a named function and none."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "tools": [TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    out = openai_body(body)
    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]


def test_server_tools_without_a_schema_are_skipped() -> None:
    """Server tools (no input_schema) are left out; with none left, tool_choice goes too."""
    web = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    out = openai_body(
        {"messages": [{"role": "user", "content": "x"}], "tools": [web, {**TOOL, "type": "custom"}]}
    )
    assert [tool["function"]["name"] for tool in out["tools"]] == ["get_weather"]
    only_server = openai_body(
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [web],
            "tool_choice": {"type": "any"},
        }
    )
    assert "tools" not in only_server
    assert "tool_choice" not in only_server


@pytest.mark.parametrize(
    ("thinking", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 2048}, {"enable_thinking": True}),
        ({"type": "adaptive"}, {"enable_thinking": True}),
        ({"type": "disabled"}, {"enable_thinking": False}),
        (None, None),
    ],
)
def test_thinking_settings_switch_the_templates_thinking(
    thinking: dict[str, Any] | None, expected: dict[str, Any] | None
) -> None:
    """Thinking enabled and adaptive turn it on, disabled off; absent leaves the model's default."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}]}
    if thinking is not None:
        body["thinking"] = thinking
    assert openai_body(body).get("chat_template_kwargs") == expected


def test_streaming_requests_ask_for_usage() -> None:
    """A stream asks vLLM for the final usage chunk; a non-streaming request sets neither."""
    streaming = openai_body({"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert streaming["stream"] is True
    assert streaming["stream_options"] == {"include_usage": True}
    plain = openai_body({"messages": [{"role": "user", "content": "x"}], "stream": False})
    assert "stream" not in plain
    assert "stream_options" not in plain


def test_tool_result_content_blocks_are_joined_and_errors_marked() -> None:
    """Text blocks of a result are joined by newlines; is_error prefixes; no content is empty."""
    body = {
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": f"toolu_{i}", "name": "f", "input": {}}
                    for i in range(4)
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_0",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "boom"}],
                        "is_error": True,
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_3",
                        "content": [],
                        "is_error": False,
                    },
                ],
            },
        ]
    }
    assert openai_body(body)["messages"][2:] == [
        {"role": "tool", "content": "a\nb", "tool_call_id": "toolu_0"},
        {"role": "tool", "content": "Error: boom", "tool_call_id": "toolu_1"},
        {"role": "tool", "content": "", "tool_call_id": "toolu_2"},
        {"role": "tool", "content": "", "tool_call_id": "toolu_3"},
    ]


def test_tool_result_images_follow_in_a_user_message() -> None:
    """Images in a tool result go in a user message after the tool messages, labelled."""
    png = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    body = {
        "messages": [
            {"role": "user", "content": "screenshot please"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_s", "name": "shot", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here it is."},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_s",
                        "content": [
                            {"type": "text", "text": "1 image"},
                            {"type": "image", "source": png},
                        ],
                    },
                ],
            },
        ]
    }
    assert openai_body(body)["messages"][2:] == [
        {"role": "tool", "content": "1 image", "tool_call_id": "toolu_s"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Image returned by tool call toolu_s:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "Here it is."},
            ],
        },
    ]


def test_assistant_blocks_give_content_reasoning_and_tool_calls() -> None:
    """Text joins, thinking becomes reasoning, redacted thinking goes; empty turns are skipped."""
    body = {
        "messages": [
            {"role": "user", "content": "a"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "one"},
                    {"type": "text", "text": "two"},
                    {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {"k": ["é", 1.5]}},
                ],
            },
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"}]},
            {"role": "assistant", "content": ""},
        ]
    }
    assert openai_body(body)["messages"] == [
        {"role": "user", "content": "a"},
        {
            "role": "assistant",
            "content": "one\ntwo",
            "tool_calls": [
                {
                    "type": "function",
                    "id": "toolu_x",
                    "function": {"name": "f", "arguments": '{"k": ["é", 1.5]}'},
                }
            ],
            "reasoning": "hmm",
        },
        {"role": "user", "content": "b"},
    ]


def test_documents_and_file_images_become_text() -> None:
    """Plain-text documents are inlined; other documents and file images leave a note."""
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "Notes",
                        "source": {"type": "text", "media_type": "text/plain", "data": "hello"},
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "content",
                            "content": [
                                {"type": "text", "text": "x"},
                                {"type": "text", "text": "y"},
                            ],
                        },
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBE",
                        },
                    },
                    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                ],
            }
        ]
    }
    assert openai_body(body)["messages"][0]["content"] == [
        {"type": "text", "text": "Notes\nhello"},
        {"type": "text", "text": "x\ny"},
        {"type": "text", "text": "[document (application/pdf) is not supported here]"},
        {"type": "text", "text": "[image file file_1 is not available here]"},
    ]


def test_count_tokens_request_translates_without_generation_settings() -> None:
    """A count_tokens request gives the same messages and no max_tokens."""
    request = decode(fixture_json("anthropic/count_tokens_request.json"), an.CountTokensRequest)
    assert json.loads(encode(to_openai(request, MODEL))) == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a scientist"},
            {"role": "user", "content": "Hello, Claude"},
        ],
    }


def test_tokenize_messages_are_plain_dicts() -> None:
    """The tokenize view is the translated messages and tools as plain JSON values."""
    request = decode(fixture_json("anthropic/messages_request_tools.json"), an.CountTokensRequest)
    messages, tools = openai_messages_for_tokenize(request)
    translated = to_openai(request, request.model)
    assert messages == to_builtins(translated.messages)
    assert tools == to_builtins(translated.tools)
    assert json.loads(json.dumps(messages)) == messages
    bare = an.CountTokensRequest(model="m", messages=[an.MessageParam(role="user", content="x")])
    assert openai_messages_for_tokenize(bare) == ([{"role": "user", "content": "x"}], None)


# --- responses ---------------------------------------------------------------------------------


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


# --- SSE framing -------------------------------------------------------------------------------


def test_sse_event_writes_event_and_data_lines() -> None:
    """Each event is framed as `event: <type>`, `data: <json>` and a blank line."""
    assert sse_event(an.Ping()) == b'event: ping\ndata: {"type":"ping"}\n\n'
    delta = an.ContentBlockDelta(index=2, delta=an.TextDelta(text="hé"))
    assert sse_event(delta) == (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":2,'
        b'"delta":{"type":"text_delta","text":"h\xc3\xa9"}}\n\n'
    )


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"data: a\n\ndata: b\n\n"], ["a", "b"]),
        ([b"data: a\r\n\r\ndata: b\r\n\r\n"], ["a", "b"]),
        ([b"data: a\r\rdata: b\r\r"], ["a", "b"]),
        ([b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"], ["a", "b"]),
        ([b"data: a\r", b"\ndata: b\n\n"], ["a\nb"]),
        ([b": comment\nevent: x\nid: 7\nretry: 10\ndata: a\n\n"], ["a"]),
        ([b'data: {\ndata:  "k": 1\ndata: }\n\n'], ['{\n "k": 1\n}']),
        ([b"data:a\ndata\n\n"], ["a\n"]),
        ([b"\xef\xbb\xbfdata: a\n\n"], ["a"]),
        ([b"\xef", b"\xbb\xbf", b"data: a\n\n"], ["a"]),
        ([b"data: caf\xc3", b"\xa9\n\n"], ["caf\u00e9"]),
        ([b"\n\n: only a comment\n\n"], []),
        ([b"data: a\n\ndata: [DONE]\n\ndata: b\n\n", b"data: c\n\n"], ["a", "[DONE]"]),
        ([b"data: [DONE]\r\n\r\n"], ["[DONE]"]),
        ([b"data: a\n\ndata: unfinished\n"], ["a"]),
        (["data: a\u2028b\n\n".encode()], ["a\u2028b"]),
    ],
)
def test_sse_decoder_cases(pieces: list[bytes], expected: list[str]) -> None:
    """Line endings, comments, fields, multi-line data, BOM, UTF-8 cuts and [DONE]."""
    decoder = SseDecoder()
    payloads = [payload for piece in pieces for payload in decoder.feed(piece)]
    assert payloads == expected
    assert decoder.done == ("[DONE]" in expected)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (503, "overloaded_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
        (502, "api_error"),
        (422, "api_error"),
    ],
)
def test_error_types_for_upstream_statuses(status: int, expected: str) -> None:
    """OpenAI error statuses map to Anthropic error types; the rest are api_error."""
    assert error_type_for_status(status) == expected


# --- recorded streams --------------------------------------------------------------------------


@dataclass
class Expect:
    """What a recorded stream must translate to."""

    blocks: list[tuple[Any, ...]]
    stop_reason: str
    usage: tuple[int, int]
    stop_sequence: str | None = None
    stop_sequences: list[str] | None = field(default=None)


RECORDED: dict[str, Expect] = {
    "vllm_qwen3_reasoning_text.jsonl": Expect(
        [
            ("thinking", "Okay, the user says hi. I should greet them back.\n"),
            ("text", "Hello! How can I help you today? ☀️"),
        ],
        "end_turn",
        (57, 34),
    ),
    "vllm_qwen3_hermes_two_tools.jsonl": Expect(
        [
            (
                "thinking",
                "The user wants the weather in Paris and the time there. "
                "I should call get_weather and get_time.\n",
            ),
            ("text", "Let me check both.\n"),
            ("tool_use", "get_weather", {"location": "Paris, France", "unit": "celsius"}),
            ("tool_use", "get_time", {"timezone": "Europe/Paris"}),
        ],
        "tool_use",
        (57, 89),
    ),
    "vllm_qwen3_hermes_tool_only.jsonl": Expect(
        [
            (
                "tool_use",
                "get_weather",
                {
                    "location": 'Zürich "CH"\n',
                    "days": [1, 25.0, -3],
                    "detail": {"wind": True, "rain": None},
                },
            )
        ],
        "tool_use",
        (57, 71),
    ),
    "vllm_qwen3_stop_sequence.jsonl": Expect(
        [("thinking", "Count to five.\n"), ("text", "1, 2, 3")],
        "stop_sequence",
        (57, 16),
        stop_sequence="END",
        stop_sequences=["END", "STOP"],
    ),
    "vllm_qwen3_length.jsonl": Expect(
        [("thinking", "This is a long thought that gets cut")], "max_tokens", (57, 10)
    ),
    "core:chat_stream_tool_calls.jsonl": Expect(
        [
            ("tool_use", "GetWeatherArgs", {"city": "Edinburgh", "country": "GB", "units": "c"}),
            ("tool_use", "get_stock_price", {"ticker": "AAPL", "exchange": "NASDAQ"}),
        ],
        "tool_use",
        (149, 60),
    ),
    "core:vllm_chat_stream_reasoning.jsonl": Expect(
        [("thinking", "好的\uff0c用户")], "end_turn", (7, 3)
    ),
    "core:chat_stream_usage.jsonl": Expect([("text", "Hi, how are you?")], "end_turn", (10, 5)),
    "core:chat_stream_basic.jsonl": Expect([("text", "Hello")], "end_turn", (7, 1)),
}


def recorded_lines(name: str) -> list[str]:
    """The chunk JSON lines of a recorded stream."""
    if name.startswith("core:"):
        path = CORE_FIXTURES / "openai" / name.removeprefix("core:")
    else:
        path = GATEWAY_FIXTURES / name
    return path.read_text(encoding="utf-8").splitlines()


def usage_from(lines: list[str]) -> tuple[int, int] | None:
    """The (prompt, completion) tokens of a stream's usage chunk, if it has one."""
    for line in lines:
        usage = json.loads(line).get("usage")
        if usage:
            return usage["prompt_tokens"], usage["completion_tokens"]
    return None


def sse_bytes(lines: list[str], style: str) -> bytes:
    """A stream's chunks framed as an OpenAI server would: vLLM's way, or awkward ones."""
    if style == "vllm":
        return "".join(f"data: {line}\n\n" for line in lines).encode() + b"data: [DONE]\n\n"
    if style == "crlf":
        body = "".join(f": keep-alive\r\nevent: chunk\r\ndata: {line}\r\n\r\n" for line in lines)
        return body.encode() + b"data: [DONE]\r\n\r\n"
    assert style == "multiline"
    parts = []
    for line in lines:
        pretty = json.dumps(json.loads(line), indent=1, ensure_ascii=False)
        parts.append("".join(f"data:{row}\r" for row in pretty.split("\n")) + "\r")
    return "".join(parts).encode() + b"data:[DONE]\r\r"


def run_stream(fragments: Iterable[bytes], expect: Expect) -> list[an.StreamEvent]:
    """Decode SSE fragments and translate every payload as it completes."""
    decoder = SseDecoder()
    translator = StreamTranslator("claude-x", input_tokens=7, stop_sequences=expect.stop_sequences)
    events = translator.start()
    for fragment in fragments:
        for payload in decoder.feed(fragment):
            events += translator.feed_payload(payload)
    return events + translator.finish()


def check_recorded(events: list[an.StreamEvent], name: str) -> None:
    """The grammar holds and the SDK's message matches what the recording says."""
    expect = RECORDED[name]
    check_grammar(wire(events))
    message = sdk_message(events)
    assert blocks_of(message) == expect.blocks
    assert message.stop_reason == expect.stop_reason
    assert message.stop_sequence == expect.stop_sequence
    usage = (message.usage.input_tokens, message.usage.output_tokens)
    assert usage == expect.usage
    recorded = usage_from(recorded_lines(name))
    assert recorded in (None, expect.usage)
    assert message.model == "claude-x"
    assert message.id.startswith("msg_")


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_split_at_every_byte(name: str) -> None:
    """Cut in two at every byte, a stream decodes to the same payloads; they translate right.

    The translator sees only the payload sequence, so equal payloads for every cut
    mean equal events; those events are checked once with the grammar and the SDK.
    """
    lines = recorded_lines(name)
    data = sse_bytes(lines, "vllm")
    expected = [*lines, "[DONE]"]
    for cut in range(len(data) + 1):
        decoder = SseDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == expected, cut
    check_recorded(run_stream([data], RECORDED[name]), name)


@FAST
@given(
    name=st.sampled_from(sorted(RECORDED)),
    style=st.sampled_from(["vllm", "crlf", "multiline"]),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=12),
)
def test_recorded_stream_in_random_fragments(name: str, style: str, cuts: list[float]) -> None:
    """Any framing, cut into many fragments and translated as it arrives, gives the same message."""
    data = sse_bytes(recorded_lines(name), style)
    points = sorted({int(cut * len(data)) for cut in cuts})
    fragments = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    check_recorded(run_stream(fragments, RECORDED[name]), name)


def test_the_sdk_client_streams_a_translated_recording() -> None:
    """The anthropic client's MessageStream reads the translated SSE bytes to a final message."""
    name = "vllm_qwen3_hermes_two_tools.jsonl"
    events = run_stream([sse_bytes(recorded_lines(name), "vllm")], RECORDED[name])
    body = b"".join(sse_event(event) for event in events)
    with (
        sdk_client(body, "text/event-stream") as client,
        client.messages.stream(
            model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert "".join(texts) == "Let me check both.\n"
    assert blocks_of(message) == RECORDED[name].blocks
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 89


# --- stream edge cases -------------------------------------------------------------------------


def test_start_gives_message_start_and_ping() -> None:
    """message_start has no content, the given input tokens and zero output; then a ping."""
    translator = StreamTranslator("claude-x", input_tokens=42)
    first, second = wire(translator.start())
    assert first == {
        "type": "message_start",
        "message": {
            "type": "message",
            "id": translator.message_id,
            "model": "claude-x",
            "content": [],
            "role": "assistant",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 42,
                "output_tokens": 0,
                "cache_creation_input_tokens": None,
                "cache_read_input_tokens": None,
                "service_tier": None,
            },
        },
    }
    assert second == {"type": "ping"}
    assert translator.start() == []


def test_text_right_after_thinking_opens_a_new_block() -> None:
    """Reasoning then content (in one delta or two) close the thinking block and open text."""
    for chunks in (
        [chunk({"reasoning": "think"}), chunk({"content": "answer"}, "stop")],
        [chunk({"reasoning": "think", "content": "answer"}, "stop")],
        [chunk({"reasoning_content": "think"}), chunk({"content": "answer"}, "stop")],
    ):
        events = translate(chunks)
        check_grammar(wire(events))
        assert [e["type"] for e in wire(events)] == [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        starts = [e for e in wire(events) if e["type"] == "content_block_start"]
        assert starts == [
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        ]
        assert blocks_of(sdk_message(events)) == [("thinking", "think"), ("text", "answer")]


def test_empty_tool_call_lists_are_ignored() -> None:
    """`tool_calls: []` next to content neither opens a block nor changes the stop reason."""
    events = translate(
        [
            chunk({"content": "a", "tool_calls": []}),
            chunk({"tool_calls": []}),
            chunk({"content": "b", "tool_calls": []}, "stop"),
        ]
    )
    check_grammar(wire(events))
    message = sdk_message(events)
    assert blocks_of(message) == [("text", "ab")]
    assert message.stop_reason == "end_turn"


def test_two_tool_calls_in_one_turn_get_two_blocks() -> None:
    """Calls at index 0 and 1, even in one chunk, become blocks 1 and 2 after the text."""
    two = {
        "tool_calls": [
            {"index": 0, "function": {"arguments": '"x"}'}},
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g"}},
            {"index": 1, "function": {"arguments": "{}"}},
        ]
    }
    events = translate(
        [
            chunk({"content": "Calling."}),
            chunk(tool_delta(0, id="call_a", name="f", arguments="")),
            chunk(tool_delta(0, arguments='{"q": ')),
            chunk(two),
            chunk({}, "tool_calls"),
        ]
    )
    check_grammar(wire(events))
    message = sdk_message(events)
    assert blocks_of(message) == [
        ("text", "Calling."),
        ("tool_use", "f", {"q": "x"}),
        ("tool_use", "g", {}),
    ]
    assert [b.id for b in message.content if isinstance(b, ToolUseBlock)] == ["call_a", "call_b"]
    assert message.stop_reason == "tool_use"


def test_tool_names_and_arguments_split_across_chunks() -> None:
    """A name in pieces waits for its first arguments; escapes cut in two arrive whole."""
    events = translate(
        [
            chunk(tool_delta(0, id="call_1")),
            chunk(tool_delta(0, name="get_")),
            chunk(tool_delta(0, name="weather")),
            chunk(tool_delta(0, arguments='{"city": "Z\\u00')),
            chunk(tool_delta(0, arguments="fcrich\\")),
            chunk(tool_delta(0, arguments='n", "n": 1')),
            chunk(tool_delta(0, arguments=".5}")),
            chunk({}, "tool_calls"),
        ]
    )
    check_grammar(wire(events))
    starts = [e for e in wire(events) if e["type"] == "content_block_start"]
    assert starts[0]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    pieces = [
        e["delta"]["partial_json"] for e in wire(events) if e["type"] == "content_block_delta"
    ]
    assert pieces == ['{"city": "Z', "\\u00fcrich", '\\n", "n": 1', ".5}"]
    assert blocks_of(sdk_message(events)) == [
        ("tool_use", "get_weather", {"city": "Zürich\n", "n": 1.5})
    ]


def test_tool_calls_without_arguments_or_id_still_become_blocks() -> None:
    """A call that never gets arguments starts at the end with {}; a missing id gets toolu_."""
    events = translate(
        [chunk(tool_delta(0, name="now")), chunk(tool_delta(1, name="later")), chunk({}, "stop")]
    )
    check_grammar(wire(events))
    message = sdk_message(events)
    assert blocks_of(message) == [("tool_use", "now", {}), ("tool_use", "later", {})]
    ids = [block.id for block in message.content if isinstance(block, ToolUseBlock)]
    assert all(tool_id.startswith("toolu_") for tool_id in ids)
    assert message.stop_reason == "tool_use"


def test_a_call_with_no_name_is_dropped() -> None:
    """Arguments with no name ever make no block, and no tool_use stop reason."""
    events = translate([chunk(tool_delta(0, arguments="{}")), chunk({}, "tool_calls")])
    check_grammar(wire(events))
    message = sdk_message(events)
    assert message.content == []
    assert message.stop_reason == "end_turn"


def test_content_after_tool_calls_opens_a_text_block_and_late_pieces_are_dropped() -> None:
    """Text after a call closes its block; arguments for it that come later are dropped."""
    events = translate(
        [
            chunk(tool_delta(0, id="call_1", name="f", arguments='{"a": 1')),
            chunk({"content": "done"}),
            chunk(tool_delta(0, arguments=', "b": 2}')),
            chunk({}, "tool_calls"),
        ]
    )
    check_grammar(wire(events))
    assert blocks_of(sdk_message(events)) == [("tool_use", "f", {"a": 1}), ("text", "done")]


def test_bad_arguments_stop_at_the_last_good_character() -> None:
    """Arguments that break JSON are passed on up to the break; the SDK keeps that part."""
    events = translate(
        [
            chunk(tool_delta(0, id="call_1", name="f", arguments='  {"a": 1, ')),
            chunk(tool_delta(0, arguments="oops}")),
            chunk({}, "tool_calls"),
        ]
    )
    check_grammar(wire(events))
    pieces = [
        e["delta"]["partial_json"] for e in wire(events) if e["type"] == "content_block_delta"
    ]
    assert pieces == ['{"a": 1, ']
    assert blocks_of(sdk_message(events)) == [("tool_use", "f", {"a": 1})]


def test_leading_whitespace_makes_no_block() -> None:
    """Qwen3's blank reasoning and the newlines after it open no block."""
    events = translate(
        [
            chunk({"reasoning": "\n"}),
            chunk({"reasoning": "\n"}),
            chunk({"content": "\n\n"}),
            chunk({"content": " Hi"}),
            chunk({"content": "\n"}, "stop"),
        ]
    )
    check_grammar(wire(events))
    assert blocks_of(sdk_message(events)) == [("text", "Hi\n")]


def test_usage_and_stop_sequence_reach_message_delta() -> None:
    """The final usage chunk gives output and input tokens; a matched stop string is named."""
    events = translate(
        [chunk({"content": "1, 2"}, "stop", stop_reason="STOP"), usage_chunk(30, 4, cached=10)],
        input_tokens=5,
        stop_sequences=["END", "STOP"],
    )
    assert wire(events)[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "stop_sequence", "stop_sequence": "STOP"},
        "usage": {
            "output_tokens": 4,
            "input_tokens": 20,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": 10,
        },
    }
    message = sdk_message(events)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 4)


def test_without_usage_output_tokens_count_the_chunks() -> None:
    """No usage chunk: output_tokens counts the chunks that carried output."""
    events = translate(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "a"}),
            chunk({"content": "b"}),
        ]
    )
    assert wire(events)[-2]["usage"]["output_tokens"] == 2
    assert wire(events)[-2]["delta"]["stop_reason"] == "end_turn"


def test_other_choices_are_ignored() -> None:
    """Only choice 0 is translated."""
    other = chunk({"content": "nope"})
    other.choices[0].index = 1
    events = translate([other, chunk({"content": "yes"}, "stop")])
    assert blocks_of(sdk_message(events)) == [("text", "yes")]


def test_the_translator_starts_itself_and_ends_once() -> None:
    """Feeding before start starts the stream; after finish, feed and finish give nothing."""
    translator = StreamTranslator("claude-x")
    events = translator.feed(chunk({"content": "a"}))
    assert [e["type"] for e in wire(events)][:2] == ["message_start", "ping"]
    events += translator.finish()
    assert translator.done
    assert translator.finish() == []
    assert translator.feed(chunk({"content": "b"})) == []
    assert translator.fail("late") == []
    check_grammar(wire(events))


def test_failure_mid_stream_is_a_bare_error_event() -> None:
    """fail() ends the stream with one error event, the open block left as it was."""
    translator = StreamTranslator("claude-x")
    events = translator.start() + translator.feed(chunk({"content": "partial"}))
    events += translator.fail("the model server went away", "overloaded_error")
    assert wire(events)[-1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "the model server went away"},
    }
    assert wire(events)[-2]["type"] == "content_block_delta"
    check_grammar(wire(events))
    assert translator.finish() == []
    assert translator.feed(chunk({"content": "more"})) == []


def test_the_sdk_client_raises_on_a_mid_stream_error() -> None:
    """The anthropic client turns the error event into an APIStatusError."""
    translator = StreamTranslator("claude-x")
    events = translator.start() + translator.feed(chunk({"content": "partial"}))
    events += translator.fail("upstream failed")
    body = b"".join(sse_event(event) for event in events)
    with sdk_client(body, "text/event-stream") as client:
        stream = client.messages.create(
            model="claude-x",
            max_tokens=64,
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
        with stream, pytest.raises(anthropic.APIStatusError, match="upstream failed"):
            list(stream)


def test_feed_payload_handles_done_and_upstream_errors() -> None:
    """[DONE] finishes; a vLLM error object fails with a generic message and a mapped type."""
    translator = StreamTranslator("claude-x")
    events = translator.feed_payload(encode(chunk({"content": "a"})).decode())
    error = {"error": {"message": "secret detail", "type": "BadRequestError", "code": 503}}
    events += translator.feed_payload(json.dumps(error))
    assert wire(events)[-1] == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "the model server failed mid-stream (status 503)",
        },
    }
    assert translator.feed_payload("[DONE]") == []
    garbled = StreamTranslator("claude-x")
    assert wire(garbled.feed_payload("{not json"))[-1]["error"]["type"] == "api_error"
    done = StreamTranslator("claude-x")
    assert [e["type"] for e in wire(done.feed_payload("[DONE]"))][-2:] == [
        "message_delta",
        "message_stop",
    ]


# --- properties: streams -----------------------------------------------------------------------

WORD = st.text(alphabet="abcxyzé☀0_", min_size=1, max_size=5)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,9}", fullmatch=True)


def split_text(draw: st.DrawFn, text: str, most: int) -> list[str]:
    """``text`` cut into 1..most non-empty pieces."""
    if len(text) <= 1:
        return [text]
    points = draw(st.lists(st.integers(1, len(text) - 1), max_size=most - 1, unique=True))
    bounds = [0, *sorted(points), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class Script:
    """A generated chunk sequence and what it must translate to."""

    chunks: list[oa.ChatCompletionChunk]
    thinking: str = ""
    text: str = ""
    tools: list[tuple[str, Any]] = field(default_factory=list)
    finish: str | None = None
    usage: tuple[int, int] | None = None


@st.composite
def chunk_scripts(draw: st.DrawFn, arguments: st.SearchStrategy[str] | None = None) -> Script:
    """Reasoning, content and tool calls in any order, cut anywhere, with noise between."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    script = Script(chunks=[])
    tool_index = 0
    for kind in draw(
        st.lists(st.sampled_from(["reasoning", "content", "both", "tool", "noise"]), max_size=8)
    ):
        if kind in ("reasoning", "both"):
            word = draw(WORD)
            field_name = draw(st.sampled_from(["reasoning", "reasoning_content"]))
            delta: dict[str, Any] = {field_name: word}
            script.thinking += word
            if kind == "both":
                more = draw(WORD)
                delta["content"] = more
                script.text += more
            deltas.append(delta)
        elif kind == "content":
            word = draw(WORD)
            script.text += word
            deltas.append({"content": word})
        elif kind == "noise":
            deltas.append(
                draw(st.sampled_from([{"tool_calls": []}, {}, {"content": ""}, {"content": None}]))
            )
        else:
            name = draw(NAMES)
            if arguments is None:
                value = draw(JSON_OBJECTS)
                text = json.dumps(value, ensure_ascii=draw(st.booleans()))
                script.tools.append((name, value))
            else:
                text = draw(arguments)
                script.tools.append((name, None))
            name_pieces = split_text(draw, name, 3)
            first = tool_delta(tool_index, name=name_pieces[0])
            if draw(st.booleans()):
                first = tool_delta(tool_index, id=f"call_{tool_index}", name=name_pieces[0])
            if draw(st.booleans()):
                first["tool_calls"][0]["function"]["arguments"] = ""
            deltas.append(first)
            deltas += [tool_delta(tool_index, name=piece) for piece in name_pieces[1:]]
            if draw(st.booleans()):
                deltas.append({"tool_calls": []})
            deltas += [
                tool_delta(tool_index, arguments=piece) for piece in split_text(draw, text, 6)
            ]
            tool_index += 1
    script.finish = draw(st.sampled_from(["stop", "length", "tool_calls", None]))
    merged: list[dict[str, Any]] = []
    for delta in deltas:  # vLLM may send pieces of two calls in one chunk
        if (
            merged
            and set(delta) == set(merged[-1]) == {"tool_calls"}
            and delta["tool_calls"]
            and draw(st.booleans())
        ):
            merged[-1] = {"tool_calls": merged[-1]["tool_calls"] + delta["tool_calls"]}
        else:
            merged.append(delta)
    for delta in merged:
        script.chunks.append(chunk(delta))
    script.chunks.append(chunk({}, script.finish))
    if draw(st.booleans()):
        prompt, completion_tokens = draw(st.integers(0, 10**5)), draw(st.integers(0, 10**5))
        script.usage = (prompt, completion_tokens)
        script.chunks.append(usage_chunk(prompt, completion_tokens))
    return script


@FAST
@given(script=chunk_scripts())
def test_any_chunk_sequence_translates_to_what_it_says(script: Script) -> None:
    """Generated streams pass the grammar and the SDK, and keep every text, tool and count."""
    events = translate(script.chunks)
    check_grammar(wire(events))
    message = sdk_message(events)
    blocks = blocks_of(message)
    assert "".join(b[1] for b in blocks if b[0] == "thinking") == script.thinking
    assert "".join(b[1] for b in blocks if b[0] == "text") == script.text
    assert [(b[1], b[2]) for b in blocks if b[0] == "tool_use"] == script.tools
    if script.finish == "length":
        assert message.stop_reason == "max_tokens"
    elif script.tools:
        assert message.stop_reason == "tool_use"
    else:
        assert message.stop_reason == "end_turn"
    if script.usage is not None:
        assert (message.usage.input_tokens, message.usage.output_tokens) == script.usage


@FAST
@given(
    script=chunk_scripts(
        arguments=st.text(alphabet='{}[]":,. \\\nabu0123456789-eEtrnl', max_size=30)
    )
)
def test_any_tool_argument_text_keeps_the_sdk_working(script: Script) -> None:
    """Whatever text the model writes as arguments, the SDK accumulates an object."""
    events = translate(script.chunks)
    check_grammar(wire(events))
    message = sdk_message(events)
    tools = [block for block in message.content if isinstance(block, ToolUseBlock)]
    assert [tool.name for tool in tools] == [name for name, _ in script.tools]
    assert all(isinstance(tool.input, dict) for tool in tools)


def cut_at_drawn_places(text: str, data: st.DataObject) -> list[str]:
    """``text`` cut at drawn places into non-empty pieces."""
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    bounds = [0, *sorted(points), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


@FAST
@given(data=st.data(), value=JSON_OBJECTS, spaced=st.booleans(), ascii_only=st.booleans())
def test_argument_pieces_rebuild_the_object(
    data: st.DataObject, value: dict[str, Any], spaced: bool, ascii_only: bool
) -> None:
    """A JSON object cut anywhere passes whole, and every passed prefix is one jiter accepts."""
    text = json.dumps(value, indent=1 if spaced else None, ensure_ascii=ascii_only)
    pieces = cut_at_drawn_places(text, data)
    events = translate(
        [
            chunk(tool_delta(0, id="call_1", name="f")),
            *(chunk(tool_delta(0, arguments=piece)) for piece in pieces),
            chunk({}, "tool_calls"),
        ]
    )
    passed = ""
    for event in events:
        if isinstance(event, an.ContentBlockDelta) and isinstance(event.delta, an.InputJsonDelta):
            passed += event.delta.partial_json
            from_json(passed.encode(), partial_mode=True)
    assert json.loads(passed) == value
    assert parse_tool_arguments(text) == value


# --- properties: requests ----------------------------------------------------------------------

TOOL_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
TEXT_BLOCKS = st.builds(an.TextBlock, text=st.text(max_size=12))
IMAGE_BLOCKS = st.one_of(
    st.builds(
        lambda media, raw: an.ImageBlock(
            source=an.Base64ImageSource(media_type=media, data=base64.b64encode(raw).decode())
        ),
        st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
        st.binary(max_size=8),
    ),
    st.builds(
        lambda path: an.ImageBlock(source=an.UrlImageSource(url=f"https://example.com/{path}")),
        st.from_regex(r"[a-z0-9]{0,6}\.png", fullmatch=True),
    ),
)
TOOL_USES = st.builds(an.ToolUseBlock, id=TOOL_IDS, name=NAMES, input=JSON_OBJECTS)
TOOL_RESULTS = st.builds(
    an.ToolResultBlock,
    tool_use_id=TOOL_IDS,
    content=st.none() | st.text(max_size=12) | st.lists(TEXT_BLOCKS | IMAGE_BLOCKS, max_size=3),
    is_error=st.none() | st.booleans(),
)
THINKING_BLOCKS = st.builds(
    an.ThinkingBlock, thinking=st.text(max_size=12), signature=st.none() | st.text(max_size=6)
)
USER_BLOCKS: st.SearchStrategy[an.ContentBlock] = TEXT_BLOCKS | IMAGE_BLOCKS | TOOL_RESULTS
ASSISTANT_BLOCKS: st.SearchStrategy[an.ContentBlock] = (
    TEXT_BLOCKS | THINKING_BLOCKS | TOOL_USES | st.just(an.RedactedThinkingBlock(data="r"))
)
USER_CONTENT = st.text(max_size=12) | st.lists(USER_BLOCKS, max_size=4)
ASSISTANT_CONTENT = st.text(max_size=12) | st.lists(ASSISTANT_BLOCKS, max_size=4)
TOOLS = st.builds(
    an.Tool,
    name=NAMES,
    description=st.none() | st.text(max_size=10),
    input_schema=st.none()
    | st.builds(
        lambda props: {"type": "object", "properties": props},
        st.dictionaries(NAMES, st.just({"type": "string"}), max_size=2),
    ),
    type=st.none() | st.sampled_from(["custom", "web_search_20250305"]),
)
TOOL_CHOICES = st.none() | st.one_of(
    st.builds(an.AutoToolChoice, disable_parallel_tool_use=st.none() | st.booleans()),
    st.builds(an.AnyToolChoice, disable_parallel_tool_use=st.none() | st.booleans()),
    st.builds(an.NamedToolChoice, name=NAMES, disable_parallel_tool_use=st.none() | st.booleans()),
    st.just(an.NoneToolChoice()),
)
THINKING = st.none() | st.one_of(
    st.builds(an.ThinkingEnabled, budget_tokens=st.integers(1024, 32000)),
    st.just(an.ThinkingDisabled()),
    st.just(an.ThinkingAdaptive()),
)


@st.composite
def messages_requests(draw: st.DrawFn) -> an.MessagesRequest:
    """Valid Messages requests with every kind of block, tool and setting."""
    turns: list[an.MessageParam] = []
    for _ in range(draw(st.integers(0, 3))):
        turns.append(an.MessageParam(role="user", content=draw(USER_CONTENT)))
        turns.append(an.MessageParam(role="assistant", content=draw(ASSISTANT_CONTENT)))
    turns.append(an.MessageParam(role="user", content=draw(USER_CONTENT)))
    return an.MessagesRequest(
        model="claude-x",
        max_tokens=draw(st.integers(1, 10**6)),
        messages=turns,
        system=draw(st.none() | st.text(max_size=12) | st.lists(TEXT_BLOCKS, max_size=3)),
        stream=draw(st.none() | st.booleans()),
        stop_sequences=draw(st.none() | st.lists(st.text(min_size=1, max_size=5), max_size=3)),
        temperature=draw(st.none() | st.floats(0, 2)),
        top_p=draw(st.none() | st.floats(0, 1)),
        top_k=draw(st.none() | st.integers(0, 500)),
        tools=draw(st.none() | st.lists(TOOLS, max_size=3)),
        tool_choice=draw(TOOL_CHOICES),
        metadata=draw(st.none() | st.builds(an.Metadata, user_id=st.none() | st.text(max_size=8))),
        thinking=draw(THINKING),
    )


def blocks_in(request: an.MessagesRequest, kind: type[Any]) -> list[Any]:
    """Every block of type ``kind`` in the request's turns, in order."""
    return [
        block
        for message in request.messages
        if not isinstance(message.content, str)
        for block in message.content
        if isinstance(block, kind)
    ]


@FAST
@given(built=messages_requests())
def test_every_valid_request_translates(built: an.MessagesRequest) -> None:
    """Any valid request translates to an OpenAI request that survives its own decoder."""
    request = decode(encode(built), an.MessagesRequest)
    out = to_openai(request, MODEL)
    assert decode(encode(out), oa.ChatCompletionRequest) == out
    assert out.max_tokens == request.max_tokens
    assert bool(out.stream) == bool(request.stream)
    results = blocks_in(request, an.ToolResultBlock)
    tool_messages = [m for m in out.messages if isinstance(m, oa.ToolMessage)]
    assert [m.tool_call_id for m in tool_messages] == [r.tool_use_id for r in results]
    uses = blocks_in(request, an.ToolUseBlock)
    calls = [
        call
        for m in out.messages
        if isinstance(m, oa.AssistantMessage)
        for call in m.tool_calls or ()
    ]
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (u.id, u.name, u.input) for u in uses
    ]
    images = blocks_in(request, an.ImageBlock) + [
        item
        for r in results
        if isinstance(r.content, list)
        for item in r.content
        if isinstance(item, an.ImageBlock)
    ]
    image_parts = [
        part
        for m in out.messages
        if isinstance(m, oa.UserMessage) and isinstance(m.content, list)
        for part in m.content
        if isinstance(part, oa.ImageUrlPart)
    ]
    assert len(image_parts) == len(images)
    if not out.tools:
        assert out.tool_choice is None
    for position, message in enumerate(out.messages):
        if isinstance(message, oa.SystemMessage):
            assert position == 0
    counted = decode(encode(built), an.CountTokensRequest)
    counted_out = to_openai(counted, MODEL)
    assert counted_out.messages == out.messages
    assert counted_out.max_tokens is None
    assert openai_messages_for_tokenize(counted)[0] == to_builtins(out.messages)
