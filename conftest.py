"""Settings every test directory shares: how hard the property tests try.

``make test`` runs hypothesis's ``full`` profile; ``make test-fast`` the
``quick`` one (``HYPOTHESIS_PROFILE=quick``), so the quick suite stays quick
while every property still runs. Neither times an example: a deadline is a
timing assertion, and on a loaded CI machine it failed examples that were
only slow.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("full", max_examples=100, **UNTIMED)
settings.register_profile("quick", max_examples=15, **UNTIMED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))


SLOW_LAYER = ("tests/", "_e2e.py", "_fuzz.py", "_vllm.py")
"""Where only slow tests may live: `make test-fast` does not even collect these files."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test in the slow layer that is not marked slow: make test-fast would skip it."""
    root = config.rootpath
    for item in items:
        where = item.path.relative_to(root).as_posix()
        in_slow_layer = where.startswith(SLOW_LAYER[0]) or where.endswith(SLOW_LAYER[1:])
        if in_slow_layer and item.get_closest_marker("slow") is None:
            raise pytest.UsageError(f"{item.nodeid} is in the slow layer but not marked slow")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, as the daemons do."""
    return "asyncio"
