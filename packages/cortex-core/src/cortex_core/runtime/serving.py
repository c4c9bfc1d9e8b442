"""hypercorn as both daemons run it: the settings they share, and one repair.

hypercorn is a dependency of the gateway and of the neuron, not of
cortex-core: it is imported when a server is configured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypercorn.config import Config

__all__ = ["IDLE_KEEP_ALIVE_S", "LISTEN_BACKLOG", "UPSTREAM_KEEP_ALIVE_S", "server_config"]

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


def server_config(bind: str, *, graceful_timeout_s: float) -> Config:
    """Hypercorn's settings for a server on ``bind`` (an address or ``fd://N``).

    No access log (the daemons log each request themselves), hypercorn's own
    errors through the ``hypercorn.error`` logger (our handler and format).
    """
    from hypercorn.config import Config

    _close_when_the_client_does()
    config = Config()
    config.bind = [bind]
    config.backlog = LISTEN_BACKLOG
    config.keep_alive_timeout = IDLE_KEEP_ALIVE_S
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def _close_when_the_client_does() -> None:
    """Close a connection when its client closes it, not when its idle timer ends.

    In hypercorn 0.18 a connection whose client closes it while idle leaves its
    read loop, then waits in its task group for every task, the idle timer
    included: the connection stays in CLOSE_WAIT, with a descriptor and three
    tasks, for up to ``keep_alive_timeout``. The timer is stopped as the read
    loop ends. (Tested through real processes: a version that moves this code
    fails that test rather than leaking quietly.)
    """
    from hypercorn.asyncio.tcp_server import TCPServer

    read: Any = getattr(TCPServer, "_read_data", None)
    if read is None or getattr(read, "closes_when_the_client_does", False):
        return

    async def _read_data(self: Any) -> None:
        await read(self)
        idle = getattr(self, "idle_task", None)
        if idle is not None:
            await idle.stop()

    _read_data.closes_when_the_client_does = True  # type: ignore[attr-defined]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
