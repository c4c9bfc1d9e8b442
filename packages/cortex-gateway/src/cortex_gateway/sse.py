"""Server-sent events as they pass through: split a byte stream into whole events."""

from __future__ import annotations

import re

__all__ = ["SseSplitter", "event_data"]

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SseSplitter:
    """Feed bytes as they arrive; get back each complete event (with its blank line)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events completed by ``chunk``, in order; a partial one waits for more bytes."""
        self._buffer += chunk
        events = []
        while match := _BOUNDARY.search(self._buffer):
            events.append(self._buffer[: match.end()])
            self._buffer = self._buffer[match.end() :]
        return events

    def rest(self) -> bytes:
        """Whatever is left when the stream ends (an event without its blank line)."""
        rest, self._buffer = self._buffer, b""
        return rest


def event_data(event: bytes) -> bytes | None:
    """The ``data`` of one event (its lines joined by newlines), or ``None`` if it has none."""
    lines = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines) if lines else None
