"""``cortex alias set`` against a running gateway: live, without dropping what is in flight.

Real processes: a gateway and a neuron (scripted engines) on loopback, and the
``cortex`` command as an operator runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.support import NeuronSpec, StartFleet, fake_model

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MODELS = """\
# Tiers for our clients: keep helexa/small cheap.
[aliases]
"helexa/small" = "fake/a"   # swapped by `cortex alias set`

[[models]]
id = "fake/a"
memory_gb = 4

[[models]]
id = "fake/b"
memory_gb = 4
"""


def test_alias_set_while_a_stream_runs(start_fleet: StartFleet, tmp_path: Path) -> None:
    """The stream through the old target completes; the next request goes to the new one."""
    root = tmp_path / "models"
    fake_model(root, "fake/a", 3)
    fake_model(root, "fake/b", 3)
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        MODELS,
        models_root=root,
        env={"NEURON_TEST_CHUNK_DELAY": "0.5"},
    )
    with fleet.http() as client:
        for model in ("fake/a", "fake/b"):
            assert client.post("/admin/models/load", json={"model": model}).status_code == 200

    body = {"model": "helexa/small", "messages": QUESTION, "stream": True}
    streamed: list[str] = []
    statuses: list[int] = []
    first = threading.Event()

    def stream() -> None:
        with (
            httpx.Client(base_url=fleet.url, timeout=60) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            statuses.append(response.status_code)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    streamed.append(line[6:])
                    first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(30)
    changed = subprocess.run(
        [sys.executable, "-m", "cortex_gateway", "alias", "set", "helexa/small", "fake/b"],
        env={
            **os.environ,
            "CORTEX_CONFIG": str(fleet.workdir / "cortex.toml"),
            "CORTEX_GATEWAY": fleet.url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert changed.returncode == 0, changed.stderr
    assert "the gateway at" in changed.stdout
    assert reader.is_alive(), "the stream ended before the alias changed: slow it down"
    reader.join(60)

    assert streamed[-1] == "[DONE]"
    chunks = [json.loads(data) for data in streamed[:-1]]
    assert all("error" not in chunk for chunk in chunks)
    print(chunks[0])
    with fleet.http() as client:
        after = client.post(
            "/v1/chat/completions", json={"model": "helexa/small", "messages": QUESTION}
        )
        print(after.json(), after.headers)
        listed = client.get("/v1/models").json()["data"]
    assert {m["id"]: m.get("alias_of") for m in listed}["helexa/small"] == "fake/b"
    text = (fleet.workdir / "models.toml").read_text()
    assert text == MODELS.replace('= "fake/a"   #', '= "fake/b"   #')
    assert "catalogue reloaded" in fleet.gateway.log()


def test_twenty_concurrent_alias_edits_all_land(start_fleet: StartFleet, tmp_path: Path) -> None:
    """Twenty ``cortex alias set`` processes at once: each reports success and each alias is kept.

    On main, 19 of 20 said they succeeded and 3 aliases were left: the edit
    was read-modify-write without a lock, through one shared temporary file.
    """
    root = tmp_path / "models"
    fake_model(root, "fake/a", 3)
    fake_model(root, "fake/b", 3)
    fleet = start_fleet([NeuronSpec("beast", "127.0.0.2", [24])], MODELS, models_root=root)
    env = {
        **os.environ,
        "CORTEX_CONFIG": str(fleet.workdir / "cortex.toml"),
        "CORTEX_GATEWAY": fleet.url,
    }
    command = [sys.executable, "-m", "cortex_gateway", "alias", "set"]
    editors = [
        subprocess.Popen(
            [*command, f"tier/{i}", "fake/b"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    results = [(e.wait(120), *e.communicate()) for e in editors]
    assert [code for code, _, _ in results] == [0] * 20, [err for _, _, err in results]
    text = (fleet.workdir / "models.toml").read_text()
    for i in range(20):
        assert f'"tier/{i}" = "fake/b"' in text
    assert text.startswith("# Tiers for our clients: keep helexa/small cheap.\n")
    with fleet.http() as client:
        listed = {m["id"]: m.get("alias_of") for m in client.get("/v1/models").json()["data"]}
    assert all(listed[f"tier/{i}"] == "fake/b" for i in range(20))
    assert listed["helexa/small"] == "fake/a"
