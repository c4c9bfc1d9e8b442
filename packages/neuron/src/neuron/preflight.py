"""Preflight: pure decisions made before any device memory is touched.

Given a model's ``config.json``, its weight size, the engine options and the
host's free memory, decide whether the model can run here, on which devices,
with what context length and KV cache, or say exactly why not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortex_core.neuron_api import Device
from cortex_core.units import GIB
from neuron.errors import NeuronError

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "DEFAULT_MAX_MODEL_LEN",
    "Plan",
    "check_architecture",
    "gpu_memory_utilization",
    "plan_load",
]

MIB = 1 << 20
DEFAULT_MAX_MODEL_LEN = 8192
"""Context length when neither the load nor the model says less; the model's own limit
(``max_position_embeddings``) is often far larger than one host should reserve KV cache for."""
KV_SEQUENCES = 4
"""The default KV cache holds this many full-length sequences at once."""
MIN_KV_BYTES = 64 * MIB
GPU_OVERHEAD_BYTES = 1 * GIB
"""CUDA context, activations and graphs per device, beyond weights and KV cache."""
CUDA_CONTEXT_BYTES = 512 * MIB
"""The part of ``GPU_OVERHEAD_BYTES`` a worker's CUDA context takes before vLLM measures
free memory: vLLM's start-up check sees that much less free than NVML did."""
CPU_OVERHEAD_BYTES = 3 * GIB // 2
"""vLLM's EngineCore and worker processes on the CPU, beyond weights and KV cache."""

_DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}


@dataclass(frozen=True, slots=True)
class Plan:
    """How a model will be loaded: where, with which options, needing how much memory."""

    devices: tuple[int, ...]
    """GPU indices; empty for the CPU engine."""
    options: dict[str, Any]
    """Engine options with the neuron's choices filled in (context length, KV cache size)."""
    max_model_len: int
    weights_bytes: int
    kv_cache_bytes: int
    needed_bytes: int
    """Weights, KV cache and overhead across all the devices (or host memory on the CPU)."""


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    # Multimodal configs keep the language model's shape under `text_config`.
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) else config


def check_architecture(config: Mapping[str, Any], supported: frozenset[str] | None) -> str:
    """The model's architecture, if the engine supports it; else ``unsupported_model``."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        raise NeuronError("unsupported_model", "config.json names no architectures")
    if supported is not None:
        known = [a for a in architectures if a in supported]
        if not known:
            raise NeuronError(
                "unsupported_model",
                f"architecture {', '.join(map(str, architectures))} is not one this engine runs",
                {"architectures": architectures},
            )
        return str(known[0])
    return str(architectures[0])


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def kv_bytes_per_token(config: Mapping[str, Any], options: Mapping[str, Any]) -> int:
    """Bytes of KV cache one token takes across all layers (keys and values)."""
    text = _text_config(config)
    layers = _int(text, "num_hidden_layers", "n_layer", "num_layers") or 32
    heads = _int(text, "num_attention_heads", "n_head") or 32
    kv_heads = _int(text, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _int(text, "head_dim") or (_int(text, "hidden_size", "n_embd") or 4096) // heads
    kv_dtype = str(options.get("kv_cache_dtype", "auto"))
    if kv_dtype == "auto":
        kv_dtype = str(options.get("dtype", "auto"))
    if kv_dtype == "auto":
        kv_dtype = str(
            text.get("torch_dtype")
            or config.get("torch_dtype")
            or config.get("dtype")
            or "bfloat16"
        )
    return 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(kv_dtype, 2)


def _max_model_len(config: Mapping[str, Any], options: Mapping[str, Any]) -> int:
    asked = options.get("max_model_len")
    limit = _int(_text_config(config), "max_position_embeddings", "n_positions", "seq_length")
    if isinstance(asked, int) and asked > 0:
        if limit is not None and asked > limit:
            raise NeuronError(
                "invalid_option",
                f"max_model_len {asked} exceeds the model's limit of {limit} tokens",
                {"option": "max_model_len", "limit": limit},
            )
        return asked
    return min(limit or DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_MODEL_LEN)


def plan_load(
    config: Mapping[str, Any],
    weights_bytes: int,
    options: Mapping[str, Any],
    devices: Sequence[Device],
    requested: Sequence[int] | None,
    host_free_bytes: int,
) -> Plan:
    """Choose devices, context length and KV cache size, or raise a ``NeuronError``.

    With no GPUs the model runs on the CPU and must fit the host's free memory.
    On GPUs the model is split over ``tensor_parallel_size`` devices (or the
    requested ones), each of which must have its share free; without a request,
    the devices with the most free memory are chosen.
    """
    options = dict(options)
    max_model_len = _max_model_len(config, options)
    options["max_model_len"] = max_model_len
    kv = kv_bytes_per_token(config, options) * max_model_len * KV_SEQUENCES
    kv = max(kv, MIN_KV_BYTES)
    # vLLM would otherwise take a fraction of the whole device (or, on the CPU,
    # refuse to start): size the cache for this model so several fit one host.
    size_kv = "kv_cache_memory_bytes" not in options and "gpu_memory_utilization" not in options
    if isinstance(options.get("kv_cache_memory_bytes"), int):
        kv = options["kv_cache_memory_bytes"]

    if not devices:
        if requested:
            raise NeuronError(
                "invalid_request",
                f"devices {list(requested)} requested, but this host has no GPUs",
                {"devices": []},
            )
        needed = weights_bytes + kv + CPU_OVERHEAD_BYTES
        if needed > host_free_bytes:
            raise NeuronError(
                "insufficient_memory",
                f"needs {needed / GIB:.1f} GiB of host memory;"
                f" {host_free_bytes / GIB:.1f} GiB free",
                {"needed_bytes": needed, "devices": [], "host_free_bytes": host_free_bytes},
            )
        if size_kv:
            options["kv_cache_memory_bytes"] = kv
        return Plan((), options, max_model_len, weights_bytes, kv, needed)

    by_index = {d.index: d for d in devices}
    tp = options.get("tensor_parallel_size")
    if requested:
        requested = list(dict.fromkeys(requested))
        missing = [i for i in requested if i not in by_index]
        if missing:
            raise NeuronError(
                "invalid_request",
                f"no GPU {', '.join(map(str, missing))} on this host"
                f" (GPUs: {', '.join(map(str, sorted(by_index)))})",
                {"devices": sorted(by_index)},
            )
        if tp is None and len(requested) > 1:
            options["tensor_parallel_size"] = tp = len(requested)
        elif isinstance(tp, int) and tp != len(requested):
            raise NeuronError(
                "invalid_request",
                f"{len(requested)} device(s) requested for tensor_parallel_size {tp}",
                {"devices": requested},
            )
        chosen = [by_index[i] for i in dict.fromkeys(requested)]
    else:
        count = tp if isinstance(tp, int) and tp > 0 else 1
        if count > len(devices):
            raise NeuronError(
                "insufficient_memory",
                f"tensor_parallel_size {count} needs {count} GPUs; this host has {len(devices)}",
                {"needed_bytes": 0, "devices": _free(devices)},
            )
        chosen = sorted(devices, key=lambda d: (-d.memory_free, d.index))[:count]
    share = len(chosen)
    if size_kv:
        options["kv_cache_memory_bytes"] = kv // share  # vLLM's figure is per GPU
    per_device = (weights_bytes + kv) // share + GPU_OVERHEAD_BYTES
    needed = per_device * len(chosen)
    if any(d.memory_free < per_device for d in chosen):
        raise NeuronError(
            "insufficient_memory",
            f"needs {per_device / GIB:.1f} GiB on each of {len(chosen)} GPU(s); free: "
            + ", ".join(f"GPU {d.index} {d.memory_free / GIB:.1f} GiB" for d in chosen),
            {"needed_bytes": needed, "devices": _free(chosen)},
        )
    if "gpu_memory_utilization" not in options:
        # vLLM's default (0.9 of the device) fails its start-up check on a GPU that
        # already holds another model: ask for this model's share instead.
        options["gpu_memory_utilization"] = gpu_memory_utilization(per_device, chosen)
    return Plan(
        tuple(sorted(d.index for d in chosen)), options, max_model_len, weights_bytes, kv, needed
    )


def gpu_memory_utilization(per_device: int, chosen: Sequence[Device]) -> float:
    """The ``gpu_memory_utilization`` that lets vLLM start with ``per_device`` bytes on each GPU.

    vLLM refuses to start when a device's free memory, measured once its CUDA
    context exists, is below ``gpu_memory_utilization`` times its total (one
    fraction for every tensor-parallel worker). The fraction asked for is this
    model's share of the largest-share device, never more than the tightest
    device has free, rounded down so the check's own rounding cannot fail it.
    """
    share = max((per_device - CUDA_CONTEXT_BYTES) / d.memory_total for d in chosen)
    room = min((d.memory_free - CUDA_CONTEXT_BYTES) / d.memory_total for d in chosen)
    fraction = math.floor(min(share, room) * 10_000) / 10_000
    return max(fraction, 0.0001)


def _free(devices: Sequence[Device]) -> list[dict[str, int]]:
    return [{"index": d.index, "free_bytes": d.memory_free} for d in devices]
