"""Run a real ``neuron serve`` as a child process, for integration tests and the demo."""

from __future__ import annotations

import psutil

from cortex_core.testing import ServiceProcess, free_port

__all__ = ["NeuronProcess", "free_port"]


class NeuronProcess(ServiceProcess):
    """A neuron daemon process, with a view of the engine processes below it."""

    module = "neuron"

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

    leftovers: tuple[int, ...] = ()
    """Processes below the daemon still running 10 s after it exited (then killed)."""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (engines are stopped gracefully), then reap any engine process left."""
        children = self.children()
        code = super().stop(timeout)
        _, alive = psutil.wait_procs(children, timeout=10)
        self.leftovers = tuple(p.pid for p in alive)
        for process in alive:
            process.kill()
        return code
