"""Claude Code's recorded requests replayed through the gateway, over scripted neurons.

The fixtures are what the real CLI sent (``fixtures/claude_code``, with how
to re-record them): each must be answered as Claude Code expects, and reach
the neuron as an OpenAI request the model can serve, without the billing
block. The interactive pair differs only in the billing block's ``cch=``:
the neuron must get the same request twice, and the prefix index see one
prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import Harness, serve
from test_app_anthropic import CATALOGUE, models, nodes, sse
from translate_support import GATEWAY_FIXTURES, check_grammar

from cortex_gateway.testing import ANSWER

pytestmark = pytest.mark.anyio

FIXTURES = GATEWAY_FIXTURES / "claude_code"
RECORDED = sorted(path.name for path in FIXTURES.glob("*.json"))
ROUTING: dict[str, object] = {"prefix_block_chars": 256}


def recorded(name: str) -> dict[str, Any]:
    """One recorded request: ``path``, ``headers``, ``body``."""
    request: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return request


async def replay(gw: Harness, name: str) -> dict[str, Any]:
    """Send a recorded request as the CLI sent it; the JSON body the neuron then received."""
    request = recorded(name)
    answer = await gw.http.post(
        request["path"], content=json.dumps(request["body"]), headers=request["headers"]
    )
    assert answer.status_code == 200, answer.text
    events = [data for _, data in sse(answer.text)]
    check_grammar(events)
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == ANSWER
    body: dict[str, Any] = gw.node("beast").requests[-1].body
    return body


def test_the_fixtures_are_there() -> None:
    """Both print-mode turns and two interactive variants were recorded."""
    assert RECORDED == [
        "interactive_turn1_0a1b2.json",
        "interactive_turn1_f3e4d.json",
        "print_turn1.json",
        "print_turn2.json",
    ]


@pytest.mark.parametrize("name", RECORDED)
async def test_a_recorded_request_is_served(tmp_path: Path, name: str) -> None:
    """Answered as a stream Claude Code reads; sent on as a chat request a model can take."""
    request = recorded(name)["body"]
    async with serve(tmp_path, nodes(), CATALOGUE, models=models()) as gw:
        sent = await replay(gw, name)
    assert "x-anthropic-billing-header" not in json.dumps(sent)
    roles = [m["role"] for m in request["messages"]]
    assert [m["role"] for m in sent["messages"]] == ["system", *roles]
    assert "system" in roles, "Claude Code sends its environment as a system turn"
    shown = [t["name"] for t in request["tools"] if not t.get("defer_loading")]
    assert [t["function"]["name"] for t in sent["tools"]] == shown
    assert len(shown) < len(request["tools"]), "a deferred tool stays out"
    assert sent["max_tokens"] == request["max_tokens"] == 32000
    assert sent["reasoning_effort"] == "high"
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("name", RECORDED)
async def test_count_tokens_takes_a_recorded_request(tmp_path: Path, name: str) -> None:
    """The same body, less what count_tokens does not take, is counted."""
    body = recorded(name)["body"]
    for key in ("max_tokens", "stream", "metadata", "output_config"):
        body.pop(key)
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(), poll_interval_s=3600) as gw:
        counted = await gw.http.post("/v1/messages/count_tokens?beta=true", json=body)
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] > 0


async def test_interactive_requests_differing_in_cch_are_one_prompt(tmp_path: Path) -> None:
    """Two interactive first turns, different ``cch=``: the same request reaches the neuron."""
    first, second = (name for name in RECORDED if name.startswith("interactive"))
    assert recorded(first)["body"]["system"][0] != recorded(second)["body"]["system"][0]
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(), routing=ROUTING) as gw:
        sent = [await replay(gw, first), await replay(gw, second)]
        assert await gw.metric("cortex_prefix_routing_total", outcome="hit") == 1
    assert sent[0] == sent[1]


async def test_the_second_turn_extends_the_first(tmp_path: Path) -> None:
    """``--continue``: the second turn starts with the first one's messages, as sent."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=models(), routing=ROUTING) as gw:
        one = await replay(gw, "print_turn1.json")
        two = await replay(gw, "print_turn2.json")
        assert await gw.metric("cortex_prefix_routing_total", outcome="hit") == 1
    assert two["messages"][: len(one["messages"])] == one["messages"]
    assert two["tools"] == one["tools"]
