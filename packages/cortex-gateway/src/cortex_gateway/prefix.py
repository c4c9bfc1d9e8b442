"""Which node recently served which prompt prefix: the gateway's own routing history, hashed.

A request's prompt (as it was rendered for routing: the raw JSON of its
messages, or of its system prompt and messages) is cut into blocks of
``block_chars`` characters; each full block is hashed together with the
hash of everything before it, so a block hash names a whole prefix. The
index maps ``(model, prefix hash)`` to the nodes that were sent that
prefix, least recently used first, and holds at most ``max_blocks`` of
them: an approximation of the engines' prefix caches (vLLM keeps recently
computed blocks), kept without asking the engines, as SGLang's router does.

A request may also carry a session key (Claude Code's
``X-Claude-Code-Session-Id``): the node a session was last sent to counts as
holding the whole of its next prompt, so a conversation stays where its cache
is even when its prompt changes at the front (a compaction, say).

Nothing here does I/O; the router reads :meth:`PrefixIndex.match` and the
pipeline calls :meth:`PrefixIndex.record` once a request is routed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["MAX_SESSIONS", "PrefixIndex", "prefix_hashes"]

MAX_SESSIONS = 4096
"""The most sessions the index remembers a node for (least recently used go first)."""


def prefix_hashes(
    model: str, rendered: bytes, block_chars: int, max_blocks: int = 4096
) -> list[int]:
    """The chained hashes of ``rendered``'s full blocks (at most ``max_blocks`` of them).

    Hash ``i`` covers bytes ``[0, (i + 1) * block_chars)``: two prompts share
    their first ``n`` hashes exactly when they share their first ``n`` blocks.
    A prompt shorter than one block has none (nothing worth routing for).
    """
    hashes = []
    chain = hash(model)
    full = min(len(rendered) // block_chars, max_blocks)
    for start in range(0, full * block_chars, block_chars):
        chain = hash((chain, rendered[start : start + block_chars]))
        hashes.append(chain)
    return hashes


class PrefixIndex:
    """Prefix hashes → the nodes that were sent them, bounded, least recently used first."""

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._entries: OrderedDict[tuple[str, int], frozenset[str]] = OrderedDict()
        self._held: dict[str, int] = {}
        """Entries naming each node: how much of the index a node holds."""
        self._sets: dict[frozenset[str], frozenset[str]] = {}
        """One object per set of holders (there are few): entries share them."""
        self._sessions: OrderedDict[tuple[str, str], str] = OrderedDict()
        """``(model, session)`` → the node the session was last sent to."""

    def __len__(self) -> int:
        return len(self._entries)

    def held(self, node: str) -> int:
        """How many prefix blocks the index credits ``node`` with."""
        return self._held.get(node, 0)

    def match(
        self,
        model: str,
        hashes: Sequence[int],
        nodes: Iterable[str],
        session: str | None = None,
    ) -> dict[str, int]:
        """For each of ``nodes``, how many leading blocks of the prefix it was sent.

        The node ``session`` was last sent to counts as holding every block.
        """
        matched = self._match(model, hashes, nodes)
        if session is not None:
            node = self._sessions.get((model, session))
            if node is not None and node in matched:
                matched[node] = len(hashes)
        return matched

    def _match(self, model: str, hashes: Sequence[int], nodes: Iterable[str]) -> dict[str, int]:
        matched = dict.fromkeys(nodes, 0)
        alive = set(matched)
        entries = self._entries
        for depth, block in enumerate(hashes, 1):
            holders = entries.get((model, block))
            if holders is None:
                break
            alive &= holders
            if not alive:
                break
            for node in alive:
                matched[node] = depth
        return matched

    def record(
        self, model: str, hashes: Sequence[int], node: str, session: str | None = None
    ) -> None:
        """``node`` was sent this prefix (of ``session``): it holds, or soon will, every block."""
        if session is not None:
            sessions = self._sessions
            sessions[(model, session)] = node
            sessions.move_to_end((model, session))
            while len(sessions) > MAX_SESSIONS:
                sessions.popitem(last=False)
        entries = self._entries
        held = self._held
        for block in hashes:
            key = (model, block)
            holders = entries.get(key)
            if holders is None:
                entries[key] = self._interned(frozenset((node,)))
                held[node] = held.get(node, 0) + 1
            else:
                if node not in holders:
                    entries[key] = self._interned(holders | {node})
                    held[node] = held.get(node, 0) + 1
                entries.move_to_end(key)
        while len(entries) > self.max_blocks:
            _, holders = entries.popitem(last=False)
            self._release(holders)

    def forget(self, node: str, model: str | None = None) -> int:
        """Drop what ``node`` holds (of ``model``, or of every model); how many blocks went."""
        dropped = 0
        for key in list(self._entries):
            if model is not None and key[0] != model:
                continue
            holders = self._entries[key]
            if node not in holders:
                continue
            dropped += 1
            rest = holders - {node}
            if rest:
                self._entries[key] = self._interned(rest)
            else:
                del self._entries[key]
        if dropped:
            self._held[node] = max(self._held.get(node, 0) - dropped, 0)
        for session, holder in list(self._sessions.items()):
            if holder == node and (model is None or session[0] == model):
                del self._sessions[session]
        return dropped

    @property
    def holding(self) -> Mapping[str, int]:
        """Blocks credited per node (read by the router on every request: not copied)."""
        return self._held

    def _interned(self, holders: frozenset[str]) -> frozenset[str]:
        return self._sets.setdefault(holders, holders)

    def _release(self, holders: frozenset[str]) -> None:
        for node in holders:
            self._held[node] = max(self._held.get(node, 0) - 1, 0)
