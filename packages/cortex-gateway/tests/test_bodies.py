"""The pure helpers of the request path: body rewrites, relayable errors, loopback URLs."""

from __future__ import annotations

import json

import pytest

from cortex_core.wire import WireError
from cortex_gateway.bodies import MAX_RELAYED_MESSAGE, relayable_message, rewrite_model
from cortex_gateway.records import rewrite_loopback

# --- rewrite_model ----------------------------------------------------------------------------

CHAT_BODY = (
    '{"model":"helexa/small",'
    '"messages":[{"role":"system","content":"Tu es un assistant. R\\u00e9ponds bri\\u00e8vement."},'
    '{"role":"user","content":"caf\\u00e9 \\ud83d\\ude00 \\"quoted\\" \\/slash"}],'
    '"temperature":1.0e-5,"top_p":1.00,"max_tokens":64,"seed":-0,'
    '"stream":true,"stream_options":{"include_usage": true,  "z": [1, 2.50E+3]},'
    '"logit_bias":{"50256":-100},"stop":null,'
    '"metadata":{"model":"keep-me","nested":{"model":"and-me"}}}'
)


def test_rewrite_model_changes_only_the_model_value() -> None:
    """Every byte but the top-level model value survives: floats, escapes, nesting, key order."""
    rewritten = rewrite_model(CHAT_BODY.encode(), "Qwen/Qwen3-1.7B").decode()
    expected = CHAT_BODY.replace('"model":"helexa/small"', '"model":"Qwen/Qwen3-1.7B"', 1)
    assert rewritten == expected


def test_rewrite_model_keeps_key_order_when_model_is_not_first() -> None:
    """A ``model`` key in the middle of the body is rewritten in place."""
    body = '{"messages":[],"model":"helexa/small","temperature":0.70}'
    assert rewrite_model(body.encode(), "Qwen/Qwen3-8B").decode() == (
        '{"messages":[],"model":"Qwen/Qwen3-8B","temperature":0.70}'
    )


def test_rewrite_model_leaves_nested_model_keys_alone() -> None:
    """Only the top-level ``model`` changes; ``model`` keys inside other values do not."""
    rewritten = json.loads(rewrite_model(CHAT_BODY.encode(), "Qwen/Qwen3-1.7B"))
    assert rewritten["model"] == "Qwen/Qwen3-1.7B"
    assert rewritten["metadata"] == {"model": "keep-me", "nested": {"model": "and-me"}}


def test_rewrite_model_keeps_values_despite_whitespace_between_fields() -> None:
    """A pretty-printed body keeps every value's own bytes; only the model value changes."""
    body = '{\n  "model": "helexa/small",\n  "temperature": 1.0e-5,\n  "x": {"a" : [1,  2]}\n}'
    rewritten = rewrite_model(body.encode(), "Qwen/Qwen3-8B").decode()
    assert "1.0e-5" in rewritten
    assert '{"a" : [1,  2]}' in rewritten
    assert json.loads(rewritten) == {
        "model": "Qwen/Qwen3-8B",
        "temperature": 1.0e-5,
        "x": {"a": [1, 2]},
    }


def test_rewrite_model_escapes_the_new_id() -> None:
    """The new model id is encoded as a proper JSON string."""
    model = 'odd/na"me\\with\u00e9'
    rewritten = rewrite_model(b'{"model":"x","n":1}', model)
    assert json.loads(rewritten) == {"model": model, "n": 1}


def test_rewrite_model_replaces_a_non_string_model() -> None:
    """A model of any JSON type is replaced by the concrete id."""
    rewritten = rewrite_model(b'{"model":{"id":"x"},"n":1}', "Qwen/Qwen3-8B")
    assert rewritten == b'{"model":"Qwen/Qwen3-8B","n":1}'


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'"helexa/small"',
        b"null",
        b"42",
        b"true",
        b"",
        b"{not json",
        b'{"model": "x"',
        b'{"model": "x"} trailing',
        b"\xff\xfe",
    ],
)
def test_rewrite_model_rejects_bodies_that_are_not_json_objects(body: bytes) -> None:
    """Anything but a JSON object raises WireError."""
    with pytest.raises(WireError):
        rewrite_model(body, "Qwen/Qwen3-8B")


# --- relayable_message ------------------------------------------------------------------------


def test_relayable_message_from_an_openai_envelope() -> None:
    """An OpenAI error envelope's message is relayed, and nothing else of it."""
    body = json.dumps(
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        }
    ).encode()
    assert relayable_message(body) == "This model's maximum context length is 8192 tokens."


def test_relayable_message_is_truncated() -> None:
    """A long message is cut to the first 500 characters."""
    message = "x" * 400 + "y" * 1600
    body = json.dumps({"error": {"message": message, "type": "BadRequestError"}}).encode()
    relayed = relayable_message(body)
    assert MAX_RELAYED_MESSAGE == 500
    assert relayed == message[:500]


@pytest.mark.parametrize(
    "body",
    [
        b"Internal Server Error",
        b"",
        b"[]",
        b'"error"',
        b"null",
        b"7",
        b'{"detail": "Not Found"}',
        b'{"error": "boom"}',
        b'{"error": null}',
        b'{"error": ["message"]}',
        b'{"error": {"type": "server_error"}}',
        b'{"error": {"message": 5}}',
        b'{"error": {"message": null}}',
        b"\xff\xfe\xfd",
        b"<html><body>502 Bad Gateway</body></html>",
    ],
)
def test_relayable_message_none_for_anything_else(body: bytes) -> None:
    """A body that is not an OpenAI error envelope with a string message relays nothing."""
    assert relayable_message(body) is None


# --- rewrite_loopback ------------------------------------------------------------------------

BEAST = "http://beast.internal:13131"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost:13131/v1", "http://beast.internal:13131/v1"),
        ("http://127.0.0.1:13131/v1", "http://beast.internal:13131/v1"),
        ("http://0.0.0.0:13131/v1", "http://beast.internal:13131/v1"),
        ("http://[::1]:13131/v1", "http://beast.internal:13131/v1"),
        ("http://LOCALHOST:13131/v1", "http://beast.internal:13131/v1"),
    ],
)
def test_rewrite_loopback_replaces_loopback_hosts(url: str, expected: str) -> None:
    """Each loopback spelling is replaced by the neuron endpoint's host, port and path kept."""
    assert rewrite_loopback(url, BEAST) == expected


def test_rewrite_loopback_keeps_a_distinct_inference_port() -> None:
    """The port of the advertised URL is kept, not the endpoint's."""
    assert rewrite_loopback("http://127.0.0.1:8000/v1", BEAST) == "http://beast.internal:8000/v1"


def test_rewrite_loopback_without_a_port() -> None:
    """A loopback URL without a port stays without one."""
    assert rewrite_loopback("http://localhost/v1", BEAST) == "http://beast.internal/v1"


def test_rewrite_loopback_keeps_scheme_path_and_query() -> None:
    """Scheme, path and query of the advertised URL are kept."""
    url = "https://localhost:8443/engines/qwen/v1?x=1"
    assert rewrite_loopback(url, BEAST) == "https://beast.internal:8443/engines/qwen/v1?x=1"


@pytest.mark.parametrize(
    "url",
    [
        "http://beast.internal:13131/v1",
        "http://10.0.0.5:8000/v1",
        "https://gpu.example.com/v1",
        "http://[fd00::5]:13131/v1",
        "http://127.0.0.2:13131/v1",
    ],
)
def test_rewrite_loopback_leaves_other_hosts(url: str) -> None:
    """A URL whose host is not one of the loopback names is returned as it is."""
    assert rewrite_loopback(url, BEAST) == url


def test_rewrite_loopback_brackets_an_ipv6_endpoint_host() -> None:
    """An IPv6 endpoint host is bracketed in the rewritten URL."""
    rewritten = rewrite_loopback("http://localhost:13131/v1", "http://[fd00::5]:13131")
    assert rewritten == "http://[fd00::5]:13131/v1"


def test_rewrite_loopback_with_an_ip_endpoint() -> None:
    """An IPv4 endpoint host is used as it is."""
    rewritten = rewrite_loopback("http://0.0.0.0:8001/v1", "http://192.168.1.20:13131")
    assert rewritten == "http://192.168.1.20:8001/v1"
