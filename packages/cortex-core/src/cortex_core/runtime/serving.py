"""hypercorn as both daemons run it: the settings they share, and one repair.

hypercorn is a dependency of the gateway and of the neuron, not of
cortex-core: it is imported when a server is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypercorn.config import Config

__all__ = [
    "HEADER_TIMEOUT_S",
    "IDLE_KEEP_ALIVE_S",
    "LISTEN_BACKLOG",
    "UPSTREAM_KEEP_ALIVE_S",
    "Connections",
    "raise_descriptor_limit",
    "server_config",
]

log = logging.getLogger("hypercorn.error")

#: Connections a burst may have waiting to be accepted (hypercorn's default is
#: 100: past it, the kernel drops a client's handshake and the client waits a
#: second or more to try again).
LISTEN_BACKLOG = 1024

#: How long the servers keep an idle connection open. hypercorn's default of
#: 5 s equals the idle expiry of httpx's pools (the ``openai`` and
#: ``anthropic`` SDKs), and a request sent on a pooled connection as the server
#: gave up on it was cut, under load even after its answer had begun (hypercorn
#: closes what the connection holds when its idle timer fires). Well above any
#: client's expiry, it is the client that closes first (nginx keeps 75 s too).
IDLE_KEEP_ALIVE_S = 75.0

#: How long the gateway keeps an idle connection to a neuron in its pool: well
#: under the neuron's :data:`IDLE_KEEP_ALIVE_S`, so the neuron never closes a
#: connection the gateway is about to reuse.
UPSTREAM_KEEP_ALIVE_S = 15.0

#: How long a request's headers may take to arrive once their first byte has: a client
#: trickling them is cut then, whatever the keep-alive (which bounds only the silence
#: before a request, when the connection costs nothing but a descriptor).
HEADER_TIMEOUT_S = 10.0

#: What a connection past the cap is answered, before it is closed.
_REFUSED_BODY = json.dumps(
    {
        "error": {
            "message": "too many connections are open to this server; try again",
            "type": "service_unavailable",
            "param": None,
            "code": 503,
        }
    }
).encode()
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_REFUSED_BODY)).encode()
    + b"\r\n\r\n"
    + _REFUSED_BODY
)
#: At most one log line per this many seconds for each kind of connection turned away.
_LOG_EVERY_S = 10.0


def raise_descriptor_limit(connections: int) -> int | None:
    """Raise this process's open-file limit to hold ``connections`` proxied connections.

    Each takes two descriptors (the client's and the upstream's), with room
    for the rest. Returns the limit now in force when it is still short of
    that (the hard limit is lower), else None.
    """
    import resource

    wanted = 2 * connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target if target < wanted else None


class Connections:
    """The connections one server has open, against its cap; and those it turned away."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        """Connections answered 503 because the cap was reached."""
        self.cut = 0
        """Connections closed because a request's headers did not arrive in time."""
        self._said: dict[str, tuple[float, int]] = {}

    def admit(self) -> bool:
        """Count a new connection in, unless the cap is reached."""
        if self.limit is not None and self.open >= self.limit:
            self.refused += 1
            self._say("refused", "connections refused: too many open", self.refused)
            return False
        self.open += 1
        return True

    def release(self) -> None:
        """A connection admitted has closed."""
        self.open -= 1

    def headers_late(self) -> None:
        """A connection was closed: its request's headers took too long."""
        self.cut += 1
        self._say("cut", "connections closed: request headers too slow", self.cut)

    def _say(self, what: str, message: str, total: int) -> None:
        # A flood must not become a flood of log lines: one line per _LOG_EVERY_S at most.
        now = time.monotonic()
        last, logged = self._said.get(what, (-_LOG_EVERY_S, 0))
        if now - last >= _LOG_EVERY_S:
            self._said[what] = (now, total)
            log.warning(
                message,
                extra={"count": total - logged, "open": self.open, "limit": self.limit},
            )


def server_config(
    bind: str,
    *,
    graceful_timeout_s: float,
    header_timeout_s: float | None = HEADER_TIMEOUT_S,
    max_connections: int | None = None,
) -> Config:
    """Hypercorn's settings for a server on ``bind`` (an address or ``fd://N``).

    No access log (the daemons log each request themselves), hypercorn's own
    errors through the ``hypercorn.error`` logger (our handler and format).
    A request's headers must arrive within ``header_timeout_s`` of their first
    byte; past ``max_connections`` open at once, a new connection is answered
    503 and closed (:class:`Connections` counts them: ``config.connections``).
    """
    from hypercorn.config import Config

    _bound_connections()
    config = Config()
    config.bind = [bind]
    config.backlog = LISTEN_BACKLOG
    config.keep_alive_timeout = IDLE_KEEP_ALIVE_S
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # hypercorn reads its own settings; these two are read by the repairs below.
    config.header_timeout_s = header_timeout_s  # type: ignore[attr-defined]
    config.connections = Connections(max_connections)  # type: ignore[attr-defined]
    return config


def _bound_connections() -> None:
    """Repair and bound hypercorn 0.18's connections (its ``TCPServer``), once per process.

    - A connection whose client closes it while idle is closed at once. In
      hypercorn 0.18 it left its read loop, then waited in its task group for
      every task, the idle timer included: it stayed in CLOSE_WAIT, with a
      descriptor and three tasks, for up to ``keep_alive_timeout``. The timer
      is stopped as the read loop ends.
    - Once the first byte of a request has come, its headers must be in within
      the config's ``header_timeout_s``: the keep-alive bounds only the silence
      before a request.
    - A connection past the config's cap is answered 503 and closed, before
      any of it is read.

    (Tested through real processes: a hypercorn that moves this code fails
    those tests rather than leaking quietly.)
    """
    from hypercorn.asyncio.tcp_server import TCPServer

    server: Any = TCPServer
    if "run" in _HYPERCORN:
        return
    _HYPERCORN.update(run=server.run, protocol_send=server.protocol_send)
    server.run = _bounded_run
    server.protocol_send = _protocol_send
    server._read_data = _read_data


_HYPERCORN: dict[str, Any] = {}
"""hypercorn's own methods that the repaired ones call."""


async def _bounded_run(self: Any) -> None:
    connections: Connections | None = getattr(self.config, "connections", None)
    if connections is not None and not connections.admit():
        await _refuse(self.reader, self.writer)
        return
    # Between requests (waiting for one), as hypercorn's Updated events say; and when (loop
    # time) the headers of the request whose first byte came are due.
    self.cortex_between = True
    self.cortex_headers_by = None
    try:
        await _HYPERCORN["run"](self)
    finally:
        if connections is not None:
            connections.release()


async def _protocol_send(self: Any, event: Any) -> None:
    from hypercorn.events import Updated

    if isinstance(event, Updated):
        # idle: between requests (waiting for one); not idle: a request's headers are in.
        self.cortex_between = event.idle
        self.cortex_headers_by = None
    await _HYPERCORN["protocol_send"](self, event)


async def _read_data(self: Any) -> None:
    from hypercorn.asyncio.tcp_server import MAX_RECV
    from hypercorn.events import Closed, RawData

    header_s: float | None = getattr(self.config, "header_timeout_s", None)
    loop = asyncio.get_running_loop()
    reader, handle = self.reader, self.protocol.handle
    while not reader.at_eof():
        timeout: float | None = self.config.read_timeout
        due: float | None = self.cortex_headers_by
        if due is not None:
            left = due - loop.time()
            timeout = left if timeout is None else min(timeout, left)
        try:
            if timeout is not None and timeout <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(reader.read(MAX_RECV), timeout)
        except TimeoutError:
            if self.cortex_headers_by is not None:
                self.config.connections.headers_late()
            break
        except (ConnectionError, OSError, ssl.SSLError):
            break
        if header_s is not None and data and self.cortex_between and due is None:
            # The first byte of a request: its headers are due from now.
            self.cortex_headers_by = loop.time() + header_s
        await handle(RawData(data))
    await handle(Closed())
    idle = getattr(self, "idle_task", None)
    if idle is not None:
        await idle.stop()


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer 503 on a connection past the cap and close it, reading a moment first.

    Closing with the client's request unread would reset the connection
    before the client read the answer.
    """
    try:
        writer.write(_REFUSED)
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(1.0):
            await writer.drain()
            while await reader.read(65536):
                pass
    except (TimeoutError, OSError, RuntimeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await writer.wait_closed()
