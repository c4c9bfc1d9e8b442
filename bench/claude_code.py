"""Claude Code's billing block and the prefix cache: ``strip_billing_header`` off against on.

One CPU neuron with SmolLM2-135M-Instruct (8,192-token context, float32, as
the Claude Code tests run it) and two gateways in front of it, one per
setting. Through each, the recorded interactive first turn of Claude Code
(``packages/cortex-gateway/tests/fixtures/claude_code``) is sent again and
again, each time with a new ``cch=`` in its billing block, as an interactive
session sends it; each answer is one token, so what is timed is the prompt's
prefill. Printed: time to first token and the share of the prompt read from
the engine's prefix cache, per setting, from the second request on.

vLLM 0.32 drops the billing line from system text itself (its chat
renderer's ``_strip_claude_code_billing_header``), so on this engine both
settings read the same share from its cache; the gateway's strip is what
keeps its own prefix-aware routing, which hashes the request as it arrives
(docs/performance.md).

    PYTHONPATH=. .venv/bin/python bench/claude_code.py [--requests 6]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.engine import neuron_toml, wait_http
from bench.proxy import started, stop_on_sigterm
from cortex_core.testing import free_port
from neuron.testing.models import prepare_smollm2

MODEL = "bench/smollm2"
ENGINE = 'engine = { max_model_len = 8192, dtype = "float32" }'
CACHE = Path(".cache/bench")
FIXTURE = Path("packages/cortex-gateway/tests/fixtures/claude_code/interactive_turn1_0a1b2.json")


def turn(client: httpx.Client) -> dict[str, float]:
    """One interactive first turn with a fresh ``cch=``: its time to first token and usage."""
    body: dict[str, Any] = json.loads(FIXTURE.read_text())["body"]
    billing = body["system"][0]
    billing["text"] = billing["text"].replace("cch=0a1b2", f"cch={secrets.token_hex(3)[:5]}")
    body |= {"model": MODEL, "max_tokens": 1, "stream": False}
    began = time.perf_counter()
    answer = client.post("/v1/messages", json=body)
    answer.raise_for_status()
    usage = answer.json()["usage"]
    cached = usage["cache_read_input_tokens"] or 0
    prompt = usage["input_tokens"] + cached
    return {"seconds": time.perf_counter() - began, "cached": cached / prompt, "prompt": prompt}


def main() -> None:
    """A neuron, two gateways, the turns through each; the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6, help="per setting")
    args = parser.parse_args()
    stop_on_sigterm()
    weights = prepare_smollm2(CACHE.resolve() / "smollm2-135m-instruct")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: one CPU neuron with"
        f" SmolLM2-135M-Instruct (float32), Claude Code's interactive first turn,"
        f" {args.requests} requests per setting, each with a new cch=",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        (work / "models" / "bench").mkdir(parents=True)
        (work / "models" / "bench" / "smollm2").symlink_to(weights)
        port = free_port("127.0.0.2")
        neuron = f"http://127.0.0.2:{port}"
        command = neuron_toml(work / "neuron.toml", "cpu", f"127.0.0.2:{port}", work)
        env = {"VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
        stack.enter_context(started(command, None, work / "neuron.log", env))
        wait_http(f"{neuron}/health", 120, "the neuron")
        (work / "models.toml").write_text(f'[[models]]\nid = "{MODEL}"\n{ENGINE}\n')
        gateways = {}
        for strip in ("false", "true"):
            api, metrics = free_port(), free_port()
            config = work / f"cortex-{strip}.toml"
            config.write_text(
                f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
                f'models = "models.toml"\npoll_interval_s = 1\n\n'
                f"[anthropic]\nstrip_billing_header = {strip}\n\n"
                f'[[neurons]]\nname = "cpu"\nendpoint = "{neuron}"\n'
            )
            gateway = [sys.executable, "-m", "cortex_gateway", "serve", "--config", str(config)]
            stack.enter_context(started(gateway, None, work / f"gateway-{strip}.log"))
            gateways[strip] = f"http://127.0.0.1:{api}"
            wait_http(f"{gateways[strip]}/health", 60, "a gateway")
        began = time.monotonic()
        with httpx.Client(base_url=gateways["true"], timeout=900) as client:
            client.post("/admin/models/load", json={"model": MODEL}).raise_for_status()
        print(f"engine ready in {time.monotonic() - began:.0f} s", flush=True)
        results = {}
        # Off first: its prompts start with a billing block, so they share nothing with on's.
        for strip in ("false", "true"):
            with httpx.Client(base_url=gateways[strip], timeout=900) as client:
                runs = [turn(client) for _ in range(args.requests)]
            results[strip] = runs
            print(f"strip_billing_header = {strip}: {runs}", flush=True)
    off, on = results["false"][1:], results["true"][1:]
    print()
    print("| from the second request on | strip_billing_header = false | = true (default) |")
    print("| --- | --- | --- |")
    prompt = statistics.median(r["prompt"] for r in off + on)
    print(f"| prompt (tokens, median) | {prompt:.0f} | |")
    for label, key, unit in (
        ("time to first token, median", "seconds", "s"),
        ("prompt read from the prefix cache, median", "cached", "%"),
    ):
        a, b = statistics.median(r[key] for r in off), statistics.median(r[key] for r in on)
        if unit == "%":
            print(f"| {label} | {a:.0%} | {b:.0%} |")
        else:
            print(f"| {label} | {a:.2f} s | {b:.2f} s ({a / b:.1f}x faster) |")


if __name__ == "__main__":
    main()
