"""Reloading models.toml: off the event loop, bounded in time and size, and guarded."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from gateway_harness import serve

from cortex_core.catalogue import Catalogue, ModelProfile
from cortex_gateway.reloads import MAX_STUCK, Refusal, guard
from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

CATALOGUE = '[aliases]\n"tier/a" = "fake/a"\n[[models]]\nid = "fake/a"\nmemory_gb = 4\n'
MODELS = [ScriptedModel("fake/a", memory_gib=4)]
JSON = {"content-type": "application/json"}


def catalogue(*ids: str, pinned: str = "", aliases: dict[str, str] | None = None) -> Catalogue:
    """A catalogue of ``ids`` (``pinned`` among them), with ``aliases``."""
    return Catalogue([ModelProfile(id=i, pinned=i == pinned) for i in ids], aliases or {})


@pytest.mark.parametrize(
    ("old", "new", "in_use", "refused"),
    [
        (catalogue("a/a"), catalogue(), set(), "every model (1 in force)"),
        (catalogue(), catalogue(), set(), None),
        (catalogue("a/a", aliases={"t": "a/a"}), catalogue("a/a"), set(), "every alias"),
        (catalogue("a/a", "b/b", pinned="a/a"), catalogue("b/b"), {"a/a"}, "pinned model(s) a/a"),
        (catalogue("a/a", "b/b", pinned="a/a"), catalogue("b/b"), set(), None),
        (catalogue("a/a", "b/b", pinned="b/b"), catalogue("b/b"), {"a/a"}, None),
        (catalogue("a/a", aliases={"t": "a/a"}), catalogue("a/a", aliases={"u": "a/a"}), (), None),
    ],
)
def test_the_guard_refuses_what_removes_everything_or_a_pinned_model_in_use(
    old: Catalogue, new: Catalogue, in_use: set[str], refused: str | None
) -> None:
    """Every model, every alias, or a pinned model loaded somewhere: refused; the rest passes."""
    why = guard(old, new, in_use)
    assert (why is None) == (refused is None)
    if refused is not None:
        assert why is not None
        assert refused in why


async def test_a_reload_that_empties_the_catalogue_is_refused_unless_forced(
    tmp_path: Path,
) -> None:
    """An empty models.toml: 409 with the reason, the catalogue stays; forced, it is taken."""
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        (tmp_path / "models.toml").write_text("")
        refused = await gw.http.post("/admin/reload", headers=JSON)
        assert refused.status_code == 409
        message = refused.json()["error"]["message"]
        assert message == (
            "not reloaded: it would remove every model (1 in force); force it to reload"
        )
        assert "tier/a" in gw.state.config.catalogue
        assert (await gw.chat("tier/a")).status_code == 200
        forced = await gw.http.post("/admin/reload", json={"force": True})
        assert forced.status_code == 200, forced.text
        assert forced.json()["models"] == 0
        assert (await gw.chat("tier/a")).status_code == 404


async def test_a_reload_that_drops_a_pinned_model_in_use_is_refused(tmp_path: Path) -> None:
    """A pinned model loaded on a node, gone from the new file: 409 until forced."""
    pinned = '[[models]]\nid = "fake/a"\nmemory_gb = 4\npinned = true\n'
    models = [*MODELS, ScriptedModel("fake/b", memory_gib=4)]
    async with serve(tmp_path, [ScriptedNode("beast")], pinned, models=models) as gw:
        gw.node("beast").put("fake/a", "ready", memory_gib=4)
        await gw.state.lifecycle.refresh("beast")
        (tmp_path / "models.toml").write_text('[[models]]\nid = "fake/b"\nmemory_gb = 4\n')
        assert await gw.state.reload() == Refusal(
            409,
            "it would drop the pinned model(s) fake/a, loaded and in use; force it to reload",
        )
        assert await gw.state.reload(force=True) is None
        assert "fake/b" in gw.state.config.catalogue


async def test_a_models_toml_that_never_finishes_reading_leaves_the_loop_free(
    tmp_path: Path,
) -> None:
    """A FIFO nobody writes stands in for a hung file system: the loop keeps serving.

    The reload gives up after its time (503), the catalogue in force stays;
    reads that never finished are counted, and past MAX_STUCK refused at once.
    """
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        gw.state.reader.timeout_s = 0.5
        fifo = tmp_path / "models.toml"
        fifo.unlink()
        os.mkfifo(fifo)
        try:
            reloading = asyncio.ensure_future(gw.http.post("/admin/reload", json={"force": True}))
            worst = 0.0
            while not reloading.done():
                started = time.monotonic()
                assert (await gw.http.get("/health")).status_code == 200
                worst = max(worst, time.monotonic() - started)
                await asyncio.sleep(0.02)
            assert worst < 2.0  # the loop was never held (a /health takes milliseconds)
            answer = await reloading
            assert answer.status_code == 503
            assert "was not read within 0.5 s" in answer.json()["error"]["message"]
            assert "tier/a" in gw.state.config.catalogue
            for _ in range(MAX_STUCK - 1):
                assert (await gw.state.reload()) is not None
            refused = await gw.state.reload()
            assert refused is not None
            assert "never finished" in refused.message
        finally:
            _unblock(fifo)


def _unblock(fifo: Path) -> None:
    """Let the reads stuck opening ``fifo`` finish: a writer appears (and goes at once)."""
    os.close(os.open(fifo, os.O_RDWR))  # never blocks on a FIFO, unlike opening it to write


async def test_a_file_past_the_size_cap_is_refused(tmp_path: Path) -> None:
    """17 MiB of models.toml: a 422 naming the file and the cap, the catalogue in force stays."""
    async with serve(tmp_path, [ScriptedNode("beast")], CATALOGUE, models=MODELS) as gw:
        (tmp_path / "models.toml").write_bytes(CATALOGUE.encode() + b"#" * (17 << 20))
        answer = await gw.http.post("/admin/reload", json={})
        assert answer.status_code == 422
        assert "larger than 16 MiB" in answer.json()["error"]["message"]
        assert "tier/a" in gw.state.config.catalogue
