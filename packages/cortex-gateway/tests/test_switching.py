"""Swapping models in-process: waiting for room, grouping swaps, and backing off failed loads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gateway_harness import serve, until

from bench.switching import run
from cortex_gateway.testing import ScriptedModel, ScriptedNode, StreamAnswer, chat_chunk

pytestmark = pytest.mark.anyio

TWO = '[[models]]\nid = "fake/a"\nmemory_gb = 16\n[[models]]\nid = "fake/b"\nmemory_gb = 16\n'


@pytest.fixture(autouse=True)
def quick_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifecycle's fixed waits, shortened: the tests are about what happens, not when."""
    monkeypatch.setattr("cortex_gateway.poller.WATCH_EVERY_S", 0.1)


async def test_a_request_waits_for_room_instead_of_failing(tmp_path: Path) -> None:
    """The GPU holds a busy model: a request for another waits, and is served after the swap."""
    models = [ScriptedModel("fake/a", memory_gib=16), ScriptedModel("fake/b", memory_gib=16)]
    words = [chat_chunk("fake/a", {"content": w}) for w in ("one", " two")]
    async with serve(tmp_path, [ScriptedNode("gpu", gpus=[24])], TWO, models=models) as gw:
        assert (await gw.chat("fake/a")).status_code == 200
        gpu = gw.node("gpu")
        gpu.answers.append(StreamAnswer(words, delay_s=0.3))
        streaming = asyncio.ensure_future(gw.chat("fake/a", stream=True))
        await until(lambda: gpu.open_requests == 1)
        waiting = asyncio.ensure_future(gw.chat("fake/b"))
        await until(lambda: gw.state.lifecycle.waiting.get("fake/b") == 1)
        assert not waiting.done()
        assert (await streaming).status_code == 200
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.status_code == 200
        assert list(gpu.models) == ["fake/b"]
        assert await gw.metric("cortex_model_evictions_total", model="fake/a") == 1


async def test_grouped_swaps_less_than_fifo_and_holds_no_one_past_the_cap() -> None:
    """Interleaved traffic for two models: fewer loads at the neuron, no wait over the bound."""
    options = {"requests": 32, "concurrency": 4, "load_s": 0.1, "answer_s": 0.02}
    fifo = await run("fifo", max_swap_wait_s=1.0, **options)  # type: ignore[arg-type]
    grouped = await run("grouped", max_swap_wait_s=1.0, **options)  # type: ignore[arg-type]
    assert fifo.errors == grouped.errors == 0
    assert grouped.swaps < fifo.swaps
    # The cap, one load, and the answers that were in flight when the swap was decided.
    assert grouped.longest_wait_s < 1.0 + 0.1 + 4 * 0.02 + 0.5


async def test_a_failing_model_is_tried_once_then_backs_off(tmp_path: Path) -> None:
    """Twenty requests for a model whose engine fails: one load, twenty 503s with Retry-After."""
    models = [ScriptedModel("fake/bad", memory_gib=4, fail="load_failed")]
    catalogue = '[[models]]\nid = "fake/bad"\nmemory_gb = 4\n'
    async with serve(
        tmp_path, [ScriptedNode("gpu", gpus=[24])], catalogue, models=models, poll_interval_s=3600
    ) as gw:
        answers = [await gw.chat("fake/bad") for _ in range(20)]
        assert [a.status_code for a in answers] == [503] * 20
        assert all(1 <= int(a.headers["retry-after"]) <= 10 for a in answers)
        assert "failed to load recently" in answers[-1].json()["error"]["message"]
        assert "no attempt" not in answers[0].json()["error"]["message"]
        gpu = gw.node("gpu")
        assert gpu.calls.count("load fake/bad") == 1
        listed = (await gw.http.get("/v1/models/fake%2Fbad")).json()
        assert [(b["node"], b["failures"]) for b in listed["backoff"]] == [("gpu", 1)]
        fleet = (await gw.http.get("/admin/fleet")).json()
        assert [(b["node"], b["model"]) for b in fleet["backoff"]] == [("gpu", "fake/bad")]
        retried = await gw.http.post("/admin/models/load", json={"model": "fake/bad"})
        assert retried.status_code == 503
        assert gpu.calls.count("load fake/bad") == 2  # an operator's load tries again
        failures = [b["failures"] for b in (await gw.http.get("/admin/fleet")).json()["backoff"]]
        assert failures == [1]  # the operator's try started the count afresh
