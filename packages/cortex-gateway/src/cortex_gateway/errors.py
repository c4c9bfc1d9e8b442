"""The gateway's one error type: raised anywhere on a request's path, answered in one place.

A :class:`GatewayError` carries the status to send, a typed kind (which is also
the ``kind`` label of ``cortex_request_errors_total``), a message safe to show
the client, and the fields an operator needs in the log line. The routes raise
it; ``pipeline`` logs and counts it once and renders it in the envelope of the
route's surface: OpenAI's or Anthropic's.
"""

from __future__ import annotations

import enum
from typing import Any

from cortex_core.anthropic import ErrorEnvelope as AnthropicEnvelope
from cortex_core.anthropic import ErrorType as AnthropicType
from cortex_core.anthropic import error_envelope as anthropic_envelope
from cortex_core.neuron_api import context_length_error
from cortex_core.openai import ErrorEnvelope as OpenAIEnvelope
from cortex_core.openai import error_envelope as openai_envelope
from cortex_core.text import printable

__all__ = [
    "ErrorKind",
    "GatewayError",
    "Surface",
    "anthropic_type",
    "context_length_exceeded",
    "internal_error",
    "no_such_model",
    "upstream_refusal",
]


class ErrorKind(enum.StrEnum):
    """What went wrong, spelled as the metric label ``kind``."""

    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    UPSTREAM = "upstream"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class Surface(enum.Enum):
    """Which API a route belongs to: it decides the error envelope."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


_OPENAI_TYPES: dict[ErrorKind, str] = {
    ErrorKind.BAD_REQUEST: "invalid_request_error",
    ErrorKind.TOO_LARGE: "invalid_request_error",
    ErrorKind.UNAUTHORIZED: "authentication_error",
    ErrorKind.FORBIDDEN: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.CONFLICT: "invalid_request_error",
    ErrorKind.OVERLOADED: "rate_limit_error",
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.UNAVAILABLE: "service_unavailable",
    ErrorKind.UPSTREAM: "upstream_error",
    ErrorKind.TIMEOUT: "timeout",
    ErrorKind.INTERNAL: "server_error",
}

_ANTHROPIC_TYPES: dict[int, AnthropicType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> AnthropicType:
    """The Anthropic error type for an HTTP status (``api_error`` for the rest)."""
    return _ANTHROPIC_TYPES.get(status, "api_error")


class GatewayError(Exception):
    """A request the gateway answers with an error.

    ``status`` is the status sent to the client; anything about the upstream
    (its status, its URL, the exception) belongs in ``log``, which only the
    operator sees. Where the two APIs word an error differently, ``code`` and
    ``param`` are OpenAI's and ``anthropic_message`` is what Anthropic says.
    """

    def __init__(
        self,
        status: int,
        kind: ErrorKind,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        param: str | None = None,
        anthropic_message: str | None = None,
        **log: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}
        """Headers the answer carries (``Retry-After`` on a 429)."""
        self.code = code
        """The OpenAI envelope's ``code`` where it is a name (``rate_limit_exceeded``,
        ``context_length_exceeded``); else the status."""
        self.param = param
        self.anthropic_message = anthropic_message
        self.log = log

    def openai(self) -> OpenAIEnvelope:
        """The OpenAI error envelope (``code`` is the status unless the error has its own)."""
        code = self.code if self.code is not None else self.status
        return openai_envelope(self.message, _OPENAI_TYPES[self.kind], param=self.param, code=code)

    def anthropic(self) -> AnthropicEnvelope:
        """The Anthropic error envelope."""
        message = self.anthropic_message or self.message
        return anthropic_envelope(anthropic_type(self.status), message)

    def envelope(self, surface: Surface) -> OpenAIEnvelope | AnthropicEnvelope:
        """The error envelope of ``surface``."""
        return self.anthropic() if surface is Surface.ANTHROPIC else self.openai()

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.kind.value}, {self.message!r})"


def internal_error() -> GatewayError:
    """An unexpected failure: the client learns nothing more than that."""
    return GatewayError(500, ErrorKind.INTERNAL, "internal error")


def context_length_exceeded(prompt_tokens: int, max_tokens: int, **log: Any) -> GatewayError:
    """A prompt of ``prompt_tokens`` that does not fit a context of ``max_tokens``.

    Each API's own words: OpenAI's ``context_length_exceeded``, and
    Anthropic's ``prompt is too long: N tokens > M maximum``, which Claude
    Code recognises (it compacts its conversation and tries again).
    """
    refusal = context_length_error(prompt_tokens, max_tokens).error
    return GatewayError(
        400,
        ErrorKind.BAD_REQUEST,
        refusal.message,
        code=refusal.code,
        param=refusal.param,
        anthropic_message=f"prompt is too long: {prompt_tokens} tokens > {max_tokens} maximum",
        prompt_tokens=prompt_tokens,
        max_model_len=max_tokens,
        **log,
    )


def upstream_refusal(status: int, relayed: str | None, **log: Any) -> GatewayError:
    """The error for an upstream answer with an error status.

    A server failure (5xx) becomes a generic 502; a refusal (4xx) keeps its
    status, with the neuron's own message when it marked it safe for clients
    (``relayed``: a prompt longer than the context, say), else a generic one.
    """
    if status >= 500:
        return GatewayError(
            502,
            ErrorKind.UPSTREAM,
            f"the model server failed (upstream status {status})",
            upstream_status=status,
            **log,
        )
    message = relayed or f"the model server refused the request (upstream status {status})"
    return GatewayError(status, ErrorKind.BAD_REQUEST, message, upstream_status=status, **log)


def no_such_model(name: str) -> str:
    """The 404's words for a model that does not exist, or that the key may not use (the same)."""
    return f"model '{printable(name)}' does not exist"
