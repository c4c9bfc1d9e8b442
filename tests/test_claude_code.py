"""Claude Code as it ships, through a real gateway to a real CPU neuron, with its prompt cache.

The pinned CLI (``tests.clients``) runs in print mode against the gateway,
which serves SmolLM2-135M-Instruct on one neuron running real vLLM: an
8,192-token context, float32, and no tool-call parser configured (its chat
template shows no tool-call format, so it gets none). Claude Code sets no
temperature, and at vLLM's default of 1 SmolLM2 may ramble on to the end of
its context, at about ten tokens a second here: the engine's generation
defaults make it greedy (``override_generation_config``), so its answers are
short and the same on every run. One fleet serves the whole file; the engine
takes about a minute to start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from neuron.testing.models import prepare_smollm2
from tests.claude_code import FIXTURES, claude_env, run_claude
from tests.support import Fleet, NeuronSpec, launch

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
CONTEXT = 8192
CATALOGUE = f"""
[aliases]
"helexa/small" = "test/smollm2"

[[models]]
id = "test/smollm2"
[models.engine]
max_model_len = {CONTEXT}
dtype = "float32"
override_generation_config = {{ temperature = 0.0 }}
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A gateway and one real CPU neuron with SmolLM2, loaded before the first test."""
    cache = Path(os.environ.get("CORTEX_MODEL_CACHE", REPO / ".cache" / "models"))
    root = tmp_path_factory.mktemp("models")
    (root / "test").mkdir()
    (root / "test" / "smollm2").symlink_to(prepare_smollm2(cache / "smollm2-135m-instruct"))
    workdir = tmp_path_factory.mktemp("fleet") / "fleet"
    running = launch(
        workdir, [NeuronSpec("cpu1", "127.0.0.6", real=True)], CATALOGUE, models_root=root
    )
    running.start()
    try:
        with running.http() as client:
            loaded = client.post("/admin/models/load", json={"model": "test/smollm2"})
            assert loaded.status_code == 200, loaded.text
        yield running
    finally:
        running.stop()
        if os.environ.get("CORTEX_TEST_LOGS"):
            print(running.gateway.log()[-4000:])


def test_claude_code_answers_and_its_second_turn_reads_the_cache(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Print mode, then ``--continue``: no API error; the second turn reads its prefix cached."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = claude_env(home, fleet.url, "helexa/small")
    first = run_claude("What is the capital of France?", env, project)
    second = run_claude("And of Germany?", env, project, resume=True)
    for result in (first, second):
        assert result["is_error"] is False, json.dumps(result)[:3000]
        assert result["api_error_status"] is None, result
        assert result["result"].strip(), result
    assert second["session_id"] == first["session_id"]
    assert second["usage"]["cache_read_input_tokens"] > 1000, second["usage"]
    assert first["usage"]["input_tokens"] + first["usage"]["cache_read_input_tokens"] > 1000


def interactive_body(name: str) -> dict[str, Any]:
    """A recorded interactive first turn, asked for ten tokens without a stream."""
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())["body"]
    return {**body, "stream": False, "max_tokens": 10}


def test_requests_differing_only_in_cch_read_the_second_from_the_cache(fleet: Fleet) -> None:
    """The billing block's ``cch=`` changes; at least 80 % of the second prompt is cached."""
    usages = []
    with fleet.http() as client:
        for name in ("interactive_turn1_0a1b2.json", "interactive_turn1_f3e4d.json"):
            answer = client.post("/v1/messages", json=interactive_body(name))
            assert answer.status_code == 200, answer.text
            usages.append(answer.json()["usage"])
    second = usages[1]
    prompt = second["input_tokens"] + (second["cache_read_input_tokens"] or 0)
    assert prompt > 1000
    assert second["cache_read_input_tokens"] >= 0.8 * prompt, usages


def test_max_tokens_beyond_the_context_answers(fleet: Fleet) -> None:
    """``max_tokens: 32000`` of an 8,192-token model, streamed as Claude Code asks: answered."""
    with fleet.anthropic().messages.stream(
        model="helexa/small",
        max_tokens=32000,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    ) as stream:
        message = stream.get_final_message()
    assert message.content
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens + message.usage.output_tokens <= CONTEXT


def test_a_prompt_longer_than_the_context_is_too_long_in_both_apis(fleet: Fleet) -> None:
    """Anthropic's own text with the whole count, and OpenAI's context_length_exceeded."""
    question = "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 1200
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": question}]
    sdk = fleet.anthropic()
    counted = sdk.messages.count_tokens(model="helexa/small", messages=messages).input_tokens
    assert counted > CONTEXT
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.create(model="helexa/small", max_tokens=100, messages=messages)
    assert refused.value.status_code == 400
    error = refused.value.body["error"]  # type: ignore[index]
    assert error == {
        "type": "invalid_request_error",
        "message": f"prompt is too long: {counted} tokens > {CONTEXT} maximum",
    }
    with pytest.raises(openai.BadRequestError) as too_long:
        fleet.openai().chat.completions.create(
            model="helexa/small", max_tokens=100, messages=[{"role": "user", "content": question}]
        )
    assert too_long.value.code == "context_length_exceeded"
    assert f"resulted in {counted} tokens" in too_long.value.message


def test_cached_tokens_on_the_openai_route_and_in_the_metrics(fleet: Fleet) -> None:
    """The same long prompt twice: cached_tokens in its usage, and counted by the gateway."""
    system = "You are a terse assistant who answers in one word. " * 60
    sdk = fleet.openai()
    for _ in range(2):
        answer = sdk.chat.completions.create(
            model="helexa/small",
            max_tokens=5,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": "Capital of France?"},
            ],
        )
    assert answer.usage is not None
    details = answer.usage.prompt_tokens_details
    assert details is not None
    assert details.cached_tokens is not None
    assert details.cached_tokens >= answer.usage.prompt_tokens // 2
    metrics = httpx.get(f"{fleet.metrics_url}/metrics").text
    cached = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("cortex_cached_prompt_tokens_total{")
    ]
    assert sum(cached) >= details.cached_tokens
