"""What only Claude Code sends: its billing block and its session header. Pure.

Claude Code puts ``x-anthropic-billing-header: cc_version=...; cc_entrypoint=...;``
as the first block of ``system``; in interactive sessions it also carries
``cch=<5 hex digits>``, different on every request. At the very start of the
prompt, that defeats every prefix cache behind it (the engines' and this
gateway's prefix-aware routing), and it means nothing to a local model, so
the gateway drops it before it routes, counts or forwards a message
(``[anthropic] strip_billing_header``, on by default).
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from cortex_core import anthropic as an

__all__ = ["BILLING_PREFIX", "SESSION_HEADER", "without_billing_header"]

BILLING_PREFIX = "x-anthropic-billing-header:"
SESSION_HEADER = "x-claude-code-session-id"
"""Claude Code's conversation id (the same on every turn of a session, ``--continue`` too)."""

R = TypeVar("R", an.MessagesRequest, an.CountTokensRequest)


def without_billing_header(request: R) -> R:
    """``request`` without a first ``system`` block holding the billing header (else as is).

    A ``system`` string whose first line is the header loses that line.
    """
    system = request.system
    if isinstance(system, list):
        if system and system[0].text.startswith(BILLING_PREFIX):
            return msgspec.structs.replace(request, system=system[1:])
    elif isinstance(system, str) and system.startswith(BILLING_PREFIX):
        _, _, rest = system.partition("\n")
        return msgspec.structs.replace(request, system=rest)
    return request
