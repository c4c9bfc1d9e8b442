"""The counts workers share, over real socket pairs in one event loop: a supervisor, two workers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cortex_gateway.coordinator import Coordinator, WorkerLink
from cortex_gateway.quotas import Refusal
from cortex_gateway.tenants import Tenant
from cortex_gateway.usage import UsageBook, UsageReport, merge_reports

pytestmark = pytest.mark.anyio

ALICE = Tenant("alice", max_concurrent=2)
THRIFTY = Tenant("thrifty", tokens_per_minute=10)


def book(since: float, *rows: tuple[str, str, int, int]) -> UsageReport:
    usage = UsageBook(since)
    for key, model, status, tokens in rows:
        usage.record(key, model, status, tokens, 0, tokens)
    return usage.report()


async def test_a_limit_holds_across_workers_and_a_dead_workers_requests_are_counted_out() -> None:
    """Two workers' admissions count together; a worker's link closing gives back what it held."""
    coordinator = Coordinator()
    one = WorkerLink(coordinator.link(0), lambda: book(0.0))
    two = WorkerLink(coordinator.link(1), lambda: book(0.0))
    first = await one.admit(ALICE)
    second = await two.admit(ALICE)
    assert not isinstance(first, Refusal)
    assert not isinstance(second, Refusal)
    assert await one.admit(ALICE) == Refusal("max_concurrent", 1)
    assert await two.admit(ALICE) == Refusal("max_concurrent", 1)
    first.release(0)
    await asyncio.sleep(0.05)
    assert not isinstance(await two.admit(ALICE), Refusal)
    await two.close()  # holding two: both counted out with its link
    await asyncio.sleep(0.05)
    assert coordinator.limits.in_flight == {}
    third = WorkerLink(coordinator.link(1), lambda: book(0.0))
    assert not isinstance(await third.admit(ALICE), Refusal)
    await one.close()
    await third.close()
    await coordinator.close()


async def test_requests_arriving_together_open_the_link_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker's first eight admissions at once share one link: the limit holds, none alone."""
    coordinator = Coordinator()
    one = WorkerLink(coordinator.link(0), lambda: book(0.0))
    two = WorkerLink(coordinator.link(1), lambda: book(0.0))
    with caplog.at_level(logging.ERROR, logger="cortex_gateway.coordinator"):
        verdicts = await asyncio.gather(*(link.admit(ALICE) for link in (one, two) * 4))
    assert sum(not isinstance(v, Refusal) for v in verdicts) == 2
    assert "counts its own requests alone" not in caplog.text
    for link in (one, two):
        await link.close()
    await coordinator.close()


async def test_tokens_spent_on_one_worker_count_on_the_other() -> None:
    """tokens_per_minute: what one worker's requests used holds back the other's."""
    coordinator = Coordinator()
    one = WorkerLink(coordinator.link(0), lambda: book(0.0))
    two = WorkerLink(coordinator.link(1), lambda: book(0.0))
    admitted = await one.admit(THRIFTY)
    assert not isinstance(admitted, Refusal)
    admitted.release(12)
    await asyncio.sleep(0.05)
    refused = await two.admit(THRIFTY)
    assert isinstance(refused, Refusal)
    assert refused.limit == "tokens_per_minute"
    assert 1 <= refused.retry_after_s <= 60
    for link in (one, two):
        await link.close()
    await coordinator.close()


async def test_usage_is_every_workers_merged() -> None:
    """/admin/usage on one worker: every worker's counts added up, the earliest start kept."""
    coordinator = Coordinator()
    one = WorkerLink(coordinator.link(0), lambda: book(200.0, ("alice", "m", 200, 5)))
    two = WorkerLink(
        coordinator.link(1), lambda: book(100.0, ("alice", "m", 429, 0), ("", "m", 200, 1))
    )
    await one.admit(Tenant("warm-up", max_concurrent=9))  # both links open
    await two.admit(Tenant("warm-up", max_concurrent=9))
    report = await one.usage()
    expected = merge_reports(
        [
            book(200.0, ("alice", "m", 200, 5)),
            book(100.0, ("alice", "m", 429, 0), ("", "m", 200, 1)),
        ]
    )
    assert report == expected
    assert report.since == 100.0
    [alice] = [k for k in report.keys if k.name == "alice"]
    assert (alice.models[0].requests, alice.models[0].errors) == (2, 1)
    for link in (one, two):
        await link.close()
    await coordinator.close()


async def test_a_worker_whose_supervisor_is_gone_counts_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The link lost, a worker keeps serving with limits of its own, and says so once."""
    coordinator = Coordinator()
    link = WorkerLink(coordinator.link(0), lambda: book(7.0, ("alice", "m", 200, 1)))
    assert not isinstance(await link.admit(ALICE), Refusal)
    await coordinator.close()
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.ERROR):
        assert not isinstance(await link.admit(ALICE), Refusal)
        assert not isinstance(await link.admit(ALICE), Refusal)
        assert await link.admit(ALICE) == Refusal("max_concurrent", 1)
        assert (await link.usage()).since == 7.0
    assert [r.message for r in caplog.records].count(
        "shared limits unavailable: this worker counts its own requests alone"
    ) == 1
    await link.close()
