"""What open dashboards cost the gateway: before a change and after it, side by side, one run.

Two gateways at once, each in front of the mock neuron
(``bench/mock_neuron.py``) with a catalogue of 500 models: the code at
``--before`` (a git ref; by default where this branch left ``main``, ``git
merge-base HEAD main``; taken with ``git archive`` into a temporary folder)
and this checkout. Both get core 0; the mock, the load generator and the
pages (``bench/pages.py``, their own processes) share the other cores. The
one not measured idles meanwhile.

- requests/s and the gateway's CPU per request: JSON chat completions, 16 at
  a time, with no dashboard open, then at once with 50 open (each reading
  its ``/ui/events`` stream), and what the 50 are sent meanwhile; the two
  gateways take turns, ``--rounds`` times (the median, the range, and the
  median of each round's share kept);
- ``/health`` latency (p50, p99, max, one request at a time) while 4,000
  dashboard streams are asked for and held open, idle, and the gateway's
  CPU meanwhile;
- the gateway's RSS before the 4,000, with them, and 10 s after they left;
- ``/health`` latency while a 4 MB ``models.toml`` (66,500 models) is reloaded.

    PYTHONPATH=. .venv/bin/python bench/dashboard.py [--before REF] [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from bench.proxy import (
    PYTHON,
    ROOT,
    Target,
    Workload,
    chat,
    cores,
    cpu_seconds,
    load,
    pinned,
    rss_mib,
    started,
    stop_on_sigterm,
    wait_ready,
)
from cortex_core.testing import free_port

MODELS = 500
FAST = ("/v1/chat/completions", chat("bench/fast"))
PAGES = 50
IDLE_PAGES = 4000
SETTLE_S = 10.0
"""How long after the pages left the RSS is read again."""


def catalogue(directory: Path) -> None:
    """models.toml: the mock's two models and 498 more, a few aliases, as an operator writes it."""
    ids = ["bench/fast", "bench/paced", *(f"org/model-{i:03d}" for i in range(MODELS - 2))]
    text = '[aliases]\n"tier/fast" = "bench/fast"\n"tier/paced" = "bench/paced"\n\n'
    text += "".join(
        f'[[models]]\nid = "{m}"\nmemory_gb = {2 + i % 30}\npriority = {i % 100}\n\n'
        for i, m in enumerate(ids)
    )
    (directory / "models.toml").write_text(text)


def config(directory: Path, mock: str) -> tuple[Path, str]:
    """A cortex.toml (keys both sides know) over the mock; its path and the API's URL."""
    directory.mkdir(parents=True)
    catalogue(directory)
    api, metrics = free_port(), free_port()
    path = directory / "cortex.toml"
    path.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f'poll_interval_s = 2\n\n[[neurons]]\nname = "mock"\nendpoint = "{mock}"\n'
    )
    return path, f"http://127.0.0.1:{api}"


def sources(ref: str, into: Path) -> Path:
    """The packages of ``ref`` in ``into`` (``git archive``: no worktree, nothing registered)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "packages"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def path_for(root: Path) -> str:
    """A PYTHONPATH putting ``root``'s packages before the installed ones."""
    return os.pathsep.join(
        str(root / "packages" / p / "src") for p in ("cortex-core", "cortex-gateway")
    )


@contextlib.contextmanager
def pages(url: str, count: int, cpus: set[int] | None, log: Path) -> Iterator[dict[str, Any]]:
    """``count`` dashboard pages held open; the dict gets what they received once they close."""
    figures: dict[str, Any] = {}
    process = subprocess.Popen(
        [PYTHON, "-m", "bench.pages", "--url", url, "-n", str(count)],
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        preexec_fn=pinned(cpus),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    assert process.stdout is not None
    try:
        figures.update(json.loads(process.stdout.readline() or "{}"))
        time.sleep(1.0)  # the first snapshots are sent
        process.send_signal(signal.SIGUSR1)  # from here on: what the pages are sent under load
        yield figures
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=120)
        for line in out.splitlines():
            figures.update(json.loads(line))


def health(url: str, count: int, limit_s: float) -> dict[str, float | None]:
    """``GET /health`` ``count`` times, one after another on one connection: p50, p99, max."""
    host, port = url.removeprefix("http://").split(":")
    times: list[float] = []
    deadline = time.monotonic() + limit_s
    connection = http.client.HTTPConnection(host, int(port), timeout=limit_s)
    try:
        while len(times) < count and time.monotonic() < deadline:
            started_at = time.perf_counter()
            connection.request("GET", "/health")
            connection.getresponse().read()
            times.append(time.perf_counter() - started_at)
            time.sleep(0.02)
    finally:
        connection.close()
    return {
        "p50": percentile(times, 0.5),
        "p99": percentile(times, 0.99),
        "max": max(times, default=None),
        "count": float(len(times)),
    }


@dataclass
class Side:
    """One gateway under measure: its code, its process, its figures."""

    name: str
    url: str
    config: Path
    pid: int
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        """As the load generator knows it."""
        return Target(self.name, self.url, self.pid)


@contextlib.contextmanager
def gateway(name: str, root: Path, mock: str, work: Path, cpus: set[int] | None) -> Iterator[Side]:
    """The gateway of the code under ``root`` in front of the mock, ready, for the block."""
    path, url = config(work / f"{name}-config", mock)
    command = [PYTHON, "-m", "cortex_gateway", "serve", "--config", str(path)]
    env = {"PYTHONPATH": f"{path_for(root)}{os.pathsep}{ROOT}"}
    with started(command, cpus, work / f"{name}.log", env) as process:
        wait_ready(url, FAST[1], FAST[0])
        yield Side(name, url, path, process.pid)


def requests_per_second(
    sides: list[Side], requests: Workload, rounds: int, cpus: set[int] | None, work: Path
) -> None:
    """Each side's requests/s without dashboards, then with ``PAGES`` open: medians of rounds.

    The sides take turns within each round (the machine's other work falls on both alike).
    """
    for side in sides:
        load(side.target, requests, cpus, requests.requests // 3)  # warm up
        side.figures.update(rps_0=[], rps_pages=[], pages_bytes_s=[], cpu_0=[], cpu_pages=[])

    def measured(side: Side, key: str) -> None:
        figures = load(side.target, requests, cpus)
        side.figures[f"rps_{key}"].append(figures["rps"])
        side.figures[f"cpu_{key}"].append(figures["cpu_s"] / max(figures["ok"], 1))

    for turn in range(rounds):
        # Within a round each side runs without and with pages back to back, so the share
        # kept is measured over moments alike; the sides' order alternates between rounds.
        for side in sides if turn % 2 == 0 else sides[::-1]:
            measured(side, "0")
            with pages(side.url, PAGES, cpus, work / f"{side.name}-pages.log") as open_pages:
                loaded_at = time.monotonic()
                measured(side, "pages")
                loaded_s = time.monotonic() - loaded_at
            side.figures["pages_bytes_s"].append(open_pages.get("since_mark", 0) / loaded_s)


def idle_streams(side: Side, count: int, cpus: set[int] | None, work: Path) -> None:
    """``/health``, CPU and RSS with ``count`` dashboard streams asked for and held open."""
    figures = side.figures
    figures["idle_pages"] = count
    figures["rss_idle"] = rss_mib(side.pid)
    before_cpu, begun = cpu_seconds(side.pid), time.monotonic()
    with pages(side.url, count, cpus, work / f"{side.name}-idle.log") as idle:
        figures["health"] = health(side.url, 300, 120.0)
        figures["rss_during"] = rss_mib(side.pid)
        figures["cpu"] = (cpu_seconds(side.pid) - before_cpu) / (time.monotonic() - begun)
    figures["idle"] = idle
    time.sleep(SETTLE_S)
    figures["rss_after"] = rss_mib(side.pid)


def during_reload(url: str, models_toml: Path) -> dict[str, float | None]:
    """``/health`` latency while a 4 MB models.toml (66,500 models) is reloaded."""
    text = models_toml.read_text() + "".join(
        f'[[models]]\nid = "org/bulk-{i:05d}"\nmemory_gb = 4\npriority = {i % 100}\n\n'
        for i in range(66_000)
    )
    models_toml.write_text(text)
    figures: dict[str, float | None] = {}
    probing = threading.Thread(target=lambda: figures.update(health(url, 10_000, 6.0)))
    probing.start()
    time.sleep(0.5)
    started_at = time.monotonic()
    request = urllib.request.Request(
        url + "/admin/reload", data=b"{}", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        models = json.loads(answer.read())["models"]
    figures["reload_s"] = time.monotonic() - started_at
    probing.join()
    figures["megabytes"] = len(text) / 1e6
    figures["models"] = float(models)
    return figures


def ms(value: float | None) -> str:
    """Seconds as milliseconds."""
    return "—" if value is None else f"{value * 1000:.1f} ms"


def table(before: dict[str, Any], after: dict[str, Any], ref: str) -> list[str]:
    """The figures side by side, as markdown."""

    def row(label: str, *cells: str) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    def statuses(f: dict[str, Any]) -> str:
        counted = f["idle"].get("statuses", {})
        return ", ".join(f"{n} x {s}" for s, n in sorted(counted.items())) or "—"

    def rps(values: list[float]) -> str:
        return f"{statistics.median(values):.0f} ({min(values):.0f} to {max(values):.0f})"

    def kept(f: dict[str, Any]) -> str:
        shares = [w / wo for w, wo in zip(f["rps_pages"], f["rps_0"], strict=True)]
        return f"{rps(f['rps_pages'])}: {statistics.median(shares):.0%} kept"

    def cpu(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.2f} ms"

    def sent(f: dict[str, Any]) -> str:
        return f"{statistics.median(f['pages_bytes_s']) / 1e6:.2f} MB/s"

    def rss(f: dict[str, Any]) -> str:
        return f"{f['rss_idle']:.0f} → {f['rss_during']:.0f} → {f['rss_after']:.0f} MiB"

    idle = after["idle_pages"]
    lines = [
        row("", f"before (`{ref}`)", "after (this checkout)"),
        row("---", "---", "---"),
        row("requests/s, no dashboard", rps(before["rps_0"]), rps(after["rps_0"])),
        row(f"requests/s, {PAGES} dashboards open", kept(before), kept(after)),
        row("gateway CPU per request, no dashboard", cpu(before["cpu_0"]), cpu(after["cpu_0"])),
        row(
            f"gateway CPU per request, {PAGES} dashboards open",
            cpu(before["cpu_pages"]),
            cpu(after["cpu_pages"]),
        ),
        row(f"sent to the {PAGES} dashboards under that load", sent(before), sent(after)),
        row(f"{idle:,} dashboard streams asked: answers", statuses(before), statuses(after)),
    ]
    for key in ("p50", "p99", "max"):
        lines.append(
            row(
                f"`/health` {key}, with them",
                ms(before["health"][key]),
                ms(after["health"][key]),
            )
        )
    lines += [
        row("gateway CPU, with them", f"{before['cpu']:.0%}", f"{after['cpu']:.0%}"),
        row(f"gateway RSS: none → {idle:,} → {SETTLE_S:.0f} s after", rss(before), rss(after)),
    ]
    megabytes = after["reload"]["megabytes"]
    for key in ("p50", "p99", "max"):
        lines.append(
            row(
                f"`/health` {key}, while a {megabytes:.1f} MB models.toml reloads",
                ms(before["reload"][key]),
                ms(after["reload"][key]),
            )
        )
    return lines


def main() -> None:
    """Measure the gateway at ``--before`` and this checkout, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before",
        default=None,
        help="git ref of the code to compare with (default: git merge-base HEAD main)",
    )
    parser.add_argument("--mock-port", type=int, default=18081)
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of the requests and of the idle streams"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each requests/s figure")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.before is None:
        args.before = subprocess.run(
            ["git", "merge-base", "HEAD", "main"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()[:12]
    cpus = cores()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores;"
        f" gateway on {sorted(cpus[0]) if cpus[0] else 'any'}, the rest on"
        f" {sorted(cpus[1]) if cpus[1] else 'any'}; {MODELS} models in the catalogue",
        flush=True,
    )
    scale = 0.1 if args.quick else 1.0
    requests = Workload("json c=16", [FAST], int(3000 * scale), 16)
    with tempfile.TemporaryDirectory(prefix="cortex-bench-dashboard-") as tmp:
        work = Path(tmp)
        mock = f"http://127.0.0.1:{args.mock_port}"
        mock_command = [PYTHON, "-m", "bench.mock_neuron", "--port", str(args.mock_port)]
        old = sources(args.before, work / "before")
        with (
            started(mock_command, cpus[1], work / "mock.log"),
            gateway("before", old, mock, work, cpus[0]) as before,
            gateway("after", ROOT, mock, work, cpus[0]) as after,
        ):
            sides = [before, after]
            requests_per_second(sides, requests, args.rounds, cpus[1], work)
            for side in sides:
                idle_streams(side, int(IDLE_PAGES * scale), cpus[1], work)
                side.figures["reload"] = during_reload(side.url, side.config.parent / "models.toml")
                print(f"{side.name}: {json.dumps(side.figures)}", flush=True)
    if args.json is not None:
        figures = {"before": before.figures, "after": after.figures}
        args.json.write_text(json.dumps(figures, indent=1))
    print()
    print("\n".join(table(before.figures, after.figures, args.before)))


if __name__ == "__main__":
    main()
