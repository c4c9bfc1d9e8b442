"""Anthropic Messages requests as OpenAI chat requests."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from translate_support import (
    JSON_OBJECTS,
    MODEL,
    NAMES,
    fixture_json,
    openai_body,
)

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import decode, encode, to_builtins
from cortex_gateway.translate.anthropic import (
    openai_messages_for_tokenize,
    to_openai,
)


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
    messages, tools, template_kwargs = openai_messages_for_tokenize(request)
    translated = to_openai(request, request.model)
    assert messages == to_builtins(translated.messages)
    assert tools == to_builtins(translated.tools)
    assert template_kwargs is None
    assert json.loads(json.dumps(messages)) == messages
    bare = an.CountTokensRequest(model="m", messages=[an.MessageParam(role="user", content="x")])
    assert openai_messages_for_tokenize(bare) == ([{"role": "user", "content": "x"}], None, None)
    thinking = msgspec.structs.replace(bare, thinking=an.ThinkingDisabled())
    assert openai_messages_for_tokenize(thinking)[2] == {"enable_thinking": False}


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
