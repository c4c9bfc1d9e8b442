"""The host's GPUs as NVML reports them: the one module that imports NVML.

A host without an NVIDIA driver, or without GPUs, has no devices: that is a
normal answer (the neuron then runs CPU engines), never an error.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Protocol

from cortex_core.neuron_api import Device

__all__ = ["Nvml", "read_devices"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_warned = False


class Nvml(Protocol):
    """The part of ``pynvml`` this module calls; tests pass recorded values instead.

    The method names are NVML's own.
    """

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...


def _text(value: str | bytes) -> str:
    # Older NVML bindings answer bytes, newer ones str.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _load_nvml() -> Nvml | None:
    try:
        import pynvml  # the only NVML import in the neuron
    except ImportError:
        return None
    nvml: Nvml = pynvml
    return nvml


def read_devices(nvml: Nvml | None = None) -> list[Device]:
    """Every GPU NVML sees, with memory in bytes and utilization in percent; ``[]`` if none."""
    global _warned
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None:
        return []
    with _lock:
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            if not _warned:
                log.info("no NVIDIA GPUs: %s; models run on the CPU engine", exc)
                _warned = True
            return []
        try:
            return [_device(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            log.warning("reading GPUs through NVML failed", extra={"error": str(exc)})
            return []
        finally:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()


def _device(nvml: Nvml, index: int) -> Device:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:
        # Some boards (and MIG slices) do not report utilization.
        utilization = 0.0
    return Device(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        memory_total=int(memory.total),
        memory_used=int(memory.used),
        memory_free=int(memory.free),
        utilization=utilization,
    )
