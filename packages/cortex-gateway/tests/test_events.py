"""The fleet's one event stream: every listener hears every event, and one line is logged each."""

from __future__ import annotations

import logging

import pytest

from cortex_gateway.activity import Timeline
from cortex_gateway.events import Events, FleetEvent, log_event


def test_every_listener_hears_every_event_in_order_until_it_stops() -> None:
    """Listeners are called in the order they subscribed; the returned callable unsubscribes."""
    events = Events()
    first: list[str] = []
    second: list[str] = []
    events.on(lambda e: first.append(e.kind))
    stop = events.on(lambda e: second.append(e.kind))
    events.emit(FleetEvent("node_up", "a"))
    stop()
    events.emit(FleetEvent("node_down", "a", error="refused"))
    assert first == ["node_up", "node_down"]
    assert second == ["node_up"]


def test_a_failing_listener_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one subscriber (say, the metrics) never keeps the event from the rest."""
    events = Events()
    heard: list[FleetEvent] = []

    def broken(event: FleetEvent) -> None:
        raise RuntimeError("a bug")

    events.on(broken)
    events.on(heard.append)
    events.emit(FleetEvent("loaded", "a", "m", seconds=1.0))
    assert [e.kind for e in heard] == ["loaded"]
    [record] = [r for r in caplog.records if r.getMessage() == "event listener failed"]
    assert record.exc_info is not None


@pytest.mark.parametrize(
    ("event", "message", "level", "fields"),
    [
        (FleetEvent("load_started", "a", "m", source="hf"), "loading model", "INFO", {"source"}),
        (FleetEvent("loaded", "a", "m", seconds=1.26), "model loaded", "INFO", {"seconds"}),
        (
            FleetEvent("load_failed", "a", "m", error="boom", url="u", status=500, code="c"),
            "load failed",
            "WARNING",
            {"url", "status", "code", "error"},
        ),
        (FleetEvent("unloaded", "a", "m", reason="admin"), "model unloaded", "INFO", {"reason"}),
        (FleetEvent("evicted", "a", "m", reason="lru"), "model evicted", "INFO", {"reason"}),
        (
            FleetEvent("slept", "a", "m", reason="lru", host_bytes=5),
            "model slept",
            "INFO",
            {"reason", "host_memory_bytes"},
        ),
        (FleetEvent("load_started", "a", "m", wake=True), "waking model", "INFO", {"source"}),
        (
            FleetEvent("loaded", "a", "m", seconds=1.6, wake=True),
            "model woken",
            "INFO",
            {"seconds"},
        ),
        (
            FleetEvent("load_failed", "a", "m", error="full", code="c", wake=True),
            "wake failed",
            "WARNING",
            {"code", "error"},
        ),
        (FleetEvent("node_up", "a", url="u", version="1"), "neuron up", "INFO", {"url", "version"}),
        (FleetEvent("node_down", "a", url="u", error="x"), "neuron down", "WARNING", {"error"}),
        (FleetEvent("node_restarted", "a"), "neuron restarted", "WARNING", set()),
    ],
)
def test_each_event_is_one_log_line_with_its_fields(
    caplog: pytest.LogCaptureFixture,
    event: FleetEvent,
    message: str,
    level: str,
    fields: set[str],
) -> None:
    """The log subscribes like everyone else: one line per event, node (and model) named."""
    caplog.set_level(logging.INFO, "cortex_gateway")
    log_event(event)
    [record] = caplog.records
    assert (record.getMessage(), record.levelname) == (message, level)
    assert vars(record)["node"] == "a"
    assert fields <= set(vars(record))


def test_the_timeline_keeps_a_failure_as_bounded_printable_text() -> None:
    """A failed load's error reaches the dashboard cut to size, with no control characters."""
    timeline = Timeline()
    kept = timeline.record(FleetEvent("load_failed", "a", "m", error="bad\x1b[31m" + "x" * 900))
    assert kept.reason is not None
    assert "\x1b" not in kept.reason
    assert len(kept.reason) < 320  # 300 characters, escapes and an ellipsis
    evicted = timeline.record(FleetEvent("evicted", "a", "m", reason="idle", error="ignored"))
    assert evicted.reason == "idle"
