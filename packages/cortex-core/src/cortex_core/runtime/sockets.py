"""Listening sockets bound before a server starts, so a taken port is one clear line."""

from __future__ import annotations

import socket

from cortex_core.config import parse_hostport

__all__ = ["ListenError", "bind_listen"]


class ListenError(Exception):
    """An address the server cannot listen on: the message names it and says why."""


def bind_listen(listen: str) -> str:
    """Bind ``host:port`` now and return hypercorn's ``fd://N`` for the socket.

    Hypercorn binds only after the app's lifespan has started, so a port in use
    would end in a lifespan traceback; bound here first, it is a
    :class:`ListenError` before anything starts.
    """
    host, port = parse_hostport(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return f"fd://{sock.detach()}"
