"""GGUF weights: the header's metadata, read without the tensors, as preflight needs it.

A GGUF file starts with ``GGUF``, a version, the tensor and key counts, then
typed key/value pairs (``general.architecture``, ``<arch>.block_count``, the
tokenizer's vocabulary, ...). Only those pairs are read; arrays are skipped
over, so the reader touches a few megabytes of a multi-gigabyte file (a hub
file is read with range requests).

What vLLM needs to run GGUF weights is not here: since vLLM 0.24 that is the
``vllm-gguf-plugin`` package, whose kernels are CUDA (or ROCm) and Triton
only. See :func:`neuron.vllm_engine.VllmEngineFactory.gguf_support`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from neuron.errors import NeuronError

__all__ = ["ARCHITECTURES", "GgufHeader", "config_from_gguf", "read_header"]

MAGIC = b"GGUF"
MAX_HEADER_BYTES = 256 << 20
"""More metadata than this is not a model header we should be reading."""
MAX_STRING_BYTES = 16 << 20

ARCHITECTURES: Mapping[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral3": "Mistral3ForConditionalGeneration",
    "qwen2": "Qwen2ForCausalLM",
    "qwen2moe": "Qwen2MoeForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "stablelm": "StableLmForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "command-r": "CohereForCausalLM",
    "deepseek2": "DeepseekV2ForCausalLM",
}
"""GGUF's ``general.architecture`` to the Hugging Face architecture vLLM registers."""

# value type: (struct format, size); 8 is a string, 9 an array.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """Not a GGUF file this reader understands."""


@dataclass(frozen=True, slots=True)
class GgufHeader:
    """The header's scalar metadata (arrays are left out) and its counts."""

    version: int
    tensor_count: int
    metadata: Mapping[str, Any]

    @property
    def architecture(self) -> str:
        """``general.architecture``, such as ``llama`` or ``qwen3``."""
        return str(self.metadata.get("general.architecture", ""))

    def arch(self, key: str) -> Any:
        """``<architecture>.<key>``, if present."""
        return self.metadata.get(f"{self.architecture}.{key}")


class _Reader:
    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.read_bytes = 0

    def take(self, size: int) -> bytes:
        self.read_bytes += size
        if self.read_bytes > MAX_HEADER_BYTES:
            raise GgufError(f"the metadata runs past {MAX_HEADER_BYTES >> 20} MiB")
        data = self.file.read(size)
        if len(data) != size:
            raise GgufError("the file ends inside its header")
        return data

    def skip(self, size: int) -> None:
        self.take(size)  # a read, not a seek: hub files read ahead in blocks anyway

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        length = self.unpack("<Q", 8)
        if length > MAX_STRING_BYTES:
            raise GgufError(f"a string of {length} bytes")
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(*_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.unpack("<I", 4), self.unpack("<Q", 8)
            if inner in _SCALARS:
                self.skip(_SCALARS[inner][1] * count)
            elif inner == _STRING:
                for _ in range(count):
                    self.skip(self.unpack("<Q", 8))
            else:
                raise GgufError(f"an array of value type {inner}")
            return None  # arrays (vocabularies, merges) are not kept
        raise GgufError(f"unknown value type {kind}")


def read_header(file: BinaryIO) -> GgufHeader:
    """Read the header's metadata; raise :class:`GgufError` for anything else."""
    reader = _Reader(file)
    if reader.take(4) != MAGIC:
        raise GgufError("not a GGUF file (no GGUF magic)")
    version = reader.unpack("<I", 4)
    if version < 2:
        raise GgufError(f"GGUF version {version} (only 2 and later)")
    tensor_count, kv_count = reader.unpack("<Q", 8), reader.unpack("<Q", 8)
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string()
        value = reader.value(reader.unpack("<I", 4))
        if value is not None:
            metadata[key] = value
    return GgufHeader(version, tensor_count, metadata)


def config_from_gguf(header: GgufHeader, model: str) -> dict[str, Any]:
    """A ``config.json``-shaped mapping of what preflight sizes a model by.

    An architecture vLLM cannot take from GGUF is ``unsupported_model``.
    """
    architecture = ARCHITECTURES.get(header.architecture)
    if architecture is None:
        raise NeuronError(
            "unsupported_model",
            f"{model}: GGUF architecture {header.architecture or '(none)'!r} is not one vLLM"
            " loads from GGUF",
            {"gguf_architecture": header.architecture},
        )
    config: dict[str, Any] = {"architectures": [architecture], "torch_dtype": "bfloat16"}
    for key, name in (
        ("block_count", "num_hidden_layers"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("attention.key_length", "head_dim"),
        ("embedding_length", "hidden_size"),
        ("context_length", "max_position_embeddings"),
    ):
        value = header.arch(key)
        if isinstance(value, int) and not isinstance(value, bool):
            config[name] = value
    return config
