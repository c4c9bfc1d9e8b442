"""The gateway's load → chat → evict → reload path on a neuron running real vLLM.

SmolLM2 also answers Anthropic clients through /v1/messages, and
count_tokens agrees with the neuron's own tokenizer.

The neuron has a memory limit that holds one of the two models at a time, so
each switch makes the neuron's preflight refuse the load, the gateway evict
the least recently used model, and the new model load. SmolLM2 answers for
real through the alias ``helexa/small``.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from neuron.testing.models import build_tiny_model, prepare_smollm2
from tests.support import Fleet, NeuronSpec, StartFleet

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]

CATALOGUE = """
[aliases]
"helexa/small" = "test/smollm2"

[[models]]
id = "test/smollm2"
[models.engine]
max_model_len = 2048
dtype = "float32"  # its answers are checked: the same on every CPU (docs/neuron.md)

[[models]]
id = "test/tiny-qwen3"
[models.engine]
max_model_len = 1024
reasoning_parser = ""
"""


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A path source with the tiny model and SmolLM2 (built once, cached between runs)."""
    cache = Path(os.environ.get("CORTEX_MODEL_CACHE", REPO / ".cache" / "models"))
    root = tmp_path_factory.mktemp("models") / "test"
    root.mkdir()
    (root / "tiny-qwen3").symlink_to(build_tiny_model(cache / "tiny-qwen3"))
    (root / "smollm2").symlink_to(prepare_smollm2(cache / "smollm2-135m-instruct"))
    return root.parent


def chat(fleet: Fleet, model: str) -> tuple[str, str]:
    """A chat completion through the gateway: the answer and the node that served it."""
    client = fleet.openai()
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=QUESTION,
        max_tokens=30,
        temperature=0,
    )
    return raw.parse().choices[0].message.content or "", raw.headers["x-cortex-node"]


def test_load_chat_evict_reload(start_fleet: StartFleet, models_root: Path) -> None:
    """Switching between two models that cannot share the node evicts and reloads them."""
    fleet = start_fleet(
        [NeuronSpec("cpu1", "127.0.0.5", real=True, memory_limit_gb=3.0)],
        CATALOGUE,
        models_root=models_root,
    )
    answer, node = chat(fleet, "helexa/small")
    assert "Paris" in answer
    assert node == "cpu1"
    assert fleet.loaded() == {"cpu1": ["test/smollm2"]}

    answer, _ = chat(fleet, "test/tiny-qwen3")
    assert answer
    assert fleet.loaded() == {"cpu1": ["test/tiny-qwen3"]}

    client = fleet.openai()
    stream = client.chat.completions.create(
        model="helexa/small",
        messages=QUESTION,
        max_tokens=30,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3  # streamed token by token
    assert "Paris" in "".join(pieces)
    assert fleet.loaded() == {"cpu1": ["test/smollm2"]}
    assert fleet.engine_starts("test/smollm2") == 2
    assert fleet.gateway.log().count("reason=lru") == 2
    # Anthropic clients get the same real model through /v1/messages.
    sdk = fleet.anthropic()
    message = sdk.messages.create(
        model="helexa/small",
        max_tokens=30,
        extra_body={"temperature": 0},  # this SDK no longer types it; the API takes it
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert message.content[0].type == "text"
    assert "Paris" in message.content[0].text
    assert message.stop_reason == "end_turn"
    with sdk.messages.stream(
        model="helexa/small",
        max_tokens=30,
        extra_body={"temperature": 0},  # this SDK no longer types it; the API takes it
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    ) as anthropic_stream:
        streamed = "".join(anthropic_stream.text_stream)
    assert "Paris" in streamed
    counted = sdk.messages.count_tokens(
        model="helexa/small",
        system="You are terse.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    neuron = httpx.post(
        f"{fleet.neurons['cpu1'].url}/tokenize",
        json={
            "model": "test/smollm2",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
        },
    ).json()
    assert counted.input_tokens == neuron["count"]
    assert counted.input_tokens > 10
