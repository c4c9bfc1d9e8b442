"""The CPU extensions ``neuron check`` and the start-up log name, read from ``/proc/cpuinfo``."""

from __future__ import annotations

from pathlib import Path

from neuron.cpu import parse_cpuinfo, read_cpu

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni \
avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: something else entirely
flags\t\t: fpu
"""
EPYC_GENOA = """\
processor\t: 0
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu avx avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16
"""
OLD_XEON = "model name\t: Intel(R) Xeon(R) CPU E5-2690 v4\nflags\t\t: fpu avx avx2\n"
SKYLAKE = "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: avx2 avx512f avx512bw\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_an_amx_xeon_names_avx512_bf16_and_amx() -> None:
    """The first processor's flags count; AMX means bfloat16 takes AMX kernels."""
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.vector == ("AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AVX512-FP16")
    assert cpu.matrix == ("AMX-BF16", "AMX-INT8")
    assert cpu.kernels == "AVX-512 with BF16; AMX for bfloat16 attention and GEMMs"
    assert cpu.line() == (
        "Intel(R) Xeon(R) Platinum 8480+: vector AVX2, AVX-512, AVX512-VNNI, AVX512-BF16,"
        " AVX512-FP16; matrix AMX-BF16, AMX-INT8; vLLM kernels: AVX-512 with BF16;"
        " AMX for bfloat16 attention and GEMMs"
    )


def test_an_epyc_without_amx_takes_the_avx512_paths() -> None:
    cpu = parse_cpuinfo(EPYC_GENOA)
    assert cpu.matrix == ()
    assert cpu.kernels == "AVX-512 with BF16"
    assert "matrix none;" in cpu.line()


def test_older_cpus_take_the_avx512_or_avx2_library() -> None:
    assert parse_cpuinfo(SKYLAKE).kernels == "AVX-512"
    assert parse_cpuinfo(OLD_XEON).kernels == "AVX2"


def test_arm_features_are_named_and_the_machine_stands_in_for_a_model() -> None:
    cpu = parse_cpuinfo(GRAVITON, machine="aarch64")
    assert cpu.model == "aarch64"
    assert cpu.vector == ("NEON", "SVE", "BF16", "I8MM")
    assert cpu.kernels.startswith("not x86")


def test_an_unreadable_cpuinfo_still_answers(tmp_path: Path) -> None:
    cpu = read_cpu(tmp_path / "missing")
    assert cpu.vector == cpu.matrix == ()
    assert "vector none found" in cpu.line()


def test_this_host() -> None:
    """On Linux the real file parses (the model is whatever this machine is)."""
    cpu = read_cpu()
    assert cpu.model
    assert cpu.line().startswith(cpu.model)
