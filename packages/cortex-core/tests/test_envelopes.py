"""Round trips of every OpenAI, Anthropic and neuron envelope against real payloads.

The fixtures are examples from the public API documentation and recordings of
real servers (see fixtures/README.md). Each decodes into its type and encodes
back to the same JSON, apart from nulls and from fields this version does not
model, which are ignored without error and listed here so that none is dropped
by accident.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cortex_core import anthropic, neuron_api, openai
from cortex_core.wire import WireError, decode, encode, to_builtins

FIXTURES = Path(__file__).parent / "fixtures"

# Fixture name prefix -> the type it decodes as.
TYPES: dict[str, Any] = {
    "openai/chat_request": openai.ChatCompletionRequest,
    "openai/chat_response": openai.ChatCompletion,
    "openai/vllm_chat_response": openai.ChatCompletion,
    "openai/chat_stream": openai.ChatCompletionChunk,
    "openai/vllm_chat_stream": openai.ChatCompletionChunk,
    "openai/completion_request": openai.CompletionRequest,
    "openai/completion_response": openai.Completion,
    "openai/completion_stream": openai.Completion,
    "openai/models_list": openai.ModelList,
    "openai/model_object": openai.ModelObject,
    "openai/error": openai.ErrorEnvelope,
    "anthropic/messages_request": anthropic.MessagesRequest,
    "anthropic/messages_response": anthropic.Message,
    "anthropic/messages_stream": anthropic.StreamEvent,
    "anthropic/count_tokens_request": anthropic.CountTokensRequest,
    "anthropic/count_tokens_response": anthropic.CountTokensResponse,
    "anthropic/error": anthropic.ErrorEnvelope,
}

# Fields that real payloads carry and these types leave out on purpose: the
# gateway forwards raw bytes, so nothing is lost on the wire by ignoring them.
UNMODELLED = {
    "prompt_token_ids",  # vLLM: the prompt's token ids, on request
    "token_ids",  # vLLM: each choice's token ids, on request
    "prompt_logprobs",  # vLLM
    "kv_transfer_params",  # vLLM: disaggregated prefill
    "obfuscation",  # OpenAI: stream padding
    "annotations",  # OpenAI: url citations in a message
    "audio",  # OpenAI: audio output
    "function_call",  # OpenAI: legacy function calling in responses
}


def _fixtures() -> list[tuple[str, Any]]:
    found = []
    for path in sorted(FIXTURES.glob("*/*.json*")):
        name = f"{path.parent.name}/{path.stem}"
        type_ = next((t for prefix, t in TYPES.items() if name.startswith(prefix)), None)
        assert type_ is not None, f"no type for fixture {name}"
        found.append((name, type_))
    return found


def _documents(name: str) -> list[Any]:
    path = next(FIXTURES.glob(f"{name}.json*"))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(path.read_text())]


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _differences(original: Any, ours: Any, path: str = "$") -> list[str]:
    """Where ``ours`` differs from ``original``, ignoring unmodelled fields."""
    if isinstance(original, dict) and isinstance(ours, dict):
        problems = []
        for key in original.keys() | ours.keys():
            where = f"{path}.{key}"
            if key not in ours:
                if key not in UNMODELLED:
                    problems.append(f"dropped {where}")
            elif key not in original:
                problems.append(f"added {where}")
            else:
                problems += _differences(original[key], ours[key], where)
        return problems
    if isinstance(original, list) and isinstance(ours, list) and len(original) == len(ours):
        return [
            p
            for i, (a, b) in enumerate(zip(original, ours, strict=True))
            for p in _differences(a, b, f"{path}[{i}]")
        ]
    same_type = type(original) is type(ours) or {type(original), type(ours)} == {int, float}
    if original != ours or not same_type:
        return [f"changed {path}: {original!r} -> {ours!r}"]
    return []


@pytest.mark.parametrize(("name", "type_"), _fixtures(), ids=[n for n, _ in _fixtures()])
def test_round_trip(name: str, type_: Any) -> None:
    """The payload decodes and encodes back to the same JSON."""
    for document in _documents(name):
        payload = document["data"] if name.startswith("anthropic/messages_stream") else document
        if name.startswith("anthropic/messages_stream"):
            assert document["event"] == payload["type"]
        value = decode(json.dumps(payload).encode(), type_)
        ours = _strip_nulls(to_builtins(value))
        assert _differences(_strip_nulls(payload), ours) == []
        assert decode(encode(value), type_) == value


def test_fixture_set_is_complete() -> None:
    """Every envelope family has at least one real payload."""
    names = {name for name, _ in _fixtures()}
    for prefix in TYPES:
        assert any(name.startswith(prefix) for name in names), prefix


def test_unknown_fields_are_ignored() -> None:
    """Fields a newer peer adds are ignored, at the top and deep inside."""
    body = {
        "model": "m",
        "future_top": {"x": 1},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "new": 1}], "x": 2}
        ],
        "stream_options": {"include_usage": True, "later": True},
    }
    request = decode(json.dumps(body).encode(), openai.ChatCompletionRequest)
    assert request.messages[0] == openai.UserMessage(content=[openai.TextPart(text="hi")])
    message = {
        "model": "m",
        "max_tokens": 5,
        "new_option": "x",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "citations_v2": []}]}
        ],
    }
    assert decode(json.dumps(message).encode(), anthropic.MessagesRequest).max_tokens == 5
    info = decode(b'{"id": "a/b", "state": "ready", "gpu_clock": 5}', neuron_api.ModelInfo)
    assert info.state == "ready"
    assert info.in_flight == 0


def test_request_types_omit_unset_fields() -> None:
    """An encoded request carries only what was set, so a translated request is minimal."""
    request = openai.ChatCompletionRequest(
        model="m", messages=[openai.UserMessage(content="hi")], max_tokens=5
    )
    assert json.loads(encode(request)) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    }


@pytest.mark.parametrize(
    ("body", "type_", "path"),
    [
        (
            b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}',
            openai.ChatCompletionRequest,
            "$.messages[0].role",
        ),
        (
            b'{"model": "m", "messages": [], "max_tokens": -1}',
            openai.ChatCompletionRequest,
            "$.max_tokens",
        ),
        (
            b'{"model": "m", "max_tokens": 0, "messages": []}',
            anthropic.MessagesRequest,
            "$.max_tokens",
        ),
        (
            b'{"model": "m", "max_tokens": 1, "messages": '
            b'[{"role": "user", "content": [{"type": "video"}]}]}',
            anthropic.MessagesRequest,
            "$.messages[0].content[0].type",
        ),
        (
            b'{"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "x"}}',
            anthropic.MessagesRequest,
            "$.tool_choice.type",
        ),
        (b'{"model": 7}', neuron_api.LoadRequest, "$.model"),
    ],
)
def test_invalid_requests(body: bytes, type_: Any, path: str) -> None:
    """Ill-typed requests are WireErrors naming where the problem is."""
    with pytest.raises(WireError) as info:
        decode(body, type_)
    assert info.value.path == path
