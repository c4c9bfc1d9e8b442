"""Per-key limits: requests in flight (``max_concurrent``) and tokens over a sliding minute.

:class:`Limits` is the pure count, by tenant name, with the clock given:
:meth:`Limits.admit` answers a :class:`Refusal` (and how long to wait) or
counts the request in; :meth:`Limits.release` counts it out with the tokens
it used. A request is admitted while its key has fewer than
``max_concurrent`` requests in flight and has used fewer than
``tokens_per_minute`` tokens (prompt and completion, as the answers' usage
says) over the last minute; tokens are known only when a request ends, so
a request admitted just under the limit may take the key over it (the next
one then waits until enough of the minute has passed).

One gateway process counts in :class:`LocalQuotas`; the workers of ``workers
= N`` share their supervisor's count (``cortex_gateway.coordinator``), so a
limit holds for the gateway as a whole. Only tenants with a limit are
counted at all.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.tenants import Tenant

__all__ = [
    "WINDOW_S",
    "Admission",
    "Limits",
    "LocalQuotas",
    "Quotas",
    "Refusal",
    "over_limit",
]

WINDOW_S = 60
"""The sliding window of ``tokens_per_minute``, in seconds."""
RATE_LIMIT_CODE = "rate_limit_exceeded"
"""The OpenAI envelope's ``code`` for a 429 over a key's limit."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over its key's limit: which limit, and when to try again."""

    limit: Literal["max_concurrent", "tokens_per_minute"]
    retry_after_s: int


class Limits:
    """Requests in flight and tokens per second over the last minute, by tenant name (pure)."""

    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self._spent: dict[str, deque[list[int]]] = {}
        """Per name: ``[second, tokens]`` for each second of the window that used any."""

    def used(self, name: str, now: float) -> int:
        """Tokens ``name`` used over the minute before ``now``."""
        spent = self._spent.get(name)
        if spent is None:
            return 0
        start = math.floor(now) - WINDOW_S
        while spent and spent[0][0] <= start:
            spent.popleft()
        if not spent:
            del self._spent[name]
            return 0
        return sum(tokens for _, tokens in spent)

    def admit(
        self, name: str, max_concurrent: int, tokens_per_minute: int, now: float
    ) -> Refusal | None:
        """Count a request of ``name`` in, or say why not (``0``: no such limit)."""
        if max_concurrent and self.in_flight[name] >= max_concurrent:
            return Refusal("max_concurrent", 1)
        if tokens_per_minute:
            used = self.used(name, now)
            if used >= tokens_per_minute:
                return Refusal(
                    "tokens_per_minute", self._refilled(name, used, tokens_per_minute, now)
                )
        self.in_flight[name] += 1
        return None

    def _refilled(self, name: str, used: int, limit: int, now: float) -> int:
        """Seconds until enough of the window has passed for ``name`` to be under ``limit``."""
        for second, tokens in self._spent[name]:
            used -= tokens
            if used < limit:
                return max(1, math.ceil(second + WINDOW_S - now))
        return 1  # unreachable while used >= limit > 0

    def release(self, name: str, tokens: int, now: float) -> None:
        """Count a request of ``name`` out, with the ``tokens`` it used."""
        self.in_flight[name] -= 1
        if self.in_flight[name] <= 0:
            del self.in_flight[name]
        self.spend(name, tokens, now)

    def spend(self, name: str, tokens: int, now: float) -> None:
        """Add ``tokens`` to what ``name`` used at ``now``."""
        if tokens <= 0:
            return
        second = math.floor(now)
        spent = self._spent.setdefault(name, deque())
        if spent and spent[-1][0] == second:
            spent[-1][1] += tokens
        else:
            spent.append([second, tokens])


class Admission(Protocol):
    """A request counted in against its key's limits, until it is counted out."""

    def release(self, tokens: int) -> None:
        """Count the request out, with the tokens it used (once)."""
        ...


class Quotas(Protocol):
    """Where a gateway process counts its limited tenants' requests."""

    async def admit(self, tenant: Tenant) -> Admission | Refusal:
        """Count a request of ``tenant`` in, or say why not."""
        ...


class _Counted:
    """A request counted in :class:`Limits` of this process."""

    __slots__ = ("_clock", "_limits", "_name")

    def __init__(self, limits: Limits, name: str, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._name = name
        self._clock = clock

    def release(self, tokens: int) -> None:
        self._limits.release(self._name, tokens, self._clock())


class LocalQuotas:
    """The counts of one gateway process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.limits = Limits()
        self._clock = clock

    async def admit(self, tenant: Tenant) -> Admission | Refusal:
        """Count a request of ``tenant`` in, or say why not."""
        return self.admit_now(tenant)

    def admit_now(self, tenant: Tenant) -> Admission | Refusal:
        """:meth:`admit`, without waiting for anything."""
        refusal = self.limits.admit(
            tenant.name, tenant.max_concurrent, tenant.tokens_per_minute, self._clock()
        )
        return refusal or _Counted(self.limits, tenant.name, self._clock)


def over_limit(tenant: Tenant, refusal: Refusal) -> GatewayError:
    """The 429 for a request over its key's limit, with ``Retry-After``."""
    if refusal.limit == "max_concurrent":
        message = (
            f"too many requests in flight for this key (max_concurrent = {tenant.max_concurrent})"
        )
    else:
        message = (
            "this key used its tokens for the minute"
            f" (tokens_per_minute = {tenant.tokens_per_minute})"
        )
    return GatewayError(
        429,
        ErrorKind.RATE_LIMITED,
        f"{message}; retry in {refusal.retry_after_s} s",
        headers={"retry-after": str(refusal.retry_after_s)},
        code=RATE_LIMIT_CODE,
        key=tenant.name,
        limit=refusal.limit,
    )
