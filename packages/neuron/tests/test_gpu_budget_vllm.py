"""The gpu_memory_utilization preflight computes passes vLLM's own start-up check.

vLLM (0.32) refuses to start a GPU worker whose device has less free memory,
measured after its CUDA context exists, than gpu_memory_utilization times the
device's total (``request_memory`` in ``vllm/v1/worker/utils.py``). That
function ships in the CPU build too: every plan preflight accepts below is
run through it, device by device, as each worker would.
"""

from __future__ import annotations

from typing import Any

import pytest

from cortex_core.neuron_api import Device
from cortex_core.units import GIB
from neuron.errors import NeuronError
from neuron.preflight import CUDA_CONTEXT_BYTES, plan_load

pytestmark = [
    pytest.mark.slow,  # imports vLLM
    # torch, imported by vLLM, deprecates its own APIs at import time: not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_size": 2048,
    "max_position_embeddings": 40960,
    "torch_dtype": "bfloat16",
}


def gpu(index: int, total_gib: float, used_gib: float) -> Device:
    """A GPU as NVML reports it."""
    total, used = int(total_gib * GIB), int(used_gib * GIB)
    return Device(index=index, memory_total=total, memory_used=used, memory_free=total - used)


def passes_vllms_check(fraction: float, device: Device) -> bool:
    """Whether vLLM's own request_memory accepts ``fraction`` on ``device``."""
    from vllm.config import CacheConfig
    from vllm.utils.mem_utils import MemorySnapshot
    from vllm.v1.worker.utils import request_memory

    snapshot = MemorySnapshot(device="cpu", auto_measure=False)
    snapshot.total_memory = device.memory_total
    snapshot.free_memory = device.memory_free - CUDA_CONTEXT_BYTES  # the context is up
    try:
        request_memory(snapshot, CacheConfig(gpu_memory_utilization=fraction))
    except ValueError:
        return False
    return True


CASES = [
    pytest.param([gpu(0, 24, 0)], 8.0, {}, id="an empty 24 GiB GPU"),
    pytest.param([gpu(0, 24, 14)], 4.0, {}, id="a 24 GiB GPU already holding a model"),
    pytest.param([gpu(0, 80, 61)], 12.0, {}, id="an 80 GiB GPU three quarters full"),
    pytest.param([gpu(0, 48, 40), gpu(1, 48, 3)], 3.0, {}, id="the freer of two GPUs"),
    pytest.param(
        [gpu(0, 80, 60), gpu(1, 24, 4)],
        24.0,
        {"tensor_parallel_size": 2},
        id="tensor parallel over an 80 and a 24 GiB GPU",
    ),
    pytest.param(
        [gpu(0, 24, 10), gpu(1, 24, 11)],
        16.0,
        {"tensor_parallel_size": 2},
        id="tensor parallel over two half-full GPUs",
    ),
    pytest.param([gpu(0, 24, 23)], 4.0, {}, id="a full GPU: refused by preflight"),
]


@pytest.mark.parametrize(("devices", "weights_gib", "options"), CASES)
def test_every_plan_preflight_accepts_starts(
    devices: list[Device], weights_gib: float, options: dict[str, Any]
) -> None:
    """For every accepted plan, each chosen GPU passes vLLM's check with the computed fraction."""
    try:
        plan = plan_load(CONFIG, int(weights_gib * GIB), options, devices, None, 64 * GIB)
    except NeuronError as exc:
        refused: NeuronError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.code == "insufficient_memory"
        return
    fraction = plan.options["gpu_memory_utilization"]
    chosen = [d for d in devices if d.index in plan.devices]
    assert chosen
    for device in chosen:
        assert passes_vllms_check(fraction, device), (device, fraction)


def test_vllms_default_fails_on_a_shared_gpu() -> None:
    """The check is real: vLLM's default of 0.9 fails where the computed fraction passes."""
    shared = gpu(0, 24, 14)
    plan = plan_load(CONFIG, 4 * GIB, {}, [shared], None, 64 * GIB)
    assert not passes_vllms_check(0.9, shared)
    assert passes_vllms_check(plan.options["gpu_memory_utilization"], shared)


def test_a_plan_that_exactly_fits_starts() -> None:
    """Free memory exactly what preflight asks for: the rounding still passes."""
    probe = plan_load(CONFIG, 6 * GIB, {}, [gpu(0, 24, 0)], None, 64 * GIB)
    per_device = probe.needed_bytes
    total = 24 * GIB
    exact = Device(
        index=0, memory_total=total, memory_used=total - per_device, memory_free=per_device
    )
    plan = plan_load(CONFIG, 6 * GIB, {}, [exact], None, 64 * GIB)
    assert passes_vllms_check(plan.options["gpu_memory_utilization"], exact)
