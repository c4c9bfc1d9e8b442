"""Fixtures for cross-package tests (helpers live in support.py, importable from tests)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Fleet, NeuronSpec, StartFleet, launch


@pytest.fixture
def start_fleet(tmp_path: Path) -> Iterator[StartFleet]:
    """Start neurons and a gateway in front of them; everything is stopped afterwards."""
    started: list[Fleet] = []

    def start(neurons: list[NeuronSpec], models_toml: str, **options: object) -> Fleet:
        fleet = launch(tmp_path / f"fleet{len(started)}", neurons, models_toml, **options)  # type: ignore[arg-type]
        started.append(fleet)
        fleet.start()
        return fleet

    yield start
    for fleet in started:
        fleet.stop()
        if os.environ.get("CORTEX_TEST_LOGS"):
            print(fleet.gateway.log()[-4000:])
