"""The book of leases: in-flight counts and the prompt work not yet computed, given back once."""

from __future__ import annotations

from cortex_gateway.leases import Leases


def test_prefill_is_counted_until_the_first_token_then_in_flight_until_release() -> None:
    """``prefilled`` gives back a lease's prompt blocks; ``release`` gives back the rest."""
    book = Leases()
    first = book.take("a", "m", prefill=7)
    second = book.take("a", "m", prefill=3)
    book.take("b", "m")
    assert book.prefill == {("a", "m"): 10}
    assert book.counts == {("a", "m"): 2, ("b", "m"): 1}
    first.prefilled()
    first.prefilled()
    assert book.prefill == {("a", "m"): 3}
    assert book.counts[("a", "m")] == 2
    first.release()
    assert book.counts[("a", "m")] == 1
    second.release()  # ended before its first token (an error, a non-streamed answer)
    second.prefilled()
    assert book.prefill == {}
    assert book.counts == {("b", "m"): 1}


def test_a_lease_without_prompt_work_counts_none() -> None:
    """Routing without prefix scores takes leases with no prefill to count."""
    book = Leases()
    lease = book.take("a", "m", prefill=0)
    lease.prefilled()
    lease.release()
    assert book.prefill == {}
    assert len(book) == 0
