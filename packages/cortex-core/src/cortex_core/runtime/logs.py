"""Structured logging for both daemons: one line per event, text or JSON.

Callers log a short event name and put the facts in ``extra`` with the same
field names everywhere (``handler``, ``model``, ``node``, ``url``, ``status``,
``error``, ...); the formatter renders them as ``key=value`` pairs or as JSON.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Literal

__all__ = ["LogFormat", "StructuredFormatter", "configure_logging"]

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: _bounded(v) if v.__class__ is str else v
        for k, v in vars(record).items()
        if k not in _STANDARD and k[0] != "_"
    }


MAX_FIELD = 2048
"""Characters of one field a log line keeps: a client can send a megabyte as a model id."""
_NEEDS_QUOTES = re.compile(r'[\s"=\x00-\x1f\x7f-\x9f\u2028\u2029]')


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD:
        return value[:MAX_FIELD] + "…"
    return value


def _text_value(value: Any) -> str:
    if value is None or value.__class__ in (int, float, bool):
        return str(value)
    text = str(_bounded(str(value)))
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)  # quoted, with every control character escaped
    return text


class StructuredFormatter(logging.Formatter):
    """Formats a record and its ``extra`` fields as one text or JSON line."""

    def __init__(self, fmt: LogFormat = "text") -> None:
        super().__init__()
        self.fmt = fmt
        self._stamp = (-1, "")

    def _second(self, second: int) -> str:
        """``second`` as UTC ISO 8601, formatted once per second (a busy gateway logs often)."""
        if self._stamp[0] != second:
            self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return self._stamp[1]

    def format(self, record: logging.LogRecord) -> str:
        """One line: time, level, logger, message, then the fields."""
        fields = _fields(record)
        if record.exc_info and record.exc_info[1] is not None:
            fields.setdefault("error", repr(record.exc_info[1]))
            fields["traceback"] = self.formatException(record.exc_info)
        stamp = f"{self._second(int(record.created))}.{int(record.msecs):03d}Z"
        if self.fmt == "json":
            line = {
                "ts": stamp,
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": record.getMessage(),
                **fields,
            }
            return json.dumps(line, default=str)
        traceback = fields.pop("traceback", None)
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        text = f"{text} {pairs}" if pairs else text
        return f"{text}\n{traceback}" if traceback else text


def configure_logging(fmt: LogFormat = "text", level: str | int = "INFO") -> None:
    """Send every log record to stderr through :class:`StructuredFormatter`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
