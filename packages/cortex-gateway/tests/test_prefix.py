"""The prefix index: chained block hashes, longest matches per node, bounded memory, forgetting."""

from __future__ import annotations

import tracemalloc

from cortex_gateway.prefix import MAX_SESSIONS, PrefixIndex, prefix_hashes

SYSTEM = b"You are a careful assistant. " * 20  # 580 bytes: 4 blocks of 128


def test_hashes_name_whole_prefixes() -> None:
    """Shared leading blocks give shared hashes; the first difference changes every later one."""
    one = prefix_hashes("m", SYSTEM + b"question one" * 20, 128)
    two = prefix_hashes("m", SYSTEM + b"question two" * 20, 128)
    assert len(one) == len(two) == (len(SYSTEM) + 240) // 128
    assert one[:4] == two[:4]
    assert not set(one[5:]) & set(two[5:])
    assert prefix_hashes("other", SYSTEM, 128) != prefix_hashes("m", SYSTEM, 128)
    assert prefix_hashes("m", b"short", 128) == []
    assert len(prefix_hashes("m", SYSTEM * 100, 128, max_blocks=10)) == 10


def test_match_counts_the_longest_prefix_each_node_was_sent() -> None:
    """A node's match is how far its run of leading blocks goes; strangers match nothing."""
    index = PrefixIndex(1000)
    turn1 = prefix_hashes("m", SYSTEM + b"a" * 300, 128)
    turn2 = prefix_hashes("m", SYSTEM + b"a" * 300 + b"b" * 300, 128)
    other = prefix_hashes("m", SYSTEM + b"c" * 600, 128)
    index.record("m", turn1, "beast")
    index.record("m", other, "benjy")
    matched = index.match("m", turn2, ["beast", "benjy", "cpu1"])
    assert matched == {"beast": len(turn1), "benjy": 4, "cpu1": 0}
    assert index.match("other-model", turn2, ["beast"]) == {"beast": 0}


def test_the_index_stays_bounded_under_a_million_prefixes() -> None:
    """Least recently used blocks go first: a million distinct prefixes leave the cap."""
    index = PrefixIndex(50_000)
    for i in range(1_000_000):
        index.record("m", [i], "beast" if i % 2 else "benjy")
    assert len(index) == 50_000
    assert index.held("beast") + index.held("benjy") == 50_000
    assert index.match("m", [999_999], ["beast"]) == {"beast": 1}
    assert index.match("m", [0], ["benjy"]) == {"benjy": 0}


def test_memory_is_flat_once_full() -> None:
    """Past the cap, recording more prefixes allocates nothing that stays."""
    index = PrefixIndex(20_000)
    tracemalloc.start()
    for i in range(40_000):
        index.record("m", [i], "beast")
    before, _ = tracemalloc.get_traced_memory()
    for i in range(40_000, 140_000):
        index.record("m", [i], "beast" if i % 3 else "benjy")
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after - before < 512 * 1024
    assert len(index) == 20_000


def test_forgetting_a_model_or_a_node() -> None:
    """An unloaded model's blocks leave that node only; a restarted node loses everything."""
    index = PrefixIndex(1000)
    hashes = prefix_hashes("m", SYSTEM, 128)
    others = prefix_hashes("n", SYSTEM, 128)
    index.record("m", hashes, "beast")
    index.record("m", hashes, "benjy")
    index.record("n", others, "beast")
    assert index.forget("beast", "m") == len(hashes)
    assert index.match("m", hashes, ["beast", "benjy"]) == {"beast": 0, "benjy": len(hashes)}
    assert index.match("n", others, ["beast"]) == {"beast": len(others)}
    index.forget("beast")
    assert index.held("beast") == 0
    assert index.match("n", others, ["beast"]) == {"beast": 0}
    assert len(index) == len(hashes)  # benjy's blocks of m remain


def test_a_session_credits_its_node_with_the_whole_prompt() -> None:
    """The node a session was last sent to holds all of its next prompt, whatever it says."""
    index = PrefixIndex(1000)
    first = prefix_hashes("m", SYSTEM + b"a" * 600, 128)
    compacted = prefix_hashes("m", b"summary " * 100, 128)
    index.record("m", first, "beast", session="s1")
    index.record("m", first, "benjy")
    nodes = ["beast", "benjy"]
    assert index.match("m", compacted, nodes) == {"beast": 0, "benjy": 0}
    assert index.match("m", compacted, nodes, "s1") == {"beast": len(compacted), "benjy": 0}
    assert index.match("m", compacted, nodes, "s2") == {"beast": 0, "benjy": 0}
    assert index.match("m2", compacted, nodes, "s1") == {"beast": 0, "benjy": 0}
    assert index.match("m", compacted, ["benjy"], "s1") == {"benjy": 0}
    index.record("m", compacted, "benjy", session="s1")
    assert index.match("m", first, nodes, "s1")["benjy"] == len(first)


def test_sessions_are_bounded_and_forgotten_with_their_node() -> None:
    """Sessions past the cap go, oldest first; a node forgotten takes its sessions along."""
    index = PrefixIndex(1000)
    hashes = prefix_hashes("m", SYSTEM, 128)
    for i in range(MAX_SESSIONS + 10):
        index.record("m", hashes, "beast", session=f"s{i}")
    assert index.match("m", hashes[:1], ["beast"], "s0") == {"beast": 1}  # the shared block
    long = prefix_hashes("m", b"x" * 1280, 128)
    assert index.match("m", long, ["beast"], "s0") == {"beast": 0}
    assert index.match("m", long, ["beast"], f"s{MAX_SESSIONS + 9}") == {"beast": len(long)}
    index.record("m", hashes, "benjy", session="keep")
    index.forget("beast", "m")
    assert index.match("m", long, ["beast"], f"s{MAX_SESSIONS + 9}") == {"beast": 0}
    assert index.match("m", long, ["benjy"], "keep") == {"benjy": len(long)}
