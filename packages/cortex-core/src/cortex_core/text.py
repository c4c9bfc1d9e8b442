"""Text that came from outside (clients, neurons) made safe to show and to log."""

from __future__ import annotations

import re

__all__ = ["printable"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int = 256) -> str:
    r"""``text`` with control characters escaped as ``\xNN``, cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return _CONTROL.sub(_escape, text)
