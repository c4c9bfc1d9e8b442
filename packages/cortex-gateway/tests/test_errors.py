"""The gateway's error type: statuses, kinds, and both surfaces' envelopes."""

from __future__ import annotations

import pytest

from cortex_core.wire import encode
from cortex_gateway.errors import ErrorKind, GatewayError, Surface, anthropic_type, upstream_refusal


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (503, "overloaded_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
        (502, "api_error"),
        (422, "api_error"),
    ],
)
def test_anthropic_error_types_for_statuses(status: int, expected: str) -> None:
    """HTTP statuses map to Anthropic error types; the rest are api_error."""
    assert anthropic_type(status) == expected


@pytest.mark.parametrize(
    ("kind", "openai_type"),
    [
        (ErrorKind.BAD_REQUEST, "invalid_request_error"),
        (ErrorKind.TOO_LARGE, "invalid_request_error"),
        (ErrorKind.UNAUTHORIZED, "authentication_error"),
        (ErrorKind.NOT_FOUND, "not_found_error"),
        (ErrorKind.UNAVAILABLE, "service_unavailable"),
        (ErrorKind.UPSTREAM, "upstream_error"),
        (ErrorKind.INTERNAL, "server_error"),
    ],
)
def test_every_kind_has_an_openai_type(kind: ErrorKind, openai_type: str) -> None:
    """Each kind renders with its OpenAI type and the status as the code."""
    error = GatewayError(418, kind, "nope")
    assert encode(error.envelope(Surface.OPENAI)) == encode(
        {"error": {"message": "nope", "type": openai_type, "param": None, "code": 418}}
    )


def test_the_anthropic_envelope() -> None:
    """Anthropic's envelope: type error, the mapped type and the message, nothing else."""
    error = GatewayError(404, ErrorKind.NOT_FOUND, "no such model", url="http://secret")
    assert encode(error.envelope(Surface.ANTHROPIC)) == (
        b'{"type":"error","error":{"type":"not_found_error","message":"no such model"}}'
    )


def test_upstream_refusals() -> None:
    """5xx: a generic 502; 4xx: the upstream status with its own message, or a generic one."""
    failed = upstream_refusal(500, "secret stack trace")
    assert (failed.status, failed.kind) == (502, ErrorKind.UPSTREAM)
    assert failed.message == "the model server failed (upstream status 500)"
    assert failed.log["upstream_status"] == 500
    refused = upstream_refusal(400, "prompt too long")
    assert (refused.status, refused.kind, refused.message) == (
        400,
        ErrorKind.BAD_REQUEST,
        "prompt too long",
    )
    silent = upstream_refusal(422, None)
    assert silent.message == "the model server refused the request (upstream status 422)"
