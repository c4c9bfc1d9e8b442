"""Model ids: the concrete ``org/name`` and the source-qualified ``source:org/name``.

The concrete id names a model everywhere (catalogue, inference bodies, the
handle a neuron loads it under); the qualified form also says which of a
neuron's sources to fetch it from. An empty source (``:org/name``) is no source.
"""

from __future__ import annotations

import re
from typing import Self

import msgspec

__all__ = ["InvalidModelId", "ModelId", "parse_model_id", "qualify", "validate_source_name"]

# Hugging Face's repo-name alphabet: letters, digits, '-', '_', '.'; no leading
# or trailing separator, so paths built from ids stay inside their directory.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PART_RE = re.compile(_PART)
_SOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MAX_LEN = 200


class InvalidModelId(ValueError):
    """A model id that does not have the ``[source:]org/name`` form."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid model id {text!r}: {reason}")
        self.text = text
        self.reason = reason


class ModelId(msgspec.Struct, frozen=True):
    """A parsed model id; ``source`` is ``None`` when the id names none."""

    org: str
    name: str
    source: str | None = None

    @property
    def concrete(self) -> str:
        """The ``org/name`` form every component uses as the model's handle."""
        return f"{self.org}/{self.name}"

    @property
    def qualified(self) -> str:
        """The ``source:org/name`` form, or the concrete id when there is no source."""
        return f"{self.source}:{self.concrete}" if self.source else self.concrete

    def with_source(self, source: str | None) -> Self:
        """The same model from ``source`` (``None`` or ``""``: no source)."""
        return type(self)(self.org, self.name, source or None)

    def __str__(self) -> str:
        return self.qualified


def validate_source_name(source: str) -> str:
    """Return ``source`` if it is a valid source name, else raise ``ValueError``."""
    if not _SOURCE_RE.fullmatch(source):
        raise ValueError(
            f"invalid source name {source!r}: use letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return source


def parse_model_id(text: str) -> ModelId:
    """Parse ``org/name`` or ``source:org/name``; raise :class:`InvalidModelId` otherwise."""
    if not text:
        raise InvalidModelId(text, "empty")
    if len(text) > _MAX_LEN:
        raise InvalidModelId(text, f"longer than {_MAX_LEN} characters")
    if text != text.strip():
        raise InvalidModelId(text, "leading or trailing whitespace")
    if text.count(":") > 1:
        raise InvalidModelId(text, "more than one ':' (expected source:org/name)")
    source, _, rest = text.rpartition(":")
    if source and not _SOURCE_RE.fullmatch(source):
        raise InvalidModelId(text, f"source {source!r} may hold only letters, digits, '-' and '_'")
    if "/" not in rest:
        raise InvalidModelId(text, "missing '/' between organisation and name (expected org/name)")
    if rest.count("/") > 1:
        raise InvalidModelId(text, "more than one '/' (expected org/name)")
    org, _, name = rest.partition("/")
    for label, part in (("organisation", org), ("name", name)):
        if not part:
            raise InvalidModelId(text, f"empty {label}")
        if not _PART_RE.fullmatch(part) or ".." in part:
            raise InvalidModelId(
                text,
                f"{label} {part!r} may hold only letters, digits, '-', '_' and '.', "
                "and must start and end with a letter or digit",
            )
    return ModelId(org=org, name=name, source=source or None)


def qualify(concrete_id: str, source: str | None) -> str:
    """The id a neuron is asked to load: ``source:org/name``, or the id as is without a source."""
    return parse_model_id(concrete_id).with_source(source).qualified
