"""Who a key is: the tenants of ``[[keys]]``, ``api_keys`` and ``admin_keys``, by SHA-256.

A :class:`KeyRing` maps the SHA-256 of every key the gateway accepts to its
:class:`Tenant`: a name (``""`` for the unnamed keys of ``api_keys`` and
``admin_keys``), a role, a priority class, limits, an allow-list and, for
keys that isolate their cache, the ``cache_salt`` sent with their requests.
The keys themselves are never kept: only their digests, so a presented key is
hashed once and looked up. Nothing here does I/O; :func:`read_keys` reads
the environment it is given.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cortex_core.config import ConfigError, CortexConfig, KeyEntry

__all__ = [
    "ANONYMOUS",
    "BATCH",
    "CACHE_SECRET_ENV",
    "INTERACTIVE",
    "KeyRing",
    "Tenant",
    "cache_secret",
    "digest",
    "read_keys",
]

INTERACTIVE = 0
"""The ``priority`` an interactive key's requests carry to the engine (lower goes first)."""
BATCH = 1
"""The ``priority`` of a batch key's requests."""
CACHE_SECRET_ENV = "CORTEX_CACHE_SECRET"
"""The secret cache salts are derived from; without it, a random one per gateway start."""
_SALT_CONTEXT = b"cortex cache_salt\x00"


def digest(key: str) -> bytes:
    """The SHA-256 of a key, as the ring holds it."""
    return hashlib.sha256(key.encode()).digest()


def cache_secret(environ: Mapping[str, str]) -> bytes:
    """``$CORTEX_CACHE_SECRET``, or a new random secret (salts then change with each start)."""
    given = environ.get(CACHE_SECRET_ENV, "").strip()
    return given.encode() if given else os.urandom(32)


@dataclass(frozen=True, slots=True)
class Tenant:
    """What a key may do, and whose usage it counts as."""

    name: str
    """The ``[[keys]]`` name; ``""`` for the unnamed keys (and no key at all)."""
    admin: bool = False
    batch: bool = False
    """Its requests are batch work: they queue behind interactive ones."""
    max_concurrent: int = 0
    tokens_per_minute: int = 0
    allowed: re.Pattern[str] | None = None
    """The allow-list as one pattern (``None``: every model)."""
    cache_salt: str | None = None
    """Sent with each request when the key isolates its cache (derived from its name)."""

    @property
    def priority(self) -> int:
        """The engine ``priority`` of its requests: interactive below batch."""
        return BATCH if self.batch else INTERACTIVE

    @property
    def limited(self) -> bool:
        """Whether a limit applies to it (then every request is admitted against the counts)."""
        return self.max_concurrent > 0 or self.tokens_per_minute > 0

    def allows(self, asked: str, model: str) -> bool:
        """Whether it may use ``asked`` (an id or alias) resolving to the concrete ``model``."""
        allowed = self.allowed
        return allowed is None or bool(allowed.match(asked) or allowed.match(model))


ANONYMOUS = Tenant("")
"""Requests when no key is configured (or an unnamed key): no limits, interactive, every model."""


def _pattern(globs: list[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


def _salt(secret: bytes, name: str) -> str:
    """A key's cache salt: from its name and the gateway's secret, never from the key."""
    return hmac.new(secret, _SALT_CONTEXT + name.encode(), hashlib.sha256).hexdigest()


def tenant(entry: KeyEntry, secret: bytes) -> Tenant:
    """The tenant one ``[[keys]]`` entry names."""
    return Tenant(
        entry.name,
        admin=entry.role == "admin",
        batch=entry.priority == "batch",
        max_concurrent=entry.max_concurrent,
        tokens_per_minute=entry.tokens_per_minute,
        allowed=_pattern(entry.models),
        cache_salt=_salt(secret, entry.name) if entry.isolate_cache else None,
    )


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Every key the gateway accepts, by SHA-256, and what each may do."""

    tenants: Mapping[bytes, Tenant]
    users: bool
    """Some key admits the inference routes (``api_keys`` or a ``role = "user"`` key)."""
    admins: bool
    """Some key is an admin key: then only those admit ``/admin/*``."""

    @property
    def keyed(self) -> bool:
        """Whether any route takes a key at all."""
        return self.users or self.admins

    def find(self, key: str) -> Tenant | None:
        """The tenant of ``key``, if it is one: the key is hashed once, then looked up."""
        return self.tenants.get(digest(key))

    def names(self) -> list[str]:
        """The named tenants, each once, in configuration order."""
        return list(dict.fromkeys(t.name for t in self.tenants.values() if t.name))


def read_keys(
    path: Path, cortex: CortexConfig, environ: Mapping[str, str], secret: bytes
) -> KeyRing:
    """The ring ``cortex.toml`` describes, its ``key_env`` keys read from ``environ``.

    A ``key_env`` that is unset or empty, or a key given twice, is a
    :class:`ConfigError` naming the entry (and the variable), never the key.
    """
    tenants: dict[bytes, Tenant] = {}
    where: dict[bytes, str] = {}

    def add(key_digest: bytes, who: Tenant, at: str) -> None:
        if key_digest in tenants:
            raise ConfigError(path, at, f"is the same key as {where[key_digest]}")
        tenants[key_digest] = who
        where[key_digest] = at

    settings = cortex.gateway
    for i, key in enumerate(settings.api_keys):
        add(digest(key), ANONYMOUS, f"gateway.api_keys[{i}]")
    unnamed_admin = Tenant("", admin=True)
    for i, key in enumerate(settings.admin_keys):
        add(digest(key), unnamed_admin, f"gateway.admin_keys[{i}]")
    named: dict[str, Tenant] = {}
    for i, entry in enumerate(cortex.keys):
        at = f"keys[{i}]"
        if entry.key_env is not None:
            value = environ.get(entry.key_env, "").strip()
            if not value:
                raise ConfigError(
                    path,
                    f"{at}.key_env",
                    f"key {entry.name!r} names ${entry.key_env}, which is not set or empty",
                )
            key_digest = digest(value)
        else:
            assert entry.key_sha256 is not None
            key_digest = bytes.fromhex(entry.key_sha256)
        # Rotation: entries sharing a name are one tenant (their usage adds up).
        who = named.setdefault(entry.name, tenant(entry, secret))
        add(key_digest, who, f"{at} ({entry.name})")
    return KeyRing(
        tenants,
        users=bool(settings.api_keys) or any(k.role == "user" for k in cortex.keys),
        admins=bool(settings.admin_keys) or any(k.role == "admin" for k in cortex.keys),
    )
