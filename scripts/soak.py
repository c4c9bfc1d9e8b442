"""A bounded soak: mixed traffic through a real gateway, with its resources at start and end.

Starts two scripted neurons (no model: they answer at once, streams chunk by
chunk) and a gateway on loopback, then sends a bounded number of mixed
requests with bounded concurrency: OpenAI chat (JSON and streams), legacy
completions, Anthropic messages (JSON and streams), unknown models and
malformed bodies (expected errors), and streams the client leaves after their
first chunk. Prints requests, unexpected errors, and the gateway's RSS, open
file descriptors, connections and event-loop tasks at the start, every
``--every`` requests, and at the end.

    PYTHONPATH=. .venv/bin/python scripts/soak.py [--requests 20000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support import Fleet, NeuronSpec, fake_model, launch

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CATALOGUE = '[[models]]\nid = "fake/soak"\nmemory_gb = 2.1\n'
JSON_HEADERS = {"content-type": "application/json"}

CHAT = {"model": "fake/soak", "messages": QUESTION}
MESSAGE = {"model": "fake/soak", "max_tokens": 9, "messages": QUESTION}


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix, and what it must get."""

    name: str
    path: str
    body: dict[str, Any] | bytes
    status: int = 200
    stream: bool = False
    leave: bool = False
    """Leave after the first chunk, as a client that gave up."""


MIX = [
    Kind("chat", "/v1/chat/completions", CHAT),
    Kind("chat stream", "/v1/chat/completions", {**CHAT, "stream": True}, stream=True),
    Kind("completion", "/v1/completions", {"model": "fake/soak", "prompt": "The capital"}),
    Kind("message", "/v1/messages", MESSAGE),
    Kind("message stream", "/v1/messages", {**MESSAGE, "stream": True}, stream=True),
    Kind("unknown model", "/v1/chat/completions", {**CHAT, "model": "nobody/nothing"}, 404),
    Kind("malformed", "/v1/chat/completions", b"{not json", 400),
    Kind("left", "/v1/chat/completions", {**CHAT, "stream": True}, stream=True, leave=True),
]


def resources(fleet: Fleet) -> dict[str, float]:
    """The gateway process's resources now."""
    process = psutil.Process(fleet.gateway.pid)
    metrics = httpx.get(f"{fleet.metrics_url}/metrics", timeout=10).text
    gauge = "cortex_event_loop_tasks "
    lines = [line for line in metrics.splitlines() if line.startswith(gauge)]
    tasks = float(lines[0].split()[1]) if lines else float("nan")
    return {
        "rss_mib": process.memory_info().rss / (1 << 20),
        "fds": process.num_fds(),
        "connections": sum(
            1 for c in process.net_connections("tcp") if c.status != psutil.CONN_LISTEN
        ),
        "tasks": tasks,
    }


def show(label: str, done: int, errors: int, seen: dict[str, float]) -> None:
    """One line of figures."""
    print(
        f"{label:<8} {done:>8} requests {errors:>6} unexpected   RSS {seen['rss_mib']:7.1f} MiB"
        f"   fds {seen['fds']:>5.0f}   connections {seen['connections']:>4.0f}"
        f"   tasks {seen['tasks']:>5.0f}",
        flush=True,
    )


async def soak(fleet: Fleet, requests: int, concurrency: int, every: int) -> Counter[str]:
    """Send the mix until ``requests`` went out; count unexpected outcomes by kind."""
    unexpected: Counter[str] = Counter()
    done = 0
    plan = itertools.islice(itertools.cycle(MIX), requests)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=fleet.url, timeout=60, limits=limits) as client:

        async def one(kind: Kind) -> None:
            raw = kind.body if isinstance(kind.body, bytes) else None
            payload = None if raw is not None else kind.body
            async with client.stream(
                "POST", kind.path, json=payload, content=raw, headers=JSON_HEADERS
            ) as response:
                if response.status_code != kind.status:
                    unexpected[f"{kind.name}: {response.status_code}"] += 1
                    return
                async for chunk in response.aiter_bytes():
                    if kind.leave:
                        return
                    if kind.stream and b'"error"' in chunk:
                        unexpected[f"{kind.name}: error event"] += 1

        async def worker() -> None:
            nonlocal done
            for kind in plan:
                try:
                    await one(kind)
                except httpx.HTTPError as exc:
                    unexpected[f"{kind.name}: {type(exc).__name__}"] += 1
                done += 1
                if done % every == 0:
                    seen = await asyncio.to_thread(resources, fleet)
                    show("during", done, sum(unexpected.values()), seen)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return unexpected


def main() -> None:
    """Run the soak and print what it saw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--every", type=int, default=5000)
    parser.add_argument(
        "--settle", type=float, default=16.0, help="seconds idle before the end figures"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        fake_model(root, "fake/soak", 1)
        fleet = launch(
            Path(tmp) / "fleet",
            [NeuronSpec("one", "127.0.0.2", [24]), NeuronSpec("two", "127.0.0.3", [24])],
            CATALOGUE,
            models_root=root,
            env={"NEURON_TEST_CHUNK_DELAY": "0"},
        )
        fleet.start()
        try:
            for node in ("one", "two"):
                httpx.post(
                    f"{fleet.url}/admin/models/load",
                    json={"model": "fake/soak", "node": node},
                    timeout=120,
                ).raise_for_status()
            start = resources(fleet)
            show("start", 0, 0, start)
            began = time.monotonic()
            unexpected = asyncio.run(soak(fleet, args.requests, args.concurrency, args.every))
            seconds = time.monotonic() - began
            time.sleep(args.settle)  # let what the clients closed be reaped
            end = resources(fleet)
            show("end", args.requests, sum(unexpected.values()), end)
            print(f"{args.requests / seconds:.0f} requests/s over {seconds:.1f} s")
            for what, count in unexpected.most_common():
                print(f"  unexpected: {what} x{count}")
            growth = end["rss_mib"] - start["rss_mib"]
            print(
                f"RSS {growth:+.1f} MiB, fds {end['fds'] - start['fds']:+.0f},"
                f" connections {end['connections'] - start['connections']:+.0f},"
                f" tasks {end['tasks'] - start['tasks']:+.0f} from start to end"
            )
        finally:
            fleet.stop()


if __name__ == "__main__":
    main()
