"""The admin API in-process, and what every inference route shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gateway_harness import QUESTION, serve

from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE = """
[[models]]
id = "fake/a"
memory_gb = 4

[[models]]
id = "fake/b"
memory_gb = 4
"""
MODELS = [ScriptedModel("fake/a", memory_gib=4), ScriptedModel("fake/b", memory_gib=4)]


def nodes() -> list[ScriptedNode]:
    """Two nodes, one a CPU host."""
    return [ScriptedNode("beast", gpus=[24]), ScriptedNode("cpu", gpus=[])]


async def test_fleet_shows_nodes_devices_models_and_in_flight(tmp_path: Path) -> None:
    """/admin/fleet answers with a fresh poll: nodes, GPUs, models, loads, in-flight counts."""
    async with serve(
        tmp_path,
        nodes(),
        CATALOGUE,
        models=MODELS,
        poll_interval_s=3600,
        down_after_failed_polls=1,
    ) as gw:
        gw.node("beast").put("fake/a", "ready")
        fleet = (await gw.http.get("/admin/fleet")).json()
        beast, cpu = fleet["nodes"]
        assert beast["up"] is True
        assert beast["devices"][0]["memory_total"] == 24 * 2**30
        assert [m["id"] for m in beast["models"]] == ["fake/a"]
        assert cpu["devices"] == []
        assert fleet["loading"] == []
        assert fleet["in_flight"] == []
        gw.node("cpu").stop()
        fleet = (await gw.http.get("/admin/fleet")).json()
        assert fleet["nodes"][1]["up"] is False
        assert "cannot connect" in fleet["nodes"][1]["error"]


async def test_load_and_unload(tmp_path: Path) -> None:
    """Loads go where they fit or where asked; unloads come off one node or all of them."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        loaded = await gw.http.post("/admin/models/load", json={"model": "fake/a"})
        assert loaded.json() == {"model": "fake/a", "node": "beast", "state": "ready"}
        placed = await gw.http.post("/admin/models/load", json={"model": "fake/a", "node": "cpu"})
        assert placed.json()["node"] == "cpu"
        assert gw.node("cpu").ready("fake/a")
        one = await gw.http.post("/admin/models/unload", json={"model": "fake/a", "node": "cpu"})
        assert one.json() == {"model": "fake/a", "nodes": ["cpu"], "state": "unloaded"}
        everywhere = await gw.http.post("/admin/models/unload", json={"model": "fake/a"})
        assert everywhere.json()["nodes"] == ["beast"]
        assert not gw.node("beast").models
        unloads = await gw.metric("cortex_model_unloads_total", reason="admin")
        assert unloads == 2
        assert await gw.metric("cortex_model_evictions_total") == 0


async def test_loads_outside_the_catalogue_need_allowing(tmp_path: Path) -> None:
    """An id outside the catalogue (or from another source) is refused unless allowed."""
    extra = [*MODELS, ScriptedModel("org/extra", memory_gib=1)]
    async with serve(tmp_path / "closed", nodes(), CATALOGUE, models=extra) as gw:
        for model in ("local:org/extra", "org/extra", "other:fake/a"):
            refused = await gw.http.post("/admin/models/load", json={"model": model})
            assert refused.status_code == 403, model
            assert "not in the catalogue" in refused.json()["error"]["message"]
        assert "load org/extra" not in gw.node("beast").calls
    async with serve(
        tmp_path / "open", nodes(), CATALOGUE, models=extra, allow_uncatalogued_loads=True
    ) as gw:
        loaded = await gw.http.post("/admin/models/load", json={"model": "local:org/extra"})
        assert loaded.status_code == 200
        assert loaded.json()["model"] == "org/extra"


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/admin/models/load", {"model": "fake/a", "node": "nobody"}, 404, "no neuron"),
        ("/admin/models/load", {"model": "bad id with spaces"}, 400, ""),
        ("/admin/models/load", {"node": "beast"}, 400, "model"),
        ("/admin/models/load", {"model": "fake/zzz"}, 403, "not in the catalogue"),
        ("/admin/models/unload", {"model": "fake/a"}, 404, "not loaded"),
        ("/admin/models/unload", {"model": 3}, 400, "model"),
    ],
)
async def test_admin_errors(
    tmp_path: Path, path: str, body: dict[str, Any], status: int, needle: str
) -> None:
    """Each refusal has its status and an OpenAI envelope saying why."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        response = await gw.http.post(path, json=body)
        assert response.status_code == status, response.text
        assert needle in response.json()["error"]["message"]


async def test_an_unload_the_neuron_fails_is_a_502(tmp_path: Path) -> None:
    """A neuron that cannot be reached to unload: 502, and it is marked down."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS, poll_interval_s=3600) as gw:
        await gw.http.post("/admin/models/load", json={"model": "fake/a"})
        gw.node("beast").stop()
        response = await gw.http.post("/admin/models/unload", json={"model": "fake/a"})
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "upstream_error"


ROUTES: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"messages": QUESTION}, "chat_completions"),
    ("/v1/completions", {"prompt": "x"}, "completions"),
    ("/v1/messages", {"max_tokens": 5, "messages": QUESTION}, "messages"),
    ("/v1/messages/count_tokens", {"messages": QUESTION}, "count_tokens"),
]


async def test_an_unknown_model_is_the_same_failure_on_every_route(tmp_path: Path) -> None:
    """The same unknown model: 404, kind not_found, counted once, on all four inference routes."""
    async with serve(tmp_path, nodes(), CATALOGUE, models=MODELS) as gw:
        for path, body, route in ROUTES:
            response = await gw.http.post(path, json={"model": "nobody/nothing", **body})
            assert response.status_code == 404, path
            error = response.json()["error"]
            expected = "not_found_error"
            assert error["type"] == expected, path
            assert error["message"] == "model 'nobody/nothing' does not exist"
            samples = await gw.samples()
            errors = [
                s
                for s in samples
                if s.name == "cortex_request_errors_total" and s.labels["route"] == route
            ]
            assert [(s.labels["kind"], s.labels["model"], s.value) for s in errors] == [
                ("not_found", "other", 1.0)
            ]


async def test_reload_applies_a_new_alias_at_once_and_refuses_a_broken_file(
    tmp_path: Path,
) -> None:
    """POST /admin/reload: /v1/models shows the new alias at once; a broken file is a 422."""
    async with serve(
        tmp_path, nodes(), CATALOGUE, models=MODELS, api_keys=["user"], admin_keys=["admin"]
    ) as gw:
        admin = {"authorization": "Bearer admin", "content-type": "application/json"}
        models_toml = tmp_path / "models.toml"
        models_toml.write_text('[aliases]\n"tier/one" = "fake/b"\n' + CATALOGUE)
        user = await gw.http.post("/admin/reload", headers={"authorization": "Bearer user"})
        assert user.status_code == 403
        # No body and no content type: what a page of another site may send unasked.
        bare = await gw.http.post("/admin/reload", headers={"authorization": "Bearer admin"})
        assert bare.status_code == 415
        assert "tier/one" not in gw.state.config.catalogue

        response = await gw.http.post("/admin/reload", headers=admin)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "reloaded": str(models_toml),
            "models": 2,
            "aliases": {"tier/one": "fake/b"},
        }
        listed = (await gw.http.get("/v1/models", headers=admin)).json()["data"]
        assert {m["id"]: m.get("alias_of") for m in listed}["tier/one"] == "fake/b"

        models_toml.write_text('[aliases]\n"tier/one" = "fake/gone"\n' + CATALOGUE)
        broken = await gw.http.post("/admin/reload", headers=admin)
        assert broken.status_code == 422
        message = broken.json()["error"]["message"]
        assert message.startswith(f'not reloaded: {models_toml}: aliases."tier/one": ')
        chat = await gw.http.post(
            "/v1/chat/completions",
            headers=admin,
            json={"model": "tier/one", "messages": QUESTION},
        )
        assert chat.status_code == 200
        assert gw.node("beast").ready("fake/b")
