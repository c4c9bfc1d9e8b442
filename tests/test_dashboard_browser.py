"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real gateway.

The gateway is the real app under hypercorn on a loopback port
(``cortex_gateway.testing.live``); its neurons are scripted, steered from the
test. Chromium is the system's (``apt-get install chromium``), never a
download: where it is missing these tests skip, unless
``CORTEX_REQUIRE_BROWSER=1`` (CI) makes that a failure.

``CORTEX_UPDATE_SCREENSHOT=1`` writes the screenshot into ``docs/img/``
(``make screenshot``); otherwise it goes to the test's own folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cortex_gateway.testing import ScriptedModel, ScriptedNode
from cortex_gateway.testing.live import LiveGateway

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GIB = 1 << 30
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = """
[[models]]
id = "fake/small"
memory_gb = 4

[[models]]
id = "fake/big"
memory_gb = 12

[[models]]
id = "fake/huge"
memory_gb = 21
nodes = ["a"]

[aliases]
"helexa/fast" = "fake/small"
"""
MODELS = [
    ScriptedModel("fake/small", memory_gib=4),
    ScriptedModel("fake/big", memory_gib=12, load_s=1.5),
    ScriptedModel("fake/huge", memory_gib=21, load_s=0.5),
]


def chromium() -> str:
    """The system's Chromium, or a skip (a failure where CI requires it)."""
    found = os.environ.get("CORTEX_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CORTEX_REQUIRE_BROWSER") == "1":
        pytest.fail("no chromium on PATH (apt-get install chromium)")
    pytest.skip("no chromium on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module; a fresh context (no storage) per page."""
    executable = chromium()
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """``open_page(url)``: a new page with its own session, failing the test on a script error."""
    contexts = []
    errors: list[str] = []

    def open_(url: str, width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == [], errors


def two_nodes() -> list[ScriptedNode]:
    a, b = ScriptedNode("a", (24,)), ScriptedNode("b", (16, 16))
    a.put("fake/small", "ready", memory_gib=4)
    return [a, b]


def models_bytes(page: Any, node: str) -> int:
    """What the node's memory bars give to models (all its GPUs)."""
    return int(
        page.evaluate(
            """(node) => Array.from(document.querySelectorAll(`[data-node="${node}"] .meter`))
                .reduce((sum, m) => sum + Number(m.dataset.modelsBytes), 0)""",
            node,
        )
    )


def wait_for(condition: Any, within_s: float = 10.0) -> None:
    """Poll ``condition()`` from the test thread until it holds."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the page did not get there in time")
        time.sleep(0.05)


def test_fleet_cards_bars_and_a_load_unload_and_eviction_from_the_page(
    tmp_path: Path, open_page: Any
) -> None:
    """Two nodes and their bars; a load, an unload and an eviction from the page.

    The load shows loading then ready and the bar grows; the unload shrinks it;
    the eviction is in the timeline with its reason.
    """
    with LiveGateway(tmp_path, two_nodes(), CATALOGUE, models=MODELS) as gw:
        page = open_page(gw.url + "/ui")
        page.wait_for_selector('[data-node="a"] .meter')
        assert page.locator("#nodes > article").count() == 2
        assert page.locator('[data-node="b"] .meter').count() == 2
        assert models_bytes(page, "a") == 4 * GIB
        assert models_bytes(page, "b") == 0

        row = page.locator('tr[data-model="fake/big"]')
        row.locator("select.load-node").focus()  # its node list is filled in on use
        row.locator("select.load-node").select_option("b")
        row.locator("button.load").click()
        page.wait_for_selector(
            'tr[data-model="fake/big"] .place[data-node="b"][data-state="loading"]'
        )
        assert page.locator('[data-node="b"] .seg[data-kind="loading"]').count() == 1
        page.wait_for_selector(
            'tr[data-model="fake/big"] .place[data-node="b"][data-state="ready"]'
        )
        wait_for(lambda: models_bytes(page, "b") == 12 * GIB)
        page.wait_for_selector("#action-result.ok:has-text('Loaded fake/big (b)')")
        page.wait_for_selector('#timeline li[data-kind="loaded"]:has-text("fake/big")')

        page.locator('tr[data-model="fake/big"] button.unload[data-node="b"]').click()
        wait_for(lambda: models_bytes(page, "b") == 0)
        page.wait_for_selector('#timeline li[data-kind="unloaded"]:has-text("reason: admin")')

        page.locator('tr[data-model="fake/huge"] button.load').click()  # auto: only a allows it
        evicted = page.wait_for_selector('#timeline li[data-kind="evicted"]')
        assert evicted is not None
        assert "fake/small" in evicted.inner_text()
        assert "reason: lru" in evicted.inner_text()
        page.wait_for_selector(
            'tr[data-model="fake/huge"] .place[data-node="a"][data-state="ready"]'
        )
        wait_for(lambda: models_bytes(page, "a") == 21 * GIB)


def test_a_sleeper_is_host_memory_beside_the_bars_and_its_wake_is_in_the_timeline(
    tmp_path: Path, open_page: Any
) -> None:
    """A sleeper leaves the GPU bar for host memory, its row and the timeline say so; a wake too.

    The row says sleeping and how much host memory it holds, the timeline
    says slept; loading it again wakes it, and the timeline says woke.
    """
    a = ScriptedNode("a", (24,), sleep_memory_gib=64)
    a.put("fake/small", "ready", memory_gib=4)
    with LiveGateway(tmp_path, [a], CATALOGUE, models=MODELS) as gw:
        page = open_page(gw.url + "/ui")
        page.wait_for_selector('[data-node="a"] .meter')
        page.locator('tr[data-model="fake/huge"] button.load').click()
        slept = page.wait_for_selector('#timeline li[data-kind="slept"]')
        assert slept is not None
        assert "fake/small" in slept.inner_text()
        assert "reason: lru" in slept.inner_text()
        assert "4.0 GiB in host memory" in slept.inner_text()
        host = page.wait_for_selector(
            '[data-node="a"] .legend.host span[data-kind="sleeping"][data-model="fake/small"]'
        )
        assert host is not None
        assert "4.0 GiB" in host.inner_text()
        wait_for(lambda: models_bytes(page, "a") == 21 * GIB)  # the sleeper holds no GPU memory
        place = page.wait_for_selector(
            'tr[data-model="fake/small"] .place[data-node="a"][data-state="sleeping"]'
        )
        assert place is not None
        assert "4.0 GiB in host memory" in place.inner_text()

        page.locator('tr[data-model="fake/small"] button.load').click()
        woke = page.wait_for_selector('#timeline li[data-kind="loaded"][data-wake="true"]')
        assert woke is not None
        assert "woke" in woke.inner_text()
        assert "fake/small" in woke.inner_text()
        page.wait_for_selector(
            'tr[data-model="fake/small"] .place[data-node="a"][data-state="ready"]'
        )
        wait_for(lambda: models_bytes(page, "a") == 4 * GIB)


def stopping(tmp_path: Path, poll: float) -> LiveGateway:
    """Two nodes polled every ``poll`` s, each down at its first failed poll.

    The page's promptness is what these tests measure, not the gateway's
    threshold (``down_after_failed_polls``, 3 by default).
    """
    return LiveGateway(
        tmp_path,
        two_nodes(),
        CATALOGUE,
        models=MODELS,
        poll_interval_s=poll,
        down_after_failed_polls=1,
    )


def test_a_stopped_neuron_turns_its_card_down_within_two_poll_intervals(
    tmp_path: Path, open_page: Any
) -> None:
    """The card says down (with the error) soon after the neuron stops, and up when it is back."""
    poll = 1.0
    with stopping(tmp_path, poll) as gw:
        page = open_page(gw.url + "/ui")
        page.wait_for_selector('[data-node="b"][data-up="true"]')
        stopped = time.monotonic()
        gw.call(gw.fleet.nodes["b"].stop)
        page.wait_for_selector('[data-node="b"][data-up="false"]', timeout=2 * poll * 1000)
        print(f"card down {time.monotonic() - stopped:.2f} s after the neuron stopped")
        assert "cannot connect" in page.locator('[data-node="b"]').inner_text()
        page.wait_for_selector('#timeline li[data-kind="node_down"]:has-text("b")')
        gw.call(gw.fleet.nodes["b"].start)
        page.wait_for_selector('[data-node="b"][data-up="true"]', timeout=2 * poll * 1000)


def test_a_down_neurons_models_show_unavailable_until_it_is_back(
    tmp_path: Path, open_page: Any
) -> None:
    """A model on a stopped neuron reads unavailable, not ready, and has no unload button."""
    poll = 1.0
    with stopping(tmp_path, poll) as gw:
        page = open_page(gw.url + "/ui")
        place = 'tr[data-model="fake/small"] .place[data-node="a"]'
        page.wait_for_selector(place + '[data-state="ready"]')
        gw.call(gw.fleet.nodes["a"].stop)
        down = page.wait_for_selector(place + '[data-state="unavailable"]', timeout=4 * poll * 1000)
        assert down is not None
        assert "unavailable" in down.inner_text().lower()
        assert "ready" not in down.inner_text().lower()
        assert page.locator('tr[data-model="fake/small"] button.unload').count() == 0
        gw.call(gw.fleet.nodes["a"].start)
        page.wait_for_selector(place + '[data-state="ready"]', timeout=4 * poll * 1000)


def test_the_page_reconnects_by_itself_when_the_gateway_restarts(
    tmp_path: Path, open_page: Any
) -> None:
    """Gateway gone: the page says so; a new gateway on the same port: live again, new data."""
    first = LiveGateway(tmp_path / "first", two_nodes(), CATALOGUE, models=MODELS)
    with first:
        page = open_page(first.url + "/ui")
        page.wait_for_selector('#status[data-state="live"]')
        page.wait_for_selector('[data-node="b"]')
    page.wait_for_selector('#status[data-state="reconnecting"]')
    again = [ScriptedNode("a", (48,)), ScriptedNode("c", (48,))]
    with LiveGateway(tmp_path / "again", again, CATALOGUE, models=MODELS, port=first.port):
        page.wait_for_selector('[data-node="c"]', timeout=15_000)
        page.wait_for_selector('#status[data-state="live"]')
        assert page.locator('[data-node="b"]').count() == 0


def test_the_playground_streams_an_answer_through_the_gateway(
    tmp_path: Path, open_page: Any
) -> None:
    """Through the alias, as a client would: the answer, its first token and tokens/s."""
    nodes = [ScriptedNode("a", (24,), chunk_delay_s=0.02)]
    nodes[0].put("fake/small", "ready", memory_gib=4)
    with LiveGateway(tmp_path, nodes, CATALOGUE, models=MODELS) as gw:
        page = open_page(gw.url + "/ui")
        page.wait_for_selector('#try-model option[value="helexa/fast"]', state="attached")
        page.select_option("#try-model", "helexa/fast")
        page.fill("#try-prompt", "Say hello.")
        page.click("#try-send")
        page.wait_for_selector('#try-stats[data-done="true"]')
        assert page.inner_text("#try-output") == nodes[0].reply
        stats = page.inner_text("#try-stats")
        assert "first token" in stats, stats
        assert "tokens/s" in stats, stats
        request = gw.call(lambda: nodes[0].requests[-1])
        assert request.body["model"] == "fake/small"
        assert request.body["stream"] is True


def test_with_api_keys_the_page_shows_only_the_key_prompt_until_a_key_is_given(
    tmp_path: Path, open_page: Any
) -> None:
    """No data without a key; a wrong key is refused; the right one stays for the session."""
    with LiveGateway(tmp_path, two_nodes(), CATALOGUE, models=MODELS, api_keys=["sekret"]) as gw:
        page = open_page(gw.url + "/ui")
        page.wait_for_selector("#key-prompt", state="visible")
        assert page.locator("#dashboard").is_hidden()
        assert page.locator("[data-node]").count() == 0
        page.fill("#key-input", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-reason:has-text('refused')")
        assert page.locator("[data-node]").count() == 0
        page.fill("#key-input", "sekret")
        page.click("#key-form button")
        page.wait_for_selector('[data-node="a"]')
        assert page.locator("#key-prompt").is_hidden()
        page.reload()
        page.wait_for_selector('[data-node="a"]')  # kept for the session: no prompt again
        assert page.evaluate("sessionStorage.getItem('cortex.key')") == "sekret"
        assert page.evaluate("localStorage.length") == 0


def test_the_keys_panel_shows_usage_per_key_to_admin_keys_only(
    tmp_path: Path, open_page: Any
) -> None:
    """An admin key's page lists each key's requests and tokens; a user key's page does not."""
    keys = [
        {"name": "alice", "key_sha256": hashlib.sha256(b"alice-key").hexdigest()},
        {"name": "ops", "key_sha256": hashlib.sha256(b"ops-key").hexdigest(), "role": "admin"},
    ]
    with LiveGateway(tmp_path, two_nodes(), CATALOGUE, models=MODELS, keys=keys) as gw:
        headers = {"authorization": "Bearer alice-key"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as client:
            for model in ("fake/small", "fake/small", "fake/small", "no/such"):
                client.post("/v1/chat/completions", json={"model": model, "messages": QUESTION})

        def connect(key: str) -> Any:
            page = open_page(gw.url + "/ui")
            page.wait_for_selector("#key-prompt", state="visible")
            page.fill("#key-input", key)
            page.click("#key-form button")
            page.wait_for_selector('[data-node="a"]')
            return page

        user = connect("alice-key")
        admin = connect("ops-key")
        row = admin.wait_for_selector('#keys tr[data-key="alice"][data-model="fake/small"]')
        cells = row.eval_on_selector_all("td", "tds => tds.map(td => td.textContent)")
        assert cells[:4] == ["alice", "fake/small", "3", "0"]
        assert int(cells[6]) > 0  # completion tokens
        other = admin.wait_for_selector('#keys tr[data-key="alice"][data-model="other"]')
        assert other.eval_on_selector_all("td", "tds => tds.map(td => td.textContent)")[2:4] == [
            "1",
            "1",
        ]
        assert admin.locator("#keys-panel").is_visible()
        assert user.locator("#keys-panel").is_hidden()
        assert user.locator("#keys tbody tr").count() == 0  # it never asked


def test_a_model_id_with_markup_renders_as_text(tmp_path: Path, open_page: Any) -> None:
    """An id from a neuron holding HTML shows literally; nothing of it runs."""
    evil = "evil/<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"
    nodes = two_nodes()
    nodes[0].put(evil, "ready", memory_gib=1)
    with LiveGateway(tmp_path, nodes, CATALOGUE, models=MODELS) as gw:
        page = open_page(gw.url + "/ui")
        page.wait_for_selector("#models tbody tr >> nth=3")
        ids = page.eval_on_selector_all(".model-id", "els => els.map(e => e.textContent)")
        assert evil in ids
        assert evil in page.inner_text('[data-node="a"]')
        assert page.evaluate("window.pwned") is None
        assert page.locator("main img, main script").count() == 0


def test_twenty_nodes_and_two_hundred_models_render_quickly(tmp_path: Path, open_page: Any) -> None:
    """Prints how long the page takes to render a snapshot update (the target: under 50 ms)."""
    nodes = [ScriptedNode(f"node{i:02d}", (24, 24)) for i in range(20)]
    models = [ScriptedModel(f"org/model-{i:03d}", memory_gib=2) for i in range(200)]
    catalogue = "".join(f'[[models]]\nid = "{m.id}"\nmemory_gb = 2\n\n' for m in models)
    for i, scripted in enumerate(models[:160]):
        nodes[i % 20].put(scripted.id, "ready", memory_gib=2)
    with LiveGateway(tmp_path, nodes, catalogue, models=models, poll_interval_s=0.5) as gw:
        page = open_page(gw.url + "/ui", 1400, 1000)
        page.wait_for_selector('tr[data-model="org/model-199"]')
        first = page.evaluate("window.cortexDashboard.history[0]")
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            for i in range(10):  # changes the page must show: loads, requests, a node down
                model = models[160 + i].id
                client.post("/admin/models/load", json={"model": model})
                client.post(
                    "/v1/chat/completions",
                    json={"model": models[i].id, "messages": [{"role": "user", "content": "hi"}]},
                )
                if i == 5:
                    gw.call(nodes[3].stop)
                time.sleep(0.3)
        page.wait_for_selector('[data-node="node03"][data-up="false"]')
        page.wait_for_selector('tr[data-model="org/model-169"] .place[data-state="ready"]')
        updates = page.evaluate("window.cortexDashboard.history.slice(1)")
        assert len(updates) >= 5
        print(
            f"20 nodes, 200 models: first render {first:.1f} ms; {len(updates)} updates:"
            f" median {statistics.median(updates):.1f} ms, slowest {max(updates):.1f} ms"
        )


def test_screenshot_of_a_busy_fleet(tmp_path: Path, open_page: Any) -> None:
    """The picture in docs/dashboard.md: three hosts, loads, an eviction, traffic, a chat."""
    beast, benjy, ratbox = (
        ScriptedNode("beast", (24, 24), chunk_delay_s=0.01, version="0.1.0"),
        ScriptedNode("benjy", (12,), chunk_delay_s=0.01, version="0.1.0"),
        ScriptedNode("ratbox", (), version="0.1.0"),
    )
    catalogue = """
[[models]]
id = "Qwen/Qwen3-8B"
memory_gb = 18
pinned = true
priority = 90

[[models]]
id = "Qwen/Qwen3-4B"
memory_gb = 10

[[models]]
id = "google/gemma-3-4b-it"
memory_gb = 10
nodes = ["benjy"]

[[models]]
id = "mistralai/Mistral-7B-Instruct-v0.3"
memory_gb = 16
nodes = ["beast"]

[[models]]
id = "HuggingFaceTB/SmolLM2-135M-Instruct"
memory_gb = 1

[aliases]
"helexa/balanced" = "Qwen/Qwen3-8B"
"helexa/fast" = "Qwen/Qwen3-4B"
"""
    models = [
        ScriptedModel("Qwen/Qwen3-8B", memory_gib=18),
        ScriptedModel("Qwen/Qwen3-4B", memory_gib=10, load_s=0.3),
        ScriptedModel("google/gemma-3-4b-it", memory_gib=10, load_s=0.3),
        ScriptedModel("mistralai/Mistral-7B-Instruct-v0.3", memory_gib=16, load_s=30),
        ScriptedModel("HuggingFaceTB/SmolLM2-135M-Instruct", memory_gib=1),
    ]
    beast.put("Qwen/Qwen3-8B", "ready", memory_gib=18)
    ratbox.put("HuggingFaceTB/SmolLM2-135M-Instruct", "ready", memory_gib=1)
    with LiveGateway(tmp_path, [beast, benjy, ratbox], catalogue, models=models) as gw:
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            client.post("/admin/models/load", json={"model": "google/gemma-3-4b-it"})
            client.post("/admin/models/load", json={"model": "Qwen/Qwen3-4B", "node": "benjy"})
            for i in range(12):
                model = ("helexa/balanced", "helexa/fast", "HuggingFaceTB/SmolLM2-135M-Instruct")
                client.post(
                    "/v1/chat/completions",
                    json={
                        "model": model[i % 3],
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    },
                )
        page = open_page(gw.url + "/ui", 1280, 1000)
        page.wait_for_selector('[data-node="beast"] .meter')
        with httpx.Client(base_url=gw.url, timeout=60) as client:
            # A load that takes a while, to show its reservation (not awaited).
            life = gw.state.lifecycle if gw.state else None
            assert life is not None
            profile = life.catalogue.profile("mistralai/Mistral-7B-Instruct-v0.3")
            assert profile is not None
            gw.call(lambda: asyncio.ensure_future(life.load(profile)))
            page.wait_for_selector('[data-node="beast"] .seg[data-kind="loading"]')
            client.get("/health")
        page.select_option("#try-model", "helexa/fast")
        page.click("#try-send")
        page.wait_for_selector('#try-stats[data-done="true"]')
        page.wait_for_timeout(600)
        page.evaluate("window.scrollTo(0, 0)")
        target = ROOT / "docs" / "img" if os.environ.get("CORTEX_UPDATE_SCREENSHOT") else tmp_path
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / "dashboard.png"), full_page=True)
        assert (target / "dashboard.png").stat().st_size > 10_000
