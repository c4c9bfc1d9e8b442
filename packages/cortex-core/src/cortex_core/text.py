"""Text: what came from outside (clients, neurons) made safe to show and log; tables."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["columns", "printable"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int = 256) -> str:
    r"""``text`` with control characters escaped as ``\xNN``, cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return _CONTROL.sub(_escape, text)


def columns(rows: Sequence[Sequence[str]], *, left: int | None = None) -> list[str]:
    """``rows`` (the header first) as lines of aligned columns, two spaces apart.

    Every column is aligned left, or only the first ``left`` (the rest, figures,
    to the right). Trailing spaces are dropped.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if left is None or i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
