"""Model switching: interleaved traffic for two models that do not fit one GPU together.

One scripted node with one 24 GiB GPU, two 16 GiB models with a realistic
load time, and ``concurrency`` clients, each sending its share of the
requests one after another, alternating between the models in bursts of its
own (so the gateway sees both models wanted at once, as with two teams on one
box), through the in-process gateway. For each
swap policy: how many swaps (loads counted at the node), latency p50/p99, the
longest wait (latency less the answer's own time), and errors, printed side
by side.

    PYTHONPATH=. .venv/bin/python bench/switching.py [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cortex_gateway.app import create_apps
from cortex_gateway.testing import ScriptedFleet, ScriptedModel, ScriptedNode

MODELS = ("bench/a", "bench/b")
CATALOGUE = "".join(f'[[models]]\nid = "{m}"\nmemory_gb = 16\n' for m in MODELS)


@dataclass(frozen=True)
class Outcome:
    """What one policy did with the sequence."""

    policy: str
    requests: int
    swaps: int
    p50_s: float
    p99_s: float
    longest_wait_s: float
    errors: int
    seconds: float


def sequence(requests: int, burst: tuple[int, int], seed: int) -> list[str]:
    """``requests`` model names alternating between the two models in bursts of random length."""
    rng = random.Random(seed)
    names: list[str] = []
    model = 0
    while len(names) < requests:
        names += [MODELS[model]] * rng.randint(*burst)
        model = 1 - model
    return names[:requests]


async def run(
    policy: str,
    *,
    requests: int = 200,
    concurrency: int = 8,
    load_s: float = 0.5,
    answer_s: float = 0.1,
    max_swap_wait_s: float = 3.0,
    burst: tuple[int, int] = (1, 12),
    seed: int = 7,
) -> Outcome:
    """Send the sequence through a gateway with ``policy``; count and time what happened."""
    node = ScriptedNode("gpu", gpus=[24], answer_delay_s=answer_s)
    fleet = ScriptedFleet([node], [ScriptedModel(m, memory_gib=16, load_s=load_s) for m in MODELS])
    with tempfile.TemporaryDirectory() as folder:
        config = fleet.config(
            Path(folder),
            CATALOGUE,
            gateway="poll_interval_s = 5.0\nload_timeout_s = 600.0\n",
            scheduling=f'policy = "{policy}"\nmax_swap_wait_s = {max_swap_wait_s}\n',
        )
        api, _, _ = create_apps(config, neurons=fleet, environ={})
        share = -(-requests // concurrency)
        plans = [sequence(share, burst, seed + i) for i in range(concurrency)]
        latencies: list[float] = []
        errors = 0
        transport = httpx.ASGITransport(app=api)
        started = time.monotonic()
        async with (
            api.router.lifespan_context(api),
            httpx.AsyncClient(
                transport=transport, base_url="http://gateway", timeout=600
            ) as client,
        ):

            async def client_of(plan: list[str]) -> None:
                nonlocal errors
                for model in plan:
                    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                    sent = time.monotonic()
                    response = await client.post("/v1/chat/completions", json=body)
                    latencies.append(time.monotonic() - sent)
                    errors += response.status_code != 200

            await asyncio.gather(*(client_of(plan) for plan in plans))
        seconds = time.monotonic() - started
    ordered = sorted(latencies)
    return Outcome(
        policy=policy,
        requests=len(latencies),
        swaps=node.loads,
        p50_s=statistics.median(ordered),
        p99_s=ordered[max(int(len(ordered) * 0.99) - 1, 0)],
        longest_wait_s=max(ordered) - answer_s,
        errors=errors,
        seconds=seconds,
    )


def table(outcomes: list[Outcome], load_s: float, max_swap_wait_s: float) -> str:
    """The outcomes side by side, as docs/performance.md shows them."""
    fifo = next(o for o in outcomes if o.policy == "fifo")
    rows = [
        "| policy | swaps | vs fifo | p50 | p99 | longest wait | errors | run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        fewer = 1 - o.swaps / fifo.swaps if fifo.swaps else 0.0
        rows.append(
            f"| {o.policy} | {o.swaps} | {-fewer:+.0%} | {o.p50_s:.2f} s | {o.p99_s:.2f} s"
            f" | {o.longest_wait_s:.2f} s | {o.errors} | {o.seconds:.0f} s |"
        )
    rows.append(
        f"\nbound on any wait: max_swap_wait_s + one load = {max_swap_wait_s + load_s:.1f} s"
        " (plus the answers in flight when the swap was decided)"
    )
    return "\n".join(rows)


def main() -> None:
    """Run both policies on the same sequence and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--load-s", type=float, default=0.5)
    parser.add_argument("--answer-s", type=float, default=0.1)
    parser.add_argument("--max-swap-wait-s", type=float, default=3.0)
    args = parser.parse_args()
    outcomes = [
        asyncio.run(
            run(
                policy,
                requests=args.requests,
                concurrency=args.concurrency,
                load_s=args.load_s,
                answer_s=args.answer_s,
                max_swap_wait_s=args.max_swap_wait_s,
            )
        )
        for policy in ("fifo", "grouped")
    ]
    print(
        f"{args.requests} requests alternating between two models in bursts, concurrency"
        f" {args.concurrency}, load {args.load_s} s, answer {args.answer_s} s"
    )
    print(table(outcomes, args.load_s, args.max_swap_wait_s))


if __name__ == "__main__":
    main()
