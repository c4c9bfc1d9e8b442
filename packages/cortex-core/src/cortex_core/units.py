"""Units and named constraints shared by the wire types, the configs and both daemons."""

from __future__ import annotations

from typing import Annotated, Final

from msgspec import Meta

__all__ = [
    "GIB",
    "Fraction",
    "NonNegInt",
    "NonNegSeconds",
    "Port",
    "PositiveGiB",
    "PositiveInt",
    "PositiveSeconds",
]

GIB: Final = 1 << 30
"""Bytes in a GiB: memory figures travel in bytes and are configured in GiB."""

Port = Annotated[int, Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PositiveSeconds = Annotated[float, Meta(gt=0)]
NonNegSeconds = Annotated[float, Meta(ge=0)]
PositiveGiB = Annotated[float, Meta(gt=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
