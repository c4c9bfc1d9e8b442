"""Pretend GPUs for a neuron running scripted engines: memory follows what is loaded.

With ``NEURON_TEST_ENGINE=scripted`` and ``NEURON_TEST_GPUS=24,24`` (GiB per GPU),
``neuron serve`` runs scripted engines on two such GPUs: placement, preflight,
eviction and defragmentation then play out in a real daemon process, with the
memory each model's plan holds counted as used on its devices.
"""

from __future__ import annotations

from cortex_core.neuron_api import Device
from cortex_core.units import GIB
from neuron.registry import Registry

__all__ = ["FakeGpus", "parse_gpus"]


def parse_gpus(text: str) -> list[int]:
    """``"24,12"`` → each GPU's size in bytes."""
    return [int(float(part) * GIB) for part in text.split(",") if part.strip()]


class FakeGpus:
    """GPUs of fixed sizes whose used memory is the sum of the plans loaded on them."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.registry: Registry | None = None

    def bind(self, registry: Registry) -> None:
        """Count memory from ``registry``'s models."""
        self.registry = registry

    def devices(self) -> list[Device]:
        """The GPUs, with memory used by ready (and unloading) models."""
        used = [0] * len(self.sizes)
        if self.registry is not None:
            for entry in self.registry.entries().values():
                plan = entry.plan
                if plan is None or entry.state not in ("ready", "unloading"):
                    continue
                for index in plan.devices:
                    used[index] += plan.needed_bytes // max(len(plan.devices), 1)
        return [
            Device(
                index=i,
                name="Fake GPU",
                uuid=f"GPU-fake-{i}",
                memory_total=size,
                memory_used=used[i],
                memory_free=size - used[i],
                utilization=0.0,
            )
            for i, size in enumerate(self.sizes)
        ]
