"""The real SmolLM2 GGUF against the real vLLM CPU build: why it is refused, and that it is.

vLLM 0.32 has no GGUF support of its own (removed in 0.24, vllm-project/vllm#39583):
it lives in the ``vllm-gguf-plugin`` package, whose kernels are CUDA (or ROCm),
with Triton fallbacks; the CPU build has neither. So on this neuron a GGUF-only
repository is sized and its header read, then refused by preflight with
``unsupported_model`` and that reason, before any engine starts. The tests
check both halves: what vLLM lacks, and what the neuron answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cortex_core.config import NeuronConfig, NeuronSection, SourceConfig
from neuron.app import create_app
from neuron.testing.models import SMOLLM2_GGUF, smollm2_gguf
from neuron.vllm_engine import GGUF_PLUGIN, VllmEngineFactory

pytestmark = [
    pytest.mark.slow,  # imports vLLM
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def test_vllm_cpu_has_no_gguf_loader() -> None:
    """No in-tree "gguf" quantization or load format, and no plugin for the CPU build."""
    import importlib.util

    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.model_executor.model_loader import _LOAD_FORMAT_TO_MODEL_LOADER

    assert "gguf" not in QUANTIZATION_METHODS
    assert "gguf" not in _LOAD_FORMAT_TO_MODEL_LOADER
    assert importlib.util.find_spec("vllm_gguf_plugin") is None


def test_the_real_smollm2_gguf_is_refused_in_preflight(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF"
    folder.mkdir(parents=True)
    (folder / SMOLLM2_GGUF).symlink_to(smollm2_gguf())
    config = NeuronConfig(
        neuron=NeuronSection(name="t", cache_dir=str(tmp_path / "cache"), default_source="local"),
        sources={"local": SourceConfig(path=str(tmp_path / "models"))},
    )
    app = create_app(config, VllmEngineFactory(tmp_path / "run"))
    with TestClient(app) as client:
        response = client.post(
            "/models/load", json={"model": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"}
        )
        listed = client.get("/models").json()["models"]
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_model"
    assert error["message"].startswith(
        f"HuggingFaceTB/SmolLM2-135M-Instruct-GGUF has GGUF weights ({SMOLLM2_GGUF}):"
        " vLLM's CPU build cannot run them"
    )
    assert GGUF_PLUGIN in error["message"]
    assert listed == []
