"""Every config file the project ships passes what `cortex check` and `neuron check` run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex_core.config import load_gateway_config, load_neuron_config

CONFIGS = Path(__file__).parents[3] / "configs"


@pytest.mark.parametrize("path", ["cortex.example.toml", "demo/cortex.toml"])
def test_gateway_configs(path: str) -> None:
    """The example and the demo's cortex.toml load with the models.toml they name."""
    config = load_gateway_config(CONFIGS / path)
    assert config.cortex.neurons


def test_the_packaged_models_toml_is_empty_and_safe() -> None:
    """What the RPM installs pins nothing, aliases nothing and names no unreachable source."""
    config = load_gateway_config(CONFIGS / "cortex.example.toml")
    assert config.models_path == CONFIGS / "models.toml"
    assert len(config.catalogue) == 0
    assert not config.catalogue.aliases


def test_the_full_models_example(tmp_path: Path) -> None:
    """models.example.toml, every key shown, loads against the example's neurons."""
    cortex = (CONFIGS / "cortex.example.toml").read_text()
    (tmp_path / "cortex.toml").write_text(
        cortex.replace('models = "models.toml"', f'models = "{CONFIGS / "models.example.toml"}"')
    )
    config = load_gateway_config(tmp_path / "cortex.toml")
    assert config.catalogue.aliases
    assert any(p.pinned for p in config.catalogue.models)


@pytest.mark.parametrize("path", ["neuron.example.toml", "demo/neuron.toml"])
def test_neuron_configs(path: str) -> None:
    """The example and the demo's neuron.toml load."""
    assert load_neuron_config(CONFIGS / path).neuron.name
