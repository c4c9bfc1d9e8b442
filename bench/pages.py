"""Dashboard pages, as a load: N ``GET /ui/events`` held open and read, in one process.

Each connection sends the request the page sends, reads its status line,
then reads whatever comes (a refused one, 503, stays open and idle, as a
client that keeps its connection would). Once every connection has its
status it prints one line, ``{"ready": ...}``; SIGUSR1 marks a moment (what
came after it is counted apart, ``since_mark``); at SIGTERM or SIGINT it
prints what the pages received and exits.

    PYTHONPATH=. .venv/bin/python -m bench.pages --url http://127.0.0.1:31313 -n 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from urllib.parse import urlsplit

from cortex_core.runtime.loops import run as run_loop

__all__ = ["Pages"]


class Pages:
    """``count`` open dashboard streams and what they received."""

    def __init__(self, url: str, count: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.count = count
        self.statuses: Counter[str] = Counter()
        self.received = 0
        self.marked = 0
        """What had been received at the last SIGUSR1."""
        self.ended = 0
        self._connected = 0
        self._all_in = asyncio.Event()
        self._connecting = asyncio.Semaphore(200)

    async def page(self, stop: asyncio.Event) -> None:
        """One page: connect, ask, read until told to stop (or the server ends it)."""
        async with self._connecting:  # a burst far past the listen backlog only stalls
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
            except OSError as exc:
                self._arrived(f"connect: {type(exc).__name__}")
                return
            writer.write(
                f"GET /ui/events HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                "accept: text/event-stream\r\n\r\n".encode()
            )
            try:
                status = (await reader.readline()).split(b" ")[1:2]
            except OSError:
                status = []
            self._arrived(status[0].decode() if status else "closed")
        reading = asyncio.ensure_future(self._read(reader))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reading.cancel()
            stopped.cancel()
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(1 << 16):
                self.received += len(chunk)
        except OSError:
            pass
        self.ended += 1

    def _mark(self) -> None:
        self.marked = self.received

    def _arrived(self, status: str) -> None:
        self.statuses[status] += 1
        self._connected += 1
        if self._connected == self.count:
            self._all_in.set()

    async def run(self) -> None:
        """Open every page, say when they are all in, hold them until stopped."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self._mark)
        pages = [asyncio.ensure_future(self.page(stop)) for _ in range(self.count)]
        await self._all_in.wait()
        print(json.dumps({"ready": dict(self.statuses)}), flush=True)
        await stop.wait()
        await asyncio.gather(*pages, return_exceptions=True)
        figures = {
            "statuses": dict(self.statuses),
            "received": self.received,
            "since_mark": self.received - self.marked,
            "ended": self.ended,
        }
        print(json.dumps(figures), flush=True)


def main() -> None:
    """Hold ``-n`` dashboard streams open on ``--url`` until SIGTERM; print what came."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("-n", "--pages", type=int, default=50)
    args = parser.parse_args()
    run_loop(Pages(args.url, args.pages).run())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
