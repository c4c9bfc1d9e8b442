"""Schema evolution: what a newer peer sends never makes a whole answer undecodable."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
import pytest

from cortex_core import anthropic as an
from cortex_core import embeddings as em
from cortex_core import neuron_api as api
from cortex_core import openai as oa
from cortex_core import responses_api as ra
from cortex_core.wire import decode

PEER_ANSWERS: list[type[Any]] = [
    *(
        t
        for _, t in inspect.getmembers(api, inspect.isclass)
        if issubclass(t, msgspec.Struct) and t.__module__ == api.__name__
    ),
    oa.ChatCompletion,
    oa.ChatCompletionChunk,
    oa.Completion,
    oa.ModelList,
    oa.ErrorEnvelope,
    ra.Response,
    em.EmbeddingList,
    em.RerankResponse,
    em.ScoreResponse,
    an.Message,
    an.MessageStart,
    an.MessageDelta,
    an.ContentBlockStart,
    an.ContentBlockDelta,
    an.ErrorEnvelope,
]
"""What a gateway decodes from a neuron, and what clients decode from the gateway."""


def _closed_enums(type_info: msgspec.inspect.Type, seen: set[object], where: str) -> list[str]:
    """Fields anywhere under ``type_info`` whose only type is a Literal (no ``| str`` escape)."""
    found: list[str] = []
    if isinstance(type_info, msgspec.inspect.StructType):
        if type_info.cls in seen:
            return found
        seen.add(type_info.cls)
        for field in type_info.fields:
            place = f"{type_info.cls.__name__}.{field.name}"
            if isinstance(field.type, msgspec.inspect.LiteralType):
                found.append(place)
            found += _closed_enums(field.type, seen, place)
    elif isinstance(type_info, msgspec.inspect.UnionType):
        open_ = any(isinstance(t, msgspec.inspect.StrType) for t in type_info.types)
        for member in type_info.types:
            if isinstance(member, msgspec.inspect.LiteralType) and not open_:
                found.append(where)
            found += _closed_enums(member, seen, where)
    elif isinstance(type_info, msgspec.inspect.ListType | msgspec.inspect.DictType):
        inner = (
            type_info.item_type
            if isinstance(type_info, msgspec.inspect.ListType)
            else type_info.value_type
        )
        found += _closed_enums(inner, seen, where)
    return found


@pytest.mark.parametrize("type_", PEER_ANSWERS, ids=lambda t: t.__name__)
def test_enum_like_fields_accept_values_this_version_does_not_know(type_: type[Any]) -> None:
    """Every enum-like field a peer sends is ``Literal[...] | str``: new values decode."""
    assert _closed_enums(msgspec.inspect.type_info(type_), set(), type_.__name__) == []


def test_a_future_neurons_answers_decode() -> None:
    """Answers from a newer neuron: new states, codes, fields and objects decode."""
    models = decode(
        b"""{"models": [
            {"id": "a", "state": "migrating", "resume_after_s": 3, "memory_bytes": 7},
            {"id": "b", "state": "ready", "quantization": {"bits": 4}}
        ], "generation": 12}""",
        api.ModelsResponse,
    )
    assert [(m.id, m.state, m.memory_bytes) for m in models.models] == [
        ("a", "migrating", 7),
        ("b", "ready", 0),
    ]
    assert "migrating" not in api.MODEL_STATES
    error = decode(
        b'{"error": {"code": "quota_exceeded", "message": "m", "retry_after_s": 5}}',
        api.ErrorResponse,
    )
    assert (error.error.code, error.status) == ("quota_exceeded", 500)
    unloaded = decode(b'{"id": "a", "state": "draining"}', api.UnloadResponse)
    assert unloaded.state == "draining"


def test_a_future_servers_completion_decodes() -> None:
    """A newer OpenAI server's finish reasons, object names and tool types decode."""
    chunk = decode(
        b"""{"id": "c", "object": "chat.completion.chunk.v2", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "pause", "delta": {"tool_calls": [
            {"index": 0, "type": "custom", "function": {"name": "f"}}]}}]}""",
        oa.ChatCompletionChunk,
    )
    assert chunk.object == "chat.completion.chunk.v2"
    assert chunk.choices[0].finish_reason == "pause"
    calls = chunk.choices[0].delta.tool_calls
    assert calls is not None
    assert calls[0].type == "custom"


def test_the_check_finds_closed_enums() -> None:
    """The check above is not vacuous: a client request's closed ``role`` is found."""
    found = _closed_enums(msgspec.inspect.type_info(an.MessagesRequest), set(), "MessagesRequest")
    assert "MessageParam.role" in found
