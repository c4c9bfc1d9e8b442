"""Outside text made safe: printable() for answers, the log formatter for log lines."""

from __future__ import annotations

import json
import logging

import pytest

from cortex_core.runtime.logs import MAX_FIELD, StructuredFormatter
from cortex_core.text import printable


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("Qwen/Qwen3-8B", 256, "Qwen/Qwen3-8B"),
        ("a\x00b\x1b[31m", 256, "a\\x00b\\x1b[31m"),
        ("line\nbreak\r\t", 256, "line\\x0abreak\\x0d\\x09"),
        ("del\x7f c1\x85 ls\u2028", 256, "del\\x7f c1\\x85 ls\\u2028"),
        ("é ☀ 中", 256, "é ☀ 中"),
        ("x" * 10, 4, "xxxx…"),
    ],
)
def test_printable(text: str, limit: int, expected: str) -> None:
    """Control characters are escaped, the rest kept; long text is cut with an ellipsis."""
    assert printable(text, limit) == expected


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("cortex", logging.WARNING, __file__, 1, "request failed", None, None)
    record.__dict__.update(fields)
    return record


def test_text_log_lines_quote_and_escape_hostile_values() -> None:
    """A value with a control character is quoted with it escaped: one line, no terminal codes."""
    line = StructuredFormatter("text").format(_record(model="evil\x00\x1b[31m", node="beast"))
    assert "\n" not in line
    assert "\x00" not in line
    assert "\x1b" not in line
    assert 'model="evil\\u0000\\u001b[31m"' in line
    assert "node=beast" in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_fields_are_bounded(fmt: str) -> None:
    """A megabyte in one field leaves the log as at most MAX_FIELD characters and an ellipsis."""
    line = StructuredFormatter(fmt).format(_record(model="m" * (1 << 20)))  # type: ignore[arg-type]
    assert len(line) < MAX_FIELD + 200
    if fmt == "json":
        assert json.loads(line)["model"] == "m" * MAX_FIELD + "…"
