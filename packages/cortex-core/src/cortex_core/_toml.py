"""Reading TOML configuration files into typed values, with errors that name file and key."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

T = TypeVar("T")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConfigError(Exception):
    """A configuration file that cannot be used: which file, which key, what is wrong."""

    def __init__(self, file: str | Path, key: str | None, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {problem}")


MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""The largest configuration file read (``models.toml`` included): past it, a ConfigError."""


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, raising :class:`ConfigError` for a missing, too large or malformed one."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(path, None, f"larger than {MAX_CONFIG_BYTES >> 20} MiB")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None


_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
    "null": "nothing",
}


def _words(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        inner = match.group(1)
        parts = [_TYPE_WORDS.get(p.strip(), p.strip()) for p in inner.split("|")]
        return " or ".join(parts)

    return re.sub(r"`([^`]*)`", one, text)


def _key_of(path: str) -> str:
    # msgspec paths look like `$.neurons[1].name`; operators think in TOML keys.
    return path.removeprefix("$").removeprefix(".").replace("[...]", "")


def _type_at(root: Any, path: str) -> msgspec.inspect.Type | None:
    """The declared type at a msgspec error path such as ``$.neurons[0].name``."""
    node: msgspec.inspect.Type = msgspec.inspect.type_info(root)
    for segment in re.findall(r"\.([^.\[]+)|\[([^\]]*)\]", path):
        name = segment[0]
        while isinstance(node, msgspec.inspect.UnionType) and len(node.types) == 2:
            # `X | None`: look through the optional.
            node = next(t for t in node.types if not isinstance(t, msgspec.inspect.NoneType))
        if name and isinstance(node, msgspec.inspect.StructType):
            found = next((f for f in node.fields if f.encode_name == name), None)
            if found is None:
                return None
            node = found.type
        elif not name and isinstance(node, msgspec.inspect.ListType):
            node = node.item_type
        elif not name and isinstance(node, msgspec.inspect.DictType):
            node = node.value_type
        else:
            return None
    return node


def _explain(exc: msgspec.ValidationError, root: Any, prefix: str = "") -> tuple[str, str]:
    message = str(exc)
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        text, path = message, "$`"
    key = _key_of(path.rstrip("`"))
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    if m := re.fullmatch(r"Object contains unknown field `(.+)`", text):
        return (f"{key}.{m.group(1)}" if key else m.group(1)), "unknown key"
    if m := re.fullmatch(r"Object missing required field `(.+)`", text):
        return (f"{key}.{m.group(1)}" if key else m.group(1)), "required key is missing"
    declared = _type_at(root, path.rstrip("`"))
    if isinstance(declared, msgspec.inspect.LiteralType):
        allowed = ", ".join(repr(v) for v in declared.values)
        return key, f"must be one of {allowed}"
    if m := re.fullmatch(r"Expected (.+), got (.+)", text):
        return key, f"expected {_words(m.group(1))}, got {_words(m.group(2))}"
    return key, _words(text[:1].lower() + text[1:])


def convert_section(data: Any, type_: type[T], file: str | Path, prefix: str = "") -> T:
    """Convert parsed TOML ``data`` to ``type_``; errors name ``file`` and the key."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        key, problem = _explain(exc, type_, prefix)
        raise ConfigError(file, key or None, problem) from None


def convert_table(data: Any, value_type: type[T], file: str | Path, prefix: str) -> dict[str, T]:
    """Convert a TOML table of ``value_type`` entry by entry, so errors name the entry's key."""
    if not isinstance(data, dict):
        convert_section(data, dict[str, value_type], file, prefix)  # type: ignore[valid-type]
    return {
        name: convert_section(value, value_type, file, f"{prefix}.{toml_key(name)}")
        for name, value in data.items()
    }


def toml_key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, quoted otherwise."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def parse_hostport(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check the port; raise ``ValueError``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{text!r} has an unclosed '[' around its IPv6 address")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value


def check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '.', '-' and '_', "
            "starting with a letter or digit"
        )
    return value


def check_value(file: str | Path, key: str, check: Callable[[Any], object], value: Any) -> None:
    """Run ``check`` on ``value``, turning its ``ValueError`` into a :class:`ConfigError`."""
    try:
        check(value)
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from None
