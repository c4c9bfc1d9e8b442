r"""Server-sent events as they pass through: the gateway's one SSE parser.

Upstream streams arrive cut anywhere; :class:`SseParser` hands back each
complete event twice over: its raw bytes (so a pass-through forwards exactly
what came) and its ``data`` (so the metering and the Anthropic translation can
read it). Lines may end in ``\\n``, ``\\r\\n`` or ``\\r``; an event's ``data``
lines are joined with newlines; comments and other fields are skipped; a byte
order mark at the start is ignored. Every byte is scanned once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_EVENT_BYTES",
    "EventFramer",
    "EventTooLarge",
    "SseEvent",
    "SseParser",
    "named_event",
]

MAX_EVENT_BYTES = 4 << 20
"""An event larger than this is no model server's: the stream is refused, not buffered."""


class EventTooLarge(ValueError):
    """A stream whose current event grew past the parser's limit without ending."""


def named_event(event: str, data: bytes) -> bytes:
    """One message to send: ``event: <event>``, ``data: <data>`` (one line of it), a blank line."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


_BOM = b"\xef\xbb\xbf"
_CR, _LF = 0x0D, 0x0A


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event: its bytes as they came (blank line included) and its joined ``data``."""

    raw: bytes
    data: bytes | None
    """``None`` for an event without data lines (a comment, a stray blank line)."""

    @property
    def text(self) -> str | None:
        """``data`` as text (invalid UTF-8 replaced)."""
        return None if self.data is None else self.data.decode("utf-8", errors="replace")


class SseParser:
    """Feed bytes as they arrive; get back each event they complete, in order.

    An event (or bytes without any event boundary) longer than ``max_event_bytes``
    raises :class:`EventTooLarge`: memory stays bounded whatever comes.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES, *, at_start: bool = True) -> None:
        """``at_start=False`` takes up a stream part-way (no byte order mark may lead)."""
        self.max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._scanned = 0
        """Bytes of the buffer already split into lines (the current event's)."""
        self._data: list[bytes] = []
        self._first_line = at_start
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by ``chunk``; a partial one waits for more bytes."""
        buffer = self._buffer
        buffer += chunk
        events: list[SseEvent] = []
        while True:
            start = self._scanned
            if self._skip_lf:  # the "\n" of a "\r\n" cut in two
                if start == len(buffer):
                    break
                self._skip_lf = False
                if buffer[start] == _LF:
                    start = self._scanned = start + 1
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
            end = cr if cr >= 0 else lf
            if end < 0:
                break
            after = end + 1
            if buffer[end] == _CR:
                if after == len(buffer):
                    self._skip_lf = True
                elif buffer[after] == _LF:
                    after += 1
            line = bytes(buffer[start:end])
            self._scanned = after
            if self._first_line:
                self._first_line = False
                line = line.removeprefix(_BOM)
            if line:
                self._field(line)
                continue
            raw = bytes(buffer[:after])
            del buffer[:after]
            self._scanned = 0
            events.append(SseEvent(raw, self._joined()))
        if len(buffer) > self.max_event_bytes:
            size = len(buffer)
            self.rest()
            raise EventTooLarge(f"an event passed {self.max_event_bytes} bytes ({size} buffered)")
        return events

    def _joined(self) -> bytes | None:
        data, self._data = self._data, []
        if not data:
            return None
        return data[0] if len(data) == 1 else b"\n".join(data)

    def _field(self, line: bytes) -> None:
        if line.startswith(b"data: "):  # the usual shape, first
            self._data.append(line[6:])
            return
        name, colon, value = line.partition(b":")
        if name == b"data":
            self._data.append(value.removeprefix(b" ") if colon else b"")
        # comments (":...") and other fields (event, id, retry) are not needed

    def rest(self) -> bytes:
        """Whatever is left when the stream ends: an event without its blank line."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        self._data = []
        self._skip_lf = False
        return rest


class EventFramer:
    r"""Cut a stream at its last complete event, without splitting it into events.

    What a pass-through needs: the bytes of whole events, as they came, at
    the cost of one search per chunk. Streams whose lines end in ``\n`` (every
    OpenAI-compatible server's) take that path; the first ``\r`` seen hands
    the rest of the stream to an :class:`SseParser`, which knows every line
    ending. The same bound holds: an event past ``max_event_bytes`` raises
    :class:`EventTooLarge`.
    """

    __slots__ = ("_parser", "_pending", "_started", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending = b""
        self._parser: SseParser | None = None
        self._started = False
        """Whether any bytes went out: until then a byte order mark may lead."""

    def feed(self, chunk: bytes) -> bytes:
        """The whole events that ``chunk`` completes (``b""`` if none), as they came."""
        if self._parser is None and b"\r" in chunk:
            self._parser = SseParser(self.max_event_bytes, at_start=not self._started)
            chunk, self._pending = self._pending + chunk, b""
        if self._parser is not None:
            return b"".join(event.raw for event in self._parser.feed(chunk))
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n\n") + 2
        if end == 1:  # no boundary yet
            end = 0
        if end == 0 and (not self._pending or not self._started):
            end = self._blank_lead(data)
        if end:
            self._started = True
        self._pending = data[end:] if end < len(data) else b""
        if len(self._pending) > self.max_event_bytes:
            size = len(self._pending)
            self._pending = b""
            raise EventTooLarge(f"an event passed {self.max_event_bytes} bytes ({size} buffered)")
        return data if end == len(data) else data[:end]

    def _blank_lead(self, data: bytes) -> int:
        """The blank lines that open ``data`` at an event boundary: stray events of their own."""
        start = 0 if self._started or not data.startswith(_BOM) else len(_BOM)
        if data[start : start + 1] != b"\n":
            return 0
        return len(data) - len(data[start:].lstrip(b"\n"))

    def rest(self) -> bytes:
        """Whatever is left when the stream ends: an event without its blank line."""
        if self._parser is not None:
            return self._parser.rest()
        rest, self._pending = self._pending, b""
        return rest
