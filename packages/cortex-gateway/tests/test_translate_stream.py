"""OpenAI chunk streams as Anthropic stream events, checked by the grammar and by the SDK."""

from __future__ import annotations

import json

import anthropic
import pytest
from anthropic.types import ToolUseBlock
from hypothesis import given
from hypothesis import strategies as st
from translate_support import (
    RECORDED,
    Script,
    blocks_of,
    check_grammar,
    check_recorded,
    chunk,
    chunk_scripts,
    recorded_lines,
    run_stream,
    sdk_client,
    sdk_message,
    sse_bytes,
    tool_delta,
    translate,
    usage_chunk,
    wire,
)

from cortex_core.wire import encode
from cortex_gateway.translate.anthropic import (
    StreamTranslator,
    sse_event,
)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_streams_translate(name: str) -> None:
    """Each recorded vLLM stream translates to what it says (test_sse: cut anywhere, same payloads).

    The translator sees only the payload sequence, so equal payloads for every cut
    mean equal events; those events are checked once with the grammar and the SDK.
    """
    check_recorded(run_stream([sse_bytes(recorded_lines(name), "vllm")], RECORDED[name]), name)


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
