"""``[gateway] workers = 2``: two gateway processes on one port, their sum on the metrics port.

Real processes: a supervisor and its workers, a neuron with scripted engines,
on loopback. A worker killed with SIGKILL is started again while the other
keeps serving; a reload reaches every worker; SIGTERM stops them all.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Fleet, NeuronSpec, StartFleet, fake_model, until

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MODELS = '[[models]]\nid = "fake/a"\nmemory_gb = 4\n'


def workers_of(supervisor: int) -> list[int]:
    """The worker processes of a supervisor, from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == supervisor:
                found.append(int(entry.name))
    return sorted(found)


def requests_total(fleet: Fleet) -> tuple[float, float]:
    """``cortex_requests_total`` summed over labels, and ``cortex_gateway_workers``."""
    text = httpx.get(f"{fleet.metrics_url}/metrics", timeout=10).text
    total, workers = 0.0, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cortex_requests_total" and sample.labels["route"] != "other":
                total += sample.value
            if sample.name == "cortex_gateway_workers":
                workers = sample.value
    return total, workers


def ask(fleet: Fleet, count: int) -> list[int]:
    """``count`` chat requests, each on a new connection (so the kernel spreads them)."""
    statuses = []
    for _ in range(count):
        with fleet.http() as client:
            answer = client.post(
                "/v1/chat/completions", json={"model": "fake/a", "messages": QUESTION}
            )
            statuses.append(answer.status_code)
    return statuses


def test_two_workers_serve_one_port_and_sum_their_metrics(
    start_fleet: StartFleet, tmp_path: Path
) -> None:
    """Two workers answer; the metrics port counts every request; a killed worker comes back."""
    root = tmp_path / "models"
    fake_model(root, "fake/a", 3)
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        MODELS,
        models_root=root,
        gateway="workers = 2",
        env={"NEURON_TEST_CHUNK_DELAY": "0"},
    )
    supervisor = fleet.gateway.pid
    until(lambda: len(workers_of(supervisor)) == 2)
    until(lambda: requests_total(fleet)[1] == 2)
    assert ask(fleet, 20) == [200] * 20
    assert requests_total(fleet)[0] == 20

    # A worker dies: the other serves meanwhile, and the supervisor starts a new one.
    first, second = workers_of(supervisor)
    os.kill(first, signal.SIGKILL)
    until(lambda: first not in workers_of(supervisor))
    assert ask(fleet, 5) == [200] * 5
    until(lambda: len(workers_of(supervisor)) == 2 and second in workers_of(supervisor))
    until(lambda: requests_total(fleet)[1] == 2)
    assert ask(fleet, 5) == [200] * 5
    assert "worker exited; starting it again" in fleet.gateway.log()

    # A reload asked of one worker reaches both.
    (fleet.workdir / "models.toml").write_text(MODELS + '\n[aliases]\n"tier/x" = "fake/a"\n')
    with fleet.http() as client:
        assert client.post("/admin/reload", json={}).status_code == 200

    def everyone_has_the_alias() -> bool:
        for _ in range(8):
            with fleet.http() as client:
                ids = {m["id"] for m in client.get("/v1/models").json()["data"]}
            if "tier/x" not in ids:
                return False
        return True

    until(everyone_has_the_alias)
    assert fleet.gateway.log().count("catalogue reloaded") >= 2

    # SIGTERM: the workers drain and exit, then the supervisor.
    workers = workers_of(supervisor)
    assert fleet.gateway.stop() == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_keys_limits_and_usage_are_the_whole_gateways(
    start_fleet: StartFleet, tmp_path: Path
) -> None:
    """With two workers a key's max_concurrent holds for both together; usage adds up."""
    root = tmp_path / "models"
    fake_model(root, "fake/a", 3)
    limited = hashlib.sha256(b"limited-key").hexdigest()
    admin = hashlib.sha256(b"admin-key").hexdigest()
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        MODELS,
        models_root=root,
        gateway=(
            "workers = 2\n"
            f'[[keys]]\nname = "limited"\nkey_sha256 = "{limited}"\nmax_concurrent = 2\n'
            f'[[keys]]\nname = "ops"\nkey_sha256 = "{admin}"\nrole = "admin"\n'
        ),
        # Streams of several seconds, sent at once: the two admitted are still
        # running when the other six arrive, however busy the machine.
        env={"NEURON_TEST_CHUNK_DELAY": "1.0"},
    )
    supervisor = fleet.gateway.pid
    until(lambda: len(workers_of(supervisor)) == 2)
    until(lambda: requests_total(fleet)[1] == 2)
    with fleet.http(authorization="Bearer admin-key") as client:
        assert client.post("/admin/models/load", json={"model": "fake/a"}).status_code == 200

    together = threading.Barrier(8)

    def stream(_: int) -> int:
        # A connection of its own each: the kernel spreads them over both workers.
        with fleet.http(authorization="Bearer limited-key") as client:
            body = {"model": "fake/a", "messages": QUESTION, "stream": True}
            together.wait(timeout=30)
            with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                answer.read()
                return answer.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(stream, range(8)))
    # Each worker alone would admit two: four or more would get through.
    assert statuses == [200, 200] + [429] * 6
    with fleet.http(authorization="Bearer admin-key") as client:
        report = client.get("/admin/usage").json()
    usage = {k["name"]: k["models"] for k in report["keys"]}
    [row] = usage["limited"]
    assert (row["model"], row["requests"], row["errors"]) == ("fake/a", 8, 6)
    assert row["completion_tokens"] > 0
    text = httpx.get(f"{fleet.metrics_url}/metrics", timeout=10).text
    refused = sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cortex_key_requests_total"
        and s.labels == {"key": "limited", "model": "fake/a", "status": "429"}
    )
    assert refused == 6
