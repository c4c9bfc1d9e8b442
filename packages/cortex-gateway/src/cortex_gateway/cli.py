"""The ``cortex`` command: run the gateway, and look at or steer the fleet through it."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
import msgspec

from cortex_core.catalogue import Catalogue, save_alias
from cortex_core.config import (
    ConfigError,
    GatewayConfig,
    check_catalogue_nodes,
    load_gateway_config,
)
from cortex_core.runtime.logs import LogFormat, configure_logging
from cortex_core.runtime.loops import run as run_loop
from cortex_core.runtime.sockets import ListenError, bind_listen
from cortex_core.text import columns
from cortex_core.units import GIB
from cortex_gateway import __version__
from cortex_gateway.reloads import guard
from cortex_gateway.tenants import read_keys
from cortex_gateway.usage import UsageReport, usage_table

DEFAULT_CONFIG = "/etc/cortex/cortex.toml"
DEFAULT_GATEWAY = "http://127.0.0.1:31313"

gateway_option = click.option(
    "--gateway",
    default=lambda: os.environ.get("CORTEX_GATEWAY", DEFAULT_GATEWAY),
    show_default="$CORTEX_GATEWAY or " + DEFAULT_GATEWAY,
    help="The gateway's API address.",
)
config_option = click.option(
    "--config", "config_path", help=f"cortex.toml (default $CORTEX_CONFIG or {DEFAULT_CONFIG})"
)
key_option = click.option(
    "--key",
    default=None,
    help="The key to send (default: $CORTEX_ADMIN_KEY for admin calls, else $CORTEX_API_KEY).",
)


def _config_path(path: str | None) -> Path:
    return Path(path or os.environ.get("CORTEX_CONFIG") or DEFAULT_CONFIG)


def _load(path: Path) -> GatewayConfig:
    try:
        return load_gateway_config(path)
    except ConfigError as exc:
        click.echo(f"cortex: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="cortex")
def main() -> None:
    """cortex: one OpenAI + Anthropic endpoint for a fleet of GPU hosts."""


# --- serving ----------------------------------------------------------------------------


@main.command()
@config_option
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--worker", type=int, default=None, hidden=True)
@click.option("--api-fd", type=int, default=None, hidden=True)
@click.option("--metrics-fd", type=int, default=None, hidden=True)
@click.option("--shared-fd", type=int, default=None, hidden=True)
def serve(
    config_path: str | None,
    log_format: LogFormat,
    log_level: str,
    worker: int | None,
    api_fd: int | None,
    metrics_fd: int | None,
    shared_fd: int | None,
) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain requests in flight.

    SIGHUP reloads models.toml (a broken file is refused and the catalogue in
    force stays). With ``[gateway] workers`` above 1, this process supervises
    that many gateway processes on one listen socket.
    """
    path = _config_path(config_path)
    config = _load(path)
    try:
        config.neuron_tokens(os.environ)  # refuse now, not at the first call
        read_keys(config.path, config.cortex, os.environ, b"")
    except ConfigError as exc:
        click.echo(f"cortex: {exc}", err=True)
        sys.exit(2)
    if worker is not None and api_fd is not None and metrics_fd is not None:
        # One of a supervisor's workers: its sockets are inherited, already bound.
        configure_logging(log_format, log_level.upper())
        from cortex_gateway.daemon import serve as serve_gateway

        at = (f"fd://{api_fd}", f"fd://{metrics_fd}")
        run_loop(serve_gateway(config, *at, worker=worker, shared_fd=shared_fd))
        return
    try:  # now: a port in use is one line, before anything starts
        api_bind = bind_listen(config.cortex.gateway.listen)
        metrics_bind = bind_listen(config.cortex.gateway.metrics_listen)
    except ListenError as exc:
        click.echo(f"cortex: {exc}", err=True)
        sys.exit(1)
    configure_logging(log_format, log_level.upper())
    count = config.cortex.gateway.workers
    if count > 1:
        from cortex_gateway.workers import Supervisor

        args = ["--log-format", log_format, "--log-level", log_level]
        api = int(api_bind.removeprefix("fd://"))
        run_loop(Supervisor(count, path.resolve(), api, metrics_bind, args).run())
        return
    from cortex_gateway.daemon import serve as serve_gateway

    run_loop(serve_gateway(config, api_bind, metrics_bind))


@main.command()
@click.option("--config", "config_path", required=True, help="cortex.toml to validate.")
def check(config_path: str) -> None:
    """Validate cortex.toml and its models.toml; exit non-zero naming file, key and problem."""
    path = Path(config_path)
    config = _load(path)
    catalogue = config.catalogue
    click.echo(
        f"{path}: ok: {len(config.cortex.neurons)} neuron(s), {len(catalogue)} model(s) and"
        f" {len(catalogue.aliases)} alias(es) in {config.models_path}"
    )


# --- client commands ---------------------------------------------------------------------


def key_for(given: str | None, path: str) -> str | None:
    """The key: ``--key``, else ``$CORTEX_ADMIN_KEY`` for admin calls, else ``$CORTEX_API_KEY``."""
    if given:
        return given
    if path.startswith("/admin/") and (admin := os.environ.get("CORTEX_ADMIN_KEY")):
        return admin
    return os.environ.get("CORTEX_API_KEY") or None


def _request(
    gateway: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = None,
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{gateway.rstrip('/')}{path}", data=data, method=method)
    request.add_header("content-type", "application/json")
    if secret := key_for(key, path):
        request.add_header("authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        click.echo(f"cortex: {exc.code}: {message}", err=True)
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"cortex: cannot reach the gateway at {gateway}: {exc}", err=True)
        sys.exit(1)


def _ago(stamp: float | None) -> str:
    if not stamp:
        return "-"
    seconds = max(time.time() - stamp, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _gib(value: int) -> str:
    return f"{value / GIB:.1f}"


def render_status(fleet: dict[str, Any]) -> str:
    """The fleet as the readable tables ``cortex status`` prints."""
    lines = ["NODES"]
    for node in fleet["nodes"]:
        state = "up" if node["up"] else f"DOWN ({node.get('error') or 'no answer'})"
        version = node.get("version") or ""
        lines.append(f"  {node['name']:<16} {state:<8} {node['endpoint']}  {version}".rstrip())
        if node["up"] and not node["devices"]:
            lines.append("      no GPUs (CPU engine)")
        for device in node["devices"]:
            lines.append(
                f"      GPU {device['index']}  {device['name'][:28]:<28}"
                f" {_gib(device['memory_used']):>6} / {_gib(device['memory_total'])} GiB"
                f"  {device['utilization']:.0f}%"
            )
        if held := node.get("sleeping_bytes"):
            lines.append(f"      host memory held by sleeping models: {_gib(held)} GiB")
    in_flight = {(i["node"], i["model"]): i["count"] for i in fleet.get("in_flight", [])}
    rows = []
    for node in fleet["nodes"]:
        for model in node["models"]:
            busy = max(model.get("in_flight", 0), in_flight.get((node["name"], model["id"]), 0))
            state = model["state"] + (f" ({model['phase']})" if model.get("phase") else "")
            if model["state"] == "sleeping":
                state += f" ({_gib(model.get('host_memory_bytes', 0))} GiB host)"
            if model.get("error"):
                state += f": {model['error']}"
            task = str(model.get("task", "generate"))
            last_use = _ago(model.get("last_used"))
            rows.append((model["id"], node["name"], task, state, str(busy), last_use))
    for model_id in fleet.get("loading", []):
        if not any(r[0] == model_id for r in rows):
            rows.append((model_id, "-", "-", "placing", "0", "-"))
    lines.append("")
    lines.append("MODELS")
    if not rows:
        lines.append("  none loaded")
    else:
        header = ("MODEL", "NODE", "TASK", "STATE", "IN FLIGHT", "LAST USE")
        lines.extend("  " + line for line in columns([header, *rows]))
    return "\n".join(lines)


@main.command()
@gateway_option
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print the fleet as JSON.")
def status(gateway: str, key: str | None, as_json: bool) -> None:
    """Nodes (up/down, GPUs with memory in use) and models (where, state, in flight, last use)."""
    fleet = _request(gateway, "GET", "/admin/fleet", key=key)
    click.echo(json.dumps(fleet, indent=2) if as_json else render_status(fleet))


@main.command()
@gateway_option
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print the /v1/models JSON.")
def models(gateway: str, key: str | None, as_json: bool) -> None:
    """The catalogue: every model and alias, where it is loaded and where it could go."""
    listing = _request(gateway, "GET", "/v1/models", key=key)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    header = ("MODEL", "TASK", "LOADED ON", "FITS ON", "NOTE")
    rows = [
        (
            m["id"],
            str(m.get("task", "generate")),
            ", ".join(m.get("locations", [])) or "-",
            ", ".join(m.get("feasible_on", [])) or "-",
            (f"alias of {m['alias_of']}" if m.get("alias_of") else "")
            + (" pinned" if m.get("pinned") else ""),
        )
        for m in listing["data"]
    ]
    click.echo("\n".join(columns([header, *rows])))


@main.command()
@gateway_option
@key_option
@click.option("--json", "as_json", is_flag=True, help="Print the /admin/usage JSON.")
def usage(gateway: str, key: str | None, as_json: bool) -> None:
    """Requests and tokens per key and model since the gateway started (GET /admin/usage)."""
    report = _request(gateway, "GET", "/admin/usage", key=key)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(usage_table(msgspec.convert(report, UsageReport)))


@main.command()
@gateway_option
@key_option
@click.argument("model")
@click.option("--node", help="Load on this neuron (default: where it fits best).")
def load(gateway: str, key: str | None, model: str, node: str | None) -> None:
    """Load MODEL (an id or alias) through the gateway and wait until it is ready."""
    answer = _request(
        gateway, "POST", "/admin/models/load", {"model": model, "node": node}, key=key
    )
    click.echo(f"{answer['model']} ready on {answer['node']}")


@main.command()
@gateway_option
@key_option
@click.argument("model")
@click.option("--node", help="Unload from this neuron only (default: everywhere).")
def unload(gateway: str, key: str | None, model: str, node: str | None) -> None:
    """Unload MODEL from the fleet (or one neuron)."""
    answer = _request(
        gateway, "POST", "/admin/models/unload", {"model": model, "node": node}, key=key
    )
    click.echo(f"{answer['model']} unloaded from {', '.join(answer['nodes'])}")


# --- aliases ----------------------------------------------------------------------------

reload_option = click.option(
    "--reload/--no-reload",
    default=True,
    show_default=True,
    help="Tell the gateway to read the file again (POST /admin/reload).",
)
force_option = click.option(
    "--force",
    is_flag=True,
    help="Remove the last alias, and have the gateway take a catalogue it would refuse.",
)


@main.group()
def alias() -> None:
    """List and change tier aliases in models.toml, and apply them without a restart."""


@alias.command("list")
@config_option
def alias_list(config_path: str | None) -> None:
    """The aliases models.toml defines: NAME -> TARGET."""
    config = _load(_config_path(config_path))
    aliases = config.catalogue.aliases
    if not aliases:
        click.echo(f"no aliases in {config.models_path}")
    width = max((len(name) for name in aliases), default=0)
    for name, target in aliases.items():
        click.echo(f"{name.ljust(width)} -> {target}")


@alias.command("set")
@config_option
@gateway_option
@key_option
@reload_option
@force_option
@click.argument("name")
@click.argument("target")
def alias_set(
    config_path: str | None,
    gateway: str,
    key: str | None,
    reload: bool,
    force: bool,
    name: str,
    target: str,
) -> None:
    """Point alias NAME at model TARGET (a [[models]] id), then reload the gateway."""
    _edit_alias(_config_path(config_path), name, target, gateway, key, reload, force)


@alias.command("rm")
@config_option
@gateway_option
@key_option
@reload_option
@force_option
@click.argument("name")
def alias_rm(
    config_path: str | None, gateway: str, key: str | None, reload: bool, force: bool, name: str
) -> None:
    """Remove alias NAME, then reload the gateway."""
    _edit_alias(_config_path(config_path), name, None, gateway, key, reload, force)


def _edit_alias(
    path: Path,
    name: str,
    target: str | None,
    gateway: str,
    key: str | None,
    reload: bool,
    force: bool,
) -> None:
    """Edit models.toml as ``cortex check`` would accept it, keeping its comments; then reload.

    Exits non-zero when the edit did not land (2) or the gateway did not take it (1).
    """
    config = _load(path)  # the file as it stands must be valid before it is edited

    def acceptable(catalogue: Catalogue) -> None:
        check_catalogue_nodes(config.path, config.models_path, config.cortex, catalogue)
        # What the gateway's reload would refuse is refused here, before the file changes.
        if not force and (why := guard(config.catalogue, catalogue, ())):
            raise ConfigError(config.models_path, "aliases", f"{why}; --force to do it anyway")

    try:
        save_alias(config.models_path, name, target, acceptable)
    except ConfigError as exc:
        click.echo(f"cortex: {exc}", err=True)
        sys.exit(2)
    change = f"{name} -> {target}" if target else f"{name} removed"
    click.echo(f"{change} in {config.models_path}")
    if not reload:
        return
    answer = _request(gateway, "POST", "/admin/reload", {"force": True} if force else {}, key=key)
    click.echo(
        f"the gateway at {gateway} reloaded: {answer['models']} model(s),"
        f" {len(answer['aliases'])} alias(es)"
    )
