"""Property tests: no input makes a request decoder fail with anything but WireError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex_core import anthropic, neuron_api, openai
from cortex_core.wire import RouteView, WireError, decode, encode

REQUEST_TYPES: list[type[Any]] = [
    RouteView,
    openai.ChatCompletionRequest,
    openai.CompletionRequest,
    anthropic.MessagesRequest,
    anthropic.CountTokensRequest,
    neuron_api.LoadRequest,
    neuron_api.UnloadRequest,
    neuron_api.TokenizeRequest,
]

# JSON values shaped like requests: the keys and tags the decoders look for,
# so generated bodies get past the first check and exercise the nested types.
KEYS = [
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "source",
    "tools",
    "tool_choice",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "input",
    "id",
    "tool_use_id",
    "is_error",
    "system",
    "max_tokens",
    "stream",
    "stream_options",
    "include_usage",
    "thinking",
    "budget_tokens",
    "stop",
    "stop_sequences",
    "prompt",
    "metadata",
    "user_id",
    "options",
    "devices",
    "wait",
    "data",
    "media_type",
    "signature",
]
VALUES = [
    "user",
    "assistant",
    "system",
    "tool",
    "developer",
    "function",
    "text",
    "image",
    "image_url",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "document",
    "base64",
    "url",
    "auto",
    "any",
    "none",
    "required",
    "enabled",
    "disabled",
    "Qwen/Qwen3-8B",
    "",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.sampled_from(VALUES)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=30,
)


def _decode_or_wire_error(data: bytes, type_: type[Any]) -> None:
    try:
        value = decode(data, type_)
    except WireError as exc:
        error: WireError | None = exc
    else:
        error = None
        # What decodes also encodes and decodes again to the same value.
        assert decode(encode(value), type_) == value
    assert error is None or error.message


@pytest.mark.parametrize("type_", REQUEST_TYPES, ids=lambda t: t.__name__)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(type_: type[Any], data: bytes) -> None:
    """Any bytes decode or raise WireError."""
    _decode_or_wire_error(data, type_)


@pytest.mark.parametrize("type_", REQUEST_TYPES, ids=lambda t: t.__name__)
@given(value=json_values)
def test_arbitrary_json(type_: type[Any], value: Any) -> None:
    """Any JSON document decodes or raises WireError."""
    _decode_or_wire_error(json.dumps(value).encode(), type_)


@pytest.mark.parametrize("type_", REQUEST_TYPES, ids=lambda t: t.__name__)
@given(value=st.dictionaries(st.sampled_from(KEYS), json_values, min_size=1, max_size=8))
def test_request_shaped_json(type_: type[Any], value: dict[str, Any]) -> None:
    """Objects built from the request's own keys decode or raise WireError."""
    value.setdefault("model", "Qwen/Qwen3-8B")
    _decode_or_wire_error(json.dumps(value).encode(), type_)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model": "\xff"}',
        b"\x00",
        b"{}" * 3,
        b'{"model": 1e400}',
    ],
    ids=["deep", "bad-utf8", "nul", "trailing", "huge-number"],
)
@pytest.mark.parametrize("type_", REQUEST_TYPES, ids=lambda t: t.__name__)
def test_hostile_inputs(type_: type[Any], data: bytes) -> None:
    """Deep nesting, bad UTF-8 and other hostile bodies raise WireError."""
    with pytest.raises(WireError):
        decode(data, type_)


def test_wire_error_names_the_path() -> None:
    """A wrong type deep in a body is reported with its JSON path."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": 5}]}'
    with pytest.raises(WireError) as info:
        decode(body, openai.ChatCompletionRequest)
    assert info.value.path == "$.messages[0].content"
    assert "$.messages[0].content" in info.value.message
