"""Caps per node and model in-process: requests beyond them wait at the gateway, served fairly."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_harness import QUESTION, Harness, disconnecting, serve, until

from cortex_core.config import SchedulingSection
from cortex_core.neuron_api import ModelInfo
from cortex_gateway.fleet import NodeState
from cortex_gateway.slots import Slots
from cortex_gateway.testing import JsonAnswer, ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE = '[[models]]\nid = "fake/small"\nmemory_gb = 4\n'
MODELS = [ScriptedModel("fake/small", memory_gib=4)]
ENVIRON = {"KEY_A": "a", "KEY_B": "b", "KEY_I": "i", "KEY_J": "j"}
KEYS: list[dict[str, object]] = [
    {"name": "flood", "key_env": "KEY_A", "priority": "batch"},
    {"name": "other", "key_env": "KEY_B", "priority": "batch"},
    {"name": "alice", "key_env": "KEY_I"},
    {"name": "bob", "key_env": "KEY_J"},
]


def held(node: ScriptedNode, count: int) -> list[asyncio.Event]:
    """Queue ``count`` answers on ``node`` that each come when the test sets its event."""
    events = [asyncio.Event() for _ in range(count)]
    ok = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    node.answers.extend(JsonAnswer(ok.encode(), until=event) for event in events)
    return events


def send(gw: Harness, key: str, tag: str) -> asyncio.Future[httpx.Response]:
    """A chat request with ``key``, named ``tag`` (its ``user`` field) at the node."""
    body = {"model": "fake/small", "messages": QUESTION, "user": tag}
    return asyncio.ensure_future(
        gw.http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    )


def arrived(node: ScriptedNode) -> list[str]:
    """The tags of the requests the node received, in order."""
    return [str(r.body.get("user")) for r in node.requests if r.path.endswith("/completions")]


async def loaded(gw: Harness) -> None:
    """fake/small loaded before the test's traffic."""
    answer = await gw.http.post(
        "/admin/models/load", json={"model": "fake/small"}, headers={"authorization": "Bearer a"}
    )
    assert answer.status_code == 200


@contextlib.asynccontextmanager
async def capped(
    tmp_path: Path,
    node: ScriptedNode,
    cap: int,
    reserved: int,
    load_timeout_s: float = 900.0,
    max_waiting: int = 256,
) -> AsyncIterator[Harness]:
    """A gateway over ``node`` with fake/small loaded and ``cap`` (``reserved`` interactive)."""
    scheduling: dict[str, object] = {"max_in_flight_per_model": cap, "interactive_slots": reserved}
    async with serve(
        tmp_path,
        [node],
        CATALOGUE,
        models=MODELS,
        keys=KEYS,
        environ=ENVIRON,
        scheduling=scheduling,
        load_timeout_s=load_timeout_s,
        max_waiting=max_waiting,
    ) as gw:
        await loaded(gw)
        yield gw


async def test_a_flood_delays_another_keys_request_by_one_slot_at_most(tmp_path: Path) -> None:
    """Beyond the cap requests wait at the gateway; the next slots go round-robin across keys."""
    node = ScriptedNode("beast", gpus=[24])
    async with capped(tmp_path, node, cap=2, reserved=0) as gw:
        events = held(node, 7)
        flood = [send(gw, "a", f"a{i}") for i in range(6)]
        await until(lambda: node.open_requests == 2 and bool(gw.state.lifecycle.waiting))
        other = send(gw, "b", "b0")
        await until(lambda: sum(gw.state.lifecycle.waiting.values()) == 5)
        assert node.open_requests == 2  # the waiting ones count toward nothing on the engine
        assert arrived(node) == ["a0", "a1"]
        events[0].set()
        await until(lambda: len(arrived(node)) == 3)
        events[1].set()
        await until(lambda: len(arrived(node)) == 4)
        assert arrived(node) == ["a0", "a1", "a2", "b0"]  # one slot of the flood's, then b's
        for event in events:
            event.set()
        answers = await asyncio.gather(*flood, other)
        assert {a.status_code for a in answers} == {200}
        assert arrived(node)[4:] == ["a3", "a4", "a5"]
        assert not gw.state.lifecycle.waiting
        assert not gw.in_flight


async def test_interactive_requests_start_at_once_through_a_batch_flood(tmp_path: Path) -> None:
    """interactive_slots stay free of batch work; waiting interactive requests go first."""
    node = ScriptedNode("beast", gpus=[24])
    async with capped(tmp_path, node, cap=3, reserved=1) as gw:
        events = held(node, 8)
        flood = [send(gw, "a", f"a{i}") for i in range(5)]
        await until(lambda: sum(gw.state.lifecycle.waiting.values()) == 3)
        assert node.open_requests == 2  # the cap less the interactive slot
        first = send(gw, "i", "i0")
        await until(lambda: node.open_requests == 3)  # at once: no batch request ended
        assert arrived(node) == ["a0", "a1", "i0"]
        second = send(gw, "j", "j0")
        await until(lambda: sum(gw.state.lifecycle.waiting.values()) == 4)
        events[0].set()  # a batch request ends: the waiting interactive one goes first
        await until(lambda: len(arrived(node)) == 4)
        assert arrived(node)[3] == "j0"
        for event in events:
            event.set()
        answers = await asyncio.gather(*flood, first, second)
        assert {a.status_code for a in answers} == {200}


async def test_the_default_cap_is_the_engines_batch_limit(tmp_path: Path) -> None:
    """max_in_flight_per_model = 0: a neuron's max_num_seqs caps it; without one, nothing does."""
    capped = ScriptedNode("beast", gpus=[24], max_num_seqs=1)
    async with serve(
        tmp_path, [capped], CATALOGUE, models=MODELS, keys=KEYS, environ=ENVIRON
    ) as gw:
        await loaded(gw)
        events = held(capped, 2)
        one, two = send(gw, "i", "i0"), send(gw, "j", "j0")
        await until(lambda: capped.open_requests == 1 and bool(gw.state.lifecycle.waiting))
        events[0].set()
        await until(lambda: capped.open_requests == 1 and len(arrived(capped)) == 2)
        events[1].set()
        assert {(await one).status_code, (await two).status_code} == {200}
    free = ScriptedNode("beast", gpus=[24])
    async with serve(
        tmp_path / "free", [free], CATALOGUE, models=MODELS, keys=KEYS, environ=ENVIRON
    ) as gw:
        await loaded(gw)
        events = held(free, 3)
        sent = [send(gw, "i", f"i{n}") for n in range(3)]
        await until(lambda: free.open_requests == 3)
        for event in events:
            event.set()
        assert {(await s).status_code for s in sent} == {200}


async def test_a_client_gone_leaves_the_line_and_a_long_wait_is_a_503(tmp_path: Path) -> None:
    """A waiting request whose client leaves is never sent; one that waits too long is a 503."""
    node = ScriptedNode("beast", gpus=[24])
    async with capped(tmp_path, node, cap=1, reserved=0, load_timeout_s=0.5, max_waiting=2) as gw:
        events = held(node, 3)
        first = send(gw, "a", "a0")
        await until(lambda: node.open_requests == 1)
        body = json.dumps({"model": "fake/small", "messages": QUESTION, "user": "gone"}).encode()
        status, _ = await disconnecting(gw.api, "/v1/chat/completions", body, after_s=0.1, key="i")
        assert status == 499
        await until(lambda: not gw.state.lifecycle.waiting)
        assert len(gw.state.lifecycle.slots) == 0  # out of the line
        late = await send(gw, "b", "b0")  # waits its whole load_timeout_s for the slot
        assert late.status_code == 503
        assert "no free slot" in late.json()["error"]["message"]
        assert late.headers["retry-after"]
        # max_waiting bounds a load's waiters, not the line: these would have
        # queued in the engine had there been no cap.
        waiting = [send(gw, "b", f"b{i}") for i in (1, 2, 3)]
        await until(lambda: sum(gw.state.lifecycle.waiting.values()) == 3)
        events[0].set()
        for event in events:
            event.set()
        assert (await first).status_code == 200
        assert {(await s).status_code for s in waiting} == {200}
        assert "gone" not in arrived(node)


def test_each_worker_takes_its_share_of_the_cap() -> None:
    """With workers = N a cap is split (at least one each); batch leaves interactive_slots free."""
    info = ModelInfo(id="m", state="ready", max_num_seqs=8)
    node = NodeState("a", "http://a:1", up=True, models=(info,))
    assert Slots(SchedulingSection(), 1).limit(node, "m", batch=False) == 8
    assert Slots(SchedulingSection(), 1).limit(node, "m", batch=True) == 7
    assert Slots(SchedulingSection(), 2).limit(node, "m", batch=False) == 4
    split = Slots(SchedulingSection(max_in_flight_per_model=3, interactive_slots=2), 2)
    assert (split.limit(node, "m", batch=False), split.limit(node, "m", batch=True)) == (1, 1)
    none = NodeState("b", "http://b:1", up=True, models=(ModelInfo(id="m", state="ready"),))
    assert Slots(SchedulingSection(), 1).limit(none, "m", batch=False) is None


async def test_requests_waiting_for_a_slot_hear_when_the_node_goes_down(tmp_path: Path) -> None:
    """The node whose slots they wait for goes down: they are answered at once, not left waiting."""
    node = ScriptedNode("beast", gpus=[24])
    async with capped(tmp_path, node, cap=1, reserved=0) as gw:
        held(node, 1)
        first = send(gw, "a", "a0")
        await until(lambda: node.open_requests == 1)
        waiting = [send(gw, "b", "b0"), send(gw, "i", "i0")]
        await until(lambda: sum(gw.state.lifecycle.waiting.values()) == 2)
        node.stop()
        answers = await asyncio.gather(first, *waiting)
        assert [a.status_code for a in answers[1:]] == [503, 503]
        assert "is up" in answers[1].json()["error"]["message"]  # re-routed: no node left
        assert len(gw.state.lifecycle.slots) == 0
        assert arrived(node) == ["a0"]


async def test_requests_waiting_for_a_slot_end_when_the_gateway_stops(tmp_path: Path) -> None:
    """Draining: a request still waiting for a slot when time is up gets 503, shutting down."""
    node = ScriptedNode("beast", gpus=[24])
    async with capped(tmp_path, node, cap=1, reserved=0) as gw:
        held(node, 1)
        first = send(gw, "a", "a0")
        await until(lambda: node.open_requests == 1)
        waiting = send(gw, "b", "b0")
        await until(lambda: bool(gw.state.lifecycle.waiting))
        await gw.state.drain(0.1)
        answer = await waiting
        assert answer.status_code == 503
        assert "shutting down" in answer.json()["error"]["message"]
        await first  # the one running was cut at the end of the drain: not this test's business
