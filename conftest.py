"""Settings every test directory shares: how hard the property tests try.

``make test`` runs hypothesis's ``full`` profile; ``make test-fast`` the
``quick`` one (``HYPOTHESIS_PROFILE=quick``), so the quick suite stays quick
while every property still runs.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("full", max_examples=100)
settings.register_profile("quick", max_examples=15)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, as the daemons do."""
    return "asyncio"
