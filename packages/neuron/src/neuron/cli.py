"""The ``neuron`` command: ``serve``, ``devices``, ``check``."""

from __future__ import annotations

import asyncio
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
from cortex_core.logs import LogFormat, configure_logging
from cortex_core.units import GIB
from cortex_core.wire import to_builtins
from neuron import __version__
from neuron.devices import read_devices

DEFAULT_CONFIG = "/etc/neuron/neuron.toml"


def _config_path(path: str | None) -> Path:
    return Path(path or os.environ.get("NEURON_CONFIG") or DEFAULT_CONFIG)


def _load(path: Path) -> NeuronConfig:
    try:
        return load_neuron_config(path)
    except ConfigError as exc:
        click.echo(f"neuron: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="neuron")
def main() -> None:
    """neuron: runs vLLM engines on this host for the cortex gateway."""


@main.command()
@click.option(
    "--config", "config_path", help=f"neuron.toml (default $NEURON_CONFIG or {DEFAULT_CONFIG})"
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--log-level", default="INFO", show_default=True)
def serve(config_path: str | None, log_format: LogFormat, log_level: str) -> None:
    """Serve the management and OpenAI APIs until SIGTERM or SIGINT."""
    path = _config_path(config_path)
    config = _load(path)
    try:
        token = env_token(path, "neuron.token_env", config.neuron.token_env, os.environ)
    except ConfigError as exc:
        click.echo(f"neuron: {exc}", err=True)
        sys.exit(2)
    configure_logging(log_format, log_level.upper())
    asyncio.run(_serve(config, token))


async def _serve(config: NeuronConfig, token: str | None) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from neuron.app import create_app
    from neuron.vllm_engine import VllmEngineFactory

    # Engines leave sockets in their run folder; vLLM must not phone home or
    # look for models online (the neuron fetches them itself).
    run_dir = Path(tempfile.mkdtemp(prefix="neuron-"))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(config.neuron.cache_dir) / "vllm"))
    host, port = parse_hostport(config.neuron.listen)
    if token is None and not _loopback(host):
        logging.getLogger(__name__).warning(
            "the management API is open to the network: set [neuron] token_env, or listen on"
            " a private address only",
            extra={"listen": config.neuron.listen},
        )
    hyper = Config()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")  # our handler and format
    hyper.graceful_timeout = 30.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if os.environ.get("NEURON_TEST_ENGINE") == "scripted":
        app = _scripted_app(config, token)
    else:
        app = create_app(config, VllmEngineFactory(run_dir), token=token)
    try:
        # Starlette's ASGI types and hypercorn's differ only in how they spell them.
        asgi: Any = app
        await hypercorn_serve(asgi, hyper, shutdown_trigger=stop.wait)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


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
@click.option(
    "--config", "config_path", help=f"neuron.toml (default $NEURON_CONFIG or {DEFAULT_CONFIG})"
)
def check(config_path: str | None) -> None:
    """Validate neuron.toml; exit non-zero naming the file, key and problem."""
    path = _config_path(config_path)
    config = _load(path)
    sources = ", ".join(
        f"{name} ({'path ' + s.path if s.path else s.endpoint})"
        for name, s in config.sources.items()
    )
    click.echo(
        f"{path}: ok: neuron {config.neuron.name!r} on {config.neuron.listen}; sources: {sources}"
    )
