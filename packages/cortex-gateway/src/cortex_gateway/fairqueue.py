"""Requests waiting for a slot, served fairly: interactive first, then round-robin across keys.

A :class:`FairQueue` holds items (tickets of waiting requests) in two
classes, interactive and batch, and within each class one first-in,
first-out line per key. :meth:`FairQueue.pop` takes the next interactive
item if there is one, else the next batch item; within a class it takes
the first item of the key whose turn it is and moves that key to the back,
so a key with a thousand items waiting gets one turn in each round, like a
key with one. (Weighted fair queuing with equal weights and a request as
the unit of work.) A caller may pass over items that cannot use what came
free (``fits``): their keys keep their turn. Nothing here does I/O, knows
about time, or knows what an item is.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T", bound=Hashable)


def _always(item: object) -> bool:
    return True


class _Class(Generic[T]):
    """One class's lines, by key, in the order their turns come."""

    def __init__(self) -> None:
        self.lines: OrderedDict[str, deque[T]] = OrderedDict()
        self.size = 0

    def push(self, key: str, item: T) -> None:
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = deque()  # a key with nothing waiting joins at the back
        line.append(item)
        self.size += 1

    def pop(self, fits: Callable[[T], bool]) -> T | None:
        for key, line in self.lines.items():
            if fits(line[0]):
                item = line.popleft()
                self.size -= 1
                if line:
                    self.lines.move_to_end(key)  # served: its next item waits a whole round
                else:
                    del self.lines[key]
                return item
        return None

    def remove(self, key: str, item: T) -> None:
        line = self.lines[key]
        line.remove(item)
        self.size -= 1
        if not line:
            del self.lines[key]


class FairQueue(Generic[T]):
    """Items waiting by class (interactive, batch) and key: interactive first, then fairly."""

    def __init__(self) -> None:
        self._interactive: _Class[T] = _Class()
        self._batch: _Class[T] = _Class()
        self._where: dict[T, tuple[_Class[T], str]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def waiting(self, *, batch: bool) -> int:
        """How many items of one class wait."""
        return (self._batch if batch else self._interactive).size

    def keys(self, *, batch: bool) -> list[str]:
        """The keys with items waiting in one class, in the order their turns come."""
        return list((self._batch if batch else self._interactive).lines)

    def push(self, item: T, key: str, *, batch: bool = False) -> None:
        """Add ``item`` at the back of ``key``'s line in its class."""
        if item in self._where:
            raise ValueError("already waiting")
        klass = self._batch if batch else self._interactive
        klass.push(key, item)
        self._where[item] = (klass, key)

    def pop(self, fits: Callable[[T], bool] = _always) -> T | None:
        """The next item that ``fits``: interactive first, then batch; None if none fits.

        Within a class, the first item of each key's line is offered in turn
        order; the first that fits is taken and its key goes to the back.
        """
        for klass in (self._interactive, self._batch):
            item = klass.pop(fits)
            if item is not None:
                del self._where[item]
                return item
        return None

    def remove(self, item: T) -> bool:
        """Take ``item`` out wherever it waits (its client left); whether it was there."""
        found = self._where.pop(item, None)
        if found is None:
            return False
        klass, key = found
        klass.remove(key, item)
        return True
