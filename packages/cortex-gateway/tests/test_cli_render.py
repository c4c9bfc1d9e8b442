"""``cortex status``: the readable rendering of ``GET /admin/fleet``."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cortex_core.units import GIB
from cortex_gateway.cli import key_for, main, render_status
from cortex_gateway.testing import ScriptedNode
from cortex_gateway.testing.live import LiveGateway
from cortex_gateway.usage import UsageReport, usage_table


def device(index: int, used_gib: float, total_gib: float, utilization: float = 0.0) -> Any:
    """A ``/devices`` entry as the fleet JSON carries it."""
    total, used = int(total_gib * GIB), int(used_gib * GIB)
    return {
        "index": index,
        "name": "NVIDIA GeForce RTX 4090",
        "uuid": f"GPU-{index}",
        "memory_total": total,
        "memory_used": used,
        "memory_free": total - used,
        "utilization": utilization,
    }


def model(model_id: str, state: str = "ready", **fields: Any) -> Any:
    """A ``/models`` entry as the fleet JSON carries it."""
    entry: dict[str, Any] = {
        "id": model_id,
        "state": state,
        "source": None,
        "devices": [0],
        "memory_bytes": 4 * GIB,
        "loaded_at": time.time() - 7200,
        "last_used": None,
        "in_flight": 0,
        "max_model_len": 8192,
        "error": None,
        "phase": None,
    }
    entry.update(fields)
    return entry


def node_entry(
    name: str,
    *,
    up: bool = True,
    devices: list[Any] | None = None,
    models: list[Any] | None = None,
    error: str | None = None,
) -> Any:
    """A node as ``GET /admin/fleet`` shows it."""
    return {
        "name": name,
        "endpoint": f"http://{name}.internal:13131",
        "up": up,
        "version": "0.1.0" if up else "",
        "last_seen": time.time() if up else None,
        "error": error,
        "devices": devices or [],
        "models": models or [],
    }


def fleet_json() -> Any:
    """A fleet: beast (2 GPUs), benjy (1 GPU, loading and failed), a CPU node, a down node."""
    now = time.time()
    return {
        "nodes": [
            node_entry(
                "beast",
                devices=[device(0, 18.5, 24, 87.0), device(1, 0, 24)],
                models=[
                    model("Qwen/Qwen3-8B", memory_bytes=18 * GIB, last_used=now - 125, in_flight=1)
                ],
            ),
            node_entry(
                "benjy",
                devices=[device(0, 3, 12)],
                models=[
                    model("Qwen/Qwen3-1.7B", "loading", phase="fetching", loaded_at=None),
                    model("org/broken", "failed", error="CUDA out of memory"),
                ],
            ),
            node_entry(
                "ratbox",
                models=[
                    model("org/tiny", devices=[], last_used=now - 7300),
                    model("org/embedder", devices=[], task="embed"),
                ],
            ),
            node_entry("faraway", up=False, error="connection refused"),
        ],
        "loading": ["Qwen/Qwen3-1.7B", "org/placing"],
        "in_flight": [{"node": "beast", "model": "Qwen/Qwen3-8B", "count": 3}],
    }


def line_with(text: str, *needles: str) -> str:
    """The one line of ``text`` that contains every needle."""
    found = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert len(found) == 1, (needles, text)
    return found[0]


def test_render_status_sections() -> None:
    """The output has a NODES table followed by a MODELS table."""
    lines = render_status(fleet_json()).splitlines()
    assert lines[0] == "NODES"
    assert "MODELS" in lines
    assert lines.index("MODELS") > 1


def test_render_status_nodes_up_and_down() -> None:
    """Each node is listed with its endpoint; up nodes say up, down ones DOWN with the error."""
    text = render_status(fleet_json())
    beast = line_with(text, "beast", "http://beast.internal:13131")
    assert " up " in beast
    assert "0.1.0" in beast
    down = line_with(text, "faraway")
    assert "DOWN (connection refused)" in down
    assert "http://faraway.internal:13131" in down


def test_render_status_down_node_without_an_error() -> None:
    """A down node without a recorded error still says it is down."""
    fleet = {"nodes": [node_entry("faraway", up=False)], "loading": [], "in_flight": []}
    assert "DOWN (no answer)" in render_status(fleet)


def test_render_status_gpu_lines() -> None:
    """Every GPU has a line with its index, used and total memory in GiB, and utilisation."""
    text = render_status(fleet_json())
    gpu0 = line_with(text, "GPU 0", "18.5 /")
    assert "18.5 / 24.0 GiB" in gpu0
    assert "87%" in gpu0
    assert "NVIDIA GeForce RTX 4090" in gpu0
    assert "0.0 / 24.0 GiB" in line_with(text, "GPU 1")
    assert "3.0 / 12.0 GiB" in line_with(text, "GPU 0", "12.0 GiB")


def test_render_status_gpu_lines_follow_their_node() -> None:
    """A node's GPU lines come right after its own line."""
    lines = render_status(fleet_json()).splitlines()
    beast = next(i for i, line in enumerate(lines) if "beast" in line)
    assert lines[beast + 1].strip().startswith("GPU 0")
    assert lines[beast + 2].strip().startswith("GPU 1")
    benjy = next(i for i, line in enumerate(lines) if "benjy.internal" in line)
    assert lines[benjy + 1].strip().startswith("GPU 0")


def test_render_status_cpu_node_has_no_gpus() -> None:
    """An up node without GPUs says so; a down node claims nothing about its GPUs."""
    lines = render_status(fleet_json()).splitlines()
    ratbox = next(i for i, line in enumerate(lines) if "ratbox.internal" in line)
    assert "no GPUs" in lines[ratbox + 1]
    assert sum("no GPUs" in line for line in lines) == 1


def test_render_status_model_rows() -> None:
    """Each model has a row with its node, state, requests in flight and last use."""
    text = render_status(fleet_json())
    line_with(text, "MODEL", "NODE", "TASK", "STATE", "IN FLIGHT", "LAST USE")
    ready = line_with(text, "Qwen/Qwen3-8B")
    assert "beast" in ready
    assert "ready" in ready
    assert "2m ago" in ready
    tiny = line_with(text, "org/tiny")
    assert "ratbox" in tiny
    assert "2h ago" in tiny


def test_render_status_names_each_models_task() -> None:
    """The TASK column says what each model serves: embed for an embedding model."""
    text = render_status(fleet_json())
    assert line_with(text, "org/embedder").split()[2] == "embed"
    assert line_with(text, "Qwen/Qwen3-8B").split()[2] == "generate"
    assert line_with(text, "org/placing").split()[2] == "-"


def test_render_status_in_flight_is_the_higher_count() -> None:
    """In flight shows the higher of the neuron's count and the gateway's."""
    text = render_status(fleet_json())
    assert line_with(text, "Qwen/Qwen3-8B").split()[4] == "3"
    fleet = fleet_json()
    fleet["in_flight"] = []
    assert line_with(render_status(fleet), "Qwen/Qwen3-8B").split()[4] == "1"


def test_render_status_loading_phase_and_failure() -> None:
    """A loading model shows its phase, a failed one its error; unused models show '-'."""
    text = render_status(fleet_json())
    loading = line_with(text, "Qwen/Qwen3-1.7B")
    assert "loading (fetching)" in loading
    assert "benjy" in loading
    assert loading.rstrip().endswith("-")
    failed = line_with(text, "org/broken")
    assert "failed: CUDA out of memory" in failed


def test_render_status_model_being_placed() -> None:
    """A model the gateway is placing but no node lists yet shows as placing."""
    placing = line_with(render_status(fleet_json()), "org/placing")
    assert "placing" in placing.split("org/placing", 1)[1]


def test_render_status_columns_line_up() -> None:
    """Every model row starts its node column where the header's NODE does."""
    lines = render_status(fleet_json()).splitlines()
    header = next(line for line in lines if "LAST USE" in line)
    column = header.index("NODE")
    rows = lines[lines.index(header) + 1 :]
    assert len(rows) == 6
    for row in rows:
        assert row[column - 2 : column] == "  "
        assert row[column] != " "


def test_render_status_none_loaded() -> None:
    """A fleet with no models says none are loaded."""
    fleet = {
        "nodes": [node_entry("beast", devices=[device(0, 0, 24)]), node_entry("benjy")],
        "loading": [],
        "in_flight": [],
    }
    text = render_status(fleet)
    assert text.splitlines()[-1].strip() == "none loaded"
    assert "LAST USE" not in text


def test_render_status_without_optional_keys() -> None:
    """A fleet JSON without ``loading`` or ``in_flight`` still renders."""
    fleet = {"nodes": [node_entry("beast", models=[model("org/x")])]}
    assert "org/x" in render_status(fleet)


@pytest.mark.parametrize(
    ("given", "path", "environ", "expected"),
    [
        ("flag", "/admin/fleet", {"CORTEX_ADMIN_KEY": "a", "CORTEX_API_KEY": "k"}, "flag"),
        (None, "/admin/fleet", {"CORTEX_ADMIN_KEY": "a", "CORTEX_API_KEY": "k"}, "a"),
        (None, "/admin/fleet", {"CORTEX_API_KEY": "k"}, "k"),
        (None, "/v1/models", {"CORTEX_ADMIN_KEY": "a", "CORTEX_API_KEY": "k"}, "k"),
        (None, "/v1/models", {}, None),
    ],
)
def test_the_key_a_client_command_sends(
    monkeypatch: pytest.MonkeyPatch,
    given: str | None,
    path: str,
    environ: dict[str, str],
    expected: str | None,
) -> None:
    """--key wins; the admin API takes $CORTEX_ADMIN_KEY first; else $CORTEX_API_KEY."""
    for name in ("CORTEX_ADMIN_KEY", "CORTEX_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert key_for(given, path) == expected


def test_cortex_usage_prints_a_table_and_json(tmp_path: Path) -> None:
    """``cortex usage`` against a running gateway: a row per key and model, a total, or JSON."""
    keys = [{"name": "alice", "key_sha256": hashlib.sha256(b"alice-key").hexdigest()}]
    node = ScriptedNode("a", (24,))
    node.put("fake/small", "ready", memory_gib=4)
    catalogue = '[[models]]\nid = "fake/small"\nmemory_gb = 4\n'
    with LiveGateway(tmp_path, [node], catalogue, keys=keys, api_keys=["anon"]) as gw:
        question = [{"role": "user", "content": "hi"}]
        for key in ("alice-key", "alice-key", "anon"):
            httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "fake/small", "messages": question},
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
        runner = CliRunner()
        table = runner.invoke(main, ["usage", "--gateway", gw.url, "--key", "alice-key"])
        assert table.exit_code == 0, table.output
        lines = table.output.splitlines()
        assert lines[0].startswith("since ")
        assert lines[1].split() == [
            "KEY",
            "MODEL",
            "REQUESTS",
            "ERRORS",
            "PROMPT",
            "CACHED",
            "COMPLETION",
        ]
        assert lines[2].split()[:4] == ["(unnamed)", "fake/small", "1", "0"]
        assert lines[3].split()[:4] == ["alice", "fake/small", "2", "0"]
        assert lines[4].split()[:3] == ["TOTAL", "3", "0"]
        as_json = runner.invoke(main, ["usage", "--gateway", gw.url, "--key", "anon", "--json"])
        assert as_json.exit_code == 0, as_json.output
        report = json.loads(as_json.output)
        assert [k["name"] for k in report["keys"]] == ["", "alice"]


def test_usage_table_of_nothing_yet() -> None:
    """No request yet: one line saying so."""
    assert (
        usage_table(UsageReport(since=0.0))
        == "since 1970-01-01 00:00:00 UTC: no inference requests"
    )
