"""When to swap models, and when to stop retrying a load: pure decisions over plain data.

**Swaps.** A model that can only be placed by evicting models with requests in
flight waits for room (:class:`Blocked`). Meanwhile the models it waits on
keep serving, or stop admitting new requests so they drain and the swap can
happen: :func:`closed_gates` says which, by policy.

- ``grouped``: a loaded model's own requests go first, until the oldest
  request blocked on it has waited ``max_swap_wait_s``; a model with no work
  left is swapped out at once (it is idle, so placement may evict it).
- ``fifo``: first come, first served: as soon as a request is blocked on a
  model, later requests for that model wait behind it.

**Backoff.** A load that failed on a node is not tried there again for a while
(:func:`backoff_s`: 10 s, doubling, 5 min at most), so a broken model does not
start an engine for every request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BACKOFF_FIRST_S",
    "BACKOFF_MAX_S",
    "Backoff",
    "Blocked",
    "Policy",
    "backoff_s",
    "closed_gates",
    "in_backoff",
]

Policy = Literal["grouped", "fifo"]
BACKOFF_FIRST_S = 10.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True, slots=True)
class Blocked:
    """A model waiting for room on ``node``, held by the busy ``victims`` there."""

    model: str
    node: str
    victims: tuple[str, ...]
    since: float
    """When the oldest request waiting for ``model`` arrived."""


def closed_gates(
    blocked: Iterable[Blocked], now: float, policy: Policy, max_swap_wait_s: float
) -> frozenset[tuple[str, str]]:
    """``(node, model)`` pairs that admit no new request: a swap away from them is due."""
    gates: set[tuple[str, str]] = set()
    for waiter in blocked:
        if policy == "fifo" or now - waiter.since >= max_swap_wait_s:
            gates.update((waiter.node, victim) for victim in waiter.victims)
    return frozenset(gates)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Loads of a model that failed on a node: how many in a row, and when to try again."""

    failures: int
    until: float


def backoff_s(failures: int) -> float:
    """The pause after ``failures`` failed loads in a row: 10 s, doubling, 5 min at most."""
    return float(min(BACKOFF_FIRST_S * 2.0 ** max(failures - 1, 0), BACKOFF_MAX_S))


def in_backoff(
    backoffs: Mapping[tuple[str, str], Backoff], model: str, now: float
) -> dict[str, float]:
    """The nodes where ``model`` may not be loaded now, with the seconds left on each."""
    return {
        node: state.until - now
        for (node, name), state in backoffs.items()
        if name == model and state.until > now
    }
