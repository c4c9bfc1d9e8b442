"""CPU engine settings side by side: dtype, and the libraries vLLM asks to have preloaded.

vLLM's CPU build warns at every engine start that neither tcmalloc nor Intel's
OpenMP is in ``LD_PRELOAD`` ("for best performance"). This runs a real neuron
once per variant, SmolLM2-135M-Instruct loaded the same way each time, and
prints engine start, tokens per second and time to first token per variant:

- ``bfloat16``: what the neuron does by default on a CPU;
- ``float32``: what the demo and the real-engine tests use (docs/neuron.md);
- ``+tcmalloc``: bfloat16 with ``libtcmalloc_minimal`` preloaded (Debian:
  ``apt-get install libtcmalloc-minimal4``);
- ``+tcmalloc+iomp``: and Intel's OpenMP (PyPI: ``intel-openmp``; give its
  ``libiomp5.so`` with ``--iomp``);
- ``bfloat16 again``: the first variant once more, for this machine's drift.

    PYTHONPATH=. .venv/bin/python bench/preload.py [--iomp PATH] [--requests 24]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes.util
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.engine import (
    CACHE,
    KV_BYTES,
    MAX_MODEL_LEN,
    MODEL,
    measure,
    neuron_toml,
    probe,
    wait_http,
)
from bench.proxy import started, stop_on_sigterm
from cortex_core.testing import free_port
from neuron.testing.models import prepare_smollm2

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu")


def find_library(name: str) -> Path | None:
    """A shared library's full path (``LD_PRELOAD`` wants one), or None."""
    found = ctypes.util.find_library(name)
    if found is None:
        return None
    for folder in LIBRARY_DIRS:
        if (Path(folder) / found).exists():
            return Path(folder) / found
    return None


def run_variant(
    work: Path, weights: Path, dtype: str, preload: list[Path], args: argparse.Namespace
) -> dict[str, Any]:
    """One neuron, one load, the streamed requests: the figures."""
    folder = Path(tempfile.mkdtemp(dir=work))
    models = folder / "models" / "bench"
    models.mkdir(parents=True)
    (models / "smollm2").symlink_to(weights)
    port = free_port()
    command = neuron_toml(folder / "neuron.toml", "bench", f"127.0.0.1:{port}", folder)
    env = {"VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    if preload:
        env["LD_PRELOAD"] = ":".join(str(p) for p in preload)
    url = f"http://127.0.0.1:{port}"
    options = {"max_model_len": MAX_MODEL_LEN, "kv_cache_memory_bytes": KV_BYTES, "dtype": dtype}
    with started(command, None, folder / "neuron.log", env):
        wait_http(f"{url}/health", 120, "the neuron")
        began = time.monotonic()
        load = {"model": MODEL, "wait": False, "options": options}
        answer = httpx.post(f"{url}/models/load", json=load, timeout=60)
        assert answer.status_code == 202, answer.text
        asyncio.run(probe(url, MODEL))
        ready_s = time.monotonic() - began
        base = httpx.get(f"{url}/models/{MODEL}/endpoint", timeout=10).json()["url"]
        figures = asyncio.run(measure(base, args.requests, args.concurrency, args.tokens))
    log = (folder / "neuron.log").read_text(errors="replace")
    figures["ready_s"] = ready_s
    figures["warned"] = ", ".join(
        lib for lib in ("libtcmalloc", "libiomp") if f"{lib} is not found in LD_PRELOAD" in log
    )
    return figures


def main() -> None:
    """Run each variant in turn and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--iomp", type=Path, help="libiomp5.so (pip install intel-openmp)")
    args = parser.parse_args()
    stop_on_sigterm()
    weights = prepare_smollm2(CACHE.resolve() / "smollm2-135m-instruct")
    tcmalloc = find_library("tcmalloc_minimal") or find_library("tcmalloc")
    variants: list[tuple[str, str, list[Path]]] = [
        ("bfloat16", "bfloat16", []),
        ("float32", "float32", []),
    ]
    if tcmalloc is not None:
        variants.append(("bfloat16 +tcmalloc", "bfloat16", [tcmalloc]))
        if args.iomp is not None:
            variants.append(("bfloat16 +tcmalloc+iomp", "bfloat16", [tcmalloc, args.iomp]))
    else:
        print("# no libtcmalloc_minimal on this machine: its variants are left out")
    variants.append(("bfloat16 again", "bfloat16", []))
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; "
        f"SmolLM2-135M-Instruct on a neuron's CPU engine; {args.requests} streamed requests, "
        f"{args.concurrency} at a time, {args.tokens} tokens each",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="cortex-preload-") as tmp:
        for name, dtype, preload in variants:
            figures = run_variant(Path(tmp), weights, dtype, preload, args)
            print(f"{name}: done ({figures['wall_s']:.0f} s of requests)", flush=True)
            rows.append((name, figures))
    baseline = rows[0][1]["tokens_per_s"]
    print()
    print(
        "| variant | engine ready | tokens/s | vs bfloat16 | decode/request p50 "
        "| TTFT p50 | TTFT p95 | vLLM warned about |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, f in rows:
        print(
            f"| {name} | {f['ready_s']:.0f} s | {f['tokens_per_s']:.1f} "
            f"| {f['tokens_per_s'] / baseline:.2f}x | {f['decode_p50']:.1f} "
            f"| {f['ttft_p50'] * 1000:.0f} ms | {f['ttft_p95'] * 1000:.0f} ms "
            f"| {f['warned'] or 'nothing'} |"
        )


if __name__ == "__main__":
    main()
