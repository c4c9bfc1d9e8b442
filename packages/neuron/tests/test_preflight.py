"""Preflight: where a model runs, with what context and KV cache, or exactly why not."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cortex_core.neuron_api import Device
from cortex_core.units import GIB
from neuron.errors import NeuronError
from neuron.preflight import (
    CPU_OVERHEAD_BYTES,
    CUDA_CONTEXT_BYTES,
    DEFAULT_MAX_MODEL_LEN,
    GPU_OVERHEAD_BYTES,
    KV_SEQUENCES,
    MIN_KV_BYTES,
    check_architecture,
    gpu_memory_utilization,
    kv_bytes_per_token,
    plan_load,
)

# config.json of Qwen/Qwen3-8B and Qwen/Qwen3-1.7B as published (the fields preflight reads).
QWEN3_8B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "torch_dtype": "bfloat16",
}
QWEN3_8B_WEIGHTS = 16_381_470_720  # the five safetensors shards
QWEN3_8B_KV_PER_TOKEN = 2 * 36 * 8 * 128 * 2  # keys and values, layers, kv heads, head_dim, bf16

QWEN3_1_7B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 2048,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "torch_dtype": "bfloat16",
}
QWEN3_1_7B_WEIGHTS = 4_063_621_120
QWEN3_1_7B_KV_PER_TOKEN = 2 * 28 * 8 * 128 * 2

# GET /devices of a host with two RTX 4090s and an RTX 3060 12GB, with a desktop and another
# model already on GPU 0 and a little in use on the others.
HOST_GPUS = [
    Device(
        index=0,
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-3f0c9a52-81d4-4b7e-9c2a-6e5d1f0b7a13",
        memory_total=25_757_220_864,
        memory_used=15_557_001_216,
        memory_free=10_200_219_648,
        utilization=37.0,
    ),
    Device(
        index=1,
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-a81e44c7-2b9f-4d61-8e3a-0c7b95f2d64e",
        memory_total=25_757_220_864,
        memory_used=506_658_816,
        memory_free=25_250_562_048,
        utilization=0.0,
    ),
    Device(
        index=2,
        name="NVIDIA GeForce RTX 3060",
        uuid="GPU-5d27b0e9-6c43-4f18-a2d7-91e8c3b406f5",
        memory_total=12_884_901_888,
        memory_used=436_207_616,
        memory_free=12_448_694_272,
        utilization=2.0,
    ),
]
FREE = {d.index: d.memory_free for d in HOST_GPUS}


def default_kv(kv_per_token: int, max_model_len: int = DEFAULT_MAX_MODEL_LEN) -> int:
    """The KV cache preflight sizes by default for a model and context length."""
    return max(kv_per_token * max_model_len * KV_SEQUENCES, MIN_KV_BYTES)


# --- kv_bytes_per_token ------------------------------------------------------------------


def test_kv_bytes_per_token_of_qwen3_8b() -> None:
    """Keys and values over every layer and KV head at the model's own dtype (bf16)."""
    assert kv_bytes_per_token(QWEN3_8B, {}) == QWEN3_8B_KV_PER_TOKEN == 147_456


def test_fp8_kv_cache_dtype_halves_the_kv_bytes() -> None:
    """An fp8 KV cache takes one byte per element instead of bf16's two."""
    for dtype in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        assert kv_bytes_per_token(QWEN3_8B, {"kv_cache_dtype": dtype}) == QWEN3_8B_KV_PER_TOKEN // 2


def test_kv_dtype_follows_the_engine_dtype_when_auto() -> None:
    """With kv_cache_dtype auto the KV cache takes the engine's dtype option."""
    options = {"kv_cache_dtype": "auto", "dtype": "float32"}
    assert kv_bytes_per_token(QWEN3_8B, options) == QWEN3_8B_KV_PER_TOKEN * 2


def test_kv_bytes_per_token_reads_text_config_of_multimodal_models() -> None:
    """A multimodal config keeps the language model's shape under text_config."""
    nested = {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "text_config": {k: v for k, v in QWEN3_8B.items() if k != "architectures"},
        "vision_config": {"depth": 27, "hidden_size": 1152, "num_heads": 16},
    }
    assert kv_bytes_per_token(nested, {}) == QWEN3_8B_KV_PER_TOKEN


def test_kv_bytes_per_token_derives_head_dim_and_kv_heads() -> None:
    """Without head_dim or num_key_value_heads, hidden_size / heads and full MHA are assumed."""
    config = {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512}
    assert kv_bytes_per_token(config, {"dtype": "float16"}) == 2 * 4 * 8 * 64 * 2


# --- max_model_len -------------------------------------------------------------------------


def test_max_model_len_defaults_to_the_smaller_of_model_limit_and_default() -> None:
    """Default context: min(max_position_embeddings, 8192)."""
    big = plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, [], None, 256 * GIB)
    small_config = {**QWEN3_8B, "max_position_embeddings": 2048}
    small = plan_load(small_config, QWEN3_8B_WEIGHTS, {}, [], None, 256 * GIB)
    unknown_config = {k: v for k, v in QWEN3_8B.items() if k != "max_position_embeddings"}
    unknown = plan_load(unknown_config, QWEN3_8B_WEIGHTS, {}, [], None, 256 * GIB)
    assert big.max_model_len == big.options["max_model_len"] == DEFAULT_MAX_MODEL_LEN == 8192
    assert small.max_model_len == small.options["max_model_len"] == 2048
    assert unknown.max_model_len == DEFAULT_MAX_MODEL_LEN


def test_explicit_max_model_len_is_kept_and_sizes_the_kv_cache() -> None:
    """A max_model_len the model allows is used as given, above the default too."""
    plan = plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {"max_model_len": 32768}, [], None, 256 * GIB)
    assert plan.max_model_len == plan.options["max_model_len"] == 32768
    assert plan.kv_cache_bytes == default_kv(QWEN3_8B_KV_PER_TOKEN, 32768)


def test_max_model_len_above_the_model_limit_is_invalid_option() -> None:
    """Asking for more context than max_position_embeddings is refused with invalid_option."""
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {"max_model_len": 65536}, [], None, 256 * GIB)
    error = caught.value
    assert error.code == "invalid_option"
    assert error.status == 422
    assert error.details == {"option": "max_model_len", "limit": 40960}
    assert "65536" in error.message
    assert "40960" in error.message


# --- CPU plans -----------------------------------------------------------------------------


def test_cpu_plan_fills_in_context_and_kv_cache() -> None:
    """Without GPUs a model that fits host memory runs on the CPU with a sized KV cache."""
    plan = plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {"enforce_eager": True}, [], None, 64 * GIB)
    kv = default_kv(QWEN3_8B_KV_PER_TOKEN)
    assert kv == 4_831_838_208
    assert plan.devices == ()
    assert plan.options == {
        "enforce_eager": True,
        "max_model_len": 8192,
        "kv_cache_memory_bytes": kv,
    }
    assert plan.max_model_len == 8192
    assert plan.weights_bytes == QWEN3_8B_WEIGHTS
    assert plan.kv_cache_bytes == kv
    assert plan.needed_bytes == QWEN3_8B_WEIGHTS + kv + CPU_OVERHEAD_BYTES


def test_plan_does_not_modify_the_callers_options() -> None:
    """The options passed in stay as they were; the plan carries its own copy."""
    options: dict[str, Any] = {"enforce_eager": True}
    plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, options, [], None, 64 * GIB)
    assert options == {"enforce_eager": True}


def test_cpu_plan_that_does_not_fit_is_insufficient_memory() -> None:
    """Too little free host memory is insufficient_memory with the figures in details and text."""
    free = 16 * GIB
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, [], None, free)
    error = caught.value
    needed = QWEN3_8B_WEIGHTS + default_kv(QWEN3_8B_KV_PER_TOKEN) + CPU_OVERHEAD_BYTES
    assert error.code == "insufficient_memory"
    assert error.status == 409
    assert error.details["needed_bytes"] == needed
    assert error.details["host_free_bytes"] == free
    assert error.details["devices"] == []
    assert f"{needed / GIB:.1f} GiB" in error.message
    assert "16.0 GiB free" in error.message


def test_cpu_plan_that_exactly_fits_is_accepted() -> None:
    """Needing exactly the free host memory is enough."""
    needed = QWEN3_8B_WEIGHTS + default_kv(QWEN3_8B_KV_PER_TOKEN) + CPU_OVERHEAD_BYTES
    assert plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, [], None, needed).needed_bytes == needed


def test_tiny_models_get_the_minimum_kv_cache() -> None:
    """A KV cache never shrinks below the floor, however small the model."""
    tiny = {
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 64,
        "max_position_embeddings": 512,
    }
    plan = plan_load(tiny, 1_000_000, {}, [], None, 64 * GIB)
    assert plan.kv_cache_bytes == MIN_KV_BYTES
    assert plan.options["kv_cache_memory_bytes"] == MIN_KV_BYTES


def test_user_kv_cache_memory_bytes_is_kept_and_counted() -> None:
    """A kv_cache_memory_bytes the load gives is neither overridden nor ignored in the sum."""
    options = {"kv_cache_memory_bytes": 2 * GIB}
    plan = plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, options, [], None, 64 * GIB)
    assert plan.options["kv_cache_memory_bytes"] == 2 * GIB
    assert plan.kv_cache_bytes == 2 * GIB
    assert plan.needed_bytes == QWEN3_8B_WEIGHTS + 2 * GIB + CPU_OVERHEAD_BYTES


@pytest.mark.parametrize("devices", [[], HOST_GPUS])
def test_user_gpu_memory_utilization_is_not_overridden(devices: list[Device]) -> None:
    """With gpu_memory_utilization given, no kv_cache_memory_bytes is added next to it."""
    options = {"gpu_memory_utilization": 0.5}
    plan = plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, options, devices, None, 64 * GIB)
    assert plan.options["gpu_memory_utilization"] == 0.5
    assert "kv_cache_memory_bytes" not in plan.options


def test_devices_requested_on_a_cpu_host_are_invalid_request() -> None:
    """Asking for GPUs on a host without any is invalid_request."""
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {}, [], [0], 64 * GIB)
    assert caught.value.code == "invalid_request"
    assert caught.value.status == 400
    assert caught.value.details == {"devices": []}
    assert "no GPUs" in caught.value.message


# --- GPU plans -----------------------------------------------------------------------------


def test_gpu_plan_picks_the_device_with_most_free_memory() -> None:
    """Without a request, one GPU is chosen: the one with the most free memory."""
    plan = plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, HOST_GPUS, None, 8 * GIB)
    kv = default_kv(QWEN3_8B_KV_PER_TOKEN)
    assert plan.devices == (1,)
    assert plan.kv_cache_bytes == kv
    share = QWEN3_8B_WEIGHTS + kv + GPU_OVERHEAD_BYTES
    assert plan.options == {
        "max_model_len": 8192,
        "kv_cache_memory_bytes": kv,
        "gpu_memory_utilization": gpu_memory_utilization(share, [HOST_GPUS[1]]),
    }
    assert plan.needed_bytes == share
    assert "tensor_parallel_size" not in plan.options


def test_gpu_plan_ignores_host_memory() -> None:
    """On GPUs the host's own free memory does not decide the plan."""
    plan = plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, HOST_GPUS, None, 0)
    assert plan.devices == (1,)


def test_gpu_ties_on_free_memory_go_to_the_lower_index() -> None:
    """Among GPUs with equal free memory the lowest index is chosen."""
    twins = [
        Device(
            index=i,
            name="NVIDIA GeForce RTX 4090",
            memory_total=25_757_220_864,
            memory_free=25_250_562_048,
        )
        for i in (3, 1)
    ]
    plan = plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {}, twins, None, 0)
    assert plan.devices == (1,)


def test_tensor_parallel_picks_two_devices_and_splits_kv_per_gpu() -> None:
    """tensor_parallel_size=2 takes the two freest GPUs and gives vLLM a per-GPU KV figure."""
    options = {"tensor_parallel_size": 2}
    plan = plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, options, HOST_GPUS, None, 8 * GIB)
    kv = default_kv(QWEN3_8B_KV_PER_TOKEN)
    per_device = (QWEN3_8B_WEIGHTS + kv) // 2 + GPU_OVERHEAD_BYTES
    assert plan.devices == (1, 2)
    assert plan.options["tensor_parallel_size"] == 2
    assert plan.options["kv_cache_memory_bytes"] == kv // 2
    assert plan.kv_cache_bytes == kv
    assert plan.needed_bytes == 2 * per_device
    assert per_device <= FREE[2]  # the smaller card holds its half


def test_requested_device_is_honoured_over_the_freest() -> None:
    """A requested GPU is used even when another has more free memory."""
    plan = plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {}, HOST_GPUS, [2], 8 * GIB)
    kv = default_kv(QWEN3_1_7B_KV_PER_TOKEN)
    assert plan.devices == (2,)
    assert plan.options["kv_cache_memory_bytes"] == kv
    assert "tensor_parallel_size" not in plan.options
    assert plan.needed_bytes == QWEN3_1_7B_WEIGHTS + kv + GPU_OVERHEAD_BYTES


def test_several_requested_devices_imply_tensor_parallelism() -> None:
    """Requesting two GPUs splits the model over both, KV cache included."""
    plan = plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {}, HOST_GPUS, [2, 0], 8 * GIB)
    kv = default_kv(QWEN3_1_7B_KV_PER_TOKEN)
    assert plan.devices == (0, 2)
    assert plan.options["tensor_parallel_size"] == 2
    assert plan.options["kv_cache_memory_bytes"] == kv // 2
    assert plan.needed_bytes == 2 * ((QWEN3_1_7B_WEIGHTS + kv) // 2 + GPU_OVERHEAD_BYTES)


def test_a_device_requested_twice_is_one_device() -> None:
    """Repeating a GPU in the request does not make a tensor-parallel plan on one GPU."""
    plan = plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {}, HOST_GPUS, [2, 2], 8 * GIB)
    assert plan.devices == (2,)
    assert plan.options.get("tensor_parallel_size", 1) == len(plan.devices)


def test_unknown_requested_device_is_invalid_request_listing_the_gpus() -> None:
    """A GPU index the host lacks is invalid_request naming it and the GPUs there are."""
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {}, HOST_GPUS, [1, 5], 8 * GIB)
    error = caught.value
    assert error.code == "invalid_request"
    assert error.status == 400
    assert error.details == {"devices": [0, 1, 2]}
    assert "no GPU 5" in error.message
    assert "GPUs: 0, 1, 2" in error.message


def test_requested_device_with_too_little_free_is_insufficient_memory() -> None:
    """A requested GPU without room is insufficient_memory with its free bytes in details."""
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, HOST_GPUS, [0], 256 * GIB)
    error = caught.value
    needed = QWEN3_8B_WEIGHTS + default_kv(QWEN3_8B_KV_PER_TOKEN) + GPU_OVERHEAD_BYTES
    assert error.code == "insufficient_memory"
    assert error.status == 409
    assert error.details == {
        "needed_bytes": needed,
        "devices": [{"index": 0, "free_bytes": FREE[0]}],
    }
    assert "GPU 0 9.5 GiB" in error.message
    assert f"{needed / GIB:.1f} GiB on each of 1 GPU(s)" in error.message


def test_model_too_big_for_any_gpu_is_insufficient_memory() -> None:
    """When even the freest GPU lacks room, the answer names its free memory."""
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {"max_model_len": 40960}, HOST_GPUS, None, 0)
    error = caught.value
    assert error.code == "insufficient_memory"
    assert error.details["devices"] == [{"index": 1, "free_bytes": FREE[1]}]
    assert error.details["needed_bytes"] > FREE[1]


def test_tensor_parallel_with_one_short_device_lists_each_free() -> None:
    """If one of the tensor-parallel GPUs is short, details list every chosen GPU's free bytes."""
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, HOST_GPUS, [0, 2], 256 * GIB)
    error = caught.value
    kv = default_kv(QWEN3_8B_KV_PER_TOKEN)
    per_device = (QWEN3_8B_WEIGHTS + kv) // 2 + GPU_OVERHEAD_BYTES
    assert FREE[2] >= per_device > FREE[0]
    assert error.code == "insufficient_memory"
    assert error.details == {
        "needed_bytes": 2 * per_device,
        "devices": [{"index": 0, "free_bytes": FREE[0]}, {"index": 2, "free_bytes": FREE[2]}],
    }


def test_tensor_parallel_beyond_the_gpu_count_is_insufficient_memory() -> None:
    """tensor_parallel_size larger than the host's GPU count cannot be placed."""
    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {"tensor_parallel_size": 4}, HOST_GPUS, None, 0)
    error = caught.value
    assert error.code == "insufficient_memory"
    assert error.status == 409
    assert error.details["devices"] == [
        {"index": d.index, "free_bytes": d.memory_free} for d in HOST_GPUS
    ]
    assert "tensor_parallel_size 4" in error.message
    assert "has 3" in error.message


def test_insufficient_memory_details_match_the_wire_type() -> None:
    """insufficient_memory details decode as the API's InsufficientMemoryDetails."""
    import msgspec

    from cortex_core.neuron_api import InsufficientMemoryDetails

    with pytest.raises(NeuronError) as caught:
        plan_load(QWEN3_8B, QWEN3_8B_WEIGHTS, {}, HOST_GPUS, [0], 0)
    details = msgspec.convert(caught.value.details, InsufficientMemoryDetails)
    assert [(d.index, d.free_bytes) for d in details.devices] == [(0, FREE[0])]
    assert details.needed_bytes == caught.value.details["needed_bytes"]


# --- check_architecture -------------------------------------------------------------------

SUPPORTED = frozenset({"LlamaForCausalLM", "Qwen3ForCausalLM", "Gemma3ForConditionalGeneration"})


def test_supported_architecture_is_returned() -> None:
    """A config whose architecture the engine runs passes and names it."""
    assert check_architecture(QWEN3_8B, SUPPORTED) == "Qwen3ForCausalLM"


def test_first_supported_of_several_architectures_is_returned() -> None:
    """Of several architectures, the first one the engine runs is the answer."""
    config = {"architectures": ["FancyNewForCausalLM", "LlamaForCausalLM"]}
    assert check_architecture(config, SUPPORTED) == "LlamaForCausalLM"


def test_unsupported_architecture_is_unsupported_model() -> None:
    """An architecture the engine does not run is unsupported_model (422) naming it."""
    config = {"architectures": ["MambaForCausalLM"]}
    with pytest.raises(NeuronError) as caught:
        check_architecture(config, SUPPORTED)
    assert caught.value.code == "unsupported_model"
    assert caught.value.status == 422
    assert caught.value.details == {"architectures": ["MambaForCausalLM"]}
    assert "MambaForCausalLM" in caught.value.message


@pytest.mark.parametrize(
    "config",
    [{}, {"architectures": []}, {"architectures": "LlamaForCausalLM"}, {"architectures": None}],
)
def test_missing_architectures_is_unsupported_model(config: dict[str, Any]) -> None:
    """A config.json without an architectures list is unsupported_model, checked or not."""
    for supported in (SUPPORTED, None):
        with pytest.raises(NeuronError) as caught:
            check_architecture(config, supported)
        assert caught.value.code == "unsupported_model"
        assert caught.value.status == 422


def test_unknown_supported_set_passes_any_architecture() -> None:
    """With no list of supported architectures, the first one named is accepted."""
    config = {"architectures": ["MambaForCausalLM", "LlamaForCausalLM"]}
    assert check_architecture(config, None) == "MambaForCausalLM"


# --- gpu_memory_utilization ------------------------------------------------------------------


def _gpu(index: int, total_gib: float, used_gib: float) -> Device:
    total, used = int(total_gib * GIB), int(used_gib * GIB)
    return Device(index=index, memory_total=total, memory_used=used, memory_free=total - used)


def test_a_model_on_a_shared_gpu_asks_for_its_share_not_vllms_default() -> None:
    """A second model on a busy GPU asks for about its own share, below what is free."""
    busy = _gpu(0, 24, 14)
    plan = plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, {}, [busy], None, 64 * GIB)
    fraction = plan.options["gpu_memory_utilization"]
    assert fraction * busy.memory_total <= busy.memory_free - CUDA_CONTEXT_BYTES
    assert fraction < 0.9
    share = plan.needed_bytes - CUDA_CONTEXT_BYTES
    assert abs(fraction * busy.memory_total - share) < busy.memory_total / 10_000


def test_an_operators_own_fraction_is_kept() -> None:
    """gpu_memory_utilization given with the load is not replaced."""
    options = {"gpu_memory_utilization": 0.5}
    plan = plan_load(QWEN3_1_7B, QWEN3_1_7B_WEIGHTS, options, [_gpu(0, 24, 0)], None, 64 * GIB)
    assert plan.options["gpu_memory_utilization"] == 0.5


def test_tensor_parallel_on_unequal_gpus_fits_the_tightest_one() -> None:
    """One fraction for all workers: never more than the tightest GPU has free."""
    tight, roomy = _gpu(0, 80, 70), _gpu(1, 24, 2)
    fraction = gpu_memory_utilization(9 * GIB, [tight, roomy])
    for device in (tight, roomy):
        assert math.ceil(fraction * device.memory_total) <= device.memory_free - CUDA_CONTEXT_BYTES
