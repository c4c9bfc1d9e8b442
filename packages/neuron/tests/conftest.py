"""Shared fixtures for the neuron's tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest

# --- huggingface_hub isolation (used by test_sources.py; test_hub_server.py has its own copy) ---
# Self-contained: nothing below depends on it, and it is not autouse, so adding session
# fixtures further down does not change what it does.


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep huggingface_hub online (loopback only), quiet, token-less, and away from ~/.cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils.tqdm import disable_progress_bars

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads its environment once, at import: patch what it already read.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    # Disabling warns when HF_HUB_DISABLE_PROGRESS_BARS=0 was set at import: then leave them on.
    forced_on = constants.HF_HUB_DISABLE_PROGRESS_BARS is False
    with nullcontext() if forced_on else disable_progress_bars():
        yield


# --- end of huggingface_hub isolation ---
