"""Any config file loads or is refused with one ConfigError naming the file: never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex_core.config import ConfigError, load_gateway_config, load_neuron_config

KEYS = st.sampled_from(
    [
        "gateway", "eviction", "neurons", "neuron", "sources", "engine", "listen",
        "metrics_listen", "models", "poll_interval_s", "load_timeout_s", "api_keys",
        "admin_keys", "max_body_bytes", "body_timeout_s", "connect_timeout_s", "max_waiting",
        "allow_uncatalogued_loads", "shutdown_grace_s", "strategy", "idle_timeout_s", "name",
        "endpoint", "token_env", "cache_dir", "default_source", "path", "memory_limit_gb",
        "advertise_url", "aliases", "id", "nodes", "pinned", "priority", "memory_gb", "x",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["0.0.0.0:31313", "127.0.0.1:1", "http://a:1", "lru", "x/y", "models.toml"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=5)


def _toml(document: dict[str, Any]) -> str | None:
    try:
        return tomlkit.dumps(_without_none(document))
    except (TypeError, ValueError):
        return None


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


# The profile's checks (conftest.py: untimed), and tmp_path shared by a test's examples.
_CHECKS = [*settings().suppress_health_check, HealthCheck.function_scoped_fixture]
PROPERTIES = settings(suppress_health_check=_CHECKS)


@PROPERTIES
@given(cortex=DOCUMENTS, models=DOCUMENTS)
def test_any_gateway_config_loads_or_names_the_problem(
    tmp_path: Path, cortex: dict[str, Any], models: dict[str, Any]
) -> None:
    """cortex.toml and models.toml of any shape: a config, or one ConfigError naming a file."""
    cortex_text, models_text = _toml(cortex), _toml(models)
    if cortex_text is None or models_text is None:
        return
    (tmp_path / "cortex.toml").write_text(cortex_text)
    (tmp_path / "models.toml").write_text(models_text)
    error: ConfigError | None = None
    try:
        load_gateway_config(tmp_path / "cortex.toml")
    except ConfigError as exc:
        error = exc
    assert error is None or str(error).startswith(str(tmp_path))


@PROPERTIES
@given(neuron=DOCUMENTS)
def test_any_neuron_config_loads_or_names_the_problem(
    tmp_path: Path, neuron: dict[str, Any]
) -> None:
    """neuron.toml of any shape: a config, or one ConfigError naming the file."""
    text = _toml(neuron)
    if text is None:
        return
    (tmp_path / "neuron.toml").write_text(text)
    error: ConfigError | None = None
    try:
        load_neuron_config(tmp_path / "neuron.toml")
    except ConfigError as exc:
        error = exc
    assert error is None or str(error).startswith(str(tmp_path / "neuron.toml"))
