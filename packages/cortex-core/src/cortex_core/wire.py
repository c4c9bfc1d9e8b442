"""Decoding and encoding of wire bodies, with one error type for every bad input.

Every HTTP body that cortex reads goes through :func:`decode`: whatever the
bytes are, the caller gets the typed value or a :class:`WireError` carrying a
message fit for the client (no internals), never another exception. Decoders
and encoders are built once per type and reused.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

__all__ = ["RouteView", "WireError", "decode", "encode", "to_builtins"]


class WireError(ValueError):
    """A body that is not JSON, or JSON of the wrong shape for its type."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        """The JSON path of the offending value (`$.messages[0].role`), when known."""


class RouteView(msgspec.Struct):
    """The only fields a routing hot path needs from an inference body.

    Every other field stays in the raw bytes, which are forwarded as they came.
    """

    model: str
    stream: bool = False


_encoder = msgspec.json.Encoder()


_decoders: dict[object, msgspec.json.Decoder[Any]] = {}


def _decoder(type_: object) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


def _split_path(message: str) -> tuple[str, str | None]:
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        return message, None
    return text, path.rstrip("`")


def decode(data: bytes | bytearray | memoryview | str, type_: type[T]) -> T:
    """Decode JSON ``data`` as ``type_``, raising only :class:`WireError`."""
    try:
        decoded: T = _decoder(type_).decode(data)
        return decoded
    except msgspec.ValidationError as exc:
        text, path = _split_path(str(exc))
        raise WireError(f"{text} at `{path}`" if path else text, path=path) from exc
    except msgspec.DecodeError as exc:
        raise WireError(f"body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise WireError("body is not valid UTF-8") from exc
    except RecursionError as exc:
        raise WireError("body is nested too deeply") from exc


def encode(value: object) -> bytes:
    """Encode a wire value (struct, dict, list, ...) as compact JSON bytes."""
    return _encoder.encode(value)


def to_builtins(value: object) -> Any:
    """Turn a wire value into plain dicts and lists, as it would be encoded."""
    return msgspec.to_builtins(value)
