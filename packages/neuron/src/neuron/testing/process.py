"""Run a real ``neuron serve`` as a child process, for integration tests and the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

__all__ = ["NeuronProcess", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NeuronProcess:
    """``python -m neuron serve --config CONFIG``, its log in a file, stopped with SIGTERM."""

    def __init__(
        self, config: Path, url: str, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.url = url.rstrip("/")
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Self:
        """Start the daemon and wait until ``/health`` answers."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "neuron", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"neuron exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"neuron did not answer /health in {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        """Every process below the daemon (its engines' EngineCore and workers)."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def engine_pids(self) -> set[int]:
        """The pids of the daemon's vLLM engine processes."""
        found = set()
        for child in self.children():
            try:
                if child.name().startswith("VLLM::"):
                    found.add(child.pid)
            except psutil.Error:
                continue
        return found

    def tree_rss(self) -> int:
        """Resident memory of the daemon and all its children, in bytes."""
        total = 0
        for process in [psutil.Process(self.pid), *self.children()]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def log(self) -> str:
        """Everything the daemon has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for a graceful exit (engines stopped); SIGKILL as a last resort."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        children = self.children()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        _, alive = psutil.wait_procs(children, timeout=10)
        for process in alive:
            process.kill()
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
