"""The fair queue as plain data: interactive first, then round-robin across keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex_gateway.fairqueue import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    order = []
    while (item := queue.pop()) is not None:
        order.append(item)
    return order


def test_interactive_first_then_round_robin_across_keys() -> None:
    """A flood from one key takes turns with the others; interactive items go before all."""
    queue: FairQueue[str] = FairQueue()
    for i in range(4):
        queue.push(f"a{i}", "a", batch=True)
    queue.push("b0", "b", batch=True)
    queue.push("b1", "b", batch=True)
    queue.push("c0", "c", batch=True)
    queue.push("i0", "i")
    queue.push("j0", "j")
    queue.push("i1", "i")
    assert len(queue) == 10
    assert (queue.waiting(batch=True), queue.waiting(batch=False)) == (7, 3)
    assert drain(queue) == ["i0", "j0", "i1", "a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert len(queue) == 0


def test_a_key_passed_over_keeps_its_turn_and_remove_takes_an_item_out() -> None:
    """Items that do not fit are skipped without losing their place; removed ones are gone."""
    queue: FairQueue[str] = FairQueue()
    for item, key in (("a0", "a"), ("b0", "b"), ("a1", "a"), ("c0", "c")):
        queue.push(item, key, batch=True)
    assert queue.pop(fits=lambda item: item.startswith("b")) == "b0"
    assert queue.keys(batch=True) == ["a", "c"]
    assert queue.remove("c0")
    assert not queue.remove("c0")
    assert "c0" not in queue
    assert "a1" in queue
    assert queue.pop(fits=lambda item: False) is None
    assert drain(queue) == ["a0", "a1"]
    queue.push("x", "a")
    with pytest.raises(ValueError, match="already waiting"):
        queue.push("x", "b")


@given(
    flood=st.integers(1, 50),
    others=st.lists(st.sampled_from("bcdefg"), min_size=1, max_size=10, unique=True),
    batch=st.booleans(),
)
def test_a_flood_delays_another_keys_item_by_one_turn_at_most(
    flood: int, others: list[str], batch: bool
) -> None:
    """However many items one key queued first, another key's item is among the next turns.

    With k keys waiting, an item pushed by a key with nothing queued is served
    within k pops: once per key ahead of it, then itself; the flooding key
    gets one of those turns, not all of its items.
    """
    queue: FairQueue[str] = FairQueue()
    for i in range(flood):
        queue.push(f"a{i}", "a", batch=batch)
    for key in others:
        queue.push(f"{key}0", key, batch=batch)
    order = drain(queue)
    for key in others:
        assert order.index(f"{key}0") <= len(others)
    assert [o for o in order if o.startswith("a")] == [f"a{i}" for i in range(flood)]
