"""Anthropic clients against the gateway: the official anthropic SDK, scripted neurons behind.

Translation itself is tested at its seam (packages/cortex-gateway/tests);
here the SDK drives real processes: non-streaming and streaming messages,
pings while a cold load keeps a stream waiting, count_tokens, and errors in
Anthropic's envelope. Real vLLM answers through /v1/messages in
test_gateway_vllm.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.support import Fleet, NeuronSpec, StartFleet, fake_model

pytestmark = pytest.mark.slow

ANSWER = "The capital of France is Paris."
CATALOGUE = """
[aliases]
"helexa/small" = "fake/small"

[[models]]
id = "fake/small"
memory_gb = 4.1
"""


@pytest.fixture
def fleet(start_fleet: StartFleet, tmp_path: Path) -> Fleet:
    """One scripted neuron whose engines take five seconds to start."""
    root = tmp_path / "models"
    fake_model(root, "fake/small", 3)
    return start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=root,
        gateway='api_keys = ["sesame"]',
        env={"NEURON_TEST_START_DELAY": "5", "NEURON_TEST_CHUNK_DELAY": "0.05"},
    )


def client(fleet: Fleet, key: str = "sesame") -> anthropic.Anthropic:
    """The official Anthropic SDK pointed at the gateway (ANTHROPIC_BASE_URL style)."""
    return fleet.anthropic(key)


def test_a_streamed_message_waits_for_a_cold_load_with_pings(fleet: Fleet) -> None:
    """A stream that has to wait for a load starts at once and pings until the model answers."""
    body = {
        "model": "helexa/small",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    headers = {"x-api-key": "sesame", "anthropic-version": "2023-06-01"}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{fleet.url}/v1/messages", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert time.monotonic() - started > 5
    assert events[0] == "message_start"
    assert events.count("ping") >= 2  # one at the start, more while the model loads
    assert events[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in events


def test_messages_through_the_sdk(fleet: Fleet) -> None:
    """The SDK's create and stream helpers get the answer, with usage and stop reason."""
    sdk = client(fleet)
    message = sdk.messages.create(
        model="helexa/small",
        max_tokens=50,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == ANSWER
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 6
    assert message.id.startswith("msg_")
    with sdk.messages.stream(
        model="fake/small",
        max_tokens=50,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6
    counted = sdk.messages.count_tokens(
        model="helexa/small", messages=[{"role": "user", "content": "one two three four"}]
    )
    assert counted.input_tokens == 4  # the scripted engine counts words


def test_anthropic_errors(fleet: Fleet) -> None:
    """Failures come in Anthropic's envelope with its error types, bearer keys work too."""
    with pytest.raises(anthropic.AuthenticationError) as auth:
        client(fleet, "wrong").messages.create(
            model="fake/small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "missing or invalid API key"},
    }
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(fleet).messages.create(
            model="nobody/nothing", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    bearer = {"authorization": "Bearer sesame", "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=fleet.url, headers=bearer) as http:
        bad = http.post("/v1/messages", json={"model": "fake/small", "messages": []})
        assert bad.status_code == 400
        assert bad.json()["type"] == "error"
        assert bad.json()["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in bad.json()["error"]["message"]
        broken = http.post(
            "/v1/messages", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["type"] == "invalid_request_error"
