"""A node's record and what each answer changes (records.py): pure transitions over plain data."""

from __future__ import annotations

from cortex_core.neuron_api import ModelInfo
from cortex_gateway.fleet import NodeState
from cortex_gateway.records import BREAKER_S, Evidence, NodeRecord, observe

URL = "http://beast:13131"


def node(*ready: str, up: bool = True, started_at: float | None = 1.0) -> NodeState:
    """The node ``beast``, answering with ``ready`` models (or down)."""
    models = tuple(ModelInfo(id=m, state="ready") for m in ready)
    return NodeState("beast", URL, up=up, models=models, last_seen=5.0, started_at=started_at)


def test_a_node_that_answers_after_not_answering_is_up() -> None:
    """Up is one event with its version and address, and the time it was seen up."""
    fresh = NodeRecord(NodeState("beast", URL, error="not polled yet"))
    change = observe(fresh, node("a"), now=10.0)
    assert [(e.kind, e.url) for e in change.events] == [("node_up", URL)]
    assert change.record.since == 10.0
    assert not change.void


def test_a_node_that_stops_answering_voids_its_requests_and_forgets_its_endpoints() -> None:
    """Down: one event with the error, its leases void, no endpoint kept, since moved."""
    record = NodeRecord(node("a"), since=1.0, endpoints={"a": "http://beast:8000/v1"})
    change = observe(record, record.state.down("refused"), now=20.0)
    assert [(e.kind, e.error) for e in change.events] == [("node_down", "refused")]
    assert change.void
    assert change.record.endpoints == {}
    assert change.record.since == 20.0
    again = observe(change.record, change.record.state.down("refused"), now=30.0)
    assert again.events == ()
    assert again.record.since == 20.0


def test_a_node_never_seen_is_down_once_per_new_error() -> None:
    """Before its first answer: each new error is said once; the first one sets since."""
    fresh = NodeRecord(NodeState("beast", URL, error="not polled yet"))
    first = observe(fresh, fresh.state.down("refused"), now=1.0)
    assert [e.kind for e in first.events] == ["node_down"]
    assert not first.void
    second = observe(first.record, first.record.state.down("timed out"), now=2.0)
    assert [e.error for e in second.events] == ["timed out"]
    assert second.record.since == 1.0


def test_a_restart_is_said_and_forgets_everything_the_old_process_held() -> None:
    """A new started_at: restarted, leases void, endpoints gone, even with the same models."""
    record = NodeRecord(node("a"), since=1.0, endpoints={"a": "http://beast:8000/v1"})
    change = observe(record, node("a", started_at=2.0), now=50.0)
    assert [e.kind for e in change.events] == ["node_restarted"]
    assert change.void
    assert change.restarted
    assert change.record.endpoints == {}
    assert change.record.since == 50.0


def test_a_model_that_left_a_node_still_up_is_gone_with_its_endpoint() -> None:
    """Only the models no longer ready: their endpoints and their prompt caches."""
    endpoints = {"a": "http://beast:8000/v1", "b": "http://beast:8001/v1"}
    record = NodeRecord(node("a", "b"), since=1.0, endpoints=endpoints)
    change = observe(record, node("b"), now=3.0)
    assert change.gone == {"a"}
    assert change.record.endpoints == {"b": "http://beast:8001/v1"}
    assert change.events == ()
    assert not change.void


def test_the_breaker_opens_for_a_while_and_a_poll_keeps_it() -> None:
    """A request that could not reach the node opens it for BREAKER_S; polls do not close it."""
    record = NodeRecord(node("a")).tripped(now=100.0)
    assert record.broken(100.0 + BREAKER_S - 1)
    assert not record.broken(100.0 + BREAKER_S)
    assert observe(record, node("a"), now=7.0).record.broken(101.0)


def test_an_endpoint_is_kept_and_forgotten_by_model() -> None:
    """Records are values: each change is a new record."""
    record = NodeRecord(node("a", "b"))
    known = record.with_endpoint("a", "u").with_endpoint("b", "v")
    assert record.endpoints == {}
    assert known.without_endpoint("a").endpoints == {"b": "v"}
    assert known.without_endpoint("zzz") is known


def test_a_failed_poll_makes_a_node_suspect_not_down() -> None:
    """Below the threshold the node stays up with what it said, counted; an answer clears it."""
    record = NodeRecord(node("a"), since=1.0, endpoints={"a": "http://beast:8000/v1"})
    first = observe(record, record.state.down("timed out"), now=20.0, down_after=3)
    assert first.record.state.up
    assert first.record.suspect
    assert first.record.failures == 1
    assert first.record.endpoints == record.endpoints
    assert (first.events, first.void) == ((), False)
    second = observe(first.record, first.record.state.down("refused"), now=21.0, down_after=3)
    assert second.record.failures == 2
    assert second.record.state.up
    back = observe(second.record, node("a"), now=22.0, down_after=3)
    assert (back.record.failures, back.record.suspect, back.events) == (0, False, ())


def test_failed_polls_past_the_threshold_mark_it_down_and_void_quiet_requests() -> None:
    """The third failure in a row: down, one event, requests void unless still answered."""
    record = NodeRecord(node("a"), since=1.0, failures=2)
    quiet = observe(record, record.state.down("refused"), now=30.0, down_after=3)
    assert not quiet.record.state.up
    assert [e.kind for e in quiet.events] == ["node_down"]
    assert quiet.void
    answered = observe(
        record,
        record.state.down("refused"),
        now=30.0,
        down_after=3,
        evidence=Evidence(answering=True),
    )
    assert not answered.record.state.up
    assert not answered.void
    later = observe(answered.record, answered.record.state.down("refused"), 31.0, down_after=3)
    assert later.void
    assert later.events == ()


def test_a_failed_poll_with_the_breaker_open_is_down_at_once() -> None:
    """A request could not reach it and a poll failed: two kinds of evidence, down now."""
    record = NodeRecord(node("a"), since=1.0)
    change = observe(
        record,
        record.state.down("refused"),
        now=5.0,
        down_after=3,
        evidence=Evidence(unreachable=True),
    )
    assert not change.record.state.up
    assert change.void
