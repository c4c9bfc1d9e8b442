"""One request on its way through the gateway: what is known of it so far.

A :class:`Call` starts when a route is entered (with the client's request id,
or a new one) and gathers what the pipeline learns: the model asked for and
its concrete id, the node chosen, the URL sent to, the prompt's prefix
hashes. Its log fields and headers are what every answer and log line about
the request carries.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from dataclasses import dataclass

from starlette.requests import Request

from cortex_core.catalogue import Catalogue
from cortex_core.text import printable
from cortex_gateway.errors import Surface
from cortex_gateway.quotas import Admission
from cortex_gateway.responses import NODE_HEADER, REQUEST_ID_HEADER
from cortex_gateway.tenants import ANONYMOUS, Tenant

__all__ = ["INFERENCE_ROUTES", "Call"]

INFERENCE_ROUTES = frozenset(
    {
        "chat_completions",
        "completions",
        "responses",
        "embeddings",
        "rerank",
        "score",
        "messages",
        "count_tokens",
    }
)
"""Handlers whose name is their metrics ``route`` label; every other route is ``other``."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


def _new_request_id() -> str:
    """A request id unique to this process's life (random prefix, then a count): no syscall."""
    return f"{_ID_PREFIX}{next(_ids):016x}"


@dataclass
class Call:
    """One request on its way through the gateway: what is known of it so far."""

    handler: str
    surface: Surface
    request_id: str
    started: float
    model: str | None = None
    alias: str | None = None
    node: str | None = None
    url: str | None = None
    routed: float | None = None
    """When a node was chosen for it (monotonic)."""
    prefix: list[int] | None = None
    """The prompt's prefix hashes, for prefix-aware routing (None: not scored)."""
    session: str | None = None
    """The client's conversation key (Claude Code's session), kept on one node by prefix routing."""
    tenant: Tenant = ANONYMOUS
    """Whose key it came with (the unnamed tenant until the key is checked, or without keys)."""
    admission: Admission | None = None
    """Counted in against its key's limits: counted out when it ends."""

    @classmethod
    def begin(cls, request: Request, handler: str, surface: Surface) -> Call:
        """The call of ``request`` on ``handler``, with its request id (the client's, or new)."""
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _REQUEST_ID.fullmatch(given) else _new_request_id()
        return cls(handler, surface, request_id, time.monotonic())

    @property
    def route(self) -> str:
        """The metrics ``route`` label."""
        return self.handler if self.handler in INFERENCE_ROUTES else "other"

    def name(self, catalogue: Catalogue, asked: str) -> str:
        """Record the model asked for (and the alias, if one was used); return its concrete id."""
        model = self.model = catalogue.resolve_alias(asked)
        self.alias = asked if asked != model else None
        return model

    def fields(self) -> dict[str, str]:
        """The log fields known so far (what the client named, made printable and bounded)."""
        found = {"model": self.model, "alias": self.alias, "node": self.node}
        fields = {k: printable(v) for k, v in found.items() if v is not None}
        if self.tenant.name:
            fields["key"] = self.tenant.name  # the key's name (a config name), never the key
        return fields

    def headers(self) -> dict[str, str]:
        """Headers every answer to this request carries: its id, and the node if one was chosen."""
        headers = {REQUEST_ID_HEADER: self.request_id}
        if self.node:
            headers[NODE_HEADER] = self.node
        return headers
