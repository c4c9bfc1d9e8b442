"""Loads and unloads: one load per model however many wait, eviction, backoff, defragmentation.

This is the I/O shell around ``router.place`` and ``router.after_failed_load``:
a cold load is one task per model that every request for it waits on (a
client that gives up does not cancel it); it plans on fresh answers from the
nodes that could take the model, evicts what the plan says (waiting for room
while the victims still serve, as the swap policy says), asks the neuron, and
on a failure asks the router what next. A model that fails to load on a node
backs off there. After every poll round, pinned models are loaded and idle
ones unloaded. Each load, unload and eviction is one event on the fleet's
stream.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Literal

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_core.config import GatewayConfig
from cortex_core.neuron_api import LoadRequest
from cortex_core.text import printable
from cortex_gateway.background import Background
from cortex_gateway.errors import ErrorKind, GatewayError
from cortex_gateway.events import EventKind, Events, FleetEvent
from cortex_gateway.leases import Leases
from cortex_gateway.neurons import NeuronCallError
from cortex_gateway.placement import (
    EvictOne,
    Exclude,
    GiveUp,
    LoadFailure,
    Placement,
    PlanAgain,
    Strategy,
    Unplaceable,
    WaitForRoom,
    after_failed_load,
    defrag_candidates,
    idle_models,
    place,
)
from cortex_gateway.poller import Poller
from cortex_gateway.scheduling import Backoff, Blocked, backoff_s, closed_gates, in_backoff

__all__ = ["SLEEPS", "EvictionReason", "Loads", "late"]

log = logging.getLogger(__name__)

EvictionReason = Literal["lru", "priority", "idle", "defrag", "admin"]
SLEEPS: frozenset[EvictionReason] = frozenset({"lru", "priority", "idle"})
"""Unloads that ask the neuron to sleep the model where it can: it may be wanted back soon.
A defragmentation moves a model off its GPU and an operator's unload means gone: no sleep."""
PLACEMENT_POLL_S = 2.0
"""How long a cold load waits for fresh answers from its candidate nodes before it decides."""


def late(model_id: str) -> GatewayError:
    """The error of a request whose model did not become ready within its wait."""
    return GatewayError(
        503, ErrorKind.UNAVAILABLE, f"model {model_id!r} did not finish loading in time"
    )


def _retry_after(cooling: Mapping[str, float]) -> dict[str, str]:
    """``Retry-After`` for the soonest node to come out of backoff (none if none cools down)."""
    return {"retry-after": str(math.ceil(min(cooling.values())))} if cooling else {}


class _Attempt:
    """What one cold load has learnt so far, between its tries."""

    __slots__ = ("deadline", "exclude", "fresh", "last_error", "needed", "tries")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.needed: int | None = None
        """The neuron's own memory figure, once a load was refused for memory."""
        self.exclude: set[str] = set()
        self.last_error = "no attempt made"
        self.tries = 0
        self.fresh = True
        """Whether to ask the candidate nodes again before the next plan."""


class Loads:
    """Every load and unload the gateway makes, and what it remembers of them."""

    def __init__(
        self,
        config: GatewayConfig,
        poller: Poller,
        leases: Leases,
        events: Events,
        *,
        waiting_since: Callable[[str], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = config.cortex.gateway
        self.catalogue: Catalogue = config.catalogue
        self.poller = poller
        self.leases = leases
        self.events = events
        self.backoffs: dict[tuple[str, str], Backoff] = {}
        """Failed loads by ``(node, model)``: not tried there again until ``until``."""
        self.background = Background()
        self._waiting_since = waiting_since
        self._clock = clock
        self._loads: dict[str, asyncio.Task[str]] = {}
        self._evicting: set[tuple[str, str]] = set()
        self._eviction_cycles = 0
        self._blocked: dict[str, Blocked] = {}
        """Cold loads waiting for room, by model."""
        self._callers: Counter[str] = Counter()
        """Who waits on each cold load (requests, admin loads, pinned models)."""

    @property
    def strategy(self) -> Strategy:
        """The eviction strategy."""
        return self.config.cortex.eviction.strategy

    @property
    def loading(self) -> frozenset[str]:
        """Models the gateway is loading right now."""
        return frozenset(self._loads)

    def released(self) -> None:
        """A request ended: a model a cold load waits on may be idle now."""
        if self._blocked:
            self.poller.changes.notify()

    def busy(self) -> Mapping[tuple[str, str], int]:
        """What may not be chosen to go: models in flight, being evicted, or awaited.

        A model that requests wait to be loaded (or just were) has work queued:
        evicting it the moment its load ends would waste the load.
        """
        extra = set(self._evicting)
        for model in self._callers:
            for node in self.poller.fleet.nodes.values():
                info = node.model(model)
                if info is not None and info.state in ("ready", "loading"):
                    extra.add((node.name, model))
        if not extra:
            return self.leases.counts
        counts = dict(self.leases.counts)
        for key in extra:
            counts[key] = counts.get(key, 0) + 1
        return counts

    def gates(self) -> frozenset[tuple[str, str]]:
        """``(node, model)`` pairs admitting no new request: a swap away is due or under way."""
        if not self._blocked and not self._evicting:
            return frozenset()
        scheduling = self.config.cortex.scheduling
        closed = closed_gates(
            self._blocked.values(),
            time.monotonic(),
            scheduling.policy,
            scheduling.max_swap_wait_s,
        )
        return closed | frozenset(self._evicting) if self._evicting else closed

    # --- cold loads ---------------------------------------------------------------------

    async def ensure_loaded(self, profile: ModelProfile, within_s: float | None = None) -> str:
        """Load ``profile`` somewhere (one load however many callers) and return the node."""
        task = self._loads.get(profile.id)
        if task is None:
            task = asyncio.create_task(self._cold_load(profile))
            self._loads[profile.id] = task
            task.add_done_callback(lambda _: self._loads.pop(profile.id, None))
            # Someone always retrieves the outcome, even if every caller gave up.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        timeout = self.settings.load_timeout_s if within_s is None else max(within_s, 0)
        self._callers[profile.id] += 1
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise late(profile.id) from None
        finally:
            self._callers[profile.id] -= 1
            if self._callers[profile.id] <= 0:
                del self._callers[profile.id]

    async def _cold_load(self, profile: ModelProfile) -> str:
        try:
            return await self._place_and_load(profile)
        finally:
            self._blocked.pop(profile.id, None)

    async def _place_and_load(self, profile: ModelProfile) -> str:
        attempt = _Attempt(time.monotonic() + self.settings.load_timeout_s)
        while attempt.tries < len(self.poller.nodes) + 16:
            cooling = in_backoff(self.backoffs, profile.id, self._clock())
            candidates = [
                n
                for n in self.poller.nodes
                if n not in attempt.exclude and n not in cooling and profile.allowed_on(n)
            ]
            if not candidates and cooling and not attempt.tries:
                # Every node that could take it failed to load it recently: no new try yet.
                raise self._cooling_down(profile.id, cooling)
            if attempt.fresh:
                # Fresh answers from the nodes that could take it, in parallel and bounded:
                # a slow node is judged on its last answer, not waited for.
                await self.poller.refresh_some(candidates, PLACEMENT_POLL_S)
                attempt.fresh = False
            # Deciding and claiming the victims happens without a pause, so two cold
            # loads never choose the same victims; the unloads then run unlocked.
            decision = place(
                profile,
                self.poller.fleet,
                self.catalogue,
                self.busy(),
                self.strategy,
                needed_bytes=attempt.needed,
                exclude=frozenset(attempt.exclude | cooling.keys()),
                wait_for_busy=True,
            )
            if isinstance(decision, Unplaceable):
                raise self._unplaceable(profile, decision, attempt, cooling)
            if decision.waits_for:
                await self._wait_for_room(profile, decision.node, decision.waits_for, attempt)
                continue
            self._blocked.pop(profile.id, None)
            await self._evict_for(decision)
            attempt.tries += 1
            failure = await self._load_on(decision.node, profile, decision.wake)
            if failure is None:
                self.backoffs.pop((decision.node, profile.id), None)
                return decision.node
            await self._after_failure(profile, failure, attempt)
        raise self._failed(profile.id, f"model {profile.id!r} cannot be placed", attempt)

    def _unplaceable(
        self,
        profile: ModelProfile,
        decision: Unplaceable,
        attempt: _Attempt,
        cooling: Mapping[str, float],
    ) -> GatewayError:
        message = decision.message
        if attempt.exclude:
            message = f"model {profile.id!r} cannot be placed: {attempt.last_error}"
        log.warning("model cannot be placed", extra={"model": profile.id, "error": message})
        return GatewayError(503, ErrorKind.UNAVAILABLE, message, headers=_retry_after(cooling))

    async def _after_failure(
        self, profile: ModelProfile, failure: LoadFailure, attempt: _Attempt
    ) -> None:
        """A load failed: do what the router says (plan again, make room, skip the node, stop)."""
        attempt.last_error = f"{failure.node} answered {failure.code or 'no answer'}"
        attempt.fresh = True  # plan again on what the nodes say now (another load may be under way)
        retry = after_failed_load(
            profile,
            failure,
            self.poller.fleet,
            self.catalogue,
            self.busy(),
            self.strategy,
            needed_bytes=attempt.needed,
        )
        match retry:
            case PlanAgain(needed_bytes):
                attempt.needed = needed_bytes  # the neuron's own figure: plan evictions with it
            case EvictOne(node, victim):
                await self.unload(node, victim, self._reason)
            case WaitForRoom(node, victims):
                await self._wait_for_room(profile, node, victims, attempt)
            case Exclude(node):
                self._back_off(node, profile.id)
                attempt.exclude.add(node)
            case GiveUp(_):
                self._back_off(failure.node, profile.id)
                # The neuron's own words stay in the log (its "load failed" line).
                raise self._failed(profile.id, f"model {profile.id!r} cannot be loaded", attempt)

    def _failed(self, model_id: str, what: str, attempt: _Attempt) -> GatewayError:
        cooling = in_backoff(self.backoffs, model_id, self._clock())
        message = f"{what}: {attempt.last_error}"
        return GatewayError(503, ErrorKind.UNAVAILABLE, message, headers=_retry_after(cooling))

    async def _wait_for_room(
        self, profile: ModelProfile, node: str, victims: tuple[str, ...], attempt: _Attempt
    ) -> None:
        """Wait while ``victims`` on ``node`` have requests in flight.

        The swap policy decides when they stop taking new ones.
        """
        remaining = attempt.deadline - time.monotonic()
        if remaining <= 0:
            raise late(profile.id)
        if not self._callers.get(profile.id) and not profile.pinned:
            raise GatewayError(503, ErrorKind.UNAVAILABLE, "nobody waits for this load any more")
        since = self._waiting_since(profile.id)
        self._blocked[profile.id] = Blocked(profile.id, node, victims, since)
        if all(not self.leases.counts.get((node, v)) for v in victims):
            # Idle by the gateway's count: the neuron's own count is from its last poll.
            await self.poller.refresh(node)
        else:
            await self.poller.changes.wait(min(remaining, 1.0))

    def _back_off(self, node: str, model_id: str) -> None:
        """A load of ``model_id`` failed on ``node``: pause loads of it there, longer each time."""
        previous = self.backoffs.get((node, model_id))
        failures = previous.failures + 1 if previous is not None else 1
        pause = backoff_s(failures)
        self.backoffs[(node, model_id)] = Backoff(failures, self._clock() + pause)
        log.warning(
            "load backing off",
            extra={"model": model_id, "node": node, "failures": failures, "seconds": pause},
        )

    def clear_backoff(self, model_id: str) -> None:
        """An operator asks for ``model_id``: forget its failed loads everywhere."""
        for key in [k for k in self.backoffs if k[1] == model_id]:
            del self.backoffs[key]

    def _cooling_down(self, model_id: str, cooling: Mapping[str, float]) -> GatewayError:
        wait = min(cooling.values())
        return GatewayError(
            503,
            ErrorKind.UNAVAILABLE,
            f"model {model_id!r} failed to load recently; the next try is in {math.ceil(wait)} s",
            headers=_retry_after(cooling),
        )

    @property
    def _reason(self) -> EvictionReason:
        return "priority" if self.strategy == "priority" else "lru"

    async def _evict_for(self, decision: Placement) -> None:
        if not decision.evict:
            return
        claimed = [(decision.node, victim) for victim in decision.evict]
        self._evicting.update(claimed)
        try:
            for victim in decision.evict:
                await self.unload(decision.node, victim, self._reason)
        finally:
            self._evicting.difference_update(claimed)
        self._eviction_cycles += 1
        every = self.config.cortex.eviction.defrag_after_cycles
        if every and self._eviction_cycles % every == 0:
            self.background.spawn(self.defragment())

    async def _load_on(self, node: str, profile: ModelProfile, wake: bool) -> LoadFailure | None:
        """Ask ``node`` to load (``wake``: to wake it there); ``None`` on success, else why not."""
        client = self.poller.nodes[node].client
        request = LoadRequest(
            model=profile.qualified_id, options=dict(profile.engine), task=profile.task
        )
        started = time.monotonic()
        began = FleetEvent("load_started", node, profile.id, source=profile.source, wake=wake)
        self.events.emit(began)
        try:
            info = await client.load(request, self.settings.load_timeout_s)
        except NeuronCallError as exc:
            failed = FleetEvent(
                "load_failed",
                node,
                profile.id,
                error=str(exc),
                seconds=time.monotonic() - started,
                url=client.base_url,
                status=exc.upstream_status,
                code=exc.code,
                wake=wake,
            )
            self.events.emit(failed)
            if exc.upstream_status is None:
                await self.poller.refresh(node)
            details = exc.error.error.details if exc.error else {}
            needed = details.get("needed_bytes")
            code = printable(exc.code, 64) if exc.code else None
            return LoadFailure(node, code, str(exc), needed if isinstance(needed, int) else None)
        seconds = time.monotonic() - started
        # The neuron's phases say what it did (a sleeper's load is a wake, planned or not).
        woke = wake or "waking" in info.phase_seconds
        self.events.emit(FleetEvent("loaded", node, profile.id, seconds=seconds, wake=woke))
        await self.poller.refresh(node)
        return None

    # --- unloads ------------------------------------------------------------------------

    async def unload(self, node: str, model_id: str, reason: EvictionReason) -> None:
        """Unload ``model_id`` from ``node`` (endpoint forgotten); ``SLEEPS`` ask for a sleep."""
        owner = self.poller.nodes[node]
        owner.forget(model_id)
        answer = None
        try:
            answer = await owner.client.unload(model_id, sleep=reason in SLEEPS)
        except NeuronCallError as exc:
            if exc.upstream_status != 404:
                log.warning(
                    "unload failed",
                    extra={
                        "model": model_id,
                        "node": node,
                        "url": owner.client.base_url,
                        "status": exc.upstream_status,
                        "error": str(exc),
                    },
                )
                await owner.refresh()
                message = f"unloading {model_id!r} from {node!r} failed"
                raise GatewayError(502, ErrorKind.UPSTREAM, message) from exc
        kind: EventKind = "unloaded" if reason == "admin" else "evicted"
        held = None
        if answer is not None and answer.state == "sleeping":
            kind, held = "slept", answer.host_memory_bytes
        self.events.emit(FleetEvent(kind, node, model_id, reason=reason, host_bytes=held))
        await owner.refresh()

    async def defragment(self) -> None:
        """Repack fragmented nodes: move each chosen idle model off and back on its node."""
        for node, model in defrag_candidates(self.poller.fleet, self.catalogue, self.busy()):
            profile = self.catalogue.profile(model)
            log.info("defragmenting", extra={"node": node, "model": model})
            await self.unload(node, model, "defrag")
            if profile is not None:
                self.background.spawn(self._load_quietly(profile))

    async def maintain(self) -> None:
        """After a poll round: load pinned models that are nowhere, unload idle ones."""
        fleet = self.poller.fleet
        for profile in self.catalogue.models:
            if not profile.pinned or profile.id in self._loads:
                continue  # most are not pinned: a large catalogue costs a scan, not a lookup each
            if not fleet.locations(profile.id) and not fleet.loading(profile.id):
                log.info("loading pinned model", extra={"model": profile.id})
                self.background.spawn(self._load_quietly(profile))
        idle_s = self.config.cortex.eviction.idle_timeout_s
        for node, model in idle_models(fleet, self.catalogue, self.busy(), self._clock(), idle_s):
            await self.unload(node, model, "idle")

    async def _load_quietly(self, profile: ModelProfile) -> None:
        try:
            await self.ensure_loaded(profile)
        except GatewayError as exc:
            log.warning(
                "pinned model not loaded", extra={"model": profile.id, "error": exc.message}
            )

    async def close(self) -> None:
        """Cancel background work (loads under way on neurons carry on there)."""
        tasks = list(self._loads.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.background.close()
