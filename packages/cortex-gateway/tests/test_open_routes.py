"""With keys set, the routes that answer without one are exactly those docs/security.md lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gateway_harness import serve
from starlette.routing import Route

from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

SECURITY = Path(__file__).parents[3] / "docs" / "security.md"


def documented_open_routes() -> set[str]:
    """The ``METHOD /path`` pairs in the row of docs/security.md that says what is open."""
    row = next(line for line in SECURITY.read_text().splitlines() if "open without a key" in line)
    return set(re.findall(r"`((?:GET|POST) /[^`]*)`", row))


async def test_the_routes_open_without_a_key_are_the_documented_ones(tmp_path: Path) -> None:
    """Every route of the API port, asked without a key: only the listed ones answer."""
    async with serve(
        tmp_path,
        [ScriptedNode("beast", gpus=[24])],
        '[[models]]\nid = "org/m"\n',
        models=[ScriptedModel("org/m", memory_gib=4)],
        api_keys=["sesame"],
        admin_keys=["root"],
    ) as gw:
        answered: dict[str, int] = {}
        for route in gw.api.routes:
            assert isinstance(route, Route)
            path = re.sub(r"\{[^}]*\}", "org/m", route.path)
            for method in sorted((route.methods or set()) - {"HEAD"}):
                response = await gw.http.request(
                    method, path, content=b"{}", headers={"content-type": "application/json"}
                )
                answered[f"{method} {route.path}"] = response.status_code
    assert {route for route, status in answered.items() if status != 401} == (
        documented_open_routes()
    )
    assert len(answered) > len(documented_open_routes())  # the keyed routes were asked too
