"""Clients as they ship, on a real neuron with real vLLM: late system turns, tools, limits, cache.

One daemon and one engine for the file: the tiny Qwen3 loaded with a chat
template that refuses a system message after the first turn (Qwen3.6's rule)
and shows no tool-call format, so the model gets no tool-call parser, and a
1,024-token context. What these tests see is what Claude Code's requests meet
on such a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from neuron.testing.models import build_tiny_model
from neuron.testing.process import NeuronProcess, free_port
from neuron.testing.templates import SYSTEM_FIRST

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[3]
HOST = "127.0.0.4"
TINY = "test/tiny-qwen3"
CONTEXT = 1024
OPTIONS = {"chat_template": SYSTEM_FIRST, "reasoning_parser": "", "max_model_len": CONTEXT}
ENV = "# Environment\nPrimary working directory: /work"
TURN_TWO: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "system", "content": ENV},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany?"},
]
TOOL = {
    "type": "function",
    "function": {
        "name": "Bash",
        "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    """A neuron with the tiny model loaded as described above."""
    cache = Path(os.environ.get("CORTEX_MODEL_CACHE", REPO / ".cache" / "models"))
    root = tmp_path_factory.mktemp("models")
    (root / "test").mkdir()
    (root / "test" / "tiny-qwen3").symlink_to(build_tiny_model(cache / "tiny-qwen3"))
    workdir = tmp_path_factory.mktemp("neuron")
    port = free_port(HOST)
    config = workdir / "neuron.toml"
    config.write_text(
        f'[neuron]\nname = "rules"\nlisten = "{HOST}:{port}"\n'
        f'cache_dir = "{workdir / "cache"}"\ndefault_source = "local"\n'
        f'[sources.local]\npath = "{root}"\n'
    )
    env = {"VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = NeuronProcess(config, f"http://{HOST}:{port}", workdir / "neuron.log", env)
    process.start()
    try:
        with httpx.Client(base_url=process.url, timeout=600) as client:
            loaded = client.post("/models/load", json={"model": TINY, "options": OPTIONS})
        assert loaded.status_code == 200, loaded.text
        yield process
    finally:
        assert process.stop() == 0
        print(process.log()[-3000:])


@pytest.fixture(scope="module")
def api(neuron: NeuronProcess) -> Iterator[httpx.Client]:
    """An HTTP client on the neuron."""
    with httpx.Client(base_url=neuron.url, timeout=600) as client:
        yield client


def chat(api: httpx.Client, **body: Any) -> httpx.Response:
    """``POST /v1/chat/completions`` for the tiny model."""
    return api.post("/v1/chat/completions", json={"model": TINY, "max_tokens": 4, **body})


def test_the_engine_came_up_without_tool_calls_and_folding(neuron: NeuronProcess) -> None:
    """The template shows no tool-call format and refuses late system messages: both noted."""
    ready = next(line for line in neuron.log().splitlines() if "engine ready" in line)
    assert "tool_call_parser=None" in ready
    assert "late_system_messages=folded" in ready


def test_a_late_system_message_is_folded_into_a_user_turn(api: httpx.Client) -> None:
    """Refused by the template as sent, served once folded; /tokenize counts what was served."""
    assert chat(api, messages=TURN_TWO).status_code == 200
    counted = api.post("/tokenize", json={"model": TINY, "messages": TURN_TWO}).json()
    folded = [
        TURN_TWO[0],
        {"role": "user", "content": f"What is the capital of France?\n\n{ENV}"},
        *TURN_TWO[3:],
    ]
    assert counted == api.post("/tokenize", json={"model": TINY, "messages": folded}).json()


def test_tools_with_automatic_choice_are_answered_in_text(
    api: httpx.Client, neuron: NeuronProcess
) -> None:
    """No 400 about vLLM flags: the answer is text; the neuron says once how to turn calls on."""
    for _ in range(2):
        answer = chat(api, messages=TURN_TWO, tools=[TOOL])
        assert answer.status_code == 200, answer.text
        message = answer.json()["choices"][0]["message"]
        assert not message.get("tool_calls")
    said = [line for line in neuron.log().splitlines() if "tool calls are off" in line]
    assert len(said) == 1
    assert "tool_call_parser" in said[0]
    assert f"model={TINY}" in said[0]


def test_a_forced_tool_call_is_refused_naming_the_setting(api: httpx.Client) -> None:
    """tool_choice required cannot be parsed out of the answer: 400, saying what to set."""
    refused = chat(api, messages=TURN_TWO, tools=[TOOL], tool_choice="required")
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert "tool_call_parser" in message
    assert "--tool-call-parser" not in message


def test_max_tokens_beyond_the_context_is_served_with_what_is_left(api: httpx.Client) -> None:
    """32,000 asked of a 1,024 context: answered, within what the prompt leaves."""
    for path, body in (
        ("/v1/chat/completions", {"messages": TURN_TWO}),
        ("/v1/completions", {"prompt": "The capital of France is"}),
    ):
        answer = api.post(path, json={"model": TINY, "max_tokens": 32000, **body})
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= CONTEXT


@pytest.mark.parametrize("repeat", [600, 20000])
def test_a_prompt_too_long_is_refused_with_its_whole_size(api: httpx.Client, repeat: int) -> None:
    """context_length_exceeded with the prompt counted whole (vLLM's own count stops early)."""
    messages = [{"role": "user", "content": "The quick brown fox jumps. " * repeat}]
    refused = chat(api, messages=messages)
    assert refused.status_code == 400, refused.text
    assert refused.headers["x-cortex-relayable"] == "1"
    error = refused.json()["error"]
    counted = api.post("/tokenize", json={"model": TINY, "messages": messages}).json()["count"]
    assert counted > CONTEXT
    assert error["code"] == "context_length_exceeded"
    assert (error["prompt_tokens"], error["max_model_len"]) == (counted, CONTEXT)
    completion = api.post("/v1/completions", json={"model": TINY, "prompt": messages[0]["content"]})
    assert completion.status_code == 400
    assert completion.json()["error"]["code"] == "context_length_exceeded"


def test_cached_prompt_tokens_are_reported(api: httpx.Client) -> None:
    """The same long prompt twice: the second says how much came from the prefix cache."""
    messages = [
        {"role": "system", "content": "You answer briefly. " * 45},
        {"role": "user", "content": "Hello"},
    ]
    chat(api, messages=messages)
    plain = chat(api, messages=messages).json()["usage"]
    assert plain["prompt_tokens_details"]["cached_tokens"] >= plain["prompt_tokens"] // 2
    streamed = api.post(
        "/v1/chat/completions",
        json={
            "model": TINY,
            "max_tokens": 4,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    usage_lines = [line for line in streamed.text.splitlines() if '"usage":{' in line]
    assert '"cached_tokens":' in usage_lines[-1]
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(api.get("/metrics").text)
        for sample in family.samples
    }
    assert samples["neuron_engine_cached_prompt_tokens_total"] >= plain["prompt_tokens"] // 2
