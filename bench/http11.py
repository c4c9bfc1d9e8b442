"""The little HTTP/1.1 the benchmark's own processes speak, on asyncio protocols.

The mock neuron and the load generator must cost far less per request than
what they measure, so neither uses an HTTP framework: requests and answers
are parsed here by hand, for exactly the shapes they exchange (a
``content-length`` body or a chunked one, keep-alive).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ChunkedReader", "Head", "parse_head"]


@dataclass(slots=True)
class Head:
    """A request's or an answer's first line and headers (names lower-cased)."""

    first: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """The ``content-length``, 0 when absent."""
        return int(self.headers.get("content-length", "0"))

    @property
    def chunked(self) -> bool:
        """Whether the body comes in chunked transfer encoding."""
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after this message."""
        return self.headers.get("connection", "").lower() != "close"


def parse_head(raw: bytes) -> Head:
    """The head of a message, given its bytes up to (not including) the blank line."""
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Head(lines[0], headers)


class ChunkedReader:
    """Feed it the bytes of a chunked body; it hands each chunk's payload on, then says done."""

    __slots__ = ("_buffer", "_need", "done", "on_data")

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.on_data = on_data
        self.done = False
        self._buffer = b""
        self._need = -1
        """Bytes of payload (plus its CRLF) still to come; -1 while reading a size line."""

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; what is left over once the body has ended (the next message)."""
        buffer = self._buffer + data if self._buffer else data
        while True:
            if self._need < 0:
                end = buffer.find(b"\r\n")
                if end < 0:
                    self._buffer = buffer
                    return b""
                size = int(buffer[:end].split(b";", 1)[0], 16)
                buffer = buffer[end + 2 :]
                if size == 0:
                    # the last chunk: skip the (empty) trailer
                    end = buffer.find(b"\r\n")
                    if end < 0:
                        self._buffer = b"0\r\n" + buffer
                        return b""
                    self.done = True
                    self._buffer = b""
                    return buffer[end + 2 :]
                self._need = size + 2
            if len(buffer) < self._need:
                self._buffer = buffer
                return b""
            self.on_data(buffer[: self._need - 2])
            buffer = buffer[self._need :]
            self._need = -1
