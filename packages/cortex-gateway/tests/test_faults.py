"""Faults in-process: timeouts, nodes going down, retries, waiters, draining, reloads.

Each test asserts the bound the gateway promises (a status, an error event,
nothing left in flight, a count of calls), with the scripted fleet's faults;
the same faults with real processes are in tests/test_gateway_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import QUESTION, Harness, disconnecting, serve, until

from cortex_core.config import ConfigError
from cortex_gateway.app import http_neurons
from cortex_gateway.routes import admin as admin_routes
from cortex_gateway.testing import (
    Hang,
    JsonAnswer,
    Refuse,
    ScriptedModel,
    ScriptedNode,
    StreamAnswer,
    chat_chunk,
)
from cortex_gateway.transport import HttpNeurons

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def quick_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifecycle's fixed waits, shortened: the tests are about what happens, not when."""
    monkeypatch.setattr("cortex_gateway.poller.WATCH_EVERY_S", 0.1)
    monkeypatch.setattr("cortex_gateway.poller.ANSWERING_WINDOW_S", 0.05)
    monkeypatch.setattr("cortex_gateway.state.FLUSH_S", 0.05)


CATALOGUE = '[[models]]\nid = "fake/a"\nmemory_gb = 4\n'
MODELS = [ScriptedModel("fake/a", memory_gib=4)]
WORDS = [chat_chunk("fake/a", {"content": w}) for w in ("one", " two", " three")]


def events_of(text: str) -> list[dict[str, Any]]:
    """The JSON of every data event of an OpenAI SSE body but [DONE]."""
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


async def ready_on(gw: Harness, *names: str) -> None:
    """Put fake/a ready on ``names`` and let the gateway see it."""
    for name in names:
        gw.node(name).put("fake/a", "ready", memory_gib=4)
        await gw.state.lifecycle.refresh(name)


async def test_a_hung_neuron_is_a_504_after_first_byte_timeout(tmp_path: Path) -> None:
    """No headers within first_byte_timeout_s: 504, timeout type, nothing left in flight."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, first_byte_timeout_s=0.2
    ) as gw:
        await ready_on(gw, "beast")
        gw.node("beast").answers.append(Hang())
        response = await gw.chat("fake/a")
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "timeout"
        assert response.json()["error"]["message"] == "the model server did not answer in time"
        assert gw.in_flight == {}
        assert await gw.metric("cortex_request_errors_total", kind="timeout") == 1
        gw.node("beast").answers.append(Hang())
        message = await gw.message("fake/a")
        assert message.status_code == 504
        assert message.json()["error"]["type"] == "timeout_error"


async def test_a_silent_stream_ends_after_stream_idle_timeout(tmp_path: Path) -> None:
    """A stream silent for stream_idle_timeout_s ends with an error event; the upstream goes."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, stream_idle_timeout_s=0.2
    ) as gw:
        await ready_on(gw, "beast")
        gw.node("beast").answers.append(StreamAnswer(WORDS, hang_after=1))
        response = await gw.chat("fake/a", stream=True)
        events = events_of(response.text)
        assert events[0]["choices"][0]["delta"]["content"] == "one"
        assert events[-1]["error"] == {
            "message": "the model server went silent",
            "type": "timeout",
            "param": None,
            "code": 504,
        }
        assert gw.node("beast").open_requests == 0
        assert gw.in_flight == {}


async def test_a_node_down_by_its_polls_ends_its_silent_streams(tmp_path: Path) -> None:
    """Polls failing past the threshold and a stream gone quiet: it ends with an error event.

    One failed poll is enough to have the node asked again and again (every
    WATCH_EVERY_S) until it is down; no timeout is waited out.
    """
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, poll_interval_s=3600
    ) as gw:
        await ready_on(gw, "beast")
        beast = gw.node("beast")
        beast.answers.append(StreamAnswer(WORDS, hang_after=1))
        streaming = asyncio.ensure_future(gw.chat("fake/a", stream=True))
        await until(lambda: beast.open_requests == 1)
        beast.stop()
        await gw.state.lifecycle.refresh("beast")
        response = await asyncio.wait_for(streaming, 5)
        events = events_of(response.text)
        assert events[-1]["error"]["message"] == "the model server stopped answering"
        assert gw.in_flight == {}
        assert gw.state.lifecycle.poller.nodes["beast"].record.failures == 3


async def test_one_failed_poll_cuts_no_stream(tmp_path: Path) -> None:
    """A poll that fails once: the streams there finish; new requests prefer the other node.

    The node is asked again at once and, answering, is used as before.
    """
    nodes = [ScriptedNode("one", chunk_delay_s=0.02), ScriptedNode("two")]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await ready_on(gw, "one", "two")
        one = gw.node("one")
        one.answers.append(StreamAnswer(WORDS, delay_s=0.1))
        streaming = asyncio.ensure_future(gw.chat("fake/a", stream=True))
        await until(lambda: one.open_requests == 1)
        one.management_refused = True
        await gw.state.lifecycle.refresh("one")
        assert gw.state.lifecycle.poller.broken() == {"one"}
        assert (await gw.chat("fake/a")).headers["x-cortex-node"] == "two"
        one.management_refused = False
        response = await asyncio.wait_for(streaming, 5)
        assert [e["choices"][0]["delta"]["content"] for e in events_of(response.text)] == [
            "one",
            " two",
            " three",
        ]
        await until(lambda: not gw.state.lifecycle.poller.broken())
        assert gw.state.lifecycle.fleet.nodes["one"].up


async def test_a_node_whose_polls_fail_keeps_the_streams_it_still_answers(
    tmp_path: Path,
) -> None:
    """Polls failing past the threshold mark the node down, but streams receiving bytes finish.

    Its management API is gone, not the node: nothing new goes there meanwhile.
    """
    nodes = [ScriptedNode("one"), ScriptedNode("two")]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await ready_on(gw, "one", "two")
        one = gw.node("one")
        many = [chat_chunk("fake/a", {"content": f" {i}"}) for i in range(40)]
        one.answers.append(StreamAnswer(many, delay_s=0.02))
        streaming = asyncio.ensure_future(gw.chat("fake/a", stream=True))
        await until(lambda: one.open_requests == 1)
        one.management_refused = True
        await gw.state.lifecycle.refresh("one")
        await until(lambda: not gw.state.lifecycle.fleet.nodes["one"].up)
        assert (await gw.chat("fake/a")).headers["x-cortex-node"] == "two"
        response = await asyncio.wait_for(streaming, 5)
        events = events_of(response.text)
        assert [e["choices"][0]["delta"]["content"] for e in events] == [f" {i}" for i in range(40)]


async def test_a_failed_poll_after_a_refused_request_is_down_at_once(tmp_path: Path) -> None:
    """Two kinds of evidence, a refused request and a failed poll: down without more polls."""
    nodes = [ScriptedNode("one"), ScriptedNode("two")]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await ready_on(gw, "one", "two")
        gw.node("one").stop()
        responses = [await gw.chat("fake/a") for _ in range(2)]
        assert [r.status_code for r in responses] == [200, 200]
        node = gw.state.lifecycle.poller.nodes["one"]
        assert not node.state.up
        assert node.record.failures == 1


async def test_a_request_waiting_for_headers_moves_to_a_replica_when_its_node_dies(
    tmp_path: Path,
) -> None:
    """Nothing was sent back yet: the request goes to the other replica and succeeds."""
    nodes = [ScriptedNode("one"), ScriptedNode("two")]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await ready_on(gw, "one", "two")
        gw.node("one").answers.append(Hang())
        asking = asyncio.ensure_future(gw.chat("fake/a"))
        await until(lambda: len(gw.node("one").requests) == 1)
        gw.node("one").stop()
        await gw.state.lifecycle.refresh("one")
        response = await asyncio.wait_for(asking, 5)
        assert response.status_code == 200
        assert response.headers["x-cortex-node"] == "two"


async def test_a_refused_connection_is_retried_on_another_replica(tmp_path: Path) -> None:
    """Refused on one replica: the request succeeds on the other, which then takes the traffic.

    The first one's breaker is open meanwhile.
    """
    nodes = [ScriptedNode("one"), ScriptedNode("two")]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await ready_on(gw, "one", "two")
        gw.node("one").answers.append(Refuse())
        response = await gw.chat("fake/a")
        assert response.status_code == 200
        assert response.headers["x-cortex-node"] == "two"
        assert [(await gw.chat("fake/a")).headers["x-cortex-node"] for _ in range(3)] == ["two"] * 3
        assert gw.state.lifecycle.poller.broken() == {"one"}


async def test_a_stream_that_started_is_never_retried(tmp_path: Path) -> None:
    """Once bytes went to the client, a broken stream ends with an error: no second node."""
    nodes = [ScriptedNode("one"), ScriptedNode("two")]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await ready_on(gw, "one", "two")
        for name in ("one", "two"):
            gw.node(name).answers.append(StreamAnswer(WORDS, break_after=1))
        response = await gw.chat("fake/a", stream=True)
        assert events_of(response.text)[-1]["error"]["code"] == 502
        assert len(gw.node("one").requests) + len(gw.node("two").requests) == 1


async def test_waiters_share_one_watch_of_the_loading_node(tmp_path: Path) -> None:
    """Fifty requests wait for a load under way: the node is asked once per watch interval."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, poll_interval_s=3600
    ) as gw:
        beast = gw.node("beast")
        beast.put("fake/a", "loading")
        await gw.state.lifecycle.refresh("beast")
        polls_before = beast.calls.count("models")
        waiting = [asyncio.ensure_future(gw.chat("fake/a")) for _ in range(50)]
        await until(lambda: gw.state.lifecycle.waiting.get("fake/a") == 50)
        await asyncio.sleep(0.35)  # three or four watch intervals of 0.1 s
        beast.put("fake/a", "ready")
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert [a.status_code for a in answers] == [200] * 50
        assert beast.calls.count("models") - polls_before <= 6  # not 50 per interval
        assert "load fake/a" not in beast.calls


async def test_a_client_gone_while_its_model_loads_is_not_sent_on(tmp_path: Path) -> None:
    """The client leaves during the wait: nothing reaches the GPU for it; 499 is counted."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, poll_interval_s=3600
    ) as gw:
        beast = gw.node("beast")
        beast.put("fake/a", "loading")
        await gw.state.lifecycle.refresh("beast")
        body = json.dumps({"model": "fake/a", "messages": QUESTION}).encode()
        status, _ = await disconnecting(gw.api, "/v1/chat/completions", body, after_s=0.2)
        assert status == 499
        beast.put("fake/a", "ready")
        await gw.state.lifecycle.refresh("beast")
        assert beast.requests == []
        assert gw.state.lifecycle.waiting == {}
        assert await gw.metric("cortex_requests_total", status="499") == 1


async def test_too_many_waiters_get_429_with_retry_after(tmp_path: Path) -> None:
    """Past max_waiting for one model, requests are refused at once with Retry-After."""
    async with serve(
        tmp_path,
        [ScriptedNode("beast")],
        CATALOGUE,
        models=MODELS,
        poll_interval_s=3600,
        max_waiting=2,
    ) as gw:
        beast = gw.node("beast")
        beast.put("fake/a", "loading")
        await gw.state.lifecycle.refresh("beast")
        waiting = [asyncio.ensure_future(gw.chat("fake/a")) for _ in range(2)]
        await until(lambda: gw.state.lifecycle.waiting.get("fake/a") == 2)
        refused = await gw.chat("fake/a")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "10"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        beast.put("fake/a", "ready")
        assert [a.status_code for a in await asyncio.gather(*waiting)] == [200, 200]
        assert await gw.metric("cortex_request_errors_total", kind="overloaded") == 1


async def test_a_cold_load_asks_only_its_candidate_nodes(tmp_path: Path) -> None:
    """Placement polls only the nodes that may take the model; a slow other node waits no one."""
    nodes = [ScriptedNode("slow"), ScriptedNode("fast")]
    toml = '[[models]]\nid = "fake/a"\nmemory_gb = 4\nnodes = ["fast"]\n'
    async with serve(tmp_path, nodes, toml, models=MODELS, poll_interval_s=3600) as gw:
        slow = gw.node("slow")
        await until(lambda: slow.calls.count("models") >= 2)  # the start and the first poll
        slow.slow_s = 3.0
        asked = slow.calls.count("models")
        response = await gw.chat("fake/a")
        assert response.headers["x-cortex-node"] == "fast"
        assert slow.calls.count("models") == asked


async def test_admin_fleet_answers_without_waiting_for_a_slow_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/admin/fleet shows what came within its deadline; a slow node shows its last answer."""
    monkeypatch.setattr(admin_routes, "FRESH_WITHIN_S", 0.1)
    nodes = [ScriptedNode("slow"), ScriptedNode("fast")]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        seen = gw.state.lifecycle.fleet.nodes["slow"].last_seen
        gw.node("slow").slow_s = 1.0
        fleet = (await gw.http.get("/admin/fleet")).json()
        slow = next(n for n in fleet["nodes"] if n["name"] == "slow")
        fast = next(n for n in fleet["nodes"] if n["name"] == "fast")
        assert slow["last_seen"] == seen
        assert fast["last_seen"] > seen


async def test_an_older_poll_answer_never_wins(tmp_path: Path) -> None:
    """A slow poll that began before a fast one does not undo what the fast one saw."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, poll_interval_s=3600
    ) as gw:
        beast, life = gw.node("beast"), gw.state.lifecycle
        beast.slow_s = 0.3
        stale = asyncio.ensure_future(life.refresh("beast"))  # sees no model
        await until(lambda: beast.calls.count("models") >= 2)
        beast.slow_s = 0
        beast.put("fake/a", "ready")
        await life.refresh("beast")
        assert life.fleet.nodes["beast"].ready("fake/a")
        await stale
        assert life.fleet.nodes["beast"].ready("fake/a")


async def test_the_poll_survives_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in one poll round is logged with its traceback; the next round runs."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        life = gw.state.lifecycle
        failures: list[int] = []

        async def broken() -> None:
            failures.append(1)
            raise RuntimeError("a bug")

        monkeypatch.setattr(life.loads, "maintain", broken)
        await until(lambda: len(failures) >= 3)
        assert not gw.state.running.poller.done()
    records = [r for r in caplog.records if r.getMessage() == "fleet poll failed"]
    assert len(records) >= 3
    assert records[0].exc_info is not None


async def test_a_slow_client_body_is_a_408(tmp_path: Path) -> None:
    """A body that does not arrive within body_timeout_s: 408, and the request goes nowhere."""

    async def trickle() -> Any:
        yield b'{"model": "fake/a", '
        await asyncio.sleep(1)
        yield b'"messages": []}'

    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, body_timeout_s=0.1
    ) as gw:
        response = await gw.http.post(
            "/v1/chat/completions", content=trickle(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 408
        assert gw.node("beast").requests == []


async def test_a_boundless_stream_is_cut_not_buffered(tmp_path: Path) -> None:
    """Megabytes without an event boundary: the stream ends with an error event."""
    endless = [b"data: " + b"x" * (1 << 20) for _ in range(6)]
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        await ready_on(gw, "beast")
        gw.node("beast").answers.append(StreamAnswer(endless))
        response = await gw.chat("fake/a", stream=True)
        assert response.status_code == 200
        assert len(response.content) < 1 << 20
        assert events_of(response.text)[-1]["error"]["message"] == (
            "the model server stopped answering"
        )
        assert gw.in_flight == {}


async def test_draining_answers_503_on_health_and_cuts_streams_at_the_deadline(
    tmp_path: Path,
) -> None:
    """After SIGTERM's drain: /health 503, and a stream still running ends with an error."""
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        await ready_on(gw, "beast")
        gw.node("beast").answers.append(StreamAnswer(WORDS, hang_after=1))
        streaming = asyncio.ensure_future(gw.chat("fake/a", stream=True))
        await until(lambda: gw.node("beast").open_requests == 1)
        draining = asyncio.ensure_future(gw.state.drain(0.3))
        await until(lambda: gw.state.draining)
        health = await gw.http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "draining"
        await draining
        response = await asyncio.wait_for(streaming, 5)
        error = events_of(response.text)[-1]["error"]
        assert error["message"] == "the gateway is shutting down"
        assert error["code"] == 503


async def test_draining_an_idle_gateway_ends_at_once(tmp_path: Path) -> None:
    """Nothing in flight: the drain returns without waiting for its grace."""
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        await asyncio.wait_for(gw.state.drain(60), 5)


async def test_reload_takes_a_good_catalogue_and_refuses_a_broken_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP's reload: a new alias serves at once; a broken file changes nothing."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        models_toml = tmp_path / "models.toml"
        models_toml.write_text('[aliases]\n"helexa/small" = "fake/a"\n' + CATALOGUE)
        assert await gw.state.reload() is None
        assert (await gw.chat("helexa/small")).status_code == 200
        models_toml.write_text('[aliases]\n"helexa/small" = "fake/nowhere"\n' + CATALOGUE)
        assert await gw.state.reload() is not None
        assert (await gw.chat("helexa/small")).status_code == 200
    messages = [r.getMessage() for r in caplog.records]
    assert "catalogue reloaded" in messages
    assert "catalogue not reloaded" in messages


async def test_a_ready_models_anthropic_stream_commits_after_the_upstream_answers(
    tmp_path: Path,
) -> None:
    """A loaded model's failing upstream is a real 502 with the node named, not 200 + error."""
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        await ready_on(gw, "beast")
        gw.node("beast").answers.append(JsonAnswer(b'{"error": "boom"}', 500))
        response = await gw.message("fake/a", stream=True)
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "api_error"
        assert response.headers["x-cortex-node"] == "beast"
        fine = await gw.message("fake/a", stream=True)
        assert fine.status_code == 200
        assert fine.headers["x-cortex-node"] == "beast"


async def test_a_burst_is_spread_evenly_over_replicas(tmp_path: Path) -> None:
    """Fifty requests at once over two replicas: counted as they are routed, split 25/25."""
    nodes = [ScriptedNode("one", chunk_delay_s=0.02), ScriptedNode("two", chunk_delay_s=0.02)]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await ready_on(gw, "one", "two")
        answers = await asyncio.gather(*(gw.chat("fake/a", stream=True) for _ in range(50)))
        served = [a.headers["x-cortex-node"] for a in answers]
        assert served.count("one") == served.count("two") == 25


async def test_neuron_tokens_are_sent_and_required(tmp_path: Path) -> None:
    """A neuron with a token gets it from the gateway; without it the node is down (401)."""
    node = ScriptedNode("beast", token="s3cret")
    async with serve(tmp_path / "ok", [node], CATALOGUE, models=MODELS) as gw:
        assert gw.state.lifecycle.fleet.nodes["beast"].up
        assert (await gw.chat("fake/a")).status_code == 200
        assert gw.fleet.tokens == {"beast": "s3cret"}
    wrong = ScriptedNode("beast", token="s3cret")
    async with serve(
        tmp_path / "wrong",
        [wrong],
        CATALOGUE,
        models=MODELS,
        environ={"CORTEX_TOKEN_BEAST": "guess"},
    ) as gw:
        assert not gw.state.lifecycle.fleet.nodes["beast"].up
    missing = ScriptedNode("beast", token="s3cret")
    with pytest.raises(ConfigError, match=r"neurons\[0\]\.token_env: names \$CORTEX_TOKEN_BEAST"):
        async with serve(tmp_path / "missing", [missing], CATALOGUE, environ={}):
            pass


@pytest.mark.parametrize(
    ("headers", "path", "status"),
    [
        ({}, "/v1/models", 401),
        ({"x-api-key": "inference"}, "/v1/models", 200),
        ({"x-api-key": "admin"}, "/v1/models", 200),
        ({}, "/admin/fleet", 401),
        ({"authorization": "Bearer inference"}, "/admin/fleet", 403),
        ({"authorization": "Bearer admin"}, "/admin/fleet", 200),
        ({"authorization": "Bearer wrong"}, "/admin/fleet", 401),
    ],
)
async def test_admin_keys(tmp_path: Path, headers: dict[str, str], path: str, status: int) -> None:
    """With admin_keys, /admin/* takes only those (an API key is 403); they also admit the API."""
    async with serve(
        tmp_path,
        [ScriptedNode("beast")],
        CATALOGUE,
        models=MODELS,
        api_keys=["inference"],
        admin_keys=["admin"],
    ) as gw:
        response = await gw.http.get(path, headers=headers)
        assert response.status_code == status


async def test_only_admin_keys_leaves_the_api_open(tmp_path: Path) -> None:
    """admin_keys without api_keys: inference is open, the admin API is keyed."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, admin_keys=["admin"]
    ) as gw:
        assert (await gw.http.get("/v1/models")).status_code == 200
        assert (await gw.http.get("/admin/fleet")).status_code == 401


async def test_a_web_page_cannot_post_to_the_admin_api(tmp_path: Path) -> None:
    """A POST that is not declared JSON (what a browser sends unasked) is 415, not acted on."""
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        await ready_on(gw, "beast")
        response = await gw.http.post(
            "/admin/models/unload",
            content=b'{"model": "fake/a"}',
            headers={"content-type": "text/plain"},
        )
        assert response.status_code == 415
        assert gw.node("beast").ready("fake/a")
        assert "unload fake/a" not in gw.node("beast").calls


async def test_hostile_model_ids_are_bounded_and_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A megabyte or a control character in a model id: bounded, escaped answers and logs."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        huge = await gw.chat("m" * (1 << 20))
        assert huge.status_code == 404
        assert len(huge.content) < 2000
        control = await gw.chat("evil\x00\x1b[31mred")
        assert control.status_code == 404
        assert "\\x00\\x1b[31mred" in control.json()["error"]["message"]
    for record in caplog.records:
        for value in vars(record).values():
            if isinstance(value, str):
                assert "\x00" not in value
                assert len(value) < 2000


async def test_the_connect_timeout_reaches_the_transport(tmp_path: Path) -> None:
    """connect_timeout_s is what the HTTP transport is built with."""
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, connect_timeout_s=1.5
    ) as gw:
        neurons = http_neurons(gw.state.config)
        try:
            assert isinstance(neurons, HttpNeurons)
            assert neurons.timeout.connect == 1.5
        finally:
            await neurons.aclose()


async def test_a_restarted_neuron_is_noticed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new started_at: the gateway logs the restart and drops what it held on the node."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    async with serve(
        tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS, poll_interval_s=3600
    ) as gw:
        await ready_on(gw, "beast")
        beast = gw.node("beast")
        beast.answers.append(StreamAnswer(WORDS, hang_after=1))
        streaming = asyncio.ensure_future(gw.chat("fake/a", stream=True))
        await until(lambda: beast.open_requests == 1)
        beast.restart()
        await gw.state.lifecycle.refresh("beast")
        response = await asyncio.wait_for(streaming, 5)
        assert events_of(response.text)[-1]["error"]["message"] == (
            "the model server stopped answering"
        )
        assert (await gw.chat("fake/a")).status_code == 200  # loaded again
    assert "neuron restarted" in [r.getMessage() for r in caplog.records]
