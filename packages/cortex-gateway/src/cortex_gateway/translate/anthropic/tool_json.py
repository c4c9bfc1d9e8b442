"""Tool-call arguments as they stream: kept a valid prefix of one JSON object, repaired.

Only text that keeps the arguments a prefix of one JSON object is passed on,
raw control characters inside strings are escaped and unpaired surrogate
escapes become U+FFFD. A whole response whose arguments are not a JSON object
gets ``input: {}``; a stream cannot take back what it already sent, so a
client keeps the well-formed part that came before the first bad character.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["ObjectScanner", "parse_tool_arguments"]

_START, _OBJ_FIRST, _OBJ_KEY, _COLON, _VALUE, _ARR_FIRST, _AFTER = range(7)
_STRING, _ESCAPE, _UNICODE, _HIGH, _NUMBER, _LITERAL, _END = range(7, 14)
_STRUCTURE = frozenset({_START, _OBJ_FIRST, _OBJ_KEY, _COLON, _VALUE, _ARR_FIRST, _AFTER})
"""States between values, where whitespace is skipped."""
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_NUMBER_ENDS = frozenset({_N_ZERO, _N_INT, _N_FRAC, _N_EXP})
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_CONTROL_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_REPLACEMENT = "\\ufffd"
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}


def _number_step(state: int, ch: str) -> int | None:
    digit = "0" <= ch <= "9"
    if state == _N_SIGN:
        return _N_ZERO if ch == "0" else _N_INT if digit else None
    if state in (_N_ZERO, _N_INT):
        if digit:
            return _N_INT if state == _N_INT else None
        return _N_DOT if ch == "." else _N_E if ch in ("e", "E") else None
    if state in (_N_DOT, _N_FRAC):
        if digit:
            return _N_FRAC
        return _N_E if state == _N_FRAC and ch in ("e", "E") else None
    if state == _N_E:
        return _N_ESIGN if ch in ("+", "-") else _N_EXP if digit else None
    return _N_EXP if digit else None


class ObjectScanner:
    """Follows text, piece by piece, while it stays a prefix of one JSON object.

    :meth:`feed` answers the part of each piece that may be passed on, with raw
    control characters in strings escaped and unpaired surrogate escapes
    replaced; an escape sequence is held back until it is whole. Leading
    whitespace and anything after the object's closing brace are dropped; once
    the text breaks the grammar, nothing more is passed on.
    """

    def __init__(self) -> None:
        self._state = _START
        self._stack: list[str] = []
        self._in_key = False
        self._held = ""
        self._high = ""
        self._number = _N_SIGN
        self._literal = ""
        self.broken = False

    @property
    def complete(self) -> bool:
        """Whether one whole JSON object has been read."""
        return self._state == _END

    def feed(self, text: str) -> str:
        """The part of ``text`` that keeps what was passed on a valid, repaired JSON prefix."""
        out: list[str] = []
        self._scan(text, out)
        return "".join(out)

    def _scan(self, text: str, out: list[str]) -> None:
        i, n = 0, len(text)
        while i < n and not self.broken and self._state != _END:
            if self._state == _STRING:
                run = _STRING_RUN.match(text, i)
                if run is not None:
                    out.append(run.group())
                    i = run.end()
                    continue
                ch = text[i]
                i += 1
                if ch == '"':
                    out.append(ch)
                    if self._in_key:
                        self._state = _COLON
                    else:
                        self._after_value()
                elif ch == "\\":
                    self._held = ch
                    self._state = _ESCAPE
                else:
                    out.append(_CONTROL_ESCAPES.get(ch) or f"\\u{ord(ch):04x}")
                continue
            if self._step(text[i], out):
                i += 1

    def _after_value(self) -> None:
        self._state = _AFTER if self._stack else _END

    def _open(self, ch: str, out: list[str]) -> None:
        out.append(ch)
        self._stack.append(ch)
        self._state = _OBJ_FIRST if ch == "{" else _ARR_FIRST

    def _close(self, ch: str, out: list[str]) -> None:
        out.append(ch)
        self._stack.pop()
        self._after_value()

    def _step(self, ch: str, out: list[str]) -> bool:
        """Take one character outside a string run; False when it must be read again."""
        state = self._state
        if state in _STRUCTURE:
            if ch in " \t\n\r":
                if state != _START:
                    out.append(ch)
            else:
                self._structure(ch, out)
            return True
        if state == _NUMBER:
            return self._number_char(ch, out)
        if state == _LITERAL:
            self._literal_char(ch, out)
            return True
        return self._escape(ch, out)

    def _structure(self, ch: str, out: list[str]) -> None:
        """A character between values: braces, brackets, keys, colons, commas."""
        state = self._state
        if state == _START:
            if ch == "{":
                self._open(ch, out)
            else:
                self.broken = True
        elif state in (_OBJ_FIRST, _OBJ_KEY):
            if ch == '"':
                out.append(ch)
                self._in_key = True
                self._state = _STRING
            elif ch == "}" and state == _OBJ_FIRST:
                self._close(ch, out)
            else:
                self.broken = True
        elif state == _COLON:
            if ch == ":":
                out.append(ch)
                self._state = _VALUE
            else:
                self.broken = True
        elif state in (_VALUE, _ARR_FIRST):
            self._value(ch, out)
        else:
            self._after(ch, out)

    def _after(self, ch: str, out: list[str]) -> None:
        """A character after a value: a comma, or the end of its object or array."""
        top = self._stack[-1]
        if ch == ",":
            out.append(ch)
            self._state = _OBJ_KEY if top == "{" else _VALUE
        elif (ch == "}" and top == "{") or (ch == "]" and top == "["):
            self._close(ch, out)
        else:
            self.broken = True

    def _number_char(self, ch: str, out: list[str]) -> bool:
        """A character of a number; False when it ends the number (it is read again)."""
        following = _number_step(self._number, ch)
        if following is not None:
            out.append(ch)
            self._number = following
        elif self._number in _NUMBER_ENDS:
            self._after_value()
            return False
        else:
            self.broken = True
        return True

    def _literal_char(self, ch: str, out: list[str]) -> None:
        """A character of ``true``, ``false`` or ``null``."""
        if ch == self._literal[0]:
            out.append(ch)
            self._literal = self._literal[1:]
            if not self._literal:
                self._after_value()
        else:
            self.broken = True

    def _value(self, ch: str, out: list[str]) -> None:
        if ch == "]" and self._state == _ARR_FIRST:
            self._close(ch, out)
        elif ch in ("{", "["):
            self._open(ch, out)
        elif ch == '"':
            out.append(ch)
            self._in_key = False
            self._state = _STRING
        elif ch == "-" or "0" <= ch <= "9":
            out.append(ch)
            self._number = _N_SIGN if ch == "-" else _N_ZERO if ch == "0" else _N_INT
            self._state = _NUMBER
        elif ch in _LITERALS:
            out.append(ch)
            self._literal = _LITERALS[ch]
            self._state = _LITERAL
        else:
            self.broken = True

    def _escape(self, ch: str, out: list[str]) -> bool:
        """Escape sequences, held back until whole; a bad one keeps its backslash as text."""
        state = self._state
        if state == _HIGH:  # a high surrogate escape waits for "\uDC00".."\uDFFF"
            if ch == "\\":
                self._held = ch
                self._state = _ESCAPE
                return True
            self._drop_high(out)
            self._state = _STRING
            return False
        if state == _ESCAPE:
            if ch == "u":
                self._held += ch
                self._state = _UNICODE
                return True
            self._drop_high(out)
            self._state = _STRING
            if ch in _SIMPLE_ESCAPES:
                out.append(self._held + ch)
                self._held = ""
                return True
            out.append("\\\\")
            self._held = ""
            return False
        # _UNICODE
        if ch not in _HEX:
            self._drop_high(out)
            out.append("\\\\" + self._held[1:])
            self._held = ""
            self._state = _STRING
            return False
        self._held += ch
        if len(self._held) == 6:
            self._unicode_done(out)
        return True

    def _drop_high(self, out: list[str]) -> None:
        if self._high:
            out.append(_REPLACEMENT)
            self._high = ""

    def _unicode_done(self, out: list[str]) -> None:
        code = int(self._held[2:], 16)
        held, self._held = self._held, ""
        self._state = _STRING
        if self._high and 0xDC00 <= code <= 0xDFFF:
            out.append(self._high + held)
            self._high = ""
            return
        self._drop_high(out)
        if 0xD800 <= code <= 0xDBFF:
            self._high = held
            self._state = _HIGH
        elif 0xDC00 <= code <= 0xDFFF:
            out.append(_REPLACEMENT)
        else:
            out.append(held)


def parse_tool_arguments(arguments: str) -> dict[str, Any]:
    """The JSON object ``arguments`` holds (repaired as a stream would be), else ``{}``."""
    scanner = ObjectScanner()
    text = scanner.feed(arguments)
    if not scanner.complete:
        return {}
    try:
        value = json.loads(text)
    except ValueError:  # pragma: no cover - the scanner passed it
        return {}
    return value if isinstance(value, dict) else {}
