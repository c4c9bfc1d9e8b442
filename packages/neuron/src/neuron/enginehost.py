"""The engine host: a process with the engine's libraries imported, from which engines fork.

Starting a vLLM engine the default way starts fresh interpreters (vLLM's
``EngineCore``, then its ``Worker``), each importing torch and vLLM: tens of
seconds on a CPU before the model's first byte is read. The engine host pays
that once: Python's fork server (``multiprocessing``'s ``forkserver``), started
when the neuron starts, imports the modules it is given and then waits, with
no thread running; each engine process is forked from it in milliseconds and
inherits the imports. The processes it forks are ordinary
``multiprocessing`` processes (pid, sentinel, exit code), so whoever starts
them watches and stops them as before.

A forked process starts with the environment the neuron has when it asks for
it (not the host's, which is the neuron's at its own start), and with the CPU
threads and cores it is given. Nothing here imports vLLM.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext, ForkServerProcess
from typing import Any

__all__ = ["EngineHost", "HostLaunch", "Threads", "parse_cpu_list"]


@dataclass(frozen=True, slots=True)
class Threads:
    """The CPU an engine process may use: ``count`` compute threads, on ``cpus`` if given."""

    count: int | None = None
    cpus: frozenset[int] | None = None


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"0-3,8"`` → ``{0, 1, 2, 3, 8}`` (the form of ``VLLM_CPU_OMP_THREADS_BIND``)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    if not cpus:
        raise ValueError(f"no CPU in {text!r}")
    return frozenset(cpus)


def _run(
    env: Mapping[str, str],
    threads: Threads,
    target: Callable[..., Any],
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """In the forked process: take the asked environment and CPUs, then run ``target``."""
    # Key by key: clearing the environment would move it, and a process title set
    # afterwards (vLLM names its processes) would then not show.
    for key in set(os.environ) - set(env):
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    tempfile.tempdir = None  # computed again from this TMPDIR, not the host's
    if threads.cpus:
        os.sched_setaffinity(0, threads.cpus)
    if threads.count:
        import torch  # already imported by the host: this costs nothing

        # As vLLM's own CPU workers get them: its serving set-up keeps an
        # OMP_NUM_THREADS it did not set itself.
        os.environ["OMP_NUM_THREADS"] = str(threads.count)
        torch.set_num_threads(threads.count)
    return target(*args, **kwargs)


@dataclass
class HostLaunch:
    """What vLLM's engine launcher takes as its multiprocessing context: forks from the host.

    Each process it makes runs with ``env`` and ``threads``; ``processes``
    lists them, so the caller knows exactly which processes are the engine's.
    """

    context: ForkServerContext
    env: Mapping[str, str]
    threads: Threads = Threads()
    processes: list[ForkServerProcess] = field(default_factory=list)

    def Process(
        self,
        group: None = None,
        target: Callable[..., Any] | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> ForkServerProcess:
        """A process forked from the host that runs ``target`` in this launch's environment."""
        if target is None:
            raise ValueError("an engine process needs a target")
        process = self.context.Process(
            target=_run,
            name=name,
            args=(dict(self.env), self.threads, target, *args),
            kwargs=dict(kwargs or {}),
            daemon=daemon,
        )
        self.processes.append(process)
        return process

    def Queue(self, maxsize: int = 0) -> Any:
        """A queue between the neuron and the processes forked for it."""
        return self.context.Queue(maxsize)


class EngineHost:
    """The fork server engines start from; ``start`` it early, fork from it on each load."""

    def __init__(self, preload: Sequence[str]) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._preload = [*preload, __name__]

    def start(self) -> None:
        """Start the host process (it imports in the background); returns at once."""
        # The fork server is one per interpreter: this neuron's is this host.
        self._context.set_forkserver_preload(self._preload)
        multiprocessing.forkserver.ensure_running()

    def launch(self, env: Mapping[str, str], threads: Threads = Threads()) -> HostLaunch:
        """A context for one engine start: its processes fork from the host (started if need be)."""
        self.start()
        return HostLaunch(self._context, env, threads)
