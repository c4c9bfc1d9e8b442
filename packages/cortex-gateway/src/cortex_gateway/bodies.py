"""What the gateway reads from and changes in inference bodies, without decoding the rest.

Only ``model`` is rewritten (to the concrete id the neuron knows),
``stream_options.include_usage`` set when the gateway needs the token counts,
and ``priority`` and ``cache_salt`` set as the request's key says; every
other byte of the body goes as it came. Nothing here does I/O.
"""

from __future__ import annotations

import json

import msgspec

from cortex_core.neuron_api import CONTEXT_LENGTH_EXCEEDED, ContextLengthErrorEnvelope
from cortex_core.openai import StreamOptions
from cortex_core.wire import WireError, decode, encode

__all__ = [
    "MessagesView",
    "RequestView",
    "ResponsesView",
    "context_overflow",
    "relayable_message",
    "rewrite_model",
    "stamp",
]

_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
MAX_RELAYED_MESSAGE = 500
_NONE = msgspec.Raw(b"")
"""A field the body did not have (the JSON ``null`` arrives as ``b"null"``)."""


class RequestView(msgspec.Struct):
    """What the gateway reads of an OpenAI inference body; the rest passes as it came."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    messages: msgspec.Raw = _NONE
    prompt: msgspec.Raw = _NONE

    @property
    def rendered(self) -> bytes:
        """The prompt as prefix-aware routing compares it: the raw JSON of messages or prompt."""
        return bytes(self.messages) or bytes(self.prompt)

    @property
    def wants_usage(self) -> bool:
        """Whether the client asked for the usage chunk at the end of its stream."""
        return bool(self.stream_options and self.stream_options.include_usage)


class MessagesView(msgspec.Struct):
    """An Anthropic Messages body as prefix-aware routing compares it: system, then messages."""

    messages: msgspec.Raw = _NONE
    system: msgspec.Raw = _NONE

    @property
    def rendered(self) -> bytes:
        """The raw JSON of the system prompt, then of the messages."""
        return bytes(self.system) + bytes(self.messages)


class ResponsesView(msgspec.Struct):
    """What the gateway reads of a Responses body (``POST /v1/responses``)."""

    model: str
    stream: bool = False
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    instructions: msgspec.Raw = _NONE
    input: msgspec.Raw = _NONE

    def rendered(self, block_chars: int) -> bytes:
        """The prompt as prefix-aware routing compares it: instructions, then input.

        A ``prompt_cache_key`` comes first, padded to whole blocks: requests
        sharing it share their first prefix blocks however short their input,
        and go where the key's earlier requests went (as OpenAI routes them);
        requests with different keys share no prefix.
        """
        prompt = bytes(self.instructions) + bytes(self.input)
        if not self.prompt_cache_key:
            return prompt
        key = b"\x00prompt_cache_key:" + self.prompt_cache_key.encode()
        return key + b"\x00" * (-len(key) % block_chars) + prompt


def rewrite_model(
    body: bytes,
    model: str,
    *,
    include_usage: bool = False,
    priority: int = 0,
    cache_salt: str | None = None,
) -> bytes:
    """``body`` with its top-level ``model`` set to ``model``; other values kept byte for byte.

    With ``include_usage``, ``stream_options.include_usage`` is also set, so a
    stream ends with the token counts the gateway's metrics need. ``priority``
    and ``cache_salt`` are set as :func:`stamp` sets them, in the same pass.
    """
    try:
        fields = _raw_object.decode(body)
        fields["model"] = msgspec.Raw(encode(model))
        fields.pop("priority", None)
        fields.pop("cache_salt", None)
        if include_usage:
            raw = fields.get("stream_options")
            options = _raw_object.decode(raw) if raw is not None and raw != b"null" else {}
            options["include_usage"] = msgspec.Raw(b"true")
            fields["stream_options"] = msgspec.Raw(encode(options))
    except msgspec.DecodeError as exc:
        raise WireError(f"body is not a JSON object: {exc}") from exc
    _stamp(fields, priority, cache_salt)
    return encode(fields)


def stamp(body: bytes, priority: int, cache_salt: str | None) -> bytes:
    """``body`` with the ``priority`` and ``cache_salt`` its key gives, the client's own dropped.

    The engine schedules by ``priority`` and salts its prefix cache with
    ``cache_salt``: only the gateway sets them. ``priority`` 0 (interactive,
    vLLM's default) and no salt leave a body that names neither as it came.
    """
    untouched = not priority and cache_salt is None
    if untouched and b'"priority"' not in body and b'"cache_salt"' not in body:
        return body
    try:
        fields = _raw_object.decode(body)
    except msgspec.DecodeError as exc:
        raise WireError(f"body is not a JSON object: {exc}") from exc
    fields.pop("priority", None)
    fields.pop("cache_salt", None)
    _stamp(fields, priority, cache_salt)
    return encode(fields)


def _stamp(fields: dict[str, msgspec.Raw], priority: int, cache_salt: str | None) -> None:
    if priority:
        fields["priority"] = msgspec.Raw(encode(priority))
    if cache_salt is not None:
        fields["cache_salt"] = msgspec.Raw(encode(cache_salt))


def relayable_message(body: bytes) -> str | None:
    """The ``message`` of an OpenAI error envelope, if ``body`` is one; nothing else of it.

    This is how a request the model server refused (a prompt longer than the
    context, say) still tells the client why.
    """
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return message[:MAX_RELAYED_MESSAGE] if isinstance(message, str) else None


def context_overflow(body: bytes) -> tuple[int, int] | None:
    """``(prompt tokens, context length)`` if ``body`` is a neuron's context-length refusal."""
    try:
        error = decode(body, ContextLengthErrorEnvelope).error
    except WireError:
        return None
    if error.code != CONTEXT_LENGTH_EXCEEDED:
        return None
    return error.prompt_tokens, error.max_model_len
