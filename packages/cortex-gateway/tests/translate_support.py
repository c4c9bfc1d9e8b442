"""Shared helpers of the Anthropic translation tests.

Builders of requests and chunks, the Messages stream grammar, the SDK's view of
a stream, recorded vLLM streams, and hypothesis strategies.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent, TextBlock, ThinkingBlock, ToolUseBlock
from anthropic.types.parsed_message import ParsedMessage
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import decode, encode
from cortex_gateway.sse import SseParser
from cortex_gateway.translate.anthropic import (
    StreamTranslator,
    to_openai,
)

MODEL = "Qwen/Qwen3-8B"
HERE = Path(__file__).parent
GATEWAY_FIXTURES = HERE / "fixtures"
CORE_FIXTURES = HERE.parents[1] / "cortex-core" / "tests" / "fixtures"
SDK_EVENT: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


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


def payloads(parser: SseParser, data: bytes) -> list[str]:
    """The data of every event ``data`` completes, as text."""
    return [event.text for event in parser.feed(data) if event.text is not None]


def run_stream(fragments: Iterable[bytes], expect: Expect) -> list[an.StreamEvent]:
    """Parse SSE fragments and translate every payload as it completes, as the route does."""
    parser = SseParser()
    translator = StreamTranslator("claude-x", input_tokens=7, stop_sequences=expect.stop_sequences)
    events = translator.start()
    for fragment in fragments:
        for payload in payloads(parser, fragment):
            if not translator.done:
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
