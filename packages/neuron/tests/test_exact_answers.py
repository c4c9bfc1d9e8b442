"""Every real engine whose answer is checked (the demo, the real-engine tests) runs in float32.

bfloat16 on a CPU rounds SmolLM2's near-tie first token differently on AMX
and AVX-512 kernels ("Paris" on one, French on the other: docs/neuron.md,
"CPU engines"); float32 answers alike on both. These checks fail if one of
those engines loses its float32 setting.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

from cortex_core.catalogue import load_catalogue

REPO = Path(__file__).parents[3]
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def module_at(path: Path) -> ModuleType:
    """A test module imported by path (its tests are not collected or run)."""
    spec = importlib.util.spec_from_file_location(f"_exact_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_options(catalogue_toml: str, model_id: str) -> dict[str, Any]:
    models = {m["id"]: m for m in tomllib.loads(catalogue_toml)["models"]}
    options: dict[str, Any] = models[model_id].get("engine", {})
    return options


def test_the_demo_runs_smollm2_in_float32() -> None:
    """`make demo` prints SmolLM2's answer: its engine options say float32."""
    catalogue = load_catalogue(REPO / "configs" / "demo" / "models.toml")
    assert catalogue.resolve_alias("helexa/small") == SMOLLM2
    profile = catalogue.profile(SMOLLM2)
    assert profile is not None
    assert profile.engine.get("dtype") == "float32"


def test_the_gateway_real_engine_test_loads_smollm2_in_float32() -> None:
    """tests/test_gateway_vllm.py asserts "Paris" from test/smollm2 through the gateway."""
    module = module_at(REPO / "tests" / "test_gateway_vllm.py")
    assert engine_options(module.CATALOGUE, "test/smollm2")["dtype"] == "float32"


def test_the_neuron_real_engine_test_loads_smollm2_in_float32() -> None:
    """packages/neuron/tests/test_neuron_e2e.py asserts "Paris" from its SmolLM2 load."""
    module = module_at(REPO / "packages" / "neuron" / "tests" / "test_neuron_e2e.py")
    assert module.SMOL_OPTIONS["dtype"] == "float32"
