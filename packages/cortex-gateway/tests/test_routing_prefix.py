"""Prefix-aware routing over scripted neurons: conversations stick, new ones spread, load wins."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import Harness, serve, until

from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE = '[[models]]\nid = "fake/small"\nmemory_gb = 4\n'
MODELS = [ScriptedModel("fake/small", memory_gib=4)]
SYSTEM = "You are a careful assistant who answers briefly. " * 8  # ~400 bytes, shared
ROUTING: dict[str, object] = {"prefix_block_chars": 64}


def two_nodes(**options: Any) -> list[ScriptedNode]:
    nodes = [ScriptedNode("a", **options), ScriptedNode("b", **options)]
    for node in nodes:
        node.put("fake/small", "ready", memory_gib=4)
    return nodes


def opening(index: int) -> list[dict[str, str]]:
    """A conversation's first turn: the shared system prompt and a long context of its own."""
    context = f"conversation {index}: " + " ".join(f"line {index}.{i}" for i in range(150))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": context}]


async def turn(gw: Harness, messages: list[dict[str, str]], **extra: Any) -> str:
    """Send one turn; add the answer and a follow-up to ``messages``; the node that served.

    Then let a poll pass: the neurons' own in-flight counts (which routing also
    weighs) must not still show this request.
    """
    answer = await gw.http.post(
        "/v1/chat/completions", json={"model": "fake/small", "messages": messages, **extra}
    )
    assert answer.status_code == 200, answer.text
    messages.append(
        {"role": "assistant", "content": answer.json()["choices"][0]["message"]["content"]}
    )
    messages.append({"role": "user", "content": f"and then? ({len(messages)})"})
    await asyncio.sleep(0.12)
    return str(answer.headers["x-cortex-node"])


async def test_each_conversation_stays_on_one_node_and_conversations_spread(
    tmp_path: Path,
) -> None:
    """Six conversations, four turns each, one request at a time, interleaved."""
    async with serve(tmp_path, two_nodes(), CATALOGUE, models=MODELS, routing=ROUTING) as gw:
        await until(lambda: len(gw.state.lifecycle.fleet.locations("fake/small")) == 2)
        conversations = [opening(i) for i in range(6)]
        served: dict[int, list[str]] = {i: [] for i in range(6)}
        for _ in range(4):
            for i, messages in enumerate(conversations):
                served[i].append(await turn(gw, messages))
        assert all(len(set(nodes)) == 1 for nodes in served.values()), served
        homes = [nodes[0] for nodes in served.values()]
        assert homes.count("a") == homes.count("b") == 3, homes
        assert await gw.metric("cortex_prefix_routing_total", outcome="hit") == 18
        assert await gw.metric("cortex_prefix_routing_total", outcome="miss") == 6


async def test_a_burst_of_conversations_sharing_a_long_system_prompt_spreads(
    tmp_path: Path,
) -> None:
    """Six first turns at once, each more than half shared system prompt: three on each node.

    The first one records the system prompt on its node; the next ones match
    it there, but that node has prompt work queued (no first token yet), so
    the idle node is sooner. Later turns, one at a time, stay where they began.
    """
    system = SYSTEM * 6  # ~2.4 kB against ~0.3 kB of each conversation's own
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": f"task {i} " * 40}]
        for i in range(6)
    ]
    async with serve(
        tmp_path, two_nodes(answer_delay_s=0.3), CATALOGUE, models=MODELS, routing=ROUTING
    ) as gw:
        await until(lambda: len(gw.state.lifecycle.fleet.locations("fake/small")) == 2)
        first = await asyncio.gather(*(turn(gw, messages) for messages in conversations))
        assert first.count("a") == first.count("b") == 3, first
        later = [await turn(gw, messages) for messages in conversations]
        assert later == first
        assert gw.state.lifecycle.leases.prefill == {}


async def test_a_streamed_prompt_stops_counting_as_queued_work_at_its_first_chunk(
    tmp_path: Path,
) -> None:
    """While a stream goes on, its node has its prompt computed: only the request is in flight."""
    async with serve(
        tmp_path, two_nodes(chunk_delay_s=0.05), CATALOGUE, models=MODELS, routing=ROUTING
    ) as gw:
        life = gw.state.lifecycle
        await until(lambda: len(life.fleet.locations("fake/small")) == 2)
        body = {"model": "fake/small", "messages": opening(0), "stream": True}
        seen: set[tuple[int, int]] = set()  # (requests in flight, prompt blocks queued)

        async def watch() -> None:
            while True:
                leases = life.leases
                seen.add((sum(leases.counts.values()), sum(leases.prefill.values())))
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        answer = await gw.http.post("/v1/chat/completions", json=body)
        watcher.cancel()
        assert answer.status_code == 200
        queued = {blocks for requests, blocks in seen if requests == 1}
        assert 0 in queued, seen  # streaming: in flight, its prompt no longer queued
        assert life.leases.prefill == {}


async def test_least_loaded_ignores_the_prefix(tmp_path: Path) -> None:
    """With policy least_loaded, one request at a time always goes to the first node."""
    routing = {**ROUTING, "policy": "least_loaded"}
    async with serve(tmp_path, two_nodes(), CATALOGUE, models=MODELS, routing=routing) as gw:
        await until(lambda: len(gw.state.lifecycle.fleet.locations("fake/small")) == 2)
        conversations = [opening(i) for i in range(3)]
        homes = {await turn(gw, messages) for messages in conversations for _ in range(2)}
        assert homes == {"a"}
        assert await gw.metric("cortex_prefix_routing_total") == 0


async def test_an_overloaded_node_loses_its_affinity(tmp_path: Path) -> None:
    """Past max_imbalance more requests in flight, the next turn goes to the idle node."""
    routing = {**ROUTING, "max_imbalance": 1}
    async with serve(tmp_path, two_nodes(), CATALOGUE, models=MODELS, routing=routing) as gw:
        life = gw.state.lifecycle
        await until(lambda: len(life.fleet.locations("fake/small")) == 2)
        messages = opening(0)
        home = await turn(gw, messages)
        other = "b" if home == "a" else "a"
        assert await turn(gw, messages) == home
        busy = [life.leases.take(home, "fake/small") for _ in range(2)]  # two requests there
        assert await turn(gw, messages) == other
        for lease in busy:
            lease.release()
        # The conversation's longest prefix is now there: it stays, even with the load even.
        assert await turn(gw, messages) == other


async def test_an_unloaded_model_and_a_restarted_node_are_forgotten(tmp_path: Path) -> None:
    """The index drops a node's blocks of a model it no longer has, and all of a restarted node."""
    nodes = two_nodes()
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, routing=ROUTING) as gw:
        life = gw.state.lifecycle
        await until(lambda: len(life.fleet.locations("fake/small")) == 2)
        messages = opening(0)
        home = await turn(gw, messages)
        assert life.prefixes.held(home) > 0
        by_name = {n.name: n for n in nodes}
        by_name[home].forget("fake/small")  # unloaded behind the gateway's back
        await until(lambda: life.prefixes.held(home) == 0)
        other = "b" if home == "a" else "a"
        assert await turn(gw, messages) == other
        assert life.prefixes.held(other) > 0
        by_name[other].restart()
        await until(lambda: life.prefixes.held(other) == 0)


async def test_anthropic_turns_stick_like_openai_ones(tmp_path: Path) -> None:
    """/v1/messages is scored on its system prompt and messages: its turns stay on one node."""
    async with serve(tmp_path, two_nodes(), CATALOGUE, models=MODELS, routing=ROUTING) as gw:
        await until(lambda: len(gw.state.lifecycle.fleet.locations("fake/small")) == 2)
        homes = []
        for i in range(2):
            messages = [{"role": "user", "content": opening(i)[1]["content"]}]
            for _ in range(3):
                body = {
                    "model": "fake/small",
                    "max_tokens": 9,
                    "system": SYSTEM,
                    "messages": messages,
                }
                answer = await gw.http.post("/v1/messages", json=body)
                assert answer.status_code == 200, answer.text
                homes.append((i, answer.headers["x-cortex-node"]))
                messages = [
                    *messages,
                    {"role": "assistant", "content": answer.json()["content"][0]["text"]},
                    {"role": "user", "content": f"more ({len(messages)})"},
                ]
        first = {node for i, node in homes if i == 0}
        second = {node for i, node in homes if i == 1}
        assert len(first) == len(second) == 1
        assert first != second
