"""Configuration files: ``cortex.toml`` for the gateway, ``neuron.toml`` for a neuron.

Loading a file either returns typed, validated settings or raises one
:class:`ConfigError` that names the file, the key and what is wrong with it.
Config types refuse unknown keys (a typo must not pass silently), unlike wire
types.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from msgspec import Struct, field

from cortex_core._toml import (
    ConfigError,
    check_name,
    check_url,
    check_value,
    convert_section,
    convert_table,
    parse_hostport,
    read_toml,
    toml_key,
)
from cortex_core.catalogue import Catalogue, load_catalogue
from cortex_core.ids import validate_source_name
from cortex_core.units import (
    Fraction,
    NonNegInt,
    NonNegSeconds,
    PositiveGiB,
    PositiveInt,
    PositiveSeconds,
)

__all__ = [
    "DEFAULT_SOURCES",
    "AnthropicSection",
    "ConfigError",
    "CortexConfig",
    "EvictionSection",
    "GatewayConfig",
    "GatewaySection",
    "KeyEntry",
    "NeuronConfig",
    "NeuronEntry",
    "NeuronSection",
    "SchedulingSection",
    "SourceConfig",
    "check_catalogue_nodes",
    "convert_section",
    "env_token",
    "load_cortex_config",
    "load_gateway_config",
    "load_neuron_config",
    "parse_hostport",
    "read_toml",
]


class _Config(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of config types: unknown keys are errors."""


# --- cortex.toml ------------------------------------------------------------------


class GatewaySection(_Config):
    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "0.0.0.0:31314"
    models: str = "models.toml"
    """The catalogue; a relative path is relative to cortex.toml."""
    poll_interval_s: PositiveSeconds = 5.0
    down_after_failed_polls: PositiveInt = 3
    """Polls failing in a row that mark a neuron down; after one, it is only avoided."""
    load_timeout_s: PositiveSeconds = 900.0
    api_keys: list[str] = field(default_factory=list)
    """Inference routes and /v1/models: ``Authorization: Bearer`` or ``x-api-key``."""
    admin_keys: list[str] = field(default_factory=list)
    """``/admin/*``; empty: an API key also admits admin calls."""
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    """Larger request bodies are refused with 413 before they are read in full."""
    body_timeout_s: PositiveSeconds = 30.0
    """A client's body must arrive in full within this (408 otherwise)."""
    connect_timeout_s: PositiveSeconds = 5.0
    """Opening a connection to a neuron."""
    first_byte_timeout_s: PositiveSeconds = 300.0
    """A routed request's answer must start within this (504 otherwise)."""
    stream_idle_timeout_s: PositiveSeconds = 300.0
    """The longest silence between two chunks of a stream (the stream ends with an error)."""
    max_waiting: PositiveInt = 256
    """Requests that may wait for one model's cold load; beyond it, 429 with Retry-After."""
    allow_uncatalogued_loads: bool = False
    """Whether ``/admin/models/load`` may load ids outside the catalogue."""
    shutdown_grace_s: NonNegSeconds = 60.0
    """On SIGTERM, how long requests in flight may finish (``/health`` answers 503 meanwhile)."""
    workers: PositiveInt = 1
    """Gateway processes sharing the listen socket (the metrics port shows their sum)."""
    header_timeout_s: PositiveSeconds = 10.0
    """A request's headers must arrive in full within this of their first byte (the
    connection is closed otherwise); an idle connection is kept 75 s."""
    max_connections: PositiveInt = 4096
    """Client connections open at once, per gateway process; beyond it, a 503 and close."""
    max_dashboard_streams: PositiveInt = 64
    """Dashboard event streams (/ui/events) open at once, per process; beyond, 503."""


class EvictionSection(_Config):
    strategy: Literal["lru", "priority"] = "lru"
    idle_timeout_s: NonNegSeconds = 0.0
    """0: never unload a model for idleness alone."""
    defrag_after_cycles: NonNegInt = 50
    """0: never repack a node."""


class SchedulingSection(_Config):
    policy: Literal["grouped", "fifo"] = "grouped"
    """grouped: a loaded model's requests go before a swap away from it (bounded by
    max_swap_wait_s); fifo: first come, first served."""
    max_swap_wait_s: NonNegSeconds = 30.0
    """The longest a request is held back for a loaded model's sake before a swap."""
    max_in_flight_per_model: NonNegInt = 0
    """Requests one model may have in flight on one node; beyond it they wait at the gateway,
    interactive first, then round-robin across keys. 0: the engine's own batch limit (the
    neuron's ``max_num_seqs``; no cap if the neuron does not say)."""
    interactive_slots: NonNegInt = 1
    """Of that cap, how many slots only interactive requests may take (a batch flood leaves
    them free); batch requests always keep at least one."""


class RoutingSection(_Config):
    policy: Literal["prefix", "least_loaded"] = "prefix"
    """prefix: send a prompt back to the node that was sent its prefix, unless that node
    is busier than the least busy by more than max_imbalance; least_loaded: fewest in flight."""
    prefix_block_chars: PositiveInt = 256
    """The prefix index's block: prompts are compared a block of this many bytes at a time."""
    max_imbalance: NonNegInt = 4
    """How many more requests in flight the node holding the prefix may have than the least busy."""
    min_prefix_match: Fraction = 0.5
    """The share of a prompt's blocks a node must hold to be preferred for it; below, the
    prompt counts as new (a shared system prompt alone does not pull every conversation)."""
    prefix_index_blocks: PositiveInt = 65536
    """The most prefix blocks the index remembers (least recently used go first)."""


class AnthropicSection(_Config):
    strip_billing_header: bool = True
    """Drop a first system block starting ``x-anthropic-billing-header:`` (Claude Code's,
    different on every request) before routing, counting and forwarding."""
    session_affinity: bool = True
    """With prefix routing, a Claude Code session (``X-Claude-Code-Session-Id``) goes back
    to the node that served it last, as a whole prefix match would."""


class NeuronEntry(_Config):
    name: str
    endpoint: str
    token_env: str | None = None
    """The environment variable holding the token the gateway sends this neuron."""


KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A ``[[keys]]`` name: it shows in metrics, logs and the dashboard."""
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class KeyEntry(_Config):
    """One ``[[keys]]`` entry: a named key, what it may use, its limits and its class."""

    name: str
    key_env: str | None = None
    """The environment variable holding the key (read at start and on reload)."""
    key_sha256: str | None = None
    """The key's SHA-256, in hex: the key itself is never in the file."""
    role: Literal["user", "admin"] = "user"
    priority: Literal["interactive", "batch"] = "interactive"
    max_concurrent: NonNegInt = 0
    """This key's requests in flight at once; 0: no limit."""
    tokens_per_minute: NonNegInt = 0
    """Prompt and completion tokens over a sliding minute; 0: no limit."""
    models: list[str] = field(default_factory=list)
    """Ids and aliases this key may use (``*`` and ``?`` globs); empty: every model."""
    isolate_cache: bool = False
    """A per-key ``cache_salt``, and prefixes shared with no other key."""

    def policy(self) -> tuple[object, ...]:
        """Everything but the key: entries sharing a name must agree on it."""
        return (
            self.role,
            self.priority,
            self.max_concurrent,
            self.tokens_per_minute,
            self.models,
            self.isolate_cache,
        )


class CortexConfig(_Config):
    """``cortex.toml`` as written."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    eviction: EvictionSection = field(default_factory=EvictionSection)
    scheduling: SchedulingSection = field(default_factory=SchedulingSection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    anthropic: AnthropicSection = field(default_factory=AnthropicSection)
    neurons: list[NeuronEntry] = field(default_factory=list)
    keys: list[KeyEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway reads at start: ``cortex.toml`` and the catalogue it names."""

    path: Path
    cortex: CortexConfig
    models_path: Path
    catalogue: Catalogue

    def neuron(self, name: str) -> NeuronEntry | None:
        """The configured neuron called ``name``, if any."""
        return next((n for n in self.cortex.neurons if n.name == name), None)

    def neuron_tokens(self, environ: Mapping[str, str]) -> dict[str, str | None]:
        """Each neuron's token from its ``token_env``; a ConfigError names one that is unset."""
        return {
            n.name: env_token(self.path, f"neurons[{i}].token_env", n.token_env, environ)
            for i, n in enumerate(self.cortex.neurons)
        }


def env_token(path: Path, key: str, variable: str | None, environ: Mapping[str, str]) -> str | None:
    """The secret in ``$variable`` (``None`` without one); unset or empty is a ConfigError."""
    if variable is None:
        return None
    value = environ.get(variable, "").strip()
    if not value:
        raise ConfigError(path, key, f"names ${variable}, which is not set or empty")
    return value


def _validate_cortex(path: Path, config: CortexConfig) -> None:
    gateway = config.gateway
    check_value(path, "gateway.listen", parse_hostport, gateway.listen)
    check_value(path, "gateway.metrics_listen", parse_hostport, gateway.metrics_listen)
    if gateway.listen == gateway.metrics_listen:
        raise ConfigError(path, "gateway.metrics_listen", "must differ from gateway.listen")
    for name in ("api_keys", "admin_keys"):
        for i, key in enumerate(getattr(gateway, name)):
            if not key.strip():
                raise ConfigError(path, f"gateway.{name}[{i}]", "a key may not be empty")
    seen: set[str] = set()
    for i, neuron in enumerate(config.neurons):
        check_value(path, f"neurons[{i}].name", check_name, neuron.name)
        check_value(path, f"neurons[{i}].endpoint", check_url, neuron.endpoint)
        if neuron.name in seen:
            raise ConfigError(path, f"neurons[{i}].name", f"duplicate neuron name {neuron.name!r}")
        seen.add(neuron.name)
        if neuron.token_env is not None and not neuron.token_env.strip():
            raise ConfigError(path, f"neurons[{i}].token_env", "may not be empty")
    _validate_keys(path, config.keys)


def _validate_keys(path: Path, keys: list[KeyEntry]) -> None:
    """Names, one way to give each key, no key twice, and one policy per name."""
    first: dict[str, int] = {}
    given: dict[str, int] = {}
    for i, entry in enumerate(keys):
        at = f"keys[{i}]"
        if not KEY_NAME.fullmatch(entry.name):
            raise ConfigError(
                path, f"{at}.name", f"{entry.name!r}: use 1 to 64 letters, digits, '.', '_', '-'"
            )
        if (entry.key_env is None) == (entry.key_sha256 is None):
            raise ConfigError(path, at, "give exactly one of `key_env` or `key_sha256`")
        if entry.key_env is not None and not entry.key_env.strip():
            raise ConfigError(path, f"{at}.key_env", "may not be empty")
        if entry.key_sha256 is not None and not _SHA256.fullmatch(entry.key_sha256):
            raise ConfigError(path, f"{at}.key_sha256", "must be 64 hexadecimal digits")
        for j, pattern in enumerate(entry.models):
            if not pattern.strip():
                raise ConfigError(path, f"{at}.models[{j}]", "may not be empty")
        source = f"env:{entry.key_env}" if entry.key_env else f"sha:{entry.key_sha256}".lower()
        if source in given:
            raise ConfigError(path, at, f"gives the same key as keys[{given[source]}]")
        given[source] = i
        if entry.name in first:
            # Two entries, one name: a key being rotated. They are one tenant.
            j = first[entry.name]
            if keys[j].policy() != entry.policy():
                raise ConfigError(
                    path,
                    at,
                    f"shares the name {entry.name!r} with keys[{j}] (a rotation) but not its"
                    " role, priority, limits, models or isolate_cache",
                )
        else:
            first[entry.name] = i


def load_cortex_config(path: str | Path) -> CortexConfig:
    """Load and validate ``cortex.toml`` alone; raise :class:`ConfigError`."""
    path = Path(path)
    config = convert_section(read_toml(path), CortexConfig, path)
    _validate_cortex(path, config)
    return config


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Load and validate ``cortex.toml`` and its ``models.toml``; raise :class:`ConfigError`."""
    path = Path(path)
    config = load_cortex_config(path)
    models_path = Path(config.gateway.models)
    if not models_path.is_absolute():
        models_path = path.parent / models_path
    catalogue = load_catalogue(models_path)
    check_catalogue_nodes(path, models_path, config, catalogue)
    return GatewayConfig(path=path, cortex=config, models_path=models_path, catalogue=catalogue)


def check_catalogue_nodes(
    path: Path, models_path: Path, config: CortexConfig, catalogue: Catalogue
) -> None:
    """Refuse a catalogue whose ``nodes`` name a neuron ``cortex.toml`` does not define."""
    known = {n.name for n in config.neurons}
    for i, profile in enumerate(catalogue.models):
        for node in profile.nodes or ():
            if node not in known:
                raise ConfigError(
                    models_path,
                    f"models[{i}].nodes",
                    f"names neuron {node!r}, which {path.name} does not define"
                    f" (defined: {', '.join(sorted(known)) or 'none'})",
                )


# --- neuron.toml --------------------------------------------------------------------


class NeuronSection(_Config):
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "neuron")
    listen: str = "0.0.0.0:13131"
    advertise_url: str = "http://localhost:13131"
    """What ``/models/{id}/endpoint`` hands out; the gateway rewrites loopback hosts."""
    cache_dir: str = "/var/cache/neuron"
    default_source: str = "huggingface"
    memory_limit_gb: PositiveGiB | None = None
    """At most this much memory planned for all engines together; none: free memory decides."""
    token_env: str | None = None
    """The environment variable holding the token every route but /health and /metrics needs."""
    engine_env: str | None = None
    """A virtual environment holding vLLM (``neuron engine install`` makes it); the neuron
    runs in it. None: vLLM is in the neuron's own environment."""
    sleep_memory_gb: PositiveGiB | None = None
    """Host memory sleeping models may hold together (vLLM's sleep mode, GPUs only); none:
    nothing sleeps, an eviction unloads."""


class SourceConfig(_Config):
    """A place models come from: a hub-compatible ``endpoint`` or a local ``path``."""

    endpoint: str | None = None
    token_env: str | None = None
    """The environment variable holding this source's token, if it needs one."""
    path: str | None = None

    @property
    def kind(self) -> Literal["hub", "path"]:
        """``hub`` for a hub-compatible endpoint, ``path`` for a directory."""
        return "path" if self.path is not None else "hub"


DEFAULT_SOURCES: dict[str, SourceConfig] = {
    "huggingface": SourceConfig(endpoint="https://huggingface.co", token_env="HF_TOKEN"),
}
"""The sources a ``neuron.toml`` without ``[sources]`` has."""


class NeuronConfig(_Config):
    """``neuron.toml``."""

    neuron: NeuronSection = field(default_factory=NeuronSection)
    sources: dict[str, SourceConfig] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    engine: dict[str, Any] = field(default_factory=dict)
    """Engine options for every load; a load's own options override them."""


def _validate_neuron(path: Path, config: NeuronConfig) -> None:
    section = config.neuron
    check_value(path, "neuron.name", check_name, section.name)
    check_value(path, "neuron.listen", parse_hostport, section.listen)
    check_value(path, "neuron.advertise_url", check_url, section.advertise_url)
    if not section.cache_dir:
        raise ConfigError(path, "neuron.cache_dir", "may not be empty")
    if section.engine_env is not None and not Path(section.engine_env).is_absolute():
        raise ConfigError(path, "neuron.engine_env", "must be an absolute path")
    for name, source in config.sources.items():
        key = f"sources.{toml_key(name)}"
        check_value(path, key, validate_source_name, name)
        if (source.endpoint is None) == (source.path is None):
            raise ConfigError(path, key, "give exactly one of `endpoint` (a hub) or `path`")
        if source.endpoint is not None:
            check_value(path, f"{key}.endpoint", check_url, source.endpoint)
        elif source.token_env is not None:
            raise ConfigError(path, f"{key}.token_env", "only a hub `endpoint` source uses a token")
        elif not source.path:
            raise ConfigError(path, f"{key}.path", "may not be empty")
    if section.default_source not in config.sources:
        raise ConfigError(
            path,
            "neuron.default_source",
            f"names source {section.default_source!r}, which [sources] does not define"
            f" (defined: {', '.join(sorted(config.sources)) or 'none'})",
        )


def load_neuron_config(path: str | Path) -> NeuronConfig:
    """Load and validate ``neuron.toml``; raise :class:`ConfigError`."""
    path = Path(path)
    data = read_toml(path)
    sources = data.pop("sources", None)
    config = convert_section(data, NeuronConfig, path)
    if sources is not None:
        config.sources = convert_table(sources, SourceConfig, path, "sources")
    _validate_neuron(path, config)
    return config
