"""Per-key limits as plain data: requests in flight and tokens over a sliding minute."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cortex_gateway.quotas import WINDOW_S, Limits, Refusal


def test_max_concurrent_counts_requests_in_and_out() -> None:
    """The limit-th request is admitted, the next refused with Retry-After 1, until one ends."""
    limits = Limits()
    assert limits.admit("a", 2, 0, 0.0) is None
    assert limits.admit("a", 2, 0, 0.0) is None
    assert limits.admit("a", 2, 0, 0.0) == Refusal("max_concurrent", 1)
    assert limits.admit("b", 2, 0, 0.0) is None  # another key has its own count
    limits.release("a", 0, 1.0)
    assert limits.admit("a", 2, 0, 1.0) is None
    for _ in range(3):
        limits.release("a", 0, 2.0)
    assert "a" not in limits.in_flight


def test_tokens_per_minute_over_a_sliding_window() -> None:
    """Tokens spent in the last minute hold a key back until enough of them have aged out."""
    limits = Limits()
    assert limits.admit("a", 0, 100, 10.2) is None
    limits.release("a", 60, 10.5)
    assert limits.admit("a", 0, 100, 20.0) is None
    limits.release("a", 50, 30.9)
    assert limits.used("a", 31.0) == 110
    refusal = limits.admit("a", 0, 100, 31.0)
    # The 60 tokens of second 10 leave the window at second 70: 39 seconds on.
    assert refusal == Refusal("tokens_per_minute", 39)
    assert limits.used("a", 69.9) == 110
    assert limits.admit("a", 0, 100, 70.0) is None
    assert limits.used("a", 70.0) == 50
    assert limits.used("a", 200.0) == 0


@given(
    spends=st.lists(
        # Times in hundredths of a second: a float a hair below a whole second would make
        # "one second before Retry-After" land on the boundary by rounding alone.
        st.tuples(st.integers(0, 100_000).map(lambda cs: cs / 100), st.integers(0, 500)),
        max_size=40,
    ),
    limit=st.integers(1, 2000),
)
def test_retry_after_is_when_the_key_is_admitted_again(
    spends: list[tuple[float, int]], limit: int
) -> None:
    """Whatever was spent when, a refused key is admitted after Retry-After and not before."""
    limits = Limits()
    now = 0.0
    for at, tokens in sorted(spends):
        limits.spend("a", tokens, at)
        now = at
    refusal = limits.admit("a", 0, limit, now)
    if refusal is None:
        assert limits.used("a", now) < limit
        return
    assert 1 <= refusal.retry_after_s <= WINDOW_S
    later = now + refusal.retry_after_s
    if refusal.retry_after_s > 1:  # (time only goes forward: the window forgets as it moves)
        assert limits.used("a", later - 1) >= limit
    assert limits.used("a", later) < limit
