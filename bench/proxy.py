"""What the gateway costs on the path of every token: direct to a mock neuron vs through cortex.

One run measures, side by side, the mock neuron (``bench/mock_neuron.py``)
direct, hypercorn alone answering a fixed body and the bare
hypercorn+aiohttp proxy (``bench/floor_proxy.py``: the floors of the
gateway's stack), the gateway in front of the mock, and any other OpenAI
proxy given with
``--proxy NAME=URL`` (configured by you to reach the mock at ``--mock-port``
with model ``bench/fast`` / ``bench/paced``; ``--litellm`` starts LiteLLM's
proxy itself when it is installed). The gateway gets core 0 to itself, the
mock and the load generator (``bench/loadgen.py``, its own process) share
the others; each proxy's CPU time is read from ``/proc`` (its whole process
tree) around each workload.

Workloads:
- ``json c=1``: latency the proxy adds at p50, one request at a time;
- ``json c=64``: requests/s, and the proxy's CPU per request;
- ``stream c=16``: 128 chunks 20 ms apart: first token added, spread ratio
  (direct's first→last token time over the proxy's), CPU per relayed chunk;
- ``anthropic stream c=16``: the same through ``/v1/messages`` (the
  translation; cortex only), CPU per chunk against the OpenAI route's;
- ``soak``: mixed requests in rounds of 10k, the gateway's RSS after each.

With ``--keyed``, each gateway runs a second time with every request sent
under a named key with a limit (``max_concurrent`` far above the load, so
none is refused): each request is then counted in and out against the key's
limit, which with ``--workers 2`` is one round trip to the supervisor that
the workers share the count through (``cortex_gateway.coordinator``).

    PYTHONPATH=. .venv/bin/python bench/proxy.py [--quick] [--workers 1,2] [--keyed]
        [--proxy NAME=URL]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex_core.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHUNKS = 128
OTHERS_LIMIT = 2000
"""Requests per workload for proxies other than cortex: enough for figures, in bounded time."""
DELAY_S = 0.02
"""The mock's pace for ``bench/paced``: 128 chunks 20 ms apart."""


def chat(model: str, *, stream: bool = False, tokens: int = 16) -> dict[str, Any]:
    """An OpenAI chat body for the mock."""
    body: dict[str, Any] = {"model": model, "messages": QUESTION, "max_tokens": tokens}
    if stream:
        body["stream"] = True
    return body


def message(model: str, tokens: int) -> dict[str, Any]:
    """An Anthropic Messages streaming body for the mock."""
    return {"model": model, "messages": QUESTION, "max_tokens": tokens, "stream": True}


@dataclass(frozen=True)
class Workload:
    """One load: what to send, how many, how many at once."""

    name: str
    mix: list[tuple[str, dict[str, Any]]]
    requests: int
    concurrency: int
    chunks: int = 0
    anthropic: bool = False
    stagger_s: float = 0.0


def workloads(quick: bool) -> list[Workload]:
    """The four OpenAI workloads and the Anthropic one, sized for ``--quick`` or not."""
    scale = 0.2 if quick else 1.0
    chunks = CHUNKS // 2 if quick else CHUNKS  # quick: 64 chunks, the same pace
    fast = "/v1/chat/completions", chat("bench/fast")
    return [
        Workload("json c=1", [fast], int(3000 * scale), 1),
        Workload("json c=64", [fast], int(30000 * scale), 64),
        Workload(
            "stream c=16",
            [("/v1/chat/completions", chat("bench/paced", stream=True, tokens=chunks))],
            int(96 * scale) // 16 * 16 or 16,
            16,
            chunks=chunks,
            stagger_s=chunks * DELAY_S,
        ),
        Workload(
            "anthropic stream c=16",
            [("/v1/messages", message("bench/paced", chunks))],
            int(96 * scale) // 16 * 16 or 16,
            16,
            chunks=chunks,
            anthropic=True,
            stagger_s=chunks * DELAY_S,
        ),
    ]


SOAK_MIX: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", chat("bench/fast")),
    ("/v1/chat/completions", chat("bench/fast", stream=True)),
    ("/v1/completions", {"model": "bench/fast", "prompt": "Paris is", "max_tokens": 8}),
    ("/v1/chat/completions", chat("bench/fast")),
    ("/v1/messages", message("bench/fast", 16)),
    ("/v1/messages", {**message("bench/fast", 8), "stream": False}),
]


# --- processes -------------------------------------------------------------------------


def cores() -> tuple[set[int] | None, set[int] | None]:
    """Core 0 for the proxy, the rest for the mock and the load; no pinning on one core."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def pinned(cpus: set[int] | None) -> Any:
    """A ``preexec_fn`` pinning the child to ``cpus`` (None: no pinning)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid``'s process tree, from ``/proc/<pid>/stat``."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid``'s process tree, in MiB."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def wait_ready(
    url: str,
    body: dict[str, Any],
    path: str,
    headers: dict[str, str] | None = None,
    seconds: float = 60,
) -> None:
    """Post ``body`` (with ``headers``) until it is answered 200, or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    data = json.dumps(body).encode()
    while True:
        request = urllib.request.Request(
            url + path, data=data, headers={"content-type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer {path} within {seconds} s")
        time.sleep(0.2)


@dataclass
class Target:
    """Something to send the load to: the mock direct, cortex, another proxy."""

    name: str
    url: str
    pid: int | None = None
    anthropic: bool = False
    limit: int | None = None
    """At most this many requests per workload (another proxy may be 100 times slower)."""
    json_only: bool = False
    """A fixed answer, no upstream: only the non-streaming workloads mean anything."""
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every request (a key)."""
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)


def stop_on_sigterm() -> None:
    """SIGTERM ends the run as Ctrl-C does: every process it started is stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def started(
    command: list[str], cpus: set[int] | None, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (pinned to ``cpus``) for the duration of the block."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=pinned(cpus),
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


BENCH_KEY = "bench-key"
KEYED = (
    '[[keys]]\nname = "bench"\n'
    f'key_sha256 = "{hashlib.sha256(BENCH_KEY.encode()).hexdigest()}"\n'
    "max_concurrent = 100000\n"
)
"""A named key whose limit every request is counted against (and none reaches)."""


def cortex_config(directory: Path, mock: str, workers: int, keyed: bool = False) -> Path:
    """A cortex.toml and models.toml for the two mock models; the cortex.toml's path."""
    api, metrics = free_port(), free_port()
    models = "".join(
        f'[[models]]\nid = "{m}"\nmemory_gb = 2\n\n' for m in ("bench/fast", "bench/paced")
    )
    (directory / "models.toml").write_text(models)
    config = directory / "cortex.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{api}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f"poll_interval_s = 2\n{f'workers = {workers}' if workers != 1 else ''}\n\n"
        f'[[neurons]]\nname = "mock"\nendpoint = "{mock}"\n' + (KEYED if keyed else "")
    )
    return config


def load(
    target: Target, workload: Workload, cpus: set[int] | None, requests: int | None = None
) -> dict[str, Any]:
    """Run ``workload`` against ``target`` in a load-generator process; its figures."""
    mix = json.dumps(workload.mix)
    before = cpu_seconds(target.pid) if target.pid else 0.0
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "bench.loadgen",
            "--url",
            target.url,
            "--mix",
            mix,
            "-n",
            str(requests or workload.requests),
            "-c",
            str(workload.concurrency),
            "--stagger",
            str(workload.stagger_s),
            *(f"--header={k}: {v}" for k, v in target.headers.items()),
        ],
        capture_output=True,
        check=True,
        preexec_fn=pinned(cpus),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    figures: dict[str, Any] = json.loads(done.stdout)
    if target.pid:
        figures["cpu_s"] = cpu_seconds(target.pid) - before
        figures["rss_mib"] = rss_mib(target.pid)
    return figures


# --- the table -------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds, two decimals."""
    return "—" if seconds is None else f"{seconds * 1000:.2f} ms"


def added(value: float | None, base: float | None) -> str:
    """What ``value`` adds to ``base``, in milliseconds."""
    if value is None or base is None:
        return "—"
    return f"{(value - base) * 1000:+.2f} ms"


def report(targets: list[Target], loads: list[Workload]) -> list[str]:
    """The comparison as a markdown table: a row per figure, a column per target."""
    direct, proxies = targets[0], targets[1:]
    rows: list[list[str]] = []

    def cells(workload: str, figure: Any, base: Any = None) -> list[str]:
        """A row's cells: ``base`` of the direct figures, ``figure`` of each proxy's."""
        found = direct.figures.get(workload)
        first = base(found) if base is not None and found else "—"
        out = [first]
        for t in proxies:
            f = t.figures.get(workload)
            out.append(figure(f, found or {}) if f else "—")
        return out

    def per_chunk(f: dict[str, Any], chunks: int) -> float:
        return float(f["cpu_s"]) / (int(f["ok"]) * chunks)

    for w in loads:
        name, chunks = w.name, w.chunks
        counted = [t.figures.get(name) for t in targets]
        if any(f and f["errors"] for f in counted):
            rows.append(
                [f"{name}: errors", *[str(f["errors"]) if f else "—" for f in counted], "0"]
            )
        if name == "json c=1":
            rows.append(
                [
                    "non-streaming, c=1: latency at p50 (added)",
                    *cells(
                        name,
                        lambda f, d: added(f["latency_p50"], d.get("latency_p50")),
                        lambda d: ms(d["latency_p50"]),
                    ),
                    "≤ +0.30 ms",
                ]
            )
        elif name == "json c=64":
            rows.append(
                [
                    "non-streaming, c=64: requests/s",
                    *cells(name, lambda f, d: f"{f['rps']:,.0f}", lambda d: f"{d['rps']:,.0f}"),
                    "≥ 3,000",
                ]
            )
            rows.append(
                [
                    "non-streaming, c=64: proxy CPU per request",
                    *cells(name, lambda f, d: ms(f["cpu_s"] / f["ok"]) if "cpu_s" in f else "—"),
                    "≤ 0.30 ms",
                ]
            )
        elif not w.anthropic:
            rows.append(
                [
                    "stream c=16: first token p50 (added)",
                    *cells(
                        name,
                        lambda f, d: added(f["ttft_p50"], d.get("ttft_p50")),
                        lambda d: ms(d["ttft_p50"]),
                    ),
                    "≤ +0.50 ms",
                ]
            )
            rows.append(
                [
                    "stream c=16: spread, direct's over the proxy's",
                    *cells(
                        name,
                        lambda f, d: f"{d['spread_p50'] / f['spread_p50']:.3f}" if d else "—",
                        lambda d: "1.000",
                    ),
                    "≥ 0.99",
                ]
            )
            rows.append(
                [
                    "stream c=16: proxy CPU per relayed chunk",
                    *cells(
                        name, lambda f, d, n=chunks: ms(per_chunk(f, n)) if "cpu_s" in f else "—"
                    ),
                    "≤ 0.04 ms",
                ]
            )
        else:
            openai = next(x.name for x in loads if x.chunks and not x.anthropic)

            row = ["anthropic stream c=16: proxy CPU per chunk", "—"]
            for t in proxies:
                f, o = t.figures.get(name), t.figures.get(openai)
                if not f or not o or "cpu_s" not in f:
                    row.append("—")
                    continue
                mine, theirs = per_chunk(f, chunks), per_chunk(o, chunks)
                row.append(f"{ms(mine)} ({mine / theirs:.1f}x OpenAI)")
            rows.append([*row, "≤ 3x OpenAI's"])
            rows.append(
                [
                    "anthropic stream c=16: first token p50",
                    "—",
                    *[
                        ms(t.figures[name]["ttft_p50"]) if name in t.figures else "—"
                        for t in proxies
                    ],
                    "",
                ]
            )
    header = ["workload", *[t.name for t in targets], "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


# --- main ------------------------------------------------------------------------------


def main() -> None:
    """Start the mock and the proxies, run every workload against each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a fifth of the requests, a short soak"
    )
    parser.add_argument("--workers", default="1", help="gateway worker counts to compare, e.g. 1,2")
    parser.add_argument(
        "--keyed", action="store_true", help="each gateway again, every request under a limited key"
    )
    parser.add_argument("--proxy", action="append", default=[], help="NAME=URL of another proxy")
    parser.add_argument(
        "--litellm", action="store_true", help="start LiteLLM's proxy (if installed)"
    )
    parser.add_argument("--mock-port", type=int, default=18080)
    parser.add_argument(
        "--soak", type=int, default=None, help="soak requests (default 100k, 20k quick)"
    )
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument(
        "--no-floor", action="store_true", help="leave out the bare hypercorn+aiohttp proxy"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each cortex under each workload; collapsed stacks and a summary go here",
    )
    args = parser.parse_args()
    stop_on_sigterm()
    proxy_cpus, load_cpus = cores()
    soak_total = args.soak or (20_000 if args.quick else 100_000)
    counts = [int(n) for n in args.workers.split(",")]
    loads = workloads(args.quick)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; "
        f"proxy on {sorted(proxy_cpus) if proxy_cpus else 'any'}, "
        f"mock + load on {sorted(load_cpus) if load_cpus else 'any'}",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        mock_url = f"http://127.0.0.1:{args.mock_port}"
        stack.enter_context(
            started(
                [
                    PYTHON,
                    str(ROOT / "bench/mock_neuron.py"),
                    "--port",
                    str(args.mock_port),
                    "--delay",
                    str(DELAY_S),
                ],
                load_cpus,
                work / "mock.log",
            )
        )
        wait_ready(mock_url, chat("bench/fast"), "/v1/chat/completions")
        targets = [Target("direct", mock_url)]
        if not args.no_floor:
            port = free_port()
            floor = stack.enter_context(
                started(
                    [
                        PYTHON,
                        str(ROOT / "bench/floor_proxy.py"),
                        "--port",
                        str(port),
                        "--upstream",
                        mock_url + "/v1",
                    ],
                    proxy_cpus,
                    work / "floor.log",
                )
            )
            wait_ready(f"http://127.0.0.1:{port}", chat("bench/fast"), "/v1/chat/completions")
            targets.append(Target("floor", f"http://127.0.0.1:{port}", pid=floor.pid))
            port = free_port()
            alone = stack.enter_context(
                started(
                    [PYTHON, str(ROOT / "bench/floor_proxy.py"), "--port", str(port), "--static"],
                    proxy_cpus,
                    work / "static.log",
                )
            )
            wait_ready(f"http://127.0.0.1:{port}", chat("bench/fast"), "/v1/chat/completions")
            targets.insert(
                1,
                Target(
                    "hypercorn alone", f"http://127.0.0.1:{port}", pid=alone.pid, json_only=True
                ),
            )
        for spec in args.proxy:
            name, _, url = spec.partition("=")
            targets.append(Target(name, url.rstrip("/"), limit=OTHERS_LIMIT))
        if args.litellm:
            litellm = start_litellm(stack, work, mock_url, proxy_cpus)
            if litellm is not None:
                targets.append(litellm)
        for workers in counts:
            for keyed in (False, True) if args.keyed else (False,):
                directory = work / f"cortex-{workers}{'-keyed' if keyed else ''}"
                directory.mkdir()
                config = cortex_config(directory, mock_url, workers, keyed)
                api = config.read_text().split('listen = "', 1)[1].split('"', 1)[0]
                cpus = proxy_cpus if workers == 1 else None
                process = stack.enter_context(
                    started(
                        [PYTHON, "-m", "cortex_gateway", "serve", "--config", str(config)],
                        cpus,
                        directory / "gateway.log",
                    )
                )
                name = "cortex" if len(counts) == 1 else f"cortex x{workers}"
                headers = {"authorization": f"Bearer {BENCH_KEY}"} if keyed else {}
                wait_ready(f"http://{api}", chat("bench/paced"), "/v1/chat/completions", headers)
                targets.append(
                    Target(
                        name + (" keyed" if keyed else ""),
                        f"http://{api}",
                        pid=process.pid,
                        anthropic=True,
                        headers=headers,
                    )
                )
        for w in loads:
            for t in targets:
                if (w.anthropic and not t.anthropic) or (w.chunks and t.json_only):
                    continue
                # Warm up (imports, connections) on the fast model, then measure.
                quick = [(path, {**body, "model": "bench/fast"}) for path, body in w.mix]
                load(t, Workload(w.name, quick, min(w.requests * 4, 500), w.concurrency), load_cpus)
                count = min(w.requests, t.limit) if t.limit else w.requests
                with profiling(args.profile, t, w):
                    t.figures[w.name] = figures = load(t, w, load_cpus, requests=count)
                print(
                    f"{w.name:<24} {t.name:<12} {figures['ok']:>6} ok in {figures['wall_s']:.1f} s"
                    + (f", cpu {figures['cpu_s']:.2f} s" if "cpu_s" in figures else ""),
                    flush=True,
                )
        print()
        print("\n".join(report(targets, loads)))
        if not args.skip_soak:
            print()
            for t in targets:
                if t.anthropic:  # the mix has Anthropic requests: cortex only
                    soak(t, soak_total, load_cpus, 5_000 if args.quick else 10_000)


@contextlib.contextmanager
def profiling(directory: Path | None, target: Target, workload: Workload) -> Iterator[None]:
    """Sample ``target`` with py-spy during the block (when asked for, and a gateway)."""
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if directory is None or target.pid is None or not Path(spy).exists():
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{target.name}-{workload.name}".replace(" ", "_").replace("=", "")
    out = directory / f"{stem}.txt"
    command = [spy, "record", "--format", "raw", "--rate", "500", "--subprocesses", "--nonblocking"]
    command += ["-o", str(out), "--pid", str(target.pid)]
    spying = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        spying.send_signal(signal.SIGINT)
        spying.wait(30)
    if out.exists():
        (directory / f"{stem}.top.txt").write_text("\n".join(top_of(out)) + "\n")


def _frame(frame: str) -> str:
    """``function (file.py)`` of py-spy's ``function (path/file.py:line)``."""
    function, paren, where = frame.partition(" (")
    if not paren:
        return frame
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})"


LIBRARIES = (
    "cortex_gateway",
    "cortex_core",
    "hypercorn",
    "h11",
    "starlette",
    "anyio",
    "aiohttp",
    "multidict",
    "yarl",
    "msgspec",
    "prometheus_client",
    "logging",
    "asyncio",
    "importlib",
)


def _library(frame: str) -> str:
    """Which library a py-spy frame's file belongs to (the event loop's C code: "loop")."""
    _, _, where = frame.partition(" (")
    if not where or where.startswith(("asyncio/runners.py", "process ")):
        return "loop (uvloop's C code, syscalls)"
    for name in LIBRARIES:
        if f"{name}/" in where or f"<frozen {name}" in where:
            return name
    return "other"


def top_of(collapsed: Path, count: int = 25) -> list[str]:
    """The functions with the most samples in a py-spy raw (collapsed) profile, self and total."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    libraries: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        weight = int(n)
        samples += weight
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + weight
        library = _library(stack.rsplit(";", 1)[-1])
        libraries[library] = libraries.get(library, 0) + weight
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + weight
    lines = [f"{samples} samples", "", "self %  library"]
    for name, seen in sorted(libraries.items(), key=lambda kv: -kv[1]):
        lines.append(f"{seen / samples * 100:5.1f}  {name}")
    lines += ["", "self %  function"]
    for name, seen in sorted(own.items(), key=lambda kv: -kv[1])[:count]:
        lines.append(f"{seen / samples * 100:5.1f}  {name}")
    lines += ["", "total %  function"]
    for name, seen in sorted(total.items(), key=lambda kv: -kv[1])[:count]:
        lines.append(f"{seen / samples * 100:5.1f}  {name}")
    return lines


def soak(target: Target, total: int, cpus: set[int] | None, every: int) -> None:
    """Mixed requests in rounds of ``every``: the RSS after each round, and the errors."""
    workload = Workload("soak", SOAK_MIX, every, 32)
    done, errors = 0, 0
    first: float | None = None
    started_at = time.monotonic()
    while done < total:
        n = min(every, total - done)
        figures = load(target, workload, cpus, requests=n)
        done += n
        errors += sum(figures["errors"].values())
        first = first or figures["rss_mib"]
        rss = figures["rss_mib"]
        print(
            f"soak {target.name}: {done:>7} requests, {errors} errors, RSS {rss:.1f} MiB",
            flush=True,
        )
    assert first is not None
    last = rss_mib(target.pid) if target.pid else 0.0
    growth = (last - first) / first * 100
    seconds = time.monotonic() - started_at
    met = "met" if abs(growth) <= 10 else "NOT met"
    print(
        f"soak {target.name}: {done} requests in {seconds:.0f} s, {errors} errors; "
        f"RSS {first:.1f} MiB after the first {every:,}, {last:.1f} MiB at the end "
        f"({growth:+.1f} %; target: within 10 %, {met})"
    )


def start_litellm(
    stack: contextlib.ExitStack, work: Path, mock: str, cpus: set[int] | None
) -> Target | None:
    """LiteLLM's proxy in front of the mock, if ``litellm`` is on PATH; else a note and None."""
    binary = shutil.which("litellm")
    if binary is None:
        print("litellm is not installed: left out", flush=True)
        return None
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        + "".join(
            f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
            f"      api_base: {mock}/v1\n      api_key: none\n"
            for m in ("bench/fast", "bench/paced")
        )
        + "litellm_settings:\n  telemetry: false\n"
    )
    process = stack.enter_context(
        started(
            [binary, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
            cpus,
            work / "litellm.log",
            # loopback only, no key: LiteLLM asks for this to start without a master key
            {"LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true", "LITELLM_LOG": "ERROR"},
        )
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, chat("bench/fast"), "/v1/chat/completions", seconds=120)
    return Target("LiteLLM", url, pid=process.pid, limit=OTHERS_LIMIT)


if __name__ == "__main__":
    main()
