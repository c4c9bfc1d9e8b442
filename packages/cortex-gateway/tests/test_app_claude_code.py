"""What Claude Code needs of the gateway, in-process: the billing block, sessions, limits, cache."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from gateway_harness import Harness, serve, until
from test_app_anthropic import CATALOGUE, anthropic_error, models, nodes, sse

from cortex_core.config import AnthropicSection
from cortex_core.neuron_api import ContextLengthError, ContextLengthErrorEnvelope
from cortex_core.wire import encode
from cortex_gateway.testing import JsonAnswer, ScriptedModel, ScriptedNode, StreamAnswer, chat_chunk

pytestmark = pytest.mark.anyio

BILLING = "x-anthropic-billing-header: cc_version=2.1.328.f86; cc_entrypoint=cli; cch={};"
SYSTEM = "You are Claude Code, Anthropic's official CLI for Claude. " * 20
SESSION = "x-claude-code-session-id"


def claude_code_body(cch: str, question: str = "What is the capital of France?") -> dict[str, Any]:
    """A message shaped as Claude Code sends it, its billing block carrying ``cch``."""
    return {
        "model": "helexa/small",
        "max_tokens": 32000,
        "stream": False,
        "system": [
            {"type": "text", "text": BILLING.format(cch)},
            {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}],
        "thinking": {"type": "adaptive", "display": "omitted"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": '{"device_id": "d", "session_id": "s"}'},
    }


def without_billing(harness: Harness) -> None:
    """Turn ``[anthropic] strip_billing_header`` off in a running gateway."""
    config = harness.state.config
    cortex = msgspec.structs.replace(
        config.cortex, anthropic=AnthropicSection(strip_billing_header=False)
    )
    harness.state.config = dataclasses.replace(config, cortex=cortex)


ROUTING: dict[str, object] = {"prefix_block_chars": 64}


async def test_the_billing_block_never_reaches_the_neuron_nor_the_prefix(tmp_path: Path) -> None:
    """Two messages differing only in ``cch``: the same body is sent, and the prefix matches."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(), routing=ROUTING) as gw:
        for cch in ("1a2b3", "4c5d6"):
            answer = await gw.http.post("/v1/messages", json=claude_code_body(cch))
            assert answer.status_code == 200, answer.text
        first, second = (r.body for r in gw.node("beast").requests)
        assert first == second
        assert "x-anthropic-billing-header" not in json.dumps(first)
        assert first["messages"][0] == {"role": "system", "content": SYSTEM}
        assert await gw.metric("cortex_prefix_routing_total", outcome="hit") == 1


async def test_with_the_setting_off_the_billing_block_is_sent(tmp_path: Path) -> None:
    """``strip_billing_header = false``: the block reaches the model, and the prefix differs."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(), routing=ROUTING) as gw:
        without_billing(gw)
        for cch in ("1a2b3", "4c5d6"):
            assert (await gw.http.post("/v1/messages", json=claude_code_body(cch))).is_success
        first, second = (r.body for r in gw.node("beast").requests)
        assert first["messages"][0]["content"].startswith(BILLING.format("1a2b3"))
        assert first != second
        assert await gw.metric("cortex_prefix_routing_total", outcome="hit") == 0


async def test_count_tokens_counts_without_the_billing_block(tmp_path: Path) -> None:
    """count_tokens sees what the model will: the billing block's words are not counted."""
    body = claude_code_body("1a2b3")
    del body["max_tokens"], body["stream"], body["output_config"], body["metadata"]
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(), poll_interval_s=3600) as gw:
        counted = await gw.http.post("/v1/messages/count_tokens", json=body)
        without_billing(gw)
        with_block = await gw.http.post("/v1/messages/count_tokens", json=body)
    words = len(SYSTEM.split()) + len(["What", "is", "the", "capital", "of", "France?"])
    assert counted.json() == {"input_tokens": words}
    assert with_block.json() == {"input_tokens": words + len(BILLING.split())}


def two_ready_nodes() -> list[ScriptedNode]:
    """Two nodes with fake/small ready on both."""
    both = [ScriptedNode("a", gpus=[24]), ScriptedNode("b", gpus=[24])]
    for node in both:
        node.put("fake/small", "ready", memory_gib=4)
    return both


async def test_a_session_stays_on_its_node_when_its_prompt_changes(tmp_path: Path) -> None:
    """A Claude Code session goes back to its node even when its prompt no longer matches."""
    async with serve(
        tmp_path, two_ready_nodes(), CATALOGUE, models=models(), routing=ROUTING
    ) as gw:
        await until(lambda: len(gw.state.lifecycle.fleet.locations("fake/small")) == 2)

        async def send(question: str, session: str | None) -> str:
            headers = {SESSION: session} if session else {}
            body = claude_code_body("1a2b3", question)
            answer = await gw.http.post("/v1/messages", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
            await asyncio.sleep(0.12)  # a poll: the neurons' in-flight counts settle
            return str(answer.headers["x-cortex-node"])

        # The session's long first turn: its node then holds more of the index.
        home = await send("A long conversation. " * 200, "session-1")
        # A new prompt goes to the node that holds less: the other one ...
        away = await send("Something else entirely. " * 100, None)
        assert away != home
        # ... and a new prompt in the session (after a compaction, say) goes home,
        # where the same prompt without it would go to the node holding less.
        summary = "A summary after compaction. " * 100
        assert await send(summary, "session-1") == home
        assert await send(summary.replace("summary", "digest"), None) == away


async def test_without_affinity_a_session_header_changes_nothing(tmp_path: Path) -> None:
    """``session_affinity = false``: a changed prompt is a new prompt, session or not."""
    async with serve(
        tmp_path, two_ready_nodes(), CATALOGUE, models=models(), routing=ROUTING
    ) as gw:
        await until(lambda: len(gw.state.lifecycle.fleet.locations("fake/small")) == 2)
        config = gw.state.config
        off = AnthropicSection(session_affinity=False)
        cortex = msgspec.structs.replace(config.cortex, anthropic=off)
        gw.state.config = dataclasses.replace(config, cortex=cortex)
        served = []
        for question in ("Compact me. ", "A summary after compaction. "):
            body = claude_code_body("1a2b3", question * 100)
            answer = await gw.http.post("/v1/messages", json=body, headers={SESSION: "s-1"})
            served.append(answer.headers["x-cortex-node"])
            await asyncio.sleep(0.12)
        assert served[0] != served[1]


def overflow(prompt_tokens: int, max_model_len: int) -> JsonAnswer:
    """A neuron's refusal of a prompt longer than the context, as the neuron words it."""
    error = ContextLengthError(
        message="This model's maximum context length is ...",
        prompt_tokens=prompt_tokens,
        max_model_len=max_model_len,
    )
    return JsonAnswer(encode(ContextLengthErrorEnvelope(error=error)), 400, relayable=True)


async def test_a_prompt_too_long_is_said_in_each_apis_words(tmp_path: Path) -> None:
    """Anthropic: ``prompt is too long: N tokens > M maximum``; OpenAI: context_length_exceeded."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        node = gw.node("beast")
        node.answers.extend([overflow(9731, 8192), overflow(9731, 8192)])
        message = await gw.http.post("/v1/messages", json=claude_code_body("1a2b3"))
        chat = await gw.chat("helexa/small")
        assert message.status_code == chat.status_code == 400
        assert anthropic_error(message.json()) == {
            "type": "invalid_request_error",
            "message": "prompt is too long: 9731 tokens > 8192 maximum",
        }
        assert chat.json() == {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, your"
                " messages resulted in 9731 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
        assert await gw.metric("cortex_request_errors_total", kind="bad_request") == 2


async def test_a_prompt_too_long_for_a_stream_waiting_on_a_load(tmp_path: Path) -> None:
    """A stream that started while its model loaded ends with Anthropic's own text."""
    slow = [ScriptedModel("fake/small", memory_gib=4, load_s=1.5)]
    async with serve(tmp_path, nodes(), CATALOGUE, models=slow) as gw:
        gw.node("beast").answers.append(overflow(12000, 8192))
        body = {**claude_code_body("1a2b3"), "stream": True}
        answer = await gw.http.post("/v1/messages", json=body)
        assert answer.status_code == 200
        events = sse(answer.text)
        assert events[-1] == (
            "error",
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 12000 tokens > 8192 maximum",
                },
            },
        )


async def test_an_unmarked_context_refusal_stays_generic(tmp_path: Path) -> None:
    """A body shaped like the refusal but not marked relayable tells the client nothing more."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        hidden = dataclasses.replace(overflow(9731, 8192), relayable=False)
        gw.node("beast").answers.append(hidden)
        message = await gw.http.post("/v1/messages", json=claude_code_body("1a2b3"))
        assert message.status_code == 400
        assert "9731" not in message.text


USAGE = {
    "prompt_tokens": 5000,
    "completion_tokens": 7,
    "total_tokens": 5007,
    "prompt_tokens_details": {"cached_tokens": 4096},
}


def completion_with_cache() -> JsonAnswer:
    """A complete chat answer whose prompt came mostly from the engine's prefix cache."""
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "fake/small",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"content": "Paris."}},
        ],
        "usage": USAGE,
    }
    return JsonAnswer(json.dumps(answer).encode())


def stream_with_cache() -> StreamAnswer:
    """The same answer streamed, its usage in the last chunk."""
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake/small"}
    final = json.dumps({**usage, "choices": [], "usage": USAGE}).encode()
    events = [chat_chunk("fake/small", {"content": "Paris."}, "stop")]
    return StreamAnswer([*events, b"data: " + final + b"\n\n", b"data: [DONE]\n\n"])


async def test_cache_reads_reach_the_client_and_the_metrics(tmp_path: Path) -> None:
    """The engine's cached prompt tokens: cache_read_input_tokens, cached_tokens, the metric."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        node = gw.node("beast")
        node.answers.extend([completion_with_cache(), stream_with_cache()])
        node.answers.append(completion_with_cache())
        plain = (await gw.http.post("/v1/messages", json=claude_code_body("1"))).json()
        streamed = sse(
            (
                await gw.http.post("/v1/messages", json={**claude_code_body("2"), "stream": True})
            ).text
        )
        chat = (await gw.chat("helexa/small")).json()
        assert plain["usage"]["input_tokens"] == 904
        assert plain["usage"]["cache_read_input_tokens"] == 4096
        delta = next(data for event, data in streamed if event == "message_delta")
        assert delta["usage"]["input_tokens"] == 904
        assert delta["usage"]["cache_read_input_tokens"] == 4096
        assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 4096
        assert await gw.metric("cortex_cached_prompt_tokens_total") == 3 * 4096
        assert await gw.metric("cortex_prompt_tokens_total") == 3 * 5000
