"""What this host's CPU offers vLLM's CPU kernels, read from ``/proc/cpuinfo``.

vLLM's CPU build picks its kernels by these extensions (``vllm/platforms/cpu.py``,
``cpu_attn.py``): AVX-512 with AVX512-BF16 loads its main library, AVX-512
alone the ``_C_AVX512`` one, else ``_C_AVX2``; with AMX tiles, bfloat16
attention and small GEMMs take AMX kernels. The same model can round
differently on each (docs/neuron.md, "CPU engines"), so ``neuron check`` and
the start-up log name them: a user's report then says which kernels ran.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "parse_cpuinfo", "read_cpu"]

CPUINFO = Path("/proc/cpuinfo")

_VECTOR = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("avx512_fp16", "AVX512-FP16"),
    # Arm: NEON, SVE and their bfloat16/int8 matrix instructions.
    ("asimd", "NEON"),
    ("sve", "SVE"),
    ("sve2", "SVE2"),
    ("bf16", "BF16"),
    ("i8mm", "I8MM"),
)
_MATRIX = (("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"), ("amx_fp16", "AMX-FP16"))


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and the extensions vLLM's CPU kernels choose by."""

    model: str
    vector: tuple[str, ...]
    matrix: tuple[str, ...]

    @property
    def kernels(self) -> str:
        """The kernels vLLM's CPU build takes here (x86), as its own selection reads the flags."""
        if "AVX-512" in self.vector:
            kernels = "AVX-512 with BF16" if "AVX512-BF16" in self.vector else "AVX-512"
        elif "AVX2" in self.vector:
            kernels = "AVX2"
        else:
            return "not x86: vLLM's kernels for this architecture"
        if "AMX-BF16" in self.matrix:
            kernels += "; AMX for bfloat16 attention and GEMMs"
        return kernels

    def line(self) -> str:
        """One line for ``neuron check``."""
        vector = ", ".join(self.vector) or "none found"
        matrix = ", ".join(self.matrix) or "none"
        return f"{self.model}: vector {vector}; matrix {matrix}; vLLM kernels: {self.kernels}"


def parse_cpuinfo(text: str, machine: str = "") -> CpuInfo:
    """The first processor of a ``/proc/cpuinfo`` text (every core of a host is alike)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("cpu model") or machine or "unknown CPU"
    return CpuInfo(
        model=model,
        vector=tuple(name for flag, name in _VECTOR if flag in flags),
        matrix=tuple(name for flag, name in _MATRIX if flag in flags),
    )


def read_cpu(path: Path = CPUINFO) -> CpuInfo:
    """The CPU of the host; an unreadable ``/proc/cpuinfo`` gives one with no extensions named."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())
