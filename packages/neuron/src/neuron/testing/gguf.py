"""GGUF files for tests: a header with the metadata given, tensors left out."""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["write_gguf"]


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: object) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return struct.pack("<IQ", 10, value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_string(v) for v in value)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
    raise TypeError(f"no GGUF encoding for {value!r}")


def write_gguf(path: Path, metadata: dict[str, object], *, padding: int = 0) -> Path:
    """Write a GGUF v3 header with ``metadata`` (and ``padding`` zero bytes as weights)."""
    body = b"".join(_string(key) + _value(value) for key, value in metadata.items())
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.write(header + body)
        file.truncate(len(header) + len(body) + padding)
    return path
