"""Measure what the gateway adds to a request: a scripted neuron directly vs through cortex.

Starts one scripted neuron (no model: answers at once) and a gateway on
loopback, loads the model, then sends the same requests to both with a
bounded count and concurrency, and prints latency percentiles, throughput,
the gateway's added latency, and the gateway process's memory.

    PYTHONPATH=. .venv/bin/python scripts/bench_gateway.py [--requests 400] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from tests.support import NeuronSpec, fake_model, launch

BODY = {"model": "fake/bench", "messages": [{"role": "user", "content": "hi"}]}


async def run(url: str, requests: int, concurrency: int, stream: bool) -> list[float]:
    """Send ``requests`` chat completions, ``concurrency`` at a time; return each latency."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    body = {**BODY, "stream": stream}
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
                    assert r.status_code == 200
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def report(name: str, latencies: list[float], seconds: float) -> float:
    """Print one line of figures; return the median in milliseconds."""
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p95 = ordered[int(len(ordered) * 0.95) - 1] * 1000
    print(f"{name:<28} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   {len(ordered) / seconds:8.1f} req/s")
    return p50


def main() -> None:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        fake_model(root, "fake/bench", 1)
        fleet = launch(
            Path(tmp) / "fleet",
            [NeuronSpec("bench", "127.0.0.2", [24])],
            '[[models]]\nid = "fake/bench"\nmemory_gb = 2.1\n',
            models_root=root,
            env={"NEURON_TEST_CHUNK_DELAY": "0"},
        )
        fleet.start()
        try:
            httpx.post(f"{fleet.url}/v1/chat/completions", json=BODY, timeout=60).raise_for_status()
            neuron = fleet.neurons["bench"].url
            gateway = psutil.Process(fleet.gateway.pid)
            rss_before = gateway.memory_info().rss
            print(f"{args.requests} requests, {args.concurrency} at a time, scripted engine")
            for stream in (False, True):
                kind = "stream" if stream else "json"
                figures = {}
                for name, url in (("neuron direct", neuron), ("through the gateway", fleet.url)):
                    started = time.perf_counter()
                    latencies = asyncio.run(run(url, args.requests, args.concurrency, stream))
                    figures[name] = report(
                        f"{kind}: {name}", latencies, time.perf_counter() - started
                    )
                added = figures["through the gateway"] - figures["neuron direct"]
                print(f"{kind}: gateway adds {added:.2f} ms at the median")
            rss_after = gateway.memory_info().rss
            mib = 1 << 20
            print(f"gateway RSS {rss_before / mib:.0f} MiB before, {rss_after / mib:.0f} MiB after")
        finally:
            fleet.stop()


if __name__ == "__main__":
    main()
