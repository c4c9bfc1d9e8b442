"""API keys: which key a request presents, and whether its route admits it.

``api_keys`` admit every keyed route but ``/admin/*`` when ``admin_keys`` is
set; then only an admin key does there (an API key is a 403). An admin key
admits every route. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from cortex_core.config import GatewaySection
from cortex_gateway.errors import ErrorKind, GatewayError

__all__ = ["Keys", "presented_key"]


def presented_key(request: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer`` first, else ``x-api-key``."""
    bearer = request.headers.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip()
    return request.headers.get("x-api-key")


def _one_of(given: str, keys: list[str]) -> bool:
    """Whether ``given`` is one of ``keys``, comparing every key in constant time."""
    presented = given.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key.encode())
    return found


class Keys:
    """The keys of ``[gateway]``: ``api_keys`` and ``admin_keys``."""

    def __init__(self, settings: GatewaySection) -> None:
        self.api_keys = settings.api_keys
        self.admin_keys = settings.admin_keys

    def authorize(self, request: Request, *, admin: bool = False) -> None:
        """Refuse a request its route does not admit: 401, or 403 for an API key on /admin."""
        api_keys, admin_keys = self.api_keys, self.admin_keys
        if not api_keys and not admin_keys:
            return
        given = presented_key(request)
        if given is not None and _one_of(given, admin_keys):
            return
        if admin and admin_keys:
            if given is not None and _one_of(given, api_keys):
                raise GatewayError(403, ErrorKind.FORBIDDEN, "this key may not use the admin API")
            raise GatewayError(401, ErrorKind.UNAUTHORIZED, "missing or invalid admin key")
        if not api_keys and not admin:
            return  # only the admin API is keyed
        if given is None or not _one_of(given, api_keys):
            raise GatewayError(401, ErrorKind.UNAUTHORIZED, "missing or invalid API key")

    def admits(self, request: Request, *, admin: bool = False) -> bool:
        """Whether :meth:`authorize` lets ``request`` through."""
        try:
            self.authorize(request, admin=admin)
        except GatewayError:
            return False
        return True
