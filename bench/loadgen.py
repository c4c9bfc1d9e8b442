r"""A closed-loop load generator: N requests, C at a time, each on its own kept-alive connection.

For every request it notes the latency (send to last byte), and on streams
the arrival of the first and last token (body bytes holding ``tk``, the
mock neuron's token text: this works through any translation of the
stream); it reports percentiles, requests per second and errors as one JSON
object on stdout, so a runner in another process can read it.

    PYTHONPATH=. .venv/bin/python -m bench.loadgen --url http://127.0.0.1:31313 -n 1000 -c 8 \\
        --mix '[["/v1/chat/completions", {"model": "bench/fast", "messages": [...]}]]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from bench.http11 import ChunkedReader, Head, parse_head
from cortex_core.runtime.loops import run as run_loop

__all__ = ["Sample", "percentile", "request_bytes", "run", "summary"]

MARK = b"tk"


@dataclass(slots=True)
class Sample:
    """One request's timings (seconds, from its sending)."""

    status: int = 0
    latency: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class _Pending:
    sent: float
    done: asyncio.Future[Sample]
    sample: Sample = field(default_factory=Sample)


class _Client(asyncio.Protocol):
    """One connection: send a request, parse its answer, resolve the future."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.head: Head | None = None
        self.remaining = 0
        self.chunked: ChunkedReader | None = None
        self.pending: _Pending | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.pending is not None and not self.pending.done.done():
            self.pending.sample.error = f"connection lost: {exc}"
            self.pending.done.set_result(self.pending.sample)
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, request: bytes) -> asyncio.Future[Sample]:
        assert self.transport is not None
        done: asyncio.Future[Sample] = asyncio.get_running_loop().create_future()
        self.pending = _Pending(time.perf_counter(), done)
        self.transport.write(request)
        return done

    def _payload(self, data: bytes) -> None:
        pending = self.pending
        assert pending is not None
        if MARK in data:
            now = time.perf_counter() - pending.sent
            sample = pending.sample
            if sample.first_token is None:
                sample.first_token = now
            sample.last_token = now
            sample.tokens += data.count(MARK)

    def data_received(self, data: bytes) -> None:
        if self.pending is None:
            return
        if self.head is None:
            data = self.buffer + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            self.head = parse_head(data[:end])
            self.buffer = b""
            data = data[end + 4 :]
            self.pending.sample.status = int(self.head.first.split(" ", 2)[1])
            if self.head.chunked:
                self.chunked = ChunkedReader(self._payload)
            else:
                self.remaining = self.head.length
        if self.chunked is not None:
            self.chunked.feed(data)
            finished = self.chunked.done
        else:
            self._payload(data[: self.remaining])
            self.remaining -= len(data)
            finished = self.remaining <= 0
        if finished:
            pending, self.pending = self.pending, None
            keep = self.head.keep_alive
            self.head, self.chunked = None, None
            pending.sample.latency = time.perf_counter() - pending.sent
            pending.done.set_result(pending.sample)
            if not keep and self.transport is not None:
                # The server closes (hypercorn does every keep_alive_max_requests):
                # the next request goes on a new connection.
                self.transport.close()
                self.transport = None


def request_bytes(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """One POST of ``body`` to ``path``, as sent."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(
    url: str,
    mix: list[tuple[str, bytes]],
    requests: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
    stagger_s: float = 0.0,
) -> tuple[list[Sample], float]:
    """Send ``requests`` POSTs, ``concurrency`` at a time; the samples and the wall time.

    The requests go round the ``mix`` of ``(path, body)`` in turn. With
    ``stagger_s``, the clients start spread over that time instead of at once
    (long streams that all start together stay in step to the end).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prepared = [request_bytes(host, port, path, body, headers) for path, body in mix]
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    left = requests

    async def worker(index: int) -> None:
        nonlocal left
        await asyncio.sleep(stagger_s * index / concurrency)
        client: _Client | None = None
        while left > 0:
            left -= 1
            request = prepared[left % len(prepared)]
            if client is None or client.transport is None:
                try:
                    _, client = await loop.create_connection(_Client, host, port)
                except OSError as exc:
                    samples.append(Sample(error=f"connect: {exc}"))
                    client = None
                    continue
            samples.append(await client.send(request))
        if client is not None:
            if client.transport is not None:
                client.transport.close()
            await client.lost

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(min(concurrency, requests))))
    return samples, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(samples: list[Sample], wall_s: float) -> dict[str, Any]:
    """The figures of a run: counts, requests/s, latency, first token and spread percentiles."""
    good = [s for s in samples if s.error is None and 200 <= s.status < 300]
    latency = [s.latency for s in good]
    ttft = [s.first_token for s in good if s.first_token is not None]
    spread = [
        s.last_token - s.first_token
        for s in good
        if s.first_token is not None and s.last_token is not None
    ]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error is not None or not 200 <= s.status < 300:
            key = s.error or f"HTTP {s.status}"
            errors[key] = errors.get(key, 0) + 1
    return {
        "requests": len(samples),
        "ok": len(good),
        "errors": errors,
        "wall_s": wall_s,
        "rps": len(good) / wall_s if wall_s > 0 else 0.0,
        "latency_p50": percentile(latency, 0.5),
        "latency_p99": percentile(latency, 0.99),
        "ttft_p50": percentile(ttft, 0.5),
        "ttft_p95": percentile(ttft, 0.95),
        "spread_p50": percentile(spread, 0.5),
        "tokens": sum(s.tokens for s in good),
    }


def main() -> None:
    """Run one load and print its summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--mix",
        required=True,
        help='JSON list of [path, body] pairs, sent in turn: [["/v1/chat/completions", {...}]]',
    )
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE")
    parser.add_argument("-n", "--requests", type=int, default=1000)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--stagger", type=float, default=0.0, help="spread the clients' starts")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result: dict[str, Any] = {}

    async def go() -> None:
        mix = [(path, json.dumps(body).encode()) for path, body in json.loads(args.mix)]
        samples, wall = await run(
            args.url, mix, args.requests, args.concurrency, headers, args.stagger
        )
        result.update(summary(samples, wall))

    run_loop(go())
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
