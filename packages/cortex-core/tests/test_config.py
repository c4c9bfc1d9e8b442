"""Loading cortex.toml and neuron.toml: defaults, and every error naming file and key."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cortex_core.catalogue import ModelProfile
from cortex_core.config import (
    DEFAULT_SOURCES,
    AnthropicSection,
    ConfigError,
    EvictionSection,
    GatewaySection,
    KeyEntry,
    NeuronEntry,
    NeuronSection,
    SchedulingSection,
    SourceConfig,
    load_gateway_config,
    load_neuron_config,
    parse_hostport,
)

CONFIGS = Path(__file__).parents[3] / "configs"
Write = Callable[[str, str], Path]

NEURONS = """
[[neurons]]
name = "beast"
endpoint = "http://beast.internal:13131"

[[neurons]]
name = "benjy"
endpoint = "http://benjy.internal:13131"
"""

MODELS = """
[aliases]
"helexa/small" = "Qwen/Qwen3-1.7B"

[[models]]
id = "Qwen/Qwen3-1.7B"
"""


def test_example_configs_load(tmp_path: Path) -> None:
    """The shipped example files are valid and say what the comments promise."""
    (tmp_path / "cortex.toml").write_text((CONFIGS / "cortex.example.toml").read_text())
    (tmp_path / "models.toml").write_text((CONFIGS / "models.example.toml").read_text())
    config = load_gateway_config(tmp_path / "cortex.toml")
    assert [n.name for n in config.cortex.neurons] == ["beast", "benjy"]
    assert config.models_path == tmp_path / "models.toml"
    assert config.catalogue.resolve_alias("helexa/small") == "Qwen/Qwen3-1.7B"
    assert config.catalogue.resolve_alias("helexa/balanced") == "Qwen/Qwen3-8B"
    assert config.catalogue.resolve_alias("helexa/large") == "Qwen/Qwen3.6-27B"
    neuron = load_neuron_config(CONFIGS / "neuron.example.toml")
    assert neuron.neuron.name == "beast"
    assert neuron.sources["local"].kind == "path"
    assert neuron.sources["huggingface"].kind == "hub"
    assert "helexa" not in neuron.sources  # commented out until the registry serves models
    assert neuron.neuron.engine_env is None  # the RPM's copy sets it
    assert neuron.engine == {"enforce_eager": False}


def test_gateway_defaults(write: Write) -> None:
    """A cortex.toml naming only neurons gets the defaults docs/configuration.md gives."""
    write("models.toml", MODELS)
    config = load_gateway_config(write("cortex.toml", NEURONS))
    gateway = config.cortex.gateway
    assert (gateway.listen, gateway.metrics_listen) == ("0.0.0.0:31313", "0.0.0.0:31314")
    assert (gateway.poll_interval_s, gateway.load_timeout_s) == (5.0, 900.0)
    assert gateway.api_keys == []
    eviction = config.cortex.eviction
    assert (eviction.strategy, eviction.idle_timeout_s, eviction.defrag_after_cycles) == (
        "lru",
        0.0,
        50,
    )
    assert config.neuron("benjy") is not None
    assert config.neuron("nope") is None
    anthropic = config.cortex.anthropic
    assert (anthropic.strip_billing_header, anthropic.session_affinity) == (True, True)


def test_keys_defaults_and_a_rotation(write: Write) -> None:
    """A named key gets the documented defaults; two entries may share a name (a rotation)."""
    write("models.toml", MODELS)
    digest = "ab" * 32
    config = load_gateway_config(
        write(
            "cortex.toml",
            f'[[keys]]\nname = "alice"\nkey_env = "A1"\n'
            f'[[keys]]\nname = "alice"\nkey_sha256 = "{digest.upper()}"\n',
        )
    )
    first, second = config.cortex.keys
    assert (first.role, first.priority, first.max_concurrent, first.tokens_per_minute) == (
        "user",
        "interactive",
        0,
        0,
    )
    assert (first.models, first.isolate_cache) == ([], False)
    assert second.key_sha256 == digest.upper()
    assert config.cortex.scheduling.max_in_flight_per_model == 0
    assert config.cortex.scheduling.interactive_slots == 1


def test_models_path_absolute(write: Write, tmp_path: Path) -> None:
    """An absolute `models` path is used as is."""
    models = write("elsewhere.toml", MODELS)
    config = load_gateway_config(write("cortex.toml", f'[gateway]\nmodels = "{models}"\n'))
    assert config.models_path == models
    assert len(config.catalogue) == 1


def test_neuron_defaults(write: Write) -> None:
    """An empty neuron.toml gets the default huggingface source and the documented defaults."""
    config = load_neuron_config(write("neuron.toml", ""))
    assert config.neuron.listen == "0.0.0.0:13131"
    assert config.neuron.advertise_url == "http://localhost:13131"
    assert config.neuron.cache_dir == "/var/cache/neuron"
    assert config.neuron.default_source == "huggingface"
    assert config.sources == DEFAULT_SOURCES
    assert config.neuron.name


@pytest.mark.parametrize(
    ("cortex", "key", "problem"),
    [
        ("[gatway]\n", "gatway", "unknown key"),
        ('[gateway]\nlisen = "x"\n', "gateway.lisen", "unknown key"),
        (
            '[gateway]\npoll_interval_s = "5"\n',
            "gateway.poll_interval_s",
            "expected a number, got a string",
        ),
        ("[gateway]\npoll_interval_s = 0\n", "gateway.poll_interval_s", "expected a number > 0"),
        ("[gateway]\nload_timeout_s = -1\n", "gateway.load_timeout_s", "expected a number > 0"),
        ("[gateway]\napi_keys = [1]\n", "gateway.api_keys[0]", "expected a string, got an integer"),
        ('[gateway]\napi_keys = [" "]\n', "gateway.api_keys[0]", "may not be empty"),
        ('[gateway]\nlisten = "nope"\n', "gateway.listen", "is not host:port"),
        (
            '[gateway]\nlisten = "0.0.0.0:99999"\n',
            "gateway.listen",
            "port must be a number from 1 to 65535",
        ),
        ('[gateway]\nmetrics_listen = "::1:80"\n', "gateway.metrics_listen", "in brackets"),
        ('[gateway]\nlisten = "[::1:80"\n', "gateway.listen", "unclosed '['"),
        (
            '[gateway]\nlisten = "127.0.0.1:5"\nmetrics_listen = "127.0.0.1:5"\n',
            "gateway.metrics_listen",
            "must differ from gateway.listen",
        ),
        ("[gateway]\nmax_body_bytes = 0\n", "gateway.max_body_bytes", "expected an integer >= 1"),
        (
            '[eviction]\nstrategy = "fifo"\n',
            "eviction.strategy",
            "must be one of 'lru', 'priority'",
        ),
        ("[eviction]\nidle_timeout_s = -5\n", "eviction.idle_timeout_s", "expected a number >= 0"),
        (
            "[eviction]\ndefrag_after_cycles = 1.5\n",
            "eviction.defrag_after_cycles",
            "expected an integer, got a number",
        ),
        (
            '[anthropic]\nstrip_billing_header = "yes"\n',
            "anthropic.strip_billing_header",
            "expected true or false, got a string",
        ),
        ("[anthropic]\nstrip_cch = true\n", "anthropic.strip_cch", "unknown key"),
        ('[[neurons]]\nname = "a"\n', "neurons[0].endpoint", "required key is missing"),
        ('[[neurons]]\nendpoint = "http://a:1"\n', "neurons[0].name", "required key is missing"),
        (
            '[[neurons]]\nname = "a b"\nendpoint = "http://a:1"\n',
            "neurons[0].name",
            "not a valid name",
        ),
        (
            '[[neurons]]\nname = "a"\nendpoint = "a:13131"\n',
            "neurons[0].endpoint",
            "not an http:// or https:// URL",
        ),
        (
            '[[neurons]]\nname = "a"\nendpoint = "http://a:x"\n',
            "neurons[0].endpoint",
            "invalid port",
        ),
        (
            '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\ncolor = 3\n',
            "neurons[0].color",
            "unknown key",
        ),
        (
            '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n[[neurons]]\nname = "a"\nendpoint = "http://b:1"\n',
            "neurons[1].name",
            "duplicate neuron name 'a'",
        ),
        ('[[keys]]\nname = "a b"\nkey_env = "K"\n', "keys[0].name", "1 to 64 letters"),
        (f'[[keys]]\nname = "{"x" * 65}"\nkey_env = "K"\n', "keys[0].name", "1 to 64"),
        ('[[keys]]\nname = "a"\n', "keys[0]", "exactly one of `key_env` or `key_sha256`"),
        (
            f'[[keys]]\nname = "a"\nkey_env = "K"\nkey_sha256 = "{"0" * 64}"\n',
            "keys[0]",
            "exactly one of",
        ),
        ('[[keys]]\nname = "a"\nkey_env = " "\n', "keys[0].key_env", "may not be empty"),
        (
            '[[keys]]\nname = "a"\nkey_sha256 = "abc"\n',
            "keys[0].key_sha256",
            "64 hexadecimal digits",
        ),
        (
            '[[keys]]\nname = "a"\nkey_env = "K"\nrole = "root"\n',
            "keys[0].role",
            "must be one of 'admin', 'user'",
        ),
        (
            '[[keys]]\nname = "a"\nkey_env = "K"\npriority = "urgent"\n',
            "keys[0].priority",
            "must be one of 'batch', 'interactive'",
        ),
        (
            '[[keys]]\nname = "a"\nkey_env = "K"\nmax_concurrent = -1\n',
            "keys[0].max_concurrent",
            "expected an integer >= 0",
        ),
        ('[[keys]]\nname = "a"\nkey_env = "K"\nmodels = [""]\n', "keys[0].models[0]", "empty"),
        (
            '[[keys]]\nname = "a"\nkey_env = "K"\n[[keys]]\nname = "b"\nkey_env = "K"\n',
            "keys[1]",
            "gives the same key as keys[0]",
        ),
        (
            '[[keys]]\nname = "a"\nkey_env = "K1"\n'
            '[[keys]]\nname = "a"\nkey_env = "K2"\npriority = "batch"\n',
            "keys[1]",
            "shares the name 'a' with keys[0] (a rotation) but not its role, priority",
        ),
        (
            "[scheduling]\nmax_in_flight_per_model = -2\n",
            "scheduling.max_in_flight_per_model",
            "expected an integer >= 0",
        ),
    ],
)
def test_cortex_errors(write: Write, cortex: str, key: str, problem: str) -> None:
    """Each cortex.toml mistake is refused with the file, the key and the problem."""
    write("models.toml", MODELS)
    path = write("cortex.toml", cortex)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path)
    error = info.value
    assert (error.file, error.key) == (str(path), key)
    assert problem in error.problem
    assert str(error).startswith(f"{path}: {key}: ")


@pytest.mark.parametrize(
    ("models", "key", "problem"),
    [
        ("[[models]]\n", "models[0].id", "required key is missing"),
        ('[[models]]\nid = "Qwen/Qwen3"\npinnd = true\n', "models[0].pinnd", "unknown key"),
        ('[[models]]\nid = "Qwen3"\n', "models[0].id", "missing '/'"),
        ('[[models]]\nid = "helexa:Qwen/Qwen3"\n', "models[0].id", "source = 'helexa'"),
        (
            '[[models]]\nid = "Qwen/Qwen3"\nsource = "he xa"\n',
            "models[0].source",
            "invalid source name",
        ),
        (
            '[[models]]\nid = "Qwen/Qwen3"\nmemory_gb = 0\n',
            "models[0].memory_gb",
            "expected a number > 0",
        ),
        (
            '[[models]]\nid = "Qwen/Qwen3"\npriority = "high"\n',
            "models[0].priority",
            "expected an integer",
        ),
        (
            '[[models]]\nid = "Qwen/Qwen3"\nnodes = []\n',
            "models[0].nodes",
            "places the model nowhere",
        ),
        (
            '[[models]]\nid = "Qwen/Qwen3"\nnodes = ["beast", "bob"]\n',
            "models[0].nodes",
            "names neuron 'bob', which cortex.toml does not define (defined: beast, benjy)",
        ),
        (
            '[[models]]\nid = "Qwen/Qwen3"\n[[models]]\nid = "Qwen/Qwen3"\n',
            "models[1].id",
            "duplicate model id 'Qwen/Qwen3'",
        ),
        (
            '[aliases]\n"helexa/small" = "Qwen/Nope"\n[[models]]\nid = "Qwen/Qwen3"\n',
            'aliases."helexa/small"',
            "points at 'Qwen/Nope', which is not a model in [[models]]",
        ),
        (
            '[aliases]\n"a/b" = "Qwen/Qwen3"\n"c/d" = "a/b"\n[[models]]\nid = "Qwen/Qwen3"\n',
            'aliases."c/d"',
            "points at another alias 'a/b'",
        ),
        (
            '[aliases]\n"Qwen/Qwen3" = "Qwen/Other"\n[[models]]\nid = "Qwen/Qwen3"\n'
            '[[models]]\nid = "Qwen/Other"\n',
            'aliases."Qwen/Qwen3"',
            "hides the model with the same id",
        ),
        (
            '[aliases]\n"" = "Qwen/Qwen3"\n[[models]]\nid = "Qwen/Qwen3"\n',
            'aliases.""',
            "may not be empty",
        ),
        ("[aliases]\nsmall = 3\n", "aliases.small", "expected a string, got an integer"),
        ("models = 3\n", "models", "expected a list, got an integer"),
    ],
)
def test_models_errors(write: Write, models: str, key: str, problem: str) -> None:
    """Each models.toml mistake is refused naming models.toml, the key and the problem."""
    models_path = write("models.toml", models)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(write("cortex.toml", NEURONS))
    error = info.value
    assert (error.file, error.key) == (str(models_path), key)
    assert problem in error.problem


@pytest.mark.parametrize(
    ("neuron", "key", "problem"),
    [
        ("[neuron]\nport = 1\n", "neuron.port", "unknown key"),
        ('[neuron]\nname = "no good"\n', "neuron.name", "not a valid name"),
        ('[neuron]\nlisten = "13131"\n', "neuron.listen", "is not host:port"),
        ('[neuron]\nadvertise_url = "localhost:13131"\n', "neuron.advertise_url", "not an http://"),
        ('[neuron]\ncache_dir = ""\n', "neuron.cache_dir", "may not be empty"),
        ("[neuron]\ncache_dir = 5\n", "neuron.cache_dir", "expected a string, got an integer"),
        (
            '[neuron]\ndefault_source = "helexa"\n',
            "neuron.default_source",
            "names source 'helexa', which [sources] does not define (defined: huggingface)",
        ),
        ('[sources.x]\nendpoint = "http://h"\npath = "/m"\n', "sources.x", "exactly one of"),
        ("[sources.x]\n", "sources.x", "exactly one of"),
        ('[sources.x]\nendpoint = "ftp://h"\n', "sources.x.endpoint", "not an http://"),
        ('[sources.x]\npath = "/m"\ntoken_env = "T"\n', "sources.x.token_env", "only a hub"),
        ('[sources.x]\npath = ""\n', "sources.x.path", "may not be empty"),
        ('[sources."b d"]\npath = "/m"\n', 'sources."b d"', "invalid source name"),
        ('[sources.x]\nurl = "http://h"\n', "sources.x.url", "unknown key"),
        ("[engine]\n[bogus]\n", "bogus", "unknown key"),
        ("engine = 3\n", "engine", "expected a table, got an integer"),
    ],
)
def test_neuron_errors(write: Write, neuron: str, key: str, problem: str) -> None:
    """Each neuron.toml mistake is refused with the file, the key and the problem."""
    path = write("neuron.toml", neuron)
    with pytest.raises(ConfigError) as info:
        load_neuron_config(path)
    error = info.value
    assert (error.file, error.key) == (str(path), key)
    assert problem in error.problem


def test_default_source_must_be_defined_when_sources_given(write: Write) -> None:
    """Declaring [sources] replaces the default set, so the default source must be among them."""
    path = write("neuron.toml", '[sources.local]\npath = "/srv/models"\n')
    with pytest.raises(ConfigError, match=r"neuron\.default_source: names source 'huggingface'"):
        load_neuron_config(path)
    config = load_neuron_config(
        write("neuron.toml", '[neuron]\ndefault_source = "local"\n[sources.local]\npath = "/m"\n')
    )
    assert list(config.sources) == ["local"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("[gateway\n", "not valid TOML"), ("a = = 1\n", "not valid TOML"), ("\udcff", "cannot read")],
)
def test_unreadable_files(write: Write, tmp_path: Path, text: str, problem: str) -> None:
    """Broken TOML, undecodable and missing files name the file, with no key."""
    path = tmp_path / "cortex.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path)
    assert info.value.key is None
    assert problem in info.value.problem
    with pytest.raises(ConfigError, match="file not found"):
        load_neuron_config(tmp_path / "absent.toml")


def test_missing_models_file_names_it(write: Write, tmp_path: Path) -> None:
    """A cortex.toml whose catalogue is missing names the catalogue's path."""
    with pytest.raises(ConfigError) as info:
        load_gateway_config(write("cortex.toml", '[gateway]\nmodels = "cat.toml"\n'))
    assert info.value.file == str(tmp_path / "cat.toml")
    assert info.value.problem == "file not found"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:31313", ("0.0.0.0", 31313)),
        ("[::1]:80", ("::1", 80)),
        ("host.internal:1", ("host.internal", 1)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    """host:port and [v6]:port split into host and port."""
    assert parse_hostport(text) == expected


@pytest.fixture
def write(write_file: Write) -> Write:
    """Shorthand for the shared file writer."""
    return write_file


def _keys(type_: Any) -> set[str]:
    info = msgspec.inspect.type_info(type_)
    assert isinstance(info, msgspec.inspect.StructType)
    return {field.encode_name for field in info.fields}


@pytest.mark.parametrize(
    ("heading", "type_"),
    [
        ("### `[gateway]`", GatewaySection),
        ("### `[eviction]`", EvictionSection),
        ("### `[scheduling]`", SchedulingSection),
        ("### `[anthropic]`", AnthropicSection),
        ("### `[[neurons]]`", NeuronEntry),
        ("### `[[keys]]`", KeyEntry),
        ("### `[[models]]`", ModelProfile),
        ("### `[neuron]`", NeuronSection),
        ("### `[sources.NAME]`", SourceConfig),
    ],
)
def test_configuration_doc_lists_every_key(heading: str, type_: Any) -> None:
    """docs/configuration.md documents every key of each config section, and no other."""
    doc = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()
    section = doc.split(heading, 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE))
    assert documented == _keys(type_)
