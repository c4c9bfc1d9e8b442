"""The dashboard's memory: per-model buckets over a fixed window, and the numbered timeline."""

from __future__ import annotations

from cortex_gateway.activity import ALL, TTFT_SAMPLES, Event, Series, Timeline


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_tokens_errors_and_ttft_land_in_their_bucket_and_in_all() -> None:
    """Rates are per second of a bucket; the all-models series sums every model."""
    clock = Clock(1000.0)
    series = Series(window_s=60, bucket_s=5, clock=clock)
    series.record("m", ok=True, tokens=50, ttft=0.2)
    series.record("m", ok=True, tokens=30, ttft=0.4)
    series.record("n", ok=False)
    view = series.view("m")
    assert len(view.requests) == 12
    assert view.step == 5.0
    assert view.start == 1000.0 - 55
    assert view.requests[-1] == 2 / 5
    assert view.tokens[-1] == 80 / 5
    assert view.errors[-1] == 0
    assert view.ttft_p50[-1] == 0.4
    assert view.ttft_p95[-1] == 0.4
    every = series.view(ALL)
    assert every.requests[-1] == 3 / 5
    assert every.errors[-1] == 1 / 5
    assert series.models() == [ALL, "m", "n"]


def test_old_buckets_fall_out_of_the_window_and_slots_are_reused() -> None:
    """After a window without requests, a model's series is all zeros again."""
    clock = Clock(1000.0)
    series = Series(window_s=20, bucket_s=5, clock=clock)
    series.record("m", ok=True, tokens=1)
    clock.now += 10
    series.record("m", ok=True, tokens=2)
    view = series.view("m")
    assert view.tokens == [0.0, 1 / 5, 0.0, 2 / 5]
    assert view.ttft_p50 == [None] * 4
    clock.now += 20  # the ring comes round: both buckets are stale
    assert series.view("m").requests == [0.0] * 4
    series.record("m", ok=True, tokens=4)
    assert series.view("m").tokens == [0.0, 0.0, 0.0, 4 / 5]


def test_memory_is_bounded_per_bucket_and_in_models() -> None:
    """TTFT samples per bucket and the number of models are capped."""
    series = Series(window_s=10, bucket_s=5, clock=Clock(), max_models=3)
    for i in range(TTFT_SAMPLES * 3):
        series.record("m", ok=True, ttft=float(i))
    assert series.view("m").requests[-1] == TTFT_SAMPLES * 3 / 5
    p95 = series.view("m").ttft_p95[-1]
    assert p95 is not None
    assert p95 < TTFT_SAMPLES
    for name in ("x", "y", "z"):
        series.record(name, ok=True)
    assert series.models() == [ALL, "m", "x"]
    assert series.view("z").requests[-1] == 0.0


def test_a_model_never_seen_views_as_zeros() -> None:
    """A catalogue model without requests charts as an idle line."""
    view = Series(window_s=10, bucket_s=5, clock=Clock()).view("nobody")
    assert view.requests == [0.0, 0.0]
    assert view.ttft_p95 == [None, None]


def test_timeline_numbers_events_keeps_the_newest_and_tells_listeners() -> None:
    """Events carry a sequence number; ``since`` gives the unseen ones; the ring is bounded."""
    clock = Clock(5.0)
    timeline = Timeline(size=3, clock=clock)
    heard: list[Event] = []
    timeline.listeners.append(heard.append)
    timeline.add("load_started", "a", "m")
    timeline.add("loaded", "a", "m", seconds=1.234)
    timeline.add("evicted", "a", "m", reason="lru")
    timeline.add("node_down", "b", reason="refused")
    assert [e.seq for e in timeline.since()] == [2, 3, 4]
    assert [e.kind for e in timeline.since(3)] == ["node_down"]
    assert timeline.since(2)[0].reason == "lru"
    assert [e.seq for e in heard] == [1, 2, 3, 4]
    assert heard[1].seconds == 1.23
    assert heard[1].time == 5.0
