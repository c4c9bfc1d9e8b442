"""API keys: which tenant a request's key is, and whether its route admits it.

Keys come from ``api_keys`` and ``admin_keys`` (unnamed) and ``[[keys]]``
(named, each with a role): a :class:`~cortex_gateway.tenants.KeyRing`. User
keys admit every keyed route but ``/admin/*`` when some admin key exists;
then only an admin key does there (a user key is a 403). An admin key admits
every route. A presented key is hashed once (SHA-256) and looked up by its
digest, never compared as text, and never logged.
"""

from __future__ import annotations

from starlette.requests import Request

from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.tenants import ANONYMOUS, KeyRing, Tenant

__all__ = ["Keys", "presented_key"]


def presented_key(request: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer`` first, else ``x-api-key``."""
    bearer = request.headers.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip()
    return request.headers.get("x-api-key")


class Keys:
    """The keys in force (replaced whole when ``cortex.toml`` is read again)."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def use(self, ring: KeyRing) -> None:
        """Admit by ``ring`` from now on (requests already admitted keep their tenant)."""
        self.ring = ring

    def authorize(self, request: Request, *, admin: bool = False) -> Tenant:
        """The request's tenant; 401 without a key its route admits, 403: a user key on /admin."""
        ring = self.ring
        if not ring.keyed:
            return ANONYMOUS
        given = presented_key(request)
        tenant = ring.find(given) if given is not None else None
        if tenant is not None and tenant.admin:
            return tenant
        if admin and ring.admins:
            if tenant is not None:
                raise GatewayError(403, ErrorKind.FORBIDDEN, "this key may not use the admin API")
            raise GatewayError(401, ErrorKind.UNAUTHORIZED, "missing or invalid admin key")
        if not ring.users and not admin:
            return ANONYMOUS  # only the admin API is keyed
        if tenant is None:
            raise GatewayError(401, ErrorKind.UNAUTHORIZED, "missing or invalid API key")
        return tenant

    def admits(self, request: Request, *, admin: bool = False) -> bool:
        """Whether :meth:`authorize` lets ``request`` through."""
        try:
            self.authorize(request, admin=admin)
        except GatewayError:
            return False
        return True
