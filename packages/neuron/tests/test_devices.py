"""Reading the host's GPUs through NVML, replayed from a recorded multi-GPU host."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec
import pytest

from cortex_core.neuron_api import Device, DevicesResponse
from neuron.devices import Nvml, read_devices


class RecordedGpu(NamedTuple):
    """What NVML answered for one GPU."""

    name: str
    uuid: str
    total: int
    used: int
    free: int
    utilization: int | None
    """None: the board answers NVML_ERROR_NOT_SUPPORTED."""


# nvidia-smi on a workstation with two RTX 4090s (one busy serving) and an RTX A4000.
HOST = [
    RecordedGpu(
        "NVIDIA GeForce RTX 4090",
        "GPU-9f3b2c1e-4d7a-8b6e-1f0a-2c3d4e5f6a7b",
        25_757_220_864,
        1_214_513_152,
        24_542_707_712,
        3,
    ),
    RecordedGpu(
        "NVIDIA GeForce RTX 4090",
        "GPU-1a2b3c4d-5e6f-7a8b-9c0d-e1f2a3b4c5d6",
        25_757_220_864,
        19_327_352_832,
        6_429_868_032,
        97,
    ),
    RecordedGpu(
        "NVIDIA RTX A4000",
        "GPU-7e8f9a0b-1c2d-3e4f-5a6b-7c8d9e0f1a2b",
        17_171_480_576,
        285_212_672,
        16_886_267_904,
        0,
    ),
]

EXPECTED = [
    Device(
        index=0,
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-9f3b2c1e-4d7a-8b6e-1f0a-2c3d4e5f6a7b",
        memory_total=25_757_220_864,
        memory_used=1_214_513_152,
        memory_free=24_542_707_712,
        utilization=3.0,
    ),
    Device(
        index=1,
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-1a2b3c4d-5e6f-7a8b-9c0d-e1f2a3b4c5d6",
        memory_total=25_757_220_864,
        memory_used=19_327_352_832,
        memory_free=6_429_868_032,
        utilization=97.0,
    ),
    Device(
        index=2,
        name="NVIDIA RTX A4000",
        uuid="GPU-7e8f9a0b-1c2d-3e4f-5a6b-7c8d9e0f1a2b",
        memory_total=17_171_480_576,
        memory_used=285_212_672,
        memory_free=16_886_267_904,
        utilization=0.0,
    ),
]


class FakeNvmlError(Exception):
    """pynvml's NVMLError: carries an NVML return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


class NotSupported(FakeNvmlError):
    """pynvml's NVMLError_NotSupported (NVML_ERROR_NOT_SUPPORTED = 3)."""

    def __init__(self) -> None:
        super().__init__(3)


class Memory(NamedTuple):
    """nvmlDeviceGetMemoryInfo's c_nvmlMemory_t."""

    total: int
    free: int
    used: int


class Utilization(NamedTuple):
    """nvmlDeviceGetUtilizationRates's c_nvmlUtilization_t."""

    gpu: int
    memory: int


@dataclass
class FakeNvml:
    """Replays recorded NVML answers; ``as_bytes`` mimics older bindings that return bytes."""

    gpus: list[RecordedGpu]
    as_bytes: bool = False
    init_error: int | None = None
    """An NVML return code nvmlInit fails with (12: NVML_ERROR_LIBRARY_NOT_FOUND)."""
    fail_memory_of: int | None = None
    shutdown_error: bool = False
    calls: list[str] = field(default_factory=list)
    NVMLError: type[Exception] = FakeNvmlError

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")
        if self.shutdown_error:
            raise FakeNvmlError(1)  # NVML_ERROR_UNINITIALIZED

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise FakeNvmlError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return index

    def _text(self, value: str) -> str | bytes:
        return value.encode() if self.as_bytes else value

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self._text(self.gpus[handle].name)

    def nvmlDeviceGetUUID(self, handle: int) -> str | bytes:
        return self._text(self.gpus[handle].uuid)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Memory:
        if handle == self.fail_memory_of:
            raise FakeNvmlError(15)  # NVML_ERROR_GPU_IS_LOST
        gpu = self.gpus[handle]
        return Memory(gpu.total, gpu.free, gpu.used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Utilization:
        percent = self.gpus[handle].utilization
        if percent is None:
            raise NotSupported()
        return Utilization(percent, percent // 2)


def test_fake_satisfies_the_nvml_protocol() -> None:
    """The fake offers every NVML call read_devices makes (checked by mypy)."""
    nvml: Nvml = FakeNvml(HOST)
    assert nvml.nvmlDeviceGetCount() == 3


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str-names", "bytes-names"])
def test_reads_every_gpu_of_a_multi_gpu_host(as_bytes: bool) -> None:
    """Each GPU is read with its name, uuid, memory in bytes and utilization in percent."""
    nvml = FakeNvml(HOST, as_bytes=as_bytes)
    devices = read_devices(nvml)
    assert devices == EXPECTED
    assert all(isinstance(d.name, str) and isinstance(d.uuid, str) for d in devices)
    assert nvml.calls == ["init", "shutdown"]


def test_no_driver_is_no_devices() -> None:
    """A failing nvmlInit (no driver, no library) is the normal answer: no GPUs."""
    nvml = FakeNvml(HOST, init_error=12)
    assert read_devices(nvml) == []
    assert read_devices(nvml) == []  # and again, quietly
    assert nvml.calls == ["init", "init"]


def test_a_host_with_a_driver_but_no_gpus_has_no_devices() -> None:
    """NVML reporting zero GPUs answers an empty list."""
    nvml = FakeNvml([])
    assert read_devices(nvml) == []
    assert nvml.calls == ["init", "shutdown"]


def test_utilization_not_supported_reads_as_zero() -> None:
    """A board that cannot report utilization shows 0.0 and every other GPU is still read."""
    host = [HOST[0], HOST[1]._replace(utilization=None), HOST[2]]
    nvml = FakeNvml(host)
    devices = read_devices(nvml)
    assert devices == [
        EXPECTED[0],
        msgspec.structs.replace(EXPECTED[1], utilization=0.0),
        EXPECTED[2],
    ]
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_failing_midway_still_shuts_down() -> None:
    """An NVML error while reading a GPU does not raise and NVML is still shut down."""
    nvml = FakeNvml(HOST, fail_memory_of=1)
    assert read_devices(nvml) == []
    assert nvml.calls == ["init", "shutdown"]


def test_shutdown_error_is_ignored() -> None:
    """A failing nvmlShutdown does not lose the devices already read."""
    nvml = FakeNvml(HOST, shutdown_error=True)
    assert read_devices(nvml) == EXPECTED
    assert nvml.calls == ["init", "shutdown"]


def test_devices_encode_as_the_devices_response() -> None:
    """The read devices are the wire form GET /devices answers."""
    response = DevicesResponse(devices=read_devices(FakeNvml(HOST, as_bytes=True)))
    body = msgspec.json.decode(msgspec.json.encode(response))
    assert body["devices"][2] == {
        "index": 2,
        "name": "NVIDIA RTX A4000",
        "uuid": "GPU-7e8f9a0b-1c2d-3e4f-5a6b-7c8d9e0f1a2b",
        "memory_total": 17_171_480_576,
        "memory_used": 285_212_672,
        "memory_free": 16_886_267_904,
        "utilization": 0.0,
    }


def test_real_nvml_without_a_driver_answers_no_devices() -> None:
    """With the real pynvml, a host without an NVIDIA driver reads as [] without raising."""
    devices = read_devices()
    assert all(isinstance(d, Device) for d in devices)
    if not Path("/proc/driver/nvidia").exists():
        assert devices == []
    else:  # a GPU host: whatever is there, read sensibly
        assert all(d.memory_total > 0 and d.uuid.startswith(("GPU-", "MIG-")) for d in devices)
